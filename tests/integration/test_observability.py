"""A real check of the dashboards: Debian's Prometheus scrapes a real worker (on the
embedded broker) every second while simulated traffic flows, bad input included;
then every panel's PromQL of every dashboard, with its template variables and
Grafana's macros expanded, runs against Prometheus's HTTP API and must return data.
The alerting rules are loaded into the same Prometheus and must evaluate without
error. The worker's log must be one JSON object per line.

Prometheus comes from Debian's `prometheus` package (`make test-deps`, run by
`make test`); without it the test is skipped and says so."""

from __future__ import annotations

import asyncio
import json
import math
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiokafka import AIOKafkaProducer

from agents.tools.broker import free_port
from agents.tools.demo import start_worker, stop_process
from agents.topics import CLIENT_REQUESTS, create_topics
from detector.engine import DEFAULT_CONFIG
from detector.simulate import mixed, private_api_library

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "config" / "grafana" / "dashboards").glob("*.json"))
RULES = ROOT / "config" / "prometheus" / "rules"
SCRAPE_S = 1
TRAFFIC_S = 30.0
# Grafana's macros, as it would expand them for this test's time range and a 1 s
# scrape interval ($__rate_interval is at least four scrape intervals).
MACROS = {"$__rate_interval": "10s", "$__interval_ms": "2000", "$__interval": "2s", "$__range_s": "120",
          "$__range_ms": "120000", "$__range": "2m"}
WEBHOOK_ENDPOINT = "failing-endpoint"

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.timeout(300)]


