"""Incremental, compact behaviour state: what a flush writes (only what changed, in
bounded steps), what a restart restores from it, eviction order, and the upgrade from
the previous release's changelog (tests/fixtures/upgrade)."""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from agents.ingest import IngestStage
from agents.metrics import Metrics
from agents.settings import load_settings
from agents.shards import FLUSH_STEP, ShardProcessor, ShardState
from detector.behaviour.engine import LIVE_MAX_ENTITIES, BehaviourEngine
from detector.behaviour.records import EntityRecord
from detector.behaviour.store import (
    add_sig,
    decode_blob,
    find_sig,
    parse_table_key,
    sig_bytes,
)
from detector.simulate import genuine, private_api_library
from tests.unit.test_worker_safety import FakeEvent, FakeTable, Sent, envelopes_of, writes_done

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "upgrade" / "previous-release.jsonl"
T0 = 1_800_000_000.0


def rec(etype: str, key: str, ts: float, i: int, **kw: Any) -> EntityRecord:
    base: dict[str, Any] = dict(etype=etype, key=key, request_id=f"r-{key}-{i}", ts=ts, level=0, score=0.0, codes=(),
                                profile="example-android", ip=f"10.0.{i % 250}.1", asn=64500, hosting=False,
                                country="US", device=None, account=None, session=None, endpoint="browse")
    base.update(kw)
    return EntityRecord(**base)


def shard_of(detection: Any, table: FakeTable | None = None) -> tuple[ShardProcessor, ShardState, Sent, FakeTable]:
    metrics = Metrics(CollectorRegistry())
    table = table or FakeTable()
    shard = ShardState(detection.behaviour, detection, table, metrics, interval=3600, changelog=table)
    sent = Sent()
    return (ShardProcessor(shard, detection, metrics, send_flag=sent.flag, send_alert=sent.alert, send_dlq=sent.dead),
            shard, sent, table)


def recovered(*writers: FakeTable) -> FakeTable:
    """A table as Faust restores it from the changelog these wrote, in order: the last
    value per key, a tombstone deleting it (keys JSON-decoded, as the table codec does)."""
    table = FakeTable()
    for w in writers:
        for _, key, value in w.sent:
            name = orjson.loads(key)
            if value is None:
                table.data.pop(name, None)  # type: ignore[call-overload]
            else:
                table.data[name] = value
    return table


async def test_a_flush_writes_only_what_changed_and_a_restart_restores_it(detection, profile):
    stage = IngestStage(load_settings(), detection, Metrics(CollectorRegistry()), loop=None)
    events = list(genuine(profile, 120, seed=3)) + list(private_api_library(profile, 30, seed=4))
    envelopes = await envelopes_of(stage, events)
    proc, shard, _, table = shard_of(detection)
    half = len(envelopes) // 2
    for i, (p, value) in enumerate(envelopes[:half]):
        await proc.process(FakeEvent(p, i, value))
    for p in list(shard.engines):
        shard.flush(p)
    assert await shard.settle(timeout=5)
    entity_keys = [orjson.loads(k) for _, k, v in table.sent if v is not None and ":e:" in orjson.loads(k)]
    assert len(entity_keys) == len(set(entity_keys)) == sum(e.entity_count() for e in shard.engines.values())
    # one entity changes: the next flush writes it and its partition's meta record, nothing else
    (p, engine), *_ = shard.engines.items()
    ekey = next(iter(engine.buckets[next(b for b, bk in enumerate(engine.buckets) if bk.entities)].entities))
    etype, _, key = ekey.partition("|")
    before = len(table.sent)
    engine.observe([rec(etype, key, T0 + 10**6, 0)], offset=10**6)
    shard.flush(p)
    assert await shard.settle(timeout=5)
    assert [orjson.loads(k) for _, k, _ in table.sent[before:]] == [f"{p}:e:{ekey}", f"{p}:m"]
    # a restart on the changelog: the same entities, the same state
    _, again, _, _ = shard_of(detection, recovered(table))
    for q, e in shard.engines.items():
        r = again.engine(q)
        assert dict(r.states()) == dict(e.states())
        assert [b.watermarks for b in r.buckets] == [b.watermarks for b in e.buckets]
    assert not again.table.data, "restored records are held once: by the engine"


