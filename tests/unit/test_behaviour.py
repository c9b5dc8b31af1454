"""The behaviour detectors and their engine, on hand-made entity records in event time."""

from __future__ import annotations

import math
import tracemalloc

import pytest

from detector.alerts import AlertSettings
from detector.behaviour.engine import BehaviourEngine, behaviour_codes
from detector.behaviour.flags import FlagMap, decode_update, encode_update
from detector.behaviour.records import BehaviourSettings, EntityRecord, decode_envelope, encode_envelope, Envelope

T0 = 1_800_000_000.0


def rec(etype: str, key: str, ts: float, i: int = 0, **kw) -> EntityRecord:
    base = dict(request_id=f"r-{etype}-{key}-{i}-{ts}", ts=ts, level=0, score=0.0, codes=(), profile="example-android",
                ip=kw.pop("ip", f"10.0.{i % 200}.{i % 250}"), asn=kw.pop("asn", 64500), hosting=kw.pop("hosting", False),
                country=kw.pop("country", "US"), device=kw.pop("device", None), account=kw.pop("account", None),
                session=kw.pop("session", None), endpoint=kw.pop("endpoint", "browse"))
    base.update(kw)
    return EntityRecord(etype, key, **base)


@pytest.fixture
def engine(detection):
    return BehaviourEngine(detection.behaviour, detection.alerts, detection.scoring.weight_of)


def codes(out) -> set[str]:
    return {f.code for u in out.flags for f in u.flags}


def test_every_behaviour_code_is_weighted_and_documented(detection):
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[2] / "docs" / "detections.md").read_text()
    for code in behaviour_codes():
        assert code in detection.scoring.weights
        assert f"`{code}`" in docs, code


def test_one_device_with_many_accounts_is_flagged_and_alerted(engine):
    out = engine.observe([rec("device", "dev-1", T0 + i * 7.3 + (i % 3), i, account=f"acc-{i}") for i in range(8)])
    assert "behaviour.device_account_fanout" in codes(out)
    assert out.alerts and (out.alerts[-1].entity.type, out.alerts[-1].entity.id) == ("device", "dev-1")
    assert "behaviour.device_account_fanout" in out.alerts[-1].codes
    assert "used by" in out.alerts[-1].evidence.flag_details()["behaviour.device_account_fanout"]


def test_family_device_with_two_accounts_is_not_flagged(engine):
    out = engine.observe([rec("device", "dev-2", T0 + i * 60 + (i * 37 % 29), i, account=f"acc-{i % 2}")
                          for i in range(40)])
    assert not out.flags and not out.alerts


def test_fanout_window_slides_in_event_time(engine):
    s = engine.s
    spread = s.device_accounts.window_s  # one new account per window: never 5 at once
    out = engine.observe([rec("device", "dev-3", T0 + i * spread, i, account=f"acc-{i}") for i in range(10)])
    assert not out.flags


def test_replayed_signature_from_other_ip_is_flagged_and_graded(engine):
    first = rec("signature", "sig-1", T0, 1, ip="1.1.1.1", asn=1, device="d1", request_id="r-first")
    again = [rec("signature", "sig-1", T0 + 20 + i * 61, i, ip=f"2.2.2.{i}", asn=100 + i, device="d1",
                 request_id=f"r-{i}") for i in range(4)]
    out = engine.observe([first] + again)
    assert codes(out) == {"replay.signature_reused_elsewhere"}
    assert "grade low" in out.flags[0].flags[0].detail and "grade high" in out.flags[-1].flags[0].detail


def test_a_request_reprocessed_is_never_its_own_replay(engine):
    r = rec("signature", "sig-2", T0, 1, request_id="r-same")
    assert not engine.observe([r, r, r]).flags


def test_same_signature_after_its_ttl_is_a_new_first_use(engine):
    s = engine.s
    out = engine.observe([rec("signature", "sig-3", T0, 1, ip="1.1.1.1"),
                          rec("signature", "sig-3", T0 + s.replay_ttl_s + 1, 2, ip="2.2.2.2")])
    assert not out.flags


def test_scripted_cadence_and_action_velocity(engine):
    out = engine.observe([rec("device", "dev-4", T0 + i * 1.0, i, endpoint="action", session="s1") for i in range(30)])
    assert {"behaviour.cadence_regular", "behaviour.action_velocity", "behaviour.action_only_session"} <= codes(out)


