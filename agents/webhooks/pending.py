"""Pending deliveries: their records on the retry topic and the alerts DLQ, the offsets
that may be committed while some wait, and each endpoint's queue ordered by due time."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import orjson

from agents.webhooks.config import Endpoint
from agents.webhooks.payloads import _iso
from agents.webhooks.retry import CircuitBreaker
from detector.alerts import Alert


def pending_record(endpoint: str, alert: Alert, attempt: int, due: float,
                   last_error: str | None = None) -> bytes:
    """A delivery still to make: `attempt` is the number of the next attempt (from 1)."""
    return orjson.dumps({"schema": "webhook-delivery/1", "endpoint": endpoint, "attempt": attempt, "due": due,
                         "last_error": last_error, "alert": orjson.Fragment(alert.to_json())})


def dlq_record(endpoint: str, alert: Alert, outcome: str, reason: str, attempts: int, at: float) -> bytes:
    return orjson.dumps({"schema": "alert-dlq/1", "endpoint": endpoint, "outcome": outcome, "reason": reason,
                         "attempts": attempts, "failed_at": _iso(at), "alert": orjson.Fragment(alert.to_json())})


class OffsetTracker:
    """Per partition: offsets read but not yet resolved. The committable offset is the
    lowest unresolved one (or one past the last read): Kafka commits are a watermark,
    so a delivery that waits never lets a later one's commit skip it."""

    def __init__(self) -> None:
        self.open: dict[int, set[int]] = {}
        self.next: dict[int, int] = {}

    def add(self, partition: int, offset: int) -> None:
        self.open.setdefault(partition, set()).add(offset)
        self.next[partition] = max(self.next.get(partition, 0), offset + 1)

    def done(self, partition: int, offset: int) -> None:
        self.open.get(partition, set()).discard(offset)

    def committable(self) -> dict[int, int]:
        return {p: min(self.open[p]) if self.open.get(p) else n for p, n in self.next.items()}

    def forget(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            self.open.pop(p, None)
            self.next.pop(p, None)


delivery_seq = itertools.count()


@dataclass(order=True)
class Pending:
    due: float
    seq: int
    partition: int = field(compare=False)
    offset: int = field(compare=False)
    generation: int = field(compare=False)
    attempt: int = field(compare=False)
    alert: Alert = field(compare=False)


class EndpointQueue:
    """The pending deliveries of one endpoint, ordered by due time (`clock`: wall time,
    like `Pending.due`; the breaker runs on `monotonic`)."""

    def __init__(self, endpoint: Endpoint, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic):
        self.endpoint = endpoint
        self.heap: list[Pending] = []
        self.changed = asyncio.Event()
        self.breaker = CircuitBreaker(endpoint.breaker_failures, endpoint.breaker_reset_s, monotonic)
        self.slots = asyncio.Semaphore(endpoint.concurrency)
        self.clock = clock
        self.inflight = 0  # attempts running now

    def push(self, p: Pending) -> None:
        heapq.heappush(self.heap, p)
        self.changed.set()

    def __len__(self) -> int:
        return len(self.heap)

    @property
    def pending(self) -> int:
        """Deliveries not resolved yet: waiting, or being attempted."""
        return len(self.heap) + self.inflight

    def hold_back(self) -> int:
        """While the circuit is open, every delivery that has come due is held back
        until the breaker's next probe (no attempt is spent on it) and counted: the
        return value, exported as `breaker_open` attempts, so a dead endpoint shows
        within one `breaker_reset_s` however many deliveries wait for it."""
        if self.breaker.state != "open":
            return 0
        now = self.clock()
        held: list[Pending] = []
        while self.heap and self.heap[0].due <= now:
            held.append(heapq.heappop(self.heap))
        until = now + self.breaker.open_for_s()
        for p in held:
            p.due, p.seq = until, next(delivery_seq)
            heapq.heappush(self.heap, p)
        return len(held)
