"""Written once, run for every behaviour detector (`all_detectors()`), each driven by
the golden fixtures of its codes (tests/fixtures/codes): its codes are declared,
named in a behaviour family, weighted and documented; its state survives a dump and
load of the engine's buckets mid-sequence (the restored state is equal, and the rest
of the sequence gives the same flags, alerts and state as without the restart, and
the code is raised only thanks to the restored state); and the same records give the
same outputs and state in a fresh engine."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from detector.behaviour.engine import BehaviourEngine, Output, all_detectors
from detector.behaviour.records import EntityRecord, records_for
from detector.engine import DetectionConfig
from tests.codes import config_for, expected, requests

DOCS = (Path(__file__).resolve().parents[2] / "docs" / "detections.md").read_text()
FAMILIES = ("replay", "behaviour", "population")
DETECTORS = [(etype, d) for etype, ds in all_detectors().items() for d in ds]
CASES = [(etype, type(d).__name__, code) for etype, d in DETECTORS for code in sorted(d.codes)]


def _ids(case: Any) -> str:
    return f"{case[0]}:{case[1]}:{case[2]}"


def records_of(cfg: DetectionConfig, code: str) -> list[list[EntityRecord]]:
    """The entity records of the fixture's requests, per request in event-time order
    (records carry only a request's stateless evidence, so no flags are needed)."""
    pipe = cfg.pipeline()
    out = []
    for r in sorted(requests(cfg, code), key=lambda r: r.ts):
        verdict, ctx = pipe.assess(r)
        out.append(records_for(r, ctx, verdict))
    return out


def engine(cfg: DetectionConfig) -> BehaviourEngine:
    return BehaviourEngine(cfg.behaviour, cfg.alerts, cfg.scoring.weight_of)


def feed(e: BehaviourEngine, batches: list[list[EntityRecord]], start: int, ref: float) -> list[Output]:
    """Each request's records as OfflineScorer applies them (one source position each)."""
    return [e.observe(recs, sources=[(0, start + i + 1, 0)] * len(recs), reference=ref)
            for i, recs in enumerate(batches)]


def dump(e: BehaviourEngine) -> tuple[list[tuple[str, bytes]], bytes]:
    """A complete snapshot: every entity's record (in the buckets' order) and the meta record."""
    return e.dump_all()


def raised(outs: list[Output], etype: str) -> set[str]:
    """Codes of the flags raised on entities of `etype`."""
    return {f.code for o in outs for u in o.flags if u.etype == etype for f in u.flags}


def test_every_detector_is_in_the_suite():
    assert DETECTORS and all(d.codes for _, d in DETECTORS)
    owner: dict[str, str] = {}
    for _, d in DETECTORS:  # one class may run for several entity types (Activity: device, account)
        for code in d.codes:
            assert owner.setdefault(code, type(d).__name__) == type(d).__name__, f"{code} declared twice"


# The keys the detectors' parts of an entity's state are stored under, as stored today:
# a changed key orphans every stored part (change one only with a state_version bump).
STATE_KEYS = {"DeviceFanout", "AccountFanout", "IpBlockFanout", "HostingAsnFanout", "Activity", "ActionOnlySessions",
              "DeviceReplay", "ReplayDetector", "Travel", "Population"}


def test_state_keys_are_declared_unique_and_stable():
    for etype, ds in all_detectors().items():
        keys = [d.state_key for d in ds]
        assert len(set(keys)) == len(keys), f"two {etype} detectors share a state key"
    for _, d in DETECTORS:
        assert isinstance(d.state_version, int) and d.state_version >= 1, type(d).__name__
    assert {d.state_key for _, d in DETECTORS} == STATE_KEYS


@pytest.mark.parametrize("etype, name, code", CASES, ids=[_ids(c) for c in CASES])
def test_state_is_stored_under_the_declared_key(etype, name, code, detection):
    cfg = config_for(detection, code)
    e = engine(cfg)
    feed(e, records_of(cfg, code), 0, expected(code)["reference_time"])
    key = next(d.state_key for t, d in DETECTORS if t == etype and type(d).__name__ == name)
    parts = [st for k, st in e.states() if k.startswith(etype + "|")]
    assert any(st.get(key) for st in parts), f"no {etype} entity holds state under {key!r}"


@pytest.mark.parametrize("etype, name, code", CASES, ids=[_ids(c) for c in CASES])
def test_codes_are_declared_weighted_and_documented(etype, name, code, detection):
    assert re.fullmatch(r"[a-z0-9_]+\.[a-z0-9_]+", code) and code.split(".")[0] in FAMILIES
    assert code in detection.scoring.weights, f"{code} has no weight in config"
    assert f"`{code}`" in DOCS, f"{code} is not documented in docs/detections.md"


@pytest.mark.parametrize("etype, name, code", CASES, ids=[_ids(c) for c in CASES])
def test_state_round_trip_mid_sequence(etype, name, code, detection):
    cfg = config_for(detection, code)
    ref = expected(code)["reference_time"]
    batches = records_of(cfg, code)
    whole = engine(cfg)
    outs = feed(whole, batches, 0, ref)
    first = next(i for i, o in enumerate(outs) if code in raised([o], etype))
    assert first > 0, f"{code} raised on the first request: nothing to restore"
    # restart right before the request that raises the code
    before = engine(cfg)
    feed(before, batches[:first], 0, ref)
    saved = dump(before)
    restored = engine(cfg)
    assert restored.restore(saved[1], saved[0]) == (len(saved[0]), 0)
    assert dump(restored) == saved, "state differs after load"
    assert restored.entity_count() == before.entity_count()
    after = feed(restored, batches[first:], first, ref)
    assert after == outs[first:], "outputs after the restore differ from the uninterrupted run"
    assert dump(restored) == dump(whole)
    assert code in raised(after, etype)
    # ... and only thanks to the restored state: without it that request does not raise it
    assert code not in raised(feed(engine(cfg), batches[first:first + 1], first, ref), etype)


@pytest.mark.parametrize("etype, name, code", CASES, ids=[_ids(c) for c in CASES])
def test_same_records_same_outputs(etype, name, code, detection):
    cfg = config_for(detection, code)
    ref = expected(code)["reference_time"]
    batches = records_of(cfg, code)
    a, b = engine(cfg), engine(cfg)
    outs_a, outs_b = feed(a, batches, 0, ref), feed(b, batches, 0, ref)
    assert outs_a == outs_b
    assert dump(a) == dump(b)
    assert code in raised(outs_a, etype)
    # re-sent records (the same source positions again) change nothing
    again = feed(a, batches, 0, ref)
    assert all(o.applied == 0 and not o.flags and not o.alerts for o in again)
    assert dump(a) == dump(b)


def test_stale_state_version_is_not_read(detection):
    """Entities and meta written under another state version restore empty (never
    read with a new meaning)."""
    from detector.behaviour.store import HEADER, HEADER_BYTES, blob_header

    code = "behaviour.device_account_fanout"
    batches = records_of(detection, code)
    e = engine(detection)
    feed(e, batches, 0, expected(code)["reference_time"])
    entities, meta = dump(e)
    fresh = engine(detection)
    assert fresh.restore(meta, entities) == (len(entities), 0) and fresh.entity_count() == len(entities)
    stale_meta = orjson.dumps({**orjson.loads(meta), "v": e.state_version + 1})
    stale = []
    for k, blob in entities:
        _, until, epoch, offset = blob_header(blob)
        stale.append((k, HEADER.pack(e.state_version + 1, until, epoch, offset) + blob[HEADER_BYTES:]))
    other = engine(detection)
    assert other.restore(stale_meta, entities) == (0, len(entities))
    assert other.restore(None, stale) == (0, len(entities))
    assert other.entity_count() == 0
