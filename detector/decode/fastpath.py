"""The fast path: an `orjson.loads` value converted by msgspec into a wire Struct whose
types encode the contract and the limits, so valid requests are checked in C. It only
ever accepts; whatever it declines, the reference validator (validate.py) decides."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Annotated, Any, Literal, Optional, Union

import msgspec

from detector.decode.contract import (
    _KNOWN_FIELDS,
    _NESTED,
    _NESTED_KEYS,
    _OBJECT_FIELDS,
    BODY_ENCODINGS,
    MAX_ASN,
    MAX_BODY_CHARS,
    MAX_CLIENT_HELLO_CHARS,
    MAX_EDGE_CHARS,
    MAX_EXTRA_BYTES,
    MAX_EXTRA_FIELDS,
    MAX_LIST_ITEMS,
    MAX_OBJECT_ENTRIES,
    MAX_PARAM_NAME_CHARS,
    MAX_PARAMS,
    MAX_UNKNOWN_BYTES,
    TS_MAX,
    TS_MIN,
    DecodeLimits,
)
from detector.decode.validate import _parse_rfc3339, _unknown_size, _valid_ip
from detector.model import ClientRequest

# --- Fast path ------------------------------------------------------------------------
#
# `request_from_obj` costs ~7 us for a typical request, mostly interpreted type checks
# and the header loop. The fast path hands the orjson-parsed dict to `msgspec.convert`
# with a wire Struct whose field types and `Meta` constraints encode the contract and
# the limits, so type checks, string lengths, the header pair shape and the
# tuple-of-tuples construction run in C; the few rules msgspec cannot express (IP
# address, path shape, object-typed fields) are checked after it, then ClientRequest is
# built positionally from the wire struct (same field order).
#
# It only ever *accepts*: whenever it returns None (every invalid object, and a few valid
# but unusual ones, below) the reference validator runs and decides, so results and
# rejection reasons are exactly the reference's. It relies on its input being
# `orjson.loads` output (dict/list/str/int/float/bool/None only): msgspec also takes
# tuples for arrays and Decimal for numbers, which the reference rejects.
#
# Two wire types per limits: `strict` (numeric `ts`, unknown fields forbidden) serves the
# common case with nothing left to do in Python for `ts` and `extra`; when it fails,
# `lenient` (RFC 3339 `ts` allowed, unknown fields ignored) is tried before giving up.
#
# Deliberately conservative (valid, but left to the reference validator): a header whose
# name is longer than `_header_split(limits)[0]` (256 by default) or whose value is
# longer than the rest of `max_header_bytes`. msgspec bounds each string, not a pair's
# sum, so the pair bound is split between name and value.

_MAX_HEADER_NAME = 256
_WIRE_FIELDS = (
    "request_id", "ts", "client_ip", "method", "path", "headers", "query", "http_version",
    "body_sha256", "body_size", "params", "tls", "h2", "network", "attestation",
    "account_id", "device_id", "session_id", "response_status", "label", "edge", "body",
)


def _header_split(limits: DecodeLimits) -> tuple[int, int]:
    """Longest header name and value the fast path accepts; they sum to the pair limit."""
    name = max(1, min(_MAX_HEADER_NAME, limits.max_header_bytes // 2))
    return name, limits.max_header_bytes - name


_COUNTRY_CODES = tuple(a + b for a in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" for b in "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _nested_wire_type(name: str, limits: DecodeLimits, *, lenient: bool) -> type[msgspec.Struct]:
    """A Struct for one nested object whose field types accept only what
    `_nested_value` accepts. `lenient` ignores unknown keys (bounded in Python after)."""
    meta = msgspec.Meta
    F = limits.max_field_chars
    text = Annotated[str, meta(max_length=F)]
    kinds: dict[str, Any] = {
        "str": text,
        "hello": Annotated[str, meta(max_length=MAX_CLIENT_HELLO_CHARS)],
        "hex32": Annotated[str, meta(min_length=32, max_length=32, pattern=r"\A[0-9a-fA-F]{32}\Z")],
        "country": Literal[_COUNTRY_CODES],  # a hash lookup in C (a pattern would call re for each request)
        "body_text": Annotated[str, meta(max_length=MAX_BODY_CHARS)],
        "body_encoding": Literal[BODY_ENCODINGS],
        "bool": bool,
        "asn": Annotated[int, meta(ge=0, le=MAX_ASN)],
        "number": Annotated[float, meta(ge=-1e308, le=1e308)],  # finite; also takes ints, never booleans
        "list": Annotated[list[text], meta(max_length=MAX_LIST_ITEMS)],
        "str_or_list": Union[text, Annotated[list[text], meta(max_length=MAX_LIST_ITEMS)]],
    }
    fields = [(key, Optional[kinds[kind]], None) for key, kind in _NESTED[name].items()]
    return msgspec.defstruct(f"Wire_{name}", fields, frozen=True, gc=False, forbid_unknown_fields=not lenient)


def _wire_type(limits: DecodeLimits, *, lenient: bool) -> type[msgspec.Struct]:
    """A Struct with ClientRequest's fields in its order (without `extra`) whose types
    accept only what `request_from_obj` accepts under `limits` (see above for the
    checks left to Python)."""
    meta = msgspec.Meta
    F = limits.max_field_chars
    text = Annotated[str, meta(max_length=F)]
    name_max, value_max = _header_split(limits)
    header = tuple[Annotated[str, meta(min_length=1, max_length=name_max)], Annotated[str, meta(max_length=value_max)]]
    epoch = Annotated[float, meta(ge=TS_MIN, lt=TS_MAX)]  # float also takes ints (as float(v)), never booleans
    sha: Any = (
        Annotated[str, meta(min_length=64, max_length=64, pattern=r"\A[0-9a-fA-F]{64}\Z")]
        if F >= 64
        else None  # a type no string matches
    )
    params = Annotated[dict[Annotated[str, meta(max_length=MAX_PARAM_NAME_CHARS)], text], meta(max_length=MAX_PARAMS)]
    types: dict[str, Any] = {
        "request_id": Annotated[str, meta(min_length=1, max_length=min(128, F))],
        "ts": epoch | str if lenient else epoch,
        "client_ip": text,
        "method": Annotated[str, meta(min_length=1, max_length=F)],
        "path": text,
        "headers": Annotated[tuple[header, ...], meta(max_length=limits.max_headers)],
        "query": Optional[text],
        "http_version": Optional[Literal["1.0", "1.1", "2", "3"]],
        "body_sha256": Optional[sha],
        "body_size": Optional[Annotated[int, meta(ge=0)]],
        "params": Optional[params],
        "account_id": Optional[text],
        "device_id": Optional[text],
        "session_id": Optional[text],
        "response_status": Optional[Annotated[int, meta(ge=0)]],
        "edge": Optional[Annotated[str, meta(min_length=1, max_length=min(MAX_EDGE_CHARS, F))]],
    }
    # Nested objects are validated by their own Struct; the request keeps the object as
    # received (the converted Struct is only the proof that it is valid).
    for name in _OBJECT_FIELDS:
        types[name] = Optional[_nested_wire_type(name, limits, lenient=lenient)]
    fields = [(n, types[n]) if i < 6 else (n, types[n], None) for i, n in enumerate(_WIRE_FIELDS)]
    return msgspec.defstruct(
        "WireClientRequest", fields, frozen=True, gc=False, forbid_unknown_fields=not lenient
    )


def _no_fast_path(obj: Any) -> None:
    return None


def _unknown_ok(obj: Mapping[str, Any]) -> bool:
    """The bounds on a request's unknown keys, nested and top-level (rare: the fast
    path's lenient branch)."""
    for name, known in _NESTED_KEYS.items():
        d = obj.get(name)
        if (d is not None and not known.issuperset(d)
                and (len(d) > MAX_OBJECT_ENTRIES or _unknown_size(d, known) > MAX_UNKNOWN_BYTES)):
            return False
    if _KNOWN_FIELDS.issuperset(obj):
        return True
    n_extra = sum(1 for k in obj if k not in _KNOWN_FIELDS)
    return n_extra <= MAX_EXTRA_FIELDS and _unknown_size(obj, _KNOWN_FIELDS) <= MAX_EXTRA_BYTES


