"""The app's requests as the edge reports them: its endpoints, the stacks beneath its
headers, and signed requests assembled in wire order (the profile's signing scheme)."""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

from detector.profile import ClientProfile
from detector.signing import canonical_string, mac, signature_value

DEFAULT_START_TS = 1795860000.0  # 2026-11-29T10:00:00Z, a fixed origin for reproducible files

# OkHttp 4 on Android's platform TLS (Conscrypt): public facts about the app's stack,
# used when a profile does not name its own.
OKHTTP_JA4 = "t13d1513h2_8daaf6152771_eca864cca44a"
OKHTTP_H2 = "4:16777216|16711681|0|m,p,a,s"
# Python requests/urllib3 on OpenSSL 3 (desktop), as captured from a default client
# (tests/data/client_hellos.json).
PYTHON_REQUESTS_JA4 = "t13d1812h1_85036bcba153_b26ce05bbdd6"
TLS_SNI = "api.example-social.test"


# The app's endpoints (the profile's endpoint classes: startup, browse, action)

STARTUP_PATHS = ("/api/v1/launcher/sync", "/api/v1/config", "/api/v1/notifications/badge", "/api/v1/feed/timeline")
BADGE_PATH = "/api/v1/notifications/badge"
BROWSE_PATHS = ("/api/v1/feed/timeline", "/api/v1/media/{id}/info", "/api/v1/users/{id}/info", "/api/v1/explore")
ACTION_PATHS = ("/api/v1/media/{id}/like", "/api/v1/friendships/{id}/follow", "/api/v1/media/{id}/comment")
_FORM = "application/x-www-form-urlencoded; charset=UTF-8"


# The app's request bodies (config/profiles/example-android.yaml `body:`): a form whose
# one field is the envelope signed_body=SIGNATURE.<JSON>, URL-encoded. The app stopped
# signing bodies (the header HMAC covers the body's SHA-256), so the envelope carries
# the literal marker; its JSON holds the install's UUID, the device id, the account
# (when logged in), the radio type and what the call is about.
BODY_MARKER = "SIGNATURE"
_RADIO = {"WIFI": "wifi-none", "MOBILE.LTE": "mobile-lte", "MOBILE.NR": "mobile-nr", "MOBILE.HSPA": "mobile-hspa",
          "MOBILE.UMTS": "mobile-umts", "MOBILE.EDGE": "mobile-edge"}
_COMMENTS = ("nice", "love this", "so good", "wow", "great shot", "haha", "where is this?", "amazing colours")


def install_uuid(device_id: str) -> str:
    """The UUID the app generated at install (stable per device id)."""
    return str(uuid.UUID(bytes=hashlib.md5(device_id.encode()).digest(), version=4))


def signed_body(fields: dict[str, str], signature: str = BODY_MARKER) -> str:
    """The form body `signed_body=<signature>.<json>` (the JSON compact, URL-encoded)."""
    return urlencode({"signed_body": signature + "." + json.dumps(fields, separators=(",", ":"))})


def app_body_fields(path: str, *, device_id: str, account: str | None, conn: str | None,
                    session_id: str | None = None) -> dict[str, str]:
    """The JSON fields of the app's body for a POST to `path`."""
    fields: dict[str, str] = {"_uuid": install_uuid(device_id), "device_id": device_id}
    if account is not None:
        fields["_uid"] = account
    fields["radio_type"] = _RADIO.get(conn or "", "wifi-none")
    parts = path.strip("/").split("/")
    if path.endswith("/launcher/sync"):
        fields["id"] = session_id or fields["_uuid"]
        fields["server_config_retrieval"] = "1"
    elif len(parts) >= 4 and parts[2] == "media":
        fields["media_id"] = parts[3]
        if parts[-1] == "comment":
            fields["comment_text"] = _COMMENTS[int(hashlib.md5(path.encode()).hexdigest()[:4], 16) % len(_COMMENTS)]
    elif len(parts) >= 4 and parts[2] == "friendships":
        fields["user_id"] = parts[3]
    return fields


def app_body(path: str, *, device_id: str, account: str | None, conn: str | None,
             session_id: str | None = None) -> str:
    """The app's body for a POST to `path` (deterministic: it draws no randomness)."""
    return signed_body(app_body_fields(path, device_id=device_id, account=account, conn=conn, session_id=session_id))


def _hex(rng: random.Random, n: int) -> str:
    return f"{rng.getrandbits(4 * n):0{n}x}"


