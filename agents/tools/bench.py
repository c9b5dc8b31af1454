"""`detector bench`: end-to-end throughput and latency of the worker through a real
broker, beside the raw-consumer baseline, in the same run and on the same data.

1. produce N simulator requests to `client-requests` (`--batch` requests per message;
   1 is an edge that sends one request per message, the hardest case);
2. baseline: a raw aiokafka consumer, `getmany` + `orjson.loads` over every message;
3. throughput: a real `detector run` process from a fresh consumer group, timed from
   its first processed request until all N are scored and published (its /metrics)
   and its alerts have stopped arriving on `alerts` (start-up excluded);
4. latency: the same worker, now caught up, is offered a fixed load (`--latency-rate`
   requests per second for `--latency-seconds`) whose `ts` is the send time; a consumer
   of `verdicts` takes each verdict's arrival minus its `ts` (produce, broker, ingest,
   score, publish, broker, consume). The worker's own histogram
   `detector_end_to_end_latency_seconds` (from `ts` to the verdict's acknowledgement)
   over the same phase is reported beside it;
5. the worker's peak RSS (VmHWM).
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, TypedDict

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from agents.tools.broker import EmbeddedBroker, free_port
from agents.tools.demo import EMBEDDED_WORKER_ENV, stop_process
from agents.topics import ALERTS, CLIENT_REQUESTS, VERDICTS, create_topics
from detector.engine import DEFAULT_CONFIG, DetectionConfig
from detector.simulate import mixed

LATENCY_METRIC = "detector_end_to_end_latency_seconds"
ROOT = Path(__file__).resolve().parent.parent


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
    # No consumer group (group_id=None: every partition, from the start): a group
    # needs the coordinator, which a freshly started Kafka may not have elected yet.
    c = AIOKafkaConsumer(CLIENT_REQUESTS.name, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                         enable_auto_commit=False, max_partition_fetch_bytes=8 * 1024 * 1024, fetch_max_wait_ms=100)
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


def _buckets(text: str, name: str) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of a Prometheus histogram, +Inf last."""
    out = []
    for le, value in re.findall(rf'^{re.escape(name)}_bucket{{le="([^"]+)"}} ([0-9.e+]+)$', text, re.M):
        out.append((float("inf") if le == "+Inf" else float(le), float(value)))
    return sorted(out)