@lru_cache(maxsize=32)
def _build_fast_path(limits: DecodeLimits) -> Callable[[Any], ClientRequest | None]:
    if ClientRequest.__struct_fields__ != _WIRE_FIELDS + ("extra",):  # model changed: stay correct, go slow
        return _no_fast_path
    strict = _wire_type(limits, lenient=False)
    lenient = _wire_type(limits, lenient=True)
    convert = msgspec.convert
    ValidationError = msgspec.ValidationError
    valid_ip = _valid_ip
    known = _KNOWN_FIELDS
    make = ClientRequest
    ts_min, ts_max = TS_MIN, TS_MAX

    def build(w: Any, obj: dict[str, Any], ts: float, extra: Any) -> ClientRequest | None:
        """What msgspec cannot express (the path's shape, a real IP address), then the
        request with the nested objects as received."""
        path = w.path
        if path[:1] != "/" or "?" in path or not valid_ip(w.client_ip):
            return None
        get = obj.get
        return make(w.request_id, ts, w.client_ip, w.method, path, w.headers, w.query, w.http_version,
                    w.body_sha256, w.body_size, w.params, get("tls"), get("h2"), get("network"),
                    get("attestation"), w.account_id, w.device_id, w.session_id, w.response_status,
                    get("label"), w.edge, get("body"), extra)

    def fast(obj: Any) -> ClientRequest | None:
        """The ClientRequest for `obj` (an `orjson.loads` value), or None: let the
        reference validator decide."""
        try:
            w: Any = convert(obj, strict)
        except ValidationError:
            return slower(obj)
        return build(w, obj, w.ts, None)  # `extra` stays None: the strict type forbids unknown fields

    def slower(obj: Any) -> ClientRequest | None:
        """`fast` for objects with an RFC 3339 `ts` or unknown keys."""
        try:
            w: Any = convert(obj, lenient)
        except ValidationError:
            return None
        ts = w.ts
        if type(ts) is str:
            try:
                ts = _parse_rfc3339(ts)
            except ValueError:
                return None
            if not ts_min <= ts < ts_max:
                return None
        if not _unknown_ok(obj):
            return None
        extra = None if known.issuperset(obj) else {k: v for k, v in obj.items() if k not in known}
        return build(w, obj, ts, extra)

    return fast


# (limits, its fast path); replaced on first use
_fast_path_last: tuple[DecodeLimits, Callable[[Any], ClientRequest | None]] = (DecodeLimits(), _no_fast_path)


def _fast_path(limits: DecodeLimits) -> Callable[[Any], ClientRequest | None]:
    """The fast path for these limits. The last one is remembered by identity (callers
    pass the same DecodeLimits object every time), which skips the dataclass hash an
    lru_cache lookup costs."""
    global _fast_path_last
    last = _fast_path_last
    if last[0] is limits:
        return last[1]
    fn = _build_fast_path(limits)
    _fast_path_last = (limits, fn)
    return fn
