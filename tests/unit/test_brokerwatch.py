"""BrokerWatch without a broker: readiness through an outage, vanished declared topics
recreated, and a lost broker log told apart from a broker that kept its data."""

from __future__ import annotations

from typing import Mapping

from aiokafka.errors import KafkaConnectionError, NotLeaderForPartitionError

from agents.brokerwatch import BrokerWatch, WatchCounters, WatchHooks
from agents.publish import BrokerHealth
from agents.topics import ALL_TOPICS, TopicSpec

NAMES = {s.name for s in ALL_TOPICS}


class FakeBroker:
    def __init__(self) -> None:
        self.up = True
        self.topics: set[str] = set(NAMES)
        self.ends: dict[tuple[str, int], int] = {}
        self.ends_unavailable = 0  # answers refused right after a restart (leader elections)
        self.created: list[str] = []

    async def list_topics(self) -> set[str]:
        if not self.up:
            raise KafkaConnectionError("connection refused")
        return set(self.topics)

    async def create(self, specs: tuple[TopicSpec, ...]) -> list[str]:
        names = [s.name for s in specs if s.name not in self.topics]
        self.topics |= set(names)
        self.created += names
        return names

    async def end_offsets(self, tps: list[tuple[str, int]]) -> Mapping[tuple[str, int], int]:
        if self.ends_unavailable:
            self.ends_unavailable -= 1
            raise NotLeaderForPartitionError()
        return {tp: self.ends[tp] for tp in tps if tp in self.ends}

    def restart(self, memory_only: bool) -> None:
        if memory_only:
            self.topics, self.ends = set(), {}


def make(broker: FakeBroker) -> tuple[BrokerWatch, BrokerHealth, dict[str, int], list[int]]:
    now = [0.0]
    health = BrokerHealth(unready_failures=2, stale_after_s=1e9, clock=lambda: now[0])
    counts = {"error": 0, "recovered": 0, "recreated": 0, "log_lost": 0}

    def bump(name: str, n: int = 1) -> None:
        counts[name] += n

    lost: list[int] = []
    watch = BrokerWatch(
        WatchHooks(topics=broker.list_topics, create=broker.create, end_offsets=broker.end_offsets), health,
        WatchCounters(error=lambda: bump("error"), recovered=lambda: bump("recovered"),
                      recreated=lambda n: bump("recreated", n), log_lost=lambda: bump("log_lost")),
        ALL_TOPICS, on_log_lost=lambda: lost.append(1),
    )
    return watch, health, counts, lost


async def outage(watch: BrokerWatch, broker: FakeBroker, health: BrokerHealth, memory_only: bool) -> list[bool]:
    healthy = []
    broker.up = False
    for _ in range(3):
        assert not await watch.check()
        healthy.append(health.healthy())
    broker.restart(memory_only)
    broker.up = True
    assert await watch.check()
    healthy.append(health.healthy())
    return healthy


async def test_an_outage_of_a_broker_that_keeps_its_data_is_a_recovery_and_nothing_else() -> None:
    broker = FakeBroker()
    watch, health, counts, lost = make(broker)
    assert await watch.check()
    broker.ends[("client-requests", 0)] = 19
    watch.note_commit({("client-requests", 0): 19})
    broker.ends_unavailable = 2  # leaders still being elected after the restart
    assert await outage(watch, broker, health, memory_only=False) == [True, False, False, True]
    assert await watch.check() and await watch.check() and watch.verify == 0
    assert counts == {"error": 3, "recovered": 1, "recreated": 0, "log_lost": 0} and lost == []


async def test_a_restarted_memory_only_broker_gets_its_topics_back_and_the_loss_is_counted() -> None:
    broker = FakeBroker()
    watch, health, counts, lost = make(broker)
    assert await watch.check()
    watch.note_commit({("client-requests", 0): 40})
    await outage(watch, broker, health, memory_only=True)
    assert counts["log_lost"] == 1 and lost == [1], "the loss is told at once"
    broker.topics.add("client-requests")  # a client made the broker create this one meanwhile
    assert await watch.check() and broker.created == [], "recreated only after recreate_after probes"
    assert await watch.check()
    assert set(broker.created) == NAMES - {"client-requests"}
    assert counts == {"error": 3, "recovered": 1, "recreated": len(NAMES) - 1, "log_lost": 1} and lost == [1]
    assert await watch.check() and counts["log_lost"] == 1 and counts["recreated"] == len(NAMES) - 1, \
        "one loss is counted once"


async def test_topics_auto_created_by_a_client_first_the_shorter_log_still_tells_the_loss() -> None:
    broker = FakeBroker()
    watch, health, counts, lost = make(broker)
    assert await watch.check()
    broker.ends[("client-requests", 0)] = 40
    watch.note_commit({("client-requests", 0): 40})
    broker.up = False
    assert not await watch.check()
    broker.restart(memory_only=True)
    broker.topics = set(NAMES)  # e.g. Tansu auto-creating them on a client's metadata request
    broker.ends[("client-requests", 0)] = 3  # and some new traffic already
    broker.ends_unavailable = 1
    broker.up = True
    assert await watch.check() and counts["log_lost"] == 0
    assert await watch.check()
    assert broker.created == [] and counts["log_lost"] == 1 and lost == [1]


async def test_topics_never_seen_are_not_created_by_the_watch() -> None:
    broker = FakeBroker()
    broker.topics = {"client-requests"}
    watch, _, counts, lost = make(broker)
    assert await watch.check() and await watch.check()
    assert broker.created == [] and counts["recreated"] == 0 and lost == []
