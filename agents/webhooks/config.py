"""The `webhooks` section of the settings file: each endpoint checked against its schema
(detector.config.schema, WebhookEndpoint) into an Endpoint, its secret read from the
environment or a file; which alerts an endpoint accepts."""

from __future__ import annotations

import functools
import ipaddress
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agents.webhooks.address import AddressPolicy, IPNetwork
from detector.alerts import Alert
from detector.config import ConfigError, YamlDocument, node_line, unknown_key
from detector.config.schema import WebhookEndpoint

FORMATS = ("generic", "slack", "alertmanager")
SEVERITIES = ("low", "medium", "high", "critical")
_SEV_RANK = {s: i for i, s in enumerate(SEVERITIES)}


@dataclass(frozen=True)
class Endpoint:
    name: str
    url: str
    secret: str = field(default="", repr=False)
    format: str = "generic"
    min_severity: str = "low"
    codes: frozenset[str] = frozenset()  # empty: any; else the alert must carry one of them
    entity_types: frozenset[str] = frozenset()  # empty: any
    timeout_s: float = 10.0
    max_attempts: int = 10
    concurrency: int = 4
    backoff_s: float = 1.0  # first retry delay; doubles per attempt, full jitter
    backoff_max_s: float = 300.0
    breaker_failures: int = 5  # consecutive failures that open the circuit
    breaker_reset_s: float = 30.0  # open circuit: wait this long before one probe
    repeat_interval_s: float = 60.0  # alertmanager: re-push open alerts this often
    allow_addresses: tuple[IPNetwork, ...] = ()  # networks allowed despite the address policy
    deny_private: bool = False  # also refuse loopback and private addresses

    @property
    def address_policy(self) -> AddressPolicy:
        return AddressPolicy(self.allow_addresses, self.deny_private)

    def accepts(self, alert: Alert) -> bool:
        if _SEV_RANK.get(alert.severity, -1) < _SEV_RANK[self.min_severity]:
            return False
        if self.entity_types and alert.entity.type not in self.entity_types:
            return False
        return not self.codes or not self.codes.isdisjoint(alert.codes)


_KEYS = frozenset(WebhookEndpoint.model_fields)  # the schema of one endpoint (detector.config.schema)


def _networks(value: Any, fail: Callable[[str], ConfigError]) -> tuple[IPNetwork, ...]:
    if not isinstance(value, list):
        raise fail("must be a list of IP addresses or networks (CIDR)")
    out: list[IPNetwork] = []
    for item in value:
        if not isinstance(item, str):
            raise fail(f"{item!r} is not an IP address or network (CIDR) string")
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise fail(f"{item!r} is not an IP address or network (CIDR)") from None
    return tuple(out)


def _secret(path: Path, key: str, spec: Any, env: Mapping[str, str], base: Path) -> str:
    """Secrets come from the environment or a file, never from the settings file."""
    if spec is None:
        return ""
    if isinstance(spec, dict) and set(spec) == {"env"}:
        value = env.get(str(spec["env"]))
        if not value:
            raise ConfigError(path, key, f"environment variable {spec['env']} is not set")
        return value
    if isinstance(spec, dict) and set(spec) == {"file"}:
        p = Path(str(spec["file"]))
        p = p if p.is_absolute() else base / p
        try:
            return p.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(path, key, f"cannot read secret file {p}: {exc.strerror}") from None
    raise ConfigError(path, key, "must be {env: VARIABLE} or {file: PATH} (secrets are never written in config)")


