"""Webhook policy without a network: configuration, filters, formats, signing, the
retry decision, backoff, the circuit breaker and offset tracking; and the alert-policy
settings that decide what reaches the webhooks (allowlist, suppressed codes, severity
by code)."""

from __future__ import annotations

import hashlib
import hmac
import random
from email.utils import format_datetime
from datetime import datetime, timezone
from pathlib import Path

import orjson
import pytest
import yaml

from agents.webhooks import (DELIVERED, REJECTED, RETRY, CircuitBreaker, Endpoint, OffsetTracker, alertmanager_alert,
                             backoff_s, classify, headers, load_endpoints, parse_endpoints, render, retry_after_s, sign,
                             slack_message, write_config_with_webhooks)
from detector.alerts import AlertPolicy, AlertSettings, FlaggedRequest, iso
from detector.config import ConfigError
from detector.engine import DEFAULT_CONFIG, DetectionConfig

ROOT = Path(__file__).resolve().parents[2]


def alert(severity: str = "high", etype: str = "device", codes: tuple[str, ...] = ("ua.malformed",),
          window_start: float = 1_800_000_000.0) -> dict:
    return {"schema": "alert/1", "alert_id": "a" * 32, "revision": 2, "rule": "entity.flagged_requests",
            "created_at": iso(window_start + 1), "updated_at": iso(window_start + 9), "severity": severity,
            "entity": {"type": etype, "id": "dev-1"}, "codes": list(codes), "score": 0.95,
            "summary": "device dev-1: 10 flagged requests", "window": {"start": iso(window_start),
                                                                        "end": iso(window_start + 300)},
            "count": 10, "evidence": {}, "sample_request_ids": ["r-1", "r-2"]}


# --- configuration ----------------------------------------------------------------------------
def test_endpoints_are_read_with_secrets_from_env_and_files(tmp_path):
    (tmp_path / "hook.secret").write_text("from-file\n")
    eps = parse_endpoints([
        {"name": "soc", "url": "https://soc.example/hook", "secret": {"env": "SOC_SECRET"}, "min_severity": "high",
         "codes": ["signature.unknown_key"], "entity_types": ["device"], "max_attempts": 3, "timeout_s": 2.5},
        {"name": "chat", "url": "https://hooks.slack.com/services/x", "format": "slack", "secret": {"file": "hook.secret"}},
    ], tmp_path / "detector.yaml", env={"SOC_SECRET": "from-env"})
    assert [e.name for e in eps] == ["soc", "chat"]
    assert eps[0].secret == "from-env" and eps[1].secret == "from-file"
    assert eps[0].max_attempts == 3 and eps[0].timeout_s == 2.5 and eps[1].format == "slack"
    assert "from-env" not in repr(eps[0])  # secrets are never printed


@pytest.mark.parametrize("section, key", [
    ([{"name": "x", "url": "https://x", "secret": "plain"}], "webhooks[0].secret"),
    ([{"name": "x", "url": "https://x", "secret": {"env": "UNSET_VAR_FOR_TEST"}}], "webhooks[0].secret"),
    ([{"name": "x", "url": "ftp://x"}], "webhooks[0].url"),
    ([{"name": "x", "url": "https://x", "format": "xml"}], "webhooks[0].format"),
    ([{"name": "x", "url": "https://x", "min_severity": "urgent"}], "webhooks[0].min_severity"),
    ([{"name": "x", "url": "https://x", "max_attempts": 0}], "webhooks[0].max_attempts"),
    ([{"name": "x", "url": "https://x", "retries": 3}], "webhooks[0].retries"),
    ([{"name": "x", "url": "https://x"}, {"name": "x", "url": "https://y"}], "webhooks[1].name"),
])
def test_bad_endpoint_settings_fail_naming_the_key(section, key):
    with pytest.raises(ConfigError) as exc:
        parse_endpoints(section, "detector.yaml", env={})
    assert exc.value.key == key


def test_the_shipped_settings_and_example_configure_valid_endpoints(tmp_path):
    assert load_endpoints(DEFAULT_CONFIG, env={}) == ()  # webhooks are commented out by default
    example = ROOT / "config" / "webhooks.example.yaml"
    env = {"SOC_WEBHOOK_SECRET": "a", "SLACK_WEBHOOK_SECRET": "b", "ALERTMANAGER_WEBHOOK_SECRET": "c"}
    eps = parse_endpoints(yaml.safe_load(example.read_text())["webhooks"], example, env=env)
    assert {e.format for e in eps} == {"generic", "slack", "alertmanager"}


