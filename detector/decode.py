"""Decoding of ClientRequest messages (docs/contracts.md, ClientRequest) into typed values.

A Kafka message value holds one JSON object, a JSON array of objects, or NDJSON.
Bad input is data, not an exception: every element that cannot be used comes back
as a `Rejection` with its index and a one-line reason, and its valid siblings are
still decoded. The shell turns rejections into dead-letter records (`dlq_record`).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import math
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Annotated, Any, Callable, Literal, Mapping, Optional, Union

import msgspec
import orjson

from detector.model import ClientRequest
from detector.redact import Redactor

HTTP_VERSIONS = frozenset({"1.0", "1.1", "2", "3"})
_KNOWN_FIELDS = frozenset(
    {
        "request_id", "ts", "client_ip", "method", "path", "headers", "query",
        "http_version", "body_sha256", "body_size", "params", "tls", "h2", "network",
        "attestation", "account_id", "device_id", "session_id", "response_status", "label",
    }
)
_OBJECT_FIELDS = ("tls", "h2", "network", "attestation", "label")
_ID_FIELDS = ("account_id", "device_id", "session_id")
_HEX = frozenset("0123456789abcdefABCDEF")

# `ts` must lie in [TS_MIN, TS_MAX) in both forms: 2000-01-01T00:00:00Z up to (not
# including) 2200-01-01T00:00:00Z. Later times cannot be formatted by every consumer
# (year 10000 crashed alert building), earlier ones are always late. Events far ahead
# of the stream's clock still decode: the event-time guard judges them.
TS_MIN = 946684800.0
TS_MAX = 7258118400.0
_MAX_RFC3339_CHARS = 64  # "2026-11-22T10:00:00.123456789+01:00" is 35

# Bounds of the nested objects (the contract's section 1), the same for every limits.
MAX_OBJECT_ENTRIES = 64  # keys of one nested object (tls, h2, network, attestation, label)
MAX_UNKNOWN_BYTES = 8192  # JSON size of the unknown keys' values of one nested object
MAX_EXTRA_FIELDS = 64  # unknown top-level fields
MAX_EXTRA_BYTES = 65536  # their JSON size
MAX_LIST_ITEMS = 32  # tls.alpn, attestation.device_recognition
MAX_PARAMS = 256  # entries of `params`
MAX_PARAM_NAME_CHARS = 256
MAX_CLIENT_HELLO_CHARS = 16384  # base64 of a 12 KB ClientHello (real ones are < 2 KB)
MAX_ASN = 2**32 - 1

# The closed set of rejection codes (metrics labels, DLQ records, `detector score`).
REJECTION_CODES = frozenset({
    "empty_message",   # no value at all
    "oversized",       # a message, line, string or header over its limit
    "invalid_utf8",    # bytes that are not UTF-8
    "invalid_json",    # not JSON
    "missing_field",   # a required field is absent or null
    "invalid_type",    # a field of the wrong JSON type (a boolean is never a number)
    "invalid_value",   # the right type but not a valid value (an IP address, a path, hex)
    "out_of_range",    # a number or time outside its range
    "too_many",        # more elements, headers, params or keys than allowed
    "internal_error",  # processing failed (set by the shell, never by decode)
})


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """Bounds on what one message may carry (config `limits`). A message or element
    over a bound is rejected whole, so an attacker cannot make the worker allocate
    without limit."""

    max_message_bytes: int = 4 * 1024 * 1024
    max_batch_elements: int = 10_000
    max_headers: int = 128
    max_header_bytes: int = 8192  # one name + value
    max_field_chars: int = 8192  # any other string field
    dlq_copy_bytes: int = 900_000  # larger originals are truncated in the DLQ record

    def __post_init__(self) -> None:
        for name in self.__slots__:  # type: ignore[attr-defined]
            if getattr(self, name) <= 0:
                raise ValueError(f"limits.{name} must be a positive integer")


@dataclass(frozen=True, slots=True)
class Rejection:
    index: int | None  # element index inside a batch message; None for the message itself
    reason: str  # one line, may quote (a bounded prefix of) the offending value
    code: str = "invalid_value"  # one of REJECTION_CODES

    def __post_init__(self) -> None:
        if self.code not in REJECTION_CODES:
            raise ValueError(f"unknown rejection code {self.code!r}")


@dataclass(slots=True)
class Decoded:
    requests: list[ClientRequest] = field(default_factory=list)
    indices: list[int | None] = field(default_factory=list)  # element index of each request
    rejections: list[Rejection] = field(default_factory=list)
    form: str = "object"  # object | array | ndjson | invalid


class InvalidRequest(ValueError):
    """One object failed validation; the message is the one-line reason, `code` its
    class (one of REJECTION_CODES)."""

    def __init__(self, reason: str, code: str = "invalid_value"):
        super().__init__(reason)
        self.code = code


def decode_message(value: bytes | None, limits: DecodeLimits = DecodeLimits()) -> Decoded:
    """Decode one Kafka message value in any of the three forms."""
    if value is None or len(value) == 0:
        return Decoded(rejections=[Rejection(None, "empty message", "empty_message")], form="invalid")
    if len(value) > limits.max_message_bytes:
        reason = f"message of {len(value)} bytes exceeds limits.max_message_bytes={limits.max_message_bytes}"
        return Decoded(rejections=[Rejection(None, reason, "oversized")], form="invalid")
    if value[:1] == b"[" or value.lstrip()[:1] == b"[":
        out = Decoded(form="array")
        try:
            items = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            out.form = "invalid"
            out.rejections.append(_json_rejection(None, value, exc))
            return out
        if not isinstance(items, list):  # pragma: no cover - '[' always parses to a list
            items = [items]
        if len(items) > limits.max_batch_elements:
            out.rejections.append(Rejection(
                None, f"batch of {len(items)} elements exceeds limits.max_batch_elements={limits.max_batch_elements}",
                "too_many"))
            return out
        _add_all(out, items, limits)
        return out
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        out = Decoded()
        if b"\n" in value.strip():
            out.form = "ndjson"
            _decode_ndjson(out, value, limits)
            return out
        out.form = "invalid"
        out.rejections.append(_json_rejection(None, value, exc))
        return out
    req = _fast_path(limits)(obj)
    if req is not None:  # the common case, kept short
        return Decoded([req], [None], [], "object")
    out = Decoded(form="object")
    _add(out, None, obj, limits)
    return out


def decode_line(line: bytes | str, limits: DecodeLimits = DecodeLimits()) -> ClientRequest:
    """Decode one JSONL line (offline scoring); raises InvalidRequest with the reason
    and its code."""
    if isinstance(line, str):
        try:
            raw = line.encode()
        except UnicodeEncodeError as exc:  # a lone surrogate
            raise InvalidRequest(f"invalid UTF-8 at character {exc.start}", "invalid_utf8") from None
    else:
        raw = line
    if len(raw) > limits.max_message_bytes:
        raise InvalidRequest(f"line of {len(raw)} bytes exceeds limits.max_message_bytes={limits.max_message_bytes}",
                             "oversized")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        rej = _json_rejection(None, raw, exc)
        raise InvalidRequest(rej.reason, rej.code) from None
    req = _fast_path(limits)(obj)
    return request_from_obj(obj, limits) if req is None else req


def _decode_ndjson(out: Decoded, value: bytes, limits: DecodeLimits) -> None:
    lines = [ln for ln in value.split(b"\n") if ln.strip()]
    if len(lines) > limits.max_batch_elements:
        out.rejections.append(Rejection(
            None, f"batch of {len(lines)} elements exceeds limits.max_batch_elements={limits.max_batch_elements}",
            "too_many"))
        return
    fast = _fast_path(limits)
    for i, ln in enumerate(lines):
        try:
            obj = orjson.loads(ln)
        except orjson.JSONDecodeError as exc:
            out.rejections.append(_json_rejection(i, ln, exc))
            continue
        req = fast(obj)
        if req is None:
            _add(out, i, obj, limits)
        else:
            out.requests.append(req)
            out.indices.append(i)


def _add(out: Decoded, index: int | None, obj: Any, limits: DecodeLimits) -> None:
    """The reference validator's verdict on an object the fast path did not accept:
    it is invalid (and the reference names why) or valid but unusual."""
    try:
        req = request_from_obj(obj, limits)
    except InvalidRequest as exc:
        out.rejections.append(Rejection(index, str(exc), exc.code))
        return
    out.requests.append(req)
    out.indices.append(index)


def _add_all(out: Decoded, items: list[Any], limits: DecodeLimits) -> None:
    fast = _fast_path(limits)
    requests, indices = out.requests, out.indices
    for i, item in enumerate(items):
        req = fast(item)
        if req is None:
            _add(out, i, item, limits)
        else:
            requests.append(req)
            indices.append(i)


def _json_rejection(index: int | None, raw: bytes, exc: orjson.JSONDecodeError) -> Rejection:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as uexc:
        return Rejection(index, f"invalid UTF-8 at byte {uexc.start}", "invalid_utf8")
    msg = str(exc).split(":", 1)[0]
    return Rejection(index, f"invalid JSON: {msg} at line {exc.lineno} column {exc.colno}", "invalid_json")


def _json_reason(raw: bytes, exc: orjson.JSONDecodeError) -> str:
    return _json_rejection(None, raw, exc).reason


def _type(v: Any) -> str:
    if v is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(v), type(v).__name__
    )


def _string(obj: Mapping[str, Any], name: str, limits: DecodeLimits, *, required: bool) -> str | None:
    v = obj.get(name)
    if v is None:
        if required:
            raise InvalidRequest(f"missing required field {name!r}", "missing_field")
        return None
    if not isinstance(v, str):
        raise InvalidRequest(f"field {name!r} must be a string, got {_type(v)}", "invalid_type")
    if len(v) > limits.max_field_chars:
        raise InvalidRequest(f"field {name!r} of {len(v)} chars exceeds limits.max_field_chars={limits.max_field_chars}",
                             "oversized")
    return v


def _check_ip(ip: str) -> bool:
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        return False
    return True


_valid_ip_cached = lru_cache(maxsize=65536)(_check_ip)  # keys <= 64 chars: at most ~8 MB


def _valid_ip(ip: str) -> bool:
    """Whether `ip` is an IPv4 or IPv6 address (a zone may make one any length: long
    ones are checked without the cache)."""
    return _valid_ip_cached(ip) if len(ip) <= 64 else _check_ip(ip)


@lru_cache(maxsize=4096)  # keys are <= _MAX_RFC3339_CHARS: at most ~0.5 MB
def _parse_rfc3339(s: str) -> float:
    """Epoch seconds of an RFC 3339 time with a zone; ValueError for any other string
    (too long, no zone, not a time, out of datetime's range)."""
    if len(s) > _MAX_RFC3339_CHARS:
        raise ValueError("too long")
    try:
        dt = datetime.fromisoformat(s)
        if dt.tzinfo is None:
            raise ValueError("no time zone")
        return dt.timestamp()
    except OverflowError:
        raise ValueError("out of range") from None


_TS_RANGE = "between 2000-01-01T00:00:00Z and 2200-01-01T00:00:00Z"


def _timestamp(v: Any) -> float:
    if isinstance(v, bool):
        raise InvalidRequest("field 'ts' must be epoch seconds or an RFC 3339 string, got boolean", "invalid_type")
    if isinstance(v, (int, float)):
        try:
            ts = float(v)
        except OverflowError:
            ts = math.inf
        if not math.isfinite(ts) or not TS_MIN <= ts < TS_MAX:
            raise InvalidRequest(f"field 'ts' must be epoch seconds {_TS_RANGE} "
                                 f"({TS_MIN:.0f} <= ts < {TS_MAX:.0f}), got {str(v)[:40]}", "out_of_range")
        return ts
    if isinstance(v, str):
        try:
            ts = _parse_rfc3339(v)
        except ValueError:
            raise InvalidRequest(f"field 'ts' is not an RFC 3339 timestamp with a time zone: {v[:40]!r}",
                                 "invalid_value") from None
        if not TS_MIN <= ts < TS_MAX:
            raise InvalidRequest(f"field 'ts' must be a time {_TS_RANGE}, got {v[:40]!r}", "out_of_range")
        return ts
    if v is None:
        raise InvalidRequest("missing required field 'ts'", "missing_field")
    raise InvalidRequest(f"field 'ts' must be a number or string, got {_type(v)}", "invalid_type")


def _headers(v: Any, limits: DecodeLimits) -> tuple[tuple[str, str], ...]:
    if v is None:
        raise InvalidRequest("missing required field 'headers'", "missing_field")
    if not isinstance(v, list):
        raise InvalidRequest(f"field 'headers' must be an array of [name, value] pairs, got {_type(v)}", "invalid_type")
    if len(v) > limits.max_headers:
        raise InvalidRequest(f"{len(v)} headers exceed limits.max_headers={limits.max_headers}", "too_many")
    out = []
    for i, pair in enumerate(v):
        if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str) and isinstance(pair[1], str)):
            raise InvalidRequest(f"headers[{i}] must be a [name, value] pair of strings", "invalid_type")
        if len(pair[0]) + len(pair[1]) > limits.max_header_bytes:
            raise InvalidRequest(f"headers[{i}] exceeds limits.max_header_bytes={limits.max_header_bytes}", "oversized")
        if not pair[0]:
            raise InvalidRequest(f"headers[{i}] has an empty name", "invalid_value")
        out.append((pair[0], pair[1]))
    return tuple(out)


