"""Metrics: closed label sets from config, per-batch aggregation equal to counting one
by one, bounded cardinality whatever the traffic, consumer lag, JSON logs, and the
dashboards as code (committed JSON = script output; every metric they use exists)."""

from __future__ import annotations

import asyncio
import importlib.util
import io
import json
import logging
import random
import re
import sys
from collections import Counter, namedtuple
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agents import logs
from agents.lag import ConsumerLag
from agents.metrics import (EMULATOR, LATENCY_BUCKETS, NONE, OTHER, BatchHistogram, LabelSets, Metrics,
                            webhook_endpoint_names)
from detector.decode import decode_line
from detector.fingerprints.headers import names_fingerprint
from detector.model import Signal, Verdict
from detector.simulate import genuine, mixed, private_api_library

ROOT = Path(__file__).resolve().parents[2]


def samples(registry: CollectorRegistry, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in fam.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def nonzero(registry: CollectorRegistry, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {k: v for k, v in samples(registry, name).items() if v}


@pytest.fixture(scope="module")
def label_sets(detection) -> LabelSets:
    return LabelSets.from_config(detection, webhook_endpoints=["soc", "slack"])


@pytest.fixture(scope="module")
def verdicts(detection, profile) -> list[Verdict]:
    events = list(mixed(profile, 1500, seed=7, start_ts=1_800_000_000.0, rate=500, catalogue=detection.catalogue))
    requests = [decode_line(orjson.dumps(e), detection.limits) for e in events]
    return detection.pipeline().score_batch(requests)


# ------------------------------------------------------------------ closed label sets
def test_label_sets_come_from_config(detection, profile, label_sets):
    assert label_sets.profiles == tuple(detection.profiles)
    assert label_sets.app_versions[profile.name] == frozenset(profile.versions)
    assert set(label_sets.signal_codes) == set(detection.scoring.weights)
    for rule in profile.tls.ja4:
        assert label_sets.ja4[rule.value] == rule.value
    for ja4, name in detection.known.ja4.items():
        assert label_sets.ja4.get(ja4) in (name, ja4)
    assert names_fingerprint(tuple(profile.headers.order)) in label_sets.headers
    assert 0 < len(label_sets.devices) <= 50
    assert label_sets.webhook_endpoints == ("soc", "slack")


def test_genuine_requests_fall_in_the_official_classes(detection, profile, label_sets):
    events = list(genuine(profile, 400, seed=11, catalogue=detection.catalogue))
    vs = detection.pipeline().score_batch([decode_line(orjson.dumps(e), detection.limits) for e in events])
    assert all(label_sets.version_bucket(v.profile, v.app_version) == v.app_version for v in vs)
    assert all(v.fingerprints["ja4"] in label_sets.ja4 for v in vs if "ja4" in v.fingerprints)
    official = sum(v.fingerprints["headers"] in label_sets.headers for v in vs)
    assert official == len(vs), "the official header orders are the profile's order minus optional headers"
    top = sum(label_sets.device_label(v.fingerprints.get("device")) not in (OTHER, NONE) for v in vs)
    assert top / len(vs) > 0.3, "the top models by popularity cover a large share of genuine devices"


def test_values_outside_the_closed_sets_are_other(label_sets, profile):
    assert label_sets.version_bucket(profile.name, "999.0.0") == OTHER
    assert label_sets.version_bucket(profile.name, None) == NONE
    assert label_sets.version_bucket("no-such-profile", "318.0.0") == OTHER
    assert label_sets.device_label("samsung/SM-X999/whatever") == OTHER
    assert label_sets.device_label("a/b/c/d") == OTHER
    assert label_sets.device_label(None) == NONE
    model = next(iter(label_sets.devices))
    assert label_sets.device_label(f"brand/{model}/codename") == model


def test_webhook_endpoint_names_are_read_from_the_settings_file(tmp_path):
    f = tmp_path / "d.yaml"
    f.write_text("webhooks:\n  - {name: soc, url: 'https://x'}\n  - {name: slack, url: 'https://y'}\n")
    assert webhook_endpoint_names(f) == ("soc", "slack")
    f.write_text("webhooks:\n  soc: {url: 'https://x'}\n")
    assert webhook_endpoint_names(f) == ("soc",)
    f.write_text("kafka_bootstrap: x\n")
    assert webhook_endpoint_names(f) == ()
    assert webhook_endpoint_names(tmp_path / "missing.yaml") == ()


# ------------------------------------------------------------------ zero series, bounds
def test_every_labelled_series_exists_at_zero_after_bind(label_sets):
    m = Metrics(CollectorRegistry(), labels=label_sets)
    reg = m.registry
    assert len(samples(reg, "detector_verdicts_total")) == 3
    assert len(samples(reg, "detector_signals_total")) == len(label_sets.signal_codes)
    webhooks = samples(reg, "detector_webhook_deliveries_total")
    assert {dict(k)["endpoint"] for k in webhooks} == {"soc", "slack"}
    assert {dict(k)["outcome"] for k in webhooks} == {"delivered", "rejected", "failed"}
    fps = samples(reg, "detector_fingerprint_requests_total")
    kinds = Counter(dict(k)["kind"] for k in fps)
    assert kinds["device"] == 3 * (len(set(label_sets.devices.values())) + 3)
    assert all(v == 0 for v in fps.values())
    assert samples(reg, "detector_build_info")
    # hostile-input series: DLQ by every rejection code, internal errors per stage,
    # oversized records per kind, all at zero before the first message
    from detector.decode import REJECTION_CODES

    assert {dict(k)["reason"] for k in samples(reg, "detector_dlq_records_total")} == REJECTION_CODES
    assert {dict(k)["stage"] for k in samples(reg, "detector_internal_errors_total")} == {"ingest", "entity-shard"}
    oversized = samples(reg, "detector_oversized_records_total")
    assert {dict(k)["kind"] for k in oversized} == {"verdict", "dlq", "envelope", "alert", "flag", "state"}
    assert all(v == 0 for v in oversized.values())
    assert samples(reg, "detector_future_events_total") == {(): 0.0}


def test_webhook_health_series_exist_at_zero_and_read_the_queues_at_scrape(label_sets):
    m = Metrics(CollectorRegistry(), labels=label_sets)
    attempts = samples(m.registry, "detector_webhook_attempts_total")
    assert {dict(k)["result"] for k in attempts} >= {"delivered", "network_error", "address_refused", "breaker_open"}
    assert {dict(k)["endpoint"] for k in attempts} == {"soc", "slack"} and not any(attempts.values())
    for name in ("detector_webhook_pending_deliveries", "detector_webhook_breaker_state"):
        assert samples(m.registry, name) == {(("endpoint", "soc"),): 0.0, (("endpoint", "slack"),): 0.0}
    state = {"pending": 3.0, "breaker": 2.0}
    m.track_webhook_endpoint("soc", pending=lambda: state["pending"], breaker_state=lambda: state["breaker"])
    m.track_webhook_endpoint("not-configured", pending=lambda: 99.0, breaker_state=lambda: 1.0)  # never exported
    assert samples(m.registry, "detector_webhook_pending_deliveries")[(("endpoint", "soc"),)] == 3.0
    state["pending"] = 0.0
    assert samples(m.registry, "detector_webhook_pending_deliveries") == {(("endpoint", "soc"),): 0.0,
                                                                          (("endpoint", "slack"),): 0.0}
    assert samples(m.registry, "detector_webhook_breaker_state")[(("endpoint", "soc"),)] == 2.0


def test_attacker_controlled_values_never_add_series(label_sets, profile):
    m = Metrics(CollectorRegistry(), labels=label_sets)
    before = len(generate_latest(m.registry).splitlines())

    def junk(seed: int) -> list[Verdict]:
        rng = random.Random(seed)
        return [Verdict(request_id=f"r{i}", ts=1e9, score=0.9, verdict="malicious",
                        profile=rng.choice([profile.name, None, f"p{rng.random()}"]), entities={},
                        fingerprints={"ja4": f"t13d{rng.random()}", "headers": f"hv1_{rng.random()}",
                                      "device": f"m/model-{rng.random()}/d"},
                        signals=(Signal(f"made.up_{rng.random()}", 0.5, "x"), Signal("device.emulator", 0.9, "y")),
                        app_version=f"{rng.randint(1, 999)}.0.0") for i in range(2000)]

    m.observe_batch(junk(3), messages=1, now=1e9 + 1, seconds=0.01)
    fps = nonzero(m.registry, "detector_fingerprint_requests_total")
    assert fps[(("fingerprint", EMULATOR), ("kind", "device"), ("verdict", "malicious"))] == 2000
    text = generate_latest(m.registry).decode()
    # the only new series: signal code 'other', profiles 'none' and 'other' (each with _created)
    assert len(text.splitlines()) <= before + 6
    assert "made.up_" not in text and "model-" not in text and "t13d0." not in text
    m.observe_batch(junk(4), messages=1, now=1e9 + 1, seconds=0.01)
    assert len(generate_latest(m.registry).decode().splitlines()) == len(text.splitlines())


# ------------------------------------------------------------------ batch aggregation
def test_batch_aggregates_equal_counting_each_verdict(label_sets, verdicts):
    m = Metrics(CollectorRegistry(), labels=label_sets)
    half = len(verdicts) // 2
    m.observe_batch(verdicts[:half], messages=10, now=1_800_000_100.0, seconds=0.2)
    m.observe_batch(verdicts[half:], messages=12, now=1_800_000_100.0, seconds=0.3)
    reg = m.registry

    assert samples(reg, "detector_requests_total")[()] == len(verdicts)
    assert samples(reg, "detector_ingest_messages_total")[()] == 22
    want_levels = Counter(v.verdict for v in verdicts)
    assert {dict(k)["verdict"]: n for k, n in nonzero(reg, "detector_verdicts_total").items()} == want_levels
    want_versions = Counter((v.profile, label_sets.version_bucket(v.profile, v.app_version)) for v in verdicts)
    got = {(dict(k)["profile"], dict(k)["app_version"]): n for k, n in nonzero(reg, "detector_profile_requests_total").items()}
    assert got == want_versions
    want_codes = Counter(s.code for v in verdicts for s in v.signals)
    assert {dict(k)["code"]: n for k, n in nonzero(reg, "detector_signals_total").items()} == want_codes

    def fp_label(v: Verdict, kind: str) -> str:
        value = v.fingerprints.get(kind)
        if kind == "device":
            if any(s.code == "device.emulator" for s in v.signals):
                return EMULATOR
            return label_sets.device_label(value)
        table = label_sets.ja4 if kind == "ja4" else label_sets.headers
        return NONE if value is None else table.get(value, OTHER)

    want_fps = Counter((kind, fp_label(v, kind), v.verdict) for v in verdicts for kind in ("ja4", "headers", "device"))
    got_fps = {(dict(k)["kind"], dict(k)["fingerprint"], dict(k)["verdict"]): n
               for k, n in nonzero(reg, "detector_fingerprint_requests_total").items()}
    assert got_fps == want_fps
    assert ("ja4", "Python requests/urllib3 (OpenSSL 3)", "malicious") in got_fps

    # the latency histogram equals prometheus_client's, observed one by one
    reg_ref = CollectorRegistry()
    ref = Histogram("ref_seconds", "x", buckets=LATENCY_BUCKETS, registry=reg_ref)
    for v in verdicts:
        ref.observe(max(0.0, 1_800_000_100.0 - v.ts))
    ours = {dict(k)["le"]: n for k, n in samples(reg, "detector_end_to_end_latency_seconds_bucket").items()}
    theirs = {dict(k)["le"]: n for k, n in samples(reg_ref, "ref_seconds_bucket").items()}
    assert ours == theirs
    assert samples(reg, "detector_end_to_end_latency_seconds_sum")[()] == pytest.approx(
        samples(reg_ref, "ref_seconds_sum")[()])


def test_batch_histogram_matches_one_by_one_observation_with_future_timestamps():
    """Ages from timestamps in the future count as 0, as the per-value path clamps them."""
    reg, ref_reg = CollectorRegistry(), CollectorRegistry()
    h = BatchHistogram("age_seconds", "x", (0.1, 1.0, 10.0), reg)
    ref = Histogram("age_seconds", "x", buckets=(0.1, 1.0, 10.0), registry=ref_reg)
    rng = random.Random(5)
    now = 1000.0
    ts = [now - rng.uniform(-2, 30) for _ in range(500)] + [now - 1.0, now - 0.1, now]
    h.observe_many([now - t for t in ts])
    for t in ts:
        ref.observe(max(0.0, now - t))
    h.observe(0.5)
    ref.observe(0.5)
    for suffix in ("_bucket", "_count", "_sum"):
        a, b = samples(reg, "age_seconds" + suffix), samples(ref_reg, "age_seconds" + suffix)
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k]), (suffix, k)


