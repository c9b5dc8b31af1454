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
from aiokafka.errors import CommitFailedError, KafkaError
from aiohttp import web
from mode import Service
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agents.metrics import Metrics
from agents.publish import BatchPublisher
from agents.settings import Settings
from agents.topics import ALERTS, CLIENT_REQUESTS, CLIENT_REQUESTS_DLQ, ENTITY_FLAGS, VERDICTS, partitions_of
from detector.alerts import FlaggedRequest
from detector.decode import decode_message, dlq_reason_class, dlq_record
from detector.engine import DetectionConfig

log = logging.getLogger("detector.worker")

_LEVEL_RANK = {"clean": 0, "suspicious": 1, "malicious": 2}


def shard_of(entity_type: str, entity_id: str, partitions: int) -> int:
    """The entity-flags partition of an entity: stable across processes and restarts
    (crc32, not Python's salted hash)."""
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
        self.min_rank = _LEVEL_RANK[detection.alerts.min_level]
        self.entity_types = detection.alerts.entity_types
        self.flag_partitions = partitions_of(ENTITY_FLAGS, settings.topic_partitions)
        self._lock = asyncio.Lock()
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.ready = asyncio.Event()
        self.first_event_at: float | None = None

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
        log.info("ingest stage started: group %s-ingest on %s", s.app_id, s.kafka_bootstrap)

    async def on_stop(self) -> None:
        async with self._lock:  # let the batch in flight finish and commit
            if self.consumer is not None:
                await self.consumer.stop()
            if self.producer is not None:
                await self.producer.stop()
        log.info("ingest stage stopped")

    @Service.task
    async def _consume(self) -> None:
        assert self.consumer is not None
        timeout = self.settings.ingest_poll_timeout_ms
        while not self.should_stop:
            try:
                batches = await self.consumer.getmany(timeout_ms=timeout, max_records=self.settings.ingest_max_records)
            except KafkaError as exc:
                log.warning("ingest poll failed, retrying: %s", exc)
                await asyncio.sleep(1)
                continue
            self.ready.set()
            if not batches:
                continue
            async with self._lock:
                await self._process(batches)

    async def _process(self, batches: dict[Any, list[Any]]) -> None:
        assert self.consumer is not None and self.producer is not None
        started = time.monotonic()
        limits = self.detection.limits
        requests = []
        out = BatchPublisher(self.producer)
        n_messages = 0
        for tp, messages in batches.items():
            n_messages += len(messages)
            for msg in messages:
                decoded = decode_message(msg.value, limits)
                requests.extend(decoded.requests)
                if decoded.rejections:
                    record = dlq_record(msg.value, decoded.rejections, topic=tp.topic, partition=tp.partition,
                                        offset=msg.offset, limits=limits)
                    await out.add(CLIENT_REQUESTS_DLQ.name, orjson.dumps(record))
                    for r in decoded.rejections:
                        self.metrics.dlq.labels(dlq_reason_class(r.reason)).inc()
                        log.warning("rejected input %s[%d]@%d index=%s: %s", tp.topic, tp.partition, msg.offset, r.index, r.reason)
        verdicts = self.pipeline.score_batch(requests)
        dumps = orjson.dumps
        envelopes: dict[int, list[dict[str, Any]]] = defaultdict(list)
        counts = {"clean": 0, "suspicious": 0, "malicious": 0}
        for v in verdicts:
            counts[v.verdict] += 1
            key = v.entities.get("device") or v.request_id
            await out.add(VERDICTS.name, v.to_json(), key=key.encode())
            if _LEVEL_RANK[v.verdict] >= self.min_rank:
                for etype in self.entity_types:
                    eid = v.entities.get(etype)
                    if eid:
                        envelopes[shard_of(etype, eid, self.flag_partitions)].append(
                            FlaggedRequest.from_verdict(v, etype, eid).as_dict()
                        )
        for partition, records in envelopes.items():
            await out.add(ENTITY_FLAGS.name, dumps(records), partition=partition)
        await out.flush()  # every output acknowledged before the commit
        offsets = {tp: messages[-1].offset + 1 for tp, messages in batches.items()}
        try:
            await self.consumer.commit(offsets)
        except CommitFailedError as exc:
            # The group rebalanced under us: the new owner re-reads from the last
            # commit and re-emits identical records (deterministic ids).
            log.warning("ingest commit failed after a rebalance, batch will be re-delivered: %s", exc)
        now = time.time()
        m = self.metrics
        m.messages_in.inc(n_messages)
        m.requests_in.inc(len(requests))
        for level, n in counts.items():
            if n:
                m.verdicts.labels(level).inc(n)
        for v in verdicts:
            m.latency.observe(max(0.0, now - v.ts))
        m.batch_size.observe(len(requests))
        m.batch_seconds.observe(time.monotonic() - started)
        if requests and self.first_event_at is None:
            self.first_event_at = now
            log.info("first request processed")


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
        topic_disable_leader=True,
    )
    ingest = IngestStage(s, detection, metrics, loop=None)
    app.detector_ingest = ingest  # type: ignore[attr-defined]
    app.detector_metrics = metrics  # type: ignore[attr-defined]

    # The ingest stage starts with the app, not after Faust's first assignment (extra
    # services wait for table recovery): the first event is then processed ~5 s after
    # start on the embedded broker instead of ~10 s.
    original_on_start = app.on_start

    async def on_start() -> None:
        await original_on_start()
        await app.add_runtime_dependency(ingest)

    app.on_start = on_start  # type: ignore[method-assign]

    flags_topic = app.topic(
        ENTITY_FLAGS.name, value_serializer="raw", key_serializer="raw",
        partitions=partitions_of(ENTITY_FLAGS, s.topic_partitions),
    )
    alerts_topic = app.topic(ALERTS.name, value_serializer="raw", key_serializer="raw")
    policy = detection.alert_policy()

    @app.agent(flags_topic, name="entity-shard")
    async def entity_shard(stream: Any) -> None:
        async for envelope in stream:
            try:
                records = [FlaggedRequest.from_dict(r) for r in orjson.loads(envelope)]
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                log.error("dropping malformed entity-flags envelope: %s", exc)
                continue
            for alert in policy.observe(records):
                await alerts_topic.send(key=alert["alert_id"].encode(), value=orjson.dumps(alert))
                metrics.alerts.labels(alert["severity"]).inc()
                log.info("alert %s rev %d %s: %s", alert["alert_id"], alert["revision"], alert["severity"], alert["summary"])
            metrics.alert_state.set(len(policy))

    @app.page("/metrics")
    async def metrics_page(web_: Any, request: Any) -> Any:
        return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.page("/healthz")
    async def healthz(web_: Any, request: Any) -> Any:
        return web_.json({"status": "ok"})

    @app.page("/readyz")
    async def readyz(web_: Any, request: Any) -> Any:
        ready = ingest.ready.is_set()
        return web_.json({"ready": ready}, status=200 if ready else 503)

    return app