def test_human_cadence_is_not_regular(engine):
    import random

    rng = random.Random(3)
    t, recs = T0, []
    for i in range(40):
        t += rng.lognormvariate(1.6, 0.9)
        recs.append(rec("device", "dev-5", t, i, endpoint="browse" if i % 5 else "action", session="s1"))
    assert not engine.observe(recs).flags


def test_impossible_travel_but_not_a_vpn_switch(engine):
    out = engine.observe([rec("account", "a-1", T0, 1, country="IN"), rec("account", "a-1", T0 + 300, 2, country="BR"),
                          rec("account", "a-1", T0 + 600, 3, country="US")])
    assert codes(out) == {"behaviour.impossible_travel"}
    vpn = engine.observe([rec("account", "a-2", T0, 1, country="IN"),
                          rec("account", "a-2", T0 + 600, 2, country="NL", hosting=True)])
    assert not vpn.flags


def test_population_surge_of_a_concentrated_fingerprint(engine):
    recs = [rec("fingerprint", "fp1_lib", T0 + i, i, device=f"d{i}", account=f"a{i}", ip=f"5.6.7.{i % 4}")
            for i in range(60)]
    assert "population.fingerprint_device_surge" in codes(engine.observe(recs))


def test_popular_phone_spread_over_many_lines_is_not_a_surge(engine):
    recs = [rec("fingerprint", "fp1_pixel", T0 + i, i, device=f"d{i}", account=f"a{i}", ip=f"{10 + i}.{i}.1.2")
            for i in range(200)]
    assert not engine.observe(recs).flags


def test_late_records_are_dropped_by_the_allowed_lateness(engine):
    s = engine.s
    engine.observe([rec("device", "dev-6", T0 + 1000, 0, account="a0")])
    late = [rec("device", "dev-6", T0 + 1000 - s.allowed_lateness_s - 10 - i, i, account=f"late-{i}") for i in range(8)]
    out = engine.observe(late)
    assert out.late == 8 and not out.flags
    ok = engine.observe([rec("device", "dev-6", T0 + 1000 - 10 - i, i, account=f"ontime-{i}") for i in range(5)])
    assert ok.late == 0 and "behaviour.device_account_fanout" in codes(ok)


def flushed(engine: BehaviourEngine) -> tuple[list[tuple[str, bytes]], bytes | None]:
    """What a flush of the engine writes: its changed entities' records, the meta record."""
    keys, meta = engine.take_changes()
    out = []
    for ekey, b in keys:
        blob = engine.encoded(ekey, b)
        assert blob is not None
        out.append((ekey, blob))
    return out, meta


def test_snapshot_restore_neither_loses_nor_double_counts(detection):
    s, a, w = detection.behaviour, detection.alerts, detection.scoring.weight_of
    one = BehaviourEngine(s, a, w)
    batch1 = [rec("device", "dev-7", T0 + i, i, account=f"acc-{i}") for i in range(3)]
    batch2 = [rec("device", "dev-7", T0 + 10 + i, 10 + i, account=f"acc-{10 + i}") for i in range(3)]
    one.observe(batch1, offset=0)
    entities, meta = flushed(one)
    assert [k for k, _ in entities] == ["device|dev-7"]  # incremental: only what changed
    assert flushed(one) == ([], None)  # nothing changed since
    two = BehaviourEngine(s, a, w)
    assert two.restore(meta, entities) == (1, 0)
    assert two.observe(batch1, offset=0).applied == 0  # re-delivered envelope: already included
    out = two.observe(batch2, offset=1)
    assert out.applied == 3
    # 3 restored + 2 new accounts reach the threshold of 5 exactly at the second record
    (update,) = out.flags
    assert update.raised_at == T0 + 11 and "used by 5 accounts" in update.flags[0].detail


def test_records_resent_by_the_ingest_stage_are_applied_once(engine):
    recs = [rec("device", "dev-8", T0 + i, i, account=f"acc-{i}") for i in range(3)]
    src = [(0, 100 + i, 0) for i in range(3)]
    assert engine.observe(recs, sources=src).applied == 3
    assert engine.observe(recs, sources=src).applied == 0


