"""The stream worker: a Faust app with two stages.

- **ingest** (a service inside the Faust app): a raw aiokafka consumer reads
  `client-requests` in bulk (`getmany`), decodes every message form, scores the batch
  with the pure core, and publishes verdicts, dead letters and the flagged requests'
  compact records (batch envelopes per shard partition, split by bytes). Offsets are
  committed only after the broker acknowledged every output of the batch
  (at-least-once). Faust's per-message path costs ~90 us (architecture.md), so
  requests never pass through it one by one.
- **entity shards** (a Faust agent over `detector-entity-flags`): each envelope holds
  the flagged requests of the entities that hash to its partition; the shard's alert
  policy aggregates them per entity and window and publishes alerts.

Hostile input never stops either stage: whatever raises while one message, request or
envelope is processed dead-letters that one (code `internal_error`, with its ids) and
the rest goes on; offsets are committed only after the dead letters were acknowledged,
so no message can make the worker crash, let alone crash-loop. Every record written
stays under its topic's limit (`RecordLimits`), and event time follows the Kafka
records' own timestamps: a request dated too far ahead of them is scored but moves no
window, watermark or flag expiry.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import faust
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError
from aiohttp import web
from mode import Service
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agents import logs
from agents.lag import ConsumerLag
from agents.metrics import FaustSensor, LabelSets, Metrics, webhook_endpoint_names
from agents.brokerwatch import BrokerWatch, WatchCounters, WatchHooks
from agents.publish import BROKER_ERRORS, Backoff, BatchPublisher, BrokerHealth, PublishAborted
from agents.settings import Settings
from agents.topics import (ALERTS, ALL_TOPICS, CLIENT_REQUESTS, CLIENT_REQUESTS_DLQ, ENTITY_EVENTS, ENTITY_FLAGS,
                           VERDICTS, TopicLimits, TopicSpec, create_topics, partitions_of, read_topic_limits)
from detector.behaviour.engine import BehaviourEngine, Output
from detector.behaviour.flags import FlagMap, decode_update, encode_update
from detector.behaviour.records import EntityRecord, decode_envelope, encode_envelopes, records_for
from detector.decode import Rejection, decode_message, encode_dlq_record
from detector.engine import DetectionConfig
from detector.model import ClientRequest, Verdict
from detector.redact import Redactor

log = logging.getLogger("detector.worker")

_LEVEL_RANK = {"clean": 0, "suspicious": 1, "malicious": 2}
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
    updates, state buckets (the changelog) and its dead letters with Faust's."""

    verdict: int
    dlq: int
    envelope: int
    alert: int
    flag: int
    state: int
    shard_dlq: int

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


@dataclass(slots=True)
class _Pending:
    """A decoded request waiting to be scored, with where it came from."""

    request: ClientRequest
    source: tuple[int, int, int]  # client-requests partition, offset, index in the message
    index: int | None
    topic: str
    value: bytes | None  # the source message (for a dead letter)
    reference: float  # the event-time reference: the Kafka record's timestamp, capped


@dataclass(slots=True)
class _ShardBatch:
    records: list[EntityRecord] = field(default_factory=list)
    sources: list[tuple[int, int, int]] = field(default_factory=list)
    values: list[tuple[str, bytes | None]] = field(default_factory=list)  # per record: its source topic, message


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


def shard_of(entity_type: str, entity_id: str, partitions: int) -> int:
    """The shard partition of an entity: stable across processes and restarts (crc32,
    not Python's salted hash)."""
    return zlib.crc32(f"{entity_type}:{entity_id}".encode()) % partitions