async def test_an_envelope_read_again_after_a_crash_mid_flush_is_applied_once(detection, profile):
    """The entity records of a flush reached the changelog, its meta record did not
    (so the source marks that skip re-sent records are gone too): each entity knows the
    last envelope it includes, so the envelopes read again change nothing."""
    stage = IngestStage(load_settings(), detection, Metrics(CollectorRegistry()), loop=None)
    events = list(genuine(profile, 200, seed=8))
    envelopes = [pv for i in range(0, 200, 50) for pv in await envelopes_of(stage, events[i:i + 50], offset=i)]
    proc, shard, _, table = shard_of(detection)
    p0 = envelopes[0][0]
    mine = [(i, v) for i, (p, v) in enumerate(envelopes) if p == p0]
    assert len(mine) >= 2
    for i, v in mine:
        await proc.process(FakeEvent(p0, i, v))
    shard.flush(p0)
    assert await shard.settle(timeout=5)
    crashed = FakeTable()
    crashed.sent = [s for s in table.sent if not orjson.loads(s[1]).endswith(":m")]
    _, again, _, _ = shard_of(detection, recovered(crashed))
    engine = again.engine(p0)
    from detector.behaviour.records import decode_envelope

    for i, v in mine:
        env = decode_envelope(v)
        assert engine.observe(env.records, offset=i, sources=env.sources).applied == 0


async def test_a_partition_kept_through_a_rebalance_keeps_all_its_state(detection, profile):
    """Faust resumes a kept partition's table recovery where it stopped: after a
    rebalance the table holds only the records written since the last recovery. The
    partition's engine, parked at the revocation and resumed at the assignment, still
    holds everything; a partition handed over is dropped, and restored from the
    changelog when it comes back."""
    stage = IngestStage(load_settings(), detection, Metrics(CollectorRegistry()), loop=None)
    events = list(genuine(profile, 160, seed=11)) + list(private_api_library(profile, 20, seed=12))
    envelopes = await envelopes_of(stage, events)
    half = len(envelopes) // 2
    # a previous owner wrote the first half; this worker recovers it at start
    proc0, first, _, written0 = shard_of(detection)
    for i, (p, value) in enumerate(envelopes[:half]):
        await proc0.process(FakeEvent(p, i, value))
    for p in list(first.engines):
        first.flush(p)
    assert await first.settle(timeout=5)
    proc, shard, _, _ = shard_of(detection, recovered(written0))
    shard.changelog = changelog = FakeTable()
    for i, (p, value) in enumerate(envelopes[half:], start=half):
        await proc.process(FakeEvent(p, i, value))
    owned = sorted(shard.engines)
    assert len(owned) >= 2
    before = {p: dict(e.states()) for p, e in shard.engines.items()}
    # a rebalance: every partition revoked (flushed), then all but one assigned again
    shard.release(set(owned))
    assert await shard.settle(timeout=5)
    assert not shard.engines
    kept, gone = set(owned[1:]), owned[0]
    since = recovered(changelog)  # what Faust's resumed recovery puts into the table
    shard.table.data.update({k: v for k, v in since.data.items() if parse_table_key(k).partition in kept})  # type: ignore[union-attr]
    shard.assigned(kept)
    assert set(shard.parked) == kept
    for p in kept:
        assert dict(shard.engine(p).states()) == before[p], f"partition {p} lost state through the rebalance"
    assert not [k for k in shard.table.data if parse_table_key(k).partition in kept], (  # type: ignore[union-attr]
        "the resumed recovery's records are dropped: the engine holds them")
    # the partition handed over comes back later: restored from the whole changelog
    _, back, _, _ = shard_of(detection, recovered(written0, changelog))
    assert dict(back.engine(gone).states()) == before[gone]


