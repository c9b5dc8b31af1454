"""Write the golden fixtures per signal code, tests/fixtures/codes/<code>.jsonl and
<code>.expected.json (tests/unit/test_code_fixtures.py reads them; it never runs
this script).

Every fixture starts from the simulator's genuine traffic (fixed seed) and makes the
one change that triggers its code: a stateless code gets a genuine request of one user
unchanged (the control) and a genuine request of another user with the change; a
behaviour code gets the sequence of requests over event time that raises its flag,
ending with a request that carries it. Each fixture is scored here through the path
`detector score` uses (decode, OfflineScorer, a fixed reference time) and written
only when its `must` codes appear and its `must_not` codes do not; the expected file
also keeps the codes of every verdict (golden), which the test compares.

Run `python scripts/build_code_fixtures.py` after a change that should change what a
fixture gives, and review the diff of tests/fixtures/codes/.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from detector.behaviour.offline import OfflineScorer  # noqa: E402
from detector.decode import decode_line  # noqa: E402
from detector.engine import DEFAULT_CONFIG, DetectionConfig  # noqa: E402
from detector.profile import ClientProfile  # noqa: E402
from detector.simulate import device_checksum, genuine, resign  # noqa: E402
from detector.simulate.wire import app_body, signed_body  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "codes"
SEED = 12
POOL = 3000  # genuine requests the fixtures are drawn from

Request = dict[str, Any]


# --- running a fixture (what tests/unit/test_code_fixtures.py does) ------------------

def _profile_value(section: str, key: str, value: Any) -> Any:
    """A profile change's JSON value as the profile holds it (headers.clock: a list of
    {header, unit, max_skew_s})."""
    from detector.profile import ClockHeader

    if section == "headers" and key == "clock":
        return tuple(ClockHeader(c["header"], c.get("unit", "s"), float(c["max_skew_s"])) for c in value)
    return value

def with_profile_changes(cfg: DetectionConfig, changes: dict[str, Any]) -> DetectionConfig:
    """`cfg` with fields of the default profile's sections replaced, e.g.
    {"tls": {"required": True}}: for a code the shipped profile never raises."""
    if not changes:
        return cfg
    p = cfg.profiles[cfg.default_profile]
    for section, values in changes.items():
        p = dataclasses.replace(p, **{section: dataclasses.replace(
            getattr(p, section), **{k: _profile_value(section, k, v) for k, v in values.items()})})
    return dataclasses.replace(cfg, profiles={**cfg.profiles, cfg.default_profile: p})


def score_lines(cfg: DetectionConfig, lines: list[bytes], reference_time: float) -> tuple[list[list[str]], list[str]]:
    """The signal codes of each verdict, in input order, and the behaviour flags
    raised in the run (`entity type:code`, sorted)."""
    requests = [decode_line(line, cfg.limits) for line in lines]
    scorer = OfflineScorer(cfg, reference_time=reference_time)
    verdicts, _ = scorer.score(requests)
    flags = sorted({f"{etype}:{f.code}" for (etype, _), fl in scorer.flags.current().items() for f in fl})
    return [[s.code for s in v.signals] for v in verdicts], flags


# --- building requests ----------------------------------------------------------------
class Kit:
    """Helpers over the genuine pool: users, copies moved in time, header edits."""

    def __init__(self, cfg: DetectionConfig):
        self.cfg = cfg
        self.profile: ClientProfile = cfg.profiles[cfg.default_profile]
        self.pool = list(genuine(self.profile, POOL, seed=SEED, catalogue=cfg.catalogue))
        self.order = list(self.profile.headers.order) if self.profile.headers else []
        by_device: dict[str, list[Request]] = {}
        for e in self.pool:
            by_device.setdefault(self.header(e, "x-es-device-id") or "", []).append(e)
        self.users = [reqs for reqs in by_device.values() if len(reqs) >= 6]

    @staticmethod
    def header(e: Request, name: str) -> str | None:
        return next((v for n, v in e["headers"] if n.lower() == name), None)

    def set_headers(self, e: Request, **values: str | None) -> Request:
        """Set (None: remove) headers by lower-case name (`_` for `-`), in the app's order."""
        out = copy.deepcopy(e)
        hs = {n: v for n, v in out["headers"]}
        for k, v in values.items():
            name = k.replace("_", "-")
            if v is None:
                hs.pop(name, None)
            else:
                hs[name] = v
        rank = {n: i for i, n in enumerate(self.order)}
        out["headers"] = [[n, hs[n]] for n in sorted(hs, key=lambda n: rank.get(n, len(rank)))]
        return out

    def ua_fields(self, e: Request, **fields: str) -> Request:
        """Rewrite named fields of the user agent (the example grammar's order)."""
        ua = self.header(e, "user-agent") or ""
        head, rest = ua.split(" (", 1)
        parts = rest[:-1].split("; ")
        names = ["sdk_release", "dpi", "size", "manufacturer", "model", "device", "hardware", "locale", "version_code"]
        for k, v in fields.items():
            if k == "version":
                app, _, tail = head.split(" ", 2)
                head = f"{app} {v} {tail}"
            else:
                parts[names.index(k)] = v
        return self.set_headers(e, user_agent=f"{head} ({'; '.join(parts)})")

    def ua_field(self, e: Request, name: str) -> str:
        ua = self.header(e, "user-agent") or ""
        if name == "version":
            return ua.split(" ")[1]
        names = ["sdk_release", "dpi", "size", "manufacturer", "model", "device", "hardware", "locale", "version_code"]
        return ua.split(" (", 1)[1][:-1].split("; ")[names.index(name)]

    def signed(self, e: Request, key_id: str | None = None) -> Request:
        return resign(self.profile, e, key_id)

    def at(self, e: Request, ts: float, rid: str, **headers: str | None) -> Request:
        """A copy of `e` sent at `ts` (signed then, keeping the device's clock offset),
        with header changes, re-signed: a new request of the same client."""
        offset = e["ts"] - float(self.header(e, "x-es-timestamp") or e["ts"])
        out = self.set_headers(e, x_es_timestamp=str(int(ts - offset)), **headers)
        out.update(ts=round(ts, 3), request_id=rid)
        return self.signed(out)

    def device(self, e: Request, device_id: str) -> dict[str, str]:
        return {"x_es_device_id": device_id, "x_es_device_checksum": device_checksum(self.profile, device_id)}

    @staticmethod
    def new_device(rng: random.Random) -> str:
        return "android-" + "".join(rng.choice("0123456789abcdef") for _ in range(16))

    @staticmethod
    def new_account(rng: random.Random) -> str:
        return str(rng.randint(10**9, 10**10 - 1))

    def browse(self, e: Request, rng: random.Random) -> Request:
        out = self.set_headers(e, content_type=None, content_length=None)
        for k in ("body_sha256", "body_size", "body"):
            out.pop(k, None)
        out.update(method="GET", path="/api/v1/feed/timeline", query=f"max_id={rng.randint(10**17, 10**18)}&page=1")
        return out

    def action(self, e: Request, rng: random.Random) -> Request:
        rng.randint(50, 110)  # drawn as before the body was the app's, so the fixtures stay as they were
        path = f"/api/v1/media/{rng.randint(10**17, 10**18)}/like"
        rng.randbytes(32)
        text = app_body(path, device_id=self.header(e, "x-es-device-id") or "",
                        account=self.header(e, "x-es-user-id"), conn=self.header(e, "x-es-connection-type"))
        size = len(text.encode())
        out = self.set_headers(e, content_type="application/x-www-form-urlencoded; charset=UTF-8",
                               content_length=str(size))
        out.pop("query", None)
        out.update(method="POST", path=path, body_size=size, body_sha256=hashlib.sha256(text.encode()).hexdigest(),
                   body={"text": text, "encoding": "text", "truncated": False})
        return out

    def templates(self) -> Iterator[Request]:
        """One genuine request per user (a browsing call where the user has one), then
        the users' other requests: candidates for a change."""
        for reqs in self.users:
            yield next((e for e in reqs if e["path"] == "/api/v1/feed/timeline"), reqs[-1])
        for reqs in self.users:
            yield from reqs

    def handsets(self) -> list[Request]:
        """One browsing request per distinct handset and app version (a distinct
        population fingerprint each)."""
        seen: dict[str, Request] = {}
        for reqs in self.users:
            e = next((x for x in reqs if x["path"] == "/api/v1/feed/timeline"), None)
            if e is None or ":" in e["client_ip"]:
                continue
            key = (self.header(e, "user-agent") or "").split(";")[:7]
            seen.setdefault("|".join(key), e)
        return list(seen.values())