def test_state_of_another_version_is_discarded(detection):
    from dataclasses import replace

    s = detection.behaviour
    e1 = BehaviourEngine(s, detection.alerts, detection.scoring.weight_of)
    e1.observe([rec("device", "dev-9", T0, 0, account="a")])
    entities, meta = flushed(e1)
    e2 = BehaviourEngine(replace(s, state_version=s.state_version + 1), detection.alerts, detection.scoring.weight_of)
    assert e2.restore(None, entities) == (0, 1) and e2.entity_count() == 0
    assert e2.load_meta(meta) is False


def test_detectors_keep_their_state_under_declared_stable_keys():
    """Stored state names each detector's part by its declared `state_key`: these
    names (the class names state was first written under) must never change, or
    stored state is orphaned; the engine's own keys are never taken."""
    from detector.behaviour.engine import all_detectors

    keys = {etype: [d.state_key for d in ds] for etype, ds in all_detectors().items()}
    assert keys == {
        "device": ["DeviceFanout", "Activity", "ActionOnlySessions", "DeviceReplay"],
        "account": ["AccountFanout", "Activity", "ActionOnlySessions", "Travel"],
        "ip_block": ["IpBlockFanout"], "asn": ["HostingAsnFanout"], "signature": ["ReplayDetector"],
        "fingerprint": ["Population"],
    }
    for ds in all_detectors().values():
        assert not {"v", "last", "flags", "aw", "sigs", "sg", "sip"} & {d.state_key for d in ds}


def test_bumping_a_detector_state_version_discards_stored_state(detection, monkeypatch):
    from detector.behaviour.travel import Travel

    s = detection.behaviour
    e1 = BehaviourEngine(s, detection.alerts, detection.scoring.weight_of)
    assert e1.state_version == s.state_version  # every detector at its first version
    e1.observe([rec("device", "dev-9", T0, 0, account="a")])
    entities, meta = flushed(e1)
    monkeypatch.setattr(Travel, "state_version", Travel.state_version + 1)
    e2 = BehaviourEngine(s, detection.alerts, detection.scoring.weight_of)
    assert e2.state_version == s.state_version + 1
    assert e2.restore(meta, entities) == (0, 1) and e2.entity_count() == 0
    # disabling a family changes nothing stored
    assert BehaviourEngine(s, detection.alerts, detection.scoring.weight_of, ("behaviour",)).state_version \
        == e2.state_version


def test_hostile_unique_keys_cannot_grow_state_without_bound(detection):
    from dataclasses import replace

    s = replace(detection.behaviour, max_entities=6400)
    e = BehaviourEngine(s, detection.alerts, detection.scoring.weight_of)
    e.observe(rec("ip_block", f"10.{i // 250}.{i % 250}.0/24", T0 + i * 0.001, i, account=f"a{i}") for i in range(50_000))
    assert e.entity_count() <= s.max_entities


@pytest.mark.slow
def test_memory_per_entity_is_bounded(detection):
    """A device with one account and a short session of signed requests (the common
    entity: its signatures are kept for the replay check, its signing ages for the
    replayed-device scope, its session for the action-only check)."""
    e = BehaviourEngine(detection.behaviour, detection.alerts, detection.scoring.weight_of)
    n, per = 10_000, 6
    tracemalloc.start()
    e.observe(rec("device", f"android-{i:016x}", T0 + i * 0.01 + k * 0.002, i, account=f"{10**9 + i}",
                  session=f"s-{i}", endpoint=("startup", "browse", "action")[k % 3], sig=f"{i:08x}{k:08x}",
                  sign_age=0.4, ip=f"10.{i % 250}.{i // 250 % 250}.7")
              for i in range(n) for k in range(per))
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    per_entity = current / n
    print(f"\nbehaviour state: {per_entity:.0f} bytes per device entity ({per_entity * 1e6 / 2**30:.2f} GiB per million)")
    assert per_entity < 4096


def test_flag_updates_round_trip_and_expire():
    fm = FlagMap(lambda c: 0.8)
    from detector.behaviour.flags import Flag, FlagUpdate

    u = FlagUpdate("device", "d1", (Flag("behaviour.device_account_fanout", "used by 9 accounts", T0 + 60),), T0)
    fm.apply([decode_update(encode_update(u))])
    sigs = fm.signals_for({"device": "d1", "ip": "x"}, T0 + 10)
    assert [s.code for s in sigs] == ["behaviour.device_account_fanout"] and "device d1" in sigs[0].detail
    assert fm.signals_for({"device": "d1"}, T0 + 61) == []
    fm.expire(T0 + 61)
    assert len(fm) == 0
    fm.apply([u, FlagUpdate("device", "d1", (), T0 + 5)])
    assert len(fm) == 0


