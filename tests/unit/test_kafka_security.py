"""The Kafka connection settings (agents/kafkaclient.py, docs/operations.md
"Production Kafka"): what the schema accepts and refuses, secrets read from files,
the one SSLContext, the keyword arguments every client gets, and that no secret is
shown. The real SASL_SSL broker is tests/integration/test_kafka_security.py."""

from __future__ import annotations

import shutil
import ssl
from pathlib import Path

import pytest

from agents.cli import parser
from agents.kafkaclient import PLAINTEXT, build_security
from agents.settings import load_settings
from detector.config import ConfigError
from tests.brokers import make_test_pki

ROOT = Path(__file__).resolve().parents[2]

SASL = {
    "DETECTOR_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "DETECTOR_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "DETECTOR_KAFKA_SASL_USERNAME": "detector",
    "DETECTOR_KAFKA_SASL_PASSWORD": "pw-5e1f",
}


@pytest.fixture(autouse=True)
def _no_kafka_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for k in list(os.environ):
        if k.startswith("DETECTOR_KAFKA_"):
            monkeypatch.delenv(k)


def _set(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)


def test_the_default_is_plaintext_with_no_extra_arguments() -> None:
    s = load_settings()
    assert s.kafka is PLAINTEXT and s.kafka.client_kwargs() == {"security_protocol": "PLAINTEXT"}
    assert s.kafka.faust_credentials() is None


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_ssl_gives_every_client_the_mechanism_the_user_and_one_context(monkeypatch: pytest.MonkeyPatch,
                                                                            mechanism: str) -> None:
    _set(monkeypatch, {**SASL, "DETECTOR_KAFKA_SASL_MECHANISM": mechanism})
    s = load_settings()
    assert s.kafka is s.kafka  # built once
    kw = s.kafka.client_kwargs()
    assert kw["security_protocol"] == "SASL_SSL" and kw["sasl_mechanism"] == mechanism
    assert kw["sasl_plain_username"] == "detector" and kw["sasl_plain_password"] == "pw-5e1f"
    assert isinstance(kw["ssl_context"], ssl.SSLContext) and kw["ssl_context"].check_hostname
    creds = s.kafka.faust_credentials()
    assert type(creds).__name__ == "SASLCredentials"
    assert creds.mechanism.value == mechanism and creds.protocol.value == "SASL_SSL"  # type: ignore[union-attr]


def test_no_secret_in_repr_logs_or_the_masked_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(monkeypatch, SASL)
    s = load_settings()
    for shown in (repr(s), str(s.masked()), repr(s.kafka), s.kafka.describe(), repr(s.kafka.faust_credentials())):
        assert "pw-5e1f" not in shown
    assert s.masked()["kafka_sasl_password"] == "**********"


def test_secrets_and_certificates_come_from_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ca, keystore = make_test_pki(tmp_path, "127.0.0.1")
    (tmp_path / "user").write_text("detector\n")
    (tmp_path / "password").write_text("from-a-file\r\n")
    # a client certificate for mutual TLS: the keystore holds the key and the certificate
    _set(monkeypatch, {k: v for k, v in SASL.items() if "USERNAME" not in k and "PASSWORD" not in k})
    _set(monkeypatch, {"DETECTOR_KAFKA_SASL_USERNAME_FILE": str(tmp_path / "user"),
                       "DETECTOR_KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "password"),
                       "DETECTOR_KAFKA_SSL_CAFILE": str(ca), "DETECTOR_KAFKA_SSL_CERTFILE": str(keystore),
                       "DETECTOR_KAFKA_SSL_KEYFILE": str(keystore), "DETECTOR_KAFKA_SSL_CHECK_HOSTNAME": "false"})
    k = load_settings().kafka
    assert (k.username, k.password) == ("detector", "from-a-file")
    assert k.ssl_context is not None and not k.ssl_context.check_hostname
    assert k.ssl_context.verify_mode == ssl.CERT_REQUIRED  # the CA is still checked
    assert k.ssl_context.get_ca_certs()[0]["subject"] == ((("commonName", "detector test CA"),),)


