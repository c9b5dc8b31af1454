"""What the line adapters of edges whose messages are text lines share (a line's
bytes within its bound is detector.decode.messages.line_bytes): a line as text, a
message split into lines and each decoded on its own, and the native object
validated (a JSON line: detector.adapters._jsonlog.json_value). Pure; nothing raised
past `decode_lines`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from detector.decode.contract import DecodeLimits
from detector.decode.fastpath import _fast_path
from detector.decode.messages import Decoded
from detector.decode.rejections import InvalidRequest, Rejection
from detector.decode.validate import request_from_obj
from detector.model import ClientRequest


def as_text(raw: bytes) -> tuple[str, bool]:
    """The line as text, and whether it ends inside a multi-byte character (then the
    text is what precedes that character: the caller tells a line cut short from bad
    bytes); raises InvalidRequest `invalid_utf8` for bytes that are not UTF-8."""
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError as exc:
        if exc.end >= len(raw) and exc.reason == "unexpected end of data":
            return raw[:exc.start].decode("utf-8"), True
        raise InvalidRequest(f"invalid UTF-8 at byte {exc.start}", "invalid_utf8") from None


def validated(obj: dict[str, Any], limits: DecodeLimits) -> ClientRequest:
    """The ClientRequest of a native object: the fast path, else the reference validator."""
    req = _fast_path(limits)(obj)
    return request_from_obj(obj, limits) if req is None else req


def decode_lines(value: bytes | None, limits: DecodeLimits,
                 decode_line: Callable[[bytes, DecodeLimits], ClientRequest]) -> Decoded:
    """A Kafka message of one line, or of several separated by newlines (a relay
    that batches), into requests and rejections (indexed when there are several)."""
    if value is None or not value.strip():
        return Decoded(rejections=[Rejection(None, "empty message", "empty_message")], form="invalid")
    if len(value) > limits.max_message_bytes:
        reason = f"message of {len(value)} bytes exceeds limits.max_message_bytes={limits.max_message_bytes}"
        return Decoded(rejections=[Rejection(None, reason, "oversized")], form="invalid")
    lines = [ln.rstrip(b"\r") for ln in value.split(b"\n") if ln.strip()]
    out = Decoded(form="object" if len(lines) == 1 else "ndjson")
    if len(lines) > limits.max_batch_elements:
        out.rejections.append(Rejection(
            None, f"batch of {len(lines)} lines exceeds limits.max_batch_elements={limits.max_batch_elements}",
            "too_many"))
        return out
    for i, ln in enumerate(lines):
        index = None if len(lines) == 1 else i
        try:
            req = decode_line(ln, limits)
        except InvalidRequest as exc:
            out.rejections.append(Rejection(index, str(exc), exc.code))
            continue
        out.requests.append(req)
        out.indices.append(index)
    return out