def test_envelope_round_trip():
    env = Envelope([rec("device", "d", T0, 1, account="a")], [(2, 40, 3)])
    back = decode_envelope(encode_envelope(env))
    assert back.records == env.records and back.sources == [(2, 40, 3)]


def test_offline_scorer_flags_later_requests_of_a_flagged_device(detection, profile):
    from detector.behaviour.offline import OfflineScorer
    from detector.decode import request_from_obj
    from detector.simulate import private_api_library

    reqs = [request_from_obj(e) for e in private_api_library(profile, 60, seed=4)]
    verdicts, alerts = OfflineScorer(detection, reference_time=math.inf).score(reqs)
    behavioural = [v for v in verdicts if any(s.family in ("behaviour", "replay", "population") for s in v.signals)]
    assert behavioural and verdicts[0] not in behavioural  # a flag applies after the request that raised it
    assert alerts


def test_traveller_alternating_between_two_countries_is_not_impossible_travel(engine):
    """On foreign Wi-Fi with mobile data exiting at home: two countries all day."""
    recs = [rec("account", "a-3", T0 + i * 120 + (i * 53 % 31), i, country="DE" if i % 2 else "IN") for i in range(20)]
    assert not engine.observe(recs).flags


def test_bulk_registered_accounts_on_one_fingerprint_raise_only_the_scoped_flag(engine):
    """Residential proxies spread the fleet over many lines, but its accounts were
    registered in one batch: the batch's flag, scoped to its ids, not the surge flags
    that would reach every real user of the same phone."""
    recs = [rec("fingerprint", "fp1_fleet", T0 + i * 10, i, device=f"d{i}", account=str(40_000_000_000 + i * 17),
                ip=f"{20 + i}.{i}.9.9") for i in range(60)]
    found = codes(engine.observe(recs))
    assert "population.bulk_registered_accounts" in found
    assert not found & {"population.fingerprint_device_surge", "population.fingerprint_account_surge"}


def _scoped(out, code):
    return [f for u in out.flags for f in u.flags if f.code == code]


def test_bulk_registered_run_flags_only_the_batch_id_range(engine, detection):
    """Three accounts with neighbouring ids on one fingerprint raise the scoped flag; a
    real user of the same phone (an id from elsewhere) is outside its scope."""
    from detector.entities import RequestFacts

    base = 38_054_030_000
    recs = [rec("fingerprint", "fp1_image", T0 + i * 7, i, device=f"d{i}", account=str(base + i * 31),
                ip=f"{30 + i}.{i}.1.1") for i in range(3)]
    out = engine.observe(recs[:2])
    assert not _scoped(out, "population.bulk_registered_accounts")
    flag = _scoped(engine.observe(recs[2:]), "population.bulk_registered_accounts")[-1]
    lo, hi = flag.scope.account_ids
    assert lo <= base and hi >= base + 62 and hi - lo < 100_000
    fm = FlagMap(detection.scoring.weight_of)
    fm.apply(engine.observe([rec("fingerprint", "fp1_image", T0 + 30, 9, device="d9", account=str(base + 93))]).flags)
    ents = {"fingerprint": "fp1_image"}
    member = fm.signals_for(ents, T0 + 40, RequestFacts(account_number=base + 5_000))
    stranger = fm.signals_for(ents, T0 + 40, RequestFacts(account_number=7_311_122_334))
    assert "population.bulk_registered_accounts" in {s.code for s in member}
    assert "population.bulk_registered_accounts" not in {s.code for s in stranger}


def test_densest_run_ignores_real_accounts_among_a_batch():
    from detector.behaviour.population import densest_run

    accounts = {str(a): 0.0 for a in (5, 9_000_000_000, 1_000_000, 1_000_040, 1_000_090, 1_000_100, "abc")}
    assert densest_run(accounts, 1000) == (4, 1_000_000, 1_000_100)
    assert densest_run({"x": 0.0}, 1000) is None


