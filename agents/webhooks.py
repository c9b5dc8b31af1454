"""Webhook delivery of alerts (event-schema.md section 4): which endpoints get an
alert (filters), in which format (generic, Slack, Alertmanager), how it is signed, and
when a failed attempt is retried, given up (`alerts-dlq`) or held by a circuit breaker.

The delivery stage reads `alerts` with its own consumer group and turns every
(alert revision, matching endpoint) into a pending delivery on the retry topic (keyed
by endpoint). Pending deliveries are read back, held in memory per endpoint until due
(Kafka has no delayed delivery) and committed only once resolved: delivered, sent to
the DLQ, or re-queued as the next attempt. So a worker restart loses nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import hmac
import itertools
import logging
import os
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import orjson
import yaml

from detector.config import ConfigError

log = logging.getLogger("detector.webhooks")

FORMATS = ("generic", "slack", "alertmanager")
SEVERITIES = ("low", "medium", "high", "critical")
_SEV_RANK = {s: i for i, s in enumerate(SEVERITIES)}
_SLACK_ICON = {"low": ":information_source:", "medium": ":warning:", "high": ":rotating_light:", "critical": ":fire:"}

# Outcomes of one attempt
DELIVERED, REJECTED, RETRY = "delivered", "rejected", "retry"


# --- configuration -----------------------------------------------------------------
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

    def accepts(self, alert: Mapping[str, Any]) -> bool:
        if _SEV_RANK.get(str(alert.get("severity")), -1) < _SEV_RANK[self.min_severity]:
            return False
        if self.entity_types and alert.get("entity", {}).get("type") not in self.entity_types:
            return False
        if self.codes and not self.codes.intersection(alert.get("codes", ())):
            return False
        return True


_KEYS = {"name", "url", "secret", "format", "min_severity", "codes", "entity_types", "timeout_s", "max_attempts",
         "concurrency", "backoff_s", "backoff_max_s", "breaker_failures", "breaker_reset_s", "repeat_interval_s"}


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


def parse_endpoints(section: Any, path: Path | str = "<config>", env: Mapping[str, str] | None = None) -> tuple[Endpoint, ...]:
    """The `webhooks` section: a list of endpoint mappings (or a mapping name -> endpoint)."""
    env = os.environ if env is None else env
    path = Path(path)
    if section is None:
        return ()
    if isinstance(section, dict):
        section = [{"name": k, **(v or {})} for k, v in section.items()]
    if not isinstance(section, list):
        raise ConfigError(path, "webhooks", "must be a list of endpoints")
    out: list[Endpoint] = []
    for i, raw in enumerate(section):
        where = f"webhooks[{i}]"
        if not isinstance(raw, dict):
            raise ConfigError(path, where, "must be a mapping")
        unknown = set(raw) - _KEYS
        if unknown:
            raise ConfigError(path, f"{where}.{sorted(unknown)[0]}", "unknown key")
        for k in ("name", "url"):
            if not isinstance(raw.get(k), str) or not raw[k]:
                raise ConfigError(path, f"{where}.{k}", "required string")
        if not raw["url"].startswith(("http://", "https://")):
            raise ConfigError(path, f"{where}.url", "must be an http(s) URL")
        kw: dict[str, Any] = {"name": raw["name"], "url": raw["url"],
                              "secret": _secret(path, f"{where}.secret", raw.get("secret"), env, path.parent)}
        fmt = raw.get("format", "generic")
        if fmt not in FORMATS:
            raise ConfigError(path, f"{where}.format", f"must be one of {', '.join(FORMATS)}")
        kw["format"] = fmt
        sev = raw.get("min_severity", "low")
        if sev not in SEVERITIES:
            raise ConfigError(path, f"{where}.min_severity", f"must be one of {', '.join(SEVERITIES)}")
        kw["min_severity"] = sev
        for k in ("codes", "entity_types"):
            v = raw.get(k) or []
            if not isinstance(v, list):
                raise ConfigError(path, f"{where}.{k}", "must be a list")
            kw[k] = frozenset(str(x) for x in v)
        for k in ("timeout_s", "backoff_s", "backoff_max_s", "breaker_reset_s", "repeat_interval_s"):
            if k in raw:
                if not isinstance(raw[k], (int, float)) or raw[k] <= 0:
                    raise ConfigError(path, f"{where}.{k}", "must be a positive number")
                kw[k] = float(raw[k])
        for k in ("max_attempts", "concurrency", "breaker_failures"):
            if k in raw:
                if not isinstance(raw[k], int) or raw[k] <= 0:
                    raise ConfigError(path, f"{where}.{k}", "must be a positive integer")
                kw[k] = raw[k]
        if any(e.name == kw["name"] for e in out):
            raise ConfigError(path, f"{where}.name", f"duplicate endpoint name {kw['name']!r}")
        out.append(Endpoint(**kw))
    return tuple(out)


def load_endpoints(config: Path | str, env: Mapping[str, str] | None = None) -> tuple[Endpoint, ...]:
    path = Path(config)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read settings file: {exc.strerror}") from None
    return parse_endpoints(data.get("webhooks") if isinstance(data, dict) else None, path, env)


_PATH_KEYS = ("profiles_dir", "devices_dir", "known_stacks", "country_centroids")


def write_config_with_webhooks(base: Path | str, endpoints: list[dict[str, Any]], out: Path | str) -> Path:
    """A copy of a settings file with a `webhooks` section (paths made absolute, so the
    copy can live anywhere): used by `detector demo --webhook` and the tests."""
    base, out = Path(base), Path(out)
    data = yaml.safe_load(base.read_text(encoding="utf-8")) or {}
    for k in _PATH_KEYS:
        if isinstance(data.get(k), str) and not Path(data[k]).is_absolute():
            data[k] = str((base.parent / data[k]).resolve())
    data["webhooks"] = endpoints
    out.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return out


# --- payloads and signing -------------------------------------------------------------
def _parse_iso(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def alert_closed(alert: Mapping[str, Any], now: float) -> bool:
    """An alert is open until the end of its window (wall clock)."""
    try:
        return now >= _parse_iso(alert["window"]["end"])
    except (KeyError, TypeError, ValueError):
        return False


def render(endpoint: Endpoint, alert: Mapping[str, Any], now: float | None = None) -> bytes:
    """The request body for this endpoint. Generic and Slack bodies are a pure function
    of the alert (a re-sent revision has identical content); an Alertmanager body also
    depends on whether the alert's window has closed at `now` (`endsAt`)."""
    if endpoint.format == "slack":
        return orjson.dumps(slack_message(alert))
    if endpoint.format == "alertmanager":
        return orjson.dumps([alertmanager_alert(alert, time.time() if now is None else now)])
    return orjson.dumps(alert)


