"""Consumer lag per assigned partition, measured by our own code at scrape time.

Faust's sensor has no lag metric and cannot see the ingest stage's raw aiokafka
consumer. Lag is the partition's end (high watermark, or the last stable offset
under read_committed) minus the consumer's position; both come from the consumer's
own fetch state, so sampling costs no broker round trip."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

from aiokafka.errors import IllegalStateError

from agents.metrics import CONSUMERS, Metrics

log = logging.getLogger("detector.lag")

Partition = tuple[str, str, str]  # consumer, topic, partition: the gauge's labels


def aiokafka_end(consumer: Any, tp: Any) -> int | None:
    """The partition's end for lag: the last stable offset when the consumer reads
    committed data only, else the high watermark. None before the first fetch."""
    if getattr(consumer, "_isolation_level", "read_uncommitted") == "read_committed":
        lso = consumer.last_stable_offset(tp)
        if lso is not None and lso >= 0:
            return int(lso)
    hw = consumer.highwater(tp)
    return None if hw is None else int(hw)


class ConsumerLag:
    """Samples every watched consumer and sets `detector_consumer_lag_messages`;
    partitions no longer assigned lose their series (no stale lag after a rebalance)."""

    def __init__(self, metrics: Metrics, position_timeout_s: float = 0.5):
        self.metrics = metrics
        self.position_timeout_s = position_timeout_s
        self._sources: list[tuple[str, Callable[[], Any]]] = []
        self._series: set[Partition] = set()

    @staticmethod
    def _check(name: str) -> None:
        if name not in CONSUMERS:
            raise ValueError(f"unknown consumer {name!r}: add it to agents.metrics.CONSUMERS (a closed set)")

    def watch_aiokafka(self, name: str, consumer: Callable[[], Any]) -> None:
        """An AIOKafkaConsumer, returned by `consumer()` (None while not started)."""
        self._check(name)

        async def sample() -> list[tuple[Any, int]]:
            c = consumer()
            if c is None:
                return []
            out = []
            for tp in list(c.assignment()):
                try:
                    end = aiokafka_end(c, tp)
                    if end is None:
                        continue
                    # position() returns at once when the position is known; it waits
                    # only right after an assignment, hence the timeout.
                    pos = await asyncio.wait_for(c.position(tp), self.position_timeout_s)
                except (TimeoutError, IllegalStateError, AssertionError):
                    continue  # revoked meanwhile, or no position yet
                out.append((tp, max(0, end - int(pos))))
            return out

        self._sources.append((name, sample))

    def watch_faust(self, name: str, app: Any, topics: Iterable[str]) -> None:
        """The Faust app's consumer, for the partitions of `topics` (its agents'
        source topics). The position is the offset after the last message its
        streams read (Faust's `_read_offset`, which its own /performance page uses)."""
        self._check(name)
        wanted = frozenset(topics)

        async def sample() -> list[tuple[Any, int]]:
            consumer = getattr(app, "_consumer", None)
            if consumer is None:
                return []
            try:
                assigned = list(consumer.assignment())
            except Exception:  # its consumer thread is not running yet
                return []
            read = getattr(consumer, "_read_offset", {})
            out = []
            for tp in assigned:
                if tp.topic not in wanted:
                    continue
                try:
                    end = consumer.highwater(tp)
                except (AssertionError, IllegalStateError, KeyError):
                    continue
                last = read.get(tp)
                if end is None:
                    continue
                if last is None:  # nothing read since the assignment
                    committed = getattr(consumer, "_committed_offset", {}).get(tp)
                    if committed is None:
                        continue
                    last = committed - 1
                out.append((tp, max(0, int(end) - (int(last) + 1))))
            return out

        self._sources.append((name, sample))

    async def sample(self) -> None:
        seen: set[Partition] = set()
        gauge = self.metrics.consumer_lag
        for name, source in self._sources:
            try:
                found = await source()
            except Exception as exc:  # a metrics scrape must never fail because of lag
                log.warning("consumer lag of %s not sampled: %s", name, exc)
                found = []
                seen |= {s for s in self._series if s[0] == name}  # keep the last values
            for tp, lag in found:
                key = (name, tp.topic, str(tp.partition))
                gauge.labels(*key).set(lag)
                seen.add(key)
        for stale in self._series - seen:
            try:
                gauge.remove(*stale)
            except KeyError:
                pass
        self._series = seen
