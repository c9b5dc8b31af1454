"""The event-loop lag sampler, on a clock the test moves (no real sleeps)."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from agents.looplag import LoopLagSampler
from agents.metrics import Metrics


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.holds: list[float] = []  # how long the loop is held during each sleep

    def __call__(self) -> float:
        return self.now

    async def sleep(self, s: float) -> None:
        await asyncio.sleep(0)  # a real yield, no real time
        self.now += s + (self.holds.pop(0) if self.holds else 0.0)


async def test_a_held_loop_shows_as_lag_and_an_idle_one_as_none() -> None:
    clock = Clock()
    clock.holds = [0.0, 0.426, 0.0, 0.03]  # e.g. a 426 ms state flush
    seen: list[float] = []
    sampler = LoopLagSampler(seen.append, interval_s=0.1, clock=clock, sleep=clock.sleep)
    for _ in range(4):
        await sampler.sample()
    assert seen == pytest.approx([0.0, 0.426, 0.0, 0.03])
    assert sampler.max_s == pytest.approx(0.426) and sampler.samples == 4


async def test_samples_reach_the_histogram_and_the_run_stops_when_cancelled() -> None:
    metrics = Metrics(CollectorRegistry())
    clock = Clock()
    clock.holds = [0.06]
    sampler = LoopLagSampler(metrics.loop_lag.observe, interval_s=0.1, clock=clock, sleep=clock.sleep)
    await sampler.sample()
    r = metrics.registry
    assert r.get_sample_value("detector_event_loop_lag_seconds_count") == 1
    assert r.get_sample_value("detector_event_loop_lag_seconds_bucket", {"le": "0.05"}) == 0
    assert r.get_sample_value("detector_event_loop_lag_seconds_bucket", {"le": "0.1"}) == 1
    task = asyncio.ensure_future(sampler.run())
    for _ in range(5):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert r.get_sample_value("detector_event_loop_lag_seconds_count") >= 2


def test_the_interval_must_be_positive() -> None:
    with pytest.raises(ValueError):
        LoopLagSampler(lambda _: None, interval_s=0)


async def test_the_recent_max_covers_the_current_and_previous_window_then_forgets() -> None:
    metrics = Metrics(CollectorRegistry())
    clock = Clock()  # starts at 1000.0: the start of a 10 s window
    sampler = LoopLagSampler(metrics.loop_lag.observe, interval_s=0.1, clock=clock, sleep=clock.sleep, window_s=10.0)
    metrics.loop_lag_max.set_function(sampler.recent_max)
    assert sampler.recent_max() == 0.0  # nothing sampled yet
    clock.holds = [0.3]
    await sampler.sample()  # ends at 1000.4, window [1000, 1010)
    for _ in range(20):
        await sampler.sample()  # idle samples up to 1002.5
    assert metrics.registry.get_sample_value("detector_event_loop_lag_max_seconds") == pytest.approx(0.3)
    clock.now = 1012.0  # the next window: the stall is in the previous one
    assert sampler.recent_max() == pytest.approx(0.3)
    clock.holds = [0.02]
    await sampler.sample()  # a smaller stall in the new window
    assert sampler.recent_max() == pytest.approx(0.3)
    clock.now = 1021.0  # two windows on: the 0.3 s stall is forgotten, the 0.02 s one is previous
    assert sampler.recent_max() == pytest.approx(0.02)
    clock.now = 1035.0  # no sample for two windows
    assert sampler.recent_max() == 0.0
    clock.holds = [0.01]
    await sampler.sample()  # a sample after a gap: the window before it had none
    assert sampler.recent_max() == pytest.approx(0.01)
    assert sampler.max_s == pytest.approx(0.3)
