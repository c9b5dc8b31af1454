"""The entity shards of the worker: the behaviour engines of the shard partitions this
worker owns (state restored from the Faust table's changelog, written to it
incrementally), and what the entity-shard agent does with one envelope (flags, alert
revisions, verdict revisions, dead letters)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from functools import partial
from typing import Any, Protocol

from agents.kafkaclient import PLAINTEXT, KafkaSecurity
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
from detector.behaviour.revision import Revision, revised_verdict, verdict_key
from detector.behaviour.store import changelog_key, entity_table_key, meta_table_key, parse_table_key
from detector.decode import Rejection
from detector.engine import DetectionConfig

log = logging.getLogger("detector.worker")

# sends a flag update or alert again; returns the future of its acknowledgement
Resend = Callable[[], Awaitable[object]]
# A changelog record: key, value (None: a tombstone)
StateRecord = tuple[bytes, bytes | None]

# Entities encoded and handed to the producer per step of a flush, the event loop
# served between steps: a step costs ~2-4 ms, whatever the state held or changed.
FLUSH_STEP = 500
# An envelope is observed in one call, never with the loop served in between: a flush
# (its cut, its encoding steps) then only ever sees whole envelopes applied, so an
# entity's stored offset never covers an envelope half applied to it.


class ChangelogWriter(Protocol):
    """Writes state records to one partition of the behaviour-state changelog (the
    Faust table's changelog topic, which the table restores from)."""

    async def write(self, partition: int, records: Sequence[StateRecord]) -> Awaitable[object]:
        """Hand the records to the producer, in order; returns the awaitable of their
        acknowledgement by the broker (raising if any was refused)."""
        ...


class KafkaChangelog:
    """ChangelogWriter over its own aiokafka producer and its batch API (about 4x
    cheaper per record than a send each: agents/publish.py), started on first use."""

    def __init__(self, bootstrap: str, topic: str, client_id: str, max_request_size: int = INGEST_MAX_REQUEST_SIZE,
                 security: KafkaSecurity = PLAINTEXT):
        self.topic = topic
        self._config: dict[str, Any] = dict(bootstrap_servers=bootstrap, client_id=client_id, acks="all",
                                            linger_ms=5, max_batch_size=512 * 1024,
                                            max_request_size=max_request_size, **security.client_kwargs())
        self._producer: Any = None
        self._started: asyncio.Future[None] | None = None
        self.records = 0
        self.bytes = 0

    async def _start(self) -> Any:
        if self._started is None:
            from aiokafka import AIOKafkaProducer

            # created here, in the worker's running loop (aiokafka requires one)
            self._producer = AIOKafkaProducer(**self._config)
            self._started = asyncio.ensure_future(self._producer.start())
        started = self._started
        try:
            await asyncio.shield(started)
        except Exception:
            if self._started is started:  # the next write starts a new producer
                self._started = None
                producer, self._producer = self._producer, None
                try:
                    await producer.stop()
                except Exception as exc:  # noqa: BLE001 - it never started
                    log.debug("stopping a changelog producer that did not start: %s", exc)
            raise
        return self._producer

    async def write(self, partition: int, records: Sequence[StateRecord]) -> Awaitable[object]:
        producer = await self._start()
        futures: list[asyncio.Future[Any]] = []
        batch = producer.create_batch()
        for key, value in records:
            if batch.append(key=key, value=value, timestamp=None) is None:
                batch.close()
                futures.append(await producer.send_batch(batch, self.topic, partition=partition))
                batch = producer.create_batch()
                if batch.append(key=key, value=value, timestamp=None) is None:
                    raise ValueError(f"a state record of {len(value or b'')} bytes does not fit in a producer batch")
            self.records += 1
            self.bytes += len(key) + len(value or b"")
        batch.close()
        futures.append(await producer.send_batch(batch, self.topic, partition=partition))
        return asyncio.gather(*futures)

    async def stop(self) -> None:
        if self._started is not None and self._producer is not None:
            try:
                await self._started
            finally:
                await self._producer.stop()


async def _no_resend() -> object:
    raise RuntimeError("this output cannot be sent again")


def _offset(event: Any) -> int:
    return int(event.message.offset)


def _store(table: Any) -> MutableMapping[Any, Any]:
    """The dict behind the table's store (Faust's memory store keeps it as `.data`)."""
    data = table.data
    inner = getattr(data, "data", None)
    return inner if isinstance(inner, MutableMapping) else data


class ShardState:
    """The behaviour engines of the shard partitions this worker owns, restored from
    the state table on first use and written to its changelog incrementally: each
    flush writes the entities changed since the last one (a tombstone for one
    evicted) and the partition's meta record, a bounded step at a time."""

    def __init__(self, behaviour: Any, detection: DetectionConfig, table: Any, metrics: Metrics, interval: float,
                 limits: RecordLimits | None = None, changelog: ChangelogWriter | None = None):
        self.behaviour = behaviour
        self.detection = detection
        self.table = table
        self.metrics = metrics
        self.interval = interval
        self.changelog = changelog
        self.engines: dict[int, BehaviourEngine] = {}
        # engines of partitions a rebalance revoked, kept until the new assignment is
        # known: a partition assigned again (kept through the rebalance) resumes with
        # its engine, as Faust resumes its table recovery where it stopped
        self.parked: dict[int, BehaviourEngine] = {}
        self.assignment: set[int] = set()  # the entity partitions of the last assignment
        self.pending: dict[int, list[Any]] = defaultdict(list)
        # deliveries (flag updates, alerts) sent from a partition's envelopes since its
        # last flush: its envelopes are acknowledged only once these and the state
        # records that include them were acknowledged by the broker
        # (the future of its acknowledgement, how to send it again if it fails)
        self.outputs: dict[int, list[tuple[Awaitable[Any], Resend]]] = defaultdict(list)
        self.deliveries: set[asyncio.Task[bool]] = set()  # flushes waiting for the broker
        # the last flush of each partition still waiting: a partition's flushes write
        # and acknowledge in order, each after the one before it
        self.in_flight: dict[int, asyncio.Task[bool]] = {}
        self.last_flush: dict[int, float] = {}
        # keys of the previous release's bucket snapshots migrated (as the changelog
        # carries them): tombstoned at the next flush
        self.legacy: dict[int, list[bytes]] = defaultdict(list)
        self.forgot: set[int] = set()  # partitions whose stored positions were forgotten before loading
        self.restore_seconds: dict[int, float] = {}
        # record limits of what the shards write (Kafka's defaults until the topics'
        # own were read at start, see build_app)
        self.limits = limits or RecordLimits.of(TopicLimits(), INGEST_MAX_REQUEST_SIZE, FAUST_MAX_REQUEST_SIZE, "")

    def engine(self, p: int) -> BehaviourEngine:
        engine = self.engines.get(p)
        if engine is None and p in self.parked:
            engine = self.parked.pop(p)
            self._drop_recovered(p)
            self.engines[p] = engine
            self.last_flush[p] = time.monotonic()
            log.info("shard %d: resumed with its engine (kept through the rebalance)", p)
        if engine is None:
            d = self.detection
            engine = BehaviourEngine(self.behaviour, d.alerts, d.scoring.weight_of)
            self._restore(p, engine)  # registered once restored (a restore that raised leaves none)
            self.engines[p] = engine
            self.last_flush[p] = time.monotonic()
        return engine

    def _restore(self, p: int, engine: BehaviourEngine) -> None:
        """Load partition p's records from the table (restored by Faust from the
        changelog), then drop them from the table: the engine holds them now (the
        same bytes, not a second copy). The previous release's bucket snapshots are
        migrated first; this release's records override them."""
        started = time.perf_counter()
        store = _store(self.table)
        prefix = f"{p}:"
        legacy: list[tuple[Any, int, bytes]] = []
        meta: tuple[Any, bytes] | None = None
        entities: list[tuple[Any, str, bytes]] = []
        for key in list(store):
            name = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
            if not name.startswith(prefix):
                continue
            parsed = parse_table_key(name)
            value = store.get(key)
            if parsed is None or not isinstance(value, bytes):
                continue
            if parsed.kind == "legacy":
                legacy.append((key, int(parsed.name), value))
            elif parsed.kind == "meta":
                meta = (key, value)
            else:
                entities.append((key, parsed.name, value))
        migrated = discarded = broken = 0
        for key, b, value in legacy:
            try:
                taken = engine.load_legacy_bucket(b, value)
            except Exception as exc:  # noqa: BLE001 - a corrupt snapshot must not stop the shard
                broken += 1
                log.error("shard %d: previous-release state bucket %d of %d bytes cannot be migrated (%s)",
                          p, b, len(value), type(exc).__name__)
                taken = -1
            if taken < 0:
                discarded += 1
            else:
                migrated += taken
            self.legacy[p].append(changelog_key(key.decode() if isinstance(key, bytes) else str(key)))
        if meta is not None:
            try:
                if not engine.load_meta(meta[1]):
                    log.warning("shard %d: state meta record of another layout or state version: discarded", p)
            except Exception as exc:  # noqa: BLE001
                broken += 1
                log.error("shard %d: state meta record cannot be read (%s): starting its bookkeeping empty", p,
                          type(exc).__name__)
        restored = stale = 0
        for _, ekey, value in entities:
            if engine.load_entity(ekey, value):
                restored += 1
            else:
                stale += 1
        for key, *_ in (*legacy, *entities):
            store.pop(key, None)
        if meta is not None:
            store.pop(meta[0], None)
        key_partition = getattr(self.table.data, "_key_partition", None)
        if isinstance(key_partition, MutableMapping):
            for key, *_ in (*legacy, *entities):
                key_partition.pop(key, None)
        if p in self.forgot:
            self.forgot.discard(p)
            engine.forget_positions()
        if broken:
            self.metrics.internal_errors.labels("entity-shard").inc(broken)
        elapsed = time.perf_counter() - started
        self.restore_seconds[p] = elapsed
        log.info("shard %d: restored %d entities in %.2f s%s%s", p, restored, elapsed,
                 f", discarded {stale} of another state version" if stale else "",
                 f"; migrated {migrated} entities from {len(legacy)} previous-release buckets"
                 f"{f' ({discarded} discarded)' if discarded else ''}" if legacy else "")

    def _drop_recovered(self, p: int) -> None:
        """Drop what Faust's recovery put into the table for partition p while its
        engine was parked: its own writes since the last recovery (Faust resumes a kept
        partition's recovery where it stopped), which the engine already holds."""
        store = _store(self.table)
        key_partition = getattr(self.table.data, "_key_partition", None)
        for key in list(store):
            parsed = parse_table_key(key if isinstance(key, (bytes, str)) else str(key))
            if parsed is not None and parsed.partition == p:
                store.pop(key, None)
                if isinstance(key_partition, MutableMapping):
                    key_partition.pop(key, None)

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

    def flush(self, p: int) -> None:
        """Write what partition p changed since its last flush (the entities, then the
        meta record) to the changelog, then acknowledge the envelopes it includes once
        the broker acknowledged those writes and the envelopes' flag updates and
        alerts. The cut is taken now (the envelopes held, the entities changed); the
        writes run as a task, a bounded step at a time, after the partition's previous
        flush, so no flush holds the event loop for long.

        Acknowledged means persisted: Faust commits acknowledged offsets, and its own
        flush before a commit returns as soon as one buffered message waits over 0.1 s
        (`ProducerBuffer.flush_atmost`), so without this wait a commit under load
        could pass envelopes whose state (or alerts) the broker never received, and the
        partition's next owner would skip them (seen as alert revisions missing after a
        rebalance)."""
        engine = self.engines.get(p) or self.parked.get(p)
        outputs = self.outputs.pop(p, [])
        keys, meta = engine.take_changes() if engine is not None else ([], None)
        if engine is not None:
            self.metrics.state_entities.set(sum(e.entity_count() for e in self.engines.values()))
            self.metrics.state_evictions.inc(engine.evicted)
            engine.evicted = 0
        legacy = self.legacy.pop(p, [])
        events = self.pending.pop(p, [])
        self.last_flush[p] = time.monotonic()
        before = self.in_flight.get(p)
        if not keys and meta is None and not legacy and not outputs and before is None:
            self._ack(p, events)
            return
        task = asyncio.get_running_loop().create_task(
            self._write_and_ack(p, before, engine, keys, meta, legacy, outputs, events))
        self.in_flight[p] = task
        self.deliveries.add(task)
        task.add_done_callback(lambda t: self._done(p, t))

    def _done(self, p: int, task: asyncio.Task[bool]) -> None:
        self.deliveries.discard(task)
        if self.in_flight.get(p) is task:
            del self.in_flight[p]

    async def _write(self, p: int, engine: BehaviourEngine | None, keys: list[tuple[str, int]], meta: bytes | None,
                     legacy: list[bytes]) -> list[Awaitable[object]]:
        """Hand partition p's changed entities, the tombstones of its migrated legacy
        snapshots and its meta record (last) to the changelog; the acknowledgements."""
        acks: list[Awaitable[object]] = []
        writer = self.changelog
        if writer is None or engine is None:
            return acks
        limit = self.limits.state
        written = 0
        for i in range(0, len(keys), FLUSH_STEP):
            records: list[StateRecord] = []
            for ekey, b in keys[i:i + FLUSH_STEP]:
                key = changelog_key(entity_table_key(p, ekey))
                try:
                    blob = engine.encoded(ekey, b)
                except Exception as exc:  # noqa: BLE001 - one entity must not stop the flush (or the shard)
                    self.metrics.internal_errors.labels("entity-shard").inc()
                    log.error("shard %d: the state of an entity cannot be serialised (%s): not persisted", p,
                              type(exc).__name__)
                    continue
                if blob is not None and len(blob) + len(key) > limit:
                    # entity state is bounded (ENTITY_STATE_MAX_BYTES): never expected;
                    # an oversized record would fail in the producer, so it is kept in
                    # memory only (a restart or rebalance loses this entity)
                    self.metrics.oversized_records.labels("state").inc()
                    log.error("shard %d: an entity's state is %d bytes, over the changelog limit of %d bytes: "
                              "not persisted", p, len(blob), limit)
                    continue
                records.append((key, blob))
            if records:
                acks.append(await writer.write(p, records))
                written += len(records)
            await asyncio.sleep(0)  # the event loop's turn between steps
        # The meta record (its marks cover this flush's records) and the legacy tombstones
        # go only once the entity records were acknowledged: marks never persist ahead of
        # the state they cover (a refusal raises here: everything is written again at the
        # next flush)
        if acks:
            await asyncio.gather(*acks)
        tail: list[StateRecord] = [(key, None) for key in legacy]
        if meta is not None:
            key = changelog_key(meta_table_key(p))
            if len(key) + len(meta) > limit:  # bounded (META_MAX_BYTES): never expected
                self.metrics.oversized_records.labels("state").inc()
                log.error("shard %d: the state meta record is %d bytes, over the changelog limit of %d bytes: "
                          "not persisted", p, len(meta), limit)
            else:
                tail.append((key, meta))
        if tail:
            acks.append(await writer.write(p, tail))
            written += len(tail)
        if written:
            self.metrics.state_writes.inc(written)
        return acks

    async def _write_and_ack(self, p: int, before: asyncio.Task[bool] | None, engine: BehaviourEngine | None,
                             keys: list[tuple[str, int]], meta: bytes | None, legacy: list[bytes],
                             outputs: list[tuple[Awaitable[Any], Resend]], events: list[Any]) -> bool:
        """After the partition's previous flush: write, then acknowledge `events` once
        every output and write of this flush was acknowledged; whether it did. After a
        failure (here or in the flush before) nothing later of p is acknowledged before
        the next flush."""
        ok_before = True
        if before is not None:  # the partition's previous flush writes and acknowledges first
            await asyncio.wait({before})
            ok_before = not before.cancelled() and before.exception() is None and before.result()
        write_error: BaseException | None = None
        writes: list[Awaitable[object]] = []
        try:
            writes = await self._write(p, engine, keys, meta, legacy)
        except Exception as exc:  # noqa: BLE001 - not written: written again at the next flush
            write_error = exc
        out_results = await asyncio.gather(*(fut for fut, _ in outputs), return_exceptions=True)
        write_results = await asyncio.gather(*writes, return_exceptions=True)
        failed_out = [(o, r) for o, r in zip(outputs, out_results) if isinstance(r, BaseException)]
        failed_writes = [r for r in write_results if isinstance(r, BaseException)]
        if write_error is not None:
            failed_writes.append(write_error)
        if ok_before and not failed_out and not failed_writes:
            self._ack(p, events)
            return True
        # not acknowledged: refused outputs are sent again and the entities written
        # again at the next flush, and the envelopes wait for it, in offset order
        # (released meanwhile, they are read again by the next owner)
        if failed_out or failed_writes:
            self.metrics.internal_errors.labels("entity-shard").inc()
            first = (failed_out[0][1] if failed_out else failed_writes[0])
            log.error("shard %d: %d of %d writes not acknowledged by the broker (%s): sent again at the next "
                      "flush, the envelopes they cover wait for it", p, len(failed_out) + len(failed_writes),
                      len(outputs) + len(writes), type(first).__name__)
        if engine is None or (self.engines.get(p) is not engine and self.parked.get(p) is not engine):
            return False
        if failed_writes or not ok_before:
            engine.mark_changed(keys)
            self.legacy[p].extend(legacy)
        if self.engines.get(p) is not engine:
            # parked by a rebalance: its envelopes cannot be acknowledged any more (they
            # are read again if the partition stays here, and skipped by the entities'
            # offsets); its changes are written at its next flush
            return False
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
        """A rebalance takes these partitions away: their last changes are written for
        the next owner (the changelog holds every earlier one), and their engines are
        parked until the new assignment is known (`assigned`)."""
        for p in sorted(partitions):
            engine = self.engines.pop(p, None)
            if engine is not None:
                self.parked[p] = engine
                self.flush(p)
                log.info("shard %d: released", p)

    def assigned(self, partitions: set[int]) -> None:
        """The new assignment: a parked partition assigned again resumes with its
        engine at its first envelope (Faust resumes a kept partition's table recovery
        from where it stopped, so the table alone would restore only the records
        written since then); the others are gone to their next owner."""
        self.assignment = set(partitions)
        for p in sorted(set(self.parked) - partitions):
            del self.parked[p]
            log.info("shard %d: handed over", p)

    async def restore_assigned(self) -> int:
        """The assignment's table recovery is complete: load every assigned partition
        that has no engine yet (previous-release state migrated, its snapshots
        tombstoned at the next flush), so that does not wait for the partition's first
        envelope, and a partition that gets none still carries its state forward. The
        number of partitions loaded. A partition whose first envelope came first (the
        streams resume while this yields) is loaded already and left alone."""
        loaded = 0
        for p in sorted(self.assignment):
            await asyncio.sleep(0)  # the loop's turn between partitions (a large one takes ~1 s)
            if p not in self.engines:
                try:
                    self.engine(p)
                except Exception as exc:  # noqa: BLE001 - the first envelope tries again
                    log.error("shard %d: restoring its state failed (%s); tried again at its first envelope", p,
                              type(exc).__name__)
                    self.metrics.internal_errors.labels("entity-shard").inc()
                    continue
                loaded += 1
        return loaded

    def forget_positions(self) -> None:
        """The broker lost its log (agents/brokerwatch.py: a restarted memory-only
        broker): offsets start again from 0, so the input positions the state holds
        (the source marks that skip re-sent records, each entity's envelope offset)
        belong to a log that is gone and would make the shards skip the new one. Forget
        them, in the engines and in the partitions not loaded yet (when they load); the
        entities' state stays."""
        reset = 0
        for engine in (*self.engines.values(), *self.parked.values()):
            reset += engine.forget_positions()
        for key in list(_store(self.table)):
            parsed = parse_table_key(key if isinstance(key, (bytes, str)) else str(key))
            if parsed is not None and parsed.partition not in self.engines and parsed.partition not in self.parked:
                self.forgot.add(parsed.partition)  # forgotten when it loads (BehaviourEngine.forget_positions)
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
                 send_alert: Sender, send_dlq: Callable[[bytes], Awaitable[None]],
                 send_verdict: Sender | None = None):
        self.shard = shard
        self.detection = detection
        self.metrics = metrics
        self.send_flag = send_flag
        self.send_alert = send_alert
        self.send_verdict = send_verdict  # None: revisions are not written (tests that do not look)
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
            merged.revisions.extend(o.revisions)
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
        for rev in out.revisions:
            try:
                await self.publish_revision(rev, p, offset)
            except Exception as exc:  # noqa: BLE001 - one revision must not lose the others
                self.metrics.internal_errors.labels("entity-shard").inc()
                log.error("a verdict revision from %s[%d]@%d was not sent: %s", ENTITY_EVENTS.name, p, offset,
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

    async def publish_revision(self, rev: Revision, p: int, offset: int) -> None:
        """A revision of a request's verdict to the verdicts topic, keyed as the ingest
        stage keyed the verdict it replaces (the same partition), whatever
        `verdicts.emit` says (a revision is never clean at the default weights: it
        exists to carry evidence). Deterministic bytes (revision.revised_verdict)."""
        send = self.send_verdict
        if send is None:
            return
        key, value = verdict_key(rev.record), revised_verdict(rev, self.detection.scoring).to_json()
        if len(key) + len(value) > self.shard.limits.shard_verdict:  # bounded (Verdict.to_json): never expected
            self.metrics.oversized_records.labels("verdict").inc()
            log.error("not sending a verdict revision of %d bytes (limit %d) from %s[%d]@%d",
                      len(key) + len(value), self.shard.limits.shard_verdict, ENTITY_EVENTS.name, p, offset)
            return
        self.shard.delivering(p, await send(key, value), partial(send, key, value))
        self.metrics.verdict_revisions.labels(rev.code).inc()
