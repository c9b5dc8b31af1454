"""Webhook delivery with real peers: a real worker process against a real broker, an
aiohttp receiver in the test process that fails, flaps, throttles with Retry-After
and times out, and a real Alertmanager. Assertions read what the receivers got and the
`alerts-dlq` topic, never the worker's internals."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import shutil
import subprocess
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any, Awaitable, Callable

import orjson
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from agents.tools.broker import free_port
from agents.tools.demo import stop_process
from agents.topics import ALERTS, ALERTS_DLQ, create_topics
from agents.webhooks import write_config_with_webhooks
from detector.alerts import iso
from detector.engine import DEFAULT_CONFIG

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.timeout(300)]
SECRET = "s3cret-for-tests"
BODY_MARKER = "internal-stack-trace-of-the-receiver"
ALERTMANAGER = "/usr/bin/prometheus-alertmanager"


def make_alert(i: int, revision: int = 1, severity: str = "medium", window_start: float | None = None) -> dict[str, Any]:
    start = window_start if window_start is not None else 1_763_805_600 + 300 * i
    return {
        "schema": "alert/1", "alert_id": hashlib.sha256(f"test|{i}".encode()).hexdigest()[:32], "revision": revision,
        "rule": "entity.flagged_requests", "created_at": iso(start + 1), "updated_at": iso(start + 2 + revision),
        "severity": severity, "entity": {"type": "device", "id": f"dev-{i}"},
        "codes": ["signature.unknown_key", "ua.retired_version"], "score": 0.97,
        "summary": f"device dev-{i}: {3 * revision} flagged requests in a 5-minute window",
        "window": {"start": iso(start), "end": iso(start + 300)}, "count": 3 * revision,
        "evidence": {"code_counts": {"signature.unknown_key": 3}}, "sample_request_ids": [f"r-{i}-1", f"r-{i}-2"],
    }


Handler = Callable[[web.Request, int], Awaitable[web.StreamResponse]]


class Receiver:
    """A real HTTP receiver: per path a behaviour, given the request and how many
    times this path has seen this Idempotency-Key before. Records every request."""

    def __init__(self, behaviours: dict[str, Handler]):
        self.behaviours = behaviours
        self.seen: list[dict[str, Any]] = []
        self.counts: dict[tuple[str, str], int] = defaultdict(int)
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        key = request.headers.get("Idempotency-Key", "")
        n = self.counts[(request.path, key)]
        self.counts[(request.path, key)] += 1
        entry = {"path": request.path, "key": key, "body": body, "headers": dict(request.headers), "at": time.monotonic(),
                 "status": None}
        self.seen.append(entry)
        resp = await self.behaviours[request.path](request, n)
        entry["status"] = resp.status
        return resp

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def delivered(self, path: str) -> dict[str, list[bytes]]:
        """Idempotency-Key -> bodies of the requests answered 2xx at this path."""
        out: dict[str, list[bytes]] = defaultdict(list)
        for e in self.seen:
            if e["path"] == path and e["status"] is not None and 200 <= e["status"] < 300:
                out[e["key"]].append(e["body"])
        return out

    def at(self, path: str) -> list[dict[str, Any]]:
        return [e for e in self.seen if e["path"] == path]


async def ok(request: web.Request, n: int) -> web.Response:
    return web.json_response({"ok": True})


def worker_config(tmp_path: Path, endpoints: list[dict[str, Any]]) -> dict[str, str]:
    path = write_config_with_webhooks(DEFAULT_CONFIG, endpoints, tmp_path / "detector.yaml")
    return {"DETECTOR_CONFIG": str(path), "TEST_WEBHOOK_SECRET": SECRET}


def endpoint(name: str, url: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "url": url, "secret": {"env": "TEST_WEBHOOK_SECRET"}, "timeout_s": 2, "backoff_s": 0.2,
            "backoff_max_s": 2, **kw}


async def produce_alerts(bootstrap: str, alerts: list[dict[str, Any]]) -> None:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await p.start()
    try:
        for a in alerts:
            await p.send_and_wait(ALERTS.name, orjson.dumps(a), key=a["alert_id"].encode())
    finally:
        await p.stop()


async def read_topic(bootstrap: str, topic: str, seconds: float = 2.0) -> list[dict[str, Any]]:
    c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest")
    await c.start()
    out: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for msgs in (await c.getmany(timeout_ms=250)).values():
                out.extend(orjson.loads(m.value) for m in msgs)
    finally:
        await c.stop()
    return out


async def wait_until(cond: Callable[[], bool], timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        await asyncio.sleep(0.25)
    tail = log.read_text(errors="replace")[-4000:] if log is not None and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


def verify(entry: dict[str, Any]) -> bool:
    """What a receiver does (docs/alerts.md): recompute the HMAC over "<timestamp>.<body>"."""
    h = entry["headers"]
    mac = hmac.new(SECRET.encode(), h["X-Detector-Timestamp"].encode() + b"." + entry["body"], hashlib.sha256)
    return hmac.compare_digest(h["X-Detector-Signature"], "sha256=" + mac.hexdigest())


def metrics_text(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return r.read().decode()
    except OSError:
        return ""


async def test_deliveries_are_signed_retried_with_backoff_and_dead_lettered(broker, worker_factory, tmp_path):
    async def flaky(request: web.Request, n: int) -> web.Response:
        # 500, 500, then 429 asking for 1.5 s, then accepted
        if n < 2:
            return web.Response(status=500, text="boom")
        if n == 2:
            return web.Response(status=429, headers={"Retry-After": "1.5"})
        return web.json_response({"ok": True})

    flap_state = {"n": 0}

    async def flapping(request: web.Request, n: int) -> web.Response:
        flap_state["n"] += 1
        return web.Response(status=503) if flap_state["n"] % 2 else web.json_response({"ok": True})

    async def reject(request: web.Request, n: int) -> web.Response:
        return web.Response(status=422, reason="Go Away", text=f"unprocessable {BODY_MARKER}")

    async def slow(request: web.Request, n: int) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response({"ok": True})

    rx = await Receiver({"/ok": ok, "/flaky": flaky, "/flap": flapping, "/reject": reject, "/slow": slow,
                         "/critical-only": ok, "/slack": ok}).start()
    try:
        await create_topics(broker.bootstrap, partitions=4)
        env = worker_config(tmp_path, [
            endpoint("ok", rx.url("/ok")),
            endpoint("flaky", rx.url("/flaky"), max_attempts=6, breaker_failures=100),
            endpoint("flap", rx.url("/flap"), max_attempts=10, breaker_failures=100),
            endpoint("reject", rx.url("/reject")),
            endpoint("slow", rx.url("/slow"), timeout_s=0.5, max_attempts=2),
            endpoint("critical-only", rx.url("/critical-only"), min_severity="critical"),
            endpoint("slack", rx.url("/slack"), format="slack", min_severity="high"),
        ])
        _, port = worker_factory(**env)
        alerts = [make_alert(0), make_alert(0, revision=2, severity="high"), make_alert(1), make_alert(2)]
        keys = {f"{a['alert_id']}:{a['revision']}" for a in alerts}
        await produce_alerts(broker.bootstrap, alerts)
        log = tmp_path / "worker.log"
        dlq: list[dict[str, Any]] = []

        async def all_done() -> bool:
            nonlocal dlq
            if not all(set(rx.delivered(p)) == keys for p in ("/ok", "/flaky", "/flap")):
                return False
            dlq = await read_topic(broker.bootstrap, ALERTS_DLQ.name, 1.0)
            return len(dlq) >= 8

        deadline = time.monotonic() + 120
        while not await all_done():
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-4000:]
            await asyncio.sleep(1)

        by_key = {f"{a['alert_id']}:{a['revision']}": a for a in alerts}
        for e in rx.seen:
            assert verify(e), e["headers"]
            assert e["headers"]["Content-Type"] == "application/json"
            assert abs(int(e["headers"]["X-Detector-Timestamp"]) - time.time()) < 300
            if e["path"] == "/slack":
                msg = orjson.loads(e["body"])
                assert by_key[e["key"]]["summary"] in msg["text"] and msg["blocks"]
            else:
                assert orjson.loads(e["body"]) == by_key[e["key"]]  # the generic body is the Alert itself
        # retried on 5xx and 429, with Retry-After honoured
        for key in keys:
            tries = [e for e in rx.at("/flaky") if e["key"] == key]
            assert [t["status"] for t in tries] == [500, 500, 429, 200]
            assert tries[3]["at"] - tries[2]["at"] >= 1.4
        # never retried on another 4xx; timeouts retried up to max_attempts
        assert sorted(e["key"] for e in rx.at("/reject")) == sorted(keys)
        assert sorted(e["key"] for e in rx.at("/slow")) == sorted(list(keys) * 2)  # max_attempts=2
        assert rx.at("/critical-only") == []  # filtered by severity
        assert [e["key"] for e in rx.at("/slack")] == [f"{alerts[1]['alert_id']}:2"]  # the one high alert
        assert len(dlq) == 8, dlq
        rejected = [d for d in dlq if d["endpoint"] == "reject"]
        failed = [d for d in dlq if d["endpoint"] == "slow"]
        assert {f"{d['alert']['alert_id']}:{d['alert']['revision']}" for d in rejected} == keys
        assert all(d["outcome"] == "rejected" and d["reason"] == "HTTP 422 Unprocessable Entity" and d["attempts"] == 1
                   for d in rejected)
        # only a status line of a response is kept: its body (or own reason phrase) is in no log or DLQ record
        assert BODY_MARKER not in log.read_text(errors="replace") and "Go Away" not in log.read_text(errors="replace")
        assert not any(BODY_MARKER in orjson.dumps(d).decode() for d in dlq)
        assert all(d["outcome"] == "failed" and "timeout" in d["reason"] and d["attempts"] == 2 for d in failed)

        text = ""
        for _ in range(20):
            text = metrics_text(port)
            if 'detector_webhook_deliveries_total{endpoint="flap",outcome="delivered"} 4.0' in text:
                break
            await asyncio.sleep(0.5)
        for name, outcome, n in [("ok", "delivered", 4), ("flaky", "delivered", 4), ("flap", "delivered", 4),
                                 ("reject", "rejected", 4), ("slow", "failed", 4), ("critical-only", "delivered", 0),
                                 ("slack", "delivered", 1)]:
            assert f'detector_webhook_deliveries_total{{endpoint="{name}",outcome="{outcome}"}} {n}.0' in text, text[-3000:]
    finally:
        await rx.stop()


async def test_worker_killed_mid_delivery_delivers_every_alert_after_restart(broker, worker_factory, tmp_path):
    async def slowish(request: web.Request, n: int) -> web.Response:
        await asyncio.sleep(0.2)
        return web.json_response({"ok": True})

    rx = await Receiver({"/hook": slowish}).start()
    try:
        await create_topics(broker.bootstrap, partitions=4)
        env = worker_config(tmp_path, [endpoint("hook", rx.url("/hook"), concurrency=1)])
        proc, _ = worker_factory(**env)
        alerts = [make_alert(i) for i in range(60)]
        keys = {f"{a['alert_id']}:{a['revision']}" for a in alerts}
        await produce_alerts(broker.bootstrap, alerts)
        log = tmp_path / "worker.log"
        await wait_until(lambda: len(rx.delivered("/hook")) >= 10, 60, "the first deliveries", log)
        proc.kill()  # SIGKILL mid-delivery: nothing is flushed or committed on the way out
        proc.wait(10)
        before = len(rx.delivered("/hook"))
        assert before < len(keys), "the worker finished before it was killed: the test proves nothing"
        worker_factory(**env)
        await wait_until(lambda: set(rx.delivered("/hook")) == keys, 120, "every alert after the restart", log)
        await asyncio.sleep(2)  # duplicates, if any, would arrive now
        for key, bodies in rx.delivered("/hook").items():
            assert len(set(bodies)) == 1, f"{key} delivered with different content"
        print(f"\n[{broker.tier}] {before} of {len(keys)} delivered before SIGKILL; "
              f"{sum(len(b) for b in rx.delivered('/hook').values()) - len(keys)} duplicate deliveries after restart")
    finally:
        await rx.stop()


async def test_alerts_arrive_after_a_receiver_outage(broker, worker_factory, tmp_path):
    port = free_port()
    rx = Receiver({"/hook": ok})
    rx.port = port
    await create_topics(broker.bootstrap, partitions=4)
    env = worker_config(tmp_path, [endpoint("hook", rx.url("/hook"), breaker_failures=3, breaker_reset_s=2,
                                            backoff_max_s=4, max_attempts=8)])
    worker_factory(**env)
    alerts = [make_alert(i) for i in range(20)]
    await produce_alerts(broker.bootstrap, alerts)
    await asyncio.sleep(20)  # the receiver is down (connection refused) for 20 s
    await rx.start()
    try:
        keys = {f"{a['alert_id']}:{a['revision']}" for a in alerts}
        await wait_until(lambda: set(rx.delivered("/hook")) == keys, 60, "every alert after the outage",
                         tmp_path / "worker.log")
        assert await read_topic(broker.bootstrap, ALERTS_DLQ.name, 1.0) == []
    finally:
        await rx.stop()


@pytest.fixture
def alertmanager(tmp_path):
    if not Path(ALERTMANAGER).exists() and not shutil.which("prometheus-alertmanager"):
        pytest.skip("prometheus-alertmanager is not installed (make test-deps)")
    port = free_port()
    cfg = tmp_path / "alertmanager.yml"
    cfg.write_text("route:\n  receiver: blackhole\nreceivers:\n  - name: blackhole\n")
    with open(tmp_path / "alertmanager.log", "wb") as log:  # the child has its own copy
        proc = subprocess.Popen([ALERTMANAGER, f"--config.file={cfg}", f"--storage.path={tmp_path / 'am-data'}",
                                 f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
                                stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/-/ready", timeout=1):
                break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        raise AssertionError((tmp_path / "alertmanager.log").read_text())
    yield base
    stop_process(proc, grace=5)


def am_alerts(base: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{base}/api/v2/alerts", timeout=5) as r:
        return orjson.loads(r.read())


async def test_alertmanager_receives_open_alerts_and_repeats_them(broker, worker_factory, tmp_path, alertmanager):
    await create_topics(broker.bootstrap, partitions=4)
    env = worker_config(tmp_path, [endpoint("am", f"{alertmanager}/api/v2/alerts", format="alertmanager",
                                            repeat_interval_s=2)])
    _, port = worker_factory(**env)
    now = time.time()
    open_alert = make_alert(1, severity="high", window_start=now - 10)  # window ends in ~5 min
    closed_alert = make_alert(2, window_start=now - 3600)  # window ended an hour ago
    await produce_alerts(broker.bootstrap, [open_alert, closed_alert])

    found: dict[str, Any] = {}

    def seen() -> bool:
        for a in am_alerts(alertmanager):
            found[a["labels"]["alert_id"]] = a
        return open_alert["alert_id"] in found

    await wait_until(seen, 60, "the alert in Alertmanager", tmp_path / "worker.log")
    a = found[open_alert["alert_id"]]
    assert a["labels"]["alertname"] == "ImpersonatingClient"
    assert a["labels"]["severity"] == "high" and a["labels"]["entity_id"] == "dev-1"
    assert a["annotations"]["summary"] == open_alert["summary"]
    assert a["status"]["state"] == "active"
    # the closed alert was pushed with endsAt in the past: resolved, so not listed as active
    assert closed_alert["alert_id"] not in found
    first_update = a["updatedAt"]
    # pushes repeat while the alert is open (Alertmanager would otherwise resolve it)
    await wait_until(lambda: any(x["labels"]["alert_id"] == open_alert["alert_id"] and x["updatedAt"] != first_update
                                 for x in am_alerts(alertmanager)), 30, "a repeated push")
    text = metrics_text(port)
    assert 'detector_webhook_deliveries_total{endpoint="am",outcome="delivered"} 2.0' in text


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one series in a /metrics page (labels in declaration order)."""
    sel = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{sel}}} "):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_a_dead_endpoint_is_visible_within_seconds_and_refused_addresses_are_never_contacted(
        broker, worker_factory, tmp_path):
    """Issue 11: a dead endpoint stayed invisible for hours (the breaker spent one
    attempt per reset period, so `failed` stayed 0). Now its breaker state, pending
    deliveries and held-back attempts show at once, without an attempt being spent
    by waiting. And an endpoint whose address the policy refuses (the cloud-metadata
    address; loopback with deny_private) is never connected to: its deliveries go to
    alerts-dlq at once with reason address_refused."""
    rx = await Receiver({"/ok": ok, "/private": ok}).start()
    try:
        await create_topics(broker.bootstrap, partitions=4)
        dead_port = free_port()  # nothing listens: connection refused
        env = worker_config(tmp_path, [
            endpoint("dead", f"http://127.0.0.1:{dead_port}/hook", breaker_failures=2, breaker_reset_s=2,
                     max_attempts=50),
            endpoint("metadata", f"http://169.254.169.254:{rx.port}/latest/meta-data/"),
            endpoint("private", rx.url("/private"), deny_private=True),
            endpoint("ok", rx.url("/ok")),
        ])
        _, port = worker_factory(**env)
        log = tmp_path / "worker.log"
        alerts = [make_alert(i) for i in range(10)]
        keys = {f"{a['alert_id']}:{a['revision']}" for a in alerts}
        await produce_alerts(broker.bootstrap, alerts)
        started = time.monotonic()
        text = ""

        def dead_visible() -> bool:
            nonlocal text
            text = metrics_text(port)
            return ((metric(text, "detector_webhook_breaker_state", endpoint="dead") or 0) > 0
                    and (metric(text, "detector_webhook_attempts_total", endpoint="dead", result="breaker_open") or 0) > 0
                    and metric(text, "detector_webhook_pending_deliveries", endpoint="dead") == 10)

        await wait_until(dead_visible, 90, "the dead endpoint in the metrics", log)
        visible_after = time.monotonic() - started
        assert (metric(text, "detector_webhook_attempts_total", endpoint="dead", result="network_error") or 0) >= 2
        assert metric(text, "detector_webhook_deliveries_total", endpoint="dead", outcome="failed") == 0
        await wait_until(lambda: set(rx.delivered("/ok")) == keys, 60, "the healthy endpoint's deliveries", log)
        assert metric(metrics_text(port), "detector_webhook_breaker_state", endpoint="ok") == 0

        dlq: list[dict[str, Any]] = []
        deadline = time.monotonic() + 60
        while len(dlq) < 20:
            assert time.monotonic() < deadline, (dlq, log.read_text(errors="replace")[-3000:])
            dlq = await read_topic(broker.bootstrap, ALERTS_DLQ.name, 1.0)
        for name, why in (("metadata", "169.254.169.254 (cloud_metadata)"), ("private", "127.0.0.1 (private)")):
            records = [d for d in dlq if d["endpoint"] == name]
            assert {f"{d['alert']['alert_id']}:{d['alert']['revision']}" for d in records} == keys
            assert all(d["outcome"] == "rejected" and d["attempts"] == 1 and d["reason"].startswith("address_refused")
                       and why in d["reason"] for d in records), records[0]
        assert rx.at("/private") == [] and rx.at("/latest/meta-data/") == []
        assert {d["endpoint"] for d in dlq} == {"metadata", "private"}  # nothing of the dead endpoint is lost
        text = metrics_text(port)
        assert metric(text, "detector_webhook_attempts_total", endpoint="metadata", result="address_refused") == 10
        assert metric(text, "detector_webhook_deliveries_total", endpoint="private", outcome="rejected") == 10
        print(f"\n[{broker.tier}] dead endpoint visible (breaker open, deliveries held back) after {visible_after:.1f} s")
    finally:
        await rx.stop()
