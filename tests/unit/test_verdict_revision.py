"""Revisions of a request's verdict (issue #15, item 1): the request that re-uses a
signature carries the replay evidence in its own (final) verdict, offline and in the
stream's shard; the original stays clean; a genuine app retry after a network switch
is not a replay."""

from __future__ import annotations

import dataclasses
import json
import math
import random
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import orjson
import pytest
from aiokafka.structs import TopicPartition
from prometheus_client import CollectorRegistry

from agents.ingest import IngestStage
from agents.metrics import Metrics
from agents.settings import load_settings
from agents.shards import ShardProcessor, ShardState
from agents.topics import CLIENT_REQUESTS, ENTITY_EVENTS, VERDICTS
from detector.behaviour.engine import BehaviourEngine
from detector.behaviour.offline import OfflineScorer
from detector.behaviour.records import EntityRecord
from detector.behaviour.replay import DEVICE_REPLAYED, REUSED, REUSED_ELSEWHERE
from detector.behaviour.revision import (
    STATED_IN_REVISION_0,
    Revision,
    merged_verdict,
    revised_verdict,
    verdict_key,
)
from detector.decode import request_from_obj
from detector.model import VERDICT_MAX_BYTES
from detector.simulate import genuine, replay_once
from tests.unit.test_worker_safety import FakeEvent, FakeOut, FakeTable, Sent, msg, sample

ROOT = Path(__file__).resolve().parents[2]
VERDICT_SCHEMA = jsonschema.Draft202012Validator(
    json.loads((ROOT / "config" / "schema" / "verdict.schema.json").read_text()))
T0 = 1_800_000_000.0


def rec(etype: str, key: str, ts: float, rid: str, **kw: Any) -> EntityRecord:
    base: dict[str, Any] = dict(request_id=rid, ts=ts, level=0, score=0.0, codes=(), profile="example-android",
                                ip="100.64.0.7", asn=64500, hosting=False, country="US", device="dev-1",
                                account="1234567", session="sess-1", endpoint="action", sig=key[:16],
                                sign_age=0.5)
    base.update(kw)
    return EntityRecord(etype, key, **base)


@pytest.fixture
def engine(detection: Any) -> BehaviourEngine:
    return BehaviourEngine(detection.behaviour, detection.alerts, detection.scoring.weight_of)


SIG = "ab" * 32


def test_the_replaying_request_gets_a_revision_of_its_own_verdict(engine, detection):
    original = rec("signature", SIG, T0, "r-orig")
    again = rec("signature", SIG, T0 + 45, "r-replay", ip="203.0.113.9", asn=16509, hosting=True, country="DE")
    assert not engine.observe([original]).revisions
    # a genuine first use is stored as before (no state added for it)
    assert len(engine.state("signature", SIG)["ReplayDetector"]["first"]) == 5
    out = engine.observe([again])
    (rev,) = out.revisions
    assert rev.record.request_id == "r-replay" and rev.code == REUSED_ELSEWHERE
    v = revised_verdict(rev, detection.scoring)
    assert (v.request_id, v.ts, v.verdict, v.revision, v.supersedes) == ("r-replay", T0 + 45, "malicious", 1, 0)
    assert [s.code for s in v.signals] == [REUSED_ELSEWHERE]
    assert "r-orig" in v.signals[0].detail and "203.0.113.9" in v.signals[0].detail
    assert v.entities == {"ip": "203.0.113.9", "device": "dev-1", "account": "1234567", "session": "sess-1",
                          "signature": SIG, "ip_block": "203.0.113.0/24"}
    # keyed as the ingest stage keys the verdict it replaces: its device id
    assert verdict_key(rev.record) == b"dev-1"
    assert verdict_key(rec("signature", SIG, T0, "r-9", device=None)) == b"r-9"
    body = orjson.loads(v.to_json())
    assert body["revision"] == 1 and body["supersedes"] == 0
    VERDICT_SCHEMA.validate(body)
    # the signature's flag is raised too (its later uses carry it at ingest)
    assert {f.code for u in out.flags for f in u.flags} == {REUSED_ELSEWHERE}


