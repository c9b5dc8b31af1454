"""Webhook policy without a network: configuration, filters, formats, signing, the
retry decision, backoff, the circuit breaker and offset tracking; and the alert-policy
settings that decide what reaches the webhooks (allowlist, suppressed codes, severity
by code)."""

from __future__ import annotations

import hashlib
import heapq
import hmac
import ipaddress
import random
import socket
from email.utils import format_datetime
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from aiohttp import web
from aiohttp.abc import AbstractResolver

from agents.webhooks import (DELIVERED, REJECTED, RETRY, AddressPolicy, CircuitBreaker, Endpoint, EndpointQueue,
                             OffsetTracker, Pending, alertmanager_alert, backoff_s, classify, clip, dlq_record, headers,
                             load_endpoints, parse_endpoints, render, retry_after_s, sign, slack_message, status_line,
                             write_config_with_webhooks)
from detector.alerts import Alert, alert_from_obj, decode_alert, iso
from detector.config import ConfigError
from detector.engine import DEFAULT_CONFIG, DetectionConfig

ROOT = Path(__file__).resolve().parents[2]


def alert(severity: str = "high", etype: str = "device", codes: tuple[str, ...] = ("ua.malformed",),
          window_start: float = 1_800_000_000.0, flags: dict[str, str] | None = None) -> Alert:
    return alert_from_obj(alert_obj(severity, etype, codes, window_start, flags))


def alert_obj(severity: str = "high", etype: str = "device", codes: tuple[str, ...] = ("ua.malformed",),
              window_start: float = 1_800_000_000.0, flags: dict[str, str] | None = None) -> dict:
    """The alert as JSON decodes it."""
    return {"schema": "alert/1", "alert_id": "a" * 32, "revision": 2, "rule": "entity.flagged_requests",
            "created_at": iso(window_start + 1), "updated_at": iso(window_start + 9), "severity": severity,
            "entity": {"type": etype, "id": "dev-1"}, "codes": list(codes), "score": 0.95,
            "summary": "device dev-1: 10 flagged requests", "window": {"start": iso(window_start),
                                                                        "end": iso(window_start + 300)},
            "count": 10, "evidence": {"code_counts": {c: 10 for c in codes}, "profiles": ["p"], "distinct_ips": 1,
                                      **({"flags": flags} if flags else {})},
            "sample_request_ids": ["r-1", "r-2"]}


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
    assert render(e, a) == orjson.dumps(alert_obj())  # the JSON the engine wrote, byte for byte


def test_an_alert_with_only_the_contracts_required_fields_is_delivered_as_it_came():
    """The contract (config/schema/alert.schema.json) requires no part of `evidence`
    and no `rule`: such an alert decodes, and its generic body is its own JSON."""
    obj = alert_obj()
    del obj["rule"]
    obj["evidence"] = {"code_counts": {"ua.malformed": 3}}
    raw = orjson.dumps(obj)
    a = decode_alert(raw)
    assert render(Endpoint("x", "https://x"), a) == raw
    assert alertmanager_alert(a, now=0.0)["labels"]["rule"] == "" and "behaviour" not in slack_message(a)["text"]


def test_slack_message_has_text_and_blocks_with_evidence():
    m = slack_message(alert())
    assert "HIGH" in m["text"] and "device dev-1" in m["text"] and m["blocks"]
    assert "`r-1`" in m["blocks"][1]["text"]["text"] and "ua.malformed" in m["blocks"][1]["text"]["text"]


def test_behavioural_evidence_reaches_slack_and_alertmanager():
    a = alert(flags={"behaviour.device_account_fanout": "device dev-1 used by 9 accounts within 1 h"})
    assert "used by 9 accounts" in slack_message(a)["blocks"][1]["text"]["text"]
    assert "used by 9 accounts" in alertmanager_alert(a, now=0.0)["annotations"]["behaviour"]
    assert "behaviour" not in alertmanager_alert(alert(), now=0.0)["annotations"]


def test_alertmanager_alert_ends_when_its_window_closes():
    a = alert(window_start=1_800_000_000.0)
    open_ = alertmanager_alert(a, now=1_800_000_100.0)
    closed = alertmanager_alert(a, now=1_800_000_400.0)
    assert "endsAt" not in open_ and closed["endsAt"] == a.window.end
    assert open_["labels"]["alert_id"] == a.alert_id and open_["labels"]["severity"] == "high"
    assert all(isinstance(v, str) for v in {**open_["labels"], **open_["annotations"]}.values())
    assert open_["startsAt"] == a.created_at


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
    assert h["Idempotency-Key"] == f"{a.alert_id}:2"
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