# --- Nested objects -------------------------------------------------------------------
#
# What each known key of a nested object may hold. Every key is optional and may be
# null (absent). Strings are bounded by `limits.max_field_chars` unless named here.
# Unknown keys are kept (the object is passed on as received) but bounded: at most
# MAX_OBJECT_ENTRIES keys, their values at most MAX_UNKNOWN_BYTES of JSON.

_Kind = Literal["str", "hex32", "hello", "country", "bool", "asn", "number", "str_or_list", "list"]
_NESTED: dict[str, dict[str, _Kind]] = {
    "tls": {"ja3": "hex32", "ja3_full": "str", "ja4": "str", "alpn": "str_or_list", "version": "str", "sni": "str",
            "client_hello": "hello"},
    "h2": {"fingerprint": "str"},
    "network": {"asn": "asn", "as_org": "str", "country": "country", "hosting": "bool"},
    "attestation": {"provider": "str", "app_recognition": "str", "device_recognition": "list",
                    "request_hash_ok": "bool", "token_age_s": "number"},
    "label": {"scenario": "str", "malicious": "bool"},
}
_NESTED_KEYS = {name: frozenset(spec) for name, spec in _NESTED.items()}


def _nested_string(where: str, v: Any, limit: int, code_if_long: str = "oversized") -> None:
    if not isinstance(v, str):
        raise InvalidRequest(f"field {where!r} must be a string, got {_type(v)}", "invalid_type")
    if len(v) > limit:
        raise InvalidRequest(f"field {where!r} of {len(v)} chars exceeds {limit}", code_if_long)


