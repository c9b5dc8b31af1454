"""Prometheus metrics of the worker, declared in one place on a registry passed in
(tests use a fresh one). Every label value comes from a closed set fixed at start-up
from config (`LabelSets.from_config`): never an IP, device, account, user agent or a
fingerprint taken from traffic, which an attacker could vary to explode cardinality."""

from __future__ import annotations

import bisect
import itertools
import math
import os
import platform
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import faust
from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client import Counter as PromCounter
from prometheus_client.core import HistogramMetricFamily

from agents.webhooks import ATTEMPT_RESULTS
from detector.behaviour.replay import REUSED_ELSEWHERE
from detector.config import ConfigError, YamlDocument
from detector.config.schema import ROLES
from detector.decode import REJECTION_CODES
from detector.fingerprints.headers import names_fingerprint
from detector.model import Verdict, VerdictLevel

VERDICT_LEVELS = ("clean", "suspicious", "malicious")
# The DLQ counter's reason label is the rejection code (detector.decode.REJECTION_CODES,
# a closed set; internal_error: processing the message failed, not its content).
DLQ_REASONS = tuple(sorted(REJECTION_CODES))
# Where a message's processing failed (detector_internal_errors_total): the ingest
# stage (decode, score, records, encoding) or the entity-shard agent (an envelope).
INTERNAL_ERROR_STAGES = ("ingest", "entity-shard")
# Record kinds the worker writes, each bounded by its topic's limit (read at start:
# min(max.message.bytes, the producer's max_request_size) minus 10%); one over it is
# never sent (detector_oversized_records_total).
RECORD_KINDS = ("verdict", "dlq", "envelope", "alert", "flag", "state")
SEVERITIES = ("low", "medium", "high", "critical")
# The final outcome of one alert revision at one endpoint (docs/contracts.md, Webhook delivery):
# delivered (2xx), rejected (a 4xx other than 429: never retried, sent to alerts-dlq),
# failed (retries exhausted on network errors, 429 or 5xx: sent to alerts-dlq).
WEBHOOK_OUTCOMES = ("delivered", "rejected", "failed")
# Every attempt at an endpoint (ATTEMPT_RESULTS) and its circuit breaker's state
# (BREAKER_STATES, exported as the index: 0 closed, 1 half-open, 2 open): agents/webhooks/retry.py.
WEBHOOK_ATTEMPT_RESULTS = ATTEMPT_RESULTS
FINGERPRINT_KINDS = ("ja4", "headers", "device")
# The consumers whose lag agents/lag.py measures: the ingest stage's, the entity-shard
# agent's (Faust) and the flag feed's (every worker reads the behaviour flags).
CONSUMERS = ("ingest", "entity-shard", "flag-feed")
# In-process state whose size is exported: entities held by the behaviour shards of
# this worker, and behaviour-flagged entities in the broadcast map every worker holds.
STATE_NAMES = ("behaviour_entities", "flagged_entities")
BROKER_OPS = ("poll", "produce", "commit", "metadata")  # detector_broker_errors_total{op}
OTHER = "other"  # any value outside a closed set
NONE = "none"  # the request did not carry (or we could not derive) the value
EMULATOR = "emulator"
EMULATOR_CODE = "device.emulator"
TOP_DEVICE_MODELS = 50

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# event-loop lag: a flush or batch holding the loop; the issue #13 target is 20-50 ms
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _official_header_orders(order: Sequence[str], required: Iterable[str]) -> Iterable[tuple[str, ...]]:
    """Every header-name sequence the official client can send: the profile's order
    with any subset of its optional names left out (2^optional sequences; a profile
    has a handful of optional headers)."""
    req = set(required)
    optional = [n for n in order if n not in req]
    if len(optional) > 10:  # at most 1024 orders per profile, whatever the profile says
        optional = optional[:10]
    for k in range(len(optional) + 1):
        for dropped in itertools.combinations(optional, k):
            drop = set(dropped)
            yield tuple(n for n in order if n not in drop)