def test_a_config_copy_with_webhooks_still_loads_the_detection_config(tmp_path):
    path = write_config_with_webhooks(DEFAULT_CONFIG, [{"name": "x", "url": "http://127.0.0.1:1/h"}],
                                      tmp_path / "d.yaml")
    assert DetectionConfig.load(path).profiles
    assert [e.name for e in load_endpoints(path, env={})] == ["x"]


# --- filters and formats ---------------------------------------------------------------------------
def test_filters_by_severity_code_and_entity_type():
    e = Endpoint("x", "https://x", min_severity="high", codes=frozenset({"device.emulator"}),
                 entity_types=frozenset({"device"}))
    assert e.accepts(alert("high", codes=("device.emulator", "ua.malformed")))
    assert e.accepts(alert("critical", codes=("device.emulator",)))
    assert not e.accepts(alert("medium", codes=("device.emulator",)))
    assert not e.accepts(alert("high", codes=("ua.malformed",)))
    assert not e.accepts(alert("high", etype="account", codes=("device.emulator",)))
    assert Endpoint("all", "https://x").accepts(alert("low"))


def test_generic_body_is_the_alert_and_identical_on_every_send():
    e = Endpoint("x", "https://x")
    a = alert()
    assert render(e, a, now=1.0) == render(e, a, now=2_000_000_000.0)
    assert orjson.loads(render(e, a)) == a


def test_slack_message_has_text_and_blocks_with_evidence():
    m = slack_message(alert())
    assert "HIGH" in m["text"] and "device dev-1" in m["text"] and m["blocks"]
    assert "`r-1`" in m["blocks"][1]["text"]["text"] and "ua.malformed" in m["blocks"][1]["text"]["text"]


def test_behavioural_evidence_reaches_slack_and_alertmanager():
    a = alert()
    a["evidence"]["flags"] = {"behaviour.device_account_fanout": "device dev-1 used by 9 accounts within 1 h"}
    assert "used by 9 accounts" in slack_message(a)["blocks"][1]["text"]["text"]
    assert "used by 9 accounts" in alertmanager_alert(a, now=0.0)["annotations"]["behaviour"]
    assert "behaviour" not in alertmanager_alert(alert(), now=0.0)["annotations"]


def test_alertmanager_alert_ends_when_its_window_closes():
    a = alert(window_start=1_800_000_000.0)
    open_ = alertmanager_alert(a, now=1_800_000_100.0)
    closed = alertmanager_alert(a, now=1_800_000_400.0)
    assert "endsAt" not in open_ and closed["endsAt"] == a["window"]["end"]
    assert open_["labels"]["alert_id"] == a["alert_id"] and open_["labels"]["severity"] == "high"
    assert all(isinstance(v, str) for v in {**open_["labels"], **open_["annotations"]}.values())
    assert open_["startsAt"] == a["created_at"]


