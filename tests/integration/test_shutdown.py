"""Stopping on time (issue 11, item 7): a worker under load stops within its grace on
SIGTERM and loses nothing across the restart, on both broker tiers; a worker whose
graceful stop hangs exits at the grace anyway; the demo's Ctrl-C (once or twice) stops
every process it started within 5 s and prints its summary."""

from __future__ import annotations

import asyncio
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from agents.tools.broker import free_port
from agents.tools.produce import produce_events
from agents.settings import load_settings
from agents.shutdown import EXIT_DEADLINE
from agents.topics import VERDICTS, create_topics
from detector.simulate import mixed

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.timeout(240)]

RATE = 400.0  # requests per second, the rate of the report
MARGIN_S = 2.5  # process start-up of the stop path and interpreter exit, on a busy 2-core machine


class VerdictTail:
    """Every verdict on the topic since the start, read in the background."""

    def __init__(self, bootstrap: str):
        self.bootstrap = bootstrap
        self.ids: set[str] = set()
        self.count = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> VerdictTail:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        c = AIOKafkaConsumer(VERDICTS.name, bootstrap_servers=self.bootstrap, group_id=None,
                             auto_offset_reset="earliest")
        await c.start()
        try:
            while True:
                for msgs in (await c.getmany(timeout_ms=250)).values():
                    for m in msgs:
                        self.ids.add(orjson.loads(m.value)["request_id"])
                        self.count += 1
        finally:
            await c.stop()

    async def wait_for(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.ids) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.25)


async def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> float:
    t0 = time.monotonic()
    while proc.poll() is None and time.monotonic() - t0 < timeout:
        await asyncio.sleep(0.05)
    return time.monotonic() - t0


def _log_since(path: Path, offset: int) -> str:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