def clean(e: Request) -> Request:
    out = copy.deepcopy(e)
    out.pop("label", None)
    return out


# --- stateless codes: one change of a genuine request ---------------------------------
Change = Callable[[Kit, Request], Request]


def _sig(k: Kit, e: Request) -> str:
    return k.header(e, "x-es-signature") or ""


def _other_code(k: Kit, e: Request) -> str:
    v = k.ua_field(e, "version")
    return str(next(c for ver in k.profile.versions.values() if ver.version != v for c in sorted(ver.codes)))


# --- body codes: one change of a genuine request's body (POSTs carry the app's body) ---
LIBRARY_UUID = "2c9f6e4a-8a7e-4d2b-9b1e-6f0c3d5a7e10"  # the example profile's body.fields._uuid.deny


def _envelope(e: Request) -> dict[str, str] | None:
    """The JSON fields of a genuine POST's signed_body envelope (None: no body)."""
    text = (e.get("body") or {}).get("text")
    if not isinstance(text, str) or not text.startswith("signed_body="):
        return None
    value = dict(parse_qsl(text))["signed_body"]
    fields: dict[str, str] = orjson.loads(value.partition(".")[2])
    return fields


def with_body(k: Kit, e: Request, text: str, **headers: str | None) -> Request:
    """`e` with the body `text` (its size, hash and Content-Length), re-signed."""
    out = k.set_headers(e, content_length=str(len(text.encode())), **headers)
    out.update(body={"text": text, "encoding": "text", "truncated": False}, body_size=len(text.encode()),
               body_sha256=hashlib.sha256(text.encode()).hexdigest())
    return k.signed(out)


