"""`detector bench`: end-to-end throughput of the worker through a real broker, beside
the raw-consumer baseline, in the same run and on the same data.

1. produce N simulator requests to `client-requests` (`--batch` requests per message;
   1 is an edge that sends one request per message, the hardest case);
2. baseline: a raw aiokafka consumer, `getmany` + `orjson.loads` over every message;
3. the worker: a real `detector run` process from a fresh consumer group, timed from
   its first processed request to its N-th (start-up excluded), read from /metrics.
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from agents.broker import EmbeddedBroker, free_port
from agents.demo import start_worker, stop_process
from agents.topics import CLIENT_REQUESTS, create_topics
from detector.engine import DEFAULT_CONFIG, DetectionConfig
from detector.simulate import mixed


async def _produce(bootstrap: str, events: list[dict[str, Any]], batch: int) -> int:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1024 * 1024,
                         max_request_size=8 * 1024 * 1024)
    await p.start()
    messages = 0
    try:
        futures = []
        for i in range(0, len(events), batch):
            chunk = events[i:i + batch]
            value = orjson.dumps(chunk[0]) if batch == 1 else orjson.dumps(chunk)
            futures.append(await p.send(CLIENT_REQUESTS.name, value))
            messages += 1
            if len(futures) >= 5000:
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)
    finally:
        await p.stop()
    return messages


async def _baseline(bootstrap: str, n_requests: int) -> float:
    """Raw consume + parse of every message; returns requests per second."""
    c = AIOKafkaConsumer(CLIENT_REQUESTS.name, bootstrap_servers=bootstrap, group_id=f"bench-baseline-{time.time_ns()}",
                         auto_offset_reset="earliest", enable_auto_commit=False, max_partition_fetch_bytes=8 * 1024 * 1024,
                         fetch_max_wait_ms=100)
    await c.start()
    try:
        seen = 0
        started = None
        loads = orjson.loads
        while seen < n_requests:
            batches = await c.getmany(timeout_ms=500, max_records=5000)
            if started is None and batches:
                started = time.perf_counter()
            for msgs in batches.values():
                for m in msgs:
                    doc = loads(m.value)
                    seen += len(doc) if isinstance(doc, list) else 1
        assert started is not None
        return n_requests / (time.perf_counter() - started)
    finally:
        await c.stop()


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def _rss_mb(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    m = re.search(r"VmHWM:\s+(\d+) kB", status)
    return int(m.group(1)) / 1024 if m else 0.0


async def _worker_rate(bootstrap: str, n_requests: int, workdir: Path, timeout: float) -> dict[str, float]:
    port = free_port()
    proc = start_worker(bootstrap, port, workdir / "worker.log", extra_env={"DETECTOR_APP_ID": f"bench-{time.time_ns()}"})
    try:
        first_t = None
        done_t = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    text = r.read().decode()
            except OSError:
                await asyncio.sleep(0.2)
                continue
            done = _metric(text, "detector_requests_total")
            now = time.perf_counter()
            if done > 0 and first_t is None:
                first_t, first_n = now, done
            if done >= n_requests:
                done_t = now
                break
            await asyncio.sleep(0.05)
        if first_t is None or done_t is None:
            raise RuntimeError(f"the worker did not process {n_requests} requests in {timeout:.0f} s; see {workdir}")
        rss = _rss_mb(proc.pid)
        rate = (n_requests - first_n) / max(done_t - first_t, 1e-6)
        return {"events_per_s": rate, "rss_mb": rss}
    finally:
        stop_process(proc)


async def _run(n: int, batch: int, bootstrap: str | None, seed: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="detector-bench-"))
    broker = None
    if bootstrap is None:
        broker = EmbeddedBroker(log_path=workdir / "broker.log").start()
        bootstrap = broker.bootstrap
    try:
        await create_topics(bootstrap, partitions=4)
        detection = DetectionConfig.load(DEFAULT_CONFIG)
        events = mixed(detection.profiles[detection.default_profile], n, seed, catalogue=detection.catalogue)
        t = time.perf_counter()
        messages = await _produce(bootstrap, events, batch)
        produce_s = time.perf_counter() - t
        baseline = await _baseline(bootstrap, n)
        worker = await _worker_rate(bootstrap, n, workdir, timeout=max(120.0, n / 500))
    finally:
        if broker is not None:
            broker.stop()
    return {
        "requests": n,
        "messages": messages,
        "batch": batch,
        "broker": "embedded" if broker is not None else bootstrap,
        "events_per_s": round(worker["events_per_s"]),
        "baseline_events_per_s": round(baseline),
        "ratio": round(worker["events_per_s"] / baseline, 3),
        "rss_mb": round(worker["rss_mb"], 1),
        "produce_s": round(produce_s, 1),
        "cpus": os.cpu_count(),
    }


def run_bench(n: int = 100_000, batch: int = 1, bootstrap: str | None = None, seed: int = 1) -> dict[str, Any]:
    return asyncio.run(_run(n, batch, bootstrap, seed))
