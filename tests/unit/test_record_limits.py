"""Every record the behaviour stage writes stays under its limit whatever the clients
send (issue 11, item 4): entity envelopes (split by bytes), state buckets (bounded per
entity), alerts (ALERT_MAX_BYTES) and flag updates (FLAG_MAX_BYTES), each checked by a
bounded property test driven by hostile requests through decode, assess and records."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from detector.alerts import ALERT_MAX_BYTES, MAX_SAMPLES, AlertSettings, AlertWindow, build_alert, iso, window_start
from detector.behaviour.engine import ENTITY_STATE_MAX_BYTES, META_MAX_BYTES, BehaviourEngine
from detector.behaviour.store import changelog_key, entity_table_key
from detector.behaviour.flags import FLAG_MAX_BYTES, Flag, FlagMap, FlagUpdate, Scope, decode_update, encode_update
from detector.behaviour.records import (
    KEY_MAX_BYTES,
    EntityRecord,
    bounded_id,
    decode_envelope,
    encode_envelopes,
    entity_key,
    records_for,
)
from detector.decode import TS_MAX, TS_MIN, InvalidRequest, request_from_obj
from detector.simulate import genuine, private_api_library

T0 = 1_800_000_000.0
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                           HealthCheck.data_too_large])

# hostile strings: anything short, or long runs of what costs most (JSON escapes a
# control character six-fold, an emoji is four UTF-8 bytes), up to decode's 8192 chars
_HOSTILE = st.one_of(
    st.text(max_size=40),
    st.builds(lambda c, n: c * n, st.sampled_from(["\x01", "a", "\u00e9", "\U0001f600", '"', "\\", "9"]),
              st.integers(1, 8192)),
)


def _sometimes(value: Any, p: float = 0.3) -> st.SearchStrategy[Any]:
    """`value`, or with probability about `p` a hostile string in its place."""
    return st.floats(0, 1).flatmap(lambda x: _HOSTILE if x < p else st.just(value))


@pytest.fixture(scope="module")
def bases(detection: Any) -> list[dict[str, Any]]:
    """Real requests to mutate: a malicious stack (it alerts) and genuine app traffic."""
    p = detection.profiles[detection.default_profile]
    return [*private_api_library(p, 6, seed=3), *genuine(p, 6, seed=3, catalogue=detection.catalogue)]


@st.composite
def hostile_requests(draw: st.DrawFn, bases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A batch of requests sharing a few hostile entity ids (so flags and alerts are
    raised), each with hostile values wherever the contract takes a string."""
    pool = draw(st.lists(_HOSTILE.filter(bool), min_size=1, max_size=3))
    n = draw(st.integers(1, 14))
    ts0 = draw(st.floats(TS_MIN, TS_MAX - 10_000))
    out = []
    for i in range(n):
        e = dict(bases[draw(st.integers(0, len(bases) - 1))])
        e["request_id"] = draw(st.text(min_size=1, max_size=128))
        e["ts"] = ts0 + i * draw(st.floats(0, 5))
        e["device_id"] = draw(st.sampled_from(pool))
        e["account_id"] = draw(st.one_of(_HOSTILE.filter(bool), st.integers(10**4, 10**19).map(str)))
        e["session_id"] = draw(st.sampled_from(pool))
        # (each hostile value only sometimes: a request with one that decode refuses is
        # dead-lettered, and the batch must still carry requests that reach the engine)
        e["network"] = {"asn": draw(st.integers(0, 2**32 - 1)), "as_org": draw(_sometimes("Amazon.com")),
                        "country": draw(_sometimes(draw(st.sampled_from(["US", "IN", "BR", "DE"])), 0.1)),
                        "hosting": draw(st.booleans())}
        e["tls"] = {**e.get("tls", {}), "ja4": draw(_sometimes(e.get("tls", {}).get("ja4", "t13d"), 0.2))}
        headers = [list(h) for h in e["headers"]]
        for h in headers:
            h[1] = draw(_sometimes(h[1], 0.05))
        e["headers"] = headers
        out.append(e)
    return out


def _run(detection: Any, events: list[dict[str, Any]]) -> tuple[BehaviourEngine, list[EntityRecord],
                                                                 list[tuple[int, int, int]], list[bytes],
                                                                 list[dict[str, Any]]]:
    """decode -> assess -> records -> engine, as the stream does; the flag updates
    (encoded) and alerts it raised."""
    pipe = detection.pipeline()
    engine = BehaviourEngine(detection.behaviour, detection.alerts, detection.scoring.weight_of)
    flags = FlagMap(detection.scoring.weight_of)
    records: list[EntityRecord] = []
    sources: list[tuple[int, int, int]] = []
    updates: list[bytes] = []
    alerts: list[dict[str, Any]] = []
    for i, e in enumerate(events):
        try:
            r = request_from_obj(e, detection.limits)
        except InvalidRequest:
            continue
        verdict, ctx = pipe.assess(r, flags)
        recs = records_for(r, ctx, verdict)
        src = [(0, i, j) for j in range(len(recs))]
        records += recs
        sources += src
        out = engine.observe(recs, sources=src)
        flags.apply(out.flags)
        updates += [encode_update(u) for u in out.flags]
        alerts += out.alerts
    return engine, records, sources, updates, alerts


