"""What every input adapter shares (detector/adapters/*): a Kafka message of lines
into requests and rejections, each line judged on its own (`decode_lines`); a line's
JSON value, where a line cut short is `truncated` (also inside a multi-byte
character or before a syslog-forwarded line's marker), not `invalid_json` or
`invalid_utf8` (`json_value`, `json_object`); a text line, telling a cut inside a
character from bad bytes (`as_text`); the JA3 and JA4 layouts; the HTTP versions
the vendors write; and the native object judged as the contract judges it
(`validated`). Pure; the helpers raise InvalidRequest, which `decode_lines` turns
into rejections. (A line's bytes within its bound: detector.decode.messages.line_bytes.)"""

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
_SYSLOG_HEAD = re.compile(rb"<[0-9]{0,3}(>[^{]*)?")  # `<134>Dec  3 00:07:03 host haproxy[1]:` and its prefixes
# The request line's protocol as Envoy (%PROTOCOL%), Cloudflare (ClientRequestProtocol),
# CloudFront (cs-protocol-version) and Fastly write it, to the contract's http_version
HTTP_VERSIONS: dict[str, str] = {"HTTP/1.0": "1.0", "HTTP/1.1": "1.1", "HTTP/2": "2", "HTTP/2.0": "2", "HTTP/3": "3",
                                 "HTTP/3.0": "3"}
MAX_HEADERS_OBJECT = 256  # more keys in a log's header object than any access log names


def decode_lines(value: bytes | None, limits: DecodeLimits,
                 decode_line: Callable[[bytes, DecodeLimits], ClientRequest]) -> Decoded:
    """A Kafka message of log lines (one, or many newline-separated: a shipper or relay
    that batches) into requests and rejections, each line judged on its own."""
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


def json_value(raw: bytes, vendor: str, cut_hint: str, marker: bytes | None = None) -> Any:
    """The JSON value of one line (every adapter whose lines are JSON reads them here).
    With `marker` (the line's version key, `{"haproxy":`), leading text before it (a
    syslog header a relay forwards) is skipped. A line cut short is `truncated`
    (`cut_hint` says what to raise), also when the cut falls inside a multi-byte
    UTF-8 character at its very end; other bytes that are not UTF-8 `invalid_utf8`;
    any other bad JSON `invalid_json`."""
    text = raw.strip()
    if marker is not None and not text.startswith(b"{"):
        at = text.find(marker)
        if at < 0:
            if _cut_before(text, marker):
                raise InvalidRequest(f"{vendor} log line cut short after {len(text)} bytes, before its JSON object "
                                     f"({cut_hint})", "truncated")
            raise InvalidRequest(f"{vendor} log line: no JSON object (not the shipped format)", "invalid_json")
        text = text[at:]
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as first:
        err = first
        cut = InvalidRequest(f"{vendor} log line cut short after {len(text)} bytes ({cut_hint})", "truncated")
        try:
            chars = text.decode("utf-8")
        except UnicodeDecodeError as uexc:
            if not (uexc.end >= len(text) and uexc.reason == "unexpected end of data"):
                raise InvalidRequest(f"invalid UTF-8 at byte {uexc.start}", "invalid_utf8") from None
            chars = text[:uexc.start].decode("utf-8")  # a character cut at the very end: judge what precedes it
            try:
                orjson.loads(chars)
            except orjson.JSONDecodeError as head_err:
                err = head_err
            else:  # a whole value, then the first bytes of a character: not a cut value
                raise InvalidRequest(f"invalid UTF-8 at byte {uexc.start}", "invalid_utf8") from None
        # orjson's position counts characters, not bytes
        if chars.startswith("{") and err.pos >= len(chars) and str(err).startswith("unexpected end of data"):
            raise cut from None
        raise InvalidRequest(f"invalid JSON: {str(err).split(':', 1)[0]} at column {err.colno}",
                             "invalid_json") from None


def _cut_before(text: bytes, marker: bytes) -> bool:
    """Whether a line without `marker` was cut before the marker was whole: inside a
    syslog header (`<PRI>` and no `: ` ending its tag yet) or inside the marker's first
    bytes (the text ends with a prefix of it). A syslog line with another message
    (`haproxy[1]: Proxy api started.`) is neither."""
    if any(text.endswith(marker[:k]) for k in range(1, len(marker))):
        return True
    return _SYSLOG_HEAD.fullmatch(text) is not None and b": " not in text


def json_object(raw: bytes, vendor: str, cut_hint: str, marker: bytes | None = None) -> dict[str, Any]:
    """The JSON object of one line (json_value); a JSON value that is not an object is
    `invalid_type`."""
    obj = json_value(raw, vendor, cut_hint, marker)
    if not isinstance(obj, dict):
        raise InvalidRequest(f"a {vendor} log line must be a JSON object", "invalid_type")
    return obj


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


def check_ja4(value: str, where: str) -> str:
    if not _JA4.fullmatch(value):
        raise InvalidRequest(f"{where} {value[:40]!r} is not a JA4 (a_b_c, 36 characters)", "invalid_value")
    return value


def check_ja3(value: str, where: str) -> str:
    if not _JA3.fullmatch(value):
        raise InvalidRequest(f"{where} {value[:40]!r} is not a JA3 hash (32 lower-case hex)", "invalid_value")
    return value


def validated(obj: dict[str, Any], limits: DecodeLimits) -> ClientRequest:
    """The native object judged as the contract judges it (fast path, else the
    reference validator)."""
    req = _fast_path(limits)(obj)
    return request_from_obj(obj, limits) if req is None else req
