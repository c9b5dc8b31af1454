"""The entity shards of the worker: the behaviour engines of the shard partitions this
worker owns (state restored from and flushed to the Faust table in bulk), and what the
entity-shard agent does with one envelope (flags, alert revisions, dead letters)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from agents.metrics import Metrics
from agents.records import (
    FAUST_MAX_REQUEST_SIZE,
    INGEST_MAX_REQUEST_SIZE,
    LogLimiter,
    RecordLimits,
    dlq_bytes,
    internal_rejection,
    log_text,
)
from agents.topics import ENTITY_EVENTS, TopicLimits
from detector.behaviour.engine import BehaviourEngine, Output
from detector.behaviour.flags import encode_update
from detector.behaviour.records import EntityRecord, decode_envelope
from detector.decode import Rejection
from detector.engine import DetectionConfig

log = logging.getLogger("detector.worker")

# sends a flag update or alert again; returns the future of its acknowledgement
Resend = Callable[[], Awaitable[object]]


async def _no_resend() -> object:
    raise RuntimeError("this output cannot be sent again")


def _offset(event: Any) -> int:
    return int(event.message.offset)


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
        # deliveries (flag updates, alerts) sent from a partition's envelopes since its
        # last flush: its envelopes are acknowledged only once these and the snapshot
        # that includes them were acknowledged by the broker
        # (the future of its acknowledgement, how to send it again if it fails)
        self.outputs: dict[int, list[tuple[Awaitable[Any], Resend]]] = defaultdict(list)
        self.deliveries: set[asyncio.Task[bool]] = set()  # flushes waiting for the broker
        # the last flush of each partition still waiting: a partition's flushes
        # acknowledge in order, each after the one before it
        self.in_flight: dict[int, asyncio.Task[bool]] = {}
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

    def delivering(self, p: int, fut: object, resend: Resend | None = None) -> None:
        """A flag update or alert of partition p on its way (the future of its broker
        acknowledgement, and how to send it again): the next flush acknowledges
        envelopes only after it; one the broker refused is sent again then."""
        if isinstance(fut, Awaitable):
            self.outputs[p].append((fut, resend or _no_resend))

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
        the changelog, then acknowledge the envelopes they include once the broker
        acknowledged those writes and the envelopes' flag updates and alerts. A bounded
        number of writes: at most `buckets`.

        Acknowledged means persisted: Faust commits acknowledged offsets, and its own
        flush before a commit returns as soon as one buffered message waits over 0.1 s
        (`ProducerBuffer.flush_atmost`), so without this wait a commit under load
        could pass envelopes whose state (or alerts) the broker never received, and the
        partition's next owner would skip them (seen as alert revisions missing after a
        rebalance)."""
        engine = self.engines.get(p)
        outputs = self.outputs.pop(p, [])
        sent: list[Awaitable[Any]] = [fut for fut, _ in outputs]
        written_buckets: list[int] = []
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
                fut = self.table.send_changelog(p, key, raw)
                if isinstance(fut, Awaitable):
                    sent.append(fut)
                written_buckets.append(b)
                written += 1
            if written:
                self.metrics.state_writes.inc(written)
            self.metrics.state_entities.set(sum(e.entity_count() for e in self.engines.values()))
        events = self.pending.pop(p, [])
        self.last_flush[p] = time.monotonic()
        before = self.in_flight.get(p)
        if not sent and before is None:
            self._ack(p, events)
            return
        task = asyncio.get_running_loop().create_task(
            self._ack_when_delivered(p, before, outputs, sent[len(outputs):], written_buckets, events))
        self.in_flight[p] = task
        self.deliveries.add(task)
        task.add_done_callback(lambda t: self._done(p, t))

    def _done(self, p: int, task: asyncio.Task[bool]) -> None:
        self.deliveries.discard(task)
        if self.in_flight.get(p) is task:
            del self.in_flight[p]

    async def _ack_when_delivered(self, p: int, before: asyncio.Task[bool] | None,
                                  outputs: list[tuple[Awaitable[Any], Resend]], writes: list[Awaitable[Any]],
                                  buckets: list[int], events: list[Any]) -> bool:
        """Acknowledge `events` once the previous flush of p did and every output and
        write of this one was acknowledged; whether it did. After a failure (here or in
        the flush before) nothing later of p is acknowledged before the next flush."""
        ok_before = True
        if before is not None:  # the partition's previous flush acknowledges first
            await asyncio.wait({before})
            ok_before = not before.cancelled() and before.exception() is None and before.result()
        out_results = await asyncio.gather(*(fut for fut, _ in outputs), return_exceptions=True)
        write_results = await asyncio.gather(*writes, return_exceptions=True)
        failed_out = [(o, r) for o, r in zip(outputs, out_results) if isinstance(r, BaseException)]
        failed_writes = [r for r in write_results if isinstance(r, BaseException)]
        if ok_before and not failed_out and not failed_writes:
            self._ack(p, events)
            return True
        # not acknowledged: refused outputs are sent again and the buckets written again
        # at the next flush, and the envelopes wait for it, in offset order (released
        # meanwhile, they are read again by the next owner)
        if failed_out or failed_writes:
            self.metrics.internal_errors.labels("entity-shard").inc()
            first = (failed_out[0][1] if failed_out else failed_writes[0])
            log.error("shard %d: %d of %d writes not acknowledged by the broker (%s): sent again at the next "
                      "flush, the envelopes they cover wait for it", p, len(failed_out) + len(failed_writes),
                      len(outputs) + len(writes), type(first).__name__)
        engine = self.engines.get(p)
        if engine is None:
            return False
        engine.dirty.update(buckets)
        for (_, resend), _exc in failed_out:
            try:
                fut = await resend()
            except Exception as exc:  # noqa: BLE001 - tried again at the flush after
                log.error("shard %d: an output could not be sent again (%s)", p, type(exc).__name__)
                fut = asyncio.get_running_loop().create_future()
                fut.set_exception(exc)
            self.delivering(p, fut, resend)
        held = self.pending[p] + events
        held.sort(key=_offset)
        self.pending[p] = held
        return False

    @staticmethod
    def _ack(p: int, events: list[Any]) -> None:
        for event in events:
            try:
                event.ack()
            except Exception as exc:  # noqa: BLE001 - a revoked partition's events cannot be acked
                log.debug("could not ack an event of partition %d: %s", p, exc)

    async def settle(self, timeout: float | None = None) -> bool:
        """Wait for the flushes in flight (their acknowledgements); whether all ended."""
        if not self.deliveries:
            return True
        _, pending = await asyncio.wait(set(self.deliveries), timeout=timeout)
        return not pending

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


