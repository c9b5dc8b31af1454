"""A real worker process against a real broker, on both tiers. Assertions read the
output topics (and the metrics endpoint), never the worker's internals."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

import jsonschema
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from agents.tools.broker import free_port
from agents.tools.demo import start_worker, stop_process
from agents.topics import ALERTS, ALL_TOPICS, CLIENT_REQUESTS, CLIENT_REQUESTS_DLQ, VERDICTS, create_topics
from detector.simulate import genuine, private_api_library

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = {n: json.loads((ROOT / "config" / "schema" / f"{n}.schema.json").read_text()) for n in ("verdict", "alert", "dlq")}
pytestmark = [pytest.mark.broker, pytest.mark.timeout(300)]


async def produce(bootstrap: str, values: list[bytes]) -> None:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=8 * 1024 * 1024)
    await p.start()
    try:
        for v in values:
            await p.send_and_wait(CLIENT_REQUESTS.name, v)
    finally:
        await p.stop()


async def collect(bootstrap: str, topics: list[str], done: Callable[[dict[str, list[Any]]], bool],
                  timeout: float = 60.0) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {t: [] for t in topics}
    c = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest")
    await c.start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not done(out):
            for tp, msgs in (await c.getmany(timeout_ms=250)).items():
                out[tp.topic].extend(orjson.loads(m.value) for m in msgs)
        # a last short poll, so that extra (duplicate) records would be seen too
        for tp, msgs in (await c.getmany(timeout_ms=1000)).items():
            out[tp.topic].extend(orjson.loads(m.value) for m in msgs)
    finally:
        await c.stop()
    return out


def _log(tmp_path: Path) -> str:
    """The worker log's warnings, errors and alert lines (for assertion messages)."""
    p = tmp_path / "worker.log"
    if not p.exists():
        return ""
    keep = [ln for ln in p.read_text(errors="replace").splitlines()
            if any(w in ln for w in ('"warning"', '"error"', '"critical"', "WARNING", "ERROR", "Traceback", "alert "))]
    return "\n".join(keep)[-6000:]


@pytest.mark.slow  # a worker process: > 5 s
async def test_requests_in_every_form_become_verdicts_dead_letters_and_alerts(broker, worker_factory, profile, tmp_path):
    await create_topics(broker.bootstrap, partitions=4)
    worker_factory()
    good = list(genuine(profile, 120, seed=21))
    # the attack follows the genuine traffic in event time (behaviour state drops
    # records later than behaviour.allowed_lateness_s behind what a shard has seen)
    attack = list(private_api_library(profile, 30, seed=21, start_ts=good[-1]["ts"] + 1))
    big_headers = dict(good[0], request_id="too-many-headers", headers=[["x-h", "v"]] * 200)
    # a website page outside the profile's scope (docs/contracts.md "Scope"): a verdict, not judged
    site = [dict(good[0], request_id=f"site-{i}", path="/", tls={**good[0]["tls"], "sni": "www.example-social.test"},
                 h2={**good[0]["h2"], "authority": "www.example-social.test"}) for i in range(2)]
    values = [
        orjson.dumps(good[:100]),                                    # array
        b"\n".join(orjson.dumps(e) for e in good[100:110]),          # NDJSON
        orjson.dumps(good[110]),                                     # one object
        orjson.dumps(attack),                                        # an attack, batched
        b'{"request_id": "cut-off", "ts": ',                         # invalid JSON
        b"\xff\xfe\xfd",                                             # invalid UTF-8
        orjson.dumps([good[111], {k: v for k, v in good[112].items() if k != "path"}, good[113]]),  # bad sibling
        orjson.dumps([good[114], dict(good[115], ts="not a time")]),  # wrong type
        orjson.dumps(big_headers),                                   # oversized header list
        orjson.dumps(site),                                          # out of scope
    ]
    await produce(broker.bootstrap, values)
    expected = 100 + 10 + 1 + 30 + 2 + 1 + 2
    out = await collect(broker.bootstrap, [VERDICTS.name, CLIENT_REQUESTS_DLQ.name, ALERTS.name],
                        lambda o: len(o[VERDICTS.name]) >= expected and len(o[CLIENT_REQUESTS_DLQ.name]) >= 5
                        and len(o[ALERTS.name]) >= 2, timeout=90)
    verdicts, dlq, alerts = out[VERDICTS.name], out[CLIENT_REQUESTS_DLQ.name], out[ALERTS.name]
    assert len(verdicts) == expected, _log(tmp_path)
    assert len({v["request_id"] for v in verdicts}) == expected
    for v in verdicts:
        jsonschema.validate(v, SCHEMAS["verdict"])
    by_id = {v["request_id"]: v for v in verdicts}
    assert all(by_id[e["request_id"]]["verdict"] == "malicious" for e in attack)
    assert sum(by_id[e["request_id"]]["verdict"] != "clean" for e in good[:116] if e["request_id"] in by_id) == 0
    assert all(by_id[e["request_id"]].get("assessed", True) for e in good[:116] + attack if e["request_id"] in by_id)
    for e in site:
        v = by_id[e["request_id"]]
        assert (v["assessed"], v["verdict"], v["score"], v["profile"], v["signals"]) == (False, "clean", 0, None, [])

    assert len(dlq) == 5
    for rec in dlq:
        jsonschema.validate(rec, SCHEMAS["dlq"])
        assert rec["source"]["topic"] == CLIENT_REQUESTS.name and rec["source"]["offset"] >= 0
    reasons = sorted(r["reason"].split(" at ")[0].split(":")[0] for r in dlq)
    assert reasons == sorted(["invalid JSON", "invalid UTF-8", "missing required field 'path'",
                              "field 'ts' is not an RFC 3339 timestamp with a time zone", "200 headers exceed limits.max_headers=128"])
    sibling = next(r for r in dlq if r["reason"].startswith("missing required field"))
    assert sibling["index"] == 1 and orjson.loads(sibling["message"])[1]["request_id"] == good[112]["request_id"]

    assert alerts, _log(tmp_path)
    for a in alerts:
        jsonschema.validate(a, SCHEMAS["alert"])
    assert {a["entity"]["type"] for a in alerts} == {"device", "account"}


