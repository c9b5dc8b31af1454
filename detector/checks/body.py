"""Body checks: the request body's encoding, fields and envelope signature against the
profile's `body:` rules (docs/profiles.md).

A script can copy the app's TLS ClientHello, HTTP/2 settings and header order (curl_cffi,
tls-client), but what it writes into the body is its own: the fields its author knew
of, the constants the library hard-codes, an HMAC where the app has sent a literal
marker since it stopped signing. These rules judge only a body the edge kept (edge fact
`body_text`, docs/edges.md); a cut-off body (`body.truncated`) is judged on the fields
it holds whole, never for what it lacks.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from typing import ClassVar

from detector.checks.base import CheckScope, RequestContext
from detector.model import ClientRequest, Signal
from detector.profile import BodyRules, ClientProfile
from detector.signing import mac

MISSING_REQUIRED = "body.missing_required"
FORBIDDEN = "body.forbidden"
VALUE_INVALID = "body.value_invalid"
DENYLISTED = "body.denylisted_value"
UNEXPECTED_ENCODING = "body.unexpected_encoding"
CONTENT_TYPE_MISMATCH = "body.content_type_mismatch"
UNPARSEABLE = "body.unparseable"
SIGNATURE_STALE = "body.signature_stale"
SIGNATURE_INVALID = "body.signature_invalid"

BODY_CHECK_CODES: Mapping[str, str] = {
    MISSING_REQUIRED: "a body field the official client sends on this endpoint class, method or state is missing",
    FORBIDDEN: "a body field the official client never sends there",
    VALUE_INVALID: "a body field's value outside its allowed set or format",
    DENYLISTED: "a body field holds a constant hard-coded in a known private-API library",
    UNEXPECTED_ENCODING: "the body is not in an encoding the official client uses there (form, JSON, envelope)",
    CONTENT_TYPE_MISMATCH: "the Content-Type header says another encoding than the body has",
    UNPARSEABLE: "the body claims a structure (JSON, the signed envelope) it does not have",
    SIGNATURE_STALE: "an HMAC in the body envelope where the official client sends its literal marker",
    SIGNATURE_INVALID: "the body envelope's signature is neither the marker nor a valid HMAC",
}


def _shown(v: str, n: int = 40) -> str:
    return v if len(v) <= n else v[: n - 3] + "..."


class BodyCheck:
    name: ClassVar[str] = "body"
    scope: ClassVar[CheckScope] = "request"
    codes: ClassVar[Mapping[str, str]] = BODY_CHECK_CODES

    def check(self, request: ClientRequest, ctx: RequestContext) -> Iterable[Signal]:
        rules = ctx.profile.body
        body = ctx.derived.body
        if rules is None or body is None:
            return []
        return [ctx.signal(code, detail) for code, detail in self._judge(rules, request, ctx)]

    @staticmethod
    def _judge(rules: BodyRules, request: ClientRequest, ctx: RequestContext) -> Iterable[tuple[str, str]]:
        body = ctx.derived.body
        assert body is not None
        profile = ctx.profile
        kind = body.kind
        content = body.content_kind
        if kind in ("form", "json", "signed_body"):
            says_json = content == "json"
            if content is None:
                yield CONTENT_TYPE_MISMATCH, f"a {kind} body without a Content-Type header"
            elif content in ("form", "json") and says_json != (kind == "json"):
                yield CONTENT_TYPE_MISMATCH, f"Content-Type says {content} but the body is {kind}"
        if body.error is not None:
            yield UNPARSEABLE, f"the body does not parse as the app's encoding: {body.error}"
        endpoint = profile.endpoint_class(request.path)
        authenticated = "account" in ctx.derived.entities
        applicable = [r for r in rules.rules if r.when.holds(endpoint, request.method, authenticated)]
        encodings = frozenset().union(*(r.encodings for r in applicable)) or rules.encodings
        if encodings and kind != "empty" and not body.truncated and kind not in encodings:
            yield UNEXPECTED_ENCODING, (f"a {kind} body; the official client sends "
                                        f"{', '.join(sorted(encodings))} on {endpoint or 'this'} endpoints")
        fields = body.fields
        if body.complete:
            missing = sorted({n for r in applicable for n in r.required if n not in fields})
            if missing:
                where = next(r.when for r in applicable if r.required & set(missing))
                yield MISSING_REQUIRED, (f"the body lacks {', '.join(missing[:4])}, which the official client "
                                         f"sends {where.describe()}")
        forbidden = sorted({n for r in applicable for n in r.forbidden if n in fields})
        if forbidden:
            yield FORBIDDEN, f"the body carries {', '.join(forbidden[:4])}, which the official client never sends there"
        bad: list[str] = []
        denied: list[str] = []
        for name, rule in rules.fields.items():
            v = fields.get(name)
            if v is None:
                continue
            if rule.denied(v):
                denied.append(f"{name} {_shown(v)!r}")
            elif not rule.accepts(v):
                bad.append(f"{name} {_shown(v)!r} (expected {rule.describe()})")
        if denied:
            yield DENYLISTED, "the body holds a known library's constant: " + "; ".join(denied[:3])
        if bad:
            yield VALUE_INVALID, "invalid body value: " + "; ".join(bad[:3])
        sig = rules.signature
        if sig is not None and kind == "signed_body" and body.signature is not None:
            yield from BodyCheck._signature(profile, ctx, body.signature, body.signed)

    @staticmethod
    def _signature(profile: ClientProfile, ctx: RequestContext, value: str,
                   signed: str | None) -> Iterable[tuple[str, str]]:
        rules = profile.body
        assert rules is not None and rules.signature is not None
        sig = rules.signature
        if sig.marker is not None:
            if value == sig.marker:
                return
            if sig.stale.fullmatch(value):
                yield SIGNATURE_STALE, (f"the body is signed with an HMAC ({_shown(value, 20)!r}); the official "
                                        f"client sends {sig.marker!r} since it stopped signing bodies: a stale script")
            else:
                yield SIGNATURE_INVALID, f"the body envelope's signature {_shown(value, 20)!r} is not {sig.marker!r}"
            return
        scheme = profile.signing
        if scheme is None or signed is None:
            return
        ua = ctx.derived.ua
        info = profile.versions.get(ua["app_version"]) if ua else None
        key_ids = sorted(info.keys) if info is not None and info.keys else sorted(scheme.keys)
        for kid in key_ids:
            key = scheme.keys.get(kid)
            if key is not None and hmac.compare_digest(mac(key.secret, signed.encode()), value):
                return
        yield SIGNATURE_INVALID, (f"the body envelope's signature {_shown(value, 20)!r} is not the HMAC of its JSON "
                                  f"with a key of {'the claimed build' if info is not None else profile.name}")