def test_demo_takes_a_webhook_url_and_secret(tmp_path):
    from agents.cli import parser
    from agents.tools.demo import demo_webhook_config

    args = parser().parse_args(["demo", "--webhook", "http://127.0.0.1:9/hook", "--webhook-secret", "s"])
    assert (args.webhook, args.webhook_secret) == ("http://127.0.0.1:9/hook", "s")
    path, env = demo_webhook_config(None, args.webhook, args.webhook_secret, tmp_path)
    (ep,) = load_endpoints(path, env=env)
    assert ep.url == "http://127.0.0.1:9/hook" and ep.secret == "s" and ep.format == "generic"


# --- outbound address policy (SSRF) -----------------------------------------------------------
@pytest.mark.parametrize("address, reason", [
    ("169.254.169.254", "cloud_metadata"),  # AWS, GCP (metadata.google.internal), Azure, OpenStack
    ("fd00:ec2::254", "cloud_metadata"),  # AWS over IPv6
    ("100.100.100.200", "cloud_metadata"),  # Alibaba Cloud
    ("::ffff:169.254.169.254", "cloud_metadata"),  # IPv4-mapped IPv6 reaches the IPv4 address
    ("169.254.10.20", "link_local"),
    ("fe80::1", "link_local"),
    ("fe80::1%eth0", "link_local"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("::", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("ff02::1", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    ("not-an-address", "invalid"),
    ("127.0.0.1", None),  # loopback and private ranges stay allowed by default (demo, tests, in-cluster receivers)
    ("::1", None),
    ("10.1.2.3", None),
    ("192.168.1.10", None),
    ("fd12:3456::1", None),
    ("93.184.216.34", None),
    ("2606:2800:220:1::1", None),
])
def test_address_policy_refuses_link_local_metadata_and_non_unicast(address, reason):
    assert AddressPolicy().refusal(address) == reason


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "10.1.2.3", "172.16.0.1", "192.168.1.10", "fd12:3456::1",
                                     "100.64.0.1", "::ffff:10.0.0.1"])
def test_deny_private_also_refuses_loopback_and_private_addresses(address):
    assert AddressPolicy(deny_private=True).refusal(address) == "private"
    assert AddressPolicy(deny_private=True).refusal("93.184.216.34") is None


def test_allow_addresses_lets_named_networks_through_and_nothing_else():
    policy = AddressPolicy(allow=(ipaddress.ip_network("169.254.169.254/32"), ipaddress.ip_network("10.0.0.0/8")),
                           deny_private=True)
    assert policy.refusal("169.254.169.254") is None
    assert policy.refusal("10.200.0.1") is None
    assert policy.refusal("169.254.169.253") == "link_local"
    assert policy.refusal("192.168.0.1") == "private"


def test_address_settings_are_validated_naming_key_and_line(tmp_path):
    f = tmp_path / "d.yaml"
    f.write_text("kafka_bootstrap: x\nwebhooks:\n  - name: a\n    url: http://a.example/h\n    deny_private: true\n"
                 "    allow_addresses: [169.254.169.254, 10.0.0.0/8, 'fd00::/8']\n")
    (ep,) = load_endpoints(f, env={})
    assert ep.deny_private and [str(n) for n in ep.allow_addresses] == ["169.254.169.254/32", "10.0.0.0/8", "fd00::/8"]
    for bad, key in [("    deny_private: 'yes'\n", "webhooks[0].deny_private"),
                     ("    allow_addresses: 10.0.0.0/8\n", "webhooks[0].allow_addresses"),
                     ("    allow_addresses: [10.0.0.0/33]\n", "webhooks[0].allow_addresses"),
                     ("    allow_addresses: [metadata.google.internal]\n", "webhooks[0].allow_addresses"),
                     ("    max_attempts: true\n", "webhooks[0].max_attempts"),
                     ("    allow_adresses: []\n", "webhooks[0].allow_adresses")]:
        f.write_text("kafka_bootstrap: x\nwebhooks:\n  - name: a\n    url: http://a.example/h\n" + bad)
        with pytest.raises(ConfigError) as exc:
            load_endpoints(f, env={})
        assert exc.value.key == key and exc.value.line == 5, str(exc.value)
        assert f"{f}:5: {key}:" in str(exc.value)


class StaticResolver(AbstractResolver):
    """Our DNS seam: answers from a table, each name a list of answers used in turn
    (the last one repeats), so a test can play a DNS server that rebinds."""

    def __init__(self, table: dict[str, list[list[str]]]):
        self.table = table
        self.asked: list[str] = []

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[Any]:
        self.asked.append(host)
        answers = self.table[host]
        addrs = answers.pop(0) if len(answers) > 1 else answers[0]
        return [{"hostname": host, "host": a, "port": port, "proto": 0, "flags": socket.AI_NUMERICHOST,
                 "family": socket.AF_INET6 if ":" in a else socket.AF_INET} for a in addrs]

    async def close(self) -> None:
        pass


@pytest.fixture
async def receiver():
    """A real HTTP server on loopback that records what reached it; `/fail` answers
    500 with a body (and a reason phrase of its own) that must not be copied anywhere."""
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.path)
        if request.path == "/fail":
            return web.Response(status=500, reason="Receiver Says Something", text=BODY_MARKER * 100)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield port, seen
    await runner.cleanup()


