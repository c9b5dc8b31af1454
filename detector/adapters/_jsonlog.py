"""What the JSON-per-line adapters (Envoy's access log, Cloudflare Logpush) share: a
line's JSON object (a line cut short is `truncated`, not `invalid_json`), the JA3 and
JA4 layouts, and a Kafka message of many lines into requests and rejections. Pure;
the helpers raise InvalidRequest, which `decode_lines` turns into rejections."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import orjson

from detector.decode.contract import DecodeLimits
from detector.decode.fastpath import _fast_path
from detector.decode.messages import Decoded
from detector.decode.rejections import InvalidRequest, Rejection
from detector.decode.validate import request_from_obj
from detector.model import ClientRequest

# The JA4 layout (FoxIO's JA4 spec): protocol (t TCP, q QUIC, d DTLS), two version
# characters, d/i (SNI or not), two digits of cipher count, two of extension count, two
# ALPN characters (00: none), then two 12-hex hashes. A full JA4: no `?` (an edge that
# computes JA4 itself knows every character).
_JA4 = re.compile(r"[tqd][0-9a-z]{2}[di][0-9]{4}[0-9A-Za-z]{2}_[0-9a-f]{12}_[0-9a-f]{12}")
_JA3 = re.compile(r"[0-9a-f]{32}")


def json_object(raw: bytes, vendor: str, cut_hint: str) -> dict[str, Any]:
    """The JSON object of one line. Bytes that are not UTF-8 are `invalid_utf8`, except
    a multi-byte character cut at the very end; JSON that ends before its object does
    is `truncated` (`cut_hint` says what to raise); anything else `invalid_json`; a
    JSON value that is not an object `invalid_type`."""
    text = raw.strip()
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        cut = f"{vendor} log line cut short after {len(text)} bytes ({cut_hint})"
        try:
            text.decode("utf-8")
        except UnicodeDecodeError as uexc:
            if uexc.end >= len(text) and uexc.reason == "unexpected end of data" and text.startswith(b"{"):
                raise InvalidRequest(cut, "truncated") from None
            raise InvalidRequest(f"invalid UTF-8 at byte {uexc.start}", "invalid_utf8") from None
        if text.startswith(b"{") and exc.pos >= len(text) and str(exc).startswith("unexpected end of data"):
            raise InvalidRequest(cut, "truncated") from None
        raise InvalidRequest(f"invalid JSON: {str(exc).split(':', 1)[0]} at column {exc.colno}",
                             "invalid_json") from None
    if not isinstance(obj, dict):
        raise InvalidRequest(f"a {vendor} log line must be a JSON object", "invalid_type")
    return obj


def check_ja4(value: str, where: str) -> str:
    if not _JA4.fullmatch(value):
        raise InvalidRequest(f"{where} {value[:40]!r} is not a JA4 (a_b_c, 36 characters)", "invalid_value")
    return value


def check_ja3(value: str, where: str) -> str:
    if not _JA3.fullmatch(value):
        raise InvalidRequest(f"{where} {value[:40]!r} is not a JA3 hash (32 lower-case hex)", "invalid_value")
    return value


def to_request(obj: dict[str, Any], limits: DecodeLimits) -> ClientRequest:
    """The native object judged as the contract judges it (fast path, else the
    reference validator)."""
    req = _fast_path(limits)(obj)
    return request_from_obj(obj, limits) if req is None else req


def decode_lines(value: bytes | None, limits: DecodeLimits,
                 decode_line: Callable[[bytes, DecodeLimits], ClientRequest]) -> Decoded:
    """A Kafka message of log lines (one, or many newline-separated: a shipper or relay
    that batches) into requests and rejections, each line judged on its own."""
    if value is None or not value.strip():
        return Decoded(rejections=[Rejection(None, "empty message", "empty_message")], form="invalid")
    if len(value) > limits.max_message_bytes:
        reason = f"message of {len(value)} bytes exceeds limits.max_message_bytes={limits.max_message_bytes}"
        return Decoded(rejections=[Rejection(None, reason, "oversized")], form="invalid")
    lines = [ln for ln in value.split(b"\n") if ln.strip()]
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
