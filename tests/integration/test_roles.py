"""Process roles (docs/operations.md "Process roles"): one `detector run --role ingest`
process and one `--role shards` process, beside each other on one broker, do what one
`all` process does; each runs only its own stage. Assertions read the output topics
and the processes' /metrics."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from agents.tools.broker import free_port
from agents.tools.demo import start_worker, stop_process
from agents.topics import ALERTS, VERDICTS, create_topics
from detector.simulate import genuine, private_api_library
from tests.integration.test_worker import collect, produce

pytestmark = [pytest.mark.broker, pytest.mark.timeout(180)]


def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            body: bytes = r.read()
            return body.decode()
    except OSError:
        return ""


def ready(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read().decode()


def value(text: str, series: str) -> float | None:
    m = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


@pytest.fixture
def role_workers(broker, tmp_path: Path) -> Iterator[dict[str, tuple[subprocess.Popen[bytes], int]]]:
    procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    for role in ("ingest", "shards"):
        port = free_port()
        procs[role] = (start_worker(broker.bootstrap, port, tmp_path / f"{role}.log", role=role), port)
    yield procs
    for proc, _ in procs.values():
        stop_process(proc)


@pytest.mark.slow  # two worker processes: > 5 s
async def test_an_ingest_and_a_shard_process_give_verdicts_and_alerts_each_doing_only_its_stage(
        broker, role_workers, profile, tmp_path):
    await create_topics(broker.bootstrap, partitions=4)
    good = list(genuine(profile, 40, seed=31))
    attack = list(private_api_library(profile, 30, seed=31, start_ts=good[-1]["ts"] + 1))
    await produce(broker.bootstrap, [orjson.dumps(good), orjson.dumps(attack)])
    out = await collect(broker.bootstrap, [VERDICTS.name, ALERTS.name],
                        lambda o: len(o[VERDICTS.name]) >= 70 and len(o[ALERTS.name]) >= 2, timeout=60)
    logs = "\n".join((tmp_path / f"{r}.log").read_text(errors="replace")[-3000:] for r in ("ingest", "shards"))
    verdicts = {v["request_id"]: v for v in out[VERDICTS.name]}
    assert len(verdicts) == 70, logs
    assert all(verdicts[e["request_id"]]["verdict"] == "malicious" for e in attack)
    assert all(verdicts[e["request_id"]]["verdict"] == "clean" for e in good)
    alerts = out[ALERTS.name]
    assert alerts, logs
    assert {a["entity"]["type"] for a in alerts} == {"device", "account"}

    (_, ingest_port), (_, shard_port) = role_workers["ingest"], role_workers["shards"]
    # the shard process's state is flushed (and its gauge set) every state_flush_interval_s
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        ingest_text, shard_text = scrape(ingest_port), scrape(shard_port)
        if (value(shard_text, 'detector_state_entries{state="behaviour_entities"}') or 0) > 0:
            break
        await asyncio.sleep(0.5)
    assert 'detector_worker_info{role="ingest",' in ingest_text
    assert 'detector_worker_info{role="shards",' in shard_text
    # the ingest process read client-requests and holds no entity state, reads no envelopes
    assert value(ingest_text, "detector_requests_total") == 70
    assert value(ingest_text, 'detector_state_entries{state="behaviour_entities"}') == 0
    assert 'consumer="entity-shard"' not in ingest_text
    assert all(value(ingest_text, f'detector_alerts_total{{severity="{s}"}}') == 0
               for s in ("low", "medium", "high", "critical"))
    # the shard process holds the entities and raised the alerts, and never read client-requests
    assert (value(shard_text, 'detector_state_entries{state="behaviour_entities"}') or 0) > 0
    # (at least those collected: a later revision may have been raised since)
    assert sum(value(shard_text, f'detector_alerts_total{{severity="{s}"}}') or 0
               for s in ("low", "medium", "high", "critical")) >= len(alerts)
    assert value(shard_text, "detector_ingest_messages_total") == 0
    assert value(shard_text, "detector_requests_total") == 0
    assert 'consumer="ingest"' not in shard_text and 'topic="client-requests"' not in shard_text
    assert 'consumer="entity-shard"' in shard_text
    # both sample their event loop's lag (the bench reads each process's)
    assert (value(ingest_text, "detector_event_loop_lag_seconds_count") or 0) > 0
    assert (value(shard_text, "detector_event_loop_lag_seconds_count") or 0) > 0
    # each is ready by its own stage: the ingest consumer polled; the shards assigned, state restored
    assert ready(ingest_port) == (200, '{"ready":true}')
    assert ready(shard_port) == (200, '{"ready":true}')