@dataclass(frozen=True)
class LabelSets:
    """The closed label sets, derived from configuration once at start-up."""

    profiles: tuple[str, ...]
    app_versions: Mapping[str, frozenset[str]]  # profile -> the versions of its release table
    signal_codes: tuple[str, ...]  # the configured signal weights
    ja4: Mapping[str, str]  # fingerprint -> label: a profile's allowed JA4 (itself) or a known stack's name
    headers: Mapping[str, str]  # header-order fingerprint -> label (the official ones)
    devices: Mapping[str, str]  # Build.MODEL -> label (the most popular catalogue models)
    webhook_endpoints: tuple[str, ...] = ()
    edges: tuple[str, ...] = ()  # the input topic's edge and its allowed_edges

    @classmethod
    def from_config(cls, detection: Any, webhook_endpoints: Iterable[str] = (),
                    top_devices: int = TOP_DEVICE_MODELS, input_edge: str | None = None) -> LabelSets:
        """`input_edge`: the edge the input adapter marks records with (counted too)."""
        profiles = tuple(detection.profiles)
        versions = {name: frozenset(p.versions) for name, p in detection.profiles.items()}
        codes = tuple(sorted(detection.scoring.weights))
        ja4: dict[str, str] = {}
        if detection.known is not None:
            ja4.update(detection.known.ja4)
        headers: dict[str, str] = {}
        for p in detection.profiles.values():
            if p.tls is not None:
                for rule in p.tls.ja4:
                    ja4[rule.value] = rule.value  # the allowlist wins over a known-stack name
            if p.headers is not None:
                for names in _official_header_orders(p.headers.order, p.headers.required):
                    fp = names_fingerprint(names)
                    headers[fp] = fp
        devices: dict[str, str] = {}
        if detection.catalogue is not None:
            ranked = sorted(detection.catalogue.all_models(), key=lambda f: (-f.popularity, f.model))
            devices = {f.model: f.model for f in ranked[:top_devices] if f.popularity > 0}
        edges = tuple(sorted({getattr(detection, "input_edge", "full"), *getattr(detection, "allowed_edges", ()),
                              *((input_edge,) if input_edge else ())}))
        return cls(profiles, versions, codes, ja4, headers, devices, tuple(dict.fromkeys(webhook_endpoints)), edges)

    def version_bucket(self, profile: str | None, version: str | None) -> str:
        if version is None:
            return NONE
        return version if version in self.app_versions.get(profile or "", ()) else OTHER

    def device_label(self, device_fp: str | None) -> str:
        """The label of a verdict's device tuple `manufacturer/model/device`."""
        if device_fp is None:
            return NONE
        parts = device_fp.split("/")
        return self.devices.get(parts[1], OTHER) if len(parts) == 3 else OTHER

    def profile_label(self, profile: str | None) -> str:
        if profile is None:
            return NONE
        return profile if profile in self.app_versions else OTHER


def webhook_endpoint_names(config_path: Path | str) -> tuple[str, ...]:
    """Endpoint names from the settings file's `webhooks` section: a list of mappings
    with a `name`, or a mapping from name to endpoint settings. (The webhook sender
    defines the rest of the section; only the names matter for metric labels.)"""
    try:
        data = YamlDocument(Path(config_path)).data or {}
    except ConfigError:
        return ()
    hooks = data.get("webhooks") if isinstance(data, dict) else None
    if isinstance(hooks, dict):
        hooks = hooks.get("endpoints", hooks)
    if isinstance(hooks, dict):
        return tuple(str(k) for k in hooks)
    if isinstance(hooks, list):
        return tuple(str(h["name"]) for h in hooks if isinstance(h, dict) and h.get("name"))
    return ()