BODY_MARKER = "stack-trace-with-internal-secrets\x1b[2J"


async def send(url: str, policy: AddressPolicy, resolver: StaticResolver | None = None, **kw: Any):
    from agents.delivery import GuardedConnector, post

    connector = GuardedConnector(policy, **({"resolver": resolver} if resolver else {}), **kw)
    async with aiohttp.ClientSession(connector=connector) as session:
        return await post(session, Endpoint("x", url, timeout_s=3), alert())


async def test_a_host_resolving_to_loopback_is_delivered_unless_private_addresses_are_denied(receiver):
    port, seen = receiver
    dns = StaticResolver({"hook.test": [["127.0.0.1"]]})
    ok = await send(f"http://hook.test:{port}/a", AddressPolicy(), dns)
    assert (ok.status, ok.result, ok.error) == (200, "delivered", "HTTP 200 OK")
    refused = await send(f"http://hook.test:{port}/b", AddressPolicy(deny_private=True), dns)
    assert refused.result == "address_refused" and refused.status is None
    assert "hook.test" in refused.error and "127.0.0.1 (private)" in refused.error
    assert seen == ["/a"] and dns.asked == ["hook.test", "hook.test"]


@pytest.mark.parametrize("name, answer", [
    ("metadata.google.internal", ["169.254.169.254"]),  # what it resolves to on GCE
    ("rebound.test", ["169.254.169.254", "fe80::1"]),
    ("ec2.test", ["fd00:ec2::254"]),
    ("alibaba.test", ["100.100.100.200"]),
    ("nowhere.test", ["0.0.0.0"]),
    ("group.test", ["239.1.2.3"]),
])
async def test_a_host_resolving_to_metadata_or_link_local_addresses_is_refused_before_connecting(receiver, name, answer):
    port, seen = receiver
    a = await send(f"http://{name}:{port}/m", AddressPolicy(), StaticResolver({name: [answer]}))
    # refused, not attempted: a connection to 169.254.169.254 from here would time out or be unreachable
    assert a.result == "address_refused", a
    assert name in a.error and answer[0] in a.error and seen == []


async def test_only_the_allowed_addresses_of_a_mixed_answer_are_connected_to(receiver):
    port, seen = receiver
    a = await send(f"http://mixed.test:{port}/x", AddressPolicy(),
                   StaticResolver({"mixed.test": [["169.254.169.254", "127.0.0.1"]]}))
    assert a.result == "delivered" and seen == ["/x"]


