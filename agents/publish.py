"""Publishing many records at once: aiokafka's batch API (`create_batch` /
`send_batch`), about 4x cheaper per record than `send()` here (measured: 307k vs
72k records/s for 700-byte values on the embedded broker), since it skips the
per-record future and partitioner bookkeeping.

Broker faults: `BatchPublisher.flush()` returns only once the broker acknowledged
every record of the batch. A failed attempt (a produce error, a batch that expired in
the producer, a metadata timeout) is retried with bounded exponential backoff and
jitter, re-publishing the whole batch: the records are deterministic, so a retry
only adds duplicates, never drops one. `BrokerHealth` remembers how the last broker
interactions went, for the worker's readiness page."""

from __future__ import annotations

import asyncio
import logging
import random
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka.errors import KafkaError

from agents.topics import TopicLayoutError

log = logging.getLogger("detector.publish")

# What a failed broker interaction raises: aiokafka's errors, and the timeouts and
# socket errors that escape it.
BROKER_ERRORS: tuple[type[BaseException], ...] = (KafkaError, asyncio.TimeoutError, OSError)


def partition_for(key: bytes, partitions: int) -> int:
    """Stable key -> partition (crc32), the same in every process and restart."""
    return zlib.crc32(key) % partitions


class ProducerBatch(Protocol):
    """aiokafka's `BatchBuilder`, as far as the publisher uses it."""

    def append(self, *, key: bytes | None, value: bytes | None, timestamp: int | None) -> Any: ...

    def close(self) -> None: ...


class Producer(Protocol):
    """The part of `AIOKafkaProducer` the publisher needs (our seam for tests)."""

    async def partitions_for(self, topic: str) -> set[int]: ...

    def create_batch(self) -> Any: ...

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> asyncio.Future[Any]: ...


@dataclass(frozen=True, slots=True)
class Backoff:
    """Bounded exponential backoff with jitter: attempt n (1-based) waits
    min(max_s, initial_s * multiplier**(n-1)), minus up to `jitter` of it at random
    (so that workers retrying the same outage do not retry in step)."""

    initial_s: float = 0.2
    max_s: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not (0 < self.initial_s <= self.max_s):
            raise ValueError(f"backoff needs 0 < initial_s <= max_s, got {self.initial_s}, {self.max_s}")
        if self.multiplier < 1:
            raise ValueError(f"backoff multiplier must be >= 1, got {self.multiplier}")
        if not (0 <= self.jitter < 1):
            raise ValueError(f"backoff jitter must be in [0, 1), got {self.jitter}")

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        base = min(self.max_s, self.initial_s * self.multiplier ** max(0, min(attempt - 1, 64)))
        return base * (1.0 - self.jitter * rand())


class BrokerHealth:
    """The outcome of the recent broker interactions (poll, produce, commit,
    metadata). Not healthy after `unready_failures` consecutive failures, while a
    produce retry is pending, or when nothing succeeded for `stale_after_s`."""

    def __init__(self, unready_failures: int = 2, stale_after_s: float = 15.0,
                 clock: Callable[[], float] = time.monotonic):
        if unready_failures < 1:
            raise ValueError("unready_failures must be >= 1")
        self.unready_failures = unready_failures
        self.stale_after_s = stale_after_s
        self.clock = clock
        self.last_ok = clock()
        self.failures = 0  # consecutive
        self.retrying = 0  # produce retries in progress
        self.last_error = ""
        self.down_since: float | None = None  # when readiness was lost to the current outage

    def ok(self) -> None:
        self.last_ok = self.clock()
        self.failures = 0

    def failed(self, what: str, exc: BaseException) -> None:
        self.failures += 1
        self.last_error = f"{what}: {type(exc).__name__}: {exc}"[:300]
        if self.down_since is None and not self.healthy():
            self.down_since = self.clock()  # an outage begins (readiness is lost)

    def healthy(self) -> bool:
        return (self.failures < self.unready_failures and not self.retrying
                and self.clock() - self.last_ok <= self.stale_after_s)

    def reason(self) -> str:
        if self.retrying:
            return f"produce retry pending ({self.last_error})"
        if self.failures >= self.unready_failures:
            return f"{self.failures} consecutive broker failures ({self.last_error})"
        if self.clock() - self.last_ok > self.stale_after_s:
            return f"no successful broker interaction for {self.clock() - self.last_ok:.0f} s"
        return ""

    def recovered(self) -> float | None:
        """After a success: how long the outage that just ended lasted (None if
        there was none). Resets the outage."""
        if self.down_since is None or not self.healthy():
            return None
        lasted, self.down_since = self.clock() - self.down_since, None
        return lasted