def _nested_value(where: str, kind: _Kind, v: Any, limits: DecodeLimits) -> None:
    F = limits.max_field_chars
    if kind == "str":
        _nested_string(where, v, F)
    elif kind == "hello":
        _nested_string(where, v, MAX_CLIENT_HELLO_CHARS)
    elif kind == "hex32":
        _nested_string(where, v, 32, "invalid_value")
        if len(v) != 32 or not _HEX.issuperset(v):
            raise InvalidRequest(f"field {where!r} must be 32 hex characters", "invalid_value")
    elif kind == "country":
        _nested_string(where, v, 2, "invalid_value")
        if not (len(v) == 2 and v.isascii() and v.isalpha() and v.isupper()):
            raise InvalidRequest(f"field {where!r} must be an ISO 3166-1 alpha-2 code (two capital letters), got {v[:8]!r}",
                                 "invalid_value")
    elif kind == "bool":
        if not isinstance(v, bool):
            raise InvalidRequest(f"field {where!r} must be a boolean, got {_type(v)}", "invalid_type")
    elif kind == "asn":
        if isinstance(v, bool) or not isinstance(v, int):
            raise InvalidRequest(f"field {where!r} must be an integer, got {_type(v)}", "invalid_type")
        if not 0 <= v <= MAX_ASN:
            raise InvalidRequest(f"field {where!r} must be between 0 and {MAX_ASN}, got {str(v)[:24]}", "out_of_range")
    elif kind == "number":
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise InvalidRequest(f"field {where!r} must be a number, got {_type(v)}", "invalid_type")
        try:
            finite = math.isfinite(v) and abs(v) <= 1e308
        except OverflowError:
            finite = False
        if not finite:
            raise InvalidRequest(f"field {where!r} must be a finite number", "out_of_range")
    else:  # "list" or "str_or_list"
        if kind == "str_or_list" and isinstance(v, str):
            _nested_string(where, v, F)
            return
        if not isinstance(v, list):
            wanted = "a string or an array of strings" if kind == "str_or_list" else "an array of strings"
            raise InvalidRequest(f"field {where!r} must be {wanted}, got {_type(v)}", "invalid_type")
        if len(v) > MAX_LIST_ITEMS:
            raise InvalidRequest(f"field {where!r} has {len(v)} items, more than {MAX_LIST_ITEMS}", "too_many")
        for i, item in enumerate(v):
            _nested_string(f"{where}[{i}]", item, F)