def slack_message(alert: Mapping[str, Any]) -> dict[str, Any]:
    sev = str(alert.get("severity"))
    ent = alert.get("entity", {})
    title = f"{_SLACK_ICON.get(sev, '')} {sev.upper()} alert: {ent.get('type')} {ent.get('id')} (rev {alert.get('revision')})"
    samples = ", ".join(f"`{r}`" for r in alert.get("sample_request_ids", [])) or "none"
    details = (f"*codes*: {', '.join(alert.get('codes', []))}\n*requests*: {alert.get('count')}  *score*: "
               f"{alert.get('score')}\n*window*: {alert.get('window', {}).get('start')} to "
               f"{alert.get('window', {}).get('end')}\n*sample requests*: {samples}\n*alert id*: `{alert.get('alert_id')}`")
    flags = (alert.get("evidence") or {}).get("flags") or {}
    if flags:
        details += "\n*behaviour*:" + "".join(f"\n- `{c}`: {d}" for c, d in flags.items())
    return {
        "text": f"{title}: {alert.get('summary')}",  # the notification text and the fallback
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*{title}*\n{alert.get('summary')}"}},
            {"type": "section", "text": {"type": "mrkdwn", "text": details}},
        ],
    }


def alertmanager_alert(alert: Mapping[str, Any], now: float) -> dict[str, Any]:
    """One alert of Alertmanager's `POST /api/v2/alerts` body. Labels identify the alert
    (Alertmanager groups and de-duplicates by them), annotations carry the rest."""
    ent = alert.get("entity", {})
    out: dict[str, Any] = {
        "labels": {
            "alertname": "ImpersonatingClient",
            "alert_id": str(alert["alert_id"]),
            "severity": str(alert.get("severity")),
            "entity_type": str(ent.get("type")),
            "entity_id": str(ent.get("id")),
            "rule": str(alert.get("rule", "")),
            "service": "app-impersonation-detector",
        },
        "annotations": {
            "summary": str(alert.get("summary", "")),
            "revision": str(alert.get("revision")),
            "count": str(alert.get("count")),
            "score": str(alert.get("score")),
            "codes": ",".join(alert.get("codes", [])),
            "sample_request_ids": ",".join(alert.get("sample_request_ids", [])),
            **({"behaviour": "; ".join(f"{c}: {d}" for c, d in flags.items())}
               if (flags := (alert.get("evidence") or {}).get("flags")) else {}),
        },
        "startsAt": alert.get("created_at"),
    }
    if alert_closed(alert, now):
        out["endsAt"] = alert["window"]["end"]
    return out


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """`sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">` (event-schema.md section 4)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def headers(endpoint: Endpoint, alert: Mapping[str, Any], body: bytes, timestamp: int) -> dict[str, str]:
    h = {"Content-Type": "application/json", "User-Agent": "app-impersonation-detector",
         "Idempotency-Key": f"{alert['alert_id']}:{alert['revision']}", "X-Detector-Timestamp": str(timestamp)}
    if endpoint.secret:
        h["X-Detector-Signature"] = sign(endpoint.secret, timestamp, body)
    return h


# --- retry policy -------------------------------------------------------------------------
def classify(status: int | None) -> str:
    """None is a network error or timeout. Retried: network errors, 408, 429 and 5xx;
    any other 4xx is the receiver refusing this payload, which a retry will not change."""
    if status is not None and 200 <= status < 300:
        return DELIVERED
    if status is None or status in (408, 429) or status >= 500:
        return RETRY
    return REJECTED


def retry_after_s(value: str | None, now: float) -> float | None:
    """`Retry-After` as delay-seconds or an HTTP date (RFC 9110 section 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError, IndexError):
        return None