async def _wait_for_shard_state(log_path: Path, timeout: float) -> None:
    """Until the shards own partitions and hold behaviour state (they log each
    partition's restore on its first envelope)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not re.search(r"shard \d+: restored", _log_since(log_path, 0)):
        await asyncio.sleep(0.25)
    assert re.search(r"shard \d+: restored", _log_since(log_path, 0)), "the shards never received an envelope"


async def test_sigterm_under_load_stops_within_the_grace_and_loses_no_request(broker, worker_factory, detection,
                                                                              tmp_path):
    grace = load_settings().shutdown_grace_s  # the configured default (10 s)
    await create_topics(broker.bootstrap, partitions=4)
    profile = detection.profiles[detection.default_profile]
    # a steady stream with attacks in it, so the shards hold behaviour state to persist
    events = list(mixed(profile, int(RATE * 20), seed=11, start_ts=time.time(), rate=RATE,
                        catalogue=detection.catalogue))
    produced = {e["request_id"] for e in events}
    stop_producing = asyncio.Event()
    async with VerdictTail(broker.bootstrap) as verdicts:
        proc, _ = worker_factory()
        producer = asyncio.create_task(produce_events(broker.bootstrap, events, rate=RATE, batch=20,
                                                      stop=stop_producing))
        await verdicts.wait_for(1, timeout=60)
        assert verdicts.ids, "the worker produced no verdict"
        log_path = tmp_path / "worker.log"
        await _wait_for_shard_state(log_path, timeout=60)
        await asyncio.sleep(2.0)  # under load: the stream keeps coming through the stop
        before = len(verdicts.ids)
        assert before > 0 and not producer.done()

        proc.send_signal(signal.SIGTERM)
        took = await _wait_exit(proc, grace + 30)
        assert proc.poll() is not None, f"the worker was still running {took:.0f} s after SIGTERM"
        print(f"\n[{broker.tier}] SIGTERM under {RATE:.0f} req/s: exited {took:.2f} s later, status {proc.returncode}")
        assert took <= grace + MARGIN_S
        assert proc.returncode == 0, "the graceful stop should finish well within the grace"

        log_offset = log_path.stat().st_size
        await asyncio.sleep(1.0)  # requests keep arriving while no worker runs
        worker_factory()
        sent = await producer
        assert sent == len(events)
        await verdicts.wait_for(len(produced), timeout=90)
    missing = produced - verdicts.ids
    assert not missing, f"{len(missing)} of {len(produced)} requests never got a verdict"
    assert verdicts.count >= len(produced)  # duplicates allowed: at-least-once
    # the shards persisted their state at the stop: the new worker restores it (once
    # its shards have joined their group, which may come after the verdicts)
    deadline = time.monotonic() + 60
    restored: list[int] = []
    while time.monotonic() < deadline and not sum(restored):
        await asyncio.sleep(0.5)
        restarted = _log_since(log_path, log_offset)
        restored = [int(n) for n in re.findall(r"shard \d+: restored (\d+) entities", restarted)]
    assert sum(restored) > 0, restarted[-3000:]


async def test_a_graceful_stop_that_hangs_exits_at_the_grace(broker, worker_factory, detection, tmp_path):
    """The broker freezes (SIGSTOP) just before SIGTERM, while the shards hold state:
    the snapshot they write at the stop is never acknowledged, so the graceful stop
    cannot finish, and the hard deadline ends the process at the grace anyway."""
    grace = 3.0
    await create_topics(broker.bootstrap, partitions=4)
    profile = detection.profiles[detection.default_profile]
    events = list(mixed(profile, 800, seed=12, start_ts=time.time(), rate=RATE, catalogue=detection.catalogue))
    log_path = tmp_path / "worker.log"
    async with VerdictTail(broker.bootstrap) as verdicts:
        proc, _ = worker_factory(DETECTOR_SHUTDOWN_GRACE_S=str(grace))
        await produce_events(broker.bootstrap, events, rate=RATE, batch=20)
        await verdicts.wait_for(len(events), timeout=60)
        await _wait_for_shard_state(log_path, timeout=60)
    assert broker.proc is not None
    os.killpg(broker.proc.pid, signal.SIGSTOP)
    try:
        proc.send_signal(signal.SIGTERM)
        took = await _wait_exit(proc, grace + 30)
    finally:
        os.killpg(broker.proc.pid, signal.SIGCONT)
    assert proc.poll() is not None, f"still running {took:.0f} s after SIGTERM"
    print(f"\n[{broker.tier}] stop against a frozen broker: exited {took:.2f} s after SIGTERM, status {proc.returncode}")
    assert grace - 0.5 <= took <= grace + MARGIN_S
    assert proc.returncode == EXIT_DEADLINE
    assert "the graceful stop did not finish within 3 s" in _log_since(log_path, 0)


# --- detector demo ----------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a live process, None when it is gone (a zombie is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return fields[0], int(fields[1])


def _descendants(pid: int) -> set[int]:
    parents: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit() and (st := _stat(int(d))) is not None:
            parents[int(d)] = st[1]
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


def _read_until(proc: subprocess.Popen[str], predicate: Callable[[str], bool], timeout: float) -> list[str]:
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            lines.append(line)
            if predicate(line):
                return lines
    raise AssertionError(f"demo output never matched; got {lines!r}")


def _start_demo() -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "agents.cli", "demo", "--duration", "120", "--web-port", str(free_port())],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("when, presses", [("running", 1), ("running", 2), ("starting", 1)],
                         ids=["ctrl-c", "ctrl-c-twice", "ctrl-c-while-starting"])
def test_demo_ctrl_c_stops_every_process_within_5_s_and_prints_the_summary(when, presses):
    demo = _start_demo()
    try:
        if when == "running":
            _read_until(demo, lambda ln: "verdicts=" in ln and "verdicts=0 " not in ln, timeout=90)
        else:  # the broker is up, the worker starting, the traffic being generated
            deadline = time.monotonic() + 30
            while len(_descendants(demo.pid)) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
        children = _descendants(demo.pid)
        assert len(children) >= 2, "the demo runs a broker and a worker"  # and nothing else lingers
        t0 = time.monotonic()
        demo.send_signal(signal.SIGINT)
        if presses == 2:
            time.sleep(0.3)  # during the stop
            demo.send_signal(signal.SIGINT)
        out, err = demo.communicate(timeout=30)
        took = time.monotonic() - t0
        print(f"\ndemo stopped {took:.2f} s after the first Ctrl-C ({presses} presses), status {demo.returncode}")
        assert took <= 5.0
        assert demo.returncode == 130
        assert "interrupted: sent " in out and " verdicts " in out, out + err
        assert "Traceback" not in err, err
        # its logs were in a directory it named, removed at this normal (interrupted) end
        logs = Path(err.split("detector demo: logs in ", 1)[1].splitlines()[0])
        assert f"detector demo: logs removed ({logs};" in err and not logs.exists(), err
        deadline = time.monotonic() + 1.0  # a SIGKILLed child may take a moment to be reaped by init
        while time.monotonic() < deadline and any(_stat(p) for p in children):
            time.sleep(0.05)
        left = [p for p in children if _stat(p) is not None]
        assert not left, f"processes left behind: {[Path(f'/proc/{p}/cmdline').read_bytes() for p in left]}"
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.communicate()