async def test_dns_rebinding_after_the_first_connection_is_refused_at_connect_time(receiver):
    """The name is checked on every connection, not once at start-up: a DNS server
    that answers loopback first and the metadata address next is refused the second
    time (fresh resolution and connection per request here)."""
    port, seen = receiver
    dns = StaticResolver({"rebind.test": [["127.0.0.1"], ["169.254.169.254"]]})
    from agents.delivery import GuardedConnector, post

    connector = GuardedConnector(AddressPolicy(), resolver=dns, use_dns_cache=False, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        first = await post(session, Endpoint("x", f"http://rebind.test:{port}/1"), alert())
        second = await post(session, Endpoint("x", f"http://rebind.test:{port}/2"), alert())
    assert (first.result, second.result) == ("delivered", "address_refused")
    assert seen == ["/1"]


@pytest.mark.parametrize("host", ["169.254.169.254", "[::ffff:169.254.169.254]", "[fe80::1]", "0.0.0.0"])
async def test_an_ip_literal_url_is_refused_too(receiver, host):
    port, _ = receiver
    a = await send(f"http://{host}:{port}/m", AddressPolicy())
    assert a.result == "address_refused", a


async def test_allow_addresses_permits_a_named_link_local_receiver(receiver):
    port, seen = receiver
    policy = AddressPolicy(allow=(ipaddress.ip_network("127.0.0.0/8"),), deny_private=True)
    a = await send(f"http://hook.test:{port}/ok", policy, StaticResolver({"hook.test": [["127.0.0.1"]]}))
    assert a.result == "delivered" and seen == ["/ok"]


async def test_only_a_status_line_of_the_response_is_kept(receiver, caplog):
    port, seen = receiver
    a = await send(f"http://127.0.0.1:{port}/fail", AddressPolicy())
    assert (a.status, a.result, a.error) == (500, "http_error", "HTTP 500 Internal Server Error")
    record = orjson.loads(dlq_record("x", alert(), "failed", f"3 attempts, last: {a.error}", 3, 1_800_000_000.0))
    assert BODY_MARKER[:20] not in orjson.dumps(record).decode() and "Receiver Says" not in record["reason"]
    assert status_line(599) == "HTTP 599" and status_line(422) == "HTTP 422 Unprocessable Entity"
    assert clip("a\x1b[2Jb\r\nc" + "x" * 500) == ("a [2Jb  c" + "x" * 500)[:197] + "..."


# --- the breaker makes a dead endpoint visible ----------------------------------------------------
def pending(i: int, due: float) -> Pending:
    return Pending(due, i, 0, i, 0, 1, alert())


def test_breaker_state_goes_closed_open_half_open():
    now = [0.0]
    b = CircuitBreaker(failures=2, reset_s=30, clock=lambda: now[0])
    assert b.state == "closed"
    b.record(False)
    b.record(False)
    assert b.state == "open" and b.open_for_s() == 30
    now[0] = 30.0
    assert b.state == "half_open" and b.wait_s() == 0 and b.probing
    b.abandon()  # an attempt that says nothing (address refused): the probe may be taken again
    assert not b.probing and b.wait_s() == 0
    b.record(False)
    assert b.state == "open"
    b.reset()
    assert b.state == "closed"


def test_an_open_breaker_holds_due_deliveries_back_and_counts_them_every_reset_period():
    """The defect: with the circuit open, one probe per `breaker_reset_s` spent one
    attempt of one delivery, so 50 waiting deliveries took hours to reach
    `max_attempts` and nothing counted as failed. Now every due delivery the open
    breaker holds back is counted (as `breaker_open` attempts) each reset period,
    without spending its attempts."""
    now = [1_800_000_000.0]
    q = EndpointQueue(Endpoint("dead", "http://127.0.0.1:1/h", breaker_failures=5, breaker_reset_s=30),
                      clock=lambda: now[0], monotonic=lambda: now[0])
    for i in range(50):
        q.push(pending(i, now[0] + i * 0.1))
    for _ in range(5):
        q.breaker.record(False)
    assert q.breaker.state == "open" and q.pending == 50
    held = []
    for _ in range(20):  # ten minutes of a dead endpoint, one failed probe per reset period
        now[0] += 10
        held.append(q.hold_back())
        now[0] += 20
        assert q.breaker.state == "half_open" and q.hold_back() == 0
        assert q.breaker.wait_s() == 0  # the probe
        heapq.heappop(q.heap)  # ... is attempted, fails, and is re-queued on the retry topic
        q.breaker.record(False)
    assert held[0] == 50 and held[1:] == list(range(49, 30, -1))
    assert sum(held) > 700 and all(p.attempt == 1 for p in q.heap)  # no attempt spent by holding back
    assert q.hold_back() == 30 and all(p.due == now[0] + 30 for p in q.heap)  # each waits for the next probe
    assert q.hold_back() == 0  # nothing due now: nothing counted twice


def test_a_closed_or_half_open_breaker_holds_nothing_back():
    now = [100.0]
    q = EndpointQueue(Endpoint("ok", "http://x/h", breaker_failures=1, breaker_reset_s=5), clock=lambda: now[0],
                      monotonic=lambda: now[0])
    q.push(pending(0, 50.0))
    assert q.hold_back() == 0 and q.breaker.state == "closed"
    q.breaker.record(False)
    now[0] = 106.0
    assert q.breaker.state == "half_open" and q.hold_back() == 0 and len(q) == 1
