"""BatchPublisher under broker faults, without a broker: a fake producer (the
`Producer` protocol of agents/publish.py) fails sends as scripted; flush() must return
only once every record was acknowledged, retrying the whole batch with backoff."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any, Callable

import pytest
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, NotLeaderForPartitionError
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.publish import Backoff, BatchPublisher, BrokerHealth, PublishAborted, partition_for


class FakeBatch:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self.records: list[tuple[bytes | None, bytes | None]] = []
        self.closed = False

    def append(self, *, key: bytes | None, value: bytes | None, timestamp: int | None) -> object | None:
        assert not self.closed
        if len(self.records) >= self.capacity:
            return None
        self.records.append((key, value))
        return object()

    def close(self) -> None:
        self.closed = True


class FakeProducer:
    """`fail(call_no, topic, partition)` returns None (acknowledged), "raise" (send_batch
    raises, as a metadata timeout does) or "nack" (the future fails, as an expired
    batch does)."""

    def __init__(self, fail: Callable[[int, str, int], str | None] = lambda *_: None, partitions: int = 3,
                 capacity: int = 4, metadata_failures: int = 0):
        self.fail = fail
        self.n_partitions = partitions
        self.capacity = capacity
        self.metadata_failures = metadata_failures
        self.calls = 0
        self.acked: list[tuple[str, int, bytes | None, bytes | None]] = []
        self.acked_in: list[int] = []  # the publisher's attempt of each acked record
        self.attempt: Callable[[], int] = lambda: 0
        self.failed_calls: list[int] = []

    async def partitions_for(self, topic: str) -> set[int]:
        if self.metadata_failures:
            self.metadata_failures -= 1
            raise KafkaTimeoutError("metadata")
        return set(range(self.n_partitions))

    def create_batch(self) -> FakeBatch:
        return FakeBatch(self.capacity)

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> asyncio.Future[Any]:
        assert batch.closed
        self.calls += 1
        outcome = self.fail(self.calls, topic, partition)
        if outcome is not None:
            self.failed_calls.append(self.calls)
        if outcome == "raise":
            raise KafkaConnectionError("connection closed")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if outcome == "nack":
            fut.set_exception(NotLeaderForPartitionError())
        else:
            self.acked.extend((topic, partition, k, v) for k, v in batch.records)
            self.acked_in.extend(self.attempt() for _ in batch.records)
            fut.set_result(object())
        return fut


class Sleeps:
    def __init__(self, health: BrokerHealth | None = None):
        self.delays: list[float] = []
        self.health = health
        self.healthy_while_waiting: list[bool] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if self.health is not None:
            self.healthy_while_waiting.append(self.health.healthy())


RECORDS = [(f"k{i}".encode(), f"v{i}".encode()) for i in range(20)]


async def publish_all(pub: BatchPublisher) -> None:
    for i, (k, v) in enumerate(RECORDS):
        if i % 3 == 0:
            await pub.add("verdicts", v, key=k)
        elif i % 3 == 1:
            await pub.add("entity-events", v, partition=i % 2)
        else:
            await pub.add("dlq", v)
    await pub.flush()


def values(producer: FakeProducer) -> Counter[bytes | None]:
    return Counter(v for _, _, _, v in producer.acked)


async def test_without_faults_every_record_is_sent_once_and_keys_keep_their_partition() -> None:
    producer = FakeProducer()
    sleeps = Sleeps()
    pub = BatchPublisher(producer, sleep=sleeps)
    await publish_all(pub)
    assert values(producer) == Counter(v for _, v in RECORDS)
    assert pub.attempts == 1 and sleeps.delays == []
    for topic, partition, key, _ in producer.acked:
        if topic == "verdicts":
            assert key is not None and partition == partition_for(key, 3)


@pytest.mark.parametrize("outcome", ["raise", "nack"])
async def test_a_failed_send_republishes_the_whole_batch_after_a_backoff(outcome: str) -> None:
    producer = FakeProducer(fail=lambda call, *_: outcome if call == 2 else None)
    health = BrokerHealth()
    sleeps = Sleeps(health)
    retries: list[int] = []
    pub = BatchPublisher(producer, backoff=Backoff(initial_s=0.5, max_s=4, jitter=0.0), health=health, sleep=sleeps,
                         on_retry=lambda n, exc: retries.append(n))
    await publish_all(pub)
    got = values(producer)
    assert set(got) == {v for _, v in RECORDS}, "no record may be dropped"
    assert all(1 <= n <= 2 for n in got.values())
    assert pub.attempts == 2 and retries == [1] and sleeps.delays == [0.5]
    assert sleeps.healthy_while_waiting == [False], "not ready while a produce retry is pending"
    assert health.healthy() and health.retrying == 0


async def test_metadata_errors_are_retried_too() -> None:
    producer = FakeProducer(metadata_failures=2)
    sleeps = Sleeps()
    pub = BatchPublisher(producer, backoff=Backoff(initial_s=1, max_s=10, jitter=0.0), sleep=sleeps)
    await publish_all(pub)
    assert set(values(producer)) == {v for _, v in RECORDS}
    assert sleeps.delays == [1.0, 2.0] and pub.attempts == 3


async def test_an_outage_is_retried_with_bounded_exponential_backoff_until_it_ends() -> None:
    producer = FakeProducer(fail=lambda call, *_: "raise" if call <= 12 else None)
    health = BrokerHealth(unready_failures=3)
    sleeps = Sleeps(health)
    pub = BatchPublisher(producer, backoff=Backoff(initial_s=0.1, max_s=2.0, jitter=0.5), health=health, sleep=sleeps)
    await publish_all(pub)
    assert set(values(producer)) == {v for _, v in RECORDS}
    assert len(sleeps.delays) == pub.attempts - 1 >= 3
    for n, d in enumerate(sleeps.delays, start=1):
        base = min(2.0, 0.1 * 2 ** (n - 1))
        assert base * 0.5 <= d <= base
    assert not any(sleeps.healthy_while_waiting)
    assert health.healthy() and health.failures == 0


async def test_stopping_during_an_outage_aborts_without_claiming_success() -> None:
    producer = FakeProducer(fail=lambda *_: "nack")
    stop = {"now": False}

    async def sleep(delay: float) -> None:
        stop["now"] = len(producer.acked) == 0 and producer.calls > 6

    pub = BatchPublisher(producer, backoff=Backoff(jitter=0.0), should_stop=lambda: stop["now"], sleep=sleep)
    with pytest.raises(PublishAborted):
        await publish_all(pub)
    assert producer.acked == []


async def test_a_record_too_large_for_a_producer_batch_is_not_a_broker_fault() -> None:
    producer = FakeProducer(capacity=0)
    pub = BatchPublisher(producer, sleep=Sleeps())
    with pytest.raises(ValueError, match="does not fit"):
        await pub.add("verdicts", b"x", key=b"k")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([None, None, "raise", "nack"]), min_size=1, max_size=40))
def test_any_failure_pattern_ends_with_every_record_acknowledged_in_one_attempt(pattern: list[str | None]) -> None:
    def fail(call: int, *_: object) -> str | None:
        return pattern[call - 1] if call <= len(pattern) else None

    producer = FakeProducer(fail=fail, capacity=3)
    pub = BatchPublisher(producer, backoff=Backoff(jitter=0.0), sleep=Sleeps())
    producer.attempt = lambda: pub.attempts
    asyncio.run(publish_all(pub))
    # the last attempt alone acknowledged every record, once
    final = Counter(v for (_, _, _, v), attempt in zip(producer.acked, producer.acked_in) if attempt == pub.attempts)
    assert final == Counter(v for _, v in RECORDS)
    assert (pub.attempts == 1) == (not producer.failed_calls)


def test_backoff_is_exponential_bounded_and_jittered() -> None:
    b = Backoff(initial_s=0.2, max_s=5.0, multiplier=2.0, jitter=0.5)
    assert [b.delay(n, rand=lambda: 0.0) for n in (1, 2, 3, 4, 5, 6, 100, 10**6)] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0]
    assert b.delay(3, rand=lambda: 1.0) == pytest.approx(0.4)
    for bad in ({"initial_s": 0}, {"initial_s": 2, "max_s": 1}, {"multiplier": 0.5}, {"jitter": 1.0}):
        with pytest.raises(ValueError):
            Backoff(**bad)  # type: ignore[arg-type]


def test_broker_health_goes_unready_after_consecutive_failures_or_silence_and_reports_the_outage() -> None:
    now = [100.0]
    h = BrokerHealth(unready_failures=2, stale_after_s=10.0, clock=lambda: now[0])
    assert h.healthy() and h.recovered() is None
    h.failed("metadata", KafkaConnectionError("refused"))
    assert h.healthy(), "one failure is not an outage"
    now[0] += 1
    h.failed("poll", KafkaConnectionError("refused"))
    assert not h.healthy() and "2 consecutive broker failures" in h.reason()
    assert h.recovered() is None
    now[0] += 4
    h.ok()
    assert h.healthy() and h.recovered() == pytest.approx(4.0) and h.recovered() is None
    now[0] += 11
    assert not h.healthy() and "no successful broker interaction" in h.reason()
    h.retrying += 1
    h.ok()
    assert not h.healthy() and "produce retry pending" in h.reason()


async def test_a_partition_the_topic_does_not_have_is_a_layout_error_not_a_producer_assertion() -> None:
    """The ingest writes envelopes to explicit shard partitions: a topic with fewer
    (recreated by hand with another count) is a TopicLayoutError naming the topic and
    its count, raised before anything reaches the producer (whose own check is an
    `assert ... "Unrecognized partition"` that would stop the stage)."""
    from agents.topics import TopicLayoutError

    producer = FakeProducer(partitions=2)
    pub = BatchPublisher(producer, sleep=Sleeps())
    await pub.add("entity-events", b"v0", partition=1)
    with pytest.raises(TopicLayoutError, match="partition 3 of topic entity-events does not exist.*has 2 partitions"):
        await pub.add("entity-events", b"v1", partition=3)
    with pytest.raises(TopicLayoutError):
        await pub.add("entity-events", b"v2", partition=-1)
    await pub.flush()
    assert [(t, p, v) for t, p, _, v in producer.acked] == [("entity-events", 1, b"v0")]


def test_layout_problems_name_the_topic_its_count_and_the_setting() -> None:
    from agents.topics import ENTITY_EVENTS, layout_problems

    assert layout_problems({}, 4, "app") == [], "topics not there yet are created with the right count"
    assert layout_problems({ENTITY_EVENTS.name: 4, "app-behaviour-state-changelog": 4, "verdicts": 1}, 4, "app") == []
    problems = layout_problems({ENTITY_EVENTS.name: 2, "app-behaviour-state-changelog": 8}, 4, "app")
    assert len(problems) == 2
    assert problems[0].startswith(f"topic {ENTITY_EVENTS.name} has 2 partitions, the settings say 4")
    assert "set topic_partitions to 2" in problems[0]
    assert problems[1].startswith("topic app-behaviour-state-changelog has 8 partitions")