# --- signing ----------------------------------------------------------------------------------------
def test_signature_is_hmac_sha256_of_timestamp_dot_body():
    body = b'{"alert_id":"x"}'
    expected = hmac.new(b"k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign("k", 1700000000, body) == "sha256=" + expected


def test_headers_carry_idempotency_key_timestamp_and_signature():
    e = Endpoint("x", "https://x", secret="k")
    a = alert()
    body = render(e, a)
    h = headers(e, a, body, 1700000000)
    assert h["Idempotency-Key"] == f"{a['alert_id']}:2"
    assert h["X-Detector-Timestamp"] == "1700000000"
    assert h["X-Detector-Signature"] == sign("k", 1700000000, body)
    assert h["Content-Type"] == "application/json"
    assert "X-Detector-Signature" not in headers(Endpoint("y", "https://y"), a, body, 1)


# --- retry policy -----------------------------------------------------------------------------------
@pytest.mark.parametrize("status, outcome", [
    (200, DELIVERED), (202, DELIVERED), (204, DELIVERED), (None, RETRY), (429, RETRY), (408, RETRY), (500, RETRY),
    (503, RETRY), (400, REJECTED), (401, REJECTED), (404, REJECTED), (422, REJECTED), (301, REJECTED),
])
def test_retries_network_errors_429_and_5xx_never_other_4xx(status, outcome):
    assert classify(status) == outcome


def test_retry_after_in_seconds_or_as_an_http_date():
    now = 1_800_000_000.0
    assert retry_after_s("7", now) == 7.0
    date = format_datetime(datetime.fromtimestamp(now + 30, tz=timezone.utc), usegmt=True)
    assert retry_after_s(date, now) == pytest.approx(30, abs=1)
    assert retry_after_s("soon", now) is None and retry_after_s(None, now) is None


def test_backoff_grows_exponentially_with_jitter_and_honours_retry_after():
    e = Endpoint("x", "https://x", backoff_s=1.0, backoff_max_s=60.0)
    rng = random.Random(1)
    for attempt in range(1, 10):
        cap = min(60.0, 2 ** (attempt - 1))
        delays = [backoff_s(e, attempt, rng) for _ in range(50)]
        assert all(cap / 2 <= d <= cap for d in delays)
        assert len(set(delays)) > 1  # jittered
    assert backoff_s(e, 1, rng, retry_after=20.0) >= 20.0
    assert backoff_s(e, 1, rng, retry_after=10_000.0) <= 60.0  # capped


def test_circuit_opens_after_consecutive_failures_then_lets_one_probe_through():
    now = [0.0]
    b = CircuitBreaker(failures=3, reset_s=10, clock=lambda: now[0])
    for _ in range(2):
        b.record(False)
    assert b.wait_s() == 0
    b.record(False)
    assert b.is_open and b.wait_s() == pytest.approx(10)
    now[0] = 10.5
    assert b.wait_s() == 0  # the probe
    assert b.wait_s() > 0  # only one at a time
    b.record(True)
    assert not b.is_open and b.wait_s() == 0


def test_commit_offset_never_passes_an_unresolved_delivery():
    t = OffsetTracker()
    for o in range(5):
        t.add(0, o)
    t.add(1, 7)
    for o in (0, 1, 3, 4):
        t.done(0, o)
    assert t.committable() == {0: 2, 1: 7}
    t.done(0, 2)
    t.done(1, 7)
    assert t.committable() == {0: 5, 1: 8}
    t.forget([1])
    assert t.committable() == {0: 5}


# --- alert policy: what reaches the webhooks ------------------------------------------------------------
def rec(i: int, entity: str = "dev-1", codes: tuple[str, ...] = ("ua.malformed",)) -> FlaggedRequest:
    return FlaggedRequest("device", entity, f"r-{i}", 1_800_000_000.0 + i, 0.9, "malicious", "p", "10.0.0.1", codes)


def test_allowlisted_entities_never_alert():
    s = AlertSettings(min_count=1, allowlist=({"entity_type": "device", "id": "qa-phone", "reason": "QA test device"},))
    out = AlertPolicy(s).observe([rec(i, "qa-phone") for i in range(5)] + [rec(9, "dev-2")])
    assert [a["entity"]["id"] for a in out] == ["dev-2"]


def test_allowlist_entries_need_a_reason():
    with pytest.raises(ValueError, match="allowlist"):
        AlertSettings(allowlist=({"entity_type": "device", "id": "x"},))


def test_suppressed_codes_do_not_count_or_show_as_evidence():
    s = AlertSettings(min_count=2, suppress_codes=("network.hosting",))
    out = AlertPolicy(s).observe([rec(0, codes=("network.hosting",)), rec(1, codes=("network.hosting", "ua.malformed")),
                                  rec(2, codes=("ua.malformed",))])
    assert len(out) == 1 and out[0]["count"] == 2 and out[0]["codes"] == ["ua.malformed"]


def test_severity_by_code_raises_the_severity_of_the_count():
    s = AlertSettings(min_count=1, severity_by_count={1: "medium"},
                      severity_by_code={"replay.signature_reused_elsewhere": "critical"})
    out = AlertPolicy(s).observe([rec(0), rec(1, codes=("replay.signature_reused_elsewhere",))])
    assert [(a["revision"], a["severity"]) for a in out] == [(1, "medium"), (2, "critical")]
    with pytest.raises(ValueError, match="severity_by_code"):
        AlertSettings(severity_by_code={"x": "urgent"})


def test_demo_takes_a_webhook_url_and_secret(tmp_path):
    from agents.cli import parser
    from agents.demo import demo_webhook_config

    args = parser().parse_args(["demo", "--webhook", "http://127.0.0.1:9/hook", "--webhook-secret", "s"])
    assert (args.webhook, args.webhook_secret) == ("http://127.0.0.1:9/hook", "s")
    path, env = demo_webhook_config(None, args.webhook, args.webhook_secret, tmp_path)
    (ep,) = load_endpoints(path, env=env)
    assert ep.url == "http://127.0.0.1:9/hook" and ep.secret == "s" and ep.format == "generic"