async def test_every_assigned_partition_loads_its_state_when_recovery_completes(detection, profile):
    """Once the assignment's recovery is done, every assigned partition loads its
    state (ShardState.restore_assigned, on Faust's on_rebalance_complete), not only
    those that get an envelope: a partition without traffic still has its state loaded
    and written forward, and one loaded already is left alone."""
    stage = IngestStage(load_settings(), detection, Metrics(CollectorRegistry()), loop=None)
    envelopes = await envelopes_of(stage, list(genuine(profile, 160, seed=13)))
    proc0, first, _, written = shard_of(detection)
    for i, (p, value) in enumerate(envelopes):
        await proc0.process(FakeEvent(p, i, value))
    before = {p: dict(e.states()) for p, e in first.engines.items()}
    assert len(before) >= 2
    for p in list(first.engines):
        first.flush(p)
    assert await first.settle(timeout=5)
    _, shard, _, _ = shard_of(detection, recovered(written))
    busy = min(before)
    shard.assigned(set(before))
    engine = shard.engine(busy)  # this one got its first envelope already
    assert await shard.restore_assigned() == len(before) - 1
    assert shard.engines[busy] is engine
    for p, states in before.items():
        assert dict(shard.engines[p].states()) == states, f"partition {p} did not load its state"
    assert await shard.restore_assigned() == 0, "loaded once"


def test_eviction_takes_flagged_and_alerting_entities_last(detection):
    s = replace(detection.behaviour, max_entities=detection.behaviour.buckets * 4)  # 4 per bucket
    e = BehaviourEngine(s, detection.alerts, detection.scoring.weight_of)
    # a device flagged for fan-out, first in its bucket (the least recently seen)
    flagged = [rec("device", "dev-flagged", T0 + i, i, account=f"acc-{i}") for i in range(6)]
    assert e.observe(flagged).flags
    for i in range(400):
        e.observe([rec("device", f"dev-{i}", T0 + 10 + i * 0.01, i)])
    assert e.state("device", "dev-flagged") is not None, "the flagged entity outlived 400 newer ones"
    assert e.entity_count() <= s.max_entities and e.evicted >= 400 - s.max_entities
    # once its flag expired, it goes like any other
    late = T0 + s.flag_ttl_s + 3 * detection.alerts.window_s
    for i in range(4000):
        e.observe([rec("device", f"later-{i}", late + i * 0.01, i)])
    assert e.state("device", "dev-flagged") is None


def test_evicted_entities_are_written_as_tombstones(detection):
    s = replace(detection.behaviour, max_entities=detection.behaviour.buckets)  # 1 per bucket
    e = BehaviourEngine(s, detection.alerts, detection.scoring.weight_of)
    e.observe([rec("device", f"dev-{i}", T0 + i, i) for i in range(500)])
    keys, _ = e.take_changes()
    written = {k: e.encoded(k, b) for k, b in keys}
    assert len(written) == 500
    assert sum(v is None for v in written.values()) == 500 - e.entity_count()


def test_the_live_cache_is_bounded_and_loses_nothing(detection):
    e = BehaviourEngine(detection.behaviour, detection.alerts, detection.scoring.weight_of)
    n = LIVE_MAX_ENTITIES * 3
    e.observe([rec("device", f"dev-{i}", T0 + i * 0.001, i, account=f"a{i}") for i in range(n)])
    assert len(e.live) <= LIVE_MAX_ENTITIES
    keys, _ = e.take_changes()
    assert len(keys) == n and all(e.encoded(k, b) is not None for k, b in keys)
    assert decode_blob(e.buckets[keys[0][1]].entities[keys[0][0]])["last"] == T0


def test_lateness_is_judged_per_source_partition(detection):
    """A backlog read partition by partition is not late: each source partition is in
    order; a record older than its own source's watermark by the allowed lateness is."""
    e = BehaviourEngine(detection.behaviour, detection.alerts, detection.scoring.weight_of)
    lateness = detection.behaviour.allowed_lateness_s
    first = [rec("device", "d", T0 + i * 10, i) for i in range(100)]  # 1,000 s of source partition 0
    second = [rec("device", "d", T0 + i * 10 + 1, i) for i in range(100)]  # the same span, partition 1
    assert e.observe(first, sources=[(0, i, 0) for i in range(100)]).late == 0
    assert e.observe(second, sources=[(1, i, 0) for i in range(100)]).late == 0
    old = rec("device", "d", T0 + 991 - lateness - 50, 0)
    assert e.observe([old], sources=[(1, 500, 0)]).late == 1
    assert e.observe([old], sources=[(2, 0, 0)]).late == 0  # a third partition starts its own