def http_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def http_status(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        with e:  # it holds the response
            return e.code, e.read().decode()


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except OSError:
            pass
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def settings_with_webhook(tmp_path: Path) -> Path:
    """The repository's settings plus one webhook endpoint (so the webhook series
    exist), in a directory whose other entries link to config/ (relative paths keep
    working). The endpoint's URL is a closed local port: once the webhook sender
    exists, its deliveries fail, which the failure panels and rule should show."""
    cfg_dir = tmp_path / "config"
    cfg_dir.mkdir()
    for entry in DEFAULT_CONFIG.parent.iterdir():
        if entry.name != DEFAULT_CONFIG.name:
            (cfg_dir / entry.name).symlink_to(entry)
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    data["webhooks"] = [{"name": WEBHOOK_ENDPOINT, "url": f"http://127.0.0.1:{free_port()}/alerts"}]
    path = cfg_dir / DEFAULT_CONFIG.name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def start_prometheus(tmp_path: Path, worker_port: int) -> tuple[subprocess.Popen[bytes], str]:
    exe = shutil.which("prometheus")
    if exe is None:
        pytest.skip("prometheus not found: `make test-deps` (run by `make test`) installs Debian's prometheus package")
    port = free_port()
    cfg = {
        "global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s", "scrape_timeout": "900ms"},
        "rule_files": [str(RULES / "*.yml")],
        "scrape_configs": [{"job_name": "detector", "metrics_path": "/metrics",
                            "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    with open(tmp_path / "prometheus.log", "ab") as log:  # the child has its own copy
        proc = subprocess.Popen(
            [exe, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: http_status(f"{base}/-/ready")[0] == 200, 30, "Prometheus to be ready")
    return proc, base


async def send_traffic(bootstrap: str, profile: Any, catalogue: Any, seconds: float, rate: float = 150.0) -> int:
    """Mixed traffic in event time = now, paced in batches of 1/10 s, with an attack
    burst and malformed messages (two DLQ reason classes) every few seconds."""
    start = time.time()
    events = iter(mixed(profile, int(rate * seconds) + 100, seed=17, start_ts=start, rate=rate, catalogue=catalogue))
    attack = list(private_api_library(profile, 60, seed=17, start_ts=start))
    bad = [b'{"request_id": "cut-off", "ts": ', orjson.dumps([{"request_id": "no-path", "ts": start}])]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    sent, tick = 0, 0
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            chunk = [e for _, e in zip(range(int(rate / 10)), events)]
            if tick % 10 == 3 and attack:
                chunk += [dict(a, ts=time.time()) for a in attack[:10]]
                attack = attack[10:]
            await producer.send_and_wait(CLIENT_REQUESTS.name, orjson.dumps(chunk))
            if tick % 20 == 7:
                await producer.send_and_wait(CLIENT_REQUESTS.name, bad[(tick // 20) % 2])
            sent += len(chunk)
            tick += 1
            ahead = tick / 10 - (time.monotonic() - t0)
            if ahead > 0:
                await asyncio.sleep(ahead)
    finally:
        await producer.stop()
    return sent


def expand(expr: str, variables: dict[str, str]) -> str:
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace(f"${{{name}}}", variables[name]).replace(f"${name}", variables[name])
    for macro in sorted(MACROS, key=len, reverse=True):
        expr = expr.replace(macro, MACROS[macro])
    assert "$" not in expr, f"unexpanded variable in {expr}"
    return expr


def dashboard_variables(dash: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """Values as Grafana would substitute them by default ('All' -> the allValue
    regex), and the variables' own label_values() queries."""
    values, queries = {}, []
    for var in dash["templating"]["list"]:
        if var["type"] == "datasource":
            continue
        if var.get("includeAll"):
            values[var["name"]] = var["allValue"]
        else:
            values[var["name"]] = var["current"]["value"]
        if var["type"] == "query":  # Prometheus's variable query: {"query": ..., "refId": ...}
            query = var["query"]
            queries.append(query["query"] if isinstance(query, dict) else query)
    return values, queries


def label_values_url(base: str, definition: str, variables: dict[str, str]) -> str:
    m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", definition.strip())
    assert m, f"unsupported variable query {definition}"
    selector, label = expand(m.group(1), variables), m.group(2)
    return f"{base}/api/v1/label/{label}/values?" + urllib.parse.urlencode({"match[]": selector})


def run_query(base: str, expr: str, instant: bool) -> list[dict[str, Any]]:
    now = time.time()
    if instant:
        url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr, "time": now})
    else:
        url = f"{base}/api/v1/query_range?" + urllib.parse.urlencode(
            {"query": expr, "start": now - 20, "end": now, "step": SCRAPE_S * 2})
    doc = http_json(url)
    assert doc["status"] == "success", f"{expr}: {doc}"
    return doc["data"]["result"]


def values_of(result: list[dict[str, Any]]) -> list[float]:
    out = []
    for series in result:
        points = series.get("values") or [series["value"]]
        out.extend(float(v) for _, v in points)
    return out


@pytest.mark.parametrize("broker", ["embedded"], indirect=True)
async def test_every_dashboard_query_returns_data_from_a_real_worker(broker, detection, profile, tmp_path):
    await create_topics(broker.bootstrap, partitions=4)
    worker_port = free_port()
    log_path = tmp_path / "worker.log"
    worker = start_worker(broker.bootstrap, worker_port, log_path, config=str(settings_with_webhook(tmp_path)))
    prometheus = None
    try:
        wait_for(lambda: http_status(f"http://127.0.0.1:{worker_port}/healthz")[0] == 200, 60, "the worker's /healthz")
        prometheus, base = start_prometheus(tmp_path, worker_port)
        sent = await send_traffic(broker.bootstrap, profile, detection.catalogue, TRAFFIC_S)
        assert sent > 1000

        def processed() -> bool:
            text = http_status(f"http://127.0.0.1:{worker_port}/metrics")[1]
            m = re.search(r"^detector_requests_total (\S+)$", text, re.M)
            return bool(m) and float(m.group(1)) >= sent

        try:
            wait_for(processed, 30, "the worker to score every request sent")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{log_path.read_text()[-3000:]}") from None
        assert http_status(f"http://127.0.0.1:{worker_port}/readyz") == (200, '{"ready":true}')
        time.sleep(3 * SCRAPE_S)  # the last samples scraped

        empty, checked = [], 0
        for path in DASHBOARDS:
            dash = json.loads(path.read_text())
            variables, var_queries = dashboard_variables(dash)
            for definition in var_queries:
                got = http_json(label_values_url(base, definition, variables))["data"]
                assert got, f"{path.name}: variable query {definition} has no values"
            for panel in dash["panels"]:
                for target in panel.get("targets", []):
                    expr = expand(target["expr"], variables)
                    result = run_query(base, expr, target.get("instant", False))
                    checked += 1
                    if not result:
                        empty.append(f"{path.name} / {panel['title']}: {expr}")
        assert checked >= 30
        assert not empty, "panels whose query returned no data:\n" + "\n".join(empty) + "\n" + log_path.read_text()[-3000:]

        # ... and the data says what happened
        def instant(expr: str) -> list[float]:
            return values_of(run_query(base, expr, True))

        assert max(instant('sum(rate(detector_requests_total{job="detector"}[10s]))')) > 10
        assert max(instant('sum(increase(detector_verdicts_total{verdict="malicious"}[2m]))')) > 0
        assert max(instant('sum(increase(detector_dlq_records_total{reason="invalid_json"}[2m]))')) > 0
        assert max(instant('sum(increase(detector_dlq_records_total{reason="missing_field"}[2m]))')) > 0
        assert max(instant('sum(increase(detector_signals_total{code="tls.fingerprint_mismatch"}[2m]))')) > 0
        assert max(instant('sum(increase(detector_fingerprint_requests_total{kind="ja4", fingerprint!~"other|none"}[2m]))')) > 0
        p99 = instant('histogram_quantile(0.99, sum by (le) (rate(detector_end_to_end_latency_seconds_bucket[30s])))')
        assert p99 and all(math.isfinite(v) and 0 <= v < 60 for v in p99)
        assert instant('detector_consumer_lag_messages{consumer="ingest"}'), "ingest lag per partition"
        webhooks = run_query(base, 'detector_webhook_deliveries_total{job="detector"}', True)
        assert {s["metric"]["endpoint"] for s in webhooks} == {WEBHOOK_ENDPOINT}

        rules = http_json(f"{base}/api/v1/rules")["data"]["groups"]
        assert rules, "the alerting rules were not loaded"
        broken = [(r["name"], r.get("lastError")) for g in rules for r in g["rules"] if r.get("health") == "err"]
        assert not broken, broken
        targets = http_json(f"{base}/api/v1/targets")["data"]["activeTargets"]
        assert [t["health"] for t in targets] == ["up"]
    finally:
        if prometheus is not None:
            stop_process(prometheus, grace=10)
        stop_process(worker)

    # one JSON object per line, with the fields log shippers index
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    assert len(lines) > 3
    for line in lines:
        doc = json.loads(line)
        assert {"time", "level", "logger", "message"} <= doc.keys(), line
    assert any(json.loads(line)["logger"].startswith("detector") for line in lines)


async def test_ingest_lag_is_the_high_watermark_minus_the_consumed_position(broker):
    """On a real consumer, lag counts what was fetched but not yet handed to the
    worker's code as lag too: the position is the next record getmany returns."""
    from aiokafka import AIOKafkaConsumer
    from prometheus_client import CollectorRegistry

    from agents.lag import ConsumerLag
    from agents.metrics import Metrics

    topic = "lag-check"
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await producer.start()
    try:
        for _ in range(500):
            await producer.send(topic, b"x", partition=0)
        await producer.flush()
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=broker.bootstrap, group_id="lag-check",
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        metrics = Metrics(CollectorRegistry())
        lag = ConsumerLag(metrics)
        lag.watch_aiokafka("ingest", lambda: consumer)
        read = 0
        deadline = time.monotonic() + 30
        while read < 200 and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=1000, max_records=200 - read)
            read += sum(len(msgs) for msgs in batches.values())
        assert read == 200
        await lag.sample()
        got = {(s.labels["topic"], s.labels["partition"]): s.value
               for fam in metrics.registry.collect() if fam.name == "detector_consumer_lag_messages"
               for s in fam.samples}
        assert got[(topic, "0")] == 300
    finally:
        await consumer.stop()