def histogram_quantile(q: float, before: list[tuple[float, float]], after: list[tuple[float, float]]) -> float | None:
    """The q-quantile of the observations made between two snapshots of a histogram,
    linearly interpolated inside its bucket (Prometheus' histogram_quantile)."""
    prev = dict(before)
    delta = [(le, count - prev.get(le, 0.0)) for le, count in after]
    total = delta[-1][1] if delta else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower_le, lower_count = 0.0, 0.0
    for le, count in delta:
        if count >= rank:
            if le == float("inf"):
                return lower_le
            inside = count - lower_count
            return lower_le + (le - lower_le) * ((rank - lower_count) / inside if inside else 1.0)
        lower_le, lower_count = le, count
    return None


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def _rss_mb(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    m = re.search(r"VmHWM:\s+(\d+) kB", status)
    return int(m.group(1)) / 1024 if m else 0.0


def _start_worker(bootstrap: str, web_port: int, workdir: Path) -> subprocess.Popen[bytes]:
    """A `detector run` process with a fresh app id (fresh consumer groups), run in the
    bench's own directory so that Faust's data directory lands there."""
    env = {**os.environ, **EMBEDDED_WORKER_ENV, "DETECTOR_KAFKA_BOOTSTRAP": bootstrap,
           "DETECTOR_WEB_PORT": str(web_port), "DETECTOR_APP_ID": f"bench-{time.time_ns()}",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    with open(workdir / "worker.log", "ab") as log:  # the child has its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "agents.cli", "run"], stdout=log, stderr=subprocess.STDOUT,
                                env=env, cwd=workdir, start_new_session=True)


def _scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            body: bytes = r.read()
            return body.decode()
    except OSError:
        return None


async def _alert_watch(bootstrap: str, seen: dict[str, float], stop: asyncio.Event) -> None:
    """Counts alert revisions as they arrive and notes the last arrival."""
    c = AIOKafkaConsumer(ALERTS.name, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                         fetch_max_wait_ms=50)
    await c.start()
    try:
        while not stop.is_set():
            batches = await c.getmany(timeout_ms=100)
            n = sum(len(m) for m in batches.values())
            if n:
                seen["count"] += n
                seen["last"] = time.perf_counter()
    finally:
        await c.stop()


class _Throughput(TypedDict):
    events_per_s: float
    alerts: float  # the count of alert revisions seen
    method: str  # how events_per_s was timed: "wall" or "batch_time"
    alerts_lag_s: float


async def _throughput(bootstrap: str, port: int, n_requests: int, timeout: float, workdir: Path,
                      proc: subprocess.Popen[bytes]) -> _Throughput:
    """From the worker's first processed request until all N are scored and published
    and no alert has arrived for `quiet` seconds."""
    alerts = {"count": 0.0, "last": 0.0}
    stop = asyncio.Event()
    watcher = asyncio.create_task(_alert_watch(bootstrap, alerts, stop))
    try:
        first_t = None
        first_n = 0.0
        done_t = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the worker exited with {proc.returncode}; see {workdir / 'worker.log'}")
            text = _scrape(port)
            if text is None:
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
        # Alerts come from the entity-shard agent, which joins its group a few seconds
        # after the ingest stage (a small N is scored before it runs): wait for its
        # first alert (the simulated library always raises some), then for quiet.
        quiet, waited_until = 2.0, time.monotonic() + 45
        while time.monotonic() < waited_until and (
                alerts["count"] == 0 or time.perf_counter() - max(alerts["last"], done_t) < quiet):
            await asyncio.sleep(0.1)
        end_t = max(done_t, alerts["last"])
        rate = (n_requests - first_n) / max(end_t - first_t, 1e-6)
        method = "wall"
        if n_requests - first_n < 0.5 * n_requests:
            # Too few requests to time between scrapes (a small N fits in one or two
            # polls): the worker's own time spent in batches instead.
            busy = _metric(_scrape(port) or "", "detector_batch_duration_seconds_sum")
            rate, method = (n_requests / busy if busy > 0 else 0.0), "batch_time"
        return {"events_per_s": rate, "alerts": alerts["count"], "method": method,
                "alerts_lag_s": max(0.0, alerts["last"] - done_t)}
    finally:
        stop.set()
        await asyncio.wait_for(watcher, 10)


async def _latency(bootstrap: str, port: int, events: list[dict[str, Any]], rate: float, batch: int) -> dict[str, Any]:
    """Offers `rate` requests per second (`ts` = send time) to the caught-up worker and
    measures each verdict's arrival at a consumer of `verdicts`."""
    consumer = AIOKafkaConsumer(VERDICTS.name, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="latest", fetch_max_wait_ms=10)
    await consumer.start()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=1, max_request_size=8 * 1024 * 1024)
    await producer.start()
    before = _buckets(_scrape(port) or "", LATENCY_METRIC)
    latencies: list[float] = []
    wanted = {e["request_id"] for e in events}
    try:
        # Every partition assigned and positioned at its end before anything is sent.
        deadline = time.monotonic() + 30
        while not consumer.assignment() and time.monotonic() < deadline:
            await consumer.getmany(timeout_ms=100)
        if not consumer.assignment():
            raise RuntimeError(f"no partition of {VERDICTS.name} could be assigned on {bootstrap}")
        for tp in consumer.assignment():
            await consumer.position(tp)

        async def receive() -> None:
            while len(latencies) < len(wanted):
                batches = await consumer.getmany(timeout_ms=50)
                now = time.time()
                for msgs in batches.values():
                    for m in msgs:
                        v = orjson.loads(m.value)
                        if v["request_id"] in wanted:
                            latencies.append(now - float(v["ts"]))

        receiver = asyncio.create_task(receive())
        started = time.monotonic()
        sent = 0
        futures = []
        while sent < len(events):
            ahead = sent / rate - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
            chunk = events[sent:sent + batch]
            now = time.time()
            for e in chunk:
                e["ts"] = now
            futures.append(await producer.send(CLIENT_REQUESTS.name, orjson.dumps(chunk[0] if batch == 1 else chunk)))
            sent += len(chunk)
        await asyncio.gather(*futures)
        offered_s = time.monotonic() - started
        try:
            await asyncio.wait_for(receiver, 30)
        except TimeoutError:
            pass
        after = _buckets(_scrape(port) or "", LATENCY_METRIC)
    finally:
        await producer.stop()
        await consumer.stop()

    def ms(x: float | None) -> float | None:
        return None if x is None else round(x * 1000, 1)

    return {
        "latency_p50_ms": ms(_quantile(latencies, 0.50)),
        "latency_p99_ms": ms(_quantile(latencies, 0.99)),
        "latency_max_ms": ms(max(latencies) if latencies else None),
        "latency_requests": len(latencies),
        "latency_offered_per_s": round(len(events) / offered_s) if offered_s > 0 else None,
        "worker_latency_p50_ms": ms(histogram_quantile(0.50, before, after)),
        "worker_latency_p99_ms": ms(histogram_quantile(0.99, before, after)),
    }