def test_relative_files_are_taken_from_the_settings_files_folder(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    shutil.copy(ROOT / "config" / "detector.yaml", tmp_path / "detector.yaml")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "kafka").write_text("pw")
    _set(monkeypatch, {**SASL, "DETECTOR_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                       "DETECTOR_KAFKA_SASL_PASSWORD_FILE": "secrets/kafka"})
    monkeypatch.delenv("DETECTOR_KAFKA_SASL_PASSWORD")
    k = load_settings(tmp_path).kafka
    assert k.password == "pw" and k.ssl_context is None and "ssl_context" not in k.client_kwargs()


@pytest.mark.parametrize("env, problem", [
    ({"DETECTOR_KAFKA_SASL_MECHANISM": None}, "kafka_security_protocol: kafka_security_protocol SASL_SSL needs "
                                              "kafka_sasl_mechanism"),
    ({"DETECTOR_KAFKA_SASL_PASSWORD_FILE": "/x"}, "exactly one of kafka_sasl_password and kafka_sasl_password_file "
                                                  "(both are set)"),
    ({"DETECTOR_KAFKA_SASL_USERNAME": None}, "exactly one of kafka_sasl_username and kafka_sasl_username_file"),
    ({"DETECTOR_KAFKA_SASL_MECHANISM": "GSSAPI"}, "kafka_sasl_mechanism: Input should be 'PLAIN', "
                                                  "'SCRAM-SHA-256' or 'SCRAM-SHA-512' (from "
                                                  "DETECTOR_KAFKA_SASL_MECHANISM)"),
    ({"DETECTOR_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}, "kafka_sasl_mechanism, kafka_sasl_username, "
                                                        "kafka_sasl_password set but kafka_security_protocol is "
                                                        "PLAINTEXT"),
    ({"DETECTOR_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "DETECTOR_KAFKA_SSL_CAFILE": "/ca.pem"},
     "kafka_ssl_cafile set but kafka_security_protocol is SASL_PLAINTEXT"),
    ({"DETECTOR_KAFKA_SSL_CERTFILE": "/c.pem"}, "kafka_ssl_certfile and kafka_ssl_keyfile go together"),
    ({"DETECTOR_KAFKA_SECURITY_PROTOCOL": "TLS"}, "kafka_security_protocol: Input should be"),
])
def test_inconsistent_settings_are_errors_naming_the_key(monkeypatch: pytest.MonkeyPatch,
                                                        env: dict[str, str | None], problem: str) -> None:
    _set(monkeypatch, SASL)
    for k, v in env.items():
        if v is None:
            monkeypatch.delenv(k)
        else:
            monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert problem in str(err.value) and "pw-5e1f" not in str(err.value)


def test_an_unknown_kafka_key_in_the_file_is_an_error(tmp_path: Path) -> None:
    text = (ROOT / "config" / "detector.yaml").read_text()
    (tmp_path / "detector.yaml").write_text(text.replace("app_id: detector", "app_id: detector\n"
                                                         "kafka_sasl_pasword: x"))
    with pytest.raises(ConfigError, match="kafka_sasl_pasword: unknown key .did you mean kafka_sasl_password"):
        load_settings(tmp_path)


@pytest.mark.parametrize("env, problem", [
    ({"DETECTOR_KAFKA_SASL_PASSWORD_FILE": "/nonexistent/pw"}, "kafka_sasl_password_file: cannot read "
                                                               "/nonexistent/pw: FileNotFoundError"),
    ({"DETECTOR_KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"}, "kafka_ssl_cafile: cannot load /nonexistent/ca.pem"),
])
def test_a_missing_file_is_an_error_naming_its_key(monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                                                   problem: str) -> None:
    _set(monkeypatch, {**SASL, **env})
    if "DETECTOR_KAFKA_SASL_PASSWORD_FILE" in env:
        monkeypatch.delenv("DETECTOR_KAFKA_SASL_PASSWORD")
    with pytest.raises(ConfigError, match=problem):
        build_security(load_settings())


def test_topics_create_takes_a_replication_factor() -> None:
    args = parser().parse_args(["topics", "--create", "--replication-factor", "3"])
    assert args.replication_factor == 3 and args.create
    assert parser().parse_args(["topics"]).replication_factor is None  # the settings' topic_replication


async def test_a_broker_that_does_not_answer_is_not_an_authentication_error() -> None:
    from agents.kafkaclient import KafkaSecurity, check_credentials
    from agents.tools.broker import free_port

    secure = KafkaSecurity("SASL_SSL", "SCRAM-SHA-512", "u", "p", ssl.create_default_context())
    await check_credentials(f"127.0.0.1:{free_port()}", secure, timeout_s=2)  # refused: the worker waits as before


# the only clients that connect without the settings' security: the demo's, which
# talks to the embedded broker it starts (no SASL, no TLS)
EMBEDDED_ONLY = {"agents/tools/demo.py"}


def test_every_kafka_client_of_the_project_takes_the_security_arguments() -> None:
    """Each aiokafka client built in agents/ gets `**<security>.client_kwargs()` (or
    the changelog's config dict, the delivery stage's `common`, the bench's `_kw()`,
    which hold them): a new client without them would
    connect in PLAINTEXT to a SASL_SSL cluster."""
    import ast

    clients = {"AIOKafkaProducer", "AIOKafkaConsumer", "AIOKafkaAdminClient"}
    seen, missing = 0, []
    for path in sorted((ROOT / "agents").rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        for node in ast.walk(ast.parse(path.read_text())):
            name = getattr(node, "func", None)
            if not (isinstance(node, ast.Call) and getattr(name, "id", getattr(name, "attr", None)) in clients):
                continue
            seen += 1
            spread = [ast.unparse(k.value) for k in node.keywords if k.arg is None]
            if rel not in EMBEDDED_ONLY and not any("client_kwargs()" in s or s in ("self._config", "common", "_kw()")
                                                    for s in spread):
                missing.append(f"{rel}:{node.lineno}")
    assert seen >= 15 and not missing, missing
    # `common` (agents/delivery.py) and the changelog's `_config` hold the security arguments
    delivery = (ROOT / "agents" / "delivery.py").read_text()
    assert "fetch_max_wait_ms=200,\n                      **s.kafka.client_kwargs())" in delivery
    shards = (ROOT / "agents" / "shards.py").read_text()
    assert "max_request_size=max_request_size, **security.client_kwargs())" in shards