def test_random_account_ids_on_a_popular_fingerprint_are_not_a_batch(engine):
    import random

    rng = random.Random(5)
    recs = [rec("fingerprint", "fp1_popular", T0 + i * 3, i, device=f"d{i}", account=str(rng.randint(10**8, 10**11)),
                ip=f"{10 + i % 200}.{i % 250}.3.4") for i in range(250)]
    assert not _scoped(engine.observe(recs), "population.bulk_registered_accounts")


def test_replayed_device_flag_reaches_replays_not_the_owner(engine, detection):
    """The device shard sees a device's signature come back from another address; its
    flag then applies to that device's requests signed long before arrival (replays of
    other captured requests), not to the owner's own requests."""
    from detector.entities import RequestFacts

    own = [rec("device", "d-cap", T0 + i * 5, i, ip="100.64.0.7", sig=f"s{i:015d}", sign_age=0.4 + i * 0.1)
           for i in range(5)]
    assert not engine.observe(own).flags
    forged = rec("device", "d-cap", T0 + 26, 9, ip="198.51.100.1", sig="f000000000000000", sign_age=1.8e9,
                 codes=("signature.timestamp_skew",))
    retry = rec("device", "d-cap", T0 + 30, 10, ip="100.64.0.99", sig="s000000000000001", sign_age=6.0)
    assert not engine.observe([forged, retry]).flags  # the same /24: a retry; the forgery moves nothing
    replay = rec("device", "d-cap", T0 + 140, 11, ip="203.0.113.9", sig="s000000000000002", sign_age=130.0)
    out = engine.observe([replay])
    flag = _scoped(out, "replay.device_replayed")[-1]
    # the median of its own signing ages (0.4 .. 0.8) plus the margin
    assert flag.scope.sign_age_over == pytest.approx(0.6 + engine.s.replay_sign_age_margin_s)
    fm = FlagMap(detection.scoring.weight_of)
    fm.apply(out.flags)
    ents = {"device": "d-cap"}
    assert fm.signals_for(ents, T0 + 150, RequestFacts(sign_age=95.0))
    assert not fm.signals_for(ents, T0 + 150, RequestFacts(sign_age=0.7))
    assert not fm.signals_for(ents, T0 + 150, None)
    # the replayed record is not new activity of the device: no fan-out or velocity from it
    assert {f.code for u in out.flags for f in u.flags} == {"replay.device_replayed"}


def test_session_that_starts_up_and_acts_without_browsing(engine):
    recs = [rec("device", "d-bot", T0, 0, session="s1", endpoint="startup", account="a1"),
            rec("device", "d-bot", T0 + 4, 1, session="s1", endpoint="action", account="a1")]
    assert "behaviour.action_only_session" in codes(engine.observe(recs))
    acct = engine.observe([rec("account", "a-bot", T0, 0, session="s2", endpoint="startup"),
                           rec("account", "a-bot", T0 + 4, 1, session="s2", endpoint="action")])
    assert "behaviour.action_only_session" in codes(acct)


def test_notification_action_and_browsing_sessions_are_not_action_only(engine):
    one = engine.observe([rec("device", "d-notif", T0, 0, session="n1", endpoint="action")])
    assert not one.flags  # one action from a notification button, no start-up
    flow = ["startup", "startup", "browse", "action", "action", "browse", "action"]
    app = engine.observe([rec("device", "d-app", T0 + i, i, session="a1", endpoint=e) for i, e in enumerate(flow)])
    assert not app.flags


def test_scoped_flag_round_trips_through_the_flag_topic_encoding():
    from detector.behaviour.flags import Flag, FlagUpdate, Scope
    from detector.entities import RequestFacts

    u = FlagUpdate("fingerprint", "fp1_x", (Flag("population.bulk_registered_accounts", "run", T0 + 60,
                                                 Scope(account_ids=(100, 200))),), T0)
    back = decode_update(encode_update(u))
    assert back == u
    fm = FlagMap(lambda c: 0.6)
    fm.apply([back])
    sig = fm.signals_for({"fingerprint": "fp1_x"}, T0, RequestFacts(account_number=150))
    assert sig and "account ids 100-200" in sig[0].detail


def test_devices_behind_one_hosting_network_but_not_a_carrier(engine):
    farm = [rec("asn", "AS14061", T0 + i * 30, i, device=f"d{i}", hosting=True) for i in range(20)]
    assert "behaviour.hosting_asn_device_fanout" in codes(engine.observe(farm))
    carrier = [rec("asn", "AS21928", T0 + i * 30, i, device=f"c{i}", account=f"a{i}") for i in range(100)]
    assert not engine.observe(carrier).flags