def _uuid4(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _fill(path: str, rng: random.Random) -> str:
    return path.replace("{id}", str(rng.randint(10**9, 10**10)))


def _title(name: str) -> str:
    """How HTTP libraries write header names: Title-Case (the app's `ES` kept upper)."""
    return "-".join("ES" if p == "es" else p.capitalize() for p in name.split("-"))


# --------------------------------------------------------------------------------------
# Building signed requests


class _Builder:
    """Assembles one signed request from its headers in wire order."""

    def __init__(self, profile: ClientProfile, rng: random.Random, scenario: str, malicious: bool):
        self.profile = profile
        self.rng = rng
        self.scenario = scenario
        self.malicious = malicious
        self.n = 0
        self.app_token = app_token(profile)

    def request(
        self,
        ts: float,
        *,
        ip: str,
        method: str,
        path: str,
        headers: Sequence[tuple[str, str | None]],
        key_id: str | None,
        query: str | None = None,
        body_size: int | None = None,
        body: str | None = None,
        title_case: bool = False,
        http_version: str = "2",
        tls: dict[str, Any] | None = None,
        h2: str | None = None,
        network: dict[str, Any] | None = None,
        attestation: dict[str, Any] | None = None,
        host: str | None = TLS_SNI,
    ) -> dict[str, Any]:
        """`headers`: (lower-case name, value) in wire order; the signature header's value
        is None and filled in here, over the canonical string of the other headers.
        `host`: the host the client asks for, as every stack here writes it: over
        HTTP/2 the `:authority` (`h2.authority`; OkHttp, curl, Go and httpx send no
        Host header there), over HTTP/1.x a `Host` header first (Python's http.client
        writes it, Title-Cased, before any other)."""
        self.n += 1
        rid = f"{self.scenario}-{self.n:08d}-{_hex(self.rng, 8)}"
        text = body
        # a stand-in body's hash; drawn also when the body is given, so that giving it
        # leaves the rest of the traffic (ids, times) as it was
        body = hashlib.sha256(self.rng.randbytes(16)).hexdigest() if body_size is not None else None
        if text is not None:  # the body itself: its hash and size are its own
            body = hashlib.sha256(text.encode()).hexdigest()
            body_size = len(text.encode())
        scheme = self.profile.signing
        signed: list[tuple[str, str]] = []
        for name, value in headers:
            if value is None:
                if scheme is None or key_id is None or name != scheme.header:
                    continue
                canonical = canonical_string(scheme, method=method, path=path, query=query,
                                             headers=[h for h in headers if h[1] is not None],  # type: ignore[misc]
                                             params=None, body_sha256=body)
                value = signature_value(key_id, mac(scheme.keys[key_id].secret, canonical))
            signed.append((_title(name) if title_case else name, value))
        out: dict[str, Any] = {
            "request_id": rid,
            "ts": round(ts, 3),
            "client_ip": ip,
            "method": method,
            "path": path,
        }
        if query is not None:
            out["query"] = query
        if host is not None and http_version not in ("2", "3"):
            signed.insert(0, ("Host", host))
        out["headers"] = [list(h) for h in signed]
        out["http_version"] = http_version
        if body is not None:
            out["body_sha256"] = body
            out["body_size"] = body_size
        if text is not None:
            out["body"] = {"text": text, "encoding": "text", "truncated": False}
        if tls:
            out["tls"] = tls
        if http_version in ("2", "3"):
            pseudo = {"authority": host} if host is not None else {}
            fp = {"fingerprint": h2} if h2 and http_version == "2" else {}
            if fp or pseudo:
                out["h2"] = {**fp, **pseudo}
        if network:
            out["network"] = network
        if attestation:
            out["attestation"] = attestation
        out["label"] = {"scenario": self.scenario, "malicious": self.malicious}
        return out


def app_token(profile: ClientProfile) -> str:
    """The app's name as its user agent writes it (the grammar's `app_name` group)."""
    return profile.user_agent.pattern.pattern.split("(?P<app_name>", 1)[-1].split(")", 1)[0]


def device_checksum(profile: ClientProfile, device_id: str) -> str:
    """The checksum header's value, computed as the profile's checksum rule says."""
    for r in profile.headers.consistency if profile.headers else ():
        if r.rule == "checksum" and r.b.endswith("device-id"):
            return r.expected(device_id)
    return hashlib.sha256(device_id.encode()).hexdigest()[:8]


def resign(profile: ClientProfile, request: dict[str, Any], key_id: str | None = None) -> dict[str, Any]:
    """A copy of `request` with its signature recomputed (with `key_id`, or the key it
    names): for tests that vary a signed field and want only that variation seen."""
    scheme = profile.signing
    if scheme is None:
        return dict(request)
    headers = [list(h) for h in request["headers"]]
    idx = next((i for i, (n, _) in enumerate(headers) if n.lower() == scheme.header), None)
    if idx is None:
        return {**request, "headers": headers}
    if key_id is None:
        m = scheme.format.fullmatch(headers[idx][1])
        key_id = m["key_id"] if m else None
    if key_id is None or key_id not in scheme.keys:
        raise ValueError(f"no signing key to re-sign with (got {key_id!r})")
    canonical = canonical_string(scheme, method=request["method"], path=request["path"], query=request.get("query"),
                                 headers=[(n, v) for n, v in headers], params=request.get("params"),
                                 body_sha256=request.get("body_sha256"))
    headers[idx][1] = signature_value(key_id, mac(scheme.keys[key_id].secret, canonical))
    return {**request, "headers": headers}
