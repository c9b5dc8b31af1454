"""How every Kafka client of the project connects (docs/operations.md "Production
Kafka"): the security protocol, SASL (PLAIN, SCRAM-SHA-256/512) and TLS of the
settings (`kafka_security_protocol` and the `kafka_sasl_*` / `kafka_ssl_*` keys),
resolved once per process into a `KafkaSecurity`: secrets read from their files, one
`ssl.SSLContext` built. The worker's clients (the ingest stage, Faust, the shards'
changelog producer, webhook delivery, the broker link and the admin calls of
agents/topics.py) and the tools take their keyword arguments from it. Nothing here
logs or shows a secret: `describe()` names the protocol, mechanism and user only."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detector.config import ConfigError

if TYPE_CHECKING:
    from faust.types.auth import CredentialsT

    from agents.settings import Settings


@dataclass(frozen=True, slots=True)
class KafkaSecurity:
    """The resolved connection security of the Kafka clients. PLAINTEXT by default."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False)

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of every aiokafka client (producer, consumer, admin)."""
        kw: dict[str, Any] = {"security_protocol": self.protocol}
        if self.ssl_context is not None:
            kw["ssl_context"] = self.ssl_context
        if self.sasl_mechanism is not None:
            kw.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.username,
                      sasl_plain_password=self.password)
        return kw

    def faust_credentials(self) -> CredentialsT | None:
        """Faust's `broker_credentials` (it passes them to its aiokafka clients)."""
        from faust.auth import SASLCredentials, SSLCredentials

        if self.sasl_mechanism is not None:
            return SASLCredentials(username=self.username, password=self.password, ssl_context=self.ssl_context,
                                   mechanism=self.sasl_mechanism)
        if self.ssl_context is not None:
            return SSLCredentials(self.ssl_context)
        return None

    def describe(self) -> str:
        """For logs and errors: no secret."""
        if self.sasl_mechanism is not None:
            return f"{self.protocol} ({self.sasl_mechanism}, user {self.username!r})"
        return self.protocol


PLAINTEXT = KafkaSecurity()


def _path(settings: Settings, value: str) -> Path:
    """A file named by the settings: relative paths are taken from the settings
    file's folder (like every path of the file)."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else Path(settings.config).parent / path


def _read_secret(settings: Settings, key: str) -> str:
    value = getattr(settings, key)
    try:
        text = _path(settings, value).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(settings.config, key, f"cannot read {value}: {type(exc).__name__}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    text = text.rstrip("\r\n")
    if not text:
        raise ConfigError(settings.config, key, f"{value} is empty")
    return text


def _secret(settings: Settings, name: str) -> str:
    """kafka_sasl_<name>, given as text or as a file (the schema requires one)."""
    if getattr(settings, f"kafka_sasl_{name}_file") is not None:
        return _read_secret(settings, f"kafka_sasl_{name}_file")
    value = getattr(settings, f"kafka_sasl_{name}")
    text = value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)
    if not text:
        raise ConfigError(settings.config, f"kafka_sasl_{name}", "is empty")
    return text


def _ssl_context(settings: Settings) -> ssl.SSLContext:
    cafile = settings.kafka_ssl_cafile
    try:
        ctx = ssl.create_default_context(cafile=str(_path(settings, cafile)) if cafile else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(settings.config, "kafka_ssl_cafile", f"cannot load {cafile}: {exc}") from None
    ctx.check_hostname = settings.kafka_ssl_check_hostname
    if not settings.kafka_ssl_check_hostname:
        # the certificate is still verified against the CA; only its name is not
        ctx.verify_mode = ssl.CERT_REQUIRED
    if settings.kafka_ssl_certfile and settings.kafka_ssl_keyfile:
        try:
            ctx.load_cert_chain(str(_path(settings, settings.kafka_ssl_certfile)),
                                str(_path(settings, settings.kafka_ssl_keyfile)))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(settings.config, "kafka_ssl_certfile",
                              f"cannot load {settings.kafka_ssl_certfile} with {settings.kafka_ssl_keyfile}: "
                              f"{exc}") from None
    return ctx


def build_security(settings: Settings) -> KafkaSecurity:
    """The settings' connection security; a file that cannot be read is a ConfigError
    naming the key. `Settings.kafka` calls this once per settings object."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return PLAINTEXT
    ctx = _ssl_context(settings) if protocol.endswith("SSL") else None
    if protocol.startswith("SASL_"):
        return KafkaSecurity(protocol, settings.kafka_sasl_mechanism, _secret(settings, "username"),
                             _secret(settings, "password"), ctx)
    return KafkaSecurity(protocol, None, None, None, ctx)


class KafkaAuthError(RuntimeError):
    """The broker refused this client's credentials or TLS: waiting will not help."""


async def check_credentials(bootstrap: str, security: KafkaSecurity, timeout_s: float = 15.0) -> None:
    """Connect once to a bootstrap broker with `security` (TLS handshake, SASL
    authentication, an ApiVersions round trip). Raises KafkaAuthError when the broker
    refused the credentials or the TLS handshake failed (a wrong password, an unknown
    CA, a host name mismatch); a broker that does not answer is not an error here (the
    worker waits for it as it does without security)."""
    if security is PLAINTEXT:
        return
    from aiokafka.conn import create_conn
    from aiokafka.errors import KafkaError, KafkaTimeoutError

    problems: list[str] = []
    for hostport in [h.strip() for h in bootstrap.split(",") if h.strip()]:
        host, _, port = hostport.rpartition(":")
        host = host.strip("[]") or hostport
        try:
            conn = await asyncio.wait_for(create_conn(host, int(port or 9092), client_id="detector-auth-check",
                                                      request_timeout_ms=int(timeout_s * 1000),
                                                      **security.client_kwargs()), timeout_s)
        except ssl.SSLError as exc:
            problems.append(f"{hostport}: TLS handshake failed: {exc.reason or exc}")
            continue
        except (TimeoutError, KafkaTimeoutError, ConnectionError, OSError):
            return  # not answering (or not yet): the worker's own retries handle that
        except KafkaError as exc:
            problems.append(f"{hostport}: {type(exc).__name__}: {exc}")
            continue
        conn.close()
        return
    if problems:
        raise KafkaAuthError(f"Kafka refused the connection ({security.describe()}): " + "; ".join(problems))
