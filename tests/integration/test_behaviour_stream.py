"""Behaviour detection in the stream, against the offline rules (parity), across a
worker killed with SIGKILL (recovery) and across rebalances between two workers."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import msgspec
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from agents.tools.demo import stop_process
from agents.topics import ALERTS, CLIENT_REQUESTS, ENTITY_FLAGS, VERDICTS, create_topics
from detector.behaviour.offline import OfflineScorer
from detector.decode import request_from_obj
from detector.simulate import genuine, low_and_slow, private_api_library, replay
from tests.integration.test_worker import _log, collect

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.timeout(400)]


def traffic(profile: Any, seed: int) -> list[dict[str, Any]]:
    """Genuine users and a private-API library (one device for all its accounts, a
    fixed delay) interleaved in event time."""
    good = list(genuine(profile, 240, seed=seed))
    attack = list(private_api_library(profile, 60, seed=seed, start_ts=good[0]["ts"] + 5, rate=0.5))
    return sorted(good + attack, key=lambda e: e["ts"])


def traffic_with_scoped_flags(profile: Any, seed: int) -> list[dict[str, Any]]:
    """`traffic` plus captured requests replayed (evasion 2) and a low-and-slow fleet
    of bulk-registered accounts (evasion 2), late enough that their scoped flags
    (`replay.device_replayed`, `population.bulk_registered_accounts`) reach the last
    requests."""
    good = traffic(profile, seed)
    t0 = good[0]["ts"]
    rep = list(replay(profile, 70, seed=seed, start_ts=t0 + 330, evasion=2, rate=0.5))
    fleet = list(low_and_slow(profile, 60, seed=seed, start_ts=t0 + 420, evasion=2, rate=0.5))
    return sorted(good + rep + fleet, key=lambda e: e["ts"])


async def produce_ordered(bootstrap: str, events: list[dict[str, Any]], per_message: int = 20) -> None:
    """In event-time order, all on partition 0, so the stream sees the order offline sees."""
    p = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await p.start()
    try:
        for i in range(0, len(events), per_message):
            await p.send_and_wait(CLIENT_REQUESTS.name, orjson.dumps(events[i:i + per_message]), partition=0)
    finally:
        await p.stop()


def offline(detection: Any, events: list[dict[str, Any]]) -> tuple[list[Any], list[dict[str, Any]]]:
    """Verdicts (each its revision 0, as the ingest stage writes it) and alerts
    offline, the alerts as the stream's topic carries them (JSON)."""
    scorer = OfflineScorer(detection, reference_time=math.inf)
    verdicts, alerts = scorer.score([request_from_obj(e) for e in events])
    return [scorer.ingest.get(v.request_id, v) for v in verdicts], [orjson.loads(a.to_json()) for a in alerts]


def diff(got: dict, expected: dict) -> list[str]:
    out = [f"missing {k}" for k in expected.keys() - got.keys()] + [f"extra {k}" for k in got.keys() - expected.keys()]
    for k in got.keys() & expected.keys():
        for f in expected[k]:
            if got[k].get(f) != expected[k][f]:
                out.append(f"{k} {f}: stream {got[k].get(f)!r} offline {expected[k][f]!r}")
    return out


def flag_state(updates: list[Any]) -> dict[tuple[str, str], Any]:
    """The flags topic read as the ingest stage reads it: the last update per entity."""
    last = {(u[0], u[1]): u[2] for u in updates}
    return {k: v for k, v in last.items() if v}