# Sends one record; resolves to the future of the broker's acknowledgement (Faust's
# topic.send), which ShardState.delivering holds until the next flush
Sender = Callable[[bytes, bytes], Awaitable[object]]


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
        self.metrics.envelope_lag(getattr(event.message, "timestamp", None), time.time())
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
        self.metrics.shard_envelopes.inc()

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
                self.shard.delivering(p, await self.send_flag(key, value), partial(self.send_flag, key, value))
            except Exception as exc:  # noqa: BLE001 - one update must not lose the others
                self.metrics.internal_errors.labels("entity-shard").inc()
                log.error("a flag update from %s[%d]@%d was not sent: %s", ENTITY_EVENTS.name, p, offset,
                          type(exc).__name__)
        for alert in out.alerts:
            try:
                alert_id = alert.alert_id
                key, value = alert_id.encode(), alert.to_json()
                if len(key) + len(value) > limits.alert:  # bounded by the engine: never expected
                    self.metrics.oversized_records.labels("alert").inc()
                    log.error("not sending alert %s: %d bytes, over the limit of %d",
                              log_text(alert_id, self.redactor, 80), len(key) + len(value), limits.alert)
                    continue
                self.shard.delivering(p, await self.send_alert(key, value), partial(self.send_alert, key, value))
                self.metrics.alerts.labels(alert.severity).inc()
                log.info("alert %s rev %d %s: %s", log_text(alert_id, self.redactor, 80), alert.revision,
                         alert.severity, log_text(alert.summary, self.redactor))
            except Exception as exc:  # noqa: BLE001 - one alert must not lose the others
                self.metrics.internal_errors.labels("entity-shard").inc()
                log.error("an alert from %s[%d]@%d was not sent: %s", ENTITY_EVENTS.name, p, offset,
                          type(exc).__name__)