def body_change(change: Callable[[dict[str, str]], str | dict[str, str]], **headers: str | None) -> Change:
    """A change of the envelope's fields (a dict: the app's envelope around it; a
    string: the whole body), on a genuine POST only (others are left as they are)."""
    def mutate(k: Kit, e: Request) -> Request:
        fields = _envelope(e)
        if fields is None:
            return e
        made = change(dict(fields))
        text = made if isinstance(made, str) else signed_body(made)
        return with_body(k, e, text, **headers)
    return mutate


def _cut_json(fields: dict[str, str]) -> str:
    return orjson.dumps(fields).decode()[:-9]


def _drop(fields: dict[str, str], name: str) -> dict[str, str]:
    fields.pop(name, None)
    return fields


UNKNOWN_JA4 = "t13d0000h2_000000000000_000000000000"
CURL_JA4 = "t13d3112h2_e8f1e7e78f70_b26ce05bbdd6"  # curl 7.88 on OpenSSL 3, in config/fingerprints/known-stacks.yaml

STATELESS: dict[str, tuple[str, Change]] = {
    "ua.missing": ("no User-Agent header", lambda k, e: k.set_headers(e, user_agent=None)),
    "ua.malformed": ("the user agent's field list written as 'Android/' instead of 'Android ('",
                     lambda k, e: k.set_headers(e, user_agent=(k.header(e, "user-agent") or "").replace(
                         " Android (", " Android/"))),
    "ua.unknown_version": ("app version 250.0.0, older than the table and not in it",
                           lambda k, e: k.ua_fields(e, version="250.0.0")),
    "ua.newer_version": ("app version 999.0.0, newer than the table",
                         lambda k, e: k.ua_fields(e, version="999.0.0")),
    "ua.retired_version": ("the retired version 311.0.0 with its own code, signed with its own (retired) key",
                           lambda k, e: k.signed(k.ua_fields(e, version="311.0.0", version_code="602803362"),
                                                 "demo-2025")),
    "ua.version_code_mismatch": ("the version code of another version",
                                 lambda k, e: k.ua_fields(e, version_code=_other_code(k, e))),
    "signature.missing": ("no signature header", lambda k, e: k.set_headers(e, x_es_signature=None)),
    "signature.malformed": ("a signature header in another format",
                            lambda k, e: k.set_headers(e, x_es_signature="v2:whatever")),
    "signature.unknown_key": ("signed with a key id the profile does not know",
                              lambda k, e: k.set_headers(e, x_es_signature="v1:stolen-key:" + "0" * 64)),
    "signature.retired_key": ("version 312.0.0 (which carries the retired key) signed with the retired key",
                              lambda k, e: k.signed(k.ua_fields(e, version="312.0.0", version_code="602941585"),
                                                    "demo-2025")),
    "signature.key_not_in_build": ("version 318.0.0 signed with demo-2026a, a key of older builds only",
                                   lambda k, e: k.signed(k.ua_fields(e, version="318.0.0", version_code="604112318"),
                                                         "demo-2026a")),
    "signature.invalid": ("the signature's last six hex digits replaced",
                          lambda k, e: k.set_headers(e, x_es_signature=_sig(k, e)[:-6] + "000000")),
    "signature.timestamp_skew": ("signed an hour before the request's time (re-signed, so it verifies)",
                                 lambda k, e: k.signed(k.set_headers(e, x_es_timestamp=str(
                                     int(float(k.header(e, "x-es-timestamp") or 0)) - 3600)))),
    "device.emulator": ("the device tuple of an Android Studio emulator image",
                        lambda k, e: k.ua_fields(e, manufacturer="Google", model="sdk_gphone64_x86_64",
                                                 device="emu64xa", hardware="ranchu")),
    "device.emulator_screen": ("a default emulator screen (320dpi 768x1184) on the user's own model",
                               lambda k, e: k.ua_fields(e, dpi="320dpi", size="768x1184")),
    "device.sdk_release_mismatch": ("API level and release swapped (release/API)",
                                    lambda k, e: k.ua_fields(e, sdk_release="/".join(
                                        reversed(k.ua_field(e, "sdk_release").split("/"))))),
    "device.unknown_pair": ("the model with a device codename Google Play never pairs with it",
                            lambda k, e: k.ua_fields(e, device="zzfixture")),
    "device.dpi_impossible": ("a density of 100 dpi", lambda k, e: k.ua_fields(e, dpi="100dpi")),
    "device.resolution_impossible": ("a screen width the model's panel does not have",
                                     lambda k, e: k.ua_fields(e, size="1234x" + k.ua_field(e, "size").split("x")[1])),
    "device.hardware_mismatch": ("a MediaTek or Qualcomm platform swapped for the other vendor's",
                                 lambda k, e: k.ua_fields(e, hardware="qcom" if k.ua_field(e, "hardware").startswith(
                                     "mt") else "mt6765")),
    "device.sdk_out_of_range": ("Android 6 (API 23), older than the model ever ran",
                                lambda k, e: k.ua_fields(e, sdk_release="23/6.0")),
    "headers.missing_required": ("no x-es-connection-type header",
                                 lambda k, e: k.set_headers(e, x_es_connection_type=None)),
    "headers.forbidden": ("an 'accept: */*' header appended",
                          lambda k, e: {**e, "headers": [*e["headers"], ["accept", "*/*"]]}),
    "headers.unexpected": ("an 'x-debug: 1' header appended",
                           lambda k, e: {**e, "headers": [*e["headers"], ["x-debug", "1"]]}),
    "headers.order_mismatch": ("user-agent sent before accept-encoding",
                               lambda k, e: {**e, "headers": [h for h in e["headers"] if h[0] != "accept-encoding"]
                                             + [["accept-encoding", "gzip"]]}),
    "headers.name_case": ("the User-Agent header name in Title-Case",
                          lambda k, e: {**e, "headers": [["User-Agent" if n == "user-agent" else n, v]
                                                         for n, v in e["headers"]]}),
    "headers.value_invalid": ("accept-encoding 'gzip, deflate'",
                              lambda k, e: k.set_headers(e, accept_encoding="gzip, deflate")),
    "headers.inconsistent": ("accept-language of another locale than the user agent's",
                             lambda k, e: k.set_headers(e, accept_language="fr-FR" if k.ua_field(
                                 e, "locale") != "fr_FR" else "de-DE")),
    "headers.checksum_mismatch": ("a device checksum that is not the device id's",
                                  lambda k, e: k.set_headers(e, x_es_device_checksum="00000000")),
    "tls.missing": ("no TLS facts, with the profile's tls.required set",
                    lambda k, e: {key: v for key, v in e.items() if key != "tls"}),
    "tls.fingerprint_mismatch": ("a JA4 of no known stack",
                                 lambda k, e: {**e, "tls": {**e["tls"], "ja4": UNKNOWN_JA4}}),
    "tls.known_automation_stack": ("curl's JA4 (known-stacks.yaml)",
                                   lambda k, e: {**e, "tls": {**e["tls"], "ja4": CURL_JA4}}),
    "tls.alpn_mismatch": ("ALPN offering http/1.1 first", lambda k, e: {**e, "tls": {**e["tls"], "alpn": "http/1.1"}}),
    "tls.client_hello_invalid": ("a captured ClientHello that is not one",
                                 lambda k, e: {**e, "tls": {"client_hello": "AAAAAAAA"}}),
    "transport.http_version": ("HTTP/1.1 (and so no HTTP/2 fingerprint)",
                               lambda k, e: {**{key: v for key, v in e.items() if key != "h2"}, "http_version": "1.1"}),
    "transport.h2_fingerprint_mismatch": ("an HTTP/2 fingerprint of no known stack",
                                          lambda k, e: {**e, "h2": {"fingerprint": "4:1|2|0|m,p,a,s"}}),
    "transport.known_browser_h2": ("Chrome's HTTP/2 fingerprint",
                                   lambda k, e: {**e, "h2": {"fingerprint":
                                                             "1:65536;2:0;4:6291456;6:262144|15663105|0|m,a,s,p"}}),
    "transport.sni_host_mismatch": ("a TLS SNI of a host outside the profile's scope (the :authority is the API's)",
                                    lambda k, e: {**e, "tls": {**e["tls"], "sni": "lb-7.origin.example.net"}}),
    "attestation.missing": ("no attestation", lambda k, e: {key: v for key, v in e.items() if key != "attestation"}),
    "attestation.unknown_provider": ("attestation provider 'safetynet'",
                                     lambda k, e: {**e, "attestation": {**e["attestation"], "provider": "safetynet"}}),
    "attestation.app_unrecognized": ("app recognition UNRECOGNIZED_VERSION",
                                     lambda k, e: {**e, "attestation": {**e["attestation"],
                                                                        "app_recognition": "UNRECOGNIZED_VERSION"}}),
    "attestation.device_integrity_failed": ("basic integrity only",
                                            lambda k, e: {**e, "attestation": {
                                                **e["attestation"], "device_recognition": ["MEETS_BASIC_INTEGRITY"]}}),
    "attestation.virtual_only": ("virtual integrity only",
                                 lambda k, e: {**e, "attestation": {
                                     **e["attestation"], "device_recognition": ["MEETS_VIRTUAL_INTEGRITY"]}}),
    "attestation.request_hash_mismatch": ("a token bound to another request",
                                          lambda k, e: {**e, "attestation": {**e["attestation"],
                                                                             "request_hash_ok": False}}),
    "attestation.stale_token": ("a token 900 s old",
                                lambda k, e: {**e, "attestation": {**e["attestation"], "token_age_s": 900.0}}),
    "identity.invalid_device_id": ("a device id 'device-12345' (with its checksum, re-signed)",
                                   lambda k, e: k.signed(k.set_headers(e, **k.device(e, "device-12345")))),
    "identity.invalid_account_id": ("an account id 'user_abc'", lambda k, e: k.set_headers(e, x_es_user_id="user_abc")),
    "identity.invalid_session_id": ("a session id that is not a UUID",
                                    lambda k, e: k.set_headers(e, x_es_session_id="session-0001")),
    "identity.time_based_uuid": ("a version-1 UUID as session id (RFC 4122's example)",
                                 lambda k, e: k.set_headers(e, x_es_session_id="6ba7b810-9dad-11d1-80b4-00c04fd430c8")),
    "headers.denylisted_value": ("the simulated library's hard-coded device id (with its checksum, re-signed)",
                                 lambda k, e: k.signed(k.set_headers(e, **k.device(e, "android-4f6e3a2b1c0d9e8f")))),
    "headers.clock_skew": ("a client clock 120 s behind (re-signed: within the signature's 300 s), with a "
                           "headers.clock rule of 60 s on x-es-timestamp",
                           lambda k, e: k.signed(k.set_headers(e, x_es_timestamp=str(
                               int(float(k.header(e, "x-es-timestamp") or 0)) - 120)))),
    "body.missing_required": ("a POST's envelope without radio_type", body_change(lambda f: _drop(f, "radio_type"))),
    "body.forbidden": ("sig_key_version=4 beside the envelope (the old body HMAC's field)",
                       body_change(lambda f: signed_body(f) + "&sig_key_version=4")),
    "body.value_invalid": ("radio_type 'wifi' (the app writes wifi-none)",
                           body_change(lambda f: {**f, "radio_type": "wifi"})),
    "body.denylisted_value": ("the simulated library's hard-coded _uuid",
                              body_change(lambda f: {**f, "_uuid": LIBRARY_UUID})),
    "body.unexpected_encoding": ("the envelope's fields as a plain form (no signed_body)",
                                 body_change(lambda f: urlencode(f))),
    "body.content_type_mismatch": ("the app's body under Content-Type: application/json",
                                   body_change(lambda f: f, content_type="application/json; charset=UTF-8")),
    "body.unparseable": ("an envelope whose JSON is cut off",
                         body_change(lambda f: urlencode({"signed_body": "SIGNATURE." + _cut_json(f)}))),
    "body.signature_stale": ("an HMAC-SHA256 of the JSON in the envelope instead of the SIGNATURE marker",
                             body_change(lambda f: signed_body(f, hashlib.sha256(orjson.dumps(f)).hexdigest()))),
    "body.signature_invalid": ("the envelope signed 'SIGNED' (neither the marker nor an HMAC)",
                               body_change(lambda f: signed_body(f, "SIGNED"))),
    "network.hosting": ("a hosting network (DigitalOcean) in the user's own country",
                        lambda k, e: {**e, "network": {**e["network"], "asn": 14061, "as_org": "DigitalOcean",
                                                       "hosting": True}}),
    "network.locale_country_mismatch": ("an IP country other than the locale's",
                                        lambda k, e: {**e, "network": {**e["network"], "country": "JP" if e[
                                            "network"]["country"] != "JP" else "BR"}}),
}
PROFILE_CHANGES: dict[str, dict[str, Any]] = {
    "tls.missing": {"tls": {"required": True}},
    "headers.clock_skew": {"headers": {"clock": [{"header": "x-es-timestamp", "unit": "s", "max_skew_s": 60}]}},
}


