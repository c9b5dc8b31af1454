"""Labelled traffic for demos, tests and evaluation: genuine app sessions built from
the client profile, and attack scenarios that imitate the app the way real tools do.

Deterministic for a seed: every random draw comes from one `random.Random(seed)`, and
time is the events' own (`start_ts` plus simulated gaps), never the clock.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from detector.profile import ClientProfile, signing_key_for
from detector.signing import canonical_string, mac, signature_value

DEFAULT_START_TS = 1795860000.0  # 2026-11-29T10:00:00Z, a fixed origin for reproducible files

# OkHttp 4 on Android's platform TLS (Conscrypt): public facts about the app's stack.
OKHTTP_JA4 = "t13d1513h2_8daaf6152771_eca864cca44a"
OKHTTP_H2 = "4:16777216|16711681|0|m,p,a,s"
# Python requests/urllib3 on OpenSSL 3 (desktop), as captured from a default client.
PYTHON_REQUESTS_JA4 = "t13d1812h1_85036bcba153_375ca2c5e164"


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    manufacturer: str
    model: str
    device: str
    hardware: str
    dpi: int
    width: int
    height: int
    sdk_int: int
    release: str
    weight: float = 1.0


# A small built-in population used when no device catalogue is given (real models,
# their Build values and the screen sizes apps report).
BUILTIN_DEVICES: tuple[DeviceSpec, ...] = (
    DeviceSpec("samsung", "SM-S911B", "dm1q", "qcom", 450, 1080, 2340, 34, "14", 6),
    DeviceSpec("samsung", "SM-A546B", "a54x", "s5e8835", 450, 1080, 2340, 34, "14", 8),
    DeviceSpec("samsung", "SM-A155F", "a15", "mt6789", 450, 1080, 2340, 34, "14", 7),
    DeviceSpec("Google", "Pixel 7", "panther", "panther", 420, 1080, 2400, 34, "14", 4),
    DeviceSpec("Google", "Pixel 6a", "bluejay", "bluejay", 420, 1080, 2400, 34, "14", 3),
    DeviceSpec("Xiaomi", "23021RAA2Y", "topaz", "qcom", 440, 1080, 2400, 33, "13", 6),
    DeviceSpec("Xiaomi", "2201117TY", "spes", "qcom", 440, 1080, 2400, 33, "13", 5),
    DeviceSpec("OnePlus", "CPH2449", "OP5958L1", "qcom", 450, 1240, 2772, 34, "14", 2),
    DeviceSpec("motorola", "moto g54 5G", "cancunf", "mt6855", 400, 1080, 2400, 34, "14", 3),
    DeviceSpec("OPPO", "CPH2591", "OP5A0BL1", "mt6789", 480, 1080, 2412, 34, "14", 2),
)

COUNTRIES = (
    # country, locales, mobile ASNs (asn, org), wifi ASNs, weight
    ("US", ("en_US", "es_US"), ((21928, "T-Mobile USA"), (22394, "Verizon Wireless")), ((7922, "Comcast"), (20115, "Charter")), 30),
    ("BR", ("pt_BR",), ((26599, "TIM Brasil"), (28573, "Claro Brasil")), ((18881, "Vivo Fibra"),), 15),
    ("IN", ("en_IN", "hi_IN"), ((55836, "Reliance Jio"), (45609, "Bharti Airtel")), ((24560, "Airtel Broadband"),), 20),
    ("DE", ("de_DE",), ((3320, "Deutsche Telekom"), (3209, "Vodafone DE")), ((6805, "Telefonica DE"),), 10),
    ("ID", ("id_ID",), ((23693, "Telkomsel"),), ((7713, "Telkom Indonesia"),), 10),
    ("GB", ("en_GB",), ((25135, "Vodafone UK"),), ((2856, "BT"),), 8),
)

BROWSE_PATHS = ("/api/v1/feed/timeline", "/api/v1/media/{id}/info", "/api/v1/users/{id}/info", "/api/v1/explore")
STARTUP_PATHS = ("/api/v1/launcher/sync", "/api/v1/config", "/api/v1/notifications/badge", "/api/v1/feed/timeline")
ACTION_PATHS = ("/api/v1/media/{id}/like", "/api/v1/friendships/{id}/follow", "/api/v1/media/{id}/comment")


def _hex(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


def _body_hash(rng: random.Random) -> str:
    return hashlib.sha256(rng.randbytes(32)).hexdigest()


def ua_string(profile_app: str, version: str, code: int, d: DeviceSpec, locale: str) -> str:
    return (
        f"{profile_app} {version} Android ({d.sdk_int}/{d.release}; {d.dpi}dpi; {d.width}x{d.height}; "
        f"{d.manufacturer}; {d.model}; {d.device}; {d.hardware}; {locale}; {code})"
    )


class _Builder:
    """Builds signed requests the way a given client would send them."""

    def __init__(self, profile: ClientProfile, rng: random.Random, scenario: str, malicious: bool):
        self.profile = profile
        self.rng = rng
        self.scenario = scenario
        self.malicious = malicious
        self.n = 0
        self.app_token = profile.user_agent.pattern.pattern.split("(?P<app_name>", 1)[-1].split(")", 1)[0]

    def request(
        self,
        ts: float,
        *,
        ip: str,
        method: str,
        path: str,
        ids: dict[str, str],
        ua: str,
        key_id: str | None,
        lead_headers: Sequence[tuple[str, str]] = (),
        tail_headers: Sequence[tuple[str, str]] = (),
        title_case: bool = False,
        http_version: str = "2",
        tls: dict[str, Any] | None = None,
        h2: str | None = OKHTTP_H2,
        network: dict[str, Any] | None = None,
        attestation: dict[str, Any] | None = None,
        signed_at: float | None = None,
        corrupt_signature: bool = False,
    ) -> dict[str, Any]:
        self.n += 1
        rid = f"{self.scenario}-{self.n:08d}-{_hex(self.rng, 8)}"
        body = _body_hash(self.rng) if method == "POST" else None
        signed_at = ts if signed_at is None else signed_at

        def name(n: str) -> str:
            return "-".join(p.capitalize() for p in n.split("-")) if title_case else n

        headers: list[tuple[str, str]] = [(name(k), v) for k, v in lead_headers]
        headers.append((name("x-es-device-id"), ids["device"]))
        if "session" in ids:
            headers.append((name("x-es-session-id"), ids["session"]))
        if "account" in ids:
            headers.append((name("x-es-user-id"), ids["account"]))
        headers.append((name("x-es-timestamp"), f"{signed_at:.0f}"))
        scheme = self.profile.signing
        if scheme is not None and key_id is not None:
            key = scheme.keys[key_id]
            canonical = canonical_string(
                scheme, method=method, path=path, query=None, headers=headers, params=None, body_sha256=body
            )
            m = mac(key.secret, canonical)
            if corrupt_signature:
                m = m[:-4] + ("0000" if m[-4:] != "0000" else "1111")
            headers.append((name("x-es-signature"), signature_value(key_id, m)))
        if method == "POST":
            headers.append((name("content-type"), "application/x-www-form-urlencoded; charset=UTF-8"))
            headers.append((name("content-length"), str(self.rng.randint(40, 400))))
        headers.extend((name(k), v) for k, v in tail_headers)
        headers.append((name("user-agent"), ua))
        out: dict[str, Any] = {
            "request_id": rid,
            "ts": round(ts, 3),
            "client_ip": ip,
            "method": method,
            "path": path,
            "headers": [list(h) for h in headers],
            "http_version": http_version,
        }
        if body:
            out["body_sha256"] = body
            out["body_size"] = self.rng.randint(40, 400)
        if tls:
            out["tls"] = tls
        if h2 and http_version == "2":
            out["h2"] = {"fingerprint": h2}
        if network:
            out["network"] = network
        if attestation:
            out["attestation"] = attestation
        out["label"] = {"scenario": self.scenario, "malicious": self.malicious}
        return out


def _fill(path: str, rng: random.Random) -> str:
    return path.replace("{id}", str(rng.randint(10**9, 10**10)))


def _ip(rng: random.Random, asn: int) -> str:
    # A stable /16 per ASN so IP blocks look like real allocations.
    a = 11 + asn % 200
    b = (asn // 200) % 250
    return f"{a}.{b}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def genuine(profile: ClientProfile, count: int, seed: int, start_ts: float = DEFAULT_START_TS,
            devices: Sequence[DeviceSpec] = BUILTIN_DEVICES, rate: float | None = None) -> Iterator[dict[str, Any]]:
    """Real users of the app: many devices, versions spread over the supported window
    with the newest releases most common (staged roll-outs), mobile and Wi-Fi
    networks whose country matches the locale, sessions that open with the app's
    start-up burst and then browse with the occasional action."""
    rng = random.Random(f"genuine:{seed}")
    b = _Builder(profile, rng, "genuine", False)
    live = sorted((v for v in profile.versions.values() if v.status != "retired"), key=lambda v: v.sort_key, reverse=True)
    version_weights = [1.0 / (i + 1) ** 1.2 for i in range(len(live))]
    n_devices = max(20, count // 30)
    users = []
    for _ in range(n_devices):
        d = rng.choices(devices, weights=[x.weight for x in devices])[0]
        country = rng.choices(COUNTRIES, weights=[c[4] for c in COUNTRIES])[0]
        v = rng.choices(live, weights=version_weights)[0]
        code = rng.choice(sorted(v.codes))
        key_id = signing_key_for(profile, v)
        users.append({
            "device": d, "country": country, "locale": rng.choice(country[1]), "version": v.version, "code": code,
            "key": key_id, "device_id": f"android-{_hex(rng, 16)}", "account": str(rng.randint(10**9, 10**11)),
        })
    # Sessions are interleaved in event time with a heap of (next_ts, user index, state).
    span = count / rate if rate else max(600.0, count / 20.0)
    heap: list[tuple[float, int, int]] = []
    for i in range(len(users)):
        heapq.heappush(heap, (start_ts + rng.uniform(0, span * 0.8), i, 0))
    sessions: dict[int, dict[str, Any]] = {}
    emitted = 0
    while emitted < count and heap:
        ts, i, step = heapq.heappop(heap)
        u = users[i]
        if step == 0:
            on_mobile = rng.random() < 0.55
            asn, org = rng.choice(u["country"][2] if on_mobile else u["country"][3])
            sessions[i] = {
                "sid": f"{_hex(rng, 8)}-{_hex(rng, 4)}-4{_hex(rng, 3)}-{rng.choice('89ab')}{_hex(rng, 3)}-{_hex(rng, 12)}",
                "ip": _ip(rng, asn),
                "network": {"asn": asn, "as_org": org, "country": u["country"][0], "hosting": False},
                "conn": "MOBILE.LTE" if on_mobile else "WIFI",
                "length": rng.randint(6, 40),
            }
        s = sessions[i]
        if step < len(STARTUP_PATHS):
            method, path = "GET" if step != 0 else "POST", STARTUP_PATHS[step]
        elif rng.random() < 0.12:
            method, path = "POST", _fill(rng.choice(ACTION_PATHS), rng)
        else:
            method, path = "GET", _fill(rng.choice(BROWSE_PATHS), rng)
        d = u["device"]
        yield b.request(
            ts, ip=s["ip"], method=method, path=path,
            ids={"device": u["device_id"], "account": u["account"], "session": s["sid"]},
            ua=ua_string(b.app_token, u["version"], u["code"], d, u["locale"]), key_id=u["key"],
            lead_headers=(),
            tail_headers=(("accept-language", u["locale"].replace("_", "-")), ("x-es-connection-type", s["conn"]),
                          ("x-es-bandwidth-kbps", str(int(rng.gauss(8000 if s["conn"] == "WIFI" else 3000, 600)))),
                          ("accept-encoding", "gzip")),
            tls={"ja4": OKHTTP_JA4, "alpn": "h2", "version": "1.3", "sni": "api.example-social.test"},
            network=s["network"],
            attestation={"provider": "play_integrity", "app_recognition": "PLAY_RECOGNIZED",
                         "device_recognition": ["MEETS_DEVICE_INTEGRITY", "MEETS_BASIC_INTEGRITY"],
                         "request_hash_ok": True, "token_age_s": round(rng.uniform(1, 240), 1)},
        )
        emitted += 1
        if step + 1 < s["length"]:
            gap = rng.uniform(0.05, 0.4) if step + 1 < len(STARTUP_PATHS) else rng.lognormvariate(1.6, 0.9)
            heapq.heappush(heap, (ts + gap, i, step + 1))
        else:
            heapq.heappush(heap, (ts + rng.uniform(span * 0.2, span), i, 0))


# The hard-coded default device of a popular private-API library: every install
# of the library sends this same tuple (detections.md, adversary 1).
LIBRARY_DEFAULT_DEVICE = DeviceSpec("OnePlus", "ONEPLUS A3010", "OnePlus3T", "qcom", 420, 1080, 1920, 26, "8.0.0")


def private_api_library(profile: ClientProfile, count: int, seed: int, start_ts: float = DEFAULT_START_TS,
                        evasion: int = 0, rate: float | None = None) -> Iterator[dict[str, Any]]:
    """A script reproducing the private API from servers: desktop TLS, HTTP/1.1, the
    library's header order and case, one hard-coded default device for every account,
    a fixed delay between calls, datacenter IPs. It signs with a key extracted from an
    old build. `evasion` 0..2: how closely it copies the app (2 = current version
    string and lower-case headers, but the same desktop stack underneath)."""
    rng = random.Random(f"private_api_library:{seed}")
    b = _Builder(profile, rng, "private_api_library", True)
    retired = [v for v in profile.versions.values() if v.status == "retired" and v.keys]
    old = max(retired, key=lambda v: v.sort_key) if retired and evasion < 2 else profile.newest_version
    version, code = old.version, min(old.codes)
    key_id = signing_key_for(profile, old)
    accounts = [str(rng.randint(10**9, 10**11)) for _ in range(max(5, count // 50))]
    device_id = f"android-{_hex(rng, 16)}"
    delay = 2.0 if rate is None else 1.0 / rate
    ts = start_ts + rng.uniform(0, 5)
    hosts = [(16509, "Amazon.com"), (14061, "DigitalOcean"), (24940, "Hetzner Online")]
    for i in range(count):
        asn, org = hosts[i // 200 % len(hosts)]
        acct = accounts[i % len(accounts)]
        lead = () if evasion >= 2 else (("accept-encoding", "gzip, deflate"), ("accept", "*/*"), ("connection", "keep-alive"))
        yield b.request(
            ts, ip=f"{3 + asn % 50}.{asn % 250}.{i // 200 % 250}.{10 + i % 200}", method="POST" if i % 3 == 0 else "GET",
            path=_fill(rng.choice(ACTION_PATHS if i % 3 == 0 else BROWSE_PATHS), rng),
            ids={"device": device_id, "account": acct},
            ua=ua_string(b.app_token, version, code, LIBRARY_DEFAULT_DEVICE, "en_US"), key_id=key_id,
            lead_headers=lead, title_case=evasion < 2, http_version="1.1", h2=None,
            tls={"ja4": PYTHON_REQUESTS_JA4, "alpn": "http/1.1", "version": "1.3"},
            network={"asn": asn, "as_org": org, "country": "US", "hosting": True},
        )
        ts += delay


SCENARIOS: dict[str, Callable[..., Iterator[dict[str, Any]]]] = {
    "genuine": genuine,
    "private_api_library": private_api_library,
}


def simulate(scenario: str, profile: ClientProfile, count: int, seed: int, start_ts: float = DEFAULT_START_TS,
             rate: float | None = None) -> Iterator[dict[str, Any]]:
    try:
        gen = SCENARIOS[scenario]
    except KeyError:
        raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(sorted(SCENARIOS))}") from None
    return gen(profile, count, seed, start_ts, rate=rate)


def mixed(profile: ClientProfile, count: int, seed: int, start_ts: float = DEFAULT_START_TS,
          attack_share: float = 0.05, rate: float | None = None) -> list[dict[str, Any]]:
    """Genuine traffic with attacks interleaved in event time."""
    n_attack = int(count * attack_share)
    events = list(genuine(profile, count - n_attack, seed, start_ts, rate=rate))
    if n_attack:
        span = (events[-1]["ts"] - start_ts) if events else 60.0
        arate = n_attack / max(span, 1.0)
        events.extend(private_api_library(profile, n_attack, seed, start_ts, rate=arate))
    events.sort(key=lambda e: e["ts"])
    return events
