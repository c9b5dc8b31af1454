"""What every worker process needs from the broker, whatever its role (agents/app.py):
the output topics' `max.message.bytes`, read once at start (the record limits of
agents/records.py), and the broker watch (agents/brokerwatch.py: the metadata probe
behind readiness and `detector_broker_up`, recreation of vanished topics, and
`on_log_lost` when a memory-only broker restarted). The ingest stage and the entity
shards are told through callbacks; the link has its own small client, so a shard
process without an ingest consumer watches the broker the same way."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition
from mode import Service

from agents.brokerwatch import BrokerWatch, WatchCounters, WatchHooks
from agents.metrics import Metrics
from agents.publish import BrokerHealth
from agents.settings import Settings
from agents.topics import (
    ALERTS,
    ALL_TOPICS,
    CLIENT_REQUESTS_DLQ,
    ENTITY_EVENTS,
    ENTITY_FLAGS,
    VERDICTS,
    TopicLimits,
    TopicSpec,
    create_topics,
    read_topic_limits,
)

log = logging.getLogger("detector.broker")

# the topics the worker writes (besides the state changelog, which the shards add)
OUTPUT_TOPICS = (VERDICTS.name, CLIENT_REQUESTS_DLQ.name, ENTITY_EVENTS.name, ALERTS.name, ENTITY_FLAGS.name)


class BrokerLink(Service):
    """Started before the stages of the role (agents/app.py): reads the topic limits (`limits`, then
    `on_limits`), then probes the broker every `broker_check_interval_s` (`health`).
    Its client is an AIOKafkaConsumer that subscribes to nothing (no group): it only
    lists topics and reads log end offsets."""

    def __init__(self, settings: Settings, metrics: Metrics, limit_topics: Iterable[str] = (), **kwargs: object):
        super().__init__(**kwargs)  # type: ignore[arg-type]  # mode's Service takes loop=, beacon=
        self.settings = settings
        self.metrics = metrics
        self.limit_topics = [*OUTPUT_TOPICS, *limit_topics]
        self.limits = TopicLimits()  # Kafka's defaults until on_start read the topics' own
        self.on_limits: list[Callable[[TopicLimits], None]] = []  # called once the limits were read
        self.on_log_lost: list[Callable[[], None]] = []  # the broker lost its log (see BrokerWatch)
        self.client: AIOKafkaConsumer | None = None
        # readiness follows the recent broker interactions (the ingest stage reports its
        # polls, produces and commits here too)
        self.health = BrokerHealth(unready_failures=settings.broker_unready_failures,
                                   stale_after_s=max(15.0, 5 * settings.broker_check_interval_s))
        self.watch = BrokerWatch(
            WatchHooks(topics=self._broker_topics, create=self._create_topics, end_offsets=self._log_ends),
            self.health,
            WatchCounters(error=metrics.broker_errors.labels("metadata").inc, recovered=metrics.broker_recoveries.inc,
                          recreated=metrics.topics_recreated.inc, log_lost=metrics.broker_log_resets.inc),
            ALL_TOPICS, timeout_s=max(5.0, 2 * settings.broker_check_interval_s), on_log_lost=self._log_lost,
        )

    async def on_start(self) -> None:
        s = self.settings
        # Every record the worker writes stays under its topic's limit (RecordLimits):
        # the output topics' max.message.bytes, read once (the state changelog's too,
        # for the shards)
        self.limits = await read_topic_limits(s.kafka_bootstrap, self.limit_topics, security=s.kafka)
        for callback in self.on_limits:
            callback(self.limits)
        self.client = AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap, group_id=None,
                                       client_id=f"{s.app_id}-broker-watch", enable_auto_commit=False,
                                       **s.kafka.client_kwargs())
        await self.client.start()

    async def on_stop(self) -> None:
        if self.client is not None:
            await self.client.stop()

    @Service.task
    async def _watch_broker(self) -> None:
        """The metadata probe behind readiness, and topic recreation (agents/brokerwatch.py)."""
        while not self.should_stop:
            await self.watch.check()
            self.metrics.broker_up.set(1 if self.health.healthy() else 0)
            await self.sleep(self.settings.broker_check_interval_s)

    def failed(self, op: str, exc: BaseException) -> None:
        """A broker interaction of a stage failed (poll, produce, commit)."""
        self.health.failed(op, exc)
        self.metrics.broker_errors.labels(op).inc()
        self.metrics.broker_up.set(1 if self.health.healthy() else 0)

    async def _broker_topics(self) -> set[str]:
        assert self.client is not None
        return set(await self.client.topics())

    async def _create_topics(self, specs: tuple[TopicSpec, ...]) -> list[str]:
        s = self.settings
        return await create_topics(s.kafka_bootstrap, s.topic_partitions, s.topic_replication, specs=specs,
                                   security=s.kafka)

    async def _log_ends(self, tps: list[tuple[str, int]]) -> Mapping[tuple[str, int], int]:
        assert self.client is not None
        ends = await self.client.end_offsets([TopicPartition(t, p) for t, p in tps])
        return {(tp.topic, tp.partition): int(off) for tp, off in ends.items()}

    def _log_lost(self) -> None:
        for callback in self.on_log_lost:
            callback()
