"""Broker restart mid-stream, on both tiers, against a real worker process.

Requests are produced in three phases: before the restart, a burst the worker is
still publishing when the broker stops, and after the broker is back. The worker
process must never exit, /readyz must say 503 during the outage and 200 after, and
the requests produced after the recovery must get their verdicts and (an attack)
their alerts: the ingest stage and the entity shards resume.

Apache Kafka keeps its log across the restart: every request_id of every phase gets
a verdict (duplicates allowed: a batch interrupted by the outage is re-published).
The embedded broker is memory-only: what it held is gone, the worker recreates the
declared topics, counts the loss, and carries on with the new log."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from agents.topics import ALERTS, CLIENT_REQUESTS, VERDICTS, create_topics
from detector.simulate import genuine, private_api_library
from tests.integration.test_worker import _log, collect

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.timeout(240)]


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        with e:  # it holds the response
            return e.code, e.read().decode()
    except OSError as e:
        return 0, str(e)


async def wait_for(pred: Any, timeout: float, what: str, step: float = 0.25) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        await asyncio.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


async def produce(bootstrap: str, values: list[bytes]) -> int:
    """Send like an edge that retries a refused send a few times; returns the retries
    (the embedded broker may refuse a send while its topics are recreated)."""
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=8 * 1024 * 1024, acks="all")
    await p.start()
    retries = 0
    try:
        for v in values:
            for attempt in range(60):  # Tansu refuses sends for seconds after a produce/create race
                try:
                    await p.send_and_wait(CLIENT_REQUESTS.name, v)
                    break
                except KafkaError:
                    if attempt == 59:
                        raise
                    retries += 1
                    await asyncio.sleep(0.5)
    finally:
        await p.stop()
    return retries


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def chunks(events: list[dict[str, Any]], size: int) -> list[bytes]:
    return [orjson.dumps(events[i:i + size]) for i in range(0, len(events), size)]


async def test_broker_restart_mid_stream_the_worker_stays_up_and_resumes(broker, worker_factory, profile, tmp_path):
    started = time.monotonic()
    marks: dict[str, float] = {}
    await create_topics(broker.bootstrap, partitions=4)
    proc, port = worker_factory(DETECTOR_PRODUCE_RETRY_MAX_S="2")
    log_path: Path = tmp_path / "worker.log"
    good = list(genuine(profile, 700, seed=61))
    before, burst, after = good[:100], good[100:600], good[600:]
    t0 = after[-1]["ts"] + 1
    attack_before = list(private_api_library(profile, 30, seed=62, start_ts=before[-1]["ts"] + 1))
    attack_after = list(private_api_library(profile, 30, seed=63, start_ts=t0))

    # Phase 1: before the restart, until the Faust side (shards) is fully started too.
    await produce(broker.bootstrap, chunks(before, 25) + [orjson.dumps(attack_before)])
    first = await collect(broker.bootstrap, [VERDICTS.name, ALERTS.name],
                          lambda o: len(o[VERDICTS.name]) >= 130 and len(o[ALERTS.name]) >= 1, timeout=60)
    assert {v["request_id"] for v in first[VERDICTS.name]} == {e["request_id"] for e in before + attack_before}
    assert first[ALERTS.name], _log(tmp_path)
    await wait_for(lambda: "Worker]: Ready" in log_path.read_text(errors="replace"), 60, "the Faust worker to start")
    assert get(port, "/readyz")[0] == 200
    marks["phase 1"] = time.monotonic() - started

    # Phase 2: a burst in small messages; the broker stops while it is being sent
    # (and processed). A request counts as sent once the broker acknowledged it.
    acked: list[str] = []
    send_errors: list[str] = []

    async def send_burst() -> None:
        p = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", request_timeout_ms=60000)
        await p.start()
        try:
            for i in range(0, len(burst), 5):
                part = burst[i:i + 5]
                try:
                    await p.send_and_wait(CLIENT_REQUESTS.name, orjson.dumps(part))
                    acked.extend(e["request_id"] for e in part)
                    await asyncio.sleep(0.02)  # a steady stream, so the stop comes mid-stream
                except KafkaError as exc:  # the embedded broker may refuse during its restart
                    send_errors.append(repr(exc))
        finally:
            await p.stop()

    sender = asyncio.create_task(send_burst())
    await wait_for(lambda: len(acked) >= len(burst) // 2 or sender.done(), 60, "half of the burst")
    broker.stop()
    down = time.monotonic()
    statuses: list[int] = []

    def unready() -> bool:
        statuses.append(get(port, "/readyz")[0])
        return statuses[-1] == 503

    await wait_for(unready, 30, "/readyz to report the outage", step=0.5)
    # the outage is not a liveness failure, and the process keeps running
    await asyncio.sleep(3)
    assert get(port, "/healthz")[0] == 200
    assert get(port, "/readyz")[0] == 503
    assert proc.poll() is None, _log(tmp_path)
    broker.start()
    outage = time.monotonic() - down
    await asyncio.wait_for(sender, 90)
    if broker.tier == "kafka":
        assert not send_errors and len(acked) == len(burst), send_errors[:3]
    await wait_for(lambda: get(port, "/readyz")[0] == 200, 60, "/readyz to recover")
    marks["recovered"] = time.monotonic() - started

    # Phase 3: after the recovery: genuine traffic and a new attack.
    edge_retries = await produce(broker.bootstrap, chunks(after, 25) + [orjson.dumps(attack_after)])
    attack_ids = {e["request_id"] for e in attack_after}
    want = {e["request_id"] for e in after} | attack_ids
    if broker.tier == "kafka":
        want |= {e["request_id"] for e in before + attack_before} | set(acked)
    out = await collect(broker.bootstrap, [VERDICTS.name, ALERTS.name],
                        lambda o: want <= {v["request_id"] for v in o[VERDICTS.name]} and _new_attack_alert(o, attack_ids),
                        timeout=90)
    seen = {v["request_id"] for v in out[VERDICTS.name]}
    marks["phase 3"] = time.monotonic() - started
    assert want <= seen, f"{len(want - seen)} requests without a verdict\n{_log(tmp_path)}"
    assert _new_attack_alert(out, attack_ids), f"no alert for the attack after the restart\n{_log(tmp_path)}"
    assert proc.poll() is None, "the worker process exited"
    assert get(port, "/healthz")[0] == 200 and get(port, "/readyz")[0] == 200

    text = get(port, "/metrics")[1]
    assert metric(text, "detector_broker_recoveries_total") >= 1
    assert metric(text, "detector_broker_up") == 1
    assert metric(text, 'detector_broker_errors_total{op="metadata"}') >= 1
    if broker.tier == "embedded":
        # the memory-only broker lost everything: the declared topics were recreated
        # (or auto-created by a client first) and the loss was counted
        assert metric(text, "detector_broker_log_resets_total") == 1, _log(tmp_path)
    else:
        assert metric(text, "detector_broker_log_resets_total") == 0
        assert metric(text, "detector_topics_recreated_total") == 0
    print(f"\n[{broker.tier}] outage {outage:.1f} s, {len(out[VERDICTS.name])} verdicts after it for "
          f"{len(want)} wanted, burst acked {len(acked)}/{len(burst)}, produce retries {metric(text, 'detector_produce_retries_total'):.0f}, edge retries {edge_retries}, "
          f"test {time.monotonic() - started:.0f} s ({', '.join(f'{k} at {v:.0f} s' for k, v in marks.items())})")


def _new_attack_alert(out: dict[str, list[Any]], attack_ids: set[str]) -> bool:
    """An alert raised by the phase-3 attack: on an entity (device, account, ...) of
    one of the attack's malicious verdicts."""
    entities = {(etype, eid) for v in out[VERDICTS.name] if v["request_id"] in attack_ids and v["verdict"] == "malicious"
                for etype, eid in v["entities"].items()}
    return any((a["entity"]["type"], a["entity"]["id"]) in entities for a in out[ALERTS.name])
