"""A script reproducing the private API from servers with a library's defaults."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from typing import Any

from detector.profile import ClientProfile, signing_key_for
from detector.signing import mac
from detector.simulate.handsets import DeviceSpec, ua_string
from detector.simulate.kit import _check_evasion, _copy_request
from detector.simulate.wire import (
    _FORM,
    ACTION_PATHS,
    BROWSE_PATHS,
    DEFAULT_START_TS,
    PYTHON_REQUESTS_JA4,
    TLS_SNI,
    _Builder,
    _fill,
    _hex,
    app_body_fields,
    device_checksum,
    signed_body,
)

# The hard-coded default device of a popular private-API library: every install
# of the library sends this same tuple (detections.md, adversary 1).
LIBRARY_DEFAULT_DEVICE = DeviceSpec("OnePlus", "ONEPLUS A3010", "OnePlus3T", "qcom", 420, 1080, 1920, 26, "8.0.0")
# The simulated library's hard-coded install UUID (its settings' default, kept by users
# who never regenerate it); the example profile denylists it (body.fields._uuid.deny).
LIBRARY_DEFAULT_UUID = "2c9f6e4a-8a7e-4d2b-9b1e-6f0c3d5a7e10"
# and its hard-coded device id, which every account shares at evasion 0 (the example
# profile denylists it: headers.values.x-es-device-id.deny)
LIBRARY_DEFAULT_DEVICE_ID = "android-4f6e3a2b1c0d9e8f"


def library_body(profile: ClientProfile, path: str, *, device_id: str, account: str, conn: str | None,
                 evasion: int) -> str:
    """The library's POST body: the app's envelope and fields as the library's author
    knew them. 0: an HMAC-SHA256 of the JSON in the envelope with the old build's body
    key and the `sig_key_version` field beside it (what the app sent before it stopped
    signing bodies), the hard-coded install UUID; 1: the SIGNATURE marker, the
    hard-coded UUID still; 2: the marker and an install UUID per device, but not the
    `radio_type` field the app added after the library was written."""
    fields = app_body_fields(path, device_id=device_id, account=account, conn=conn)
    if evasion < 2:
        fields["_uuid"] = LIBRARY_DEFAULT_UUID
    else:
        fields.pop("radio_type", None)
    if evasion > 0:
        return signed_body(fields)
    text = json.dumps(fields, separators=(",", ":"))
    key = next(iter(profile.signing.keys.values())).secret if profile.signing else b"library"
    return signed_body(fields, mac(key, text.encode())) + "&sig_key_version=4"


def private_api_library(profile: ClientProfile, count: int, seed: int, start_ts: float = DEFAULT_START_TS,
                        evasion: int = 0, rate: float | None = None) -> Iterator[dict[str, Any]]:
    """A script reproducing the private API from servers: desktop TLS, HTTP/1.1, the
    library's header order and case, one hard-coded default device for every account,
    a fixed delay between calls, identical retries when the API answers 429, datacenter
    IPs, no attestation. It copies the app's headers and signing (a checksum computed
    right, a content length that matches the body) with a key extracted from an old
    build. `evasion` 0..2: how closely it copies the app. 0: python-requests' defaults
    first, Title-Case names, only the identity, signing and locale headers, one device
    id for every account; 1: also the network headers (a random bandwidth on every call,
    where the app reports a measurement) and a device id derived from each account name
    (the tuple stays the library's default); 2: the current version and its key, the
    app's header names, order and case, jittered delays, but the same desktop stack
    beneath."""
    _check_evasion(evasion)
    rng = random.Random(f"private_api_library:{seed}")
    b = _Builder(profile, rng, "private_api_library", True)
    retired = [v for v in profile.versions.values() if v.status == "retired" and v.keys]
    old = max(retired, key=lambda v: v.sort_key) if retired and evasion < 2 else profile.newest_version
    version, code = old.version, min(old.codes)
    key_id = signing_key_for(profile, old)
    accounts = [str(rng.randint(10**9, 10**11)) for _ in range(max(5, count // 50))]
    _hex(rng, 16)  # drawn as before, so the rest of the traffic stays as it was
    shared_device = LIBRARY_DEFAULT_DEVICE_ID
    # Libraries derive the id from the account name (md5 of a seed): one per account.
    per_account = {a: "android-" + hashlib.md5(f"{seed}:{a}".encode()).hexdigest()[:16] for a in accounts}
    delay = 2.0 if rate is None else 1.0 / rate
    retry_after = 1.0  # the library's fixed back-off before an identical retry
    ts = start_ts + rng.uniform(0, 5)
    hosts = [(16509, "Amazon.com"), (14061, "DigitalOcean"), (24940, "Hetzner Online")]
    scheme = profile.signing
    sig = scheme.header if scheme else "x-es-signature"
    stamp = scheme.timestamp_header if scheme else "x-es-timestamp"
    ua = ua_string(b.app_token, version, code, LIBRARY_DEFAULT_DEVICE, "en_US")
    emitted = 0
    i = 0
    while emitted < count:
        asn, org = hosts[i // 200 % len(hosts)]
        acct = accounts[i % len(accounts)]
        device_id = shared_device if evasion == 0 else per_account[acct]
        checksum = device_checksum(profile, device_id)
        post = i % 3 == 0
        method = "POST" if post else "GET"
        path = _fill(rng.choice(ACTION_PATHS if post else BROWSE_PATHS), rng)
        body_size = rng.randint(40, 400) if post else None
        text = None
        if body_size is not None:
            text = library_body(profile, path, device_id=device_id, account=acct, conn=None, evasion=evasion)
            body_size = len(text.encode())
        h: list[tuple[str, str | None]] = []
        if evasion < 2:  # requests.Session's default headers come first
            h += [("accept-encoding", "gzip, deflate"), ("accept", "*/*"), ("connection", "keep-alive")]
        h += [("x-es-device-id", device_id), ("x-es-device-checksum", checksum), ("x-es-user-id", acct),
              (stamp, f"{ts:.0f}"), (sig, None), ("accept-language", "en-US")]
        if evasion >= 1:
            conn = "WIFI" if evasion >= 2 else rng.choice(("WIFI", "MOBILE.LTE"))
            h += [("x-es-connection-type", conn), ("x-es-bandwidth-kbps", str(rng.randint(500, 60000)))]
        if body_size is not None:
            h += [("content-type", _FORM), ("content-length", str(body_size))]
        if evasion >= 2:
            h.append(("accept-encoding", "gzip"))
        h.append(("user-agent", ua))
        req = b.request(
            ts, ip=f"{3 + asn % 50}.{asn % 250}.{i // 200 % 250}.{10 + i % 200}", method=method, path=path,
            headers=h, key_id=key_id, body_size=body_size, body=text, title_case=evasion < 2, http_version="1.1",
            tls={"ja4": PYTHON_REQUESTS_JA4, "alpn": "http/1.1", "version": "1.3", "sni": TLS_SNI},
            network={"asn": asn, "as_org": org, "country": "US", "hosting": True},
        )
        # The API throttles the script now and then; it re-sends the very same request
        # (same signature, timestamp and body) after its fixed back-off.
        throttled = emitted + 1 < count and rng.random() < 0.05
        if throttled:
            req["response_status"] = 429
        yield req
        emitted += 1
        if throttled:  # a blocking script: the next call waits for the retry
            ts += retry_after
            yield _copy_request(b, {k: v for k, v in req.items() if k != "response_status"}, ts)
            emitted += 1
        ts += delay if evasion < 2 else delay * rng.uniform(0.7, 1.3)
        i += 1