# --- behaviour codes: a sequence over event time --------------------------------------
Sequence_ = Callable[[Kit, random.Random], list[Request]]


def _gaps(rng: random.Random, n: int, lo: float = 5.0, hi: float = 60.0) -> list[float]:
    return [round(rng.uniform(lo, hi), 3) for _ in range(n)]


def _times(rng: random.Random, start: float, n: int, lo: float = 5.0, hi: float = 60.0) -> list[float]:
    out, t = [], start
    for g in _gaps(rng, n, lo, hi):
        t += g
        out.append(t)
    return out


def _user(k: Kit, i: int = 0) -> list[Request]:
    """The i-th user with an IPv4 address."""
    return [reqs for reqs in k.users if ":" not in reqs[0]["client_ip"]][i]


def _block_ip(base: str, n: int) -> str:
    return base.rsplit(".", 1)[0] + f".{10 + n % 240}"


def _other_ip(n: int) -> str:
    return f"198.51.{n % 250}.{20 + n % 200}"


def replay_same_network(k: Kit, rng: random.Random) -> list[Request]:
    e = clean(_user(k)[2])
    return [e] + [{**e, "request_id": f"fx-{i}", "ts": e["ts"] + d} for i, d in ((1, 4.2), (2, 9.7))]


def replay_elsewhere(k: Kit, rng: random.Random) -> list[Request]:
    e = clean(_user(k)[2])
    return [e] + [{**e, "request_id": f"fx-{i}", "ts": e["ts"] + d, "client_ip": _other_ip(i)}
                  for i, d in ((1, 40.0), (2, 75.0))]


