"""Every Kafka topic the service reads or writes, declared once (partitions,
retention, compaction), so operators, the worker and the tests agree on them.
`detector topics [--create]` lists or creates them."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    purpose: str
    retention_ms: int
    compact: bool = False
    partitions: int | None = None  # None: the configured topic_partitions
    configs: dict[str, str] = field(default_factory=dict)

    def kafka_configs(self) -> dict[str, str]:
        cfg = {"retention.ms": str(self.retention_ms), "cleanup.policy": "compact,delete" if self.compact else "delete"}
        cfg.update(self.configs)
        return cfg


CLIENT_REQUESTS = TopicSpec("client-requests", "input: ClientRequest messages from edges", 7 * DAY_MS)
CLIENT_REQUESTS_DLQ = TopicSpec(
    "client-requests-dlq", "input that could not be decoded, with the original and the reason", 14 * DAY_MS,
    configs={"max.message.bytes": "1048576"},
)
VERDICTS = TopicSpec("verdicts", "one Verdict per request", 3 * DAY_MS)
ALERTS = TopicSpec("alerts", "entity alerts, keyed by alert_id; the latest revision survives compaction", 30 * DAY_MS, compact=True)
ENTITY_EVENTS = TopicSpec(
    "detector-entity-events", "internal: compact entity records re-keyed to the entity shards, in batch envelopes", DAY_MS
)
ENTITY_FLAGS = TopicSpec(
    "detector-entity-flags", "internal: current behavioural flags per entity, read by every worker", 2 * DAY_MS,
    compact=True,
)

ALERTS_DLQ = TopicSpec(
    "alerts-dlq", "alert revisions a webhook endpoint rejected or never accepted, with the endpoint and reason",
    30 * DAY_MS,
)
WEBHOOK_RETRY = TopicSpec(
    "detector-webhook-retry", "internal: pending webhook deliveries (next attempt, due time), keyed by endpoint",
    7 * DAY_MS,
)

ALL_TOPICS: tuple[TopicSpec, ...] = (CLIENT_REQUESTS, CLIENT_REQUESTS_DLQ, VERDICTS, ALERTS, ENTITY_EVENTS, ENTITY_FLAGS,
                                     ALERTS_DLQ, WEBHOOK_RETRY)


def partitions_of(spec: TopicSpec, default: int) -> int:
    return spec.partitions or default


async def existing_topics(bootstrap: str) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    await admin.start()
    try:
        metadata = await admin.describe_topics()
        return {t["topic"]: len(t["partitions"]) for t in metadata if not t["topic"].startswith("__")}
    finally:
        await admin.close()


async def create_topics(bootstrap: str, partitions: int, replication: int = 1,
                        specs: tuple[TopicSpec, ...] = ALL_TOPICS) -> list[str]:
    """Create the missing topics; returns the names created."""
    have = await existing_topics(bootstrap)
    missing = [s for s in specs if s.name not in have]
    if not missing:
        return []
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    await admin.start()
    try:
        new = [NewTopic(s.name, partitions_of(s, partitions), replication, topic_configs=s.kafka_configs()) for s in missing]
        try:
            await admin.create_topics(new, timeout_ms=10000)
        except TopicAlreadyExistsError:
            pass
    finally:
        await admin.close()
    return [s.name for s in missing]
