"""The event loop's lag: how much later than asked a timer of the worker's loop wakes
up. Anything that holds the loop (a state flush serialising buckets, a long batch, a
blocking call) shows as lag, and every coroutine of the process (ingest, shards,
web pages, heartbeats) waits that long. Sampled every `interval_s` into
`detector_event_loop_lag_seconds`; the largest lag seen is kept for reports, and the
largest of the current and the previous `window_s` window for a gauge
(`detector_event_loop_lag_max_seconds`: a reader every `window_s` misses no stall)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable


class LoopLagSampler:
    def __init__(self, observe: Callable[[float], None], interval_s: float = 0.1,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, window_s: float = 10.0):
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        if window_s <= 0:
            raise ValueError("window_s must be > 0")
        self.observe = observe
        self.interval_s = interval_s
        self.window_s = window_s
        self.clock = clock
        self.sleep = sleep
        self.max_s = 0.0  # the largest lag sampled
        self.samples = 0
        # the window (clock // window_s) of the last sample, its max and the one before's
        self._window = -1
        self._window_max = 0.0
        self._previous_max = 0.0

    def _index(self, t: float) -> int:
        return math.floor(t / self.window_s)

    async def sample(self) -> float:
        """One sample: sleep for the interval and measure how late the wake-up was."""
        start = self.clock()
        await self.sleep(self.interval_s)
        end = self.clock()
        lag = max(0.0, end - start - self.interval_s)
        self.samples += 1
        self.max_s = max(self.max_s, lag)
        w = self._index(end)
        if w != self._window:
            self._previous_max = self._window_max if w == self._window + 1 else 0.0
            self._window, self._window_max = w, 0.0
        self._window_max = max(self._window_max, lag)
        self.observe(lag)
        return lag

    def recent_max(self) -> float:
        """The largest lag of the current and the previous window (at the clock now)."""
        w = self._index(self.clock())
        if w == self._window:
            return max(self._window_max, self._previous_max)
        if w == self._window + 1:
            return self._window_max
        return 0.0

    async def run(self) -> None:
        """Sample until cancelled (the worker's stop)."""
        while True:
            await self.sample()