def _unknown_size(obj: Mapping[str, Any], known: frozenset[str]) -> int:
    """The JSON size of the values of `obj`'s unknown keys (and their names)."""
    total = 0
    for k, v in obj.items():
        if k not in known:
            try:
                total += len(str(k)) + len(orjson.dumps(v, default=repr))
            except (orjson.JSONEncodeError, RecursionError):  # not JSON (a Python caller's value)
                return MAX_EXTRA_BYTES + 1
    return total


def _nested(name: str, v: Any, limits: DecodeLimits) -> Mapping[str, Any] | None:
    if v is None:
        return None
    if not isinstance(v, dict):
        raise InvalidRequest(f"field {name!r} must be an object, got {_type(v)}", "invalid_type")
    if len(v) > MAX_OBJECT_ENTRIES:
        raise InvalidRequest(f"field {name!r} has {len(v)} keys, more than {MAX_OBJECT_ENTRIES}", "too_many")
    spec = _NESTED[name]
    for key, kind in spec.items():
        item = v.get(key)
        if item is not None:
            _nested_value(f"{name}.{key}", kind, item, limits)
    known = _NESTED_KEYS[name]
    if not known.issuperset(v) and _unknown_size(v, known) > MAX_UNKNOWN_BYTES:
        raise InvalidRequest(f"the unknown keys of {name!r} exceed {MAX_UNKNOWN_BYTES} bytes", "oversized")
    return v


