"""Webhook delivery of alerts (docs/contracts.md, Webhook delivery): which endpoints get an
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
import ipaddress
import itertools
import logging
import os
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import orjson
import yaml

from detector.alerts import Alert
from detector.config import ConfigError, YamlDocument, node_line, unknown_key
from detector.config.schema import WebhookEndpoint

log = logging.getLogger("detector.webhooks")

FORMATS = ("generic", "slack", "alertmanager")
SEVERITIES = ("low", "medium", "high", "critical")
_SEV_RANK = {s: i for i, s in enumerate(SEVERITIES)}
_SLACK_ICON = {"low": ":information_source:", "medium": ":warning:", "high": ":rotating_light:", "critical": ":fire:"}

# Outcomes of one attempt
DELIVERED, REJECTED, RETRY = "delivered", "rejected", "retry"

# What one attempt at one endpoint came to (the `result` label of
# detector_webhook_attempts_total, a closed set): delivered (2xx), rejected (another
# 4xx: the endpoint is alive), http_error (408, 429, 5xx, 3xx is `rejected`), timeout,
# network_error (connection refused or reset, TLS, DNS), address_refused (the address
# policy refused every address the endpoint's host resolved to), breaker_open (a due
# delivery held back by the endpoint's open circuit breaker: no request was made).
ATTEMPT_RESULTS = ("delivered", "rejected", "http_error", "timeout", "network_error", "address_refused",
                   "breaker_open")
# The circuit breaker's state (detector_webhook_breaker_state is the index).
BREAKER_STATES = ("closed", "half_open", "open")
ERROR_MAX_CHARS = 200  # an error string in a log line or an alerts-dlq record


# --- outbound address policy (SSRF) ----------------------------------------------------------
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Cloud instance-metadata services: a webhook URL (or a DNS answer) pointing here would
# hand the receiver's response, or a request with our signature, to the metadata API.
# 169.254.169.254 (AWS, GCP's metadata.google.internal, Azure, OpenStack, ...) is also
# link-local; fd00:ec2::254 is AWS's IPv6 endpoint (a unique-local address);
# 100.100.100.200 is Alibaba Cloud's (in the shared 100.64.0.0/10 range).
CLOUD_METADATA = frozenset(ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200",
                                                           "169.254.170.2"))
# Why an address is refused (closed set, in errors and docs).
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")  # "this host on this network": not a destination
REFUSALS = ("cloud_metadata", "link_local", "unspecified", "multicast", "reserved", "private", "invalid")


def parse_address(host: str) -> IPAddress | None:
    """A resolved host string as an address (an IPv6 zone `%eth0` dropped, an
    IPv4-mapped IPv6 address as the IPv4 address it reaches); None if it is not one."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0].strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """Which resolved addresses a webhook may connect to. Refused unless an `allow`
    network covers them: cloud metadata, link-local, unspecified, multicast and
    reserved addresses; with `deny_private`, every address that is not globally
    routable too (loopback, RFC 1918, unique-local, CGNAT). Applied to the addresses
    a host resolves to, at connect time (agents/delivery.py `GuardedConnector`)."""

    allow: tuple[IPNetwork, ...] = ()
    deny_private: bool = False

    def refusal(self, host: str) -> str | None:
        """None when `host` (an IP address string) may be connected to, else why not
        (one of REFUSALS)."""
        ip = parse_address(host)
        if ip is None:
            return "invalid"
        if any(ip.version == net.version and ip in net for net in self.allow):
            return None
        if ip in CLOUD_METADATA:
            return "cloud_metadata"
        if ip.is_link_local:
            return "link_local"
        if ip.is_unspecified:
            return "unspecified"
        if ip.is_multicast:
            return "multicast"
        if isinstance(ip, ipaddress.IPv4Address) and ip in _THIS_NETWORK:
            return "unspecified"
        if ip.is_loopback or not ip.is_reserved:  # (IPv6 loopback ::1 lies in the reserved ::/8)
            return "private" if self.deny_private and not ip.is_global else None
        return "reserved"


class AddressRefused(OSError):
    """Every address the endpoint's host resolved to is refused by its policy."""

    def __init__(self, host: str, refused: Sequence[tuple[str, str]]):
        self.host = host
        self.refused = tuple(refused)
        shown = ", ".join(f"{a} ({why})" for a, why in self.refused[:4])
        super().__init__(f"address_refused: {host} resolves only to refused addresses: {shown}")