def parse_endpoints(section: Any, path: Path | str = "<config>", env: Mapping[str, str] | None = None,
                    node: Any = None) -> tuple[Endpoint, ...]:
    """The `webhooks` section: a list of endpoint mappings (or a mapping name -> endpoint).
    `node` is the settings file's composed YAML (errors then name the line)."""
    env = os.environ if env is None else env
    path = Path(path)
    if section is None:
        return ()

    def err(parts: Sequence[str | int], reason: str) -> ConfigError:
        key = "webhooks" + "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in parts)
        return ConfigError(path, key, reason, node_line(node, ["webhooks", *parts]) if node is not None else None)

    items: list[tuple[str | int, Any]]
    if isinstance(section, dict):
        items = [(str(k), {"name": k, **v} if isinstance(v, dict) else {"name": k} if v is None else v)
                 for k, v in section.items()]
    elif isinstance(section, list):
        items = list(enumerate(section))
    else:
        raise err([], "must be a list of endpoints")
    out: list[Endpoint] = []
    for i, raw in items:
        if not isinstance(raw, dict):
            raise err([i], "must be a mapping")
        unknown = set(raw) - _KEYS
        if unknown:
            raise err([i, sorted(unknown)[0]], unknown_key(sorted(unknown)[0], _KEYS))
        for k in ("name", "url"):
            if not isinstance(raw.get(k), str) or not raw[k]:
                raise err([i, k], "required string")
        if not raw["url"].startswith(("http://", "https://")):
            raise err([i, "url"], "must be an http(s) URL")
        try:
            secret = _secret(path, "", raw.get("secret"), env, path.parent)
        except ConfigError as exc:
            raise err([i, "secret"], exc.reason) from None
        kw: dict[str, Any] = {"name": raw["name"], "url": raw["url"], "secret": secret}
        fmt = raw.get("format", "generic")
        if fmt not in FORMATS:
            raise err([i, "format"], f"must be one of {', '.join(FORMATS)}")
        kw["format"] = fmt
        sev = raw.get("min_severity", "low")
        if sev not in SEVERITIES:
            raise err([i, "min_severity"], f"must be one of {', '.join(SEVERITIES)}")
        kw["min_severity"] = sev
        for k in ("codes", "entity_types"):
            v = raw.get(k) or []
            if not isinstance(v, list):
                raise err([i, k], "must be a list")
            kw[k] = frozenset(str(x) for x in v)
        for k in ("timeout_s", "backoff_s", "backoff_max_s", "breaker_reset_s", "repeat_interval_s"):
            if k in raw:
                if isinstance(raw[k], bool) or not isinstance(raw[k], (int, float)) or not 0 < raw[k] < float("inf"):
                    raise err([i, k], "must be a positive number")
                kw[k] = float(raw[k])
        for k in ("max_attempts", "concurrency", "breaker_failures"):
            if k in raw:
                if isinstance(raw[k], bool) or not isinstance(raw[k], int) or raw[k] <= 0:
                    raise err([i, k], "must be a positive integer")
                kw[k] = raw[k]
        if "allow_addresses" in raw:
            kw["allow_addresses"] = _networks(raw["allow_addresses"], functools.partial(err, [i, "allow_addresses"]))
        if "deny_private" in raw:
            if not isinstance(raw["deny_private"], bool):
                raise err([i, "deny_private"], "must be true or false")
            kw["deny_private"] = raw["deny_private"]
        if any(e.name == kw["name"] for e in out):
            raise err([i, "name"], f"duplicate endpoint name {kw['name']!r}")
        out.append(Endpoint(**kw))
    return tuple(out)


def load_endpoints(config: Path | str, env: Mapping[str, str] | None = None) -> tuple[Endpoint, ...]:
    doc = YamlDocument(Path(config))
    data = doc.data if isinstance(doc.data, dict) else {}
    return parse_endpoints(data.get("webhooks"), doc.path, env, doc.node)


_PATH_KEYS = ("profiles_dir", "devices_dir", "known_stacks", "country_centroids", "edges_dir")


def write_config_with_webhooks(base: Path | str, endpoints: list[dict[str, Any]], out: Path | str) -> Path:
    """A copy of a settings file with a `webhooks` section (paths made absolute, so the
    copy can live anywhere): used by `detector demo --webhook` and the tests."""
    base, out = Path(base), Path(out)
    data = YamlDocument(base).data or {}
    for k in _PATH_KEYS:
        if isinstance(data.get(k), str) and not Path(data[k]).is_absolute():
            data[k] = str((base.parent / data[k]).resolve())
    data["webhooks"] = endpoints
    out.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return out