def test_scoped_flag_restored_from_a_snapshot_is_not_broadcast_again(detection):
    """The scope kept in state reads back from a snapshot as it was written, so a
    restarted shard does not re-send (and extend) a flag that did not change."""
    s = detection.behaviour
    base = 51_000_000_000
    recs = [rec("fingerprint", "fp1_batch", T0 + i * 20, i, device=f"d{i % 3}", account=str(base + i % 3 * 40),
                ip=f"{40 + i}.{i}.2.2") for i in range(4)]  # the fourth: the first account again
    a = BehaviourEngine(s, detection.alerts, detection.scoring.weight_of)
    assert a.observe(recs[:3], offset=1).flags
    b = BehaviourEngine(s, detection.alerts, detection.scoring.weight_of)
    b.restore(*reversed(flushed(a)))
    assert a.observe(recs[3:], offset=2).flags == b.observe(recs[3:], offset=2).flags == []


def test_huge_numeric_account_ids_are_not_numbers():
    from detector.entities import account_number
    from detector.behaviour.population import densest_run

    assert account_number("9" * 5000) is None and account_number("1" + "0" * 19) is None
    assert account_number("12345") == 12345 and account_number("١٢٣") is None
    assert densest_run({"9" * 5000: 0.0, "100": 0.0, "150": 0.0}, 1000) == (2, 100, 150)


def test_replayed_device_whose_clock_runs_ahead(engine, detection):
    """A phone 150 s ahead signs with a negative age; a replay 50 s later still arrives
    signed 50 s later than the phone's own requests do."""
    from detector.entities import RequestFacts

    own = [rec("device", "d-ahead", T0 + i * 5, i, ip="100.64.1.7", sig=f"a{i:015d}", sign_age=-150.0 + i * 0.1)
           for i in range(4)]
    engine.observe(own)
    out = engine.observe([rec("device", "d-ahead", T0 + 60, 9, ip="203.0.113.50", sig="a000000000000001",
                              sign_age=-100.0)])
    fm = FlagMap(detection.scoring.weight_of)
    fm.apply(out.flags)
    assert fm.signals_for({"device": "d-ahead"}, T0 + 70, RequestFacts(sign_age=-95.0))
    assert not fm.signals_for({"device": "d-ahead"}, T0 + 70, RequestFacts(sign_age=-149.0))


# ---------------------------------------------------------------- event time (issue 11)

def _bots(detection, profile):
    from detector.decode import request_from_obj
    from detector.simulate import bot_network

    return [request_from_obj(e) for e in bot_network(profile, 400, seed=1, catalogue=detection.catalogue)]


def _genuine_at(detection, profile, start_ts, n=300):
    from detector.decode import request_from_obj
    from detector.simulate import genuine

    return [request_from_obj(e) for e in genuine(profile, n, seed=2, start_ts=start_ts, catalogue=detection.catalogue)]


@pytest.mark.parametrize("ahead", ["a month", "year 2100"])
def test_requests_dated_ahead_of_the_reference_do_not_blind_the_detector(detection, profile, ahead):
    """Issue 11: 300 requests dated ahead, then a 400-request bot network (in that order
    of arrival: two batches) raise exactly the alerts of the bot network alone, and
    its flags stay in force. Without a reference (math.inf: every date trusted) the
    same traffic raises no alert at all: the test can fail."""
    from detector.behaviour.offline import OfflineScorer

    bots = _bots(detection, profile)
    ref = max(r.ts for r in bots)
    future = _genuine_at(detection, profile, ref + 30 * 86400 if ahead == "a month" else 4102444800.0)
    alone = OfflineScorer(detection, reference_time=ref)
    _, expected = alone.score(bots)
    assert len(expected) > 20

    poisoned = OfflineScorer(detection, reference_time=ref)
    future_verdicts, first = poisoned.score(future)
    _, alerts = poisoned.score(bots)
    assert len(future_verdicts) == 300 and not first
    assert alerts == expected
    assert poisoned.future == 300 and alone.future == 0
    assert poisoned.flags.current() == alone.flags.current() and len(poisoned.flags)
    assert poisoned.engine.entity_count() == alone.engine.entity_count()

    unguarded = OfflineScorer(detection, reference_time=math.inf)
    unguarded.score(future)
    assert unguarded.score(bots)[1] == [] and len(unguarded.flags) == 0  # the finding