def test_packed_signatures_keep_their_slots_and_last_64():
    table = b""
    sigs = [f"{i:016x}" for i in range(70)]
    for i, sig in enumerate(sigs):
        table = add_sig(table, sig_bytes(sig), i % 8)
    assert find_sig(table, sig_bytes(sigs[0])) == -1  # the oldest 6 were forgotten
    assert [find_sig(table, sig_bytes(s)) for s in sigs[6:]] == [i % 8 for i in range(6, 70)]
    assert len(sig_bytes("not hex, any length")) == 8


async def test_a_flush_of_many_changes_serves_the_event_loop_between_steps(detection):
    proc, shard, _, table = shard_of(detection)
    engine = shard.engine(0)
    n = FLUSH_STEP * 8
    engine.observe([rec("device", f"dev-{i}", T0 + i * 0.001, i) for i in range(n)], offset=1)
    turns = 0

    async def ticker() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    t = asyncio.get_running_loop().create_task(ticker())
    shard.flush(0)
    assert await shard.settle(timeout=10)
    t.cancel()
    assert sum(1 for _, k, _ in table.sent if ":e:" in orjson.loads(k)) == n
    assert turns >= n // FLUSH_STEP, "the loop ran between the flush's steps"


# --- upgrade: the previous release's changelog -------------------------------------------
def fixture_records(topic: str) -> list[dict[str, Any]]:
    out = []
    for line in FIXTURE.read_text().splitlines():
        r = json.loads(line)
        if r["topic"] == topic:
            r["key"] = base64.b64decode(r["key"]) if r["key"] else None
            r["value"] = base64.b64decode(r["value"]) if r["value"] else None
            out.append(r)
    return out


def previous_release_table() -> tuple[FakeTable, dict[int, int]]:
    """The table Faust restores from the previous release's changelog, and the number
    of entities each partition's bucket snapshots hold."""
    table = FakeTable()
    counts: dict[int, int] = {}
    for r in fixture_records("changelog"):
        name = orjson.loads(r["key"])
        parsed = parse_table_key(name)
        assert parsed is not None and parsed.kind == "legacy"
        table.data[name] = r["value"]
        counts[parsed.partition] = counts.get(parsed.partition, 0) + len(orjson.loads(r["value"])["e"])
    return table, counts


async def test_upgrade_migrates_the_previous_release_state(detection):
    table, counts = previous_release_table()
    legacy_keys = set(table.data)
    _, shard, _, _ = shard_of(detection, table)
    for p, n in counts.items():
        assert shard.engine(p).entity_count() == n
        assert any(st.get("sg") for _, st in shard.engine(p).states() if _.startswith("device|"))
        shard.flush(p)
    assert await shard.settle(timeout=10)
    tombstones = {orjson.loads(k) for _, k, v in table.sent if v is None}
    assert tombstones == legacy_keys, "every migrated bucket snapshot is tombstoned"
    # restarted on the changelog as it is now: this release's records only
    written = FakeTable()
    written.sent = [(0, orjson.dumps(k), v) for k, v in table.data.items()] + table.sent
    after = recovered(written)
    assert {parse_table_key(k).kind for k in after.data} == {"entity", "meta"}  # type: ignore[union-attr]
    _, again, _, _ = shard_of(detection, after)
    for p, n in counts.items():
        assert dict(again.engine(p).states()) == dict(shard.engines[p].states())


async def test_upgrade_discards_state_of_another_version_and_carries_on(detection, profile):
    table, counts = previous_release_table()
    bumped = replace(detection.behaviour, state_version=detection.behaviour.state_version + 1)
    other = replace(detection, behaviour=bumped)
    proc, shard, sent, _ = shard_of(other, table)
    for p in counts:
        assert shard.engine(p).entity_count() == 0
    stage = IngestStage(load_settings(), other, Metrics(CollectorRegistry()), loop=None)
    for i, (p, value) in enumerate(await envelopes_of(stage, list(private_api_library(profile, 40, seed=6)))):
        await proc.process(FakeEvent(p, 10_000 + i, value))
    assert sent.alerts, "the shard works on from empty state"
    for p in list(shard.engines):
        shard.flush(p)
    await writes_done()
    assert await shard.settle(timeout=10)