class _CommitGate(ConsumerRebalanceListener):
    """Holds a revocation until the batch in flight is published and committed, so a
    rebalance never hands a partition over with processed-but-uncommitted offsets."""

    def __init__(self, lock: asyncio.Lock):
        self.lock = lock

    async def on_partitions_revoked(self, revoked: Any) -> None:
        async with self.lock:
            log.info("ingest partitions revoked: %s", sorted(str(tp) for tp in revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("ingest partitions assigned: %s", sorted(str(tp) for tp in assigned))


class IngestStage(Service):
    def __init__(self, settings: Settings, detection: DetectionConfig, metrics: Metrics, **kwargs: Any):
        super().__init__(**kwargs)
        self.settings = settings
        self.detection = detection
        self.metrics = metrics
        self.pipeline = detection.pipeline()
        self.shard_partitions = partitions_of(ENTITY_EVENTS, settings.topic_partitions)
        # flags of behaviour-flagged entities, broadcast by the shards (see _follow_flags)
        self.flags = FlagMap(detection.scoring.weight_of)
        self.watermark = 0.0
        self._lock = asyncio.Lock()
        self.consumer: AIOKafkaConsumer | None = None
        self.flag_consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.ready = asyncio.Event()
        self.first_event_at: float | None = None
        # record size limits: Kafka's defaults until on_start read the topics' own
        self.topic_limits = TopicLimits()
        self.limits = RecordLimits.of(self.topic_limits, INGEST_MAX_REQUEST_SIZE, INGEST_MAX_REQUEST_SIZE, "")
        self.event_time = detection.event_time
        self.redactor = detection.redactor
        self.logs = LogLimiter(log, on_suppressed=metrics.suppressed_logs.inc)
        # Broker faults (agents/publish.py, agents/brokerwatch.py): readiness follows the
        # recent broker interactions; produce errors are retried, never fatal.
        self.backoff = Backoff(initial_s=settings.produce_retry_initial_s, max_s=settings.produce_retry_max_s)
        self.broker = BrokerHealth(unready_failures=settings.broker_unready_failures,
                                   stale_after_s=max(15.0, 5 * settings.broker_check_interval_s))
        self.on_log_lost: list[Any] = []  # callbacks: the broker lost its log (see BrokerWatch)
        self.extra_limit_topics: list[str] = []  # more topics whose limits to read at start (the changelog)
        self.on_limits: list[Callable[[TopicLimits], None]] = []  # callbacks: the limits were read
        self._flag_failures = 0  # consecutive failed polls of the flag feed
        self.watch = BrokerWatch(
            WatchHooks(topics=self._broker_topics, create=self._create_topics, end_offsets=self._log_ends),
            self.broker,
            WatchCounters(error=metrics.broker_errors.labels("metadata").inc, recovered=metrics.broker_recoveries.inc,
                          recreated=metrics.topics_recreated.inc, log_lost=metrics.broker_log_resets.inc),
            ALL_TOPICS, timeout_s=max(5.0, 2 * settings.broker_check_interval_s), on_log_lost=self._log_lost,
        )

    async def on_start(self) -> None:
        s = self.settings
        self.producer = AIOKafkaProducer(
            bootstrap_servers=s.kafka_bootstrap, client_id=f"{s.app_id}-ingest", acks="all",
            linger_ms=5, max_batch_size=512 * 1024, max_request_size=INGEST_MAX_REQUEST_SIZE,
        )
        await self.producer.start()
        # Every record we write stays under its topic's limit (RecordLimits): read the
        # output topics' max.message.bytes once (the state changelog's too, for the shards).
        self.topic_limits = await read_topic_limits(
            s.kafka_bootstrap, [VERDICTS.name, CLIENT_REQUESTS_DLQ.name, ENTITY_EVENTS.name, ALERTS.name,
                                ENTITY_FLAGS.name, *self.extra_limit_topics])
        self.limits = RecordLimits.of(self.topic_limits, INGEST_MAX_REQUEST_SIZE, INGEST_MAX_REQUEST_SIZE, "")
        log.info("record limits (bytes): verdicts %d, dead letters %d, envelopes %d",
                 self.limits.verdict, self.limits.dlq, self.limits.envelope)
        for callback in self.on_limits:
            callback(self.topic_limits)
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap, group_id=f"{s.app_id}-ingest", client_id=f"{s.app_id}-ingest",
            enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=s.ingest_max_records,
            rebalance_timeout_ms=int(s.rebalance_timeout_s * 1000), session_timeout_ms=int(s.session_timeout_s * 1000),
            heartbeat_interval_ms=int(s.heartbeat_interval_s * 1000), fetch_max_wait_ms=100,
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )
        self.consumer.subscribe([CLIENT_REQUESTS.name], listener=_CommitGate(self._lock))
        await self.consumer.start()
        # group_id=None: every partition of the flags topic, from the start
        self.flag_consumer = AIOKafkaConsumer(
            ENTITY_FLAGS.name, bootstrap_servers=s.kafka_bootstrap, group_id=None, client_id=f"{s.app_id}-flags",
            enable_auto_commit=False, auto_offset_reset="earliest", fetch_max_wait_ms=100,
        )
        await self.flag_consumer.start()
        log.info("ingest stage started: group %s-ingest on %s", s.app_id, s.kafka_bootstrap)

    async def on_stop(self) -> None:
        async with self._lock:  # let the batch in flight finish and commit
            # Closing the clients is bounded: a consumer in the middle of a group join
            # waits for the join (up to the rebalance timeout). One left behind is
            # dropped by its group after the session timeout; the stop goes on, so the
            # shards still commit within shutdown_grace_s.
            budget = self.settings.shutdown_grace_s * 0.3
            for name, client in (("flag feed", self.flag_consumer), ("ingest consumer", self.consumer),
                                 ("ingest producer", self.producer)):
                if client is None:
                    continue
                try:
                    await asyncio.wait_for(client.stop(), budget)
                except asyncio.TimeoutError:
                    log.warning("the %s did not close within %.1f s: left behind", name, budget)
        log.info("ingest stage stopped")

    @Service.task
    async def _consume(self) -> None:
        """Poll, process, commit; a broker fault never ends this loop: a poll error
        is retried with backoff, a produce error inside the batch by the publisher
        (the batch's offsets are committed only once all its outputs are acknowledged)."""
        assert self.consumer is not None
        timeout = self.settings.ingest_poll_timeout_ms
        failures = 0
        while not self.should_stop:
            try:
                batches = await self.consumer.getmany(timeout_ms=timeout, max_records=self.settings.ingest_max_records)
            except BROKER_ERRORS as exc:
                failures += 1
                self._broker_failed("poll", exc)
                log.warning("ingest poll failed (attempt %d), retrying: %s: %s", failures, type(exc).__name__, exc)
                await self.sleep(self.backoff.delay(failures))
                continue
            failures = 0
            self.ready.set()
            if not batches:
                continue
            self.broker.ok()
            async with self._lock:
                try:
                    await self._process(batches)
                except PublishAborted as exc:
                    log.warning("stopping with a batch not acknowledged by the broker: its offsets stay uncommitted "
                                "(read again on restart): %s", exc)
                    return
                except BROKER_ERRORS as exc:
                    # a broker fault outside the publisher's retries: read the batch again
                    failures += 1
                    self._broker_failed("produce", exc)
                    self._rewind(batches)
                    log.warning("ingest batch failed on a broker error, reading it again: %s: %s", type(exc).__name__, exc)
                    await self.sleep(self.backoff.delay(failures))

    @Service.task
    async def _watch_broker(self) -> None:
        """The metadata probe behind readiness, and topic recreation (agents/brokerwatch.py)."""
        while not self.should_stop:
            await self.watch.check()
            self.metrics.broker_up.set(1 if self.broker.healthy() else 0)
            await self.sleep(self.settings.broker_check_interval_s)

    def _broker_failed(self, op: str, exc: BaseException) -> None:
        self.broker.failed(op, exc)
        self.metrics.broker_errors.labels(op).inc()
        self.metrics.broker_up.set(0 if not self.broker.healthy() else 1)

    def _rewind(self, batches: dict[Any, list[Any]]) -> None:
        assert self.consumer is not None
        assigned = self.consumer.assignment()
        for tp, messages in batches.items():
            if messages and tp in assigned:
                self.consumer.seek(tp, messages[0].offset)

    def _publisher(self) -> BatchPublisher:
        def retried(attempt: int, exc: BaseException) -> None:
            self.metrics.produce_retries.inc()
            self.metrics.broker_errors.labels("produce").inc()
            self.metrics.broker_up.set(0)

        assert self.producer is not None
        return BatchPublisher(self.producer, backoff=self.backoff, health=self.broker,
                              should_stop=lambda: self.should_stop, on_retry=retried, sleep=self.sleep)

    async def _broker_topics(self) -> set[str]:
        assert self.producer is not None
        md = await self.producer.client.fetch_all_metadata()
        return set(md.topics())

    async def _create_topics(self, specs: tuple[TopicSpec, ...]) -> list[str]:
        s = self.settings
        return await create_topics(s.kafka_bootstrap, s.topic_partitions, s.topic_replication, specs=specs)

    async def _log_ends(self, tps: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        from aiokafka import TopicPartition

        assert self.consumer is not None
        ends = await self.consumer.end_offsets([TopicPartition(t, p) for t, p in tps])
        return {(tp.topic, tp.partition): int(off) for tp, off in ends.items()}

    def _log_lost(self) -> None:
        for callback in self.on_log_lost:
            callback()

    @Service.task
    async def _follow_flags(self) -> None:
        """Every worker reads every partition of the (compacted) flags topic from the
        start: the map of flagged entities is small, since only flagged ones travel."""
        consumer = self.flag_consumer
        assert consumer is not None
        while not self.should_stop:
            try:
                batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            except BROKER_ERRORS as exc:
                self._flag_failures = failures = self._flag_failures + 1
                self.metrics.broker_errors.labels("poll").inc()
                log.warning("flag feed poll failed (attempt %d), retrying: %s: %s", failures, type(exc).__name__, exc)
                await self.sleep(self.backoff.delay(failures))
                continue
            self._flag_failures = 0
            now = time.time()
            for msgs in batches.values():
                updates = []
                for m in msgs:
                    try:
                        updates.append(decode_update(m.value))
                    except Exception as exc:  # a malformed update must not stop the feed
                        log.error("dropping malformed flag update at offset %d: %s", m.offset, exc)
                        continue
                    self.metrics.flag_delay.observe(max(0.0, now - m.timestamp / 1000))
                try:
                    self.flags.apply(updates)
                except Exception as exc:  # noqa: BLE001 - one bad update must not lose the others
                    self.metrics.internal_errors.labels("ingest").inc()
                    log.error("applying %d flag updates failed (%s); applying them one by one",
                              len(updates), type(exc).__name__)
                    for u in updates:
                        try:
                            self.flags.apply([u])
                        except Exception as exc1:  # noqa: BLE001
                            log.error("dropping a flag update that cannot be applied: %s", type(exc1).__name__)
            if batches:
                self.flags.expire(self.watermark - self.detection.behaviour.allowed_lateness_s)
                self.metrics.flagged_entities.set(len(self.flags))

    async def _process(self, batches: dict[Any, list[Any]]) -> None:
        assert self.consumer is not None and self.producer is not None
        started = time.monotonic()
        out = self._publisher()  # retries produce errors (agents/publish.py)
        n_messages = sum(len(messages) for messages in batches.values())
        # decode, score, records and encoding, each per message or request: whatever
        # raises dead-letters that one (internal_error) and the batch goes on
        verdicts = await self._score_batch(batches, out)
        # Every output acknowledged before the commit: flush() retries produce errors
        # with backoff (the whole batch, never dropping a record) and raises only
        # PublishAborted when the worker stops first, so nothing unproduced is committed.
        await out.flush()
        offsets = {tp: messages[-1].offset + 1 for tp, messages in batches.items()}
        try:
            await self.consumer.commit(offsets)
        except CommitFailedError as exc:
            # The group rebalanced under us: the new owner re-reads from the last
            # commit and re-emits identical records (deterministic ids).
            log.warning("ingest commit failed after a rebalance, batch will be re-delivered: %s", exc)
            self.metrics.broker_errors.labels("commit").inc()
        except BROKER_ERRORS as exc:
            # Not fatal either: the outputs are acknowledged; a later commit covers these
            # offsets, or, after a restart, the batch is read again (duplicates only).
            self._broker_failed("commit", exc)
            log.warning("ingest commit failed, the batch may be re-delivered: %s: %s", type(exc).__name__, exc)
        else:
            self.watch.note_commit({(tp.topic, tp.partition): off for tp, off in offsets.items()})
        now = time.time()
        # Per-batch aggregates, one inc(n) per label value (agents/metrics.py); metrics
        # never stop the stage (the batch is committed by now)
        try:
            self.metrics.observe_batch(verdicts, messages=n_messages, now=now, seconds=time.monotonic() - started)
        except Exception as exc:  # noqa: BLE001
            self.metrics.internal_errors.labels("ingest").inc()
            log.error("batch metrics failed: %s", type(exc).__name__)
        if verdicts and self.first_event_at is None:
            self.first_event_at = now
            log.info("first request processed")

    # --- per-message processing: nothing raised here escapes ---------------------------
    def reference_time(self, msg: Any, now: float) -> float:
        """The event-time reference of a request: its Kafka record's timestamp (set by
        the edge's producer, or the broker's log-append time), capped at our wall clock
        plus event_time.max_future_s; the wall clock when the record has none."""
        ts = getattr(msg, "timestamp", None)
        if not isinstance(ts, (int, float)) or isinstance(ts, bool) or ts <= 0:
            return now
        return min(ts / 1000.0, now + self.event_time.max_future_s)

    def _internal_error(self, dead: _DeadLetters, where: str, exc: BaseException, *, topic: str, partition: int,
                        offset: int, index: int | None, value: bytes | None) -> None:
        self.metrics.internal_errors.labels("ingest").inc()
        rejection = internal_rejection(exc, where, index, self.redactor)
        self.logs.log(logging.ERROR, "internal_error", "internal error on %s[%d]@%d index=%s, dead-lettered: %s",
                      topic, partition, offset, index, rejection.reason)
        dead.add(topic, partition, offset, value, [rejection])

    async def _dead_letters(self, out: BatchPublisher, dead: _DeadLetters) -> None:
        """One dead letter per source message (bounded, redacted) with every rejection
        of its elements, counted by code; rejections logged (rate-limited, scrubbed)."""
        for (topic, partition, offset), (value, rejections) in dead.items():
            rejections.sort(key=lambda r: -1 if r.index is None else r.index)
            record = dlq_bytes(value, rejections, topic=topic, partition=partition, offset=offset,
                               detection=self.detection, max_bytes=self.limits.dlq)
            await out.add(CLIENT_REQUESTS_DLQ.name, record)
            for r in rejections:
                self.metrics.dlq.labels(r.code).inc()
                if r.code != "internal_error":  # logged when it happened
                    self.logs.log(logging.WARNING, r.code, "rejected input %s[%d]@%d index=%s: %s: %s", topic,
                                  partition, offset, r.index, r.code, log_text(r.reason, self.redactor))

    async def _score_batch(self, batches: dict[Any, list[Any]], out: BatchPublisher) -> list[Verdict]:
        """Decode every message, score every request, publish verdicts, envelopes and
        dead letters into `out` (nothing is committed before `out` is flushed); returns
        the verdicts published."""
        limits = self.detection.limits
        now = time.time()
        dead = _DeadLetters()
        pending: list[_Pending] = []
        for tp, messages in batches.items():
            for msg in messages:
                try:
                    decoded = decode_message(msg.value, limits)
                    reference = self.reference_time(msg, now)
                    items = [_Pending(req, (tp.partition, msg.offset, idx or 0), idx, tp.topic, msg.value, reference)
                             for req, idx in zip(decoded.requests, decoded.indices)]
                except Exception as exc:  # noqa: BLE001 - the message is dead-lettered, the batch goes on
                    self._internal_error(dead, f"decoding {tp.topic}[{tp.partition}]@{msg.offset}", exc,
                                         topic=tp.topic, partition=tp.partition, offset=msg.offset, index=None,
                                         value=msg.value)
                    continue
                pending.extend(items)
                if decoded.rejections:
                    dead.add(tp.topic, tp.partition, msg.offset, msg.value, decoded.rejections)
        assess = self.pipeline.assess
        flags = self.flags
        guard = self.event_time
        verdicts: list[Verdict] = []
        shards = self.shard_partitions
        by_shard: dict[int, _ShardBatch] = defaultdict(_ShardBatch)
        max_verdict = self.limits.verdict
        future = 0
        for item in pending:
            r = item.request
            p, offset, _ = item.source
            try:
                # ahead of the reference clock: judged statelessly with the flags in force
                # at the reference (its own date cannot outrun them), no entity records,
                # event time not moved
                ahead = guard.is_future(r.ts, item.reference)
                v, ctx = assess(r, flags.as_of(item.reference) if ahead else flags)
                value = v.to_json()
                key = (v.entities.get("device") or v.request_id).encode()
                records = [] if ahead else records_for(r, ctx, v)
                targets = [shard_of(rec.etype, rec.key, shards) for rec in records]
            except Exception as exc:  # noqa: BLE001 - this request is dead-lettered, the others go on
                self._internal_error(dead, f"scoring request_id={r.request_id[:128]!r} of {item.topic}[{p}]@{offset} "
                                           f"index={item.index}", exc,
                                     topic=item.topic, partition=p, offset=offset, index=item.index, value=item.value)
                continue
            if len(value) + len(key) > max_verdict:  # bounded by construction (Verdict.to_json): never expected
                self.metrics.oversized_records.labels("verdict").inc()
                dead.add(item.topic, p, offset, item.value, [Rejection(
                    item.index, f"the verdict of request_id={r.request_id[:128]!r} is {len(value) + len(key)} bytes, "
                                f"over the verdicts topic's limit of {max_verdict}", "oversized")])
                continue
            verdicts.append(v)
            await out.add(VERDICTS.name, value, key=key)
            if ahead:
                future += 1
                continue
            for rec, shard in zip(records, targets):
                batch = by_shard[shard]
                batch.records.append(rec)
                batch.sources.append(item.source)
                batch.values.append((item.topic, item.value))
            if r.ts > self.watermark:
                self.watermark = r.ts
        if future:
            self.metrics.future_events.inc(future)
            self.logs.log(logging.WARNING, "future", "%d requests dated more than %.0f s ahead of their Kafka "
                          "timestamps: scored statelessly, left out of behaviour state", future, guard.max_future_s)
        for shard, batch in by_shard.items():
            await self._publish_envelopes(out, shard, batch, dead)
        await self._dead_letters(out, dead)
        return verdicts

    async def _publish_envelopes(self, out: BatchPublisher, shard: int, batch: _ShardBatch, dead: _DeadLetters) -> None:
        """The records of one shard partition in envelopes split by bytes; should the
        split fail, record by record (a record that cannot be encoded dead-letters its
        request)."""
        limit = self.limits.envelope
        try:
            envelopes = encode_envelopes(batch.records, batch.sources, limit)
            if any(len(env) > limit for env in envelopes):  # guaranteed by encode_envelopes: never expected
                raise ValueError(f"an envelope over the limit of {limit} bytes")
        except Exception as exc:  # noqa: BLE001 - fall back to one envelope per record
            self.metrics.internal_errors.labels("ingest").inc()
            log.error("encoding %d records for shard %d failed (%s); encoding them one by one",
                      len(batch.records), shard, type(exc).__name__)
            envelopes = []
            for rec, src, (topic, value) in zip(batch.records, batch.sources, batch.values):
                what = (f"the {rec.etype} record of request_id={rec.request_id[:128]!r} of "
                        f"{topic}[{src[0]}]@{src[1]} index={src[2]}")
                try:
                    one = encode_envelopes([rec], [src], limit)
                except Exception as exc1:  # noqa: BLE001
                    self._internal_error(dead, f"encoding {what}", exc1, topic=topic, partition=src[0],
                                         offset=src[1], index=src[2], value=value)
                    continue
                if any(len(env) > limit for env in one):
                    self.metrics.oversized_records.labels("envelope").inc()
                    dead.add(topic, src[0], src[1], value, [Rejection(
                        src[2], f"{what} does not fit an envelope of {limit} bytes", "oversized")])
                    continue
                envelopes.extend(one)
        for env in envelopes:
            await out.add(ENTITY_EVENTS.name, env, partition=shard)

class ShardState:
    """The behaviour engines of the shard partitions this worker owns, restored from
    the state table on first use and flushed to it in bulk."""

    def __init__(self, behaviour: Any, detection: DetectionConfig, table: Any, metrics: Metrics, interval: float,
                 limits: RecordLimits | None = None):
        self.behaviour = behaviour
        self.detection = detection
        self.table = table
        self.metrics = metrics
        self.interval = interval
        self.engines: dict[int, BehaviourEngine] = {}
        self.pending: dict[int, list[Any]] = defaultdict(list)
        self.last_flush: dict[int, float] = {}
        # record limits of what the shards write (Kafka's defaults until the ingest
        # stage read the topics' own at start, see build_app)
        self.limits = limits or RecordLimits.of(TopicLimits(), INGEST_MAX_REQUEST_SIZE, FAUST_MAX_REQUEST_SIZE, "")

    def engine(self, p: int) -> BehaviourEngine:
        engine = self.engines.get(p)
        if engine is None:
            d = self.detection
            engine = self.engines[p] = BehaviourEngine(self.behaviour, d.alerts, d.scoring.weight_of)
            restored = stale = 0
            for b in range(self.behaviour.buckets):
                key = f"{p}:{b}"
                # keys restored from the changelog may come back as bytes (raw key codec)
                raw = self.table.data.get(key) or self.table.data.get(key.encode())
                if raw:
                    try:
                        if engine.load_bucket(b, raw):
                            restored += 1
                        else:
                            stale += 1
                    except Exception as exc:  # noqa: BLE001 - a corrupt snapshot must not stop the shard
                        engine.buckets[b] = type(engine.buckets[b])()
                        self.metrics.internal_errors.labels("entity-shard").inc()
                        log.error("shard %d: state bucket %d of %d bytes cannot be restored (%s): starting it empty",
                                  p, b, len(raw), type(exc).__name__)
            log.info("shard %d: restored %d state buckets (%d entities)%s", p, restored, engine.entity_count(),
                     f", discarded {stale} of another state version" if stale else "")
            self.last_flush[p] = time.monotonic()
        return engine

    def hold(self, p: int, event: Any) -> None:
        self.pending[p].append(event)

    def maybe_flush(self, p: int) -> None:
        if time.monotonic() - self.last_flush.get(p, 0.0) >= self.interval:
            self.flush(p)

    def flush_due(self) -> None:
        now = time.monotonic()
        for p in list(self.pending):
            if self.pending[p] and now - self.last_flush.get(p, 0.0) >= self.interval:
                self.flush(p)

    def flush(self, p: int, everything: bool = False) -> None:
        """Send the changed buckets of partition p (every bucket, with `everything`) to
        the changelog, then acknowledge the envelopes they include. A bounded number of
        writes: at most `buckets`."""
        engine = self.engines.get(p)
        if engine is not None:
            written = 0
            buckets = list(range(len(engine.buckets))) if everything else sorted(engine.dirty)
            engine.dirty.clear()
            for b in buckets:
                try:
                    raw = engine.dump_bucket(b)
                except Exception as exc:  # noqa: BLE001 - one bucket must not stop the flush (or the shard)
                    self.metrics.internal_errors.labels("entity-shard").inc()
                    log.error("shard %d: state bucket %d cannot be serialised (%s): not persisted", p, b,
                              type(exc).__name__)
                    continue
                key = f"{p}:{b}"
                self.table.data[key] = raw
                if len(raw) + len(key) > self.limits.state:
                    # bucket contents are bounded (detector/behaviour/engine.py): never
                    # expected; an oversized record would fail in the producer, so it
                    # is kept in memory only (a restart or rebalance loses this bucket)
                    self.metrics.oversized_records.labels("state").inc()
                    log.error("shard %d: state bucket %d is %d bytes, over the changelog limit of %d bytes: "
                              "not persisted", p, b, len(raw), self.limits.state)
                    continue
                self.table.send_changelog(p, key, raw)
                written += 1
            if written:
                self.metrics.state_writes.inc(written)
            self.metrics.state_entities.set(sum(e.entity_count() for e in self.engines.values()))
        for event in self.pending.pop(p, []):
            try:
                event.ack()
            except Exception as exc:  # noqa: BLE001 - a revoked partition's events cannot be acked
                log.debug("could not ack an event of partition %d: %s", p, exc)
        self.last_flush[p] = time.monotonic()

    def release(self, partitions: set[int]) -> None:
        """A rebalance takes these partitions away: a complete snapshot for the next
        owner, which may start reading the changelog after earlier partial flushes."""
        for p in sorted(partitions):
            if p in self.engines:
                self.flush(p, everything=True)
                del self.engines[p]
                log.info("shard %d: released", p)

    def forget_positions(self) -> None:
        """The broker lost its log (agents/brokerwatch.py: a restarted memory-only
        broker): offsets start again from 0, so the input positions the state holds
        (each bucket's envelope offset, the source marks that skip re-sent records)
        belong to a log that is gone and would make the shards skip the new one. Forget
        them, in the engines and in the table's snapshots; the entities' state stays."""
        scratch: BehaviourEngine | None = None
        reset = 0
        for engine in self.engines.values():
            for b, bucket in enumerate(engine.buckets):
                if bucket.offset >= 0 or bucket.marks:
                    bucket.offset, bucket.marks = -1, {}
                    engine.dirty.add(b)
                    reset += 1
        owned = {f"{p}:" for p in self.engines}
        for key in list(self.table.data):
            name = key.decode() if isinstance(key, bytes) else str(key)
            if any(name.startswith(prefix) for prefix in owned):
                continue  # rewritten from the engine at its next flush
            raw = self.table.data[key]
            if not raw or ":" not in name:
                continue
            d = self.detection
            scratch = scratch or BehaviourEngine(self.behaviour, d.alerts, d.scoring.weight_of)
            b = int(name.split(":", 1)[1])
            if b < len(scratch.buckets) and scratch.load_bucket(b, raw):
                scratch.buckets[b].offset, scratch.buckets[b].marks = -1, {}
                self.table.data[key] = scratch.dump_bucket(b)
                reset += 1
        log.warning("shard state: forgot the input positions of %d state buckets (the broker lost its log)", reset)


Sender = Callable[[bytes, bytes], Awaitable[None]]


class ShardProcessor:
    """What the entity-shard agent does with one envelope: decode, observe, publish
    the flag updates and alert revisions (each checked against its topic's limit) and
    hold the envelope for the acknowledgement at the next state flush. Nothing raised
    by one envelope escapes: an envelope that cannot be decoded, or records whose
    observation raises, are dead-lettered to client-requests-dlq (code internal_error,
    the source naming the envelope's topic, partition and offset) and the envelope is
    acknowledged only once that dead letter was. The senders are Faust's topics in the
    worker (our seam for tests)."""

    def __init__(self, shard: ShardState, detection: DetectionConfig, metrics: Metrics, *, send_flag: Sender,
                 send_alert: Sender, send_dlq: Callable[[bytes], Awaitable[None]]):
        self.shard = shard
        self.detection = detection
        self.metrics = metrics
        self.send_flag = send_flag
        self.send_alert = send_alert
        self.send_dlq = send_dlq
        self.redactor = detection.redactor
        self.logs = LogLimiter(log, on_suppressed=metrics.suppressed_logs.inc)

    async def process(self, event: Any) -> None:
        try:
            await self._process(event)
        except Exception as exc:  # noqa: BLE001 - last resort: this envelope, never the agent
            p, offset = event.message.partition, event.message.offset
            log.error("entity envelope %s[%d]@%d failed: %s", ENTITY_EVENTS.name, p, offset, type(exc).__name__,
                      exc_info=log.isEnabledFor(logging.DEBUG))
            try:
                if await self.dead_letter(event.value, [internal_rejection(
                        exc, f"processing the envelope {ENTITY_EVENTS.name}[{p}]@{offset}", None, self.redactor)],
                        p, offset):
                    self.shard.hold(p, event)
            except Exception as exc1:  # noqa: BLE001
                log.error("dead-lettering envelope %s[%d]@%d failed: %s", ENTITY_EVENTS.name, p, offset,
                          type(exc1).__name__)

    async def _process(self, event: Any) -> None:
        p, offset = event.message.partition, event.message.offset
        value = event.value
        try:
            env = decode_envelope(value)
        except Exception as exc:  # noqa: BLE001 - a malformed envelope must not stop the shard
            if await self.dead_letter(value, [internal_rejection(
                    exc, f"decoding the envelope {ENTITY_EVENTS.name}[{p}]@{offset}", None, self.redactor)], p, offset):
                self.shard.hold(p, event)  # acknowledged with the next flush, in order
            return
        engine = self.shard.engine(p)
        reference = self.reference_time(event, time.time())
        failed: list[Rejection] = []
        try:
            out = engine.observe(env.records, offset=offset, sources=env.sources, reference=reference)
        except Exception as exc:  # noqa: BLE001 - retried record by record
            log.error("observing the envelope %s[%d]@%d of %d records failed (%s); observing them one by one",
                      ENTITY_EVENTS.name, p, offset, len(env.records), type(exc).__name__)
            # the envelope's dead letter names the failure (the record it hit was marked
            # as seen before it raised, so the retry skips it) and any record that fails alone
            failed = [internal_rejection(exc, f"observing the envelope {ENTITY_EVENTS.name}[{p}]@{offset} "
                                              f"({len(env.records)} records)", None, self.redactor)]
            out, failed_each = self.observe_each(engine, env.records, env.sources, p, offset, reference)
            failed.extend(failed_each)
        await self.publish(out, p, offset)
        if out.late:
            self.metrics.late_records.inc(out.late)
        if failed and not await self.dead_letter(value, failed, p, offset):
            return  # not acknowledged: read again after a restart (the source marks skip what was applied)
        self.shard.hold(p, event)
        self.shard.maybe_flush(p)

    def reference_time(self, event: Any, now: float) -> float:
        """The reference clock of an envelope's records: its Kafka timestamp (the
        ingest stage's clock when it published the envelope, at or after the source
        records' own timestamps), capped at our wall clock plus event_time.max_future_s.
        No record moves a shard's watermark past it (BehaviourEngine.observe)."""
        ts = getattr(event.message, "timestamp", None)
        if not isinstance(ts, (int, float)) or isinstance(ts, bool) or not ts > 0:
            return now
        return min(float(ts), now + self.detection.event_time.max_future_s)

    def observe_each(self, engine: BehaviourEngine, records: list[EntityRecord], sources: list[tuple[int, int, int]],
                     p: int, offset: int, reference: float) -> tuple[Output, list[Rejection]]:
        """After observe() raised on an envelope: its records one at a time, so that a
        bad record loses only itself. offset=None: records of a bucket the failed call
        reached must not be skipped as "already in the snapshot"; the source marks
        still apply each record at most once (those applied before the failure are
        skipped)."""
        merged = Output()
        failed: list[Rejection] = []
        for i, (rec, src) in enumerate(zip(records, sources)):
            try:
                o = engine.observe([rec], offset=None, sources=[src], reference=reference)
            except Exception as exc:  # noqa: BLE001 - this record is dead-lettered, the others go on
                failed.append(internal_rejection(
                    exc, f"observing the {rec.etype} record of request_id={rec.request_id[:128]!r} "
                         f"(client-requests[{src[0]}]@{src[1]} index={src[2]}) in {ENTITY_EVENTS.name}[{p}]@{offset}",
                    i, self.redactor))
                continue
            merged.flags.extend(o.flags)
            merged.alerts.extend(o.alerts)
            merged.late += o.late
            merged.applied += o.applied
        return merged, failed

    async def dead_letter(self, value: bytes | None, rejections: list[Rejection], p: int, offset: int) -> bool:
        """Dead-letter (part of) an envelope; True once the broker acknowledged it."""
        self.metrics.internal_errors.labels("entity-shard").inc(len(rejections))
        for r in rejections:
            self.logs.log(logging.ERROR, "internal_error", "internal error on %s[%d]@%d index=%s, dead-lettered: %s",
                          ENTITY_EVENTS.name, p, offset, r.index, r.reason)
        record = dlq_bytes(value, rejections, topic=ENTITY_EVENTS.name, partition=p, offset=offset,
                           detection=self.detection, max_bytes=self.shard.limits.shard_dlq)
        try:
            await self.send_dlq(record)
        except Exception as exc:  # noqa: BLE001 - not acknowledged: the envelope is read again after a restart
            log.error("dead letter of %s[%d]@%d not acknowledged (%s: %s): the envelope stays unacknowledged",
                      ENTITY_EVENTS.name, p, offset, type(exc).__name__, log_text(str(exc), self.redactor))
            return False
        for r in rejections:
            self.metrics.dlq.labels(r.code).inc()
        return True

    async def publish(self, out: Output, p: int, offset: int) -> None:
        """Flag updates and alert revisions, each checked against its topic's limit;
        one that fails is logged and counted, the others are sent."""
        limits = self.shard.limits
        for u in out.flags:
            try:
                key, value = f"{u.etype}|{u.key}".encode(), encode_update(u)
                if len(key) + len(value) > limits.flag:  # bounded by the engine: never expected
                    self.metrics.oversized_records.labels("flag").inc()
                    log.error("not sending a flag update of %d bytes (limit %d) from %s[%d]@%d",
                              len(key) + len(value), limits.flag, ENTITY_EVENTS.name, p, offset)
                    continue
                await self.send_flag(key, value)
            except Exception as exc:  # noqa: BLE001 - one update must not lose the others
                self.metrics.internal_errors.labels("entity-shard").inc()
                log.error("a flag update from %s[%d]@%d was not sent: %s", ENTITY_EVENTS.name, p, offset,
                          type(exc).__name__)
        for alert in out.alerts:
            try:
                alert_id = str(alert["alert_id"])
                key, value = alert_id.encode(), orjson.dumps(alert)
                if len(key) + len(value) > limits.alert:  # bounded by the engine: never expected
                    self.metrics.oversized_records.labels("alert").inc()
                    log.error("not sending alert %s: %d bytes, over the limit of %d", log_text(alert_id, self.redactor, 80),
                              len(key) + len(value), limits.alert)
                    continue
                await self.send_alert(key, value)
                self.metrics.alerts.labels(alert["severity"]).inc()
                log.info("alert %s rev %d %s: %s", log_text(alert_id, self.redactor, 80), alert["revision"],
                         alert["severity"], log_text(str(alert["summary"]), self.redactor))
            except Exception as exc:  # noqa: BLE001 - one alert must not lose the others
                self.metrics.internal_errors.labels("entity-shard").inc()
                log.error("an alert from %s[%d]@%d was not sent: %s", ENTITY_EVENTS.name, p, offset,
                          type(exc).__name__)


def build_app(settings: Settings, detection: DetectionConfig, metrics: Metrics | None = None) -> faust.App:
    """The Faust app: ingest stage, entity-shard agent, /metrics, /healthz, /readyz."""
    metrics = metrics or Metrics()
    s = settings
    app = faust.App(
        s.app_id,
        broker=f"kafka://{s.kafka_bootstrap}",
        store="memory://",
        value_serializer="raw",
        key_serializer="raw",
        web_enabled=s.web_enabled,
        web_port=s.web_port,
        web_bind=s.web_host,
        web_host=s.web_host,
        topic_partitions=s.topic_partitions,
        topic_replication_factor=s.topic_replication,
        broker_rebalance_timeout=s.rebalance_timeout_s,
        broker_session_timeout=s.session_timeout_s,
        broker_heartbeat_interval=s.heartbeat_interval_s,
        consumer_auto_offset_reset="earliest",
        # No standby replicas: a partition's new owner restores the behaviour state
        # from the changelog itself (standby tailing left handed-over state incomplete
        # in our rebalance test; the changelog is small: bucketed snapshots).
        table_standby_replicas=0,
        topic_disable_leader=True,
        # On stop, Faust would wait for every envelope it fetched to be acknowledged,
        # but the shards acknowledge only at a state flush, and the flush timer has
        # stopped by then (the worker never exited under load). Instead the shards
        # persist their state when the stop begins (on_before_shutdown below); what
        # was acknowledged is committed, the rest is read again on restart.
        stream_wait_empty=False,
    )
    ingest = IngestStage(s, detection, metrics, loop=None)
    app.detector_ingest = ingest  # type: ignore[attr-defined]
    # Webhook delivery (agents/delivery.py), when endpoints are configured: it reads
    # `alerts` with its own consumer groups, so a slow receiver never slows detection.
    from agents.delivery import DeliveryStage
    from agents.webhooks import load_endpoints

    endpoints = load_endpoints(s.config)
    delivery = DeliveryStage(s, endpoints, metrics, loop=None) if endpoints else None
    app.detector_delivery = delivery  # type: ignore[attr-defined]
    app.detector_metrics = metrics  # type: ignore[attr-defined]

    # The ingest stage starts with the app, not after Faust's first assignment (extra
    # services wait for table recovery): the first event is then processed ~5 s after
    # start on the embedded broker instead of ~10 s.
    original_on_start = app.on_start

    async def on_start() -> None:
        await original_on_start()
        await app.add_runtime_dependency(ingest)
        if delivery is not None:
            await app.add_runtime_dependency(delivery)

    app.on_start = on_start  # type: ignore[method-assign]

    n_shards = partitions_of(ENTITY_EVENTS, s.topic_partitions)
    events_topic = app.topic(ENTITY_EVENTS.name, value_serializer="raw", key_serializer="raw", partitions=n_shards)
    flags_topic = app.topic(ENTITY_FLAGS.name, value_serializer="raw", key_serializer="raw")
    alerts_topic = app.topic(ALERTS.name, value_serializer="raw", key_serializer="raw")
    behaviour = detection.behaviour
    # Durable behaviour state: one table key per (partition, bucket), written in bulk
    # (only the buckets changed since the last flush) through Faust's changelog.
    state_table = app.Table("behaviour-state", default=None, key_type=str, value_type=bytes, partitions=n_shards)
    dlq_topic = app.topic(CLIENT_REQUESTS_DLQ.name, value_serializer="raw", key_serializer="raw")
    changelog = state_table.changelog_topic.get_topic_name()
    faust_max_request = int(app.conf.producer_max_request_size)
    shard = ShardState(behaviour, detection, state_table, metrics, s.state_flush_interval_s,
                       RecordLimits.of(TopicLimits(), INGEST_MAX_REQUEST_SIZE, faust_max_request, changelog))
    app.detector_shard = shard  # type: ignore[attr-defined]
    ingest.on_log_lost.append(shard.forget_positions)  # a restarted memory-only broker (H6)
    # the ingest stage reads every output topic's max.message.bytes at start
    ingest.extra_limit_topics.append(changelog)
    ingest.on_limits.append(lambda topics: setattr(
        shard, "limits", RecordLimits.of(topics, INGEST_MAX_REQUEST_SIZE, faust_max_request, changelog)))

    async def send_flag(key: bytes, value: bytes) -> None:
        await flags_topic.send(key=key, value=value)

    async def send_alert(key: bytes, value: bytes) -> None:
        await alerts_topic.send(key=key, value=value)

    async def send_dlq(value: bytes) -> None:
        await (await dlq_topic.send(value=value))  # returns once the broker acknowledged it

    processor = ShardProcessor(shard, detection, metrics, send_flag=send_flag, send_alert=send_alert,
                               send_dlq=send_dlq)

    @app.agent(events_topic, name="entity-shard")
    async def entity_shard(stream: Any) -> None:
        # Acks are manual: an envelope is acknowledged (and its offset committed) only
        # once a state snapshot that includes it was sent to the changelog. Nothing
        # raised by one envelope escapes (ShardProcessor dead-letters what fails).
        async for event in stream.noack().events():
            await processor.process(event)

    @app.timer(interval=max(0.5, s.state_flush_interval_s / 2))
    async def flush_idle_shards() -> None:
        shard.flush_due()

    @app.on_partitions_revoked.connect
    async def on_revoked(app_: Any, revoked: Any, **_: Any) -> None:
        shard.release({tp.partition for tp in revoked if tp.topic == ENTITY_EVENTS.name})

    @app.on_before_shutdown.connect
    async def on_stop(app_: Any, **_: Any) -> None:
        # The stop begins (fetching has stopped): a complete snapshot of every owned
        # shard, which acknowledges the envelopes it includes; Faust then flushes the
        # producer and commits only acknowledged offsets (acked == persisted).
        shard.release(set(shard.engines))
        # No flush after it: an envelope the agent still finishes stays unacknowledged
        # and is read again on restart (a later changelog write would reach Faust's
        # producer buffer after its last flush, and crash the stop).
        shard.interval = math.inf
        # Faust's own flush of its producer buffer returns as soon as one message waits
        # over 0.1 s (a busy broker), and the commit follows it: drain the snapshot
        # completely first. Never bounded here: if the broker does not take it, the
        # stop deadline (shutdown_grace_s) ends the process before anything is committed.
        buffer = app.producer.buffer
        while buffer.size:
            try:
                await buffer.flush()
            except RuntimeError as exc:  # the producer is not running: nothing will be committed either
                log.error("state snapshot not flushed at stop: %s", exc)
                break

    # Observability: closed label sets from config (series at zero up front), our
    # Faust sensor, consumer lag sampled at scrape time, the worker's log format.
    if metrics.label_sets is None:
        metrics.bind(LabelSets.from_config(detection, webhook_endpoint_names(s.config)))
    app.sensors.add(FaustSensor(metrics))
    app.conf.logging_config = logs.logging_config(s.log_level, getattr(s, "log_format", None))
    lag = ConsumerLag(metrics)
    lag.watch_aiokafka("ingest", lambda: ingest.consumer)
    lag.watch_aiokafka("flag-feed", lambda: getattr(ingest, "flag_consumer", None))
    lag.watch_faust("entity-shard", app, [ENTITY_EVENTS.name])

    @app.page("/metrics")
    async def metrics_page(web_: Any, request: Any) -> Any:
        await lag.sample()
        return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.page("/healthz")
    async def healthz(web_: Any, request: Any) -> Any:
        # Liveness: the process serves pages and the ingest stage has not crashed. A
        # broker outage is not a liveness failure (restarting would not help): /readyz.
        if ingest.crashed:
            return web_.json({"status": "failed", "reason": str(ingest.crash_reason)}, status=503)
        return web_.json({"status": "ok"})

    @app.page("/readyz")
    async def readyz(web_: Any, request: Any) -> Any:
        # Ready once the ingest consumer has polled, while the broker is reachable (no
        # run of failed interactions, no produce retry pending), until it stops.
        if not ingest.ready.is_set():
            return web_.json({"ready": False, "reason": "ingest consumer has not polled yet"}, status=503)
        if ingest.should_stop:
            return web_.json({"ready": False, "reason": "stopping"}, status=503)
        if not ingest.broker.healthy():
            return web_.json({"ready": False, "reason": f"broker unreachable: {ingest.broker.reason()}"}, status=503)
        return web_.json({"ready": True})

    return app
