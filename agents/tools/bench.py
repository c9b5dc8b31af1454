"""`detector bench`: end-to-end throughput and latency of the worker through a real
broker, beside the raw-consumer baseline, in the same run and on the same data.

1. produce N simulator requests to `client-requests` (`--batch` requests per message;
   1 is an edge that sends one request per message, the hardest case). Event time is
   translated, not compressed: every `ts` (and the signed timestamp header, signed
   again) moves by one whole number of seconds so that the newest is "now" at produce
   time, the simulator's spacing kept; requests go out in `ts` order, each Kafka
   record's timestamp that of its (newest) request, so no event time runs ahead of its
   record timestamp (the worker's event-time reference, detector/eventtime.py);
2. baseline: a raw aiokafka consumer, `getmany` + `orjson.loads` over every message;
3. throughput: `--roles split` (the default) starts one `detector run --role ingest`
   and one `detector run --role shards` process, as a deployment runs; `--roles all`
   the single process. From fresh consumer groups, timed from the first processed
   request (start-up excluded) until all N are scored and published AND the shards
   have processed every envelope the ingest wrote (`events_per_s`: verdicts and
   behaviour applied); `ingest_events_per_s` is the ingest alone (verdicts produced);
4. latency: at `--latency-rate` requests/s, by default half of the `events_per_s` this
   run measured, for `--latency-seconds`: simulator traffic generated at that rate,
   its event time translated to start now, each request sent when the clock reaches
   its `ts` (the record's timestamp = `ts`); a consumer of `verdicts` takes each
   verdict's arrival minus its request's send time. `latency_offered_per_s` is the
   achieved rate (requests sent / the time sending took). The worker's histogram
   `detector_end_to_end_latency_seconds` over the same phase is reported beside it;
5. `--flood`: after the latency phase, `--flood-count` requests each from a new device,
   account and IP (agents/tools/flood.py) with a bot network inside, produced at once
   (the ingest reads them at its full rate): how long the ingest took, how far the
   shards fell behind and how long after the ingest's end they caught up, RSS, and
   whether the bot network was alerted;
6. the processes' peak RSS (VmHWM), the behaviour-state changelog written during the
   run (records and bytes, consumed back), and the records the shards dropped as late
   (`detector_late_records_total`: any is shown, none hidden).

Each process's /metrics is scraped every 0.5 s (SCRAPE_INTERVAL_S), no more: a scrape
costs the worker's event loop. What a scrape can miss is covered by the worker's own
gauges: `detector_event_loop_lag_max_seconds` holds the largest loop stall of the last
10-20 s (`loop_block_max_ms` is their max over the measured phases: throughput from
the first processed request on, latency, flood), `detector_entity_shard_lag_seconds`
the shards' lag at their last envelope (`shard_lag_max_s`).
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from agents.kafkaclient import PLAINTEXT, KafkaSecurity
from agents.tools.broker import EmbeddedBroker, free_port
from agents.tools.demo import EMBEDDED_WORKER_ENV, stop_process
from agents.tools.flood import ALERTED_TYPES, bot_entities, flood_requests
from agents.topics import ALERTS, CLIENT_REQUESTS, ENTITY_EVENTS, VERDICTS, create_topics
from detector.engine import DEFAULT_CONFIG, DetectionConfig
from detector.profile import ClientProfile
from detector.simulate import mixed, resign

LATENCY_METRIC = "detector_end_to_end_latency_seconds"
LOOP_LAG_METRIC = "detector_event_loop_lag_seconds"
ROOT = Path(__file__).resolve().parents[2]  # the checkout holding agents/ and detector/
ROLES = ("split", "all")
SCRAPE_INTERVAL_S = 0.5
LOOP_LAG_WINDOWS_S = 20.0  # what one reading of detector_event_loop_lag_max_seconds covers at most
CAUGHT_UP_LAG_S = 2.0


# --- event time ------------------------------------------------------------------------

def translate(events: list[dict[str, Any]], delta_s: int, profile: ClientProfile) -> None:
    """Move every request's event time by `delta_s` whole seconds, in place: `ts`, the
    signed timestamp header (then signed again), nothing else: the same traffic later."""
    if delta_s == 0:
        return
    ts_header = profile.signing.timestamp_header if profile.signing else None
    for i, e in enumerate(events):
        e["ts"] = round(e["ts"] + delta_s, 3)
        if ts_header is None:
            continue
        events[i] = _shifted(e, delta_s, ts_header, profile)


def _shifted(e: dict[str, Any], delta_s: int, ts_header: str, profile: ClientProfile) -> dict[str, Any]:
    """A request whose signed timestamp header moved by `delta_s` whole seconds, signed again."""
    headers = [list(h) for h in e["headers"]]
    for h in headers:
        if h[0].lower() == ts_header and h[1].isdigit():
            h[1] = str(int(h[1]) + delta_s)
    return resign(profile, {**e, "headers": headers})


def paced(events: list[dict[str, Any]], start: float, rate: float, profile: ClientProfile) -> None:
    """Re-time the requests, in place and in their order, to `rate` per second from
    `start`: each `ts`, and its signed timestamp header by the same whole seconds
    (then signed again), so that the signing age stays what the simulator gave."""
    ts_header = profile.signing.timestamp_header if profile.signing else None
    for i, e in enumerate(events):
        ts = round(start + i / rate, 3)
        delta = round(ts - e["ts"])
        e["ts"] = ts
        if ts_header is None or delta == 0:
            continue
        events[i] = _shifted(e, delta, ts_header, profile)


def ending_now(events: list[dict[str, Any]], profile: ClientProfile, now: float) -> None:
    """Translate so that the newest request is at (just before) `now`."""
    if events:
        translate(events, math.floor(now - max(e["ts"] for e in events)), profile)


def record_ms(chunk: list[dict[str, Any]]) -> int:
    """A record's timestamp: its newest request's `ts`, rounded up (never before it)."""
    return math.ceil(max(float(e["ts"]) for e in chunk) * 1000)


async def _produce(bootstrap: str, events: list[dict[str, Any]], batch: int) -> int:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, **_kw(), linger_ms=20, max_batch_size=1024 * 1024,
                         max_request_size=8 * 1024 * 1024)
    await p.start()
    messages = 0
    try:
        futures = []
        for i in range(0, len(events), batch):
            chunk = events[i:i + batch]
            value = orjson.dumps(chunk[0]) if batch == 1 else orjson.dumps(chunk)
            futures.append(await p.send(CLIENT_REQUESTS.name, value, timestamp_ms=record_ms(chunk)))
            messages += 1
            if len(futures) >= 5000:
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)
    finally:
        await p.stop()
    return messages


async def _baseline(bootstrap: str, n_requests: int, start: dict[int, int]) -> float:
    """Raw consume + parse of every message produced from `start`; requests per second."""
    # No consumer group (group_id=None): a group needs the coordinator, which a freshly
    # started Kafka may not have elected yet.
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, **_kw(), group_id=None, enable_auto_commit=False,
                         max_partition_fetch_bytes=8 * 1024 * 1024, fetch_max_wait_ms=100)
    await c.start()
    try:
        tps = [TopicPartition(CLIENT_REQUESTS.name, p) for p in sorted(start)]
        c.assign(tps)
        for tp in tps:
            c.seek(tp, start[tp.partition])
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


async def _end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    # the topic's partitions from a producer's metadata request for it: a consumer
    # without a subscription knows none on Apache Kafka (`topics()` does not update
    # the metadata `partitions_for_topic` reads), and the bench then waited forever
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, **_kw())
    await p.start()
    try:
        ids = sorted(await p.partitions_for(topic))
    finally:
        await p.stop()
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, **_kw(), group_id=None, enable_auto_commit=False)
    await c.start()
    try:
        ends = await c.end_offsets([TopicPartition(topic, p) for p in ids])
        return {tp.partition: int(o) for tp, o in ends.items()}
    finally:
        await c.stop()


async def _consume_volume(bootstrap: str, topic: str, start: dict[int, int], timeout: float = 300.0) -> tuple[int, int]:
    """(records, bytes of keys and values) of `topic` from `start` to its end now."""
    end = await _end_offsets(bootstrap, topic)
    todo = {p: o for p, o in end.items() if o > start.get(p, 0)}
    if not todo:
        return 0, 0
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, **_kw(), group_id=None, enable_auto_commit=False,
                         max_partition_fetch_bytes=16 * 1024 * 1024, fetch_max_wait_ms=100)
    await c.start()
    records = size = 0
    try:
        tps = [TopicPartition(topic, p) for p in todo]
        c.assign(tps)
        for tp in tps:
            c.seek(tp, start.get(tp.partition, 0))
        deadline = time.monotonic() + timeout
        while todo and time.monotonic() < deadline:
            for tp, msgs in (await c.getmany(timeout_ms=500, max_records=10000)).items():
                for m in msgs:
                    if m.offset < todo.get(tp.partition, -1):
                        records += 1
                        size += len(m.key or b"") + len(m.value or b"")
                if msgs and msgs[-1].offset + 1 >= todo.get(tp.partition, 0):
                    todo.pop(tp.partition, None)
        if todo:
            raise RuntimeError(f"{topic} could not be read to its end within {timeout:.0f} s")
    finally:
        await c.stop()
    return records, size


# --- the worker processes and their metrics -----------------------------------------------

def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
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


def histogram_bound(before: list[tuple[float, float]], after: list[tuple[float, float]]) -> float:
    """The upper bound of the highest bucket that gained an observation between two
    snapshots (every observation in between is at most this; inf when +Inf did)."""
    prev = dict(before)
    bound, below = 0.0, 0.0
    for le, count in after:
        gained = count - prev.get(le, 0.0)
        if gained > below:
            bound = le
        below = gained
    return bound


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def _proc_kb(pid: int, field_name: str) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    m = re.search(rf"{field_name}:\s+(\d+) kB", status)
    return int(m.group(1)) if m else 0.0


# the bench's Kafka clients connect with this (run_bench sets it; asyncio.run's tasks
# inherit it): SASL / TLS of a dedicated cluster, PLAINTEXT for the embedded broker
_security: contextvars.ContextVar[KafkaSecurity] = contextvars.ContextVar("bench_kafka_security", default=PLAINTEXT)


def _kw() -> dict[str, Any]:
    return _security.get().client_kwargs()


def _start_worker(bootstrap: str, web_port: int, workdir: Path, app_id: str, role: str) -> subprocess.Popen[bytes]:
    """A `detector run` process (`--role`, unless all) with the run's app id (fresh
    consumer groups), run in the bench's own directory so that Faust's data directory
    lands there."""
    env = {**os.environ, **EMBEDDED_WORKER_ENV, "DETECTOR_KAFKA_BOOTSTRAP": bootstrap,
           "DETECTOR_WEB_PORT": str(web_port), "DETECTOR_APP_ID": app_id,
           "APP_DATADIR": str(workdir / f"{role}-data"),
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    args = [sys.executable, "-m", "agents.cli", "run"] + ([] if role == "all" else ["--role", role])
    with open(workdir / f"worker-{role}.log", "ab") as log:  # the child has its own copy of the descriptor
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir,
                                start_new_session=True)


def _scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            body: bytes = r.read()
            return body.decode()
    except OSError:
        return None


@dataclass
class Reading:
    """The figures one scrape of one process gave, at `t` (perf_counter)."""

    t: float
    requests: float
    envelopes: float
    late: float
    future: float
    loop_lag_max: float
    shard_lag: float
    loop_lag: list[tuple[float, float]]
    latency: list[tuple[float, float]]
    batch_seconds: float

    @classmethod
    def of(cls, t: float, text: str) -> Reading:
        return cls(t, _metric(text, "detector_requests_total"), _metric(text, "detector_entity_envelopes_total"),
                   _metric(text, "detector_late_records_total"), _metric(text, "detector_future_events_total"),
                   _metric(text, "detector_event_loop_lag_max_seconds"),
                   _metric(text, "detector_entity_shard_lag_seconds"), _buckets(text, LOOP_LAG_METRIC),
                   _buckets(text, LATENCY_METRIC), _metric(text, "detector_batch_duration_seconds_sum"))


@dataclass
class Worker:
    role: str  # all, ingest or shards
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    readings: list[Reading] = field(default_factory=list)

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the {self.role} worker exited with {self.proc.returncode}; see {self.log}")

    @property
    def last(self) -> Reading | None:
        return self.readings[-1] if self.readings else None


class Scraper:
    """Scrapes every worker process every SCRAPE_INTERVAL_S (in a thread: the bench's
    own loop keeps serving its consumers) and keeps what each scrape read."""

    def __init__(self, workers: list[Worker]):
        self.workers = workers
        self.ingest = next(w for w in workers if w.role in ("all", "ingest"))
        self.shards = next(w for w in workers if w.role in ("all", "shards"))
        self.phases: list[tuple[float, float]] = []  # measured phases (perf_counter from, to)
        self.tick = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def run(self) -> None:
        while True:
            for w in self.workers:
                w.check()
                text = await asyncio.to_thread(_scrape, w.port)
                if text is not None:
                    w.readings.append(Reading.of(time.perf_counter(), text))
            self.tick.set()
            self.tick.clear()
            await asyncio.sleep(SCRAPE_INTERVAL_S)

    async def next(self) -> None:
        """Wait for the next round of scrapes (raises what stopped the scrapes: a worker
        that exited)."""
        assert self.task is not None, "start() first"
        tick = asyncio.ensure_future(self.tick.wait())
        await asyncio.wait({tick, self.task}, return_when=asyncio.FIRST_COMPLETED)
        if not tick.done():
            tick.cancel()
            self.task.result()  # raises its error
            raise RuntimeError("the scrapes stopped")

    async def until(self, done: Any, timeout: float, what: str) -> float:
        """Wait for a round of scrapes after which `done()` holds; its time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await asyncio.wait_for(self.next(), SCRAPE_INTERVAL_S * 4 + 10)
            if done():
                return time.perf_counter()
        raise RuntimeError(f"{what} within {timeout:.0f} s; see {self.ingest.log.parent}")

    def loop_block_max(self, w: Worker) -> float:
        """The largest loop stall of `w` in the measured phases. A reading covers up to
        LOOP_LAG_WINDOWS_S before it: a reading that reaches back before its phase is
        capped by the lag histogram over the phase (what it gained is at most that
        bucket's bound), so no stall of the start-up counts and none of a phase hides."""
        best = 0.0
        for start, end in self.phases:
            before = [r for r in w.readings if r.t <= start]
            inside = [r for r in w.readings if start < r.t <= end + SCRAPE_INTERVAL_S * 2]
            if not inside:
                continue
            bound = histogram_bound(before[-1].loop_lag if before else [], inside[-1].loop_lag)
            for r in inside:
                best = max(best, r.loop_lag_max if r.t - LOOP_LAG_WINDOWS_S >= start else min(r.loop_lag_max, bound))
        return best

    def shard_lag_max(self) -> float:
        return max((r.shard_lag for r in self.shards.readings), default=0.0)


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return int(r.status) == 200
    except OSError:  # not serving yet, or 503 (HTTPError is an OSError)
        return False


