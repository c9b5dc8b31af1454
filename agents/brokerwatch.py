"""Watching the broker from the ingest stage: a metadata probe every
`broker_check_interval_s` feeds `BrokerHealth` (readiness), notices an outage ending,
and recreates the declared topics that vanished (a memory-only broker, such as the
embedded one, loses every topic when it restarts; `detector topics --create` does the
same from the declarations in agents/topics.py). A vanished topic is recreated only
after it stayed missing for `recreate_after` probes: the embedded broker creates a
topic itself when a client asks for it, and creating one that clients were already
producing to made it refuse their sends for seconds (measured: UnknownError for ~7 s).

It also decides whether the broker lost its log: a declared topic that existed
vanished, or, after an outage, a partition of the input ends before an offset this
worker committed (committed offsets are consumed ones, so on a broker that keeps its
data, Apache Kafka, the log end is never below them). That is a restart of a
memory-only broker; the consumers then restart from the new log's start
(auto_offset_reset) and `on_log_lost` lets the worker forget positions that belonged
to the old log. (The group's committed offsets are no evidence: right after a
restart Apache Kafka was seen to answer none, or the one before our last commit.)"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from agents.publish import BROKER_ERRORS, BrokerHealth
from agents.topics import TopicSpec

log = logging.getLogger("detector.broker")


@dataclass(frozen=True, slots=True)
class WatchHooks:
    """The broker operations the watch needs (our seam; the worker binds aiokafka)."""

    topics: Callable[[], Awaitable[set[str]]]  # the topic names the broker has now
    create: Callable[[tuple[TopicSpec, ...]], Awaitable[list[str]]]  # create these; names created
    # the log end offsets of these partitions (those the broker knows)
    end_offsets: Callable[[list[tuple[str, int]]], Awaitable[Mapping[tuple[str, int], int]]]


@dataclass(frozen=True, slots=True)
class WatchCounters:
    """Metric hooks (the worker binds Prometheus counters)."""

    error: Callable[[], None]
    recovered: Callable[[], None]
    recreated: Callable[[int], None]
    log_lost: Callable[[], None]


class BrokerWatch:
    def __init__(self, hooks: WatchHooks, health: BrokerHealth, counters: WatchCounters,
                 specs: tuple[TopicSpec, ...], timeout_s: float = 5.0,
                 on_log_lost: Callable[[], None] = lambda: None, recreate_after: int = 3):
        self.hooks = hooks
        self.health = health
        self.counters = counters
        self.specs = specs
        self.timeout_s = timeout_s
        self.on_log_lost = on_log_lost
        self.recreate_after = recreate_after
        self.missing: dict[str, int] = {}  # vanished declared topic -> consecutive probes missing
        self.seen: set[str] = set()  # declared topics seen on the broker at least once
        self.committed: dict[tuple[str, int], int] = {}  # what this worker committed last
        self.outage = False
        self.verify = 0  # checks left to compare the log ends with our commits after an outage
        self.log_losses = 0

    def note_commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """The worker committed these offsets (the ingest group's)."""
        self.committed.update(offsets)

    async def check(self) -> bool:
        """One probe; returns whether the broker answered."""
        try:
            have = await asyncio.wait_for(self.hooks.topics(), self.timeout_s)
        except BROKER_ERRORS as exc:
            self.health.failed("metadata", exc)
            self.counters.error()
            if not self.outage:
                log.warning("broker unreachable: %s: %s", type(exc).__name__, exc)
            self.outage = True
            return False
        self.health.ok()
        ended, self.outage = self.outage, False
        declared = {s.name for s in self.specs}
        vanished = [s for s in self.specs if s.name in self.seen and s.name not in have]
        self.seen |= declared & have
        lost = any(s.name not in self.missing for s in vanished)  # newly vanished
        self.missing = {s.name: self.missing.get(s.name, 0) + 1 for s in vanished}
        if lost:
            log.warning("the broker lost topics %s", ", ".join(s.name for s in vanished))
        due = tuple(s for s in vanished if self.missing[s.name] >= self.recreate_after)
        if due:
            names = ", ".join(s.name for s in due)
            try:
                created = await asyncio.wait_for(self.hooks.create(due), self.timeout_s * 2)
            except BROKER_ERRORS as exc:
                self.health.failed("metadata", exc)
                self.counters.error()
                log.warning("recreating vanished topics (%s) failed, will retry: %s: %s",
                            names, type(exc).__name__, exc)
                return True
            self.counters.recreated(len(created))
            self.seen |= set(created)
            for name in created:
                self.missing.pop(name, None)
            log.warning("recreated the vanished topics %s from the declarations", ", ".join(created) or "(none)")
        if ended:
            self.verify = 30
        if self.verify and not lost:
            lost = await self._log_shrank()
        if lost:
            self.verify = 0
            self.log_losses += 1
            self.counters.log_lost()
            self.committed.clear()
            log.warning("the broker lost its log (a restarted memory-only broker?): the consumers restart from "
                        "the new log's start; what the broker held before is gone")
            self.on_log_lost()
        lasted = self.health.recovered()
        if lasted is not None:
            self.counters.recovered()
            log.info("broker reachable again after %.1f s", lasted)
        return True

    async def _log_shrank(self) -> bool:
        """After an outage: does a partition end before what we committed? Retried at
        the next checks while the broker cannot answer yet (leaders being elected)."""
        if not self.committed:
            self.verify = 0
            return False
        self.verify -= 1
        try:
            ends = await asyncio.wait_for(self.hooks.end_offsets(sorted(self.committed)), self.timeout_s)
        except BROKER_ERRORS as exc:
            log.info("could not read the log end offsets after the outage (will retry): %s: %s",
                     type(exc).__name__, exc)
            return False
        self.verify = 0
        for tp, mine in self.committed.items():
            end = ends.get(tp)
            if end is not None and end < mine:
                log.warning("%s[%d] ends at offset %d, before the offset %d this worker committed",
                            tp[0], tp[1], end, mine)
                return True
        return False