def _params(v: Any, limits: DecodeLimits) -> Mapping[str, str] | None:
    if v is None:
        return None
    if not isinstance(v, dict):
        raise InvalidRequest(f"field 'params' must be an object, got {_type(v)}", "invalid_type")
    if len(v) > MAX_PARAMS:
        raise InvalidRequest(f"field 'params' has {len(v)} entries, more than {MAX_PARAMS}", "too_many")
    F = limits.max_field_chars
    for k, pv in v.items():
        if not isinstance(k, str):
            raise InvalidRequest(f"a params name must be a string, got {_type(k)}", "invalid_type")
        if len(k) > MAX_PARAM_NAME_CHARS:
            raise InvalidRequest(f"a params name of {len(k)} chars exceeds {MAX_PARAM_NAME_CHARS}", "oversized")
        if not isinstance(pv, str):
            raise InvalidRequest(f"params[{k[:40]!r}] must be a string, got {_type(pv)}", "invalid_type")
        if len(pv) > F:
            raise InvalidRequest(f"params[{k[:40]!r}] of {len(pv)} chars exceeds limits.max_field_chars={F}", "oversized")
    return v


def _extra(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    """The unknown top-level fields (kept, ignored, bounded)."""
    if _KNOWN_FIELDS.issuperset(obj):
        return None
    extra = {k: v for k, v in obj.items() if k not in _KNOWN_FIELDS}
    if len(extra) > MAX_EXTRA_FIELDS:
        raise InvalidRequest(f"{len(extra)} unknown fields, more than {MAX_EXTRA_FIELDS}", "too_many")
    if _unknown_size(extra, frozenset()) > MAX_EXTRA_BYTES:
        raise InvalidRequest(f"the unknown fields exceed {MAX_EXTRA_BYTES} bytes", "oversized")
    return extra


def request_from_obj(obj: Any, limits: DecodeLimits = DecodeLimits()) -> ClientRequest:
    """Validate one decoded JSON value against the ClientRequest contract.

    This is the reference validator: it names the first problem in the reason (and its
    class in `InvalidRequest.code`), and it decides whenever the fast path
    (`_fast_path`, used by `decode_message` and `decode_line`) does not accept an
    object. It takes any Python value and judges it as it always has (tuples where the
    contract has arrays are rejected, for one); the fast path is only for
    `orjson.loads` output and is not used here."""
    if not isinstance(obj, dict):
        raise InvalidRequest(f"a ClientRequest must be a JSON object, got {_type(obj)}", "invalid_type")
    request_id = _string(obj, "request_id", limits, required=True)
    assert request_id is not None
    if not 1 <= len(request_id) <= 128:
        raise InvalidRequest(f"field 'request_id' must have 1..128 chars, got {len(request_id)}",
                             "invalid_value" if not request_id else "oversized")
    ts = _timestamp(obj.get("ts"))
    client_ip = _string(obj, "client_ip", limits, required=True)
    assert client_ip is not None
    if not _valid_ip(client_ip):
        raise InvalidRequest(f"field 'client_ip' is not an IPv4 or IPv6 address: {client_ip[:64]!r}", "invalid_value")
    method = _string(obj, "method", limits, required=True)
    assert method is not None
    if not method:
        raise InvalidRequest("field 'method' is empty", "invalid_value")
    path = _string(obj, "path", limits, required=True)
    assert path is not None
    if not path.startswith("/") or "?" in path:
        raise InvalidRequest(f"field 'path' must start with '/' and carry no query string: {path[:64]!r}",
                             "invalid_value")
    headers = _headers(obj.get("headers"), limits)

    query = _string(obj, "query", limits, required=False)
    http_version = obj.get("http_version")
    if http_version is not None:
        if not isinstance(http_version, str):
            raise InvalidRequest(f"field 'http_version' must be a string, got {_type(http_version)}", "invalid_type")
        if http_version not in HTTP_VERSIONS:
            raise InvalidRequest(f"field 'http_version' must be one of 1.0, 1.1, 2, 3, got {http_version[:16]!r}",
                                 "invalid_value")
    body_sha256 = _string(obj, "body_sha256", limits, required=False)
    if body_sha256 is not None and (len(body_sha256) != 64 or not _HEX.issuperset(body_sha256)):
        raise InvalidRequest("field 'body_sha256' must be 64 hex characters", "invalid_value")
    body_size = _int(obj, "body_size", minimum=0)
    response_status = _int(obj, "response_status", minimum=0)
    params = _params(obj.get("params"), limits)
    objects = {name: _nested(name, obj.get(name), limits) for name in _OBJECT_FIELDS}
    ids = {name: _string(obj, name, limits, required=False) for name in _ID_FIELDS}
    extra = _extra(obj)
    return ClientRequest(
        request_id=request_id,
        ts=ts,
        client_ip=client_ip,
        method=method,
        path=path,
        headers=headers,
        query=query,
        http_version=http_version,
        body_sha256=body_sha256,
        body_size=body_size,
        params=params,
        tls=objects["tls"],
        h2=objects["h2"],
        network=objects["network"],
        attestation=objects["attestation"],
        label=objects["label"],
        account_id=ids["account_id"],
        device_id=ids["device_id"],
        session_id=ids["session_id"],
        response_status=response_status,
        extra=extra,
    )


def _int(obj: Mapping[str, Any], name: str, *, minimum: int) -> int | None:
    v = obj.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise InvalidRequest(f"field {name!r} must be an integer, got {_type(v)}", "invalid_type")
    if v < minimum:
        raise InvalidRequest(f"field {name!r} must be >= {minimum}, got {v}", "out_of_range")
    return v


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
    "account_id", "device_id", "session_id", "response_status", "label",
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
        if d is not None and not known.issuperset(d):
            if len(d) > MAX_OBJECT_ENTRIES or _unknown_size(d, known) > MAX_UNKNOWN_BYTES:
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
                    get("label"), extra)

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