async def _wait_ready(w: Worker, timeout: float) -> None:
    """Wait until `w` is ready (/readyz; the shard role: its first assignment done and
    the assigned shards' state restored)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        w.check()
        if await asyncio.to_thread(_ready, w.port):
            return
        await asyncio.sleep(SCRAPE_INTERVAL_S)
    raise RuntimeError(f"the {w.role} worker was not ready within {timeout:.0f} s; see {w.log}")


# --- phases -----------------------------------------------------------------------------

async def _alert_watch(bootstrap: str, seen: dict[str, Any], stop: asyncio.Event) -> None:
    """Counts alert revisions as they arrive, notes the last arrival and the entities."""
    c = AIOKafkaConsumer(ALERTS.name, bootstrap_servers=bootstrap, **_kw(), group_id=None, auto_offset_reset="earliest",
                         fetch_max_wait_ms=50)
    await c.start()
    try:
        while not stop.is_set():
            batches = await c.getmany(timeout_ms=100)
            n = 0
            for msgs in batches.values():
                for m in msgs:
                    n += 1
                    try:
                        ent = orjson.loads(m.value).get("entity") or {}
                        seen["entities"].add((str(ent.get("type")), str(ent.get("id"))))
                    except (orjson.JSONDecodeError, AttributeError):
                        pass
            if n:
                seen["count"] += n
                seen["last"] = time.perf_counter()
    finally:
        await c.stop()


async def _envelopes_expected(bootstrap: str, start: dict[int, int]) -> int:
    end = await _end_offsets(bootstrap, ENTITY_EVENTS.name)
    return sum(o - start.get(p, 0) for p, o in end.items())


async def _caught_up(scraper: Scraper, bootstrap: str, envelopes_start: dict[int, int], timeout: float,
                     shards_base: float = 0.0) -> float:
    """The time of the first scrape at which the shards had processed (beyond
    `shards_base`) every envelope written since `envelopes_start`: read once the ingest
    is done, so nothing is added meanwhile."""
    expected = await _envelopes_expected(bootstrap, envelopes_start)

    def done() -> bool:
        last = scraper.shards.last
        return last is not None and last.envelopes - shards_base >= expected
    if done():
        return scraper.shards.readings[-1].t
    return await scraper.until(done, timeout, f"the shards did not process {expected} envelopes")


@dataclass
class Throughput:
    events_per_s: float  # end to end: verdicts and behaviour applied
    ingest_events_per_s: float  # the ingest alone: verdicts produced
    method: str  # how it was timed: "wall" or "batch_time"
    start_t: float  # the last scrape before the first processed request
    first_t: float
    done_t: float
    end_t: float


async def _throughput(scraper: Scraper, bootstrap: str, n_requests: int, timeout: float,
                      envelopes_start: dict[int, int], requests_base: float = 0.0,
                      shards_base: float = 0.0) -> Throughput:
    """From the ingest's first processed request (beyond `requests_base`) until all N
    are scored and published and the shards processed every envelope written since
    `envelopes_start` (beyond `shards_base`). The phase is noted for loop_block_max."""
    ing = scraper.ingest

    def processed(r: Reading | None) -> float:
        return 0.0 if r is None else r.requests - requests_base
    await scraper.until(lambda: processed(ing.last) > 0, timeout, "the worker processed no request")
    first = ing.readings[-1]
    before = next((r for r in reversed(ing.readings) if processed(r) <= 0), None)
    first_t, first_n = first.t, processed(first)
    start_t = before.t if before is not None else first_t
    scraper.phases.append((start_t, math.inf))
    done_t = first_t if first_n >= n_requests else await scraper.until(
        lambda: processed(ing.last) >= n_requests, timeout, f"the worker did not process {n_requests} requests")
    end_t = max(done_t, await _caught_up(scraper, bootstrap, envelopes_start, timeout, shards_base))
    scraper.phases[-1] = (start_t, end_t)
    if n_requests - first_n >= 0.5 * n_requests:
        return Throughput((n_requests - first_n) / max(end_t - first_t, 1e-6),
                          (n_requests - first_n) / max(done_t - first_t, 1e-6), "wall", start_t, first_t, done_t, end_t)
    # Too few requests to time between scrapes (a small N fits in one or two): the
    # ingest's own time spent in batches; end to end, from when the ingest began at
    # that pace until the shards caught up (on the wall clock)
    last = ing.readings[-1]
    busy = last.batch_seconds - (before.batch_seconds if before is not None else 0.0)
    ingest_rate = n_requests / busy if busy > 0 else 0.0
    began = first_t - (first_n / ingest_rate if ingest_rate else 0.0)
    return Throughput(n_requests / max(end_t - began, busy, 1e-6), ingest_rate, "batch_time", start_t, first_t,
                      done_t, end_t)


async def _latency(scraper: Scraper, bootstrap: str, events: list[dict[str, Any]], batch: int,
                   profile: ClientProfile, rate: float) -> dict[str, Any]:
    """Sends `events` at `rate` (re-timed to it from now, see `paced`), each when the
    clock reaches its `ts`, and measures each verdict's arrival at a consumer of
    `verdicts` from its request's send time."""
    consumer = AIOKafkaConsumer(VERDICTS.name, bootstrap_servers=bootstrap, **_kw(), group_id=None,
                                auto_offset_reset="latest", fetch_max_wait_ms=10)
    await consumer.start()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **_kw(), linger_ms=1, max_request_size=8 * 1024 * 1024)
    await producer.start()
    latencies: list[float] = []
    sent_at: dict[str, float] = {}
    wanted = {e["request_id"] for e in events}
    before = scraper.ingest.last
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
                        if v.get("revision"):  # a shard's revision of a verdict (a replay): not the request's own
                            continue
                        t = sent_at.pop(v["request_id"], None)  # each request's verdict counted once
                        if t is not None and v["request_id"] in wanted:
                            latencies.append(now - t)

        receiver = asyncio.create_task(receive())
        paced(events, time.time() + 0.5, rate, profile)
        phase_start = time.perf_counter()
        sent = 0
        futures = []
        first_send = None
        while sent < len(events):
            ahead = events[sent]["ts"] - time.time()
            if ahead > 0:
                await asyncio.sleep(ahead)
            now = time.time()
            chunk = [events[sent]]
            while len(chunk) < batch and sent + len(chunk) < len(events) and events[sent + len(chunk)]["ts"] <= now:
                chunk.append(events[sent + len(chunk)])
            first_send = first_send or time.monotonic()
            for e in chunk:
                sent_at[e["request_id"]] = now
            futures.append(await producer.send(CLIENT_REQUESTS.name, orjson.dumps(chunk[0] if batch == 1 else chunk),
                                               timestamp_ms=record_ms(chunk)))
            sent += len(chunk)
        await asyncio.gather(*futures)
        offered_s = time.monotonic() - (first_send or time.monotonic())
        try:
            await asyncio.wait_for(receiver, 30)
        except TimeoutError:
            pass
        await scraper.next()
        scraper.phases.append((phase_start, time.perf_counter()))
        after = scraper.ingest.last
    finally:
        await producer.stop()
        await consumer.stop()

    def ms(x: float | None) -> float | None:
        return None if x is None else round(x * 1000, 1)

    hb, ha = (before.latency if before else []), (after.latency if after else [])
    return {
        "latency_p50_ms": ms(_quantile(latencies, 0.50)),
        "latency_p99_ms": ms(_quantile(latencies, 0.99)),
        "latency_max_ms": ms(max(latencies) if latencies else None),
        "latency_requests": len(latencies),
        "latency_offered_per_s": round(len(events) / offered_s, 1) if offered_s > 0 else None,
        "worker_latency_p50_ms": ms(histogram_quantile(0.50, hb, ha)),
        "worker_latency_p99_ms": ms(histogram_quantile(0.99, hb, ha)),
    }