def device_replayed(k: Kit, rng: random.Random) -> list[Request]:
    own = [clean(e) for e in _user(k, 1)[:6]]
    last = own[-1]["ts"]
    # the first captured request re-sent from another network, then the second
    return own + [{**own[1], "request_id": "fx-replay-1", "ts": last + 30.0, "client_ip": _other_ip(1)},
                  {**own[2], "request_id": "fx-replay-2", "ts": last + 41.5, "client_ip": _other_ip(2)}]


def device_accounts(k: Kit, rng: random.Random) -> list[Request]:
    e = clean(k.browse(_user(k)[0], rng))
    times = _times(rng, e["ts"], 7)
    accounts = [k.new_account(rng) for _ in range(6)]
    accounts.append(accounts[0])
    return [k.at(k.browse(e, rng), t, f"fx-{i}", x_es_user_id=a)
            for i, (t, a) in enumerate(zip(times, accounts, strict=True))]


def account_devices(k: Kit, rng: random.Random) -> list[Request]:
    e = clean(k.browse(_user(k)[0], rng))
    times = _times(rng, e["ts"], 7, 30, 600)
    devices = [k.new_device(rng) for _ in range(6)]
    devices.append(devices[0])
    return [k.at(k.browse(e, rng), t, f"fx-{i}", **k.device(e, d))
            for i, (t, d) in enumerate(zip(times, devices, strict=True))]


