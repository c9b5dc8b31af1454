"""The ingest stage of the worker (a service inside the Faust app): a raw aiokafka
consumer reads `client-requests` in bulk (`getmany`), decodes every message form, scores
the batch with the pure core, and publishes verdicts, dead letters and the flagged
requests' compact records (batch envelopes per shard partition, split by bytes). Offsets
are committed only after the broker acknowledged every output of the batch
(at-least-once)."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError
from mode import Service

from agents.brokerlink import BrokerLink
from agents.metrics import Metrics
from agents.publish import BROKER_ERRORS, Backoff, BatchPublisher, PublishAborted
from agents.records import (
    INGEST_MAX_REQUEST_SIZE,
    LogLimiter,
    RecordLimits,
    _DeadLetters,
    dlq_bytes,
    internal_rejection,
    log_text,
)
from agents.settings import Settings
from agents.topics import (
    CLIENT_REQUESTS,
    CLIENT_REQUESTS_DLQ,
    ENTITY_EVENTS,
    ENTITY_FLAGS,
    VERDICTS,
    TopicLayoutError,
    TopicLimits,
    partitions_of,
)
from detector.adapters import format_edge, message_decoder
from detector.behaviour.flags import FlagMap, decode_update
from detector.behaviour.records import EntityRecord, encode_envelopes, records_for
from detector.decode import Rejection
from detector.engine import DetectionConfig
from detector.model import ClientRequest, Verdict

log = logging.getLogger("detector.worker")

# A batch (up to ingest_max_records messages, ~100 us of work per request) yields the
# event loop every this many messages decoded and requests scored (~15-25 ms each), so
# the flag feed, the producer's sends, /metrics and, in role all, the shards run
# between its steps instead of waiting for the whole batch.
DECODE_STEP = 1024
SCORE_STEP = 256


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


def shard_of(entity_type: str, entity_id: str, partitions: int) -> int:
    """The shard partition of an entity: stable across processes and restarts (crc32,
    not Python's salted hash)."""
    return zlib.crc32(f"{entity_type}:{entity_id}".encode()) % partitions


class _CommitGate(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped (Any)
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
    """The ingest consumer, its scoring and publishing, and the flag feed. The broker
    link (agents/brokerlink.py), started before it, gives the record limits and the
    broker's health; without one (unit tests) it builds its own, not started."""

    def __init__(self, settings: Settings, detection: DetectionConfig, metrics: Metrics,
                 link: BrokerLink | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.link = link or BrokerLink(settings, metrics)
        self.settings = settings
        self.detection = detection
        self.metrics = metrics
        # the topic's edge policy (config `input`), admitting the edge its input
        # adapter marks records with (docs/edges.md)
        self.pipeline = detection.pipeline(edges=detection.edge_policy().admitting(format_edge(settings.input_format)))
        # the input topic's format (setting input_format): the contract, or an edge's log lines
        self.decode = message_decoder(settings.input_format)
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
        # Broker faults (agents/publish.py, agents/brokerlink.py): readiness follows the
        # recent broker interactions (the link's health); produce errors are retried,
        # never fatal.
        self.backoff = Backoff(initial_s=settings.produce_retry_initial_s, max_s=settings.produce_retry_max_s)
        self.broker = self.link.health
        self._flag_failures = 0  # consecutive failed polls of the flag feed

    async def on_start(self) -> None:
        s = self.settings
        self.producer = AIOKafkaProducer(
            bootstrap_servers=s.kafka_bootstrap, client_id=f"{s.app_id}-ingest", acks="all",
            linger_ms=5, max_batch_size=512 * 1024, max_request_size=INGEST_MAX_REQUEST_SIZE,
            **s.kafka.client_kwargs(),
        )
        await self.producer.start()
        # Every record we write stays under its topic's limit (RecordLimits): the output
        # topics' max.message.bytes, read by the broker link at its start
        self.topic_limits = self.link.limits
        self.limits = RecordLimits.of(self.topic_limits, INGEST_MAX_REQUEST_SIZE, INGEST_MAX_REQUEST_SIZE, "")
        log.info("record limits (bytes): verdicts %d, dead letters %d, envelopes %d",
                 self.limits.verdict, self.limits.dlq, self.limits.envelope)
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap, group_id=f"{s.app_id}-ingest", client_id=f"{s.app_id}-ingest",
            enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=s.ingest_max_records,
            rebalance_timeout_ms=int(s.rebalance_timeout_s * 1000), session_timeout_ms=int(s.session_timeout_s * 1000),
            heartbeat_interval_ms=int(s.heartbeat_interval_s * 1000), fetch_max_wait_ms=100,
            max_partition_fetch_bytes=8 * 1024 * 1024, **s.kafka.client_kwargs(),
        )
        self.consumer.subscribe([CLIENT_REQUESTS.name], listener=_CommitGate(self._lock))
        await self.consumer.start()
        # group_id=None: every partition of the flags topic, from the start
        self.flag_consumer = AIOKafkaConsumer(
            ENTITY_FLAGS.name, bootstrap_servers=s.kafka_bootstrap, group_id=None, client_id=f"{s.app_id}-flags",
            enable_auto_commit=False, auto_offset_reset="earliest", fetch_max_wait_ms=100, **s.kafka.client_kwargs(),
        )
        await self.flag_consumer.start()
        log.info("ingest stage started: group %s-ingest on %s over %s", s.app_id, s.kafka_bootstrap, s.kafka.describe())

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
                except TimeoutError:
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
                except TopicLayoutError as exc:
                    # a topic lost partitions the settings shard by (recreated with fewer):
                    # nothing of the batch is committed; the worker is not ready, says why,
                    # and goes on once the topic has them again (the metadata refreshes)
                    failures += 1
                    self._broker_failed("produce", exc)
                    self._rewind(batches)
                    if failures == 1 or failures % 30 == 0:
                        log.error("ingest batch cannot be written: %s; set topic_partitions to the topic's count "
                                  "on every worker or give the topic its partitions back (docs/operations.md "
                                  "\"Topics\"); reading the batch again", exc)
                    await self.sleep(self.backoff.delay(failures))
                except BROKER_ERRORS as exc:
                    # a broker fault outside the publisher's retries: read the batch again
                    failures += 1
                    self._broker_failed("produce", exc)
                    self._rewind(batches)
                    log.warning("ingest batch failed on a broker error, reading it again: %s: %s",
                                type(exc).__name__, exc)
                    await self.sleep(self.backoff.delay(failures))

    def _broker_failed(self, op: str, exc: BaseException) -> None:
        self.link.failed(op, exc)

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
            self.link.watch.note_commit({(tp.topic, tp.partition): off for tp, off in offsets.items()})
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
        """`_decode_and_score` with Python's cyclic collector held off (setting
        ingest_gc_hold): a batch allocates some 10^5 containers that almost all die by
        reference counting, yet each young collection during it traverses every live
        request of the batch (3.4-6.0 of ~93 us per request). Bounded: the hold lasts one
        batch, allocations still count, so the first allocation after it collects if
        the young generation is over its threshold; a worker's RSS stays flat."""
        hold = self.settings.ingest_gc_hold and gc.isenabled()
        if hold:
            gc.disable()
        try:
            return await self._decode_and_score(batches, out)
        finally:
            if hold:
                gc.enable()

    async def _decode_and_score(self, batches: dict[Any, list[Any]], out: BatchPublisher) -> list[Verdict]:
        """Decode every message, score every request, publish verdicts (all, or the
        flagged ones: config `verdicts.emit`), envelopes and dead letters into `out`
        (nothing is committed before `out` is flushed); returns the verdicts of every
        request scored (the metrics count them all)."""
        limits = self.detection.limits
        decode_message = self.decode
        now = time.time()
        dead = _DeadLetters()
        pending: list[_Pending] = []
        edges = self.pipeline.edges
        step = 0
        for tp, messages in batches.items():
            for msg in messages:
                step += 1
                if step % DECODE_STEP == 0:
                    await asyncio.sleep(0)  # the event loop's turn (a batch is ~0.5 s of work)
                try:
                    decoded = decode_message(msg.value, limits)
                    reference = self.reference_time(msg, now)
                    items = []
                    for req, idx in zip(decoded.requests, decoded.indices):
                        # a record's own `edge` must be one the topic allows (docs/edges.md)
                        refused = edges.refusal(req) if req.edge is not None else None
                        if refused is not None:
                            decoded.rejections.append(Rejection(idx, refused.reason, refused.code))
                            continue
                        items.append(_Pending(req, (tp.partition, msg.offset, idx or 0), idx, tp.topic, msg.value,
                                              reference))
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
        # verdicts.emit: flagged writes no clean verdict (they are still scored and counted)
        emit_all = self.detection.verdicts_emit == "all"
        future = 0
        topic_edge = edges.default
        by_edge: Counter[str] = Counter()  # requests scored per edge (a record's edge is an allowed one)
        for i, item in enumerate(pending):
            if i % SCORE_STEP == SCORE_STEP - 1:
                await asyncio.sleep(0)  # the event loop's turn: no batch holds it for long
            r = item.request
            p, offset, _ = item.source
            try:
                # ahead of the reference clock: judged statelessly with the flags in force
                # at the reference (its own date cannot outrun them), no entity records,
                # event time not moved
                ahead = guard.is_future(r.ts, item.reference)
                v, ctx = assess(r, flags.as_of(item.reference) if ahead else flags)
                emit = emit_all or v.verdict != "clean"
                value = v.to_json() if emit else b""
                key = (v.entities.get("device") or v.request_id).encode() if emit else b""
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
            by_edge[r.edge or topic_edge] += 1
            if emit:
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
        for name, n in by_edge.items():
            self.metrics.edge_requests.labels(name).inc(n)
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