def _ignore_outcome(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


class PublishAborted(Exception):
    """The worker is stopping while a batch is not yet acknowledged: the caller must
    not commit its offsets (the batch is read again after the restart)."""


@dataclass(frozen=True, slots=True)
class _Record:
    topic: str
    value: bytes
    key: bytes | None
    partition: int | None  # an explicit partition; None: by key, else round-robin


class BatchPublisher:
    """Collects records per (topic, partition) into producer batches; `flush()` sends
    what is open and waits until the broker acknowledged every record, retrying the
    whole batch after a failure (see the module docstring).

    The first attempt streams: full producer batches are sent while records are
    added. After a failure nothing more is sent until `flush()`, which waits
    `backoff.delay(n)` and re-publishes every record of the batch, until one attempt
    is acknowledged in full or `should_stop()` turns true (then `PublishAborted`)."""

    def __init__(self, producer: Producer, *, backoff: Backoff | None = None, health: BrokerHealth | None = None,
                 should_stop: Callable[[], bool] = lambda: False,
                 on_retry: Callable[[int, BaseException], None] | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep):
        self.producer = producer
        self.backoff = backoff or Backoff()
        self.health = health
        self.should_stop = should_stop
        self.on_retry = on_retry
        self.sleep = sleep
        self.records: list[_Record] = []
        self.attempts = 1  # the attempt in progress (the first one streams while records are added)
        self._partitions: dict[str, int] = {}
        self._open: dict[tuple[str, int], Any] = {}
        self._futures: list[asyncio.Future[Any]] = []
        self._rr = 0
        self._error: BaseException | None = None  # the first attempt failed while streaming

    async def partitions(self, topic: str) -> int:
        n = self._partitions.get(topic)
        if n is None:
            parts = await self.producer.partitions_for(topic)
            n = self._partitions[topic] = max(1, len(parts))
        return n

    async def add(self, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None) -> None:
        rec = _Record(topic, value, key, partition)
        self.records.append(rec)
        if self._error is not None:
            return  # the first attempt failed: flush() re-publishes everything
        try:
            await self._append(rec)
        except BROKER_ERRORS as exc:
            self._error = exc

    async def _append(self, rec: _Record) -> None:
        partition = rec.partition
        n = await self.partitions(rec.topic)
        if partition is None:
            if rec.key is not None:
                partition = partition_for(rec.key, n)
            else:
                self._rr += 1
                partition = self._rr % n
        elif not 0 <= partition < n:  # the producer would assert "Unrecognized partition"
            raise TopicLayoutError(f"partition {partition} of topic {rec.topic} does not exist: the broker says it "
                                   f"has {n} partitions")
        slot = (rec.topic, partition)
        batch = self._open.get(slot)
        if batch is None:
            batch = self._open[slot] = self.producer.create_batch()
        if batch.append(key=rec.key, value=rec.value, timestamp=None) is None:
            await self._send(slot)
            batch = self._open[slot] = self.producer.create_batch()
            if batch.append(key=rec.key, value=rec.value, timestamp=None) is None:
                raise ValueError(
                    f"a record of {len(rec.value)} bytes does not fit in one producer batch for {rec.topic}")

    async def _send(self, slot: tuple[str, int]) -> None:
        batch = self._open.pop(slot)
        batch.close()
        self._futures.append(await self.producer.send_batch(batch, slot[0], partition=slot[1]))

    async def _complete(self) -> None:
        """Send the open batches and wait for every acknowledgement; raises the first
        error (after every send of the attempt has settled)."""
        for slot in list(self._open):
            await self._send(slot)
        futures, self._futures = self._futures, []
        results = await asyncio.gather(*futures, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r

    async def _republish(self) -> None:
        for fut in self._futures:  # sends of a failed attempt: settle them unobserved
            fut.add_done_callback(_ignore_outcome)
        self._open.clear()
        self._futures = []
        self._partitions.clear()  # the topics may have been recreated
        self._rr = 0
        for rec in self.records:
            await self._append(rec)
        await self._complete()

    async def flush(self) -> None:
        """Return once every record added was acknowledged by the broker."""
        err = self._error
        if err is None:
            try:
                await self._complete()
                self._done()
                return
            except BROKER_ERRORS as exc:
                err = exc
        health = self.health
        if health is not None:
            health.retrying += 1
        try:
            while True:
                if health is not None:
                    health.failed("produce", err)
                if self.on_retry is not None:
                    self.on_retry(self.attempts, err)
                delay = self.backoff.delay(self.attempts)
                log.warning("publishing a batch of %d records failed (attempt %d: %s: %s); retrying in %.1f s",
                            len(self.records), self.attempts, type(err).__name__, err, delay)
                if self.should_stop():
                    raise PublishAborted(f"stopping with {len(self.records)} records not acknowledged") from err
                await self.sleep(delay)
                if self.should_stop():
                    raise PublishAborted(f"stopping with {len(self.records)} records not acknowledged") from err
                self.attempts += 1
                try:
                    await self._republish()
                except BROKER_ERRORS as exc:
                    err = exc
                    continue
                log.info("batch of %d records published after %d attempts", len(self.records), self.attempts)
                self._done()
                return
        finally:
            if health is not None:
                health.retrying -= 1

    def _done(self) -> None:
        self._error = None
        if self.health is not None and self.records:
            self.health.ok()