def test_state_sizes_are_read_at_scrape_time():
    m = Metrics(CollectorRegistry())
    size = {"n": 3}
    m.track_state("behaviour_entities", lambda: size["n"])
    size["n"] = 7
    assert samples(m.registry, "detector_state_entries")[(("state", "behaviour_entities"),)] == 7
    with pytest.raises(ValueError):
        m.track_state("per-device-thing", lambda: 1)


# ------------------------------------------------------------------ consumer lag
TP = namedtuple("TP", "topic partition")


class FakeConsumer:
    def __init__(self, parts: dict[int, tuple[int | None, int]]):
        self.parts = parts  # partition -> (highwater, position)

    def assignment(self):
        return {TP("client-requests", p) for p in self.parts}

    def highwater(self, tp):
        return self.parts[tp.partition][0]

    def last_stable_offset(self, tp):
        return -1

    async def position(self, tp):
        return self.parts[tp.partition][1]


def test_consumer_lag_per_partition_and_no_stale_series_after_a_rebalance():
    m = Metrics(CollectorRegistry())
    consumer = FakeConsumer({0: (100, 40), 1: (50, 50), 2: (None, 0)})
    lag = ConsumerLag(m)
    lag.watch_aiokafka("ingest", lambda: consumer)
    lag.watch_aiokafka("flag-feed", lambda: None)  # not started yet
    asyncio.run(lag.sample())
    got = {dict(k)["partition"]: v for k, v in samples(m.registry, "detector_consumer_lag_messages").items()}
    assert got == {"0": 60, "1": 0}
    consumer.parts = {1: (80, 50)}  # partition 0 was revoked
    asyncio.run(lag.sample())
    got = {dict(k)["partition"]: v for k, v in samples(m.registry, "detector_consumer_lag_messages").items()}
    assert got == {"1": 30}


