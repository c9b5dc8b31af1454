"""What the attack scenarios share: evasion levels, the stacks tools run beneath the
app's headers, the app's header set, attestation verdicts, hosting and residential
exits, and the calls a script makes."""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from detector.profile import ClientProfile
from detector.simulate.places import Country, _ipv4, _prefixes
from detector.simulate.population import _releases
from detector.simulate.wire import (
    _FORM,
    OKHTTP_H2,
    OKHTTP_JA4,
    PYTHON_REQUESTS_JA4,
    STARTUP_PATHS,
    TLS_SNI,
    _Builder,
    _hex,
    device_checksum,
)

# Attacks
#
# Every attack yields exactly `count` requests in event-time order, labelled with its
# scenario, and is deterministic for a seed. `rate` is the whole attack's requests per
# second of event time; `evasion` (0..2) is how careful the attacker is: 0 a tool with
# its defaults, 1 a tool tuned to look like the app, 2 the best such tools do today.

EVASION_LEVELS = (0, 1, 2)


# Stacks beneath the headers, as the edge reports them. JA4 values of desktop stacks are
# the captured ones of config/fingerprints/known-stacks.yaml.
CURL_JA4 = "t13d3112h2_e8f1e7e78f70_b26ce05bbdd6"  # curl 7.88 on OpenSSL 3 (PHP curl, pycurl)
CURL_H2 = "3:100;4:10485760;2:0|1048510465|0|m,p,s,a"  # curl with nghttp2
# Go's x/net/http2 transport: ENABLE_PUSH 0, INITIAL_WINDOW_SIZE 4 MiB, MAX_HEADER_LIST_SIZE
# 10 MiB, a 1 GiB connection window, pseudo-headers written :authority, :method, :path,
# :scheme (encodeHeaders). uTLS can copy OkHttp's ClientHello; this stays Go's.
GO_H2 = "2:0;4:4194304;6:10485760|1073741824|0|a,m,p,s"
# OkHttp's SETTINGS copied into a custom HTTP/2 writer that still orders the
# pseudo-headers like Go does.
OKHTTP_SETTINGS_GO_PSEUDO = "4:16777216|16711681|0|a,m,p,s"

# Datacenter networks scripts and farms rent (asn, org, country).
HOSTING_NETWORKS = ((16509, "Amazon.com", "US"), (14061, "DigitalOcean", "US"), (24940, "Hetzner Online", "DE"),
                    (16276, "OVH SAS", "FR"), (63949, "Akamai Connected Cloud", "US"), (45102, "Alibaba Cloud", "SG"),
                    (8075, "Microsoft Azure", "US"))


_ACTIONS = (("like", 70), ("follow", 20), ("comment", 10))


def _check_evasion(evasion: int) -> None:
    if evasion not in EVASION_LEVELS:
        raise ValueError(f"evasion must be 0, 1 or 2, got {evasion!r}")


@dataclass(frozen=True, slots=True)
class _Stack:
    """The TLS and HTTP stack beneath a client's headers, as the edge reports it."""

    tls: Mapping[str, Any]
    http_version: str
    h2: str | None = None


def _app_stack(profile: ClientProfile, version: str, h2: str | None = None) -> _Stack:
    """OkHttp on Conscrypt: the app's own stack, and what OkHttp with Conscrypt on a
    server JVM (or uTLS replaying OkHttp's ClientHello) presents."""
    tls_policy, transport = profile.tls, profile.transport
    ja4 = OKHTTP_JA4
    for rule in tls_policy.ja4 if tls_policy else ():
        if rule.covers(version):
            ja4 = rule.value
            break
    alpn = tls_policy.alpn_first if tls_policy and tls_policy.alpn_first else "h2"
    http = sorted(transport.http_versions)[0] if transport and transport.http_versions else "2"
    fp = sorted(transport.h2_fingerprints)[0] if transport and transport.h2_fingerprints else OKHTTP_H2
    return _Stack({"ja4": ja4, "alpn": alpn, "version": "1.3", "sni": TLS_SNI}, http, h2 or fp)


PYTHON_STACK = _Stack({"ja4": PYTHON_REQUESTS_JA4, "alpn": "http/1.1", "version": "1.3", "sni": TLS_SNI}, "1.1")
CURL_H2_STACK = _Stack({"ja4": CURL_JA4, "alpn": "h2", "version": "1.3", "sni": TLS_SNI}, "2", CURL_H2)


class _AppHeaders:
    """The app's own header names and values, for clients that reproduce them."""

    def __init__(self, profile: ClientProfile):
        scheme = profile.signing
        self.sig = scheme.header if scheme else "x-es-signature"
        self.stamp = scheme.timestamp_header if scheme else "x-es-timestamp"
        ids = profile.ids
        self.dev = (ids["device"].header if "device" in ids else None) or "x-es-device-id"
        self.acct = (ids["account"].header if "account" in ids else None) or "x-es-user-id"
        self.sess = (ids["session"].header if "session" in ids else None) or "x-es-session-id"
        self.order: tuple[str, ...] = profile.headers.order if profile.headers else (
            self.dev, "x-es-device-checksum", self.sess, self.acct, self.stamp, self.sig, "accept-language",
            "x-es-connection-type", "x-es-bandwidth-kbps", "content-type", "content-length", "accept-encoding",
            "user-agent")
        self.profile = profile

    def values(self, *, device_id: str, session_id: str | None, account: str | None, signed_at: float, locale: str,
               conn: str | None, bandwidth: float | None, ua: str, body_size: int | None) -> dict[str, str | None]:
        v: dict[str, str | None] = {
            self.dev: device_id,
            "x-es-device-checksum": device_checksum(self.profile, device_id),
            self.stamp: str(int(signed_at)),
            self.sig: None,
            "accept-language": locale.replace("_", "-"),
            "accept-encoding": "gzip",
            "user-agent": ua,
        }
        if session_id is not None:
            v[self.sess] = session_id
        if account is not None:
            v[self.acct] = account
        if conn is not None:
            v["x-es-connection-type"] = conn
        if bandwidth is not None:
            v["x-es-bandwidth-kbps"] = str(int(bandwidth))
        if body_size is not None:
            v["content-type"] = _FORM
            v["content-length"] = str(body_size)
        return v

    def ordered(self, values: Mapping[str, str | None]) -> list[tuple[str, str | None]]:
        """In the app's order (what OkHttp's interceptors produce)."""
        return [(n, values[n]) for n in self.order if n in values]


