"""The stream worker: a Faust app with two stages.

- **ingest** (a service inside the Faust app): a raw aiokafka consumer reads
  `client-requests` in bulk (`getmany`), decodes every message form, scores the batch
  with the pure core, and publishes verdicts, dead letters and the flagged requests'
  compact records (one batch envelope per shard partition). Offsets are committed only
  after the broker acknowledged every output of the batch (at-least-once). Faust's
  per-message path costs ~90 us (architecture.md), so requests never pass through it
  one by one.
- **entity shards** (a Faust agent over `detector-entity-flags`): each envelope holds
  the flagged requests of the entities that hash to its partition; the shard's alert
  policy aggregates them per entity and window and publishes alerts.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections import defaultdict
from typing import Any

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
                           VERDICTS, TopicSpec, create_topics, partitions_of)
from detector.behaviour.engine import BehaviourEngine
from detector.behaviour.flags import FlagMap, decode_update, encode_update
from detector.behaviour.records import Envelope, decode_envelope, encode_envelope, records_for
from detector.decode import decode_message, dlq_reason_class, dlq_record
from detector.engine import DetectionConfig

log = logging.getLogger("detector.worker")

_LEVEL_RANK = {"clean": 0, "suspicious": 1, "malicious": 2}
ENVELOPE_RECORDS = 1000  # records per entity envelope (~250 KB): well under Kafka's 1 MB message limit


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
        # Broker faults (agents/publish.py, agents/brokerwatch.py): readiness follows the
        # recent broker interactions; produce errors are retried, never fatal.
        self.backoff = Backoff(initial_s=settings.produce_retry_initial_s, max_s=settings.produce_retry_max_s)
        self.broker = BrokerHealth(unready_failures=settings.broker_unready_failures,
                                   stale_after_s=max(15.0, 5 * settings.broker_check_interval_s))
        self.on_log_lost: list[Any] = []  # callbacks: the broker lost its log (see BrokerWatch)
        self._flag_failures = 0  # consecutive failed polls of the flag feed
        self.watch = BrokerWatch(
            WatchHooks(topics=self._broker_topics, create=self._create_topics, committed=self._group_committed),
            self.broker,
            WatchCounters(error=metrics.broker_errors.labels("metadata").inc, recovered=metrics.broker_recoveries.inc,
                          recreated=metrics.topics_recreated.inc, log_lost=metrics.broker_log_resets.inc),
            ALL_TOPICS, timeout_s=max(5.0, 2 * settings.broker_check_interval_s), on_log_lost=self._log_lost,
        )

    async def on_start(self) -> None:
        s = self.settings
        self.producer = AIOKafkaProducer(
            bootstrap_servers=s.kafka_bootstrap, client_id=f"{s.app_id}-ingest", acks="all",
            linger_ms=5, max_batch_size=512 * 1024, max_request_size=4 * 1024 * 1024,
        )
        await self.producer.start()
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
            if self.flag_consumer is not None:
                await self.flag_consumer.stop()
            if self.consumer is not None:
                await self.consumer.stop()
            if self.producer is not None:
                await self.producer.stop()
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

    async def _group_committed(self, tps: list[tuple[str, int]]) -> dict[tuple[str, int], int | None]:
        from aiokafka import TopicPartition

        assert self.consumer is not None
        assigned = self.consumer.assignment()
        out: dict[tuple[str, int], int | None] = {}
        for topic, partition in tps:
            tp = TopicPartition(topic, partition)
            if tp in assigned:
                out[(topic, partition)] = await self.consumer.committed(tp)
        return out

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
                self.flags.apply(updates)
            if batches:
                self.flags.expire(self.watermark - self.detection.behaviour.allowed_lateness_s)
                self.metrics.flagged_entities.set(len(self.flags))

    async def _process(self, batches: dict[Any, list[Any]]) -> None:
        assert self.consumer is not None and self.producer is not None
        started = time.monotonic()
        limits = self.detection.limits
        requests = []
        sources: list[tuple[int, int, int]] = []
        out = self._publisher()  # retries produce errors (agents/publish.py)
        n_messages = 0
        for tp, messages in batches.items():
            n_messages += len(messages)
            for msg in messages:
                decoded = decode_message(msg.value, limits)
                requests.extend(decoded.requests)
                sources.extend((tp.partition, msg.offset, idx or 0) for idx in decoded.indices)
                if decoded.rejections:
                    record = dlq_record(msg.value, decoded.rejections, topic=tp.topic, partition=tp.partition,
                                        offset=msg.offset, limits=limits)
                    await out.add(CLIENT_REQUESTS_DLQ.name, orjson.dumps(record))
                    for r in decoded.rejections:
                        self.metrics.dlq.labels(dlq_reason_class(r.reason)).inc()
                        log.warning("rejected input %s[%d]@%d index=%s: %s", tp.topic, tp.partition, msg.offset, r.index, r.reason)
        assess = self.pipeline.assess
        flags = self.flags
        verdicts = []
        envelopes: dict[int, Envelope] = defaultdict(Envelope)
        counts = {"clean": 0, "suspicious": 0, "malicious": 0}
        shards = self.shard_partitions
        for r, src in zip(requests, sources):
            v, ctx = assess(r, flags)
            verdicts.append(v)
            counts[v.verdict] += 1
            key = v.entities.get("device") or v.request_id
            await out.add(VERDICTS.name, v.to_json(), key=key.encode())
            for rec in records_for(r, ctx, v):
                env = envelopes[shard_of(rec.etype, rec.key, shards)]
                env.records.append(rec)
                env.sources.append(src)
            if r.ts > self.watermark:
                self.watermark = r.ts
        for partition, env in envelopes.items():
            # bounded envelopes: Kafka's default max.message.bytes is 1 MB
            for i in range(0, len(env.records), ENVELOPE_RECORDS):
                chunk = Envelope(env.records[i:i + ENVELOPE_RECORDS], env.sources[i:i + ENVELOPE_RECORDS])
                await out.add(ENTITY_EVENTS.name, encode_envelope(chunk), partition=partition)
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
        # Per-batch aggregates, one inc(n) per label value (agents/metrics.py).
        self.metrics.observe_batch(verdicts, messages=n_messages, now=now, seconds=time.monotonic() - started)
        if requests and self.first_event_at is None:
            self.first_event_at = now
            log.info("first request processed")


class ShardState:
    """The behaviour engines of the shard partitions this worker owns, restored from
    the state table on first use and flushed to it in bulk."""

    def __init__(self, behaviour: Any, detection: DetectionConfig, table: Any, metrics: Metrics, interval: float):
        self.behaviour = behaviour
        self.detection = detection
        self.table = table
        self.metrics = metrics
        self.interval = interval
        self.engines: dict[int, BehaviourEngine] = {}
        self.pending: dict[int, list[Any]] = defaultdict(list)
        self.last_flush: dict[int, float] = {}

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
                    if engine.load_bucket(b, raw):
                        restored += 1
                    else:
                        stale += 1
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
            snapshot = ([(b, engine.dump_bucket(b)) for b in range(len(engine.buckets))] if everything
                        else engine.dirty_buckets())
            engine.dirty.clear()
            for b, raw in snapshot:
                key = f"{p}:{b}"
                self.table.data[key] = raw
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
    shard = ShardState(behaviour, detection, state_table, metrics, s.state_flush_interval_s)
    app.detector_shard = shard  # type: ignore[attr-defined]
    ingest.on_log_lost.append(shard.forget_positions)  # a restarted memory-only broker (H6)

    @app.agent(events_topic, name="entity-shard")
    async def entity_shard(stream: Any) -> None:
        # Acks are manual: an envelope is acknowledged (and its offset committed) only
        # once a state snapshot that includes it was sent to the changelog.
        async for event in stream.noack().events():
            p, offset = event.message.partition, event.message.offset
            try:
                env = decode_envelope(event.value)
            except Exception as exc:  # noqa: BLE001 - a malformed envelope must not stop the shard
                log.error("dropping malformed entity envelope %s[%d]@%d: %s", ENTITY_EVENTS.name, p, offset, exc)
                event.ack()
                continue
            out = shard.engine(p).observe(env.records, offset=offset, sources=env.sources)
            for u in out.flags:
                await flags_topic.send(key=f"{u.etype}|{u.key}".encode(), value=encode_update(u))
            for alert in out.alerts:
                await alerts_topic.send(key=alert["alert_id"].encode(), value=orjson.dumps(alert))
                metrics.alerts.labels(alert["severity"]).inc()
                log.info("alert %s rev %d %s: %s", alert["alert_id"], alert["revision"], alert["severity"],
                         alert["summary"])
            shard.hold(p, event)
            if out.late:
                metrics.late_records.inc(out.late)
            shard.maybe_flush(p)

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
