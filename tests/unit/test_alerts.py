"""Alerts as production raises them: the behaviour engine's alert windows, fed entity
records of requests the stateless checks flagged (detector.behaviour.engine)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jsonschema
import pytest

from detector.alerts import Alert, AlertSettings, alert_id, decode_alert, iso
from detector.behaviour.engine import BehaviourEngine
from detector.behaviour.offline import OfflineScorer
from detector.behaviour.records import BehaviourSettings, EntityRecord
from detector.decode import request_from_obj
from detector.simulate import private_api_library

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "config" / "schema" / "alert.schema.json").read_text())
T0 = 1_800_000_000.0  # aligned to 300 s


def at(i: int) -> float:
    """The i-th request's time: about one a second, irregular enough (gaps of 1.5 and
    0.5 s) that the cadence detector never flags the entity."""
    return T0 + i + 0.5 * (i % 2)


def flagged(i: int, ts: float, entity: str = "dev-1", codes: tuple[str, ...] = ("ua.malformed",),
            level: int = 2, score: float = 0.9) -> EntityRecord:
    """The device record of a request the stateless checks judged malicious (level 2)
    or suspicious (level 1)."""
    return EntityRecord("device", entity, f"r-{i}", ts, level, score, codes, "example-android", f"10.0.0.{i % 250}",
                        64500, False, "US", entity, None, None, "browse")


def weak(i: int, ts: float, entity: str = "dev-1") -> EntityRecord:
    return flagged(i, ts, entity, ("transport.h2_fingerprint_mismatch",), level=1, score=0.6)


def engine(alerts: AlertSettings = AlertSettings(), **behaviour: object) -> BehaviourEngine:
    return BehaviourEngine(BehaviourSettings(**behaviour), alerts, lambda code: 0.5)  # type: ignore[arg-type]


def test_one_alert_per_entity_and_window_that_escalates():
    e = engine(AlertSettings(window_s=300, min_count=3, escalate_at=(3, 10)))
    out = e.observe([flagged(i, at(i)) for i in range(12)]).alerts
    assert [(a.revision, a.count) for a in out] == [(1, 3), (2, 10)]
    assert len({a.alert_id for a in out}) == 1
    assert out[0].alert_id == alert_id("entity.flagged_requests", "device", "dev-1", int(T0))
    assert out[0].created_at == "2027-01-15T08:00:00.000Z" and out[1].updated_at == iso(at(9))
    assert all(a.codes == ("ua.malformed",) for a in out)
    for a in out:
        jsonschema.validate(json.loads(a.to_json()), SCHEMA)
    # the next window is a new alert
    nxt = e.observe([flagged(100 + i, at(300 + i)) for i in range(3)]).alerts
    assert len(nxt) == 1 and nxt[0].alert_id != out[0].alert_id and nxt[0].revision == 1


def test_an_alert_reads_back_from_its_json_unchanged():
    (a,) = engine(AlertSettings(min_count=1)).observe([flagged(0, T0)]).alerts
    assert decode_alert(a.to_json()) == a


def test_alerts_do_not_depend_on_batching():
    records = [flagged(i, T0 + i * 0.5) for i in range(40)]
    whole = engine().observe(records).alerts
    e = engine()
    pieces = [a for i in range(0, 40, 7) for a in e.observe(records[i:i + 7]).alerts]
    assert whole and whole == pieces


def test_events_later_than_the_allowed_lateness_are_dropped():
    e = engine(AlertSettings(window_s=300, min_count=1), buckets=1, allowed_lateness_s=60.0)
    assert e.observe([flagged(1, T0 + 1000)]).alerts
    out = e.observe([flagged(2, T0, entity="late")])
    assert out.late == 1 and out.alerts == []


def test_state_is_bounded_under_a_flood_of_unique_entities():
    e = engine(AlertSettings(min_count=5), buckets=4, max_entities=1000)
    e.observe([flagged(i, T0, entity=f"e{i}") for i in range(5000)])
    assert e.entity_count() <= 1000


def test_offline_alerts_for_a_library_name_its_device(detection, profile):
    requests = [request_from_obj(e) for e in private_api_library(profile, 40, seed=2)]
    _, alerts = OfflineScorer(detection, reference_time=math.inf).score(requests)
    assert {"device", "account"} <= {a.entity.type for a in alerts}
    assert all(isinstance(a, Alert) and a.summary and a.sample_request_ids for a in alerts)


def test_persistent_suspicious_requests_alert_low_then_escalate_on_malicious():
    e = engine(AlertSettings(suspicious_min_count=10))
    assert e.observe([weak(i, at(i)) for i in range(9)]).alerts == []
    first = e.observe([weak(9, at(9))]).alerts
    assert [(a.revision, a.severity, a.count) for a in first] == [(1, "low", 10)]
    assert first[0].evidence.suspicious_count == 10 and "10 suspicious requests" in first[0].summary
    jsonschema.validate(json.loads(first[0].to_json()), SCHEMA)
    assert e.observe([weak(i, at(i)) for i in range(10, 30)]).alerts == []  # no revision per weak request
    full = e.observe([flagged(i, at(i)) for i in range(40, 43)]).alerts
    assert [(a.revision, a.severity, a.count) for a in full] == [(2, "medium", 33)]
    assert full[0].evidence.suspicious_count == 30
    assert full[0].alert_id == first[0].alert_id


def test_suspicious_requests_never_alert_when_switched_off():
    assert engine(AlertSettings(suspicious_min_count=0)).observe([weak(i, at(i)) for i in range(50)]).alerts == []
    with pytest.raises(ValueError, match="suspicious_min_count"):
        AlertSettings(suspicious_min_count=-1)


def test_an_entity_id_over_the_bound_is_named_by_its_digest_form():
    """Issue 11: ids are attacker-sized; the alert names the entity as the behaviour
    engine does (detector.behaviour.records.entity_key) and stays small."""
    from detector.behaviour.records import KEY_MAX_BYTES, entity_key

    long = "android-" + "\x01" * 8000
    (a,) = engine(AlertSettings(min_count=3)).observe([flagged(i, at(i), long) for i in range(3)]).alerts
    assert a.entity.id == entity_key(long) and len(a.entity.id) <= KEY_MAX_BYTES
    assert a.entity.id.startswith("android-???") and "~sha256:" in a.entity.id
    assert a.alert_id == alert_id("entity.flagged_requests", "device", entity_key(long), 1_800_000_000)
    assert len(a.to_json()) < 4096
    jsonschema.validate(json.loads(a.to_json()), SCHEMA)


def test_the_year_10000_time_of_the_issue_builds_an_alert():
    """Issue 11: ts 253402300700 crashed alert building (decode now refuses it, but
    alert building takes any float)."""
    (a,) = engine(AlertSettings(min_count=1)).observe([flagged(0, 253402300700.0)]).alerts
    assert a.created_at == "9999-12-31T23:58:20.000Z"
    assert (a.window.start, a.window.end) == ("9999-12-31T23:55:00.000Z", "9999-12-31T23:59:59.999Z")  # year 10000
    jsonschema.validate(json.loads(a.to_json()), SCHEMA)


def test_alert_samples_are_bounded_by_configuration():
    for bad in (-1, 101, True, 2.5):
        with pytest.raises(ValueError, match="alerts.samples"):
            AlertSettings(samples=bad)
    assert AlertSettings(samples=100).samples == 100


# --- what reaches the webhooks ----------------------------------------------------------------------
def test_allowlisted_entities_never_alert():
    s = AlertSettings(min_count=1, allowlist=({"entity_type": "device", "id": "qa-phone", "reason": "QA test device"},))
    out = engine(s).observe([flagged(i, at(i), "qa-phone") for i in range(5)] + [flagged(9, at(9), "dev-2")]).alerts
    assert [a.entity.id for a in out] == ["dev-2"]


def test_allowlist_entries_need_a_reason():
    with pytest.raises(ValueError, match="allowlist"):
        AlertSettings(allowlist=({"entity_type": "device", "id": "x"},))


def test_suppressed_codes_do_not_count_or_show_as_evidence():
    s = AlertSettings(min_count=2, suppress_codes=("network.hosting",))
    out = engine(s).observe([flagged(0, at(0), codes=("network.hosting",)),
                             flagged(1, at(1), codes=("network.hosting", "ua.malformed")),
                             flagged(2, at(2), codes=("ua.malformed",))]).alerts
    assert len(out) == 1 and out[0].count == 2 and out[0].codes == ("ua.malformed",)


def test_severity_by_code_raises_the_severity_of_the_count():
    s = AlertSettings(min_count=1, severity_by_count={1: "medium"},
                      severity_by_code={"replay.signature_reused_elsewhere": "critical"})
    out = engine(s).observe([flagged(0, at(0)), flagged(1, at(1), codes=("replay.signature_reused_elsewhere",))]).alerts
    assert [(a.revision, a.severity) for a in out] == [(1, "medium"), (2, "critical")]
    with pytest.raises(ValueError, match="severity_by_code"):
        AlertSettings(severity_by_code={"x": "urgent"})


def test_a_window_closed_by_newer_requests_is_not_raised_again_by_older_ones():
    """Records reach a shard out of order across source partitions (one partition read
    ahead of another after a lag, or an edge that keys at random): an alert window that
    newer requests closed must not be opened again, as a new revision 1 of the same
    alert id, by older requests of another partition."""
    e = engine(AlertSettings(window_s=300, min_count=3, escalate_at=(3, 10)), buckets=1)
    first = e.observe([flagged(i, at(i)) for i in range(3)], sources=[(0, i, 0) for i in range(3)]).alerts
    assert [(a.revision, a.count) for a in first] == [(1, 3)]
    later = e.observe([flagged(10 + i, at(900 + i)) for i in range(3)], sources=[(0, 10 + i, 0) for i in range(3)]).alerts
    assert [a.revision for a in later] == [1] and later[0].alert_id != first[0].alert_id
    # partition 1 was read behind: its requests of the first window are not late for it
    old = e.observe([flagged(20 + i, at(10 + i)) for i in range(5)], sources=[(1, i, 0) for i in range(5)])
    assert old.late == 0
    assert not [a for a in old.alerts if a.alert_id == first[0].alert_id], "the closed window was raised again"