def _crowd(k: Kit, rng: random.Random, n: int, per_device: int, *, accounts: bool, per_handset: int = 4,
           ip: Callable[[int], str] | None = None, network: dict[str, Any] | None = None,
           handsets: list[Request] | None = None) -> list[Request]:
    """`n` requests within the hour of distinct accounts (or none: logged out) on
    devices carrying `per_device` accounts each, `per_handset` devices per handset,
    then one more request of the first client (which carries the flag)."""
    pool = handsets if handsets is not None else k.handsets()
    start = pool[0]["ts"]
    times = _times(rng, start, n + 1, 3, 60 * 50 / n)
    out: list[Request] = []
    devices: list[tuple[Request, str]] = []
    for i in range(n):
        if i % per_device == 0:
            d = len(devices)
            devices.append((clean(pool[(d // per_handset) % len(pool)]), k.new_device(rng)))
        e, dev = devices[-1]
        req = k.at(k.browse(e, rng), times[i], f"fx-{i}", **k.device(e, dev),
                   x_es_user_id=k.new_account(rng) if accounts else None)
        req["client_ip"] = ip(i) if ip else req["client_ip"]
        if network is not None:
            req["network"] = {**req["network"], **network}
        out.append(req)
    last = {**k.at(k.browse(out[0], rng), times[n], f"fx-{n}"), "client_ip": out[0]["client_ip"]}
    return out + [last]


def ip_block_accounts(k: Kit, rng: random.Random) -> list[Request]:
    base = k.handsets()[0]["client_ip"]
    return _crowd(k, rng, 41, 4, accounts=True, per_handset=1, ip=lambda i: _block_ip(base, i))


def ip_block_devices(k: Kit, rng: random.Random) -> list[Request]:
    base = k.handsets()[0]["client_ip"]
    return _crowd(k, rng, 41, 1, accounts=False, ip=lambda i: _block_ip(base, i))


HOSTING = {"asn": 14061, "as_org": "DigitalOcean", "hosting": True}


def hosting_accounts(k: Kit, rng: random.Random) -> list[Request]:
    return _crowd(k, rng, 16, 4, accounts=True, per_handset=1, ip=_other_ip, network=HOSTING)


def hosting_devices(k: Kit, rng: random.Random) -> list[Request]:
    return _crowd(k, rng, 16, 1, accounts=False, ip=_other_ip, network=HOSTING)


def fingerprint_devices(k: Kit, rng: random.Random) -> list[Request]:
    base = k.handsets()[0]["client_ip"]
    return _crowd(k, rng, 26, 1, accounts=False, per_handset=26, ip=lambda i: _block_ip(base, i % 2) if i % 2
                  else _other_ip(0))


def fingerprint_accounts(k: Kit, rng: random.Random) -> list[Request]:
    return _crowd(k, rng, 41, 4, accounts=True, per_handset=11, ip=lambda i: _other_ip(i % 5))


def bulk_accounts(k: Kit, rng: random.Random) -> list[Request]:
    e = clean(k.browse(_user(k)[0], rng))
    first = 4_210_000_000
    ids = [first, first + 1373, first + 4410, 9_876_543_210, first + 2000]  # the 4th: a real user of the phone
    times = _times(rng, e["ts"], len(ids), 20, 120)
    return [k.at(k.browse(e, rng), t, f"fx-{i}", **k.device(e, k.new_device(rng)), x_es_user_id=str(a))
            for i, (t, a) in enumerate(zip(times, ids, strict=True))]


def action_velocity(k: Kit, rng: random.Random) -> list[Request]:
    e = clean(k.browse(_user(k)[0], rng))
    times = _times(rng, e["ts"], 25, 0.4, 4.0)
    out = [k.at(k.browse(e, rng), times[i], f"fx-{i}") for i in range(2)]
    out += [k.at(k.action(e, rng), times[i], f"fx-{i}") for i in range(2, 24)]
    return out + [k.at(k.browse(e, rng), times[24], "fx-24")]


def cadence(k: Kit, rng: random.Random) -> list[Request]:
    e = clean(k.browse(_user(k)[0], rng))
    return [k.at(k.browse(e, rng), e["ts"] + 8.0 * (i + 1), f"fx-{i}") for i in range(14)]


def action_only(k: Kit, rng: random.Random) -> list[Request]:
    reqs = _user(k)
    startup = [clean(e) for e in reqs if k.profile.endpoint_class(e["path"]) == "startup"][:2]
    t = startup[-1]["ts"]
    return startup + [k.at(k.action(startup[-1], rng), t + 2.5, "fx-action"),
                      k.at(k.browse(startup[-1], rng), t + 9.0, "fx-after")]


def _net(e: Request, asn: int, country: str) -> dict[str, Any]:
    return {**e["network"], "asn": asn, "as_org": f"AS{asn} fixture ISP", "country": country, "hosting": False}


def travel(k: Kit, rng: random.Random) -> list[Request]:
    e = clean(k.browse(_user(k)[0], rng))
    home = e["network"]["country"]
    far = "US" if home != "US" else "JP"
    stops = [(home, e["network"]["asn"]), ("DE" if home != "DE" else "FR", 3320), (far, 7922), (far, 7922)]
    out = []
    for i, (country, asn) in enumerate(stops):
        req = k.at(k.browse(e, rng), e["ts"] + 600.0 * i + rng.uniform(0, 30), f"fx-{i}")
        out.append({**req, "client_ip": _other_ip(i), "network": _net(e, asn, country)})
    return out


def asn_hopping(k: Kit, rng: random.Random) -> list[Request]:
    e = clean(k.browse(_user(k)[0], rng))
    out = []
    for i in range(8):
        req = k.at(k.browse(e, rng), e["ts"] + 300.0 * i + rng.uniform(0, 60), f"fx-{i}")
        out.append({**req, "client_ip": _other_ip(i), "network": _net(e, 64500 + min(i, 6), e["network"]["country"])})
    return out


BEHAVIOUR: dict[str, tuple[str, Sequence_, list[str]]] = {
    "replay.signature_reused": ("a genuine request re-sent twice from its own address", replay_same_network,
                                ["replay.signature_reused_elsewhere"]),
    "replay.signature_reused_elsewhere": ("a genuine request re-sent twice from other networks", replay_elsewhere,
                                          ["replay.signature_reused"]),
    "replay.device_replayed": ("six requests of a device, then two of them re-sent from other networks",
                               device_replayed, []),
    "behaviour.device_account_fanout": ("one device used by six accounts within minutes", device_accounts,
                                        ["behaviour.account_device_fanout"]),
    "behaviour.account_device_fanout": ("one account on six devices within an hour", account_devices,
                                        ["behaviour.device_account_fanout"]),
    "behaviour.ip_block_account_fanout": ("41 accounts (4 per device, distinct handsets) behind one /24",
                                          ip_block_accounts, ["behaviour.ip_block_device_fanout",
                                                              "population.fingerprint_account_surge"]),
    "behaviour.ip_block_device_fanout": ("41 logged-out devices behind one /24", ip_block_devices,
                                         ["behaviour.ip_block_account_fanout", "population.fingerprint_device_surge"]),
    # (both hosting-ASN flags are raised on the ASN entity, which no verdict names: they
    # show in the raised flags, not in a verdict's signals)
    "behaviour.hosting_asn_account_fanout": ("16 accounts (4 per device) from one hosting ASN", hosting_accounts,
                                             ["behaviour.hosting_asn_device_fanout"]),
    "behaviour.hosting_asn_device_fanout": ("16 logged-out devices from one hosting ASN", hosting_devices,
                                            ["behaviour.hosting_asn_account_fanout"]),
    "behaviour.action_velocity": ("two browsing calls, then 22 likes within a minute", action_velocity,
                                  ["behaviour.action_only_session", "behaviour.cadence_regular"]),
    "behaviour.cadence_regular": ("14 browsing calls exactly 8 s apart", cadence, ["behaviour.action_velocity"]),
    "behaviour.action_only_session": ("a session's start-up calls, then a like without browsing", action_only,
                                      ["behaviour.action_velocity"]),
    "behaviour.impossible_travel": ("an account in its home country, then two countries 10 min apart", travel,
                                    ["behaviour.asn_hopping"]),
    "behaviour.asn_hopping": ("an account on seven ASNs in its own country within 40 min", asn_hopping,
                              ["behaviour.impossible_travel"]),
    "population.fingerprint_device_surge": ("26 logged-out devices of one handset behind two networks",
                                            fingerprint_devices, ["population.fingerprint_account_surge",
                                                                  "behaviour.ip_block_device_fanout"]),
    "population.fingerprint_account_surge": ("41 accounts on 11 devices of one handset behind five networks",
                                             fingerprint_accounts, ["population.fingerprint_device_surge",
                                                                    "population.bulk_registered_accounts"]),
    "population.bulk_registered_accounts": ("three accounts with neighbouring ids on one handset, a real user's, "
                                            "then one more of the batch", bulk_accounts, []),
}


# --- writing ------------------------------------------------------------------------------
def reference_of(requests: list[Request]) -> float:
    return float(math.ceil(max(e["ts"] for e in requests)) + 1)


def build(cfg: DetectionConfig, code: str, kit: Kit) -> tuple[list[Request], dict[str, Any]]:
    rng = random.Random(f"fixtures:{code}")
    if code in BEHAVIOUR:
        change, make, must_not = BEHAVIOUR[code]
        reqs = make(kit, rng)
        candidates = [reqs]
    else:
        change, mutate = STATELESS[code]
        must_not = []
        templates = list(kit.templates())
        control = clean(templates[0])
        candidates = ([control, {**clean(mutate(kit, t)), "request_id": f"fx-{code}"}] for t in templates[1:])
    run_cfg = with_profile_changes(cfg, PROFILE_CHANGES.get(code, {}))
    seen: set[str] = set()
    for reqs in candidates:
        ref = reference_of(reqs)
        lines = [orjson.dumps(r) for r in reqs]
        got, flags = score_lines(run_cfg, lines, ref)
        seen = {c for codes in got for c in codes} | {f.split(":", 1)[1] for f in flags}
        if code in seen and not seen & set(must_not) and (code in BEHAVIOUR or not got[0]):
            return reqs, {"code": code, "change": change, "reference_time": ref,
                          "profile_changes": PROFILE_CHANGES.get(code, {}), "must": [code], "must_not": must_not,
                          "verdicts": got, "flags": flags}
    raise SystemExit(f"{code}: no candidate raised it, or a must_not code appeared (the last gave "
                     f"{', '.join(sorted(seen))}); fix the fixture's recipe")


def render(cfg: DetectionConfig) -> dict[str, bytes]:
    """Every fixture file: name -> content."""
    kit = Kit(cfg)
    files: dict[str, bytes] = {}
    for code in [*STATELESS, *BEHAVIOUR]:
        reqs, expected = build(cfg, code, kit)
        files[f"{code}.jsonl"] = b"".join(orjson.dumps(r) + b"\n" for r in reqs)
        files[f"{code}.expected.json"] = orjson.dumps(expected, option=orjson.OPT_INDENT_2) + b"\n"
    return files


def main() -> int:
    files = render(DetectionConfig.load(DEFAULT_CONFIG))
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*.json*"):
        old.unlink()
    for name, content in files.items():
        (OUT / name).write_bytes(content)
    print(f"wrote {len(files) // 2} fixtures to {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