def dlq_record(
    value: bytes | None,
    rejections: list[Rejection],
    *,
    topic: str,
    partition: int,
    offset: int,
    limits: DecodeLimits = DecodeLimits(),
) -> dict[str, Any]:
    """The dead-letter record for one source message (compatibility form: the stream
    uses `encode_dlq_record`, bounded by bytes): its original value with credentials
    redacted (or, when larger than `limits.dlq_copy_bytes`, a truncated copy with the
    original's SHA-256 and size), where it came from, and why each rejected element
    was rejected. `index`/`reason` name the first rejection; `errors` lists all of them."""
    raw = value or b""
    full, _ = _redacted_copy(raw, limits, Redactor.default())  # credentials never reach the DLQ
    truncated = len(full) > limits.dlq_copy_bytes
    copy = full[: limits.dlq_copy_bytes] if truncated else full
    try:
        text: str = copy.decode("utf-8")
        encoding = "utf-8"
    except UnicodeDecodeError:
        text = base64.b64encode(copy).decode("ascii")
        encoding = "base64"
    first = rejections[0]
    return {
        "schema": "dlq/1",
        "reason": first.reason,
        "index": first.index,
        "errors": [{"index": r.index, "reason": r.reason} for r in rejections],
        "source": {"topic": topic, "partition": partition, "offset": offset},
        "message": text,
        "message_encoding": encoding,
        "truncated": truncated,
        "size": len(raw),
        "sha256": hashlib.sha256(raw).hexdigest(),
    }