def _attestation(profile: ClientProfile, recognition: Sequence[str], age: float,
                 hash_ok: bool = True) -> dict[str, Any]:
    att = profile.attestation
    provider = sorted(att.providers)[0] if att and att.providers else "play_integrity"
    app_verdict = sorted(att.app_recognition)[0] if att and att.app_recognition else "PLAY_RECOGNIZED"
    return {"provider": provider, "app_recognition": app_verdict, "device_recognition": list(recognition),
            "request_hash_ok": hash_ok, "token_age_s": round(age, 1)}


def _real_device_attestation(profile: ClientProfile, rng: random.Random, age: float | None = None) -> dict[str, Any]:
    """What a real, unmodified phone gets (a phone farm, or a token relayed from one)."""
    att = profile.attestation
    needed = att.device_recognition if att and att.device_recognition else "MEETS_DEVICE_INTEGRITY"
    return _attestation(profile, ["MEETS_BASIC_INTEGRITY", needed],
                        rng.uniform(0.3, 280.0) if age is None else age)


def _hosting(rng: random.Random, asn_org_country: tuple[int, str, str]) -> tuple[str, dict[str, Any]]:
    asn, org, country = asn_org_country
    return _ipv4(rng, asn), {"asn": asn, "as_org": org, "country": country, "hosting": True}


def _carrier_blocks(rng: random.Random, country: Country, n: int) -> list[tuple[str, dict[str, Any]]]:
    """`n` /24 blocks of the country's carriers and ISPs: where a residential or mobile
    proxy provider's exits sit (they concentrate in the blocks it has devices in)."""
    out = []
    nets = list(country.mobile) + list(country.wifi)
    for _ in range(n):
        asn, org = rng.choice(nets)
        a, b = rng.choice(_prefixes(asn))
        out.append((f"{a}.{b}.{rng.randint(0, 255)}",
                    {"asn": asn, "as_org": org, "country": country.code, "hosting": False}))
    return out


def _residential(rng: random.Random, country: Country) -> tuple[str, dict[str, Any]]:
    """An exit of a residential/mobile proxy network: a real carrier or ISP address."""
    asn, org = rng.choice(list(country.mobile) + list(country.wifi))
    return _ipv4(rng, asn), {"asn": asn, "as_org": org, "country": country.code, "hosting": False}


def _browse_call(rng: random.Random, page: int) -> tuple[str, str, str | None, int | None]:
    r = rng.random()
    if r < 0.5:
        return "GET", "/api/v1/feed/timeline", f"max_id={rng.randint(10**17, 10**18)}&page={page}", None
    if r < 0.8:
        return "GET", f"/api/v1/media/{rng.randint(10**17, 10**18)}/info", None, None
    return "GET", "/api/v1/explore", None, None


def _action_call(rng: random.Random) -> tuple[str, str, str | None, int | None]:
    kind = rng.choices([k for k, _ in _ACTIONS], weights=[w for _, w in _ACTIONS])[0]
    if kind == "follow":
        return "POST", f"/api/v1/friendships/{rng.randint(10**8, 10**10)}/follow", None, rng.randint(40, 120)
    size = rng.randint(50, 110) if kind == "like" else rng.randint(80, 700)
    return "POST", f"/api/v1/media/{rng.randint(10**17, 10**18)}/{kind}", None, size


def _startup_call(rng: random.Random, step: int) -> tuple[str, str, str | None, int | None]:
    if step == 0:
        return "POST", STARTUP_PATHS[0], None, rng.randint(180, 900)
    return "GET", STARTUP_PATHS[step], None, None


def _app_release(profile: ClientProfile, start_ts: float) -> tuple[str, int, str | None]:
    """The newest build real users run (farms and bots keep the app current)."""
    rel = _releases(profile, start_ts)[0]
    return rel.version.version, rel.codes[0], rel.key_id


def _in_order(events: list[dict[str, Any]], count: int) -> Iterator[dict[str, Any]]:
    events.sort(key=lambda e: e["ts"])
    yield from events[:count]


def _account_id(rng: random.Random) -> str:
    return str(rng.randint(10**8, 10**11 - 1))


def _copy_request(b: _Builder, request: dict[str, Any], ts: float, **changes: Any) -> dict[str, Any]:
    """The same request sent again: every signed field identical, a new request id."""
    b.n += 1
    return {**request, "request_id": f"{b.scenario}-{b.n:08d}-{_hex(b.rng, 8)}", "ts": round(ts, 3), **changes}
