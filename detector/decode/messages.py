"""The three forms of a Kafka message value (one JSON object, a JSON array of objects,
NDJSON) and a JSONL line of `detector score`, decoded element by element: the fast
path accepts what it can, the reference validator decides the rest."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from detector.decode.contract import DecodeLimits
from detector.decode.fastpath import _fast_path
from detector.decode.rejections import InvalidRequest, Rejection
from detector.decode.validate import request_from_obj
from detector.model import ClientRequest


@dataclass(slots=True)
class Decoded:
    requests: list[ClientRequest] = field(default_factory=list)
    indices: list[int | None] = field(default_factory=list)  # element index of each request
    rejections: list[Rejection] = field(default_factory=list)
    form: str = "object"  # object | array | ndjson | invalid


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


def line_bytes(line: bytes | str, limits: DecodeLimits) -> bytes:
    """The bytes of one input line, within limits.max_message_bytes; raises
    InvalidRequest (`invalid_utf8` for a str that cannot be UTF-8, `oversized`)."""
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
    return raw


def decode_line(line: bytes | str, limits: DecodeLimits = DecodeLimits()) -> ClientRequest:
    """Decode one JSONL line (offline scoring); raises InvalidRequest with the reason
    and its code."""
    raw = line_bytes(line, limits)
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
