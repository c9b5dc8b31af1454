"""Webhook delivery of alerts (docs/contracts.md, Webhook delivery): which endpoints get an
alert (filters), in which format (generic, Slack, Alertmanager), how it is signed, and
when a failed attempt is retried, given up (`alerts-dlq`) or held by a circuit breaker.

The delivery stage reads `alerts` with its own consumer group and turns every
(alert revision, matching endpoint) into a pending delivery on the retry topic (keyed
by endpoint). Pending deliveries are read back, held in memory per endpoint until due
(Kafka has no delayed delivery) and committed only once resolved: delivered, sent to
the DLQ, or re-queued as the next attempt. So a worker restart loses nothing.

address.py is the outbound address policy, config.py the endpoints from the settings
file, payloads.py the bodies and their signed headers, retry.py the outcome of an attempt,
its backoff and the circuit breaker, pending.py the pending deliveries, their records and
queues. The delivery stage itself is agents/delivery.py.
"""

from agents.webhooks.address import (
    CLOUD_METADATA,
    REFUSALS,
    AddressPolicy,
    AddressRefused,
    IPAddress,
    IPNetwork,
    parse_address,
)
from agents.webhooks.config import (
    FORMATS,
    SEVERITIES,
    Endpoint,
    load_endpoints,
    parse_endpoints,
    write_config_with_webhooks,
)
from agents.webhooks.payloads import alert_closed, alertmanager_alert, headers, render, sign, slack_message
from agents.webhooks.pending import EndpointQueue, OffsetTracker, Pending, delivery_seq, dlq_record, pending_record
from agents.webhooks.retry import (
    ATTEMPT_RESULTS,
    BREAKER_STATES,
    DELIVERED,
    ERROR_MAX_CHARS,
    REJECTED,
    RETRY,
    CircuitBreaker,
    attempt_result,
    backoff_s,
    classify,
    clip,
    retry_after_s,
    status_line,
)

__all__ = [
    "ATTEMPT_RESULTS", "AddressPolicy", "AddressRefused", "BREAKER_STATES", "CLOUD_METADATA", "CircuitBreaker",
    "DELIVERED", "ERROR_MAX_CHARS", "Endpoint", "EndpointQueue", "FORMATS", "IPAddress", "IPNetwork",
    "OffsetTracker", "Pending", "REFUSALS", "REJECTED", "RETRY", "SEVERITIES", "alert_closed", "alertmanager_alert",
    "attempt_result", "backoff_s", "classify", "clip", "delivery_seq", "dlq_record", "headers", "load_endpoints",
    "parse_address", "parse_endpoints", "pending_record", "render", "retry_after_s", "sign", "slack_message",
    "status_line", "write_config_with_webhooks",
]