def test_a_revision_keeps_the_requests_own_stateless_signals(engine, detection):
    codes = ("network.hosting",)
    assert all(detection.scoring.weight_of(c) for c in codes)
    engine.observe([rec("signature", SIG, T0, "r-orig")])
    (rev,) = engine.observe([rec("signature", SIG, T0 + 60, "r-replay", ip="198.51.100.4", hosting=True,
                                 codes=codes, level=1, score=0.5)]).revisions
    v = revised_verdict(rev, detection.scoring)
    assert [(s.code, s.detail) for s in v.signals][0] == ("network.hosting", STATED_IN_REVISION_0)
    w1, w2 = detection.scoring.weight_of("network.hosting"), detection.scoring.weight_of(REUSED_ELSEWHERE)
    assert v.score == pytest.approx(1 - (1 - w1) * (1 - w2), abs=1e-4)


def test_the_ingest_verdict_has_no_revision_field(detection, profile):
    (e,) = list(genuine(profile, 1, seed=2))
    v = detection.pipeline().score_one(request_from_obj(e))
    body = orjson.loads(v.to_json())
    assert "revision" not in body and "supersedes" not in body


@pytest.mark.parametrize("delay,hosting,other_device,revised", [
    (4.0, False, False, False),   # Wi-Fi -> mobile retry: the same device seconds later on a carrier
    (15.0, False, False, False),  # the bound itself
    (20.0, False, False, True),   # past the retry bound: a replay
    (4.0, True, False, True),     # seconds later, but from a hosting network: a replay
    (4.0, False, True, True),     # seconds later from another device id: a replay
])
def test_a_retry_after_a_network_switch_is_not_a_replay(engine, detection, delay, hosting, other_device, revised):
    s = engine.s
    assert s.replay_retry_s == 15.0
    original = rec("signature", SIG, T0, "r-orig", ip="192.168.1.20", asn=7922)
    retry = rec("signature", SIG, T0 + delay, "r-retry", ip="172.58.3.9", asn=21928, hosting=hosting,
                device="dev-2" if other_device else "dev-1")
    engine.observe([original])
    out = engine.observe([retry])
    assert bool(out.revisions) is revised
    assert {f.code for u in out.flags for f in u.flags} == ({REUSED_ELSEWHERE} if revised else {REUSED})


def test_the_device_shard_does_not_take_a_network_switch_retry_for_a_replay(engine):
    own = [rec("device", "dev-1", T0 + i * 5, f"r-{i}", ip="192.168.1.20", sig=f"s{i:015d}", sign_age=0.4,
               endpoint="browse") for i in range(5)]
    assert not engine.observe(own).flags
    # the app re-sends request 4 (its signing time: 3.5 s older) from the carrier
    retry = rec("device", "dev-1", T0 + 23.5, "r-4b", ip="172.58.3.9", sig="s000000000000004", sign_age=3.9,
                endpoint="browse")
    assert not engine.observe([retry]).flags
    replay = rec("device", "dev-1", T0 + 60, "r-3b", ip="172.58.3.9", sig="s000000000000003", sign_age=45.4,
                 endpoint="browse")
    assert {f.code for u in engine.observe([replay]).flags for f in u.flags} == {DEVICE_REPLAYED}


def test_uses_arriving_in_reverse_event_order_revise_the_later_one(engine, detection):
    """Two ingest processes: the replay's record may reach the signature shard first."""
    replay = rec("signature", SIG, T0 + 45, "r-replay", ip="203.0.113.9", asn=16509, hosting=True, device="dev-1",
                 codes=("network.hosting",), level=1, score=0.5)
    original = rec("signature", SIG, T0, "r-orig")
    assert not engine.observe([replay]).revisions
    (rev,) = engine.observe([original]).revisions
    assert rev.record.request_id == "r-replay" and rev.record.ts == T0 + 45 and rev.record.hosting
    assert rev.record.codes == ("network.hosting",)
    v = revised_verdict(rev, detection.scoring)
    assert v.verdict == "malicious" and "r-orig" in v.signals[-1].detail
    # the original is the first use now: a third use names it
    (third,) = engine.observe([rec("signature", SIG, T0 + 90, "r-3", ip="198.51.100.1")]).revisions
    assert "r-orig" in third.detail