class BatchHistogram:
    """A histogram observed one batch at a time: the bucket counts of a whole batch
    come from bisecting its sorted values, not from one `observe` per value (a lock
    and a bucket search each). Exposed through the collector interface, so it reads
    like any prometheus_client histogram."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry):
        self.name = name
        self.documentation = documentation
        self.upper = tuple(float(b) for b in buckets)
        self._counts = [0] * (len(self.upper) + 1)  # per bucket, the last one is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe(self, value: float) -> None:
        with self._lock:
            self._counts[bisect.bisect_left(self.upper, value)] += 1
            self._sum += value

    def observe_many(self, values: list[float], floor: float = 0.0) -> None:
        """Observe every value (sorted in place); values below `floor` count as `floor`
        (an age from a timestamp in the future: clock skew between the edge and us)."""
        if not values:
            return
        values.sort()
        n = len(values)
        low = bisect.bisect_left(values, floor)
        total = low * floor + math.fsum(values[low:])
        # value <= bound, as prometheus_client buckets them: cumulative counts at once
        cumulative = [bisect.bisect_right(values, b) if b >= floor else 0 for b in self.upper]
        with self._lock:
            prev = 0
            for i, c in enumerate(cumulative):
                self._counts[i] += c - prev
                prev = c
            self._counts[-1] += n - prev
            self._sum += total

    def describe(self) -> list[HistogramMetricFamily]:
        return [HistogramMetricFamily(self.name, self.documentation)]

    def collect(self) -> list[HistogramMetricFamily]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative = list(itertools.accumulate(counts))
        buckets = [(_fmt(b), c) for b, c in zip(self.upper, cumulative)] + [("+Inf", cumulative[-1])]
        return [HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=total)]


def _fmt(b: float) -> str:
    return repr(float(b))


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, labels: LabelSets | None = None,
                 build: Mapping[str, str] | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.messages_in = PromCounter("detector_ingest_messages_total", "Kafka messages read from client-requests",
                                       registry=r)
        self.requests_in = PromCounter("detector_requests_total", "ClientRequests decoded and scored", registry=r)
        self.profile_requests = PromCounter(
            "detector_profile_requests_total",
            "Requests by the client profile they claim and the app version bucket (a version outside the "
            "profile's release table is 'other', no parsable version 'none')",
            ["profile", "app_version"], registry=r,
        )
        self.edge_requests = PromCounter(
            "detector_edge_requests_total", "ClientRequests scored, by the edge profile that judged them "
            "(the input topic's, or the record's allowed `edge`)", ["edge"], registry=r)
        self.verdicts = PromCounter("detector_verdicts_total", "Verdicts produced, by level", ["verdict"], registry=r)
        self.signals = PromCounter("detector_signals_total", "Signals raised, by code", ["code"], registry=r)
        self.fingerprints = PromCounter(
            "detector_fingerprint_requests_total",
            "Requests by fingerprint class: kind ja4 (a profile's allowed JA4, a known stack's name), headers "
            "(an official header order), device (a top catalogue model, 'emulator'); anything else is 'other'",
            ["kind", "fingerprint", "verdict"], registry=r,
        )
        self.dlq = PromCounter("detector_dlq_records_total", "Rejected input elements sent to the DLQ, by reason class",
                               ["reason"], registry=r)
        self.alerts = PromCounter("detector_alerts_total", "Alert revisions produced, by severity", ["severity"],
                                  registry=r)
        self.webhook_deliveries = PromCounter(
            "detector_webhook_deliveries_total",
            "Final outcome of alert revisions sent to each configured webhook endpoint",
            ["endpoint", "outcome"], registry=r,
        )
        self.webhook_attempts = PromCounter(
            "detector_webhook_attempts_total",
            "Attempts at each webhook endpoint by result: delivered, rejected, http_error, timeout, network_error, "
            "address_refused, breaker_open (a due delivery held back by the open circuit breaker, no request made)",
            ["endpoint", "result"], registry=r,
        )
        self.webhook_pending = Gauge(
            "detector_webhook_pending_deliveries",
            "Deliveries this worker holds for each webhook endpoint and has not resolved yet (waiting or in flight)",
            ["endpoint"], registry=r,
        )
        self.webhook_breaker = Gauge(
            "detector_webhook_breaker_state",
            "Circuit breaker of each webhook endpoint on this worker: 0 closed, 1 half-open (the next attempt is a "
            "probe), 2 open (due deliveries are held back)",
            ["endpoint"], registry=r,
        )
        self.latency = BatchHistogram(
            "detector_end_to_end_latency_seconds",
            "From the request's event time (ts) to its verdict being acknowledged by the broker",
            LATENCY_BUCKETS, r,
        )
        self.batch_seconds = Histogram(
            "detector_batch_duration_seconds", "Wall time to decode, score, publish and commit one ingest batch",
            buckets=BATCH_BUCKETS, registry=r,
        )
        self.loop_lag = Histogram(
            "detector_event_loop_lag_seconds",
            "How much later than asked a 100 ms timer of the worker's event loop woke up (the loop was held)",
            buckets=LOOP_LAG_BUCKETS, registry=r,
        )
        self.loop_lag_max = Gauge(
            "detector_event_loop_lag_max_seconds",
            "The largest event-loop lag of the current and the previous 10 s window (agents/looplag.py): read "
            "at least every 10 s, it misses no stall",
            registry=r,
        )
        self.batch_size = Histogram(
            "detector_batch_requests", "Requests per ingest batch",
            buckets=(1, 10, 50, 100, 500, 1000, 2000, 5000, 10000), registry=r,
        )
        self.consumer_lag = Gauge(
            "detector_consumer_lag_messages",
            "Messages behind the partition's end (high watermark minus position), per assigned partition",
            ["consumer", "topic", "partition"], registry=r,
        )
        self.state_entries = Gauge("detector_state_entries", "Entries held in in-process state, by state", ["state"],
                                   registry=r)
        self.state_entities = self.state_entries.labels("behaviour_entities")
        self.flagged_entities = self.state_entries.labels("flagged_entities")
        self.state_writes = PromCounter(
            "detector_state_writes_total",
            "Behaviour state records written to the changelog (changed entities, tombstones, meta records)",
            registry=r,
        )
        self.state_evictions = PromCounter(
            "detector_state_evictions_total",
            "Behaviour entities evicted at max_entities (flagged and alerting ones last, then the least recently seen)",
            registry=r,
        )
        self.shard_lag = Gauge(
            "detector_entity_shard_lag_seconds",
            "Wall clock minus the Kafka timestamp (the ingest stage's publication) of the entity envelope the "
            "shards of this worker processed last: how far behaviour state runs behind the verdicts",
            registry=r,
        )
        self.shard_envelopes = PromCounter(
            "detector_entity_envelopes_total",
            "Entity envelopes the shards of this worker have processed (observed, or dead-lettered)", registry=r,
        )
        self.verdict_revisions = PromCounter(
            "detector_verdict_revisions_total",
            "Revisions of a request's verdict the shards emitted to the verdicts topic (the replaying request of a "
            "reused signature: docs/contracts.md \"Verdict revisions\"), by signal code", ["code"], registry=r,
        )
        self.late_records = PromCounter(
            "detector_late_records_total", "Records older than the allowed lateness, left out of behaviour state",
            registry=r,
        )
        self.out_of_scope = PromCounter(
            "detector_out_of_scope_requests_total",
            "Requests outside every client profile's scope: not judged as the app (verdict clean, assessed "
            "false), no behaviour records",
            registry=r,
        )
        self.future_events = PromCounter(
            "detector_future_events_total",
            "Requests dated more than event_time.max_future_s ahead of the reference clock (the Kafka record's "
            "timestamp, capped at the wall clock): scored statelessly, left out of behaviour state and event time",
            registry=r,
        )
        self.internal_errors = PromCounter(
            "detector_internal_errors_total",
            "Messages or requests whose processing raised, dead-lettered with code internal_error, by stage",
            ["stage"], registry=r,
        )
        self.oversized_records = PromCounter(
            "detector_oversized_records_total",
            "Output records over their topic's record limit, by kind: not sent (a verdict or envelope is "
            "dead-lettered instead; an alert, flag update or state bucket is logged)",
            ["kind"], registry=r,
        )
        self.suppressed_logs = PromCounter(
            "detector_log_lines_suppressed_total",
            "Worker log lines held back by the per-kind rate limit (rejections, internal errors)", registry=r,
        )
        self.flag_delay = Histogram(
            "detector_flag_delay_seconds",
            "From a behaviour flag's publication to this worker applying it (the broadcast delay a verdict may lag by)",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.rebalances = PromCounter("detector_rebalances_total", "Consumer-group rebalances of the Faust app",
                                      registry=r)
        # Broker faults (agents/publish.py, agents/brokerwatch.py): failed interactions by
        # operation, produce retries, outages that ended, topics recreated after the
        # broker lost them, and whether the worker counts the broker as reachable.
        self.broker_errors = PromCounter(
            "detector_broker_errors_total", "Failed broker interactions of the ingest stage, by operation",
            ["op"], registry=r,
        )
        for op in BROKER_OPS:
            self.broker_errors.labels(op)
        self.produce_retries = PromCounter(
            "detector_produce_retries_total", "Ingest batches re-published in full after a produce error", registry=r,
        )
        self.broker_recoveries = PromCounter(
            "detector_broker_recoveries_total", "Broker outages that ended (the broker reachable again)", registry=r,
        )
        self.topics_recreated = PromCounter(
            "detector_topics_recreated_total", "Declared topics recreated after they vanished from the broker",
            registry=r,
        )
        self.broker_log_resets = PromCounter(
            "detector_broker_log_resets_total",
            "Times the broker was found to have lost its log (a vanished topic or committed offsets gone "
            "backwards, e.g. a restarted memory-only broker): consumers restart from the new log's start",
            registry=r,
        )
        self.broker_up = Gauge(
            "detector_broker_up", "1 while the worker counts the broker as reachable (readiness), else 0",
            registry=r,
        )
        self.broker_up.set(1)
        self.build_info = Gauge("detector_build_info", "Build of the running worker (value 1)",
                                ["version", "commit", "faust", "python"], registry=r)
        self.label_sets: LabelSets | None = None
        b = dict(build or {})
        self.version = b.get("version") or _version("app-impersonation-detector")
        # which role this process runs (docs/operations.md "Process roles"), set by
        # build_app: dashboards and rules tell the ingest and the shard processes apart
        self.worker_info = Gauge("detector_worker_info", "The role this worker process runs (value 1)",
                                 ["role", "version"], registry=r)
        self.build_info.labels(self.version,
                               b.get("commit") or os.environ.get("DETECTOR_BUILD_COMMIT") or "unknown",
                               b.get("faust") or _version("faust-streaming"),
                               b.get("python") or platform.python_version()).set(1)
        for level in VERDICT_LEVELS:
            self.verdicts.labels(level)
        for reason in DLQ_REASONS:
            self.dlq.labels(reason)
        for sev in SEVERITIES:
            self.alerts.labels(sev)
        for stage in INTERNAL_ERROR_STAGES:
            self.internal_errors.labels(stage)
        for kind in RECORD_KINDS:
            self.oversized_records.labels(kind)
        self.verdict_revisions.labels(REUSED_ELSEWHERE)
        for state in STATE_NAMES:
            self.state_entries.labels(state)
        if labels is not None:
            self.bind(labels)

    def worker_role(self, role: str) -> None:
        """This process runs `role` (one of detector.config.schema.ROLES): one series."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
        self.worker_info.clear()
        self.worker_info.labels(role, self.version).set(1)

    def bind(self, labels: LabelSets) -> None:
        """Fix the closed label sets and create every labelled series at zero, so
        dashboards and rates see them before the first request."""
        self.label_sets = labels
        for profile in labels.profiles:
            for version in sorted(labels.app_versions[profile]) + [OTHER, NONE]:
                self.profile_requests.labels(profile, version)
        for code in labels.signal_codes:
            self.signals.labels(code)
        for edge in labels.edges:
            self.edge_requests.labels(edge)
        closed = {"ja4": set(labels.ja4.values()) | {OTHER, NONE},
                  "headers": set(labels.headers.values()) | {OTHER, NONE},
                  "device": set(labels.devices.values()) | {EMULATOR, OTHER, NONE}}
        for kind in FINGERPRINT_KINDS:
            for value in sorted(closed[kind]):
                for level in VERDICT_LEVELS:
                    self.fingerprints.labels(kind, value, level)
        for endpoint in labels.webhook_endpoints:
            for outcome in WEBHOOK_OUTCOMES:
                self.webhook_deliveries.labels(endpoint, outcome)
            for result in WEBHOOK_ATTEMPT_RESULTS:
                self.webhook_attempts.labels(endpoint, result)
            self.webhook_pending.labels(endpoint)
            self.webhook_breaker.labels(endpoint)

    def webhook_endpoint(self, name: str) -> str:
        """The label of an endpoint name (for the webhook sender)."""
        ls = self.label_sets
        return name if ls is not None and name in ls.webhook_endpoints else OTHER

    def track_webhook_endpoint(self, name: str, *, pending: Callable[[], float],
                               breaker_state: Callable[[], float]) -> None:
        """Export an endpoint's pending deliveries and breaker state, read at scrape
        time. An endpoint outside the closed set (labels not bound) is not exported:
        several would share the `other` series."""
        label = self.webhook_endpoint(name)
        if label == OTHER:
            return
        self.webhook_pending.labels(label).set_function(pending)
        self.webhook_breaker.labels(label).set_function(breaker_state)

    def track_state(self, state: str, size: Callable[[], float]) -> None:
        """Export the size of an in-process state, read at scrape time."""
        if state not in STATE_NAMES:
            raise ValueError(f"unknown state {state!r}: add it to STATE_NAMES (a closed set)")
        self.state_entries.labels(state).set_function(size)

    def envelope_lag(self, ts: object, now: float) -> None:
        """The shards start on an envelope whose Kafka timestamp is `ts` (seconds, as
        Faust gives it; none or not a time: the gauge stays)."""
        if isinstance(ts, (int, float)) and not isinstance(ts, bool) and ts > 0:
            self.shard_lag.set(max(0.0, now - ts))

    def observe_batch(self, verdicts: Sequence[Verdict], *, messages: int, now: float, seconds: float) -> None:
        """Everything one ingest batch adds: per-batch aggregates (a Counter over the
        few fields the labels come from), then one `inc(n)` per label value."""
        self.messages_in.inc(messages)
        self.requests_in.inc(len(verdicts))
        self.batch_size.observe(len(verdicts))
        self.batch_seconds.observe(seconds)
        if not verdicts:
            return
        self.latency.observe_many([now - v.ts for v in verdicts])
        unassessed = sum(1 for v in verdicts if not v.assessed)
        if unassessed:
            self.out_of_scope.inc(unassessed)
        # Two aggregates: request shapes repeat (a few per batch); device tuples vary
        # more, so they are counted apart and folded with one look-up each.
        shapes = Counter([(v.profile, v.app_version, v.verdict, f.get("ja4"), f.get("headers"))
                          for v in verdicts for f in (v.fingerprints,)])
        devices = Counter([(v.fingerprints.get("device"), v.verdict) for v in verdicts])
        flagged = [v for v in verdicts if v.signals]
        codes: Counter[str] = Counter()
        emulated: Counter[tuple[str | None, VerdictLevel]] = Counter()
        for v in flagged:
            cs = [s.code for s in v.signals]
            codes.update(cs)
            if EMULATOR_CODE in cs:
                emulated[(v.fingerprints.get("device"), v.verdict)] += 1

        ls = self.label_sets
        if ls is None:  # not bound: the unlabelled families only
            levels: Counter[VerdictLevel] = Counter()
            for (_, _, level, _, _), n in shapes.items():
                levels[level] += n
            for level, n in levels.items():
                self.verdicts.labels(level).inc(n)
            return
        requests: Counter[tuple[str, str]] = Counter()
        levels = Counter()
        fps: Counter[tuple[str, str, str]] = Counter()
        for (profile, version, level, ja4, headers), n in shapes.items():
            requests[(ls.profile_label(profile), ls.version_bucket(profile, version))] += n
            levels[level] += n
            fps[("ja4", NONE if ja4 is None else ls.ja4.get(ja4, OTHER), level)] += n
            fps[("headers", NONE if headers is None else ls.headers.get(headers, OTHER), level)] += n
        device_label = ls.device_label
        for (device, level), n in devices.items():
            fps[("device", device_label(device), level)] += n
        for (device, level), n in emulated.items():
            fps[("device", ls.device_label(device), level)] -= n
            fps[("device", EMULATOR, level)] += n
        known_codes = set(ls.signal_codes)
        by_code: Counter[str] = Counter()
        for code, n in codes.items():
            by_code[code if code in known_codes else OTHER] += n

        for (profile, version), n in requests.items():
            self.profile_requests.labels(profile, version).inc(n)
        for level, n in levels.items():
            self.verdicts.labels(level).inc(n)
        for code, n in by_code.items():
            self.signals.labels(code).inc(n)
        for key, n in fps.items():
            if n:
                self.fingerprints.labels(*key).inc(n)


class FaustSensor(faust.Sensor):
    """The one Faust event worth a metric here: rebalances of its consumer group.
    Faust's own Prometheus sensor is not installed: it updates several labelled
    metrics per message and reports latencies in milliseconds (ours are in seconds),
    and what it would add is covered by our own metrics (lag, state writes)."""

    def __init__(self, metrics: Metrics, **kwargs: Any):
        super().__init__(**kwargs)
        self.metrics = metrics

    def on_rebalance_start(self, app: Any) -> dict[str, Any]:
        self.metrics.rebalances.inc()
        return {}


__all__ = ["Metrics", "LabelSets", "BatchHistogram", "FaustSensor", "webhook_endpoint_names"]
