"""The event loop's lag: how much later than asked a timer of the worker's loop wakes
up. Anything that holds the loop (a state flush serialising buckets, a long batch, a
blocking call) shows as lag, and every coroutine of the process (ingest, shards,
web pages, heartbeats) waits that long. Sampled every `interval_s` into
`detector_event_loop_lag_seconds`; the largest lag seen is kept for reports."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class LoopLagSampler:
    def __init__(self, observe: Callable[[float], None], interval_s: float = 0.1,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep):
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self.observe = observe
        self.interval_s = interval_s
        self.clock = clock
        self.sleep = sleep
        self.max_s = 0.0  # the largest lag sampled
        self.samples = 0

    async def sample(self) -> float:
        """One sample: sleep for the interval and measure how late the wake-up was."""
        start = self.clock()
        await self.sleep(self.interval_s)
        lag = max(0.0, self.clock() - start - self.interval_s)
        self.samples += 1
        self.max_s = max(self.max_s, lag)
        self.observe(lag)
        return lag

    async def run(self) -> None:
        """Sample until cancelled (the worker's stop)."""
        while True:
            await self.sample()