def test_an_envelope_processed_again_re_emits_an_identical_revision(detection):
    def run() -> list[bytes]:
        e = BehaviourEngine(detection.behaviour, detection.alerts, detection.scoring.weight_of)
        e.observe([rec("signature", SIG, T0, "r-orig")], offset=1, sources=[(0, 1, 0)])
        snapshot = e.dump_all()
        out = e.observe([rec("signature", SIG, T0 + 45, "r-x", ip="203.0.113.9")], offset=2, sources=[(1, 1, 0)])
        first = [revised_verdict(r, detection.scoring).to_json() for r in out.revisions]
        # after a crash before the next flush: restored from the snapshot, read again
        again = BehaviourEngine(detection.behaviour, detection.alerts, detection.scoring.weight_of)
        again.restore(snapshot[1], snapshot[0])
        out2 = again.observe([rec("signature", SIG, T0 + 45, "r-x", ip="203.0.113.9")], offset=2,
                             sources=[(1, 1, 0)])
        assert [revised_verdict(r, detection.scoring).to_json() for r in out2.revisions] == first
        return first

    a, b = run(), run()
    assert a == b and len(a) == 1


def test_a_revision_is_bounded_and_valid_with_hostile_ids(engine, detection):
    long = "x" * 5000
    from detector.behaviour.records import bounded_id

    r1 = rec("signature", SIG, T0, bounded_id(long + "1"), device=bounded_id(long), account=bounded_id("é" * 900),
             session=bounded_id('"\\' * 3000), profile="p" * 64)
    r2 = msgspec.structs.replace(r1, request_id=bounded_id(long + "2"), ts=T0 + 30, ip="203.0.113.9", hosting=True)
    engine.observe([r1])
    (rev,) = engine.observe([r2]).revisions
    raw = revised_verdict(rev, detection.scoring).to_json()
    assert len(raw) <= VERDICT_MAX_BYTES and len(raw) < 4096
    VERDICT_SCHEMA.validate(orjson.loads(raw))
    assert len(verdict_key(rev.record)) <= 128


def test_offline_merges_the_revision_into_the_whole_verdict(detection, profile):
    (e,) = list(genuine(profile, 1, seed=4))
    v = detection.pipeline().score_one(request_from_obj(e))
    rec1 = rec("signature", SIG, v.ts, v.request_id)
    m = merged_verdict(v, Revision(rec1, REUSED_ELSEWHERE, "reused"), detection.scoring)
    assert (m.revision, m.supersedes, m.verdict) == (1, 0, "malicious")
    assert m.fingerprints == v.fingerprints and m.entities == v.entities
    assert [s.code for s in m.signals] == [s.code for s in v.signals] + [REUSED_ELSEWHERE]


def replay_traffic(profile: Any, seed: int) -> list[dict[str, Any]]:
    """Genuine users and a capture-and-replay service replaying each captured signed
    request once, 20-250 s later, from other networks."""
    rep = list(replay_once(profile, 400, seed=seed))
    good = list(genuine(profile, 300, seed=seed + 1, start_ts=rep[0]["ts"]))
    return sorted(rep + good, key=lambda e: e["ts"])


def recall(events: list[dict[str, Any]], verdicts: dict[str, dict[str, Any]]) -> tuple[float, list[str], list[str]]:
    """(share of replays whose verdict carries a replay signal, originals not clean,
    genuine requests not clean)."""
    replays = [e for e in events if e["label"].get("role") == "replay"]
    hit = [e for e in replays if any(s["code"].startswith("replay.") for s in verdicts[e["request_id"]]["signals"])]
    captured = [e["request_id"] for e in events if e["label"].get("role") == "captured"
                and verdicts[e["request_id"]]["verdict"] != "clean"]
    good = [e["request_id"] for e in events if "role" not in e["label"]
            and verdicts[e["request_id"]]["verdict"] != "clean"]
    return len(hit) / len(replays), captured, good


def test_offline_every_replaying_request_carries_the_replay_in_its_final_verdict(detection, profile):
    events = replay_traffic(profile, 11)
    assert sum(e["label"].get("role") == "replay" for e in events) >= 150
    delays = [e["ts"] - next(o["ts"] for o in events if o["request_id"] == e["label"]["original"])
              for e in events if e["label"].get("role") == "replay"]
    assert 20 <= min(delays) and max(delays) <= 250
    scorer = OfflineScorer(detection, reference_time=math.inf)
    verdicts, _ = scorer.score([request_from_obj(e) for e in events])
    by_id = {v.request_id: orjson.loads(v.to_json()) for v in verdicts}
    share, captured, good = recall(events, by_id)
    assert share >= 0.99 and not captured and not good
    assert scorer.revisions >= 150