def clip(text: str, limit: int = ERROR_MAX_CHARS) -> str:
    """One short printable line: control characters replaced, at most `limit` chars."""
    out = "".join(c if c.isprintable() else " " for c in text)
    return out if len(out) <= limit else out[: limit - 3] + "..."


def status_line(status: int) -> str:
    """`HTTP <status> <standard reason>`: what of a response reaches logs and the
    alerts DLQ. Neither the body nor the receiver's own reason phrase is copied."""
    try:
        return f"HTTP {status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


def attempt_result(status: int | None) -> str:
    """The ATTEMPT_RESULTS value of an answered attempt (None: use the error's kind)."""
    outcome = classify(status)
    if outcome == DELIVERED:
        return "delivered"
    if outcome == REJECTED:
        return "rejected"
    return "http_error"


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
        if self.codes and not self.codes.intersection(alert.codes):
            return False
        return True


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
            kw["allow_addresses"] = _networks(raw["allow_addresses"], lambda reason: err([i, "allow_addresses"], reason))
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


_PATH_KEYS = ("profiles_dir", "devices_dir", "known_stacks", "country_centroids")


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


# --- payloads and signing -------------------------------------------------------------
def _parse_iso(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def alert_closed(alert: Alert, now: float) -> bool:
    """An alert is open until the end of its window (wall clock)."""
    try:
        return now >= _parse_iso(alert.window.end)
    except ValueError:
        return False


def render(endpoint: Endpoint, alert: Alert, now: float | None = None) -> bytes:
    """The request body for this endpoint. Generic and Slack bodies are a pure function
    of the alert (a re-sent revision has identical content); an Alertmanager body also
    depends on whether the alert's window has closed at `now` (`endsAt`)."""
    if endpoint.format == "slack":
        return orjson.dumps(slack_message(alert))
    if endpoint.format == "alertmanager":
        return orjson.dumps([alertmanager_alert(alert, time.time() if now is None else now)])
    return alert.to_json()


def slack_message(alert: Alert) -> dict[str, Any]:
    sev = alert.severity
    ent = alert.entity
    title = f"{_SLACK_ICON.get(sev, '')} {sev.upper()} alert: {ent.type} {ent.id} (rev {alert.revision})"
    samples = ", ".join(f"`{r}`" for r in alert.sample_request_ids) or "none"
    details = (f"*codes*: {', '.join(alert.codes)}\n*requests*: {alert.count}  *score*: "
               f"{alert.score}\n*window*: {alert.window.start} to "
               f"{alert.window.end}\n*sample requests*: {samples}\n*alert id*: `{alert.alert_id}`")
    flags = alert.evidence.flag_details()
    if flags:
        details += "\n*behaviour*:" + "".join(f"\n- `{c}`: {d}" for c, d in flags.items())
    return {
        "text": f"{title}: {alert.summary}",  # the notification text and the fallback
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*{title}*\n{alert.summary}"}},
            {"type": "section", "text": {"type": "mrkdwn", "text": details}},
        ],
    }


