from __future__ import annotations

import json
from pathlib import Path

import jsonschema

from detector.alerts import AlertPolicy, AlertSettings, FlaggedRequest, alert_id, alerts_for
from detector.decode import request_from_obj
from detector.simulate import private_api_library

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "config" / "schema" / "alert.schema.json").read_text())


def rec(i: int, ts: float, entity: str = "dev-1") -> FlaggedRequest:
    return FlaggedRequest("device", entity, f"r-{i}", ts, 0.9, "malicious", "example-android", f"10.0.0.{i % 250}",
                          ("ua.malformed",))


def test_one_alert_per_entity_and_window_that_escalates():
    policy = AlertPolicy(AlertSettings(window_s=300, min_count=3, escalate_at=(3, 10)))
    t0 = 1_800_000_000.0  # aligned to 300 s
    out = policy.observe([rec(i, t0 + i) for i in range(12)])
    assert [(a["revision"], a["count"]) for a in out] == [(1, 3), (2, 10)]
    assert len({a["alert_id"] for a in out}) == 1
    assert out[0]["alert_id"] == alert_id("entity.flagged_requests", "device", "dev-1", int(t0))
    assert out[0]["created_at"] == "2027-01-15T08:00:00.000Z" and out[1]["updated_at"] == "2027-01-15T08:00:09.000Z"
    for a in out:
        jsonschema.validate(a, SCHEMA)
    # the next window is a new alert
    nxt = policy.observe([rec(100 + i, t0 + 300 + i) for i in range(3)])
    assert len(nxt) == 1 and nxt[0]["alert_id"] != out[0]["alert_id"] and nxt[0]["revision"] == 1


def test_alerts_do_not_depend_on_batching():
    records = [rec(i, 1_800_000_000.0 + i * 0.5) for i in range(40)]
    whole = AlertPolicy().observe(records)
    p = AlertPolicy()
    pieces = [a for i in range(0, 40, 7) for a in p.observe(records[i:i + 7])]
    assert whole == pieces


def test_events_later_than_the_allowed_lateness_are_dropped():
    p = AlertPolicy(AlertSettings(window_s=300, allowed_lateness_s=60, min_count=1))
    p.observe([rec(1, 1_800_001_000.0)])
    assert p.observe([rec(2, 1_800_000_000.0, entity="late")]) == []


def test_open_windows_are_bounded_under_a_flood_of_unique_entities():
    p = AlertPolicy(AlertSettings(max_open_windows=1000, min_count=5))
    p.observe([rec(i, 1_800_000_000.0, entity=f"e{i}") for i in range(5000)])
    assert len(p) <= 1000


def test_offline_alerts_for_a_library_name_its_device(detection, profile):
    verdicts = detection.pipeline().score_batch([request_from_obj(e) for e in private_api_library(profile, 40, seed=2)])
    alerts = alerts_for(verdicts, detection.alerts)
    assert {a["entity"]["type"] for a in alerts} == {"device", "account"}
    assert all(a["summary"] and a["sample_request_ids"] for a in alerts)


def weak(i: int, ts: float, entity: str = "dev-1") -> FlaggedRequest:
    return FlaggedRequest("device", entity, f"w-{i}", ts, 0.6, "suspicious", "example-android", "10.0.1.1",
                          ("transport.h2_fingerprint_mismatch",))


def test_persistent_suspicious_requests_alert_low_then_escalate_on_malicious():
    t0 = 1_800_000_000.0
    policy = AlertPolicy(AlertSettings(suspicious_min_count=10))
    assert policy.observe([weak(i, t0 + i) for i in range(9)]) == []
    first = policy.observe([weak(9, t0 + 9)])
    assert [(a["revision"], a["severity"], a["count"]) for a in first] == [(1, "low", 10)]
    assert first[0]["evidence"]["suspicious_count"] == 10 and "10 suspicious requests" in first[0]["summary"]
    jsonschema.validate(first[0], SCHEMA)
    assert policy.observe([weak(10 + i, t0 + 10 + i) for i in range(20)]) == []  # no revision per weak request
    full = policy.observe([rec(i, t0 + 40 + i) for i in range(3)])
    assert [(a["revision"], a["severity"], a["count"]) for a in full] == [(2, "medium", 33)]
    assert full[0]["evidence"]["suspicious_count"] == 30
    assert full[0]["alert_id"] == first[0]["alert_id"]


def test_suspicious_requests_never_alert_when_switched_off():
    t0 = 1_800_000_000.0
    assert AlertPolicy(AlertSettings(suspicious_min_count=0)).observe([weak(i, t0 + i) for i in range(50)]) == []
    try:
        AlertSettings(suspicious_min_count=-1)
    except ValueError as exc:
        assert "suspicious_min_count" in str(exc)
    else:
        raise AssertionError("a negative suspicious_min_count was accepted")


def test_an_entity_id_over_the_bound_is_named_by_its_digest_form():
    """Issue 11: ids are attacker-sized; the alert names the entity as the behaviour
    engine does (detector.behaviour.records.entity_key) and stays small."""
    from detector.behaviour.records import KEY_MAX_BYTES, entity_key

    long = "android-" + "\x01" * 8000
    out = AlertPolicy(AlertSettings(min_count=3)).observe([rec(i, 1_800_000_000.0 + i, long) for i in range(3)])
    (a,) = out
    assert a["entity"]["id"] == entity_key(long) and len(a["entity"]["id"]) <= KEY_MAX_BYTES
    assert a["entity"]["id"].startswith("android-???") and "~sha256:" in a["entity"]["id"]
    assert a["alert_id"] == alert_id("entity.flagged_requests", "device", entity_key(long), 1_800_000_000)
    assert len(json.dumps(a)) < 4096
    jsonschema.validate(a, SCHEMA)


def test_the_year_10000_time_of_the_issue_builds_an_alert():
    """Issue 11: ts 253402300700 crashed alert building (decode now refuses it, but
    alert building takes any float)."""
    (a,) = AlertPolicy(AlertSettings(min_count=1)).observe([rec(0, 253402300700.0)])
    assert a["created_at"] == "9999-12-31T23:58:20.000Z"
    assert a["window"] == {"start": "9999-12-31T23:55:00.000Z", "end": "9999-12-31T23:59:59.999Z"}  # year 10000
    jsonschema.validate(a, SCHEMA)


def test_alert_samples_are_bounded_by_configuration():
    import pytest

    for bad in (-1, 101, True, 2.5):
        with pytest.raises(ValueError, match="alerts.samples"):
            AlertSettings(samples=bad)
    assert AlertSettings(samples=100).samples == 100