async def test_the_shard_revises_the_replaying_requests_verdict_from_two_ingest_processes(detection, profile):
    """The stream's stages in process: two ingest stages on randomly keyed input
    (`verdicts.emit: flagged`), every envelope of one ingest reaching the shard before
    the other's (the worst order), no flag ever reaching ingest; the highest revision
    per request id carries the replay for >= 99% of the replays, the originals stay
    clean, each revision on its verdict's partition key."""
    det = dataclasses.replace(detection, verdicts_emit="flagged")
    events = replay_traffic(profile, 12)
    rng = random.Random(5)
    parts: list[list[dict[str, Any]]] = [[], []]
    for e in events:
        parts[rng.randrange(2)].append(e)
    verdicts: dict[str, dict[str, Any]] = {}
    keys: dict[str, bytes | None] = {}
    envelopes: list[tuple[int, bytes]] = []
    for src, part in enumerate(parts):
        stage = IngestStage(load_settings(), det, Metrics(CollectorRegistry()), loop=None)
        for off in range(0, len(part), 25):
            chunk = part[off:off + 25]
            out = FakeOut()
            tp = TopicPartition(CLIENT_REQUESTS.name, src)
            await stage._score_batch({tp: [msg(off, orjson.dumps(chunk), (chunk[-1]["ts"] + 1) * 1000)]}, out)
            for topic, value, key, p in out.records:
                if topic == VERDICTS.name:
                    v = orjson.loads(value)
                    verdicts[v["request_id"]], keys[v["request_id"]] = v, key
                elif topic == ENTITY_EVENTS.name:
                    envelopes.append((p or 0, value))
    assert all(v["verdict"] != "clean" for v in verdicts.values())  # emit: flagged
    metrics = Metrics(CollectorRegistry())
    shard = ShardState(det.behaviour, det, FakeTable(), metrics, interval=3600, changelog=FakeTable())
    sent, revisions = Sent(), []

    async def send_verdict(key: bytes, value: bytes) -> None:
        revisions.append((key, value))

    proc = ShardProcessor(shard, det, metrics, send_flag=sent.flag, send_alert=sent.alert, send_dlq=sent.dead,
                          send_verdict=send_verdict)
    offsets: dict[int, int] = {}
    for p, value in envelopes:
        offsets[p] = offsets.get(p, 0) + 1
        await proc.process(FakeEvent(p, offsets[p], value))
    assert not sent.dlq
    final = dict(verdicts)
    for key, value in revisions:
        v = orjson.loads(value)
        VERDICT_SCHEMA.validate(v)
        rid = v["request_id"]
        if rid in keys:
            assert key == keys[rid]  # the same partition as the verdict it replaces
        if v["revision"] > final.get(rid, {}).get("revision", 0):
            final[rid] = v
    # a clean ingest verdict was not written (emit: flagged): a request without one is clean
    clean = {"verdict": "clean", "signals": []}
    full = {e["request_id"]: final.get(e["request_id"], clean) for e in events}
    share, captured, good = recall(events, full)
    assert share >= 0.99, share
    assert not captured and not good
    assert sample(metrics, "detector_verdict_revisions_total", code=REUSED_ELSEWHERE) == len(revisions)


def test_a_reused_signatures_flag_never_reaches_its_first_use_scored_late(engine, detection):
    """Two ingest processes: the original may be scored after the replay's flag reached
    the ingest stage; the flag applies only to requests dated after the first use."""
    from detector.behaviour.flags import FlagMap
    from detector.entities import RequestFacts

    engine.observe([rec("signature", SIG, T0, "r-orig")])
    out = engine.observe([rec("signature", SIG, T0 + 45, "r-replay", ip="203.0.113.9", hosting=True)])
    fm = FlagMap(detection.scoring.weight_of)
    fm.apply(out.flags)
    ents = {"signature": SIG}
    assert not fm.signals_for(ents, T0, RequestFacts(0.5, None, T0))  # the original itself
    (sig,) = fm.signals_for(ents, T0 + 90, RequestFacts(90.5, None, T0 + 90))  # a third use
    assert sig.code == REUSED_ELSEWHERE and "after its first use" in sig.detail
