"""Header checks: names, order and case against the official client's, values in
their allowed sets or formats, and fields that must agree with each other.

HTTP libraries each emit their own header order and case (requests puts
`Accept-Encoding`, `Accept`, `Connection` first, Title-Cased), so a script that copies
the app's custom headers still gives itself away by where and how it writes them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import ClassVar

from detector.cache import ByteCache, approx_size
from detector.checks.base import CheckScope, RequestContext
from detector.model import ClientRequest, Signal
from detector.profile import HeaderRules

MISSING_REQUIRED = "headers.missing_required"
FORBIDDEN = "headers.forbidden"
UNEXPECTED = "headers.unexpected"
ORDER_MISMATCH = "headers.order_mismatch"
NAME_CASE = "headers.name_case"
VALUE_INVALID = "headers.value_invalid"
INCONSISTENT = "headers.inconsistent"
CHECKSUM_MISMATCH = "headers.checksum_mismatch"
DENYLISTED = "headers.denylisted_value"
CLOCK_SKEW = "headers.clock_skew"

_NAMES_CACHE_BYTES = 8 * 2**20  # memory of the caches, by bytes (detector.cache)
_VALUES_CACHE_BYTES = 8 * 2**20
_CACHE_ITEM_BYTES = 16 * 1024


def _shorten(names: list[str], n: int = 4) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


class HeadersCheck:
    name: ClassVar[str] = "headers"
    scope: ClassVar[CheckScope] = "request"
    codes: ClassVar[Mapping[str, str]] = {
        MISSING_REQUIRED: "a header the official client always sends is missing",
        FORBIDDEN: "a header the official client never sends (typical of HTTP libraries and browsers)",
        UNEXPECTED: "a header name the profile does not list",
        ORDER_MISMATCH: "headers in another order than the official client's",
        NAME_CASE: "header names written in another case than the official client's",
        VALUE_INVALID: "a header value outside its allowed set or format",
        INCONSISTENT: "two fields that must agree (a header and a body parameter, the locale, the length) differ",
        CHECKSUM_MISMATCH: "a checksum field does not match the field it is computed from",
        DENYLISTED: "a header holds a constant hard-coded in a known private-API library",
        CLOCK_SKEW: "a client-clock header too far from the request's event time (or not a time)",
    }

    def __init__(self) -> None:
        self._names_cache: ByteCache[tuple[str, tuple[str, ...]], tuple[tuple[str, str], ...]] = ByteCache(
            _NAMES_CACHE_BYTES, _CACHE_ITEM_BYTES)
        # (profile, name, value) -> accepted
        self._value_ok: ByteCache[tuple[str, str, str], bool] = ByteCache(_VALUES_CACHE_BYTES, _CACHE_ITEM_BYTES)

    def check(self, request: ClientRequest, ctx: RequestContext) -> Iterable[Signal]:
        profile = ctx.profile
        rules = profile.headers
        if rules is None:
            return []
        names = ctx.derived.header_names
        key = (profile.name, names)
        found = self._names_cache.get(key)
        if found is None:
            found = tuple(self._names(rules, names))
            self._names_cache.put(key, found)
        out = [ctx.signal(code, detail) for code, detail in found]
        out.extend(ctx.signal(code, detail) for code, detail in self._values(rules, request, ctx))
        return out

    @staticmethod
    def _names(rules: HeaderRules, names: tuple[str, ...]) -> Iterable[tuple[str, str]]:
        judged = [n for n in names if not n.lower().startswith(rules.ignore_prefixes)]
        lowered = [n.lower() for n in judged]
        present = set(lowered)
        missing = sorted(rules.required - present)
        if missing:
            yield MISSING_REQUIRED, f"missing {_shorten(missing)}, which the official client always sends"
        forbidden = [n for n in lowered if n in rules.forbidden]
        if forbidden:
            yield FORBIDDEN, f"sends {_shorten(forbidden)}, which the official client never sends"
        known = rules.known
        unexpected = [n for n in lowered if n not in known and n not in rules.forbidden]
        if unexpected:
            yield UNEXPECTED, f"sends {_shorten(unexpected)}, not among the official client's headers"
        rank = {n: i for i, n in enumerate(rules.order)}
        ordered = [n for n in lowered if n in rank]
        for prev, cur in zip(ordered, ordered[1:]):
            if rank[cur] < rank[prev]:
                yield ORDER_MISMATCH, (f"{cur} comes after {prev}; the official client sends "
                                       f"{_shorten([n for n in rules.order if n in present], 6)} in that order")
                break
        if rules.name_case == "lower":
            upper = [n for n in judged if n != n.lower()]
            if upper:
                yield NAME_CASE, (f"header names {_shorten(upper, 3)} are not lower-case "
                                  "as the official client writes them")

    @staticmethod
    def _field(ref: str, request: ClientRequest, ctx: RequestContext) -> str | None:
        if ref.startswith("header:"):
            return ctx.headers.get(ref[7:])
        kind, _, name = ref.partition(":")
        if kind == "param":
            return (request.params or {}).get(name)
        if kind == "body":
            body = ctx.derived.body
            return body.fields.get(name) if body is not None else None
        if kind == "ua":
            ua = ctx.derived.ua
            return ua.get(name) if ua else None
        value = getattr(request, name, None)
        return None if value is None else str(value)

    def _values(self, rules: HeaderRules, request: ClientRequest, ctx: RequestContext) -> Iterable[tuple[str, str]]:
        headers = ctx.headers
        bad = []
        cache = self._value_ok
        pname = ctx.profile.name
        for name, rule in rules.values.items():
            v = headers.get(name)
            if v is None:
                continue
            if rule.deny and rule.denied(v):
                yield DENYLISTED, f"{name} {v[:40]!r} is a constant hard-coded in a known library"
                continue
            key = (pname, name, v)
            ok = cache.get(key)
            if ok is None:
                ok = rule.accepts(v)
                cache.put(key, ok, approx_size(key) + 16)
            if not ok:
                shown = v if len(v) <= 40 else v[:37] + "..."
                bad.append(f"{name} {shown!r} (expected {rule.describe()})")
        if bad:
            yield VALUE_INVALID, "invalid value: " + "; ".join(bad[:3])
        for r in rules.consistency:
            a = self._field(r.a, request, ctx)
            b = self._field(r.b, request, ctx)
            if a is None or b is None:
                continue
            if r.rule == "equal" and a != b:
                yield INCONSISTENT, f"{r.a} is {a[:40]!r} but {r.b} is {b[:40]!r}"
            elif r.rule == "locale" and a.replace("-", "_") != b:
                yield INCONSISTENT, f"{r.a} {a[:20]!r} does not match {r.b} {b[:20]!r}"
            elif r.rule == "checksum" and a != r.expected(b):
                yield CHECKSUM_MISMATCH, f"{r.a} {a[:16]!r} is not the {r.algorithm} checksum of {r.b}"
        if rules.rules:
            yield from self._conditional(rules, request, ctx)
        for c in rules.clock:
            v = headers.get(c.header)
            if v is None:
                continue
            try:
                t = float(v) / (1000.0 if c.unit == "ms" else 1.0)
            except ValueError:
                t = float("nan")
            if not math.isfinite(t):
                yield CLOCK_SKEW, f"{c.header} {v[:24]!r} is not a time in {c.unit}"
            elif abs(t - request.ts) > c.max_skew_s:
                yield CLOCK_SKEW, (f"{c.header} is {abs(t - request.ts):.0f} s from the request time "
                                   f"(allowed {c.max_skew_s:.0f} s)")

    @staticmethod
    def _conditional(rules: HeaderRules, request: ClientRequest, ctx: RequestContext) -> Iterable[tuple[str, str]]:
        """`headers.rules`: names required or forbidden where a condition holds."""
        headers = ctx.headers
        profile = ctx.profile
        endpoint = profile.endpoint_class(request.path)
        authenticated = "account" in ctx.derived.entities
        for r in rules.rules:
            if not r.when.holds(endpoint, request.method, authenticated):
                continue
            missing = sorted(n for n in r.required if n not in headers)
            if missing:
                yield MISSING_REQUIRED, (f"missing {_shorten(missing)}, which the official client sends "
                                         f"{r.when.describe()}")
            present = sorted(n for n in r.forbidden if n in headers)
            if present:
                yield FORBIDDEN, f"sends {_shorten(present)}, which the official client never sends {r.when.describe()}"