def _entity_state_sizes(engine: BehaviourEngine) -> list[int]:
    """The size of every entity's changelog record (key and value)."""
    p = 99  # the widest partition number a key names here
    return [len(changelog_key(entity_table_key(p, k))) + len(blob) for k, blob in engine.dump_all()[0]]


# ------------------------------------------------------------------ properties


@PROPERTY
@given(data=st.data())
def test_records_of_hostile_requests_stay_under_every_limit(detection, bases, data):
    events = data.draw(hostile_requests(bases))
    engine, records, sources, updates, alerts = _run(detection, events)
    assume(records)  # (a batch decode refused whole says nothing here)
    for r in records:
        for value in (r.key, r.request_id, r.device, r.account, r.session):
            assert value is None or len(value.encode("utf-8", "surrogatepass")) <= KEY_MAX_BYTES
    # envelopes: split by bytes, each under the limit, and back in order
    limit = data.draw(st.integers(8 * 1024, 900_000))
    chunks = encode_envelopes(records, sources, limit)
    assert all(len(c) <= limit for c in chunks)
    back = [decode_envelope(c) for c in chunks]
    assert [r for env in back for r in env.records] == records
    assert [tuple(s) for env in back for s in env.sources] == sources
    # flag updates and alerts
    assert all(len(u) <= FLAG_MAX_BYTES for u in updates)
    assert all(len(a.to_json()) <= ALERT_MAX_BYTES for a in alerts)
    # state: every entity under its bound, every bucket under the sum of its entities'
    assert all(size <= ENTITY_STATE_MAX_BYTES for size in _entity_state_sizes(engine))
    assert len(engine.dump_meta()) <= META_MAX_BYTES


@PROPERTY
@given(records=st.lists(st.tuples(_HOSTILE.filter(bool), st.text(max_size=128), st.integers(0, 3)), max_size=60),
       limit=st.integers(4096, 200_000))
def test_encode_envelopes_round_trips_and_splits_by_bytes(records, limit):
    recs = [EntityRecord("device", bounded_id(k), bounded_id(rid), T0 + i, lv % 3, 0.5, ("ua.missing",) * lv,
                         "example-android", "10.0.0.1", None, False, None, bounded_id(k), None, None, "browse")
            for i, (k, rid, lv) in enumerate(records)]
    sources = [(i % 4, 10_000 + i, i % 7) for i in range(len(recs))]
    chunks = encode_envelopes(recs, sources, limit)
    assert all(len(c) <= limit for c in chunks)
    assert len(chunks) >= (1 if recs else 0) and (len(chunks) == 1 or sum(map(len, chunks)) > limit)
    back = [decode_envelope(c) for c in chunks]
    assert [r for env in back for r in env.records] == recs
    assert [tuple(s) for env in back for s in env.sources] == sources


@PROPERTY
@given(eid=_HOSTILE.filter(bool), samples=st.lists(st.text(min_size=1, max_size=128), max_size=MAX_SAMPLES),
       codes=st.dictionaries(_HOSTILE.filter(bool), st.integers(1, 10**6), max_size=300),
       flags=st.dictionaries(_HOSTILE.filter(bool), _HOSTILE, max_size=80),
       profiles=st.sets(_HOSTILE, max_size=60), first=st.floats(allow_nan=True, allow_infinity=True))
def test_an_alert_is_bounded_whatever_its_evidence(eid, samples, codes, flags, profiles, first):
    s = AlertSettings(samples=MAX_SAMPLES)
    w = AlertWindow(first_ts=first, last_ts=first, count=5, revision=1, severity="medium", codes=Counter(codes),
                    profiles=profiles, ips={f"10.0.0.{i}" for i in range(200)}, samples=samples)
    alert = build_alert("device", eid, window_start(first, s.window_s), w, s, flags)
    assert len(alert.to_json()) <= ALERT_MAX_BYTES
    assert alert.entity.id == entity_key(eid)
    assert len(alert.entity.id.encode("utf-8", "surrogatepass")) <= KEY_MAX_BYTES


