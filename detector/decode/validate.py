"""The reference validator: one decoded JSON value judged against the ClientRequest
contract field by field, nested objects included, naming the first problem (its
reason and code) when the value is not a valid request."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any

import orjson

from detector.decode.contract import (
    _HEX,
    _ID_FIELDS,
    _KNOWN_FIELDS,
    _MAX_RFC3339_CHARS,
    _NESTED,
    _NESTED_KEYS,
    _OBJECT_FIELDS,
    BODY_ENCODINGS,
    HTTP_VERSIONS,
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
    _Kind,
)
from detector.decode.rejections import InvalidRequest
from detector.model import ClientRequest


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
        raise InvalidRequest(
            f"field {name!r} of {len(v)} chars exceeds limits.max_field_chars={limits.max_field_chars}", "oversized")
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
            raise InvalidRequest(
                f"field {where!r} must be an ISO 3166-1 alpha-2 code (two capital letters), got {v[:8]!r}",
                "invalid_value")
    elif kind == "body_text":
        _nested_string(where, v, MAX_BODY_CHARS)
    elif kind == "body_encoding":
        _nested_string(where, v, 16, "invalid_value")
        if v not in BODY_ENCODINGS:
            raise InvalidRequest(f"field {where!r} must be one of {', '.join(BODY_ENCODINGS)}, got {v[:16]!r}",
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
            raise InvalidRequest(f"params[{k[:40]!r}] of {len(pv)} chars exceeds limits.max_field_chars={F}",
                                 "oversized")
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
    edge = _string(obj, "edge", limits, required=False)
    if edge is not None and not 0 < len(edge) <= MAX_EDGE_CHARS:
        raise InvalidRequest(f"field 'edge' must be an edge profile's name of 1..{MAX_EDGE_CHARS} characters, "
                             f"got {len(edge)}", "invalid_value")
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
        edge=edge,
        body=objects["body"],
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