def test_faust_consumer_lag_uses_the_last_read_offset():
    m = Metrics(CollectorRegistry())
    tp = TP("detector-entity-events", 0)
    other = TP("some-changelog", 0)
    consumer = SimpleNamespace(assignment=lambda: {tp, other}, highwater=lambda t: 10, _read_offset={tp: 6},
                               _committed_offset={})
    lag = ConsumerLag(m)
    lag.watch_faust("entity-shard", SimpleNamespace(_consumer=consumer), ["detector-entity-events"])
    asyncio.run(lag.sample())
    assert samples(m.registry, "detector_consumer_lag_messages") == {
        (("consumer", "entity-shard"), ("partition", "0"), ("topic", "detector-entity-events")): 3}


# ------------------------------------------------------------------ logs
def _record(**extra) -> logging.LogRecord:
    rec = logging.LogRecord("detector.worker", logging.WARNING, __file__, 1, "alert %s raised", ("a-1",), None)
    rec.__dict__.update(extra)
    return rec


def test_json_log_lines_carry_time_level_logger_message_and_ids():
    line = logs.JsonFormatter().format(_record(alert_id="a-1", revision=2, unrelated="x"))
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["level"] == "warning" and doc["logger"] == "detector.worker" and doc["message"] == "alert a-1 raised"
    assert doc["alert_id"] == "a-1" and doc["revision"] == 2 and "unrelated" not in doc
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", doc["time"])