def alertmanager_alert(alert: Alert, now: float) -> dict[str, Any]:
    """One alert of Alertmanager's `POST /api/v2/alerts` body. Labels identify the alert
    (Alertmanager groups and de-duplicates by them), annotations carry the rest."""
    ent = alert.entity
    out: dict[str, Any] = {
        "labels": {
            "alertname": "ImpersonatingClient",
            "alert_id": alert.alert_id,
            "severity": alert.severity,
            "entity_type": ent.type,
            "entity_id": ent.id,
            "rule": alert.rule or "",
            "service": "app-impersonation-detector",
        },
        "annotations": {
            "summary": alert.summary,
            "revision": str(alert.revision),
            "count": str(alert.count),
            "score": str(alert.score),
            "codes": ",".join(alert.codes),
            "sample_request_ids": ",".join(alert.sample_request_ids),
            **({"behaviour": "; ".join(f"{c}: {d}" for c, d in flags.items())}
               if (flags := alert.evidence.flag_details()) else {}),
        },
        "startsAt": alert.created_at,
    }
    if alert_closed(alert, now):
        out["endsAt"] = alert.window.end
    return out


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """`sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">` (docs/contracts.md, Webhook delivery)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def headers(endpoint: Endpoint, alert: Alert, body: bytes, timestamp: int) -> dict[str, str]:
    h = {"Content-Type": "application/json", "User-Agent": "app-impersonation-detector",
         "Idempotency-Key": f"{alert.alert_id}:{alert.revision}", "X-Detector-Timestamp": str(timestamp)}
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
    attempted: pending deliveries wait without spending attempts), then half-open: one
    probe, whose success closes it and whose failure opens it again."""

    def __init__(self, failures: int, reset_s: float, clock: Callable[[], float] = time.monotonic):
        self.failures = failures
        self.reset_s = reset_s
        self.clock = clock
        self.consecutive = 0
        self.open_until = 0.0
        self.probing = False

    def wait_s(self) -> float:
        """0 when an attempt may start now (taking the probe when half-open), else how
        long to wait."""
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

    def abandon(self) -> None:
        """An attempt ended without saying whether the endpoint is alive (the address
        policy refused it, or it was dropped): a probe may be taken again."""
        self.probing = False

    def reset(self) -> None:
        """Forget the history (this worker no longer delivers to the endpoint)."""
        self.consecutive, self.open_until, self.probing = 0, 0.0, False

    @property
    def is_open(self) -> bool:
        return self.consecutive >= self.failures

    @property
    def state(self) -> str:
        """closed, half_open (a probe runs or the next attempt is one) or open."""
        if self.consecutive < self.failures:
            return "closed"
        if self.probing or self.clock() >= self.open_until:
            return "half_open"
        return "open"

    def open_for_s(self) -> float:
        """How long the circuit stays open (0 unless `state` is open)."""
        return max(0.0, self.open_until - self.clock()) if self.is_open else 0.0


# --- records on the retry topic and the DLQ ---------------------------------------------
def pending_record(endpoint: str, alert: Alert, attempt: int, due: float,
                   last_error: str | None = None) -> bytes:
    """A delivery still to make: `attempt` is the number of the next attempt (from 1)."""
    return orjson.dumps({"schema": "webhook-delivery/1", "endpoint": endpoint, "attempt": attempt, "due": due,
                         "last_error": last_error, "alert": orjson.Fragment(alert.to_json())})


def dlq_record(endpoint: str, alert: Alert, outcome: str, reason: str, attempts: int, at: float) -> bytes:
    return orjson.dumps({"schema": "alert-dlq/1", "endpoint": endpoint, "outcome": outcome, "reason": reason,
                         "attempts": attempts, "failed_at": _iso(at), "alert": orjson.Fragment(alert.to_json())})


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
    alert: Alert = field(compare=False)


class EndpointQueue:
    """The pending deliveries of one endpoint, ordered by due time (`clock`: wall time,
    like `Pending.due`; the breaker runs on `monotonic`)."""

    def __init__(self, endpoint: Endpoint, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic):
        self.endpoint = endpoint
        self.heap: list[Pending] = []
        self.changed = asyncio.Event()
        self.breaker = CircuitBreaker(endpoint.breaker_failures, endpoint.breaker_reset_s, monotonic)
        self.slots = asyncio.Semaphore(endpoint.concurrency)
        self.clock = clock
        self.inflight = 0  # attempts running now

    def push(self, p: Pending) -> None:
        heapq.heappush(self.heap, p)
        self.changed.set()

    def __len__(self) -> int:
        return len(self.heap)

    @property
    def pending(self) -> int:
        """Deliveries not resolved yet: waiting, or being attempted."""
        return len(self.heap) + self.inflight

    def hold_back(self) -> int:
        """While the circuit is open, every delivery that has come due is held back
        until the breaker's next probe (no attempt is spent on it) and counted: the
        return value, exported as `breaker_open` attempts, so a dead endpoint shows
        within one `breaker_reset_s` however many deliveries wait for it."""
        if self.breaker.state != "open":
            return 0
        now = self.clock()
        held: list[Pending] = []
        while self.heap and self.heap[0].due <= now:
            held.append(heapq.heappop(self.heap))
        until = now + self.breaker.open_for_s()
        for p in held:
            p.due, p.seq = until, next(delivery_seq)
            heapq.heappush(self.heap, p)
        return len(held)
