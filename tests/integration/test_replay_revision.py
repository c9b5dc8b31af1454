"""The replaying request's own verdict in the stream (issue #15, item 1): two ingest
processes on randomly keyed input and one shard process, `verdicts.emit: flagged`; a
capture-and-replay service re-sends every captured signed request once, 20-250 s
later, from other networks. Keeping the highest revision per request id, >= 99% of the
replaying requests carry a replay signal, the originals and the genuine users stay
clean, each revision arrives on its verdict's partition within the documented bound
(docs/operations.md "Verdict revisions": 10 s)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from agents.tools.broker import free_port
from agents.tools.demo import start_worker, stop_process
from agents.topics import CLIENT_REQUESTS, VERDICTS, create_topics
from detector.simulate import genuine, replay_once
from tests.integration.test_roles import ready


def up(port: int) -> bool:
    try:
        return ready(port)[0] == 200
    except OSError:  # not listening yet
        return False

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.timeout(180)]

BOUND_S = 10.0  # docs/operations.md "Verdict revisions"
SPEEDUP = 40.0  # event time runs this much faster than the produce loop


def traffic(profile: Any, seed: int) -> list[dict[str, Any]]:
    rep = list(replay_once(profile, 400, seed=seed))
    good = list(genuine(profile, 150, seed=seed + 1, start_ts=rep[0]["ts"]))
    return sorted(rep + good, key=lambda e: e["ts"])


async def produce_paced(bootstrap: str, events: list[dict[str, Any]]) -> dict[str, float]:
    """One event per message, each under a random key (the edge keys as it likes),
    in event-time order, paced at SPEEDUP x event time; the wall time each was sent."""
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await p.start()
    sent: dict[str, float] = {}
    try:
        t0, e0 = time.monotonic(), events[0]["ts"]
        for e in events:
            wait = (e["ts"] - e0) / SPEEDUP - (time.monotonic() - t0)
            if wait > 0:
                await asyncio.sleep(wait)
            await p.send(CLIENT_REQUESTS.name, orjson.dumps([e]), key=os.urandom(8))
            sent[e["request_id"]] = time.time()
        await p.flush()
    finally:
        await p.stop()
    return sent


async def test_every_replaying_request_carries_the_replay_in_its_final_verdict(broker, profile, tmp_path: Path):
    await create_topics(broker.bootstrap, partitions=4)
    env = {"DETECTOR_VERDICTS__EMIT": "flagged"}
    procs = []
    ports = []
    for role in ("shards", "ingest", "ingest"):
        port = free_port()
        procs.append(start_worker(broker.bootstrap, port, tmp_path / f"{role}-{len(procs)}.log", role=role,
                                  extra_env=env))
        ports.append(port)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(up(p) for p in ports):
            await asyncio.sleep(0.5)
        assert all(up(p) for p in ports), [up(p) for p in ports]
        events = traffic(profile, seed=41)
        replays = {e["request_id"] for e in events if e["label"].get("role") == "replay"}
        captured = {e["request_id"] for e in events if e["label"].get("role") == "captured"}
        assert len(replays) >= 190
        consumer = AIOKafkaConsumer(VERDICTS.name, bootstrap_servers=broker.bootstrap, group_id=None,
                                    auto_offset_reset="earliest")
        await consumer.start()
        try:
            sent = await produce_paced(broker.bootstrap, events)
            final: dict[str, dict[str, Any]] = {}
            where: dict[str, set[tuple[int, bytes | None]]] = {}
            arrived: dict[str, float] = {}
            deadline = time.monotonic() + 30
            settle = None
            while time.monotonic() < deadline:
                for tp, msgs in (await consumer.getmany(timeout_ms=250)).items():
                    for m in msgs:
                        v = orjson.loads(m.value)
                        rid = v["request_id"]
                        where.setdefault(rid, set()).add((tp.partition, m.key))
                        if v.get("revision", 0) >= final.get(rid, {}).get("revision", -1):
                            final[rid] = v
                        if v.get("revision"):
                            arrived.setdefault(rid, m.timestamp / 1000)
                flagged = sum(any(s["code"].startswith("replay.") for s in final[r]["signals"])
                              for r in replays if r in final)
                if flagged == len(replays) and settle is None:
                    settle = time.monotonic() + 3  # a little longer: anything else still on its way
                if settle is not None and time.monotonic() > settle:
                    break
        finally:
            await consumer.stop()
    finally:
        for proc in procs:
            stop_process(proc)
    logs = "\n".join(f.read_text(errors="replace")[-2000:] for f in sorted(tmp_path.glob("*.log")))
    hit = {r for r in replays if r in final and any(s["code"].startswith("replay.") for s in final[r]["signals"])}
    assert len(hit) >= 0.99 * len(replays), (len(hit), len(replays), logs)
    # the originals and the genuine users: no flagged verdict (emit: flagged writes no clean one)
    wrong = [r for r, v in final.items() if r not in replays and v["verdict"] != "clean"]
    assert not wrong, [final[r] for r in wrong[:3]]
    assert captured.isdisjoint(final)
    # a revision lands where its ingest verdict does: one partition and key per request
    assert all(len(w) == 1 for w in where.values()), [w for w in where.values() if len(w) > 1][:3]
    revised = [r for r in hit if final[r].get("revision") == 1]
    assert len(revised) >= 0.9 * len(replays)  # most are judged clean at ingest: only the revision says so
    late = sorted(arrived[r] - sent[r] for r in arrived if r in sent)
    assert late and late[-1] <= BOUND_S, late[-5:]
