"""Prometheus metrics of the worker, declared in one place on a registry passed in
(tests use a fresh one). Labels come from closed sets only: never an IP, device,
account or fingerprint."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

VERDICT_LEVELS = ("clean", "suspicious", "malicious")
DLQ_REASONS = ("invalid_json", "invalid_utf8", "missing_field", "invalid_field", "oversized", "other")
SEVERITIES = ("low", "medium", "high", "critical")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.messages_in = Counter("detector_ingest_messages_total", "Kafka messages read from client-requests", registry=r)
        self.requests_in = Counter("detector_requests_total", "ClientRequests decoded and scored", registry=r)
        self.verdicts = Counter("detector_verdicts_total", "Verdicts produced, by level", ["verdict"], registry=r)
        self.dlq = Counter("detector_dlq_records_total", "Rejected input elements sent to the DLQ, by reason class", ["reason"], registry=r)
        self.alerts = Counter("detector_alerts_total", "Alert revisions produced, by severity", ["severity"], registry=r)
        self.latency = Histogram(
            "detector_end_to_end_latency_seconds", "From the request's event time (ts) to its verdict being acknowledged",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.batch_seconds = Histogram(
            "detector_batch_duration_seconds", "Wall time to decode, score and publish one ingest batch",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            "detector_batch_requests", "Requests per ingest batch", buckets=(1, 10, 50, 100, 500, 1000, 2000, 5000, 10000), registry=r,
        )
        self.alert_state = Gauge("detector_alert_open_windows", "Open (entity, window) aggregations in the alert policy", registry=r)
        for level in VERDICT_LEVELS:
            self.verdicts.labels(level)
        for reason in DLQ_REASONS:
            self.dlq.labels(reason)
        for sev in SEVERITIES:
            self.alerts.labels(sev)