def test_a_request_dated_ahead_still_carries_the_flags_of_its_entities(detection, profile):
    """A flagged bot cannot shed its flags by dating its requests ahead: it is judged
    with the flags in force at the reference, not at its own date."""
    import msgspec

    from detector.behaviour.offline import OfflineScorer

    bots = _bots(detection, profile)
    ref = max(r.ts for r in bots)
    scorer = OfflineScorer(detection, reference_time=ref)
    verdicts, _ = scorer.score(bots)
    last = bots[-1]
    flagged = [s.code for s in verdicts[-1].signals if s.family == "behaviour"]
    assert flagged
    (ahead,), alerts = scorer.score([msgspec.structs.replace(last, request_id="ahead", ts=ref + 30 * 86400)])
    assert [s.code for s in ahead.signals if s.family == "behaviour"] == flagged
    assert not alerts and scorer.future == 1


def test_records_within_the_tolerance_cannot_make_genuine_ones_late(engine):
    """A record dated ahead but within the tolerance is applied, but the watermark stops
    at the reference: genuine records a little older than the reference stay on time."""
    ref = T0 + 1000
    engine.observe([rec("device", "dev-t", ref + 250, 0, account="a0")], reference=ref)
    out = engine.observe([rec("device", "dev-t", ref - 100, 1, account="a1")], reference=ref)
    assert out.late == 0 and out.applied == 1
    unguarded = BehaviourEngine(engine.s, engine.alerts, engine.weight_of)
    unguarded.observe([rec("device", "dev-t", ref + 250, 0, account="a0")])
    assert unguarded.observe([rec("device", "dev-t", ref - 100, 1, account="a1")]).late == 1


@pytest.mark.parametrize("ts", [946684800.0, 7258118399.999, 4102444800.0])
def test_the_engine_takes_any_time_decode_accepts(engine, ts):
    """From 2000-01-01 up to 2200-01-01 (decode's range): records apply, flags and
    alerts are built (their times formatted), nothing raises."""
    out = engine.observe([rec("device", "dev-y", ts + i * 0.5, i, account=f"acc-{i}", level=2, score=0.9,
                              codes=("ua.missing",)) for i in range(8)])
    assert out.applied == 8 and out.flags and out.alerts
    for a in out.alerts:
        assert a.created_at[:2] in ("20", "21", "22")


@pytest.mark.parametrize("ts", [math.inf, -math.inf, math.nan])
def test_a_record_without_a_finite_time_is_dropped_not_raised(engine, ts):
    out = engine.observe([rec("device", "dev-n", ts, 0, account="a", level=2, score=0.9, codes=("ua.missing",))])
    assert out.late == 1 and out.applied == 0 and not out.alerts
    assert engine.observe([rec("device", "dev-n", T0, 1, account="a")]).applied == 1  # the watermark is untouched


def test_detector_score_takes_a_reference_time_and_counts_requests_dated_ahead(tmp_path, detection, profile):
    """`detector score --reference-time`: the requests dated beyond the tolerance get
    their verdicts, and one stderr line counts them; with the default (the wall clock,
    after the simulated traffic) nothing is ahead and stderr stays empty."""
    import subprocess
    import sys
    from pathlib import Path

    import orjson

    from detector.simulate import bot_network

    events = list(bot_network(profile, 60, seed=1, catalogue=detection.catalogue))
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    root = Path(__file__).resolve().parents[2]

    def score(*extra: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-m", "agents.cli", "score", str(src), *extra], capture_output=True,
                              cwd=root, timeout=120)

    plain = score()
    assert plain.returncode == 0 and plain.stderr == b"" and len(plain.stdout.splitlines()) == 60
    ref = events[29]["ts"] - 300  # the last 30 (at least) lie beyond the tolerance
    ahead = sum(1 for e in events if e["ts"] > ref + 300)
    res = score("--reference-time", f"{ref:.3f}")
    assert res.returncode == 0 and len(res.stdout.splitlines()) == 60
    (line,) = res.stderr.decode().splitlines()
    assert line.startswith(f"detector score: {ahead} request(s) dated more than 300 s after the reference time")
