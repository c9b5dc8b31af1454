"""Request-signature checks: is the signature present, well formed, made with a key
the claimed build carries, fresh within the allowed clock skew, and correct?

Private-API libraries often extract a signing key from one build and keep using it
after rotation, so a key the claimed version never shipped is itself evidence."""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from typing import ClassVar

from detector.checks.base import CheckScope, RequestContext
from detector.model import ClientRequest, Signal
from detector.signing import canonical_string, mac

MISSING = "signature.missing"
MALFORMED = "signature.malformed"
UNKNOWN_KEY = "signature.unknown_key"
RETIRED_KEY = "signature.retired_key"
KEY_NOT_IN_BUILD = "signature.key_not_in_build"
INVALID = "signature.invalid"
TIMESTAMP_SKEW = "signature.timestamp_skew"


class SignatureCheck:
    name: ClassVar[str] = "signature"
    scope: ClassVar[CheckScope] = "request"
    codes: ClassVar[Mapping[str, str]] = {
        MISSING: "no request signature, or no signing timestamp",
        MALFORMED: "signature header does not match the profile's format",
        UNKNOWN_KEY: "signature names a key id the profile does not know",
        RETIRED_KEY: "signature made with a retired key",
        KEY_NOT_IN_BUILD: "signature key is not one the claimed app version carries",
        INVALID: "signature does not verify over the canonical request string",
        TIMESTAMP_SKEW: "signing timestamp too far from the request's event time",
    }

    def check(self, request: ClientRequest, ctx: RequestContext) -> Iterable[Signal]:
        profile = ctx.profile
        scheme = profile.signing
        if scheme is None:
            return
        value = ctx.header(scheme.header)
        if value is None:
            yield ctx.signal(MISSING, f"no {scheme.header} header although {profile.name} signs every request")
            return
        m = scheme.format.fullmatch(value)
        if m is None:
            shown = value if len(value) <= 40 else value[:37] + "..."
            yield ctx.signal(MALFORMED,
                             f"{scheme.header} value {shown!r} does not match the {profile.name} signature format")
            return
        key_id = m["key_id"]
        key = scheme.keys.get(key_id)
        if key is None:
            yield ctx.signal(UNKNOWN_KEY, f"signature key id {key_id!r} is not a {profile.name} key")
            return
        if key.status == "retired":
            yield ctx.signal(RETIRED_KEY, f"signature made with retired key {key_id}")
        ua = ctx.derived.ua
        if ua is not None:
            info = profile.versions.get(ua["app_version"])
            if info is not None and info.keys and key_id not in info.keys:
                yield ctx.signal(
                    KEY_NOT_IN_BUILD,
                    f"key {key_id} is not among the keys of app version {info.version} "
                    f"({', '.join(sorted(info.keys))})",
                )
        signed_at = ctx.derived.signed_at  # parsed by Pipeline.derive (None: absent or not a finite number)
        if signed_at is None:
            yield ctx.signal(MISSING, f"no valid {scheme.timestamp_header} header to bind the signature to a time")
        elif abs(signed_at - request.ts) > scheme.max_skew_s:
            yield ctx.signal(
                TIMESTAMP_SKEW,
                f"signed at {signed_at:.0f}, {abs(signed_at - request.ts):.0f} s from the request time "
                f"(allowed {scheme.max_skew_s:.0f} s)",
            )
        canonical = canonical_string(
            scheme,
            method=request.method,
            path=request.path,
            query=request.query,
            headers=ctx.headers,
            params=request.params,
            body_sha256=request.body_sha256,
        )
        if not hmac.compare_digest(mac(key.secret, canonical), m["mac"]):
            yield ctx.signal(INVALID,
                             f"signature with key {key_id} does not verify over the request's canonical string")
