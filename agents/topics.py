"""Every Kafka topic the service reads or writes, declared once (partitions,
retention, compaction), so operators, the worker and the tests agree on them.
`detector topics [--create]` lists or creates them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError

from agents.kafkaclient import PLAINTEXT, KafkaSecurity

log = logging.getLogger("detector.topics")

DAY_MS = 24 * 3600 * 1000
# Apache Kafka's broker default `message.max.bytes` (1 MiB + 12): the limit of a topic
# that does not override `max.message.bytes`, and what we assume when the broker does
# not answer (the embedded broker returns only the configs a topic was created with,
# and closes the connection on a broker-config request).
KAFKA_DEFAULT_MAX_MESSAGE_BYTES = 1048588
# Every record the worker writes stays this fraction under its limit: room for the
# record batch's framing (about 70 bytes) and for a limit lowered after start.
RECORD_LIMIT_FACTOR = 0.9


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
ALERTS = TopicSpec(
    "alerts", "entity alerts, keyed by alert_id; the latest revision survives compaction", 30 * DAY_MS, compact=True
)
ENTITY_EVENTS = TopicSpec(
    "detector-entity-events", "internal: compact entity records re-keyed to the entity shards, in batch envelopes",
    DAY_MS,
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

ALL_TOPICS: tuple[TopicSpec, ...] = (CLIENT_REQUESTS, CLIENT_REQUESTS_DLQ, VERDICTS, ALERTS, ENTITY_EVENTS,
                                     ENTITY_FLAGS, ALERTS_DLQ, WEBHOOK_RETRY)


def partitions_of(spec: TopicSpec, default: int) -> int:
    return spec.partitions or default


async def existing_topics(bootstrap: str, security: KafkaSecurity = PLAINTEXT) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000, **security.client_kwargs())
    await admin.start()
    try:
        metadata = await admin.describe_topics()
        return {t["topic"]: len(t["partitions"]) for t in metadata if not t["topic"].startswith("__")}
    finally:
        await admin.close()


async def create_topics(bootstrap: str, partitions: int, replication: int = 1,
                        specs: tuple[TopicSpec, ...] = ALL_TOPICS, security: KafkaSecurity = PLAINTEXT) -> list[str]:
    """Create the missing topics with `replication` replicas each; returns the names
    created (docs/operations.md "Topics": 1 for development, 3 in production)."""
    have = await existing_topics(bootstrap, security)
    missing = [s for s in specs if s.name not in have]
    if not missing:
        return []
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000, **security.client_kwargs())
    await admin.start()
    try:
        new = [NewTopic(s.name, partitions_of(s, partitions), replication, topic_configs=s.kafka_configs())
               for s in missing]
        try:
            await admin.create_topics(new, timeout_ms=10000)
        except TopicAlreadyExistsError:
            pass
    finally:
        await admin.close()
    return [s.name for s in missing]


# --- partition layout -----------------------------------------------------------------
class TopicLayoutError(RuntimeError):
    """The broker's topics do not have the partitions the settings say: the entity
    shards cannot work on them (a configuration error, not a broker fault)."""


def layout_problems(have: Mapping[str, int], partitions: int, app_id: str) -> list[str]:
    """What is wrong with the partitions of the topics the entity shards partition by
    (`have`: partitions per existing topic): detector-entity-events must have exactly
    the partitions the ingest shards by (topic_partitions, or its own fixed count),
    and the behaviour-state changelog, if it exists, as many (Faust's table is
    co-partitioned with its source). A topic not there yet is no problem (it is
    created with the right count)."""
    want = partitions_of(ENTITY_EVENTS, partitions)
    out: list[str] = []
    for name in (ENTITY_EVENTS.name, f"{app_id}-behaviour-state-changelog"):
        n = have.get(name)
        if n is not None and n != want:
            out.append(f"topic {name} has {n} partitions, the settings say {want} (topic_partitions, "
                       f"DETECTOR_TOPIC_PARTITIONS): set topic_partitions to {n} on every worker, or recreate "
                       f"the topic with {want} (docs/operations.md \"Topics\")")
    return out


async def check_layout(bootstrap: str, partitions: int, app_id: str, security: KafkaSecurity = PLAINTEXT,
                       timeout_s: float = 15.0) -> list[str]:
    """layout_problems of the broker's topics; [] when the broker does not answer in
    `timeout_s` (the worker waits for it, and checks again as it produces)."""
    try:
        have = await asyncio.wait_for(existing_topics(bootstrap, security), timeout_s)
    except Exception as exc:  # noqa: BLE001 - unreachable now: not a layout problem
        log.info("topic layout not checked at start (%s)", type(exc).__name__)
        return []
    return layout_problems(have, partitions, app_id)


# --- record size limits --------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TopicLimits:
    """The `max.message.bytes` of the topics the worker writes, read once at start
    (`read_topic_limits`); `record_limit` gives the largest record a producer may send
    to one of them."""

    max_message_bytes: Mapping[str, int] = field(default_factory=dict)
    default: int = KAFKA_DEFAULT_MAX_MESSAGE_BYTES  # a topic not read (absent at start, no answer)

    def topic_max(self, topic: str) -> int:
        return self.max_message_bytes.get(topic, self.default)

    def record_limit(self, topic: str, producer_max_request_size: int) -> int:
        """min(the topic's max.message.bytes, the producer's max_request_size) minus 10%."""
        return record_limit(self.topic_max(topic), producer_max_request_size)


def record_limit(topic_max_message_bytes: int, producer_max_request_size: int) -> int:
    return int(min(topic_max_message_bytes, producer_max_request_size) * RECORD_LIMIT_FACTOR)


def _config_value(resource: Any, name: str) -> str | None:
    for entry in resource.config_entries if hasattr(resource, "config_entries") else resource[4]:
        if hasattr(entry, "config_names"):
            key, value = entry.config_names, entry.config_value
        else:
            key, value = entry[0], entry[1]
        if key == name:
            return str(value) if value is not None else None
    return None


def _positive_int(value: str | None) -> int | None:
    try:
        n = int(value) if value is not None else 0
    except ValueError:
        return None
    return n if n > 0 else None


async def read_topic_limits(bootstrap: str, topics: Iterable[str], timeout_s: float = 10.0,
                            security: KafkaSecurity = PLAINTEXT) -> TopicLimits:
    """Each topic's `max.message.bytes` (DescribeConfigs). A topic that does not exist
    yet, or whose answer lacks the key, gets the broker's `message.max.bytes` (what an
    auto-created topic would get), else Kafka's default. Never raises: a broker that
    cannot be asked leaves every topic at the default (logged)."""
    names = list(dict.fromkeys(topics))
    found: dict[str, int] = {}
    default = KAFKA_DEFAULT_MAX_MESSAGE_BYTES
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000),
                                **security.client_kwargs())
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        try:
            responses = await asyncio.wait_for(admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, n) for n in names]), timeout_s)
            for resp in responses:
                for res in resp.resources:
                    error_code, name = res[0], res[3]
                    value = _positive_int(_config_value(res, "max.message.bytes")) if error_code == 0 else None
                    if value is not None:
                        found[str(name)] = value
            missing = [n for n in names if n not in found]
            if missing:
                broker_default = await _broker_max_message_bytes(admin, timeout_s)
                if broker_default is not None:
                    default = broker_default
        finally:
            await admin.close()
    except Exception as exc:  # noqa: BLE001 - limits fall back to the default, the worker still starts
        log.warning("could not read the topics' max.message.bytes (%s: %s); assuming %d bytes",
                    type(exc).__name__, str(exc)[:200], default)
    return TopicLimits(found, default)


async def _broker_max_message_bytes(admin: AIOKafkaAdminClient, timeout_s: float) -> int | None:
    """The broker's `message.max.bytes`, or None when it does not answer (the embedded
    broker drops the connection on this request)."""
    try:
        cluster = await asyncio.wait_for(admin.describe_cluster(), timeout_s)
        brokers = cluster.get("brokers") or []
        if not brokers:
            return None
        node = str(brokers[0]["node_id"])
        responses = await asyncio.wait_for(admin.describe_configs(
            [ConfigResource(ConfigResourceType.BROKER, node, {"message.max.bytes": None})]), timeout_s)
        for resp in responses:
            for res in resp.resources:
                if res[0] == 0:
                    value = _positive_int(_config_value(res, "message.max.bytes"))
                    if value is not None:
                        return value
    except Exception as exc:  # noqa: BLE001 - an optional refinement of the default
        log.debug("broker config not readable (%s: %s)", type(exc).__name__, str(exc)[:200])
    return None