@PROPERTY
@given(key=_HOSTILE.filter(bool), details=st.lists(_HOSTILE, max_size=40), raised=st.floats(TS_MIN, TS_MAX))
def test_a_flag_update_is_bounded_and_decodes(key, details, raised):
    u = FlagUpdate("device", key, tuple(Flag(f"behaviour.code_{i}", d, raised + 3600,
                                             Scope(sign_age_over=12.5) if i % 2 else None)
                                        for i, d in enumerate(details)), raised)
    raw = encode_update(u)
    assert len(raw) <= FLAG_MAX_BYTES
    back = decode_update(raw)
    assert back.etype == "device" and back.raised_at == raised
    assert [f.code for f in back.flags] == [f.code for f in u.flags][:len(back.flags)] and len(back.flags) >= min(
        len(u.flags), 16)
    assert back.key == (key if len(raw) == len(msgspec.json.encode(u)) else entity_key(key))


@settings(max_examples=300, deadline=None)
@given(ts=st.floats(allow_nan=True, allow_infinity=True))
def test_alert_times_are_total_over_floats(ts):
    """Issue 11: a ts of 253402300700 (year 10000) crashed alert building."""
    text = iso(ts)
    assert len(text) == 24 and text.endswith("Z")
    window_start(ts, 300)


# ------------------------------------------------------------------ the cases


def test_one_fingerprint_with_unique_8kb_accounts_keeps_a_small_bucket(detection):
    """Issue 11: 300 requests of one fingerprint with unique 8 KB account ids made a
    2.5 MB state changelog record; members are digested, so the bucket stays small."""
    engine = BehaviourEngine(detection.behaviour, detection.alerts, detection.scoring.weight_of)
    engine.observe(EntityRecord("fingerprint", "fp1_0123456789abcdef", f"r{i}", T0 + i, 0, 0.0, (), "example-android",
                                f"10.0.{i % 250}.1", 64500, False, "US", f"android-{i:016x}",
                                f"{i:08d}" + "x" * 8192, None, "browse") for i in range(300))
    sizes = _entity_state_sizes(engine)
    assert len(sizes) == 1 and sizes[0] < 64 * 1024, sizes


def test_ten_requests_with_8kb_ids_make_small_envelopes(detection, bases):
    """Issue 11: 10 requests with 8 KB ids made a 17 MB entity envelope."""
    big = "\x01" * 8188
    events = [{**bases[i % len(bases)], "request_id": f"r-{i}", "device_id": f"{big}{i:04d}",
               "account_id": f"{big}{i:04d}", "session_id": big, "ts": T0 + i} for i in range(10)]
    _, records, sources, _, _ = _run(detection, events)
    assert len(records) >= 30
    (whole,) = encode_envelopes(records, sources, 900_000)
    assert len(whole) < 64 * 1024


def test_worst_case_entity_state_is_under_the_bound(detection):
    """A fingerprint entity with every distinct set saturated by the largest members
    kept as they are (64 printable bytes), flagged and alerting, with hostile session
    and device ids: the largest state one entity can have."""
    s = detection.behaviour
    engine = BehaviourEngine(s, detection.alerts, detection.scoring.weight_of)
    n = s.max_distinct * 4 + 200
    for etype, key in (("fingerprint", "fp1_0123456789abcdef"), ("device", "d" * 200), ("signature", "s" * 64)):
        engine.observe(EntityRecord(etype, bounded_id(key), bounded_id("\x01" * 128), T0 + i * 0.1, 2, 0.95,
                                    ("ua.missing", "tls.ja4_not_app"), "example-android",
                                    f"2001:db8:{i % 65536:x}::{i:x}", 64500 + i, i % 2 == 0, f"C{i % 40:02d}",
                                    f"{i:064d}"[-64:], f"{10**18 + i}"[-19:].rjust(64, "0"),
                                    bounded_id("\x01" * 200 + str(i % 20)), ("startup", "browse", "action")[i % 3],
                                    f"{i:016x}", 0.5) for i in range(n))
    sizes = _entity_state_sizes(engine)
    print(f"\nworst-case entity state: {max(sizes)} bytes (bound {ENTITY_STATE_MAX_BYTES})")
    assert max(sizes) <= ENTITY_STATE_MAX_BYTES


def test_keys_over_the_bound_have_a_stable_digest_form_and_flags_still_reach_verdicts(detection):
    long = "k" * 5000
    form = entity_key(long)
    assert form == entity_key(long) != entity_key(long + "x")
    assert form.startswith("k" * 40) and "~sha256:" in form and len(form.encode()) <= KEY_MAX_BYTES
    assert entity_key("android-0123456789abcdef") == "android-0123456789abcdef"
    fm = FlagMap(detection.scoring.weight_of)
    fm.apply([FlagUpdate("device", form, (Flag("behaviour.device_account_fanout", "many accounts", T0 + 60),), T0)])
    assert [s.code for s in fm.signals_for({"device": long}, T0)] == ["behaviour.device_account_fanout"]
    assert math.isfinite(T0)