def dlq_reason_class(reason: str) -> str:
    """A closed set of reason classes for metrics labels (reasons carry values)."""
    if reason.startswith("invalid UTF-8"):
        return "invalid_utf8"
    if reason.startswith("invalid JSON") or reason == "empty message":
        return "invalid_json"
    if reason.startswith("missing required"):
        return "missing_field"
    if "exceed" in reason:
        return "oversized"
    if "must be" in reason or "is not" in reason or "has an empty" in reason or "is empty" in reason:
        return "invalid_field"
    return "other"


# --- Dead-letter records bounded by bytes ------------------------------------------------

DLQ_MAX_ERRORS = 100  # rejections listed in one record (`errors_total` counts them all)
_DLQ_REASON_CHARS = 400


def clip_json_string(s: str, max_encoded: int) -> str:
    """The longest prefix of `s` (found in a few steps, not always the very longest)
    whose JSON encoding, quotes included, is at most `max_encoded` bytes. Escaping
    can make a character 6 bytes (`\\u0001`), so the bound is on the encoded form."""
    if max_encoded < 2:
        return ""
    n = min(len(s), max_encoded)
    while n > 0:
        size = len(orjson.dumps(s[:n]))
        if size <= max_encoded:
            return s[:n]
        n = min(n - 1, n * max_encoded // size)
    return ""


def encode_dlq_record(
    value: bytes | None,
    rejections: list[Rejection],
    *,
    topic: str,
    partition: int,
    offset: int,
    limits: DecodeLimits,
    max_bytes: int,
    redactor: Redactor,
) -> bytes:
    """The dead-letter record for one source message, encoded, never over `max_bytes`.

    It holds a prefix of the original (`message`, UTF-8 text or base64 of bytes that
    are not UTF-8; `truncated` when it is not all of it), the original's `size` and
    `sha256`, where it came from, and the rejections with their codes (the first
    DLQ_MAX_ERRORS; `errors_total` counts them). Credential values (`redactor`) are
    replaced: in the parsed original when it parses (the copy is then the redacted
    re-encoding), else by text patterns; `redacted` says whether anything was. When
    even the smallest copy does not fit, `message` is empty and `truncated` true."""
    raw = value or b""
    if not rejections:
        rejections = [Rejection(None, "rejected without a reason", "internal_error")]
    copy, redacted = _redacted_copy(raw, limits, redactor)
    try:
        text = copy.decode("utf-8")
        encoding = "utf-8"
    except UnicodeDecodeError:
        text = ""
        encoding = "base64"
    first = rejections[0]
    errors = [{"index": r.index, "reason": r.reason[:_DLQ_REASON_CHARS], "code": r.code}
              for r in rejections[:DLQ_MAX_ERRORS]]
    record: dict[str, Any] = {
        "schema": "dlq/1",
        "reason": first.reason[:_DLQ_REASON_CHARS],
        "code": first.code,
        "index": first.index,
        "errors": errors,
        "errors_total": len(rejections),
        "source": {"topic": topic[:256], "partition": partition, "offset": offset},
        "message": "",
        "message_encoding": encoding,
        "truncated": True,
        "redacted": redacted,
        "size": len(raw),
        "sha256": hashlib.sha256(raw).hexdigest(),
    }
    # every field but the message at its final size; the copy gets what is left
    # (5 bytes spare: "true" may become "false")
    budget = min(max_bytes - len(orjson.dumps(record)) - 5, 4 * limits.dlq_copy_bytes + 8)
    if budget < 0:  # a tiny limit or very many long reasons: keep the first rejection only
        record["errors"] = errors[:1]
        budget = max_bytes - len(orjson.dumps(record)) - 5
    if encoding == "utf-8":
        allowed = min(budget + 2, limits.dlq_copy_bytes + 2)  # +2: the quotes already counted in ""
        message = clip_json_string(text, allowed) if budget > 0 else ""
        record["truncated"] = len(message) < len(text)
    else:
        n = max(0, min(budget, limits.dlq_copy_bytes * 4 // 3)) // 4 * 3  # base64 grows 3 bytes into 4
        part = copy[:n]
        message = base64.b64encode(part).decode("ascii")
        record["truncated"] = len(part) < len(copy)
    record["message"] = message
    out = orjson.dumps(record)
    if len(out) > max_bytes:  # only when max_bytes is below the size of the fields themselves
        record.update(message="", truncated=True, errors=errors[:1], reason=first.reason[:64],
                      source={"topic": topic[:64], "partition": partition, "offset": offset})
        record["errors"][0]["reason"] = first.reason[:64] if record["errors"] else ""
        out = orjson.dumps(record)
        if len(out) > max_bytes:
            raise ValueError(f"max_bytes={max_bytes} cannot hold a dead-letter record")
    return out


def _redacted_copy(raw: bytes, limits: DecodeLimits, redactor: Redactor) -> tuple[bytes, bool]:
    """The original with credential values replaced: through the parsed JSON when it
    parses (object, array, or NDJSON lines each), else by text patterns."""
    if not raw:
        return raw, False
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        obj = _MISSING
    if obj is not _MISSING:
        red, changed = redactor.redact_json(obj)
        return (orjson.dumps(red), True) if changed else (raw, False)
    if b"\n" in raw:  # NDJSON: the lines that parse are redacted as objects, the others as text
        out, changed = [], False
        for line in raw.split(b"\n"):
            try:
                red, c = redactor.redact_json(orjson.loads(line)) if line.strip() else (_MISSING, False)
                out.append(orjson.dumps(red) if c else line)
            except orjson.JSONDecodeError:
                line2, c = redactor.scrub_bytes(line)
                out.append(line2)
            changed |= c
        return (b"\n".join(out), True) if changed else (raw, False)
    return redactor.scrub_bytes(raw)


_MISSING: Any = object()