async def _flood(scraper: Scraper, bootstrap: str, profile: ClientProfile, detection: DetectionConfig, count: int,
                 seed: int, rate: float, alerts: dict[str, Any], timeout: float) -> dict[str, Any]:
    """`count` new-entity requests with a bot network inside, produced at once; the
    flood's event time runs at the ingest's measured rate and ends now."""
    bots = max(300, count // 100)
    events = flood_requests(profile, count, seed + 2, rate, 0.0, catalogue=detection.catalogue, bots=bots)
    ending_now(events, profile, time.time())
    bot_ids = bot_entities(events, profile)
    envelopes_start = await _end_offsets(bootstrap, ENTITY_EVENTS.name)
    await scraper.next()
    requests_base = scraper.ingest.last.requests if scraper.ingest.last else 0.0
    shards_base = scraper.shards.last.envelopes if scraper.shards.last else 0.0
    t = time.perf_counter()
    await _produce(bootstrap, events, 1)
    produce_s = time.perf_counter() - t
    tp = await _throughput(scraper, bootstrap, len(events), timeout, envelopes_start, requests_base, shards_base)
    quiet_until = time.monotonic() + 10
    while time.monotonic() < quiet_until and not (bot_ids & alerts["entities"]):
        await asyncio.sleep(0.2)
    alerted = sorted({typ for typ, _ in bot_ids & alerts["entities"]})
    lag_max = max((r.shard_lag for r in scraper.shards.readings if r.t >= tp.first_t), default=0.0)
    return {
        "flood_requests": len(events),
        "flood_bot_requests": bots,
        "flood_produce_s": round(produce_s, 1),
        # from the last scrape before its first request was processed: at most one
        # scrape interval more than it took
        "flood_duration_s": round(tp.done_t - tp.start_t, 1),
        "flood_ingest_events_per_s": round(tp.ingest_events_per_s),
        "flood_shard_lag_max_s": round(lag_max, 2),
        "shard_catchup_s": round(max(0.0, tp.end_t - tp.done_t), 1),
        "flood_rss_mb": {w.role: round(_proc_kb(w.proc.pid, "VmRSS") / 1024, 1) for w in scraper.workers},
        "flood_bot_alerted": bool(alerted),
        "flood_bot_alerted_types": [a for a in alerted if a in ALERTED_TYPES],
    }


async def _run(n: int, batch: int, bootstrap: str | None, seed: int, latency_rate: float | None,
               latency_seconds: float, workdir: Path | None = None, roles: str = "split",
               flood: int = 0) -> dict[str, Any]:
    if roles not in ROLES:
        raise ValueError(f"roles must be one of {ROLES}, got {roles!r}")
    t_start = time.monotonic()
    workdir = workdir or Path(tempfile.mkdtemp(prefix="detector-bench-"))
    broker = None
    if bootstrap is None:
        broker = EmbeddedBroker(log_path=workdir / "broker.log").start()
        bootstrap = broker.bootstrap
    workers: list[Worker] = []
    scraper: Scraper | None = None
    alerts: dict[str, Any] = {"count": 0.0, "last": 0.0, "entities": set()}
    stop_alerts = asyncio.Event()
    watcher: asyncio.Task[None] | None = None
    result: dict[str, Any] = {}
    try:
        await create_topics(bootstrap, partitions=4, security=_security.get())
        detection = DetectionConfig.load(DEFAULT_CONFIG, secrets=os.environ.get)  # profiles' {env: NAME} secrets
        profile = detection.profiles[detection.default_profile]
        events = mixed(profile, n, seed, catalogue=detection.catalogue)
        requests_start = await _end_offsets(bootstrap, CLIENT_REQUESTS.name)
        envelopes_start = await _end_offsets(bootstrap, ENTITY_EVENTS.name)
        app_id = f"bench-{time.time_ns()}"
        changelog = f"{app_id}-behaviour-state-changelog"
        t = time.perf_counter()
        ending_now(events, profile, time.time())
        messages = await _produce(bootstrap, events, batch)
        produce_s = time.perf_counter() - t
        baseline = await _baseline(bootstrap, n, requests_start)
        # split: the shards first, and the ingest once they are ready (else a
        # small N is scored before they run, and their start-up is timed as their work)
        for role in (("shards", "ingest") if roles == "split" else ("all",)):
            port = free_port()
            workers.append(Worker(role, _start_worker(bootstrap, port, workdir, app_id, role), port,
                                  workdir / f"worker-{role}.log"))
            if role == "shards":
                await _wait_ready(workers[-1], 90.0)
        scraper = Scraper(workers)
        scraper.start()
        watcher = asyncio.create_task(_alert_watch(bootstrap, alerts, stop_alerts))
        timeout = max(120.0, n / 500)
        worker = await _throughput(scraper, bootstrap, n, timeout, envelopes_start)
        # Alerts come from the shards, which join their group a few seconds after the
        # ingest (a small N is scored before they run): wait for the first (the simulated
        # library always raises some), then for quiet. Not part of the timing.
        quiet, waited_until = 2.0, time.monotonic() + 45
        while time.monotonic() < waited_until and (
                alerts["count"] == 0 or time.perf_counter() - max(alerts["last"], worker.end_t) < quiet):
            await asyncio.sleep(0.1)
        alerts_lag = max(0.0, alerts["last"] - worker.end_t)
        n_alerts = int(alerts["count"])
        rate = max(1.0, latency_rate if latency_rate is not None else 0.5 * worker.events_per_s)
        n_latency = max(1, int(rate * latency_seconds))
        # The throughput phase's kind of traffic (the simulator's default pace, about
        # 15 requests per handset), in its order, at the phase's rate: traffic generated
        # at that rate instead packs those requests into seconds per handset
        probe = mixed(profile, n_latency, seed + 1, catalogue=detection.catalogue)
        for i, e in enumerate(probe):
            e["request_id"] = f"bench-latency-{i:08d}"
        latency = await _latency(scraper, bootstrap, probe, batch, profile, rate)
        flooded = {}
        if flood:
            flooded = await _flood(scraper, bootstrap, profile, detection, flood, seed, worker.ingest_events_per_s,
                                   alerts, max(300.0, flood / 200))
        # every envelope processed before the final figures (late records included)
        await _caught_up(scraper, bootstrap, envelopes_start, timeout)
        rss = {w.role: round(_proc_kb(w.proc.pid, "VmHWM") / 1024, 1) for w in workers}
        loop_max = {w.role: round(scraper.loop_block_max(w) * 1000, 1) for w in workers}
        late = sum(w.last.late for w in workers if w.role != "ingest" and w.last is not None)
        future = sum(w.last.future for w in workers if w.role != "shards" and w.last is not None)
        shard_lag_max = scraper.shard_lag_max()
        changelog_records, changelog_bytes = await _consume_volume(bootstrap, changelog, {})
        result = {
            "roles": roles,
            "requests": n,
            "messages": messages,
            "batch": batch,
            "broker": "embedded" if broker is not None else bootstrap,
            "events_per_s": round(worker.events_per_s),
            "ingest_events_per_s": round(worker.ingest_events_per_s),
            "baseline_events_per_s": round(baseline),
            "ratio": round(worker.events_per_s / baseline, 4),
            "ingest_ratio": round(worker.ingest_events_per_s / baseline, 4),
            "throughput_timing": worker.method,
            "late_records": int(late),
            "future_events": int(future),
            "alerts": n_alerts,
            "alerts_lag_s": round(alerts_lag, 2),
            "latency_rate": round(rate, 1),
            **latency,
            "loop_block_max_ms": max(loop_max.values()),
            "loop_block_max_ms_per_process": loop_max,
            "shard_lag_max_s": round(shard_lag_max, 2),
            "rss_mb": round(sum(rss.values()), 1),
            "rss_mb_per_process": rss,
            "changelog_records": changelog_records,
            "changelog_bytes": changelog_bytes,
            **flooded,
            "produce_s": round(produce_s, 1),
            "elapsed_s": round(time.monotonic() - t_start, 1),
            "cpus": os.cpu_count(),
            "logs": str(workdir),
        }
    finally:
        stop_alerts.set()
        if watcher is not None:
            try:
                await asyncio.wait_for(watcher, 10)
            except (TimeoutError, Exception):  # noqa: BLE001 - the run's own error matters
                pass
        if scraper is not None:
            await scraper.stop()
        for w in workers:
            stop_process(w.proc)
        if broker is not None:
            broker.stop()
    return result


def run_bench(n: int = 100_000, batch: int = 1, bootstrap: str | None = None, seed: int = 1,
              latency_rate: float | None = None, latency_seconds: float = 10.0,
              log_dir: str | None = None, roles: str = "split", flood: int = 0,
              security: KafkaSecurity = PLAINTEXT) -> dict[str, Any]:
    """`security`: how the bench's own clients reach a dedicated `bootstrap` (the
    workers it starts read the same DETECTOR_KAFKA_* variables). The logs (and the
    workers' Faust data directories) go to `log_dir`, else to a
    temporary directory removed after a run that completed (agents/tools/rundir.py); their
    place is printed on stderr at the start and the end. `latency_rate` None: half of
    the end-to-end throughput the run measured. `flood` > 0: the flood phase with that
    many new-entity requests."""
    from agents.tools.rundir import RunDir

    run_dir = RunDir("bench", log_dir)
    print(f"detector bench: logs in {run_dir.path}", file=sys.stderr, flush=True)
    ok = False
    try:
        _security.set(security if bootstrap is not None else PLAINTEXT)
        result = asyncio.run(_run(n, batch, bootstrap, seed, latency_rate, latency_seconds, run_dir.path,
                                  roles, flood))
        ok = True
        return result
    finally:
        print(f"detector bench: {run_dir.finish(ok)}", file=sys.stderr, flush=True)
