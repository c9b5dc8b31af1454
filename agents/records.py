"""The records the worker writes, kept within bounds: each topic's record size limit,
dead-letter records (a minimal one when the full one does not fit), the rejection of an
internal error, and log lines bounded in length and rate."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from agents.topics import ALERTS, CLIENT_REQUESTS_DLQ, ENTITY_EVENTS, ENTITY_FLAGS, VERDICTS, TopicLimits
from detector.decode import Rejection, encode_dlq_record
from detector.engine import DetectionConfig
from detector.redact import Redactor

log = logging.getLogger("detector.worker")


# The ingest producer's largest request: above every topic's record limit, so the
# topics' max.message.bytes decide (RecordLimits).
INGEST_MAX_REQUEST_SIZE = 4 * 1024 * 1024
FAUST_MAX_REQUEST_SIZE = 1_000_000  # Faust's producer_max_request_size default (the shard agent's producer)
_LOG_TEXT_CHARS = 300  # a quoted reason or exception message in a log line


@dataclass(frozen=True, slots=True)
class RecordLimits:
    """The largest record (key + value) the worker sends to each output: min(the
    topic's max.message.bytes read at start, the sending producer's max_request_size)
    minus 10% (agents.topics.record_limit). The ingest stage writes verdicts, dead
    letters and envelopes with its own producer; the shard agent writes alerts, flag
    updates, state buckets (the changelog), its dead letters and verdict revisions
    with Faust's."""

    verdict: int
    dlq: int
    envelope: int
    alert: int
    flag: int
    state: int
    shard_dlq: int
    shard_verdict: int  # a verdict revision the shard agent writes (Faust's producer)

    @classmethod
    def of(cls, topics: TopicLimits, ingest_max_request: int, faust_max_request: int,
           changelog_topic: str) -> RecordLimits:
        return cls(
            verdict=topics.record_limit(VERDICTS.name, ingest_max_request),
            dlq=topics.record_limit(CLIENT_REQUESTS_DLQ.name, ingest_max_request),
            envelope=topics.record_limit(ENTITY_EVENTS.name, ingest_max_request),
            alert=topics.record_limit(ALERTS.name, faust_max_request),
            flag=topics.record_limit(ENTITY_FLAGS.name, faust_max_request),
            state=topics.record_limit(changelog_topic, faust_max_request),
            shard_dlq=topics.record_limit(CLIENT_REQUESTS_DLQ.name, faust_max_request),
            shard_verdict=topics.record_limit(VERDICTS.name, faust_max_request),
        )


def log_text(text: str, redactor: Redactor, limit: int = _LOG_TEXT_CHARS) -> str:
    """Text from input (a rejection reason, an exception message) as a log line may
    quote it: credential values scrubbed, at most `limit` characters, one line."""
    raw, _ = redactor.scrub_bytes(text.encode("utf-8", "replace"))
    out = raw.decode("utf-8", "replace").replace("\r", " ").replace("\n", " ")
    return out if len(out) <= limit else out[:limit] + "..."


def internal_rejection(exc: BaseException, where: str, index: int | None, redactor: Redactor) -> Rejection:
    """The rejection of a message, request or envelope whose processing raised: the
    exception class, what was being done and the ids (`where`), and a bounded,
    scrubbed prefix of the exception's message."""
    detail = log_text(str(exc), redactor, 160)
    return Rejection(index, f"internal error: {type(exc).__name__} while {where}" + (f": {detail}" if detail else ""),
                     "internal_error")


class LogLimiter:
    """Per-kind rate limit of log lines driven by input (rejections, internal errors):
    at most `burst` lines per `interval_s` for each kind; the lines held back are
    counted (`on_suppressed`) and the next line written says how many there were."""

    def __init__(self, logger: logging.Logger, burst: int = 20, interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic, on_suppressed: Callable[[], None] = lambda: None):
        self.logger = logger
        self.burst = burst
        self.interval_s = interval_s
        self.clock = clock
        self.on_suppressed = on_suppressed
        self._window: dict[str, tuple[float, int, int]] = {}  # kind -> (window start, written, suppressed)

    def log(self, level: int, kind: str, msg: str, *args: Any) -> bool:
        now = self.clock()
        start, written, suppressed = self._window.get(kind, (now, 0, 0))
        if now - start >= self.interval_s:
            start, written = now, 0
        if written >= self.burst:
            self._window[kind] = (start, written, suppressed + 1)
            self.on_suppressed()
            return False
        if suppressed:
            msg += " (%d similar lines suppressed before)"
            args = (*args, suppressed)
        self._window[kind] = (start, written + 1, 0)
        self.logger.log(level, msg, *args)
        return True


def minimal_dlq_record(value: bytes | None, rejections: list[Rejection], *, topic: str, partition: int,
                       offset: int) -> bytes:
    """A dead-letter record without any copy of the original (its size and sha256
    only): the fallback when `encode_dlq_record` itself fails. Under 2 KB."""
    raw = value or b""
    first = rejections[0] if rejections else Rejection(None, "rejected without a reason", "internal_error")
    reason = first.reason[:400]
    return orjson.dumps({
        "schema": "dlq/1", "reason": reason, "code": first.code, "index": first.index,
        "errors": [{"index": first.index, "reason": reason, "code": first.code}], "errors_total": len(rejections),
        "source": {"topic": topic[:256], "partition": partition, "offset": offset},
        "message": "", "message_encoding": "utf-8", "truncated": True, "redacted": False,
        "size": len(raw), "sha256": hashlib.sha256(raw).hexdigest(),
    })


def dlq_bytes(value: bytes | None, rejections: list[Rejection], *, topic: str, partition: int, offset: int,
              detection: DetectionConfig, max_bytes: int) -> bytes:
    """The encoded dead letter of one source message, never over `max_bytes` and never
    raising (a failure of the encoder itself falls back to `minimal_dlq_record`)."""
    try:
        return encode_dlq_record(value, rejections, topic=topic, partition=partition, offset=offset,
                                 limits=detection.limits, max_bytes=max_bytes, redactor=detection.redactor)
    except Exception as exc:  # noqa: BLE001 - a dead letter must always be written
        log.error("dead-letter encoding failed for %s[%d]@%d (%s); writing its size and digest only",
                  topic, partition, offset, type(exc).__name__)
        return minimal_dlq_record(value, rejections, topic=topic, partition=partition, offset=offset)


class _DeadLetters:
    """The rejections of one ingest batch, grouped by source message: at most one
    dead letter per message, however many of its elements failed (a batch message
    whose 1,000 requests all fail costs one bounded record, not 1,000 copies)."""

    def __init__(self) -> None:
        self._by_source: dict[tuple[str, int, int], tuple[bytes | None, list[Rejection]]] = {}

    def add(self, topic: str, partition: int, offset: int, value: bytes | None, rejections: list[Rejection]) -> None:
        entry = self._by_source.get((topic, partition, offset))
        if entry is None:
            self._by_source[(topic, partition, offset)] = (value, list(rejections))
        else:
            entry[1].extend(rejections)

    def items(self) -> list[tuple[tuple[str, int, int], tuple[bytes | None, list[Rejection]]]]:
        return list(self._by_source.items())

    def __len__(self) -> int:
        return len(self._by_source)