def by_revision(alerts: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    """(alert_id, revision) -> content; a duplicate must be identical."""
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for a in alerts:
        key = (a["alert_id"], a["revision"])
        assert out.setdefault(key, a) == a, f"re-delivered alert {key} differs"
    return out


async def wait_for_alerts(bootstrap: str, expected: dict[tuple[str, int], dict[str, Any]], timeout: float = 90) -> dict:
    out = await collect(bootstrap, [ALERTS.name],
                        lambda o: set(expected) <= {(a["alert_id"], a["revision"]) for a in o[ALERTS.name]},
                        timeout=timeout)
    return by_revision(out[ALERTS.name])


def _own(out: dict[str, list[Any]]) -> int:
    """The ingest's own verdicts collected (a shard's revision of a replayed request's
    verdict is not one more request)."""
    return sum(not v.get("revision") for v in out[VERDICTS.name])


async def test_stream_alerts_and_verdicts_match_the_offline_rules(broker, worker_factory, detection, profile):
    await create_topics(broker.bootstrap, partitions=4)
    events = traffic_with_scoped_flags(profile, seed=31)
    phase1, phase2 = events[:-60], events[-60:]
    worker_factory()
    await produce_ordered(broker.bootstrap, phase1)
    off_verdicts, off_alerts = offline(detection, events)
    expected = by_revision(off_alerts)
    assert any(c.startswith("behaviour.") for a in off_alerts for c in a["codes"])
    # Phase 2 is sent once phase 1's flags reached the ingest stage: its verdicts see
    # phase 1's flags and, depending on the broadcast delay, some of those phase 2
    # raises itself. Offline gives both limits (zero delay, and phase 1's flags only);
    # where they agree, the stream must give exactly that verdict.
    frozen = OfflineScorer(detection, reference_time=math.inf)
    frozen.score([request_from_obj(e) for e in phase1])
    limit = {r.request_id: frozen.pipeline.assess(r, frozen.flags)[0]
             for r in (request_from_obj(e) for e in phase2)}
    first = await collect(broker.bootstrap, [VERDICTS.name], lambda o: _own(o) >= len(phase1))
    # ... once the shards have raised every flag of phase 1 (they may lag the ingest
    # stage under load) and the ingest's flag follower (200 ms polls) has read them
    want = {k: orjson.loads(msgspec.json.encode(v)) for k, v in frozen.flags.current().items()}
    seen = await collect(broker.bootstrap, [ENTITY_FLAGS.name], lambda o: flag_state(o[ENTITY_FLAGS.name]) == want,
                         timeout=120)
    assert flag_state(seen[ENTITY_FLAGS.name]) == want
    await asyncio.sleep(2)
    await produce_ordered(broker.bootstrap, phase2)
    got = await wait_for_alerts(broker.bootstrap, expected)
    assert got == expected, diff(got, expected)
    out = await collect(broker.bootstrap, [VERDICTS.name],
                        lambda o: sum(not v.get("revision") for v in o[VERDICTS.name]) >= len(events))
    # the ingest stage's verdicts (a shard's revisions of some are compared elsewhere:
    # test_replay_revision.py)
    stream = {v["request_id"]: v for v in out[VERDICTS.name] if not v.get("revision")}
    compared: set[str] = set()
    for v in off_verdicts:
        if v.request_id in limit and limit[v.request_id] == v:
            assert stream[v.request_id] == orjson.loads(v.to_json()), v.request_id
            compared.update(s.code for s in v.signals)
    # the comparison covers flags applied through their scope
    assert {"replay.device_replayed", "population.bulk_registered_accounts"} <= compared, compared
    assert len(first[VERDICTS.name]) >= len(phase1)


async def test_worker_killed_mid_stream_resumes_its_state(broker, worker_factory, detection, profile):
    await create_topics(broker.bootstrap, partitions=4)
    events = traffic(profile, seed=32)
    half = len(events) // 2
    proc, _ = worker_factory()
    await produce_ordered(broker.bootstrap, events[:half])
    await collect(broker.bootstrap, [VERDICTS.name], lambda o: _own(o) >= half)
    await asyncio.sleep(1.0)  # some state flushed, the latest envelopes perhaps not
    proc.kill()  # SIGKILL: no shutdown, no final commit
    proc.wait(10)
    await produce_ordered(broker.bootstrap, events[half:])
    worker_factory()
    _, off_alerts = offline(detection, events)
    expected = by_revision(off_alerts)
    got = await wait_for_alerts(broker.bootstrap, expected, timeout=120)
    # The fan-out count carries on across the kill, and nothing processed twice
    # changed an alert: every (id, revision) is exactly the offline one.
    assert got == expected, diff(got, expected)
    fanout = [a for a in off_alerts if "behaviour.device_account_fanout" in a["codes"]]
    assert fanout and max(a["count"] for a in fanout) > 3


async def test_two_workers_through_rebalances_raise_each_alert_once(broker, worker_factory, detection, profile, tmp_path):
    await create_topics(broker.bootstrap, partitions=4)
    events = traffic(profile, seed=33)
    thirds = [events[: len(events) // 3], events[len(events) // 3: 2 * len(events) // 3], events[2 * len(events) // 3:]]
    a, _ = worker_factory()
    await produce_ordered(broker.bootstrap, thirds[0])
    await collect(broker.bootstrap, [VERDICTS.name], lambda o: _own(o) >= len(thirds[0]))
    worker_factory()  # B joins: both groups rebalance
    await asyncio.sleep(8)
    await produce_ordered(broker.bootstrap, thirds[1])
    await collect(broker.bootstrap, [VERDICTS.name], lambda o: _own(o) >= len(thirds[0]) + len(thirds[1]))
    # A kept some of its partitions through the rebalance: it resumed them with their
    # engines (Faust does not read a kept partition's changelog from its start again)
    # (at its first envelope after the recovery: the shards may still be catching up)
    log_path = tmp_path / "worker.log"
    deadline = time.monotonic() + 60
    while "kept through the rebalance" not in log_path.read_text(errors="replace") and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    assert "kept through the rebalance" in log_path.read_text(errors="replace"), _log(tmp_path)
    stop_process(a)  # A leaves gracefully: its partitions move to B
    await produce_ordered(broker.bootstrap, thirds[2])
    _, off_alerts = offline(detection, events)
    expected = by_revision(off_alerts)
    got = await wait_for_alerts(broker.bootstrap, expected, timeout=120)
    assert got == expected, diff(got, expected)  # same ids, revisions and counts as one worker offline