@pytest.mark.slow  # a worker process: > 5 s
async def test_first_event_is_processed_within_15_s_of_start(broker, worker_factory, profile):
    await create_topics(broker.bootstrap, partitions=4)
    started = time.monotonic()
    worker_factory()
    await produce(broker.bootstrap, [orjson.dumps(list(genuine(profile, 5, seed=3)))])
    out = await collect(broker.bootstrap, [VERDICTS.name], lambda o: len(o[VERDICTS.name]) >= 5, timeout=30)
    elapsed = time.monotonic() - started
    assert len(out[VERDICTS.name]) == 5
    print(f"\n[{broker.tier}] first event processed {elapsed:.1f} s after worker start")
    assert elapsed < 15.0


@pytest.mark.slow  # a worker process: > 5 s
async def test_restart_resumes_from_committed_offsets_without_loss(broker, worker_factory, profile):
    await create_topics(broker.bootstrap, partitions=4)
    events = list(genuine(profile, 400, seed=4))
    proc, _ = worker_factory()
    await produce(broker.bootstrap, [orjson.dumps(events[i:i + 50]) for i in range(0, 200, 50)])
    first = await collect(broker.bootstrap, [VERDICTS.name], lambda o: len(o[VERDICTS.name]) >= 200)
    assert len(first[VERDICTS.name]) == 200
    stop_process(proc)  # graceful: commits what it processed
    assert proc.returncode == 0 or proc.returncode is not None
    await produce(broker.bootstrap, [orjson.dumps(events[i:i + 50]) for i in range(200, 400, 50)])
    worker_factory()
    out = await collect(broker.bootstrap, [VERDICTS.name], lambda o: len(o[VERDICTS.name]) >= 400)
    ids = [v["request_id"] for v in out[VERDICTS.name]]
    assert sorted(set(ids)) == sorted(e["request_id"] for e in events)
    assert len(ids) == 400, "a gracefully stopped worker must not leave processed offsets uncommitted"


@pytest.mark.slow  # a worker process: > 5 s
async def test_metrics_health_and_readiness_endpoints(broker, worker_factory, profile):
    await create_topics(broker.bootstrap, partitions=4)
    _, port = worker_factory()
    await produce(broker.bootstrap, [orjson.dumps(list(genuine(profile, 30, seed=5))), b"{bad"])
    await collect(broker.bootstrap, [VERDICTS.name], lambda o: len(o[VERDICTS.name]) >= 30)

    def get(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            with e:  # it holds the response
                return e.code, e.read().decode()

    deadline = time.monotonic() + 20
    text = ""
    while time.monotonic() < deadline:
        try:
            status, text = get("/metrics")
            if "detector_requests_total 30.0" in text and 'detector_dlq_records_total{reason="invalid_json"} 1.0' in text:
                break
        except OSError:
            pass
        await asyncio.sleep(0.5)
    assert "detector_requests_total 30.0" in text
    assert 'detector_verdicts_total{verdict="clean"} 30.0' in text
    assert 'detector_dlq_records_total{reason="invalid_json"} 1.0' in text
    assert "detector_end_to_end_latency_seconds_bucket" in text
    assert get("/healthz")[0] == 200
    assert get("/readyz") == (200, '{"ready":true}')


def test_topics_command_creates_and_lists_the_declared_topics(broker):
    res = subprocess.run([sys.executable, "-m", "agents.cli", "topics", "--create", "--bootstrap", broker.bootstrap],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    for spec in ALL_TOPICS:
        assert f"created {spec.name}" in res.stdout
        row = next(line for line in res.stdout.splitlines() if line.startswith(spec.name + " "))
        assert row.split()[1] == row.split()[2] == "4"