async def _run(n: int, batch: int, bootstrap: str | None, seed: int, latency_rate: float,
               latency_seconds: float, workdir: Path | None = None) -> dict[str, Any]:
    t_start = time.monotonic()
    workdir = workdir or Path(tempfile.mkdtemp(prefix="detector-bench-"))
    broker = None
    if bootstrap is None:
        broker = EmbeddedBroker(log_path=workdir / "broker.log").start()
        bootstrap = broker.bootstrap
    proc = None
    try:
        await create_topics(bootstrap, partitions=4)
        detection = DetectionConfig.load(DEFAULT_CONFIG, secrets=os.environ.get)  # profiles' {env: NAME} secrets
        profile = detection.profiles[detection.default_profile]
        events = mixed(profile, n, seed, catalogue=detection.catalogue)
        n_latency = max(1, int(latency_rate * latency_seconds))
        probe = mixed(profile, n_latency, seed + 1, catalogue=detection.catalogue)
        for i, e in enumerate(probe):
            e["request_id"] = f"bench-latency-{i:08d}"
        t = time.perf_counter()
        messages = await _produce(bootstrap, events, batch)
        produce_s = time.perf_counter() - t
        baseline = await _baseline(bootstrap, n)
        port = free_port()
        proc = _start_worker(bootstrap, port, workdir)
        worker = await _throughput(bootstrap, port, n, max(120.0, n / 500), workdir, proc)
        latency = await _latency(bootstrap, port, probe, latency_rate, batch)
        rss = _rss_mb(proc.pid)
    finally:
        if proc is not None:
            stop_process(proc)
        if broker is not None:
            broker.stop()
    return {
        "requests": n,
        "messages": messages,
        "batch": batch,
        "broker": "embedded" if broker is not None else bootstrap,
        "events_per_s": round(worker["events_per_s"]),
        "baseline_events_per_s": round(baseline),
        "ratio": round(worker["events_per_s"] / baseline, 4),
        "throughput_timing": worker["method"],
        "alerts": int(worker["alerts"]),
        "alerts_lag_s": round(worker["alerts_lag_s"], 2),
        **latency,
        "latency_rate": latency_rate,
        "rss_mb": round(rss, 1),
        "produce_s": round(produce_s, 1),
        "elapsed_s": round(time.monotonic() - t_start, 1),
        "cpus": os.cpu_count(),
        "logs": str(workdir),
    }


def run_bench(n: int = 100_000, batch: int = 1, bootstrap: str | None = None, seed: int = 1,
              latency_rate: float = 1000.0, latency_seconds: float = 10.0,
              log_dir: str | None = None) -> dict[str, Any]:
    """The logs (and the worker's Faust data directory) go to `log_dir`, else to a
    temporary directory removed after a run that completed (agents/tools/rundir.py); their
    place is printed on stderr at the start and the end."""
    from agents.tools.rundir import RunDir

    run_dir = RunDir("bench", log_dir)
    print(f"detector bench: logs in {run_dir.path}", file=sys.stderr, flush=True)
    ok = False
    try:
        result = asyncio.run(_run(n, batch, bootstrap, seed, latency_rate, latency_seconds, run_dir.path))
        ok = True
        return result
    finally:
        print(f"detector bench: {run_dir.finish(ok)}", file=sys.stderr, flush=True)
