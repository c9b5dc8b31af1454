"""A real worker over SASL_SSL with SCRAM-SHA-512 (docs/operations.md "Production
Kafka"), on the Apache Kafka tier only (the embedded broker has no SASL): the broker's
certificate is signed by a CA made by the test, the SCRAM user is created by the
storage format. Every client of the worker (the ingest stage's, Faust's, the shards'
changelog producer, webhook delivery, the broker link and the admin calls) and of
`detector topics` connects through the secured listener (a client bootstrapped there
is told that listener's endpoints only); the test's own clients too. A wrong password stops the worker at once
with a readable error, and no secret reaches its log, /readyz or /metrics."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from agents.kafkaclient import KafkaSecurity
from agents.settings import load_settings
from agents.tools.broker import free_port
from agents.tools.demo import start_worker, stop_process
from agents.tools.produce import produce_events
from agents.topics import ALERTS, ALL_TOPICS, VERDICTS, existing_topics
from detector.simulate import genuine, private_api_library
from tests.conftest import TIERS
from tests.integration.test_webhooks import Receiver, endpoint, ok, verify, wait_until, worker_config

pytestmark = [pytest.mark.broker, pytest.mark.timeout(180)]

PASSWORD = "pw-of-the-detector-7f3a"  # noqa: S105 - the test user's, made for this broker


@pytest.fixture
def secure_broker() -> Iterator[Any]:
    from tests.brokers import SecureKafkaBroker, kafka_available

    if "kafka" not in TIERS:
        pytest.skip("the Apache Kafka tier is not among DETECTOR_TEST_TIERS")
    ok, why = kafka_available()
    if not ok:
        pytest.skip(f"Apache Kafka tier SKIPPED: {why}")
    b = SecureKafkaBroker(PASSWORD).start()
    try:
        yield b
    finally:
        b.cleanup()


def _env(broker: Any, tmp_path: Path, password: str | None = None) -> dict[str, str]:
    """The worker's settings, as an operator sets them: the password from a file
    unless `password` is given as text."""
    env = {
        "DETECTOR_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "DETECTOR_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "DETECTOR_KAFKA_SASL_USERNAME": broker.SCRAM_USER,
        "DETECTOR_KAFKA_SSL_CAFILE": str(broker.ca_file),
    }
    if password is None:
        secret = tmp_path / "kafka-password"
        secret.write_text(PASSWORD + "\n")  # as `echo` or a mounted secret leaves it
        env["DETECTOR_KAFKA_SASL_PASSWORD_FILE"] = str(secret)
    else:
        env["DETECTOR_KAFKA_SASL_PASSWORD"] = password
    return env


def _security(broker: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> KafkaSecurity:
    """The test's own clients: built by the settings from the same variables (set for
    this call only: the workers get theirs from start_worker)."""
    with monkeypatch.context() as m:
        for k, v in _env(broker, tmp_path).items():
            m.setenv(k, v)
        return load_settings().kafka


async def _collect(bootstrap: str, security: KafkaSecurity, want: int, timeout: float) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {VERDICTS.name: [], ALERTS.name: []}
    c = AIOKafkaConsumer(*out, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                         **security.client_kwargs())
    await c.start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (len(out[VERDICTS.name]) < want or not out[ALERTS.name]):
            for tp, msgs in (await c.getmany(timeout_ms=250)).items():
                out[tp.topic].extend(orjson.loads(m.value) for m in msgs)
    finally:
        await c.stop()
    return out


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.mark.slow  # a broker and two worker processes
async def test_worker_over_sasl_ssl_scram_sha_512_and_a_wrong_password_fails_cleanly(
        secure_broker, profile, tmp_path, monkeypatch):
    b = secure_broker
    security = _security(b, tmp_path, monkeypatch)
    assert security.protocol == "SASL_SSL" and security.password == PASSWORD  # the file's newline is not in it
    # the topics by the CLI, as an operator creates them (its admin client over SASL_SSL)
    env = {**os.environ, **_env(b, tmp_path), "DETECTOR_KAFKA_BOOTSTRAP": b.secure_bootstrap}
    made = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "agents.cli", "topics", "--create",
                                                    "--replication-factor", "1"],
                                   capture_output=True, text=True, env=env, timeout=60)
    assert made.returncode == 0, made.stderr
    assert f"created {VERDICTS.name} (replication factor 1)" in made.stdout
    assert await existing_topics(b.secure_bootstrap, security) == {t.name: 4 for t in ALL_TOPICS}

    # a wrong password: the worker stops at once (exit 3) with the broker's reason
    bad_log = tmp_path / "bad-worker.log"
    bad = start_worker(b.secure_bootstrap, free_port(), bad_log, extra_env=_env(b, tmp_path, "not-the-password"))
    try:
        code = await asyncio.to_thread(bad.wait, 30)
    finally:
        stop_process(bad)
    text = bad_log.read_text(errors="replace")
    assert code == 3, text[-3000:]
    assert "SaslAuthenticationFailed" in text and "invalid credentials" in text, text[-3000:]
    assert "Traceback" not in text and "not-the-password" not in text
    assert text.count("Kafka refused the connection") == 1

    # the right password from a file: verdicts, alerts and their webhook deliveries (the
    # delivery stage's consumers and producer), every client over SASL_SSL
    receiver = await Receiver({"/hook": ok}).start()
    port = free_port()
    log = tmp_path / "worker.log"
    hooks = worker_config(tmp_path, [endpoint("soc", receiver.url("/hook"))])
    proc = start_worker(b.secure_bootstrap, port, log, extra_env={**_env(b, tmp_path), **hooks})
    try:
        good = list(genuine(profile, 60, seed=5))
        attack = list(private_api_library(profile, 30, seed=5, start_ts=good[-1]["ts"] + 1))
        sent = await produce_events(b.secure_bootstrap, [*good, *attack], batch=30, security=security)
        assert sent == 90
        out = await _collect(b.secure_bootstrap, security, 90, timeout=60)
        verdicts = {v["request_id"]: v for v in out[VERDICTS.name]}
        assert len(verdicts) == 90, log.read_text(errors="replace")[-3000:]
        assert all(verdicts[e["request_id"]]["verdict"] == "malicious" for e in attack)
        assert all(verdicts[e["request_id"]]["verdict"] == "clean" for e in good)
        assert out[ALERTS.name], "the shards (Faust over SASL_SSL) raised no alert"
        status, ready = _get(port, "/readyz")
        assert status == 200, ready
        _, metrics = _get(port, "/metrics")
        assert PASSWORD not in ready and PASSWORD not in metrics
        await wait_until(lambda: bool(receiver.delivered("/hook")), 30, "a webhook delivery", log)
        assert all(verify(e) for e in receiver.at("/hook"))
    finally:
        stop_process(proc)
        await receiver.stop()
    text = log.read_text(errors="replace")
    assert PASSWORD not in text and "SASL_SSL (SCRAM-SHA-512, user 'detector')" in text
