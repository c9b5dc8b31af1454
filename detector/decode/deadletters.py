"""Dead-letter records: the original of a rejected message (credentials redacted, a
bounded copy) with where it came from and why each element was rejected, encoded
never over a byte bound (`encode_dlq_record`, what the stream writes)."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import orjson

from detector.decode.contract import DecodeLimits
from detector.decode.rejections import Rejection
from detector.redact import Redactor


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