def test_json_log_of_an_exception_stays_one_line():
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        import sys

        rec = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = logs.JsonFormatter().format(rec)
    assert len(line.splitlines()) == 1 and "ValueError: bad" in json.loads(line)["exception"]


def test_log_format_is_json_by_default_and_switchable_to_text(monkeypatch):
    monkeypatch.delenv(logs.FORMAT_ENV, raising=False)
    assert logs.log_format() == "json"
    monkeypatch.setenv(logs.FORMAT_ENV, "text")
    assert logs.log_format() == "text"
    assert "format" in logs.logging_config("INFO")["formatters"]["detector"]
    assert logs.log_format("json") == "json"  # an explicit setting wins
    monkeypatch.setenv(logs.FORMAT_ENV, "xml")
    with pytest.raises(ValueError):
        logs.log_format()


def test_configured_json_logging_writes_one_object_per_line(monkeypatch):
    import logging.config

    stream = io.StringIO()
    cfg = logs.logging_config("INFO", "json")
    logging.config.dictConfig(cfg)
    root = logging.getLogger()
    try:
        root.handlers[0].setStream(stream)
        logging.getLogger("detector.test").info("hello %s", "world", extra={"request_id": "r-9"})
        doc = json.loads(stream.getvalue().strip())
        assert doc["message"] == "hello world" and doc["request_id"] == "r-9" and doc["level"] == "info"
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)


