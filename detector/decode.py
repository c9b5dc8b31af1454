"""Decoding of ClientRequest messages (event-schema.md section 1) into typed values.

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
from typing import Annotated, Any, Callable, Literal, Mapping, Optional

import msgspec
import orjson

from detector.model import ClientRequest

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
_MAX_TS = 253402300799  # 9999-12-31T23:59:59Z: later times cannot be formatted as RFC 3339
_HEX = frozenset("0123456789abcdefABCDEF")


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
    reason: str


@dataclass(slots=True)
class Decoded:
    requests: list[ClientRequest] = field(default_factory=list)
    indices: list[int | None] = field(default_factory=list)  # element index of each request
    rejections: list[Rejection] = field(default_factory=list)
    form: str = "object"  # object | array | ndjson | invalid


class InvalidRequest(ValueError):
    """One object failed validation; the message is the one-line reason."""


def decode_message(value: bytes | None, limits: DecodeLimits = DecodeLimits()) -> Decoded:
    """Decode one Kafka message value in any of the three forms."""
    if value is None or len(value) == 0:
        return Decoded(rejections=[Rejection(None, "empty message")], form="invalid")
    if len(value) > limits.max_message_bytes:
        reason = f"message of {len(value)} bytes exceeds limits.max_message_bytes={limits.max_message_bytes}"
        return Decoded(rejections=[Rejection(None, reason)], form="invalid")
    if value[:1] == b"[" or value.lstrip()[:1] == b"[":
        out = Decoded(form="array")
        try:
            items = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            out.form = "invalid"
            out.rejections.append(Rejection(None, _json_reason(value, exc)))
            return out
        if not isinstance(items, list):  # pragma: no cover - '[' always parses to a list
            items = [items]
        if len(items) > limits.max_batch_elements:
            out.rejections.append(
                Rejection(None, f"batch of {len(items)} elements exceeds limits.max_batch_elements={limits.max_batch_elements}")
            )
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
        out.rejections.append(Rejection(None, _json_reason(value, exc)))
        return out
    req = _fast_path(limits)(obj)
    if req is not None:  # the common case, kept short
        return Decoded([req], [None], [], "object")
    out = Decoded(form="object")
    _add(out, None, obj, limits)
    return out


def decode_line(line: bytes | str, limits: DecodeLimits = DecodeLimits()) -> ClientRequest:
    """Decode one JSONL line (offline scoring); raises InvalidRequest with the reason."""
    raw = line.encode() if isinstance(line, str) else line
    if len(raw) > limits.max_message_bytes:
        raise InvalidRequest(f"line of {len(raw)} bytes exceeds limits.max_message_bytes={limits.max_message_bytes}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(_json_reason(raw, exc)) from None
    req = _fast_path(limits)(obj)
    return request_from_obj(obj, limits) if req is None else req


def _decode_ndjson(out: Decoded, value: bytes, limits: DecodeLimits) -> None:
    lines = [ln for ln in value.split(b"\n") if ln.strip()]
    if len(lines) > limits.max_batch_elements:
        out.rejections.append(
            Rejection(None, f"batch of {len(lines)} elements exceeds limits.max_batch_elements={limits.max_batch_elements}")
        )
        return
    fast = _fast_path(limits)
    for i, ln in enumerate(lines):
        try:
            obj = orjson.loads(ln)
        except orjson.JSONDecodeError as exc:
            out.rejections.append(Rejection(i, _json_reason(ln, exc)))
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
        out.rejections.append(Rejection(index, str(exc)))
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


def _json_reason(raw: bytes, exc: orjson.JSONDecodeError) -> str:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as uexc:
        return f"invalid UTF-8 at byte {uexc.start}"
    msg = str(exc).split(":", 1)[0]
    return f"invalid JSON: {msg} at line {exc.lineno} column {exc.colno}"


def _string(obj: Mapping[str, Any], name: str, limits: DecodeLimits, *, required: bool) -> str | None:
    v = obj.get(name)
    if v is None:
        if required:
            raise InvalidRequest(f"missing required field {name!r}")
        return None
    if not isinstance(v, str):
        raise InvalidRequest(f"field {name!r} must be a string, got {_type(v)}")
    if len(v) > limits.max_field_chars:
        raise InvalidRequest(f"field {name!r} of {len(v)} chars exceeds limits.max_field_chars={limits.max_field_chars}")
    return v


def _type(v: Any) -> str:
    if v is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(v), type(v).__name__
    )


@lru_cache(maxsize=65536)
def _valid_ip(ip: str) -> bool:
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        return False
    return True


@lru_cache(maxsize=4096)
def _parse_rfc3339(s: str) -> float:
    dt = datetime.fromisoformat(s)
    if dt.tzinfo is None:
        raise ValueError("no time zone")
    return dt.timestamp()


def _timestamp(v: Any) -> float:
    if isinstance(v, bool):
        raise InvalidRequest("field 'ts' must be epoch seconds or an RFC 3339 string, got boolean")
    if isinstance(v, (int, float)):
        ts = float(v)
        if not math.isfinite(ts) or ts < 0 or ts > _MAX_TS:
            raise InvalidRequest(f"field 'ts' must be epoch seconds between 0 and {_MAX_TS} (year 9999), got {v!r}")
        return ts
    if isinstance(v, str):
        try:
            return _parse_rfc3339(v)
        except ValueError:
            raise InvalidRequest(f"field 'ts' is not an RFC 3339 timestamp with a time zone: {v[:40]!r}") from None
    if v is None:
        raise InvalidRequest("missing required field 'ts'")
    raise InvalidRequest(f"field 'ts' must be a number or string, got {_type(v)}")


def _headers(v: Any, limits: DecodeLimits) -> tuple[tuple[str, str], ...]:
    if v is None:
        raise InvalidRequest("missing required field 'headers'")
    if not isinstance(v, list):
        raise InvalidRequest(f"field 'headers' must be an array of [name, value] pairs, got {_type(v)}")
    if len(v) > limits.max_headers:
        raise InvalidRequest(f"{len(v)} headers exceed limits.max_headers={limits.max_headers}")
    out = []
    for i, pair in enumerate(v):
        if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str) and isinstance(pair[1], str)):
            raise InvalidRequest(f"headers[{i}] must be a [name, value] pair of strings")
        if len(pair[0]) + len(pair[1]) > limits.max_header_bytes:
            raise InvalidRequest(f"headers[{i}] exceeds limits.max_header_bytes={limits.max_header_bytes}")
        if not pair[0]:
            raise InvalidRequest(f"headers[{i}] has an empty name")
        out.append((pair[0], pair[1]))
    return tuple(out)


def request_from_obj(obj: Any, limits: DecodeLimits = DecodeLimits()) -> ClientRequest:
    """Validate one decoded JSON value against the ClientRequest contract.

    This is the reference validator: it names the first problem in the reason, and it
    decides whenever the fast path (`_fast_path`, used by `decode_message` and
    `decode_line`) does not accept an object. It takes any Python value and judges it as
    it always has (tuples where the contract has arrays are rejected, for one); the fast
    path is only for `orjson.loads` output and is not used here."""
    if not isinstance(obj, dict):
        raise InvalidRequest(f"a ClientRequest must be a JSON object, got {_type(obj)}")
    request_id = _string(obj, "request_id", limits, required=True)
    assert request_id is not None
    if not 1 <= len(request_id) <= 128:
        raise InvalidRequest(f"field 'request_id' must have 1..128 chars, got {len(request_id)}")
    ts = _timestamp(obj.get("ts"))
    client_ip = _string(obj, "client_ip", limits, required=True)
    assert client_ip is not None
    if not _valid_ip(client_ip):
        raise InvalidRequest(f"field 'client_ip' is not an IPv4 or IPv6 address: {client_ip[:64]!r}")
    method = _string(obj, "method", limits, required=True)
    assert method is not None
    if not method:
        raise InvalidRequest("field 'method' is empty")
    path = _string(obj, "path", limits, required=True)
    assert path is not None
    if not path.startswith("/") or "?" in path:
        raise InvalidRequest(f"field 'path' must start with '/' and carry no query string: {path[:64]!r}")
    headers = _headers(obj.get("headers"), limits)

    query = _string(obj, "query", limits, required=False)
    http_version = obj.get("http_version")
    if http_version is not None:
        if not isinstance(http_version, str):
            raise InvalidRequest(f"field 'http_version' must be a string, got {_type(http_version)}")
        if http_version not in HTTP_VERSIONS:
            raise InvalidRequest(f"field 'http_version' must be one of 1.0, 1.1, 2, 3, got {http_version[:16]!r}")
    body_sha256 = _string(obj, "body_sha256", limits, required=False)
    if body_sha256 is not None and (len(body_sha256) != 64 or not _HEX.issuperset(body_sha256)):
        raise InvalidRequest("field 'body_sha256' must be 64 hex characters")
    body_size = _int(obj, "body_size", minimum=0)
    response_status = _int(obj, "response_status", minimum=0)
    params = obj.get("params")
    if params is not None:
        if not isinstance(params, dict):
            raise InvalidRequest(f"field 'params' must be an object, got {_type(params)}")
        for k, pv in params.items():
            if not isinstance(pv, str):
                raise InvalidRequest(f"params[{k[:40]!r}] must be a string, got {_type(pv)}")
    objects: dict[str, Any] = {}
    for name in _OBJECT_FIELDS:
        ov = obj.get(name)
        if ov is not None and not isinstance(ov, dict):
            raise InvalidRequest(f"field {name!r} must be an object, got {_type(ov)}")
        objects[name] = ov
    ids = {name: _string(obj, name, limits, required=False) for name in _ID_FIELDS}
    extra = None if _KNOWN_FIELDS.issuperset(obj) else {k: v for k, v in obj.items() if k not in _KNOWN_FIELDS}
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
        raise InvalidRequest(f"field {name!r} must be an integer, got {_type(v)}")
    if v < minimum:
        raise InvalidRequest(f"field {name!r} must be >= {minimum}, got {v}")
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
_OBJECT_OR_NULL = frozenset({dict, type(None)})


def _header_split(limits: DecodeLimits) -> tuple[int, int]:
    """Longest header name and value the fast path accepts; they sum to the pair limit."""
    name = max(1, min(_MAX_HEADER_NAME, limits.max_header_bytes // 2))
    return name, limits.max_header_bytes - name


def _wire_type(limits: DecodeLimits, *, lenient: bool) -> type[msgspec.Struct]:
    """A Struct with ClientRequest's fields in its order (without `extra`) whose types
    accept only what `request_from_obj` accepts under `limits` (see above for the
    checks left to Python)."""
    meta = msgspec.Meta
    F = limits.max_field_chars
    text = Annotated[str, meta(max_length=F)]
    name_max, value_max = _header_split(limits)
    header = tuple[Annotated[str, meta(min_length=1, max_length=name_max)], Annotated[str, meta(max_length=value_max)]]
    epoch = Annotated[float, meta(ge=0, le=_MAX_TS)]  # float also takes ints (as float(v)), never booleans
    sha: Any = (
        Annotated[str, meta(min_length=64, max_length=64, pattern=r"\A[0-9a-fA-F]{64}\Z")]
        if F >= 64
        else None  # a type no string matches
    )
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
        "params": Optional[dict[str, str]],
        # JSON objects are passed through as they are (a `dict` type would copy them)
        # and their type is checked afterwards
        "tls": Any, "h2": Any, "network": Any, "attestation": Any, "label": Any,
        "account_id": Optional[text],
        "device_id": Optional[text],
        "session_id": Optional[text],
        "response_status": Optional[Annotated[int, meta(ge=0)]],
    }
    fields = [(n, types[n]) if i < 6 else (n, types[n], None) for i, n in enumerate(_WIRE_FIELDS)]
    return msgspec.defstruct(
        "WireClientRequest", fields, frozen=True, gc=False, forbid_unknown_fields=not lenient
    )


def _no_fast_path(obj: Any) -> None:
    return None


@lru_cache(maxsize=32)
def _build_fast_path(limits: DecodeLimits) -> Callable[[Any], ClientRequest | None]:
    if ClientRequest.__struct_fields__ != _WIRE_FIELDS + ("extra",):  # model changed: stay correct, go slow
        return _no_fast_path
    strict = _wire_type(limits, lenient=False)
    lenient = _wire_type(limits, lenient=True)
    convert = msgspec.convert
    ValidationError = msgspec.ValidationError
    astuple = msgspec.structs.astuple
    valid_ip = _valid_ip
    objects = _OBJECT_OR_NULL
    known = _KNOWN_FIELDS
    make = ClientRequest

    def wire_ok(w: Any) -> bool:
        """What msgspec cannot express: the path's shape, a real IP address, and
        the five object fields being objects (or null)."""
        path = w.path
        return (
            path[:1] == "/"
            and "?" not in path
            and valid_ip(w.client_ip)
            and type(w.tls) in objects
            and type(w.h2) in objects
            and type(w.network) in objects
            and type(w.attestation) in objects
            and type(w.label) in objects
        )

    def fast(obj: Any) -> ClientRequest | None:
        """The ClientRequest for `obj` (an `orjson.loads` value), or None: let the
        reference validator decide."""
        try:
            w = convert(obj, strict)
        except ValidationError:
            return slower(obj)
        if not wire_ok(w):
            return None
        return make(*astuple(w))  # `extra` stays None: the strict type forbids unknown fields

    def slower(obj: Any) -> ClientRequest | None:
        """`fast` for objects with an RFC 3339 `ts` or unknown fields."""
        try:
            w = convert(obj, lenient)
        except ValidationError:
            return None
        if not wire_ok(w):
            return None
        args = list(astuple(w))
        ts = args[1]
        if type(ts) is str:
            try:
                args[1] = _parse_rfc3339(ts)
            except ValueError:
                return None
        extra = None if known.issuperset(obj) else {k: v for k, v in obj.items() if k not in known}
        return make(*args, extra)

    return fast


_fast_path_last = (DecodeLimits(), _no_fast_path)  # (limits, its fast path); replaced on first use


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
    """The dead-letter record for one source message: its whole original value (or,
    when larger than `limits.dlq_copy_bytes`, a truncated copy with the original's
    SHA-256 and size), where it came from, and why each rejected element was rejected.
    `index`/`reason` name the first rejection; `errors` lists all of them."""
    raw = value or b""
    truncated = len(raw) > limits.dlq_copy_bytes
    copy = raw[: limits.dlq_copy_bytes] if truncated else raw
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