def backoff_s(endpoint: Endpoint, attempt: int, rng: random.Random, retry_after: float | None = None) -> float:
    """Delay before attempt `attempt + 1` (attempt counts from 1): exponential with full
    jitter, so many failed deliveries do not retry in lockstep; never shorter than the
    receiver's Retry-After (capped at backoff_max_s)."""
    cap = min(endpoint.backoff_max_s, endpoint.backoff_s * 2 ** (attempt - 1))
    delay = cap / 2 + rng.uniform(0, cap / 2)
    if retry_after is not None:
        delay = max(delay, min(retry_after, endpoint.backoff_max_s))
    return delay


class CircuitBreaker:
    """Closed until `failures` consecutive failures; then open for `reset_s` (nothing is
    attempted: pending deliveries wait without spending attempts), then one probe."""

    def __init__(self, failures: int, reset_s: float, clock: Callable[[], float] = time.monotonic):
        self.failures = failures
        self.reset_s = reset_s
        self.clock = clock
        self.consecutive = 0
        self.open_until = 0.0
        self.probing = False

    def wait_s(self) -> float:
        """0 when an attempt may start now, else how long to wait."""
        if self.consecutive < self.failures:
            return 0.0
        left = self.open_until - self.clock()
        if left > 0 or self.probing:
            return max(left, 0.05)
        self.probing = True  # half-open: one probe at a time
        return 0.0

    def record(self, ok: bool) -> None:
        self.probing = False
        if ok:
            self.consecutive = 0
            return
        self.consecutive += 1
        if self.consecutive >= self.failures:
            self.open_until = self.clock() + self.reset_s

    @property
    def is_open(self) -> bool:
        return self.consecutive >= self.failures


# --- records on the retry topic and the DLQ ---------------------------------------------
def pending_record(endpoint: str, alert: Mapping[str, Any], attempt: int, due: float,
                   last_error: str | None = None) -> bytes:
    """A delivery still to make: `attempt` is the number of the next attempt (from 1)."""
    return orjson.dumps({"schema": "webhook-delivery/1", "endpoint": endpoint, "attempt": attempt, "due": due,
                         "last_error": last_error, "alert": alert})


def dlq_record(endpoint: str, alert: Mapping[str, Any], outcome: str, reason: str, attempts: int, at: float) -> bytes:
    return orjson.dumps({"schema": "alert-dlq/1", "endpoint": endpoint, "outcome": outcome, "reason": reason,
                         "attempts": attempts, "failed_at": _iso(at), "alert": alert})


class OffsetTracker:
    """Per partition: offsets read but not yet resolved. The committable offset is the
    lowest unresolved one (or one past the last read): Kafka commits are a watermark,
    so a delivery that waits never lets a later one's commit skip it."""

    def __init__(self) -> None:
        self.open: dict[int, set[int]] = {}
        self.next: dict[int, int] = {}

    def add(self, partition: int, offset: int) -> None:
        self.open.setdefault(partition, set()).add(offset)
        self.next[partition] = max(self.next.get(partition, 0), offset + 1)

    def done(self, partition: int, offset: int) -> None:
        self.open.get(partition, set()).discard(offset)

    def committable(self) -> dict[int, int]:
        return {p: min(self.open[p]) if self.open.get(p) else n for p, n in self.next.items()}

    def forget(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            self.open.pop(p, None)
            self.next.pop(p, None)


delivery_seq = itertools.count()


@dataclass(order=True)
class Pending:
    due: float
    seq: int
    partition: int = field(compare=False)
    offset: int = field(compare=False)
    generation: int = field(compare=False)
    attempt: int = field(compare=False)
    alert: dict[str, Any] = field(compare=False)


class EndpointQueue:
    """The pending deliveries of one endpoint, ordered by due time."""

    def __init__(self, endpoint: Endpoint, clock: Callable[[], float] = time.time):
        self.endpoint = endpoint
        self.heap: list[Pending] = []
        self.changed = asyncio.Event()
        self.breaker = CircuitBreaker(endpoint.breaker_failures, endpoint.breaker_reset_s)
        self.slots = asyncio.Semaphore(endpoint.concurrency)
        self.clock = clock

    def push(self, p: Pending) -> None:
        heapq.heappush(self.heap, p)
        self.changed.set()

    def __len__(self) -> int:
        return len(self.heap)