# ------------------------------------------------------------------ dashboards as code
def _build_module():
    spec = importlib.util.spec_from_file_location("build_dashboards", ROOT / "scripts" / "build_dashboards.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["build_dashboards"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_committed_dashboards_equal_the_script_output():
    mod = _build_module()
    for name, build in mod.DASHBOARDS.items():
        path = ROOT / "config" / "grafana" / "dashboards" / name
        assert path.read_text(encoding="utf-8") == mod.render(build), (
            f"{path} is stale: run .venv/bin/python scripts/build_dashboards.py")


def _declared_metric_names() -> set[str]:
    m = Metrics(CollectorRegistry())
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",), "info": ("_info",)}
    return {fam.name + sfx for fam in m.registry.collect() for sfx in suffixes.get(fam.type, ("",))}


def test_every_metric_the_dashboards_and_rules_use_is_declared():
    declared = _declared_metric_names()
    texts = [p.read_text() for p in (ROOT / "config" / "grafana" / "dashboards").glob("*.json")]
    texts += [p.read_text() for p in (ROOT / "config" / "prometheus" / "rules").glob("*.yml")]
    used = set(re.findall(r"\bdetector_[a-z_]+", "\n".join(texts)))
    used = {u for u in used if not u.startswith("detector_test")}
    assert used, "no metric found in the dashboards"
    assert used <= declared, f"undeclared metrics: {sorted(used - declared)}"


def test_every_dashboard_panel_has_a_query_and_a_unique_id():
    for path in (ROOT / "config" / "grafana" / "dashboards").glob("*.json"):
        dash = json.loads(path.read_text())
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids)), path
        for p in dash["panels"]:
            if p["type"] != "row":
                assert p["targets"] and all(t["expr"].strip() for t in p["targets"]), (path, p["title"])


def _outside(committed: object, decoded: object, path: str = "") -> list[str]:
    """Paths of `committed` that `decoded` lacks or holds differently (`decoded` may
    add the schema's defaults)."""
    if isinstance(committed, dict) and isinstance(decoded, dict):
        return [p for k, v in committed.items()
                for p in (_outside(v, decoded[k], f"{path}.{k}") if k in decoded else [f"{path}.{k}"])]
    if isinstance(committed, list) and isinstance(decoded, list) and len(committed) == len(decoded):
        return [p for i, (a, b) in enumerate(zip(committed, decoded)) for p in _outside(a, b, f"{path}[{i}]")]
    return [] if committed == decoded else [f"{path}: {committed!r} != {decoded!r}"]


def test_every_dashboard_follows_grafanas_schema_and_can_be_provisioned():
    """Decoded by grafana-foundation-sdk's models (panel options and Prometheus
    queries by their plugins' schemas) and encoded again, a dashboard keeps every key
    and value: none is outside Grafana's schema. Provisioning needs a unique uid."""
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard

    register_default_plugins()
    uids = []
    for path in sorted((ROOT / "config" / "grafana" / "dashboards").glob("*.json")):
        committed = json.loads(path.read_text())
        decoded = json.loads(json.dumps(Dashboard.from_json(committed), cls=JSONEncoder))
        assert not _outside(committed, decoded), (path.name, _outside(committed, decoded))
        assert committed["title"].startswith("Detector / ") and committed["schemaVersion"] >= 39, path.name
        assert "id" not in committed, f"{path.name}: provisioned dashboards are matched by uid, not id"
        uids.append(committed["uid"])
    assert len(uids) == 3 and len(set(uids)) == 3 and all(1 <= len(u) <= 40 for u in uids), uids


def test_the_schema_check_finds_a_key_outside_the_schema():
    committed = {"panels": [{"type": "stat", "options": {"colorMode": "value", "colourMode": "value"}}]}
    decoded = {"panels": [{"type": "stat", "options": {"colorMode": "value", "graphMode": "area"}}]}
    assert _outside(committed, decoded) == [".panels[0].options.colourMode"]
