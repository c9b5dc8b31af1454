"""Evaluation metrics on tiny hand-made examples (where every figure can be checked by
hand), the one scoring entry point, and the `detector eval` command's output."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from detector.alerts import Alert, AlertEntity, AlertEvidence, AlertSpan, iso
from detector.decode import request_from_obj
from detector.simulate.evaluate import (
    EvalSettings,
    ablation,
    alert_ts,
    entity_metrics,
    evaluate,
    families,
    pr_curve,
    request_metrics,
    score_offline,
)
from detector.model import ClientRequest, Signal, Verdict
from detector.simulate import ATTACKS, private_api_library

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_800_000_000.0


def verdict(i: int, level: str, score: float, device: str, account: str | None = None, ts: float | None = None) -> Verdict:
    entities = {"ip": f"10.0.{i}.1", "device": device}
    if account:
        entities["account"] = account
    signals = (Signal("tls.fingerprint_mismatch", score, "x"),) if level != "clean" else ()
    return Verdict(request_id=f"r{i}", ts=T0 + i if ts is None else ts, score=score, verdict=level,  # type: ignore[arg-type]
                   profile="p", entities=entities, fingerprints={"headers": "h"}, signals=signals)


def request(i: int, ts: float | None = None) -> ClientRequest:
    return ClientRequest(request_id=f"r{i}", ts=T0 + i if ts is None else ts, client_ip=f"10.0.{i}.1", method="GET",
                         path="/", headers=())


def alert(entity_type: str, entity_id: str, at: float) -> Alert:
    return Alert(schema="alert/1", alert_id="a" * 32, revision=1, created_at=iso(at), updated_at=iso(at),
                 severity="medium", entity=AlertEntity(entity_type, entity_id), codes=("ua.malformed",), score=0.9,
                 summary="an alert", window=AlertSpan(iso(at), iso(at)), count=3, evidence=AlertEvidence(),
                 sample_request_ids=())


# ---------------------------------------------------------------- per request


def test_request_metrics_on_a_hand_made_example():
    # 4 attack requests: 2 malicious, 1 suspicious, 1 clean; 6 genuine: 1 suspicious, 5 clean.
    malicious = [True, True, True, True, False, False, False, False, False, False]
    levels = ["malicious", "malicious", "suspicious", "clean", "suspicious", "clean", "clean", "clean", "clean", "clean"]
    vs = [verdict(i, lv, 0.9 if lv == "malicious" else 0.6 if lv == "suspicious" else 0.0, f"d{i}")
          for i, lv in enumerate(levels)]
    m = request_metrics(malicious, vs, "suspicious")
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (3, 1, 1, 5)
    assert m["precision"] == 0.75 and m["recall"] == 0.75 and m["f1"] == 0.75
    assert m["false_positive_rate"] == pytest.approx(1 / 6, abs=1e-6)
    m = request_metrics(malicious, vs, "malicious")
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 0, 2, 6)
    assert m["precision"] == 1.0 and m["recall"] == 0.5 and m["f1"] == pytest.approx(2 / 3, abs=1e-6)
    assert m["false_positive_rate"] == 0.0


def test_undefined_ratios_are_none_not_zero():
    m = request_metrics([True, False], [verdict(0, "clean", 0.0, "a"), verdict(1, "clean", 0.0, "b")])
    assert m["precision"] is None and m["recall"] == 0.0 and m["f1"] is None
    m = request_metrics([False], [verdict(0, "clean", 0.0, "a")])
    assert m["recall"] is None and m["false_positive_rate"] == 0.0


def test_pr_curve_over_the_score_threshold():
    scores = [0.9, 0.9, 0.6, 0.6, 0.3, 0.0]
    bad = [True, True, True, False, False, True]
    assert pr_curve(scores, bad) == [(0.9, 1.0, 0.5), (0.6, 0.75, 0.75), (0.3, 0.6, 0.75), (0.0, 0.666667, 1.0)]


# ---------------------------------------------------------------- per entity


def test_entity_recall_time_to_detect_and_coverage_on_a_hand_made_example():
    # Attack: device A sends requests at t+0..t+3, device B at t+4, t+5; genuine device G at t+6.
    # Alerts: A at t+2 (revision 1) and again at t+3; G (a false alert) at t+6.
    devices = ["A", "A", "A", "A", "B", "B", "G"]
    malicious = [True] * 6 + [False]
    levels = ["malicious"] * 4 + ["clean", "suspicious", "clean"]
    reqs = [request(i) for i in range(7)]
    vs = [verdict(i, lv, 0.9, d) for i, (lv, d) in enumerate(zip(levels, devices))]
    alerts = [alert("device", "A", T0 + 2), alert("device", "A", T0 + 3), alert("device", "G", T0 + 6)]
    m = entity_metrics(reqs, malicious, vs, alerts, "suspicious")
    assert m["attack_entities"] == 2  # devices A and B (no accounts here)
    assert m["entity_recall"] == 0.5
    assert m["time_to_detect_s"] == 2.0 and m["requests_before_detection"] == 2
    assert m["covered_after_detection"] == pytest.approx(2 / 6, abs=1e-6)  # A's requests at t+2 and t+3
    assert m["recall_after_detection"] == 1.0
    assert m["alerted_entities"] == 2 and m["genuine_entities_alerted"] == 1


def test_an_alert_on_any_entity_of_the_attack_counts_for_time_to_detect():
    reqs = [request(0), request(1)]
    vs = [verdict(0, "clean", 0.0, "A", account="acct"), verdict(1, "clean", 0.0, "A", account="acct")]
    m = entity_metrics(reqs, [True, True], vs, [alert("ip_block", "10.0.1.0/24", T0 + 1)])
    assert m["time_to_detect_s"] == 1.0 and m["entity_recall"] == 0.0  # per-entity recall: devices and accounts only
    m = entity_metrics(reqs, [True, True], vs, [])
    assert m["time_to_detect_s"] is None and m["requests_before_detection"] == 2 and m["entity_recall"] == 0.0


def test_alert_time_is_the_revisions_event_time():
    assert alert_ts(alert("device", "d", T0 + 12.345)) == pytest.approx(T0 + 12.345, abs=1e-3)


# ---------------------------------------------------------------- scoring


def test_score_offline_is_the_offline_scorer_of_detector_score(detection, profile):
    from detector.behaviour.offline import OfflineScorer

    events = list(private_api_library(profile, 60, seed=4))
    verdicts, alerts = score_offline(events, detection)
    direct, direct_alerts = OfflineScorer(detection, reference_time=math.inf).score([request_from_obj(e) for e in events])
    assert [v.to_json() for v in verdicts] == [v.to_json() for v in direct] and alerts == direct_alerts
    stateless = detection.pipeline().score_batch([request_from_obj(e) for e in events[:1]])
    assert verdicts[0].to_json() == stateless[0].to_json()  # nothing known before the first request
    assert {"device", "account"} <= {a.entity.type for a in alerts}
    without, _ = score_offline(events, detection, disabled_families=("tls", "transport"))
    assert not {s.code.split(".")[0] for v in without for s in v.signals} & {"tls", "transport"}
    assert all(v.verdict == "malicious" for v in without)  # it does not hang on its stack alone


def test_evaluate_reports_every_requested_scenario(detection):
    settings = EvalSettings(genuine_count=1500, attack_count=120)
    report = evaluate(detection, ["private_api_library", "replay"], evasion=0, settings=settings)
    assert set(report["scenarios"]) == {"private_api_library", "replay"}
    lib = report["scenarios"]["private_api_library"]
    assert lib["recall"] == 1.0 and lib["precision"] == 1.0 and lib["false_positive_rate"] == 0.0
    assert lib["attack_requests"] == 120 and lib["genuine_requests"] == 1500
    assert lib["time_to_detect_s"] is not None and lib["entity_recall"] == 1.0
    assert set(lib["by_evasion"]) == {"0"}
    assert report["scenarios"]["replay"]["needs_state"] is True
    assert report["genuine"]["requests"] >= 3000


def test_ablation_shows_which_family_carries_a_scenario(detection):
    settings = EvalSettings(genuine_count=800, attack_count=100)
    table = ablation(detection, ["attestation", "device"], ["emulator_farm"], evasion=2, settings=settings)
    assert table == {"emulator_farm": {"none": 1.0, "attestation": 0.0, "device": 1.0}}
    assert families(detection)[:2] == ["ua", "device"]


# ---------------------------------------------------------------- the command


def detector(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "agents.cli", *args], capture_output=True, cwd=ROOT, timeout=300)


def test_eval_json_is_one_final_line_with_every_attack(tmp_path):
    res = detector("eval", "--json", "--genuine", "600", "--count", "60", "--evasion", "2")
    assert res.returncode == 0, res.stderr.decode()
    lines = res.stdout.decode().strip().splitlines()
    assert len(lines) == 1
    doc = orjson.loads(lines[-1])
    assert set(doc["scenarios"]) == {*ATTACKS, "mixed"}
    for name, m in doc["scenarios"].items():
        for key in ("recall", "precision", "false_positive_rate", "time_to_detect_s", "entity_recall", "requests"):
            assert key in m, (name, key)
        assert m["recall"] is None or 0.0 <= m["recall"] <= 1.0
        assert m["false_positive_rate"] is None or 0.0 <= m["false_positive_rate"] <= 1.0


def test_eval_prints_tables_ablation_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "pr.png"
    res = detector("eval", "--scenario", "fingerprint_spoofing", "--evasion", "2", "--genuine", "500", "--count", "60",
                   "--without", "headers", "--ablation", "--plot", str(png))
    assert res.returncode == 0, res.stderr.decode()
    out = res.stdout.decode()
    assert "| fingerprint_spoofing |" in out and "families disabled: headers" in out
    head = next(line for line in out.splitlines() if line.startswith("| scenario | none |"))
    assert "| transport |" in head and "| headers |" not in head  # the family already disabled stays off
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_refuses_unknown_families_and_scenarios():
    res = detector("eval", "--without", "telepathy")
    assert res.returncode == 2 and b"unknown signal family telepathy" in res.stderr
    res = detector("eval", "--scenario", "nope")
    assert res.returncode == 2 and b"unknown scenario nope" in res.stderr


@pytest.mark.slow
def test_stateful_scenarios_meet_the_behaviour_targets(detection):
    """Issue 5's acceptance at the shipped settings (seed 1, strongest evasion): bot
    network, replay, low-and-slow and the private-API library at recall >= 0.99 per
    request, a bot network within 30 s, a low-and-slow default device within its first
    hour, and genuine false positives <= 0.001."""
    attacks = ["bot_network", "replay", "low_and_slow", "private_api_library"]
    report = evaluate(detection, attacks, evasion=2)
    for name in attacks:
        m = report["scenarios"][name]
        assert m["recall"] >= 0.99, (name, m["recall"])
        assert m["false_positive_rate"] <= 0.001, (name, m["false_positive_rate"])
        assert m["time_to_detect_s"] is not None
    assert report["scenarios"]["bot_network"]["time_to_detect_s"] <= 30
    assert report["scenarios"]["low_and_slow"]["time_to_detect_s"] <= 3600
    assert report["genuine"]["false_positive_rate"] <= 0.001


def test_the_reference_time_reaches_the_offline_scorer(detection):
    """`EvalSettings.reference_time` is the scorer's reference clock: with one before
    the simulated traffic every request is dated ahead, so only stateless detection
    is left (no behaviour record, so no alert); without one the traffic's times are
    trusted."""
    from dataclasses import replace

    from detector.simulate.evaluate import Evaluation
    from detector.simulate import DEFAULT_START_TS

    settings = EvalSettings(genuine_count=600, attack_count=200)
    trusted = Evaluation(detection, settings).run("bot_network", 0)
    early = Evaluation(detection, replace(settings, reference_time=DEFAULT_START_TS - 3600)).run("bot_network", 0)
    assert trusted.alerts and not early.alerts
    assert [v.verdict for v in early.verdicts] == [detection.pipeline().score_one(r).verdict for r in early.requests]


def test_eval_takes_a_reference_time_and_refuses_a_bad_one():
    args = ("eval", "--json", "--scenario", "bot_network", "--evasion", "0", "--genuine", "400", "--count", "200")
    now = orjson.loads(detector(*args).stdout.splitlines()[-1])  # default: the wall clock, after the traffic
    early = orjson.loads(detector(*args, "--reference-time", "1000000000").stdout.splitlines()[-1])
    assert now["scenarios"]["bot_network"]["alerts"] > 0 and early["scenarios"]["bot_network"]["alerts"] == 0
    res = detector("eval", "--reference-time", "nan")
    assert res.returncode == 2 and b"not a time" in res.stderr
