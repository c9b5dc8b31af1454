"""The stream worker's per-message safety, record limits and event-time reference,
without a broker: the ingest stage's batch step and the shard agent's envelope step
driven with fake publishers, and failures injected where real code raises."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

import agents.app
import agents.ingest as ingest
import agents.records as records
import agents.shards
from agents.tools.broker import free_port
from agents.metrics import Metrics
from agents.settings import load_settings
from agents.topics import (CLIENT_REQUESTS, CLIENT_REQUESTS_DLQ, ENTITY_EVENTS, KAFKA_DEFAULT_MAX_MESSAGE_BYTES,
                           VERDICTS, TopicLimits, read_topic_limits, record_limit)
from agents.ingest import IngestStage
from agents.records import LogLimiter, RecordLimits, log_text
from agents.shards import ShardProcessor, ShardState
from detector.behaviour.records import decode_envelope
from detector.simulate import genuine, private_api_library

TP = TopicPartition(CLIENT_REQUESTS.name, 0)


@dataclass
class FakeOut:
    """The BatchPublisher as the batch step uses it."""

    records: list[tuple[str, bytes, bytes | None, int | None]] = field(default_factory=list)

    async def add(self, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None) -> None:
        self.records.append((topic, value, key, partition))

    def of(self, topic: str) -> list[bytes]:
        return [v for t, v, _, _ in self.records if t == topic]


def msg(offset: int, value: bytes, ts_ms: float | None = None) -> Any:
    return SimpleNamespace(offset=offset, value=value, timestamp=int(ts_ms if ts_ms is not None else time.time() * 1000))


def sample(m: Metrics, name: str, **labels: str) -> float:
    v = m.registry.get_sample_value(name, labels or None)
    return 0.0 if v is None else v


@pytest.fixture
def stage(detection: Any) -> IngestStage:
    return IngestStage(load_settings(), detection, Metrics(CollectorRegistry()), loop=None)


@pytest.fixture
def events(profile: Any) -> list[dict[str, Any]]:
    return list(genuine(profile, 12, seed=7))


def stamp(events: list[dict[str, Any]]) -> float:
    """A Kafka timestamp (ms) just after the events: they are not in the future."""
    return (events[-1]["ts"] + 1) * 1000


async def test_a_request_whose_scoring_raises_is_dead_lettered_and_the_batch_goes_on(stage, events, monkeypatch):
    real = stage.pipeline.assess

    def assess(r: Any, flags: Any) -> Any:
        if r.request_id == events[3]["request_id"]:
            raise TypeError("unhashable type: 'list'")
        return real(r, flags)

    monkeypatch.setattr(stage.pipeline, "assess", assess)
    out = FakeOut()
    batch = {TP: [msg(10, orjson.dumps(events[:6]), stamp(events)), msg(11, orjson.dumps(events[6]), stamp(events))]}
    verdicts = await stage._score_batch(batch, out)
    ids = {orjson.loads(v)["request_id"] for v in out.of(VERDICTS.name)}
    assert ids == {e["request_id"] for e in events[:7]} - {events[3]["request_id"]}
    assert len(verdicts) == 6
    (dlq,) = [orjson.loads(v) for v in out.of(CLIENT_REQUESTS_DLQ.name)]
    assert dlq["code"] == "internal_error" and dlq["index"] == 3
    assert dlq["source"] == {"topic": CLIENT_REQUESTS.name, "partition": 0, "offset": 10}
    assert "TypeError" in dlq["reason"] and events[3]["request_id"] in dlq["reason"]
    assert sample(stage.metrics, "detector_internal_errors_total", stage="ingest") == 1
    assert sample(stage.metrics, "detector_dlq_records_total", reason="internal_error") == 1
    assert out.of(ENTITY_EVENTS.name), "the other requests' records still go to the shards"


async def test_a_message_whose_decoding_raises_is_dead_lettered(stage, events, monkeypatch):
    real = stage.decode  # the input format's decoder (setting input_format)

    def decode(value: bytes | None, limits: Any) -> Any:
        if value == b"poison":
            raise RecursionError("maximum recursion depth exceeded")
        return real(value, limits)

    monkeypatch.setattr(stage, "decode", decode)
    out = FakeOut()
    await stage._score_batch({TP: [msg(1, b"poison"), msg(2, orjson.dumps(events[:2]), stamp(events))]}, out)
    assert len(out.of(VERDICTS.name)) == 2
    (dlq,) = [orjson.loads(v) for v in out.of(CLIENT_REQUESTS_DLQ.name)]
    assert dlq["code"] == "internal_error" and dlq["source"]["offset"] == 1 and "RecursionError" in dlq["reason"]


async def test_failures_of_one_message_make_one_dead_letter_with_every_rejection(stage, events, monkeypatch):
    real = stage.pipeline.assess
    bad = {events[0]["request_id"], events[2]["request_id"]}
    monkeypatch.setattr(stage.pipeline, "assess",
                        lambda r, f: (_ for _ in ()).throw(KeyError("x")) if r.request_id in bad else real(r, f))
    value = orjson.dumps([events[0], events[1], events[2], {"request_id": "no-path"}])
    out = FakeOut()
    await stage._score_batch({TP: [msg(5, value, stamp(events))]}, out)
    (dlq,) = [orjson.loads(v) for v in out.of(CLIENT_REQUESTS_DLQ.name)]
    assert [(e["index"], e["code"]) for e in dlq["errors"]] == [(0, "internal_error"), (2, "internal_error"),
                                                                (3, "missing_field")]
    assert len(out.of(VERDICTS.name)) == 1


async def test_a_failing_dead_letter_encoder_still_writes_a_bounded_record(stage, monkeypatch):
    def broken(*a: Any, **k: Any) -> bytes:
        raise MemoryError()

    monkeypatch.setattr(records, "encode_dlq_record", broken)
    out = FakeOut()
    await stage._score_batch({TP: [msg(3, b"\xff" * 5000)]}, out)
    (dlq,) = [orjson.loads(v) for v in out.of(CLIENT_REQUESTS_DLQ.name)]
    assert dlq["code"] == "invalid_utf8" and dlq["size"] == 5000 and dlq["message"] == "" and dlq["truncated"]


async def test_future_requests_get_verdicts_but_no_records_and_leave_event_time(stage, events):
    out = FakeOut()
    now_ms = stamp(events)
    await stage._score_batch({TP: [msg(1, orjson.dumps(events[:4]), now_ms)]}, out)
    watermark = stage.watermark
    assert watermark == events[3]["ts"]
    envelopes = len(out.of(ENTITY_EVENTS.name))
    ahead = [dict(e, ts=e["ts"] + 3600, request_id=f"future-{i}") for i, e in enumerate(events[4:])]
    await stage._score_batch({TP: [msg(2, orjson.dumps(ahead), now_ms)]}, out)
    assert {orjson.loads(v)["request_id"] for v in out.of(VERDICTS.name)} >= {e["request_id"] for e in ahead}
    assert len(out.of(ENTITY_EVENTS.name)) == envelopes, "future requests send no entity records"
    assert stage.watermark == watermark
    assert sample(stage.metrics, "detector_future_events_total") == len(ahead)
    # within the tolerance: ordinary requests
    near = [dict(events[4], ts=events[4]["ts"] + 60, request_id="near")]
    await stage._score_batch({TP: [msg(3, orjson.dumps(near), stamp(events))]}, out)
    assert sample(stage.metrics, "detector_future_events_total") == len(ahead)
    assert stage.watermark == events[4]["ts"] + 60


def test_the_reference_is_the_record_timestamp_capped_at_the_wall_clock(stage):
    now = 1_800_000_000.0
    tol = stage.event_time.max_future_s
    assert stage.reference_time(msg(0, b"", 1_700_000_000_000), now) == 1_700_000_000.0  # a replay of history
    assert stage.reference_time(msg(0, b"", 4_102_444_800_000), now) == now + tol  # a producer clock in 2100
    assert stage.reference_time(SimpleNamespace(timestamp=-1), now) == now  # no timestamp
    assert stage.reference_time(SimpleNamespace(timestamp=None), now) == now


async def test_envelopes_are_split_by_bytes_under_the_limit(stage, profile):
    attack = list(private_api_library(profile, 60, seed=3))
    stage.limits = RecordLimits(verdict=900_000, dlq=900_000, envelope=4096, alert=1, flag=1, state=1, shard_dlq=1,
                                 shard_verdict=1)
    out = FakeOut()
    await stage._score_batch({TP: [msg(1, orjson.dumps(attack), (attack[-1]["ts"] + 1) * 1000)]}, out)
    envelopes = out.of(ENTITY_EVENTS.name)
    assert len(envelopes) > 4 and all(len(e) <= 4096 for e in envelopes)
    assert sum(len(decode_envelope(e).records) for e in envelopes) >= len(attack)


async def test_an_oversized_verdict_is_dead_lettered_not_sent(stage, events):
    stage.limits = RecordLimits(verdict=200, dlq=900_000, envelope=900_000, alert=1, flag=1, state=1, shard_dlq=1,
                                 shard_verdict=1)
    out = FakeOut()
    await stage._score_batch({TP: [msg(4, orjson.dumps(events[0]), stamp(events))]}, out)
    assert out.of(VERDICTS.name) == []
    (dlq,) = [orjson.loads(v) for v in out.of(CLIENT_REQUESTS_DLQ.name)]
    assert dlq["code"] == "oversized"
    assert sample(stage.metrics, "detector_oversized_records_total", kind="verdict") == 1


def test_record_limits_take_the_smaller_of_topic_and_producer_minus_ten_percent():
    assert record_limit(1_048_576, 4 * 1024 * 1024) == 943_718
    assert record_limit(8 * 1024 * 1024, 1_000_000) == 900_000
    limits = RecordLimits.of(TopicLimits({CLIENT_REQUESTS_DLQ.name: 1_048_576, VERDICTS.name: 100_000}),
                             4 * 1024 * 1024, 1_000_000, "app-behaviour-state-changelog")
    assert (limits.dlq, limits.verdict, limits.shard_dlq) == (943_718, 90_000, 900_000)
    assert limits.envelope == int(KAFKA_DEFAULT_MAX_MESSAGE_BYTES * 0.9)  # not read: the broker default


async def test_topic_limits_fall_back_to_the_default_when_the_broker_does_not_answer():
    started = time.monotonic()
    limits = await read_topic_limits(f"127.0.0.1:{free_port()}", [VERDICTS.name], timeout_s=2.0)
    assert limits.topic_max(VERDICTS.name) == KAFKA_DEFAULT_MAX_MESSAGE_BYTES
    assert time.monotonic() - started < 10


def test_log_lines_are_rate_limited_per_kind_and_count_what_they_hold_back(caplog):
    clock = [0.0]
    held = []
    limiter = LogLimiter(logging.getLogger("test.limiter"), burst=3, interval_s=10, clock=lambda: clock[0],
                         on_suppressed=lambda: held.append(1))
    with caplog.at_level(logging.WARNING, logger="test.limiter"):
        for i in range(10):
            limiter.log(logging.WARNING, "a", "line %d", i)
        limiter.log(logging.WARNING, "b", "other kind")
        clock[0] = 11
        limiter.log(logging.WARNING, "a", "after")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["line 0", "line 1", "line 2", "other kind", "after (7 similar lines suppressed before)"]
    assert len(held) == 7


def test_log_text_scrubs_credentials_and_bounds_the_line(detection):
    text = 'bad header line\nAuthorization: Bearer abcdefghijklmnop and ["cookie", "sid=s3cr3t-value"]' + "x" * 1000
    out = log_text(text, detection.redactor)
    assert "abcdefghijklmnop" not in out and "s3cr3t" not in out and "\n" not in out
    assert len(out) <= 303


# --- the shard agent's envelope step --------------------------------------------------
class FakeTable:
    """The state table (what Faust restored from the changelog) and its changelog: the
    records written, each write acknowledged at once."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.sent: list[tuple[int, bytes, bytes | None]] = []

    async def write(self, p: int, records: Any) -> asyncio.Future[None]:
        self.sent.extend((p, k, v) for k, v in records)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


async def writes_done() -> None:
    """Let the flush tasks hand their records to the changelog (a step at a time)."""
    for _ in range(20):
        await asyncio.sleep(0)


class FakeEvent:
    def __init__(self, p: int, offset: int, value: bytes):
        self.message = SimpleNamespace(partition=p, offset=offset, timestamp=time.time())
        self.value = value
        self.acked = False

    def ack(self) -> None:
        self.acked = True


@dataclass
class Sent:
    flags: list[bytes] = field(default_factory=list)
    alerts: list[bytes] = field(default_factory=list)
    dlq: list[bytes] = field(default_factory=list)
    fail_dlq: bool = False

    async def flag(self, key: bytes, value: bytes) -> None:
        self.flags.append(value)

    async def alert(self, key: bytes, value: bytes) -> None:
        self.alerts.append(value)

    async def dead(self, value: bytes) -> None:
        if self.fail_dlq:
            raise ConnectionError("broker down")
        self.dlq.append(value)


def shard_setup(detection: Any) -> tuple[ShardProcessor, ShardState, Sent, FakeTable]:
    metrics = Metrics(CollectorRegistry())
    table = FakeTable()
    shard = ShardState(detection.behaviour, detection, table, metrics, interval=3600, changelog=table)
    sent = Sent()
    return ShardProcessor(shard, detection, metrics, send_flag=sent.flag, send_alert=sent.alert,
                          send_dlq=sent.dead), shard, sent, table


async def envelopes_of(stage: IngestStage, events: list[dict[str, Any]], offset: int = 1) -> list[tuple[int, bytes]]:
    """The shard envelopes of `events`, read as one message at `offset` of client-requests."""
    out = FakeOut()
    await stage._score_batch({TP: [msg(offset, orjson.dumps(events), (events[-1]["ts"] + 1) * 1000)]}, out)
    return [(p or 0, v) for t, v, _, p in out.records if t == ENTITY_EVENTS.name]


async def test_an_undecodable_envelope_is_dead_lettered_and_acknowledged_never_dropped(detection):
    proc, shard, sent, _ = shard_setup(detection)
    # the envelope the found bug produced: a boolean where the ASN is an integer
    bad = b'[[["asn","AS1","r",1.0,0,0.0,[],null,"1.2.3.4",true,true,null,null,null,null,null]],[[0,7,0]]]'
    event = FakeEvent(2, 41, bad)
    await proc.process(event)
    (dlq,) = [orjson.loads(v) for v in sent.dlq]
    assert dlq["code"] == "internal_error"
    assert dlq["source"] == {"topic": ENTITY_EVENTS.name, "partition": 2, "offset": 41}
    assert not event.acked
    shard.flush(2)
    await writes_done()
    assert event.acked, "acknowledged with the next flush, once dead-lettered"
    assert sample(proc.metrics, "detector_internal_errors_total", stage="entity-shard") == 1


async def test_an_envelope_whose_dead_letter_is_not_acknowledged_stays_unacknowledged(detection):
    proc, shard, sent, _ = shard_setup(detection)
    sent.fail_dlq = True
    event = FakeEvent(0, 1, b"not an envelope")
    await proc.process(event)
    shard.flush(0)
    assert not event.acked and sent.dlq == []


async def test_a_record_whose_observation_raises_loses_only_itself(detection, profile, monkeypatch):
    stage = IngestStage(load_settings(), detection, Metrics(CollectorRegistry()), loop=None)
    attack = list(private_api_library(profile, 30, seed=5))
    (p, value), *_ = sorted(await envelopes_of(stage, attack), key=lambda pv: -len(decode_envelope(pv[1]).records))
    env = decode_envelope(value)
    poison = env.records[len(env.records) // 2]
    proc, shard, sent, table = shard_setup(detection)
    engine = shard.engine(p)
    real = engine._apply

    def apply(bucket: Any, r: Any, out: Any) -> None:
        if r is poison or r == poison:
            raise ValueError("poisoned record")
        real(bucket, r, out)

    monkeypatch.setattr(engine, "_apply", apply)
    event = FakeEvent(p, 9, value)
    await proc.process(event)
    (dlq,) = [orjson.loads(v) for v in sent.dlq]
    assert dlq["code"] == "internal_error" and dlq["index"] is None and "ValueError" in dlq["reason"]
    assert dlq["source"] == {"topic": ENTITY_EVENTS.name, "partition": p, "offset": 9}
    assert sum(len(b.entities) for b in engine.buckets) > 0
    # every other record was applied once: re-observing the envelope applies nothing
    again = engine.observe(env.records, offset=None, sources=env.sources)
    assert again.applied == 0
    shard.flush(p)
    assert await shard.settle(timeout=5)
    assert event.acked and table.sent


async def ack_writes(table: Any) -> None:
    """The broker acknowledges every changelog write so far, and those they let follow
    (a flush writes its meta record once its entity records were acknowledged)."""
    while any(not f.done() for f in table.futures):
        for fut in table.futures:
            if not fut.done():
                fut.set_result(None)
        await writes_done()


class DeferredTable(FakeTable):
    """A changelog whose writes the test acknowledges (or fails) by hand, like a busy broker."""

    def __init__(self) -> None:
        super().__init__()
        self.futures: list[asyncio.Future[None]] = []

    async def write(self, p: int, records: Any) -> asyncio.Future[None]:
        self.sent.extend((p, k, v) for k, v in records)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.futures.append(fut)
        return fut


async def attack_with_deferred_alerts(detection: Any, profile: Any, table: FakeTable | None = None) -> tuple[
        ShardProcessor, ShardState, Sent, list[FakeEvent], list[asyncio.Future[None]]]:
    """A private-API attack's envelopes through a shard whose alerts the test
    acknowledges (or fails) by hand: the shard, what it sent, the envelopes, the acks."""
    stage = IngestStage(load_settings(), detection, Metrics(CollectorRegistry()), loop=None)
    attack = list(private_api_library(profile, 40, seed=6))
    proc, shard, sent, _ = shard_setup(detection)
    if table is not None:
        shard.table = shard.changelog = table
    acks: list[asyncio.Future[None]] = []

    async def alert(key: bytes, value: bytes) -> asyncio.Future[None]:
        sent.alerts.append(value)
        acks.append(asyncio.get_running_loop().create_future())
        return acks[-1]

    proc.send_alert = alert
    events = [FakeEvent(p, i, value) for i, (p, value) in enumerate(await envelopes_of(stage, attack))]
    for event in events:
        await proc.process(event)
    return proc, shard, sent, events, acks


async def test_envelopes_are_acknowledged_only_once_their_snapshot_and_alerts_reached_the_broker(detection, profile):
    table = DeferredTable()
    _, shard, _, events, alert_acks = await attack_with_deferred_alerts(detection, profile, table)
    assert alert_acks, "the attack raises alerts"
    for p in list(shard.engines):
        shard.flush(p)
    await writes_done()
    assert table.futures and not any(e.acked for e in events), "nothing acknowledged before the broker answered"
    await ack_writes(table)
    assert not all(e.acked for e in events), "the envelopes that raised alerts wait for them"
    for fut in alert_acks:
        fut.set_result(None)
    assert await shard.settle(timeout=5)
    assert all(e.acked for e in events)


async def test_a_snapshot_the_broker_refused_is_written_again_and_its_envelopes_wait_for_it(detection, profile):
    stage = IngestStage(load_settings(), detection, Metrics(CollectorRegistry()), loop=None)
    attack = list(genuine(profile, 30, seed=7))
    proc, shard, sent, _ = shard_setup(detection)
    table = shard.table = shard.changelog = DeferredTable()
    events = [FakeEvent(p, i, value) for i, (p, value) in enumerate(await envelopes_of(stage, attack))]
    for event in events:
        await proc.process(event)
    p = events[0].message.partition
    shard.flush(p)
    await writes_done()
    first = len(table.futures)
    assert first > 0
    for fut in table.futures:
        fut.set_exception(ConnectionError("not leader"))
    assert await shard.settle(timeout=5)
    mine = [e for e in events if e.message.partition == p]
    assert mine and not any(e.acked for e in mine)
    assert sample(proc.metrics, "detector_internal_errors_total", stage="entity-shard") == 1
    shard.flush(p)  # the same entities again, and the envelopes still wait for them
    await writes_done()
    assert len(table.futures) == 2 * first
    await ack_writes(table)
    assert await shard.settle(timeout=5)
    assert all(e.acked for e in mine)


async def test_a_refused_alert_is_sent_again_and_its_envelopes_wait_for_it(detection, profile):
    _, shard, sent, events, acks = await attack_with_deferred_alerts(detection, profile)
    first = len(acks)
    assert first > 0
    for p in list(shard.engines):
        shard.flush(p)
    for fut in acks:
        fut.set_exception(ConnectionError("not leader"))
    assert await shard.settle(timeout=5)
    assert len(acks) == 2 * first, "every refused alert is sent again"
    assert sent.alerts[first:] == sent.alerts[:first]
    waiting = [e for e in events if e.message.partition in shard.outputs]
    assert waiting and not any(e.acked for e in waiting)
    for p in list(shard.engines):
        shard.flush(p)  # the envelopes wait for the alerts sent again
    await asyncio.sleep(0)
    assert not any(e.acked for e in waiting)
    for fut in acks[first:]:
        fut.set_result(None)
    assert await shard.settle(timeout=5)
    assert all(e.acked for e in events)


async def test_flushes_of_one_partition_acknowledge_in_order(detection, profile):
    stage = IngestStage(load_settings(), detection, Metrics(CollectorRegistry()), loop=None)
    proc, shard, sent, _ = shard_setup(detection)
    table = shard.table = shard.changelog = DeferredTable()
    envelopes = await envelopes_of(stage, list(genuine(profile, 30, seed=7)))
    p = envelopes[0][0]
    mine = [FakeEvent(p, i, v) for i, (q, v) in enumerate(envelopes) if q == p]
    assert mine
    await proc.process(mine[0])
    shard.flush(p)  # waits for the broker
    await writes_done()
    assert table.futures
    later = FakeEvent(p, 10_000, b"")
    shard.hold(p, later)
    shard.flush(p)  # nothing to write, but an earlier flush of p is in flight
    await asyncio.sleep(0)
    assert not later.acked and not mine[0].acked
    for fut in table.futures:
        fut.set_exception(ConnectionError("not leader"))
    assert await shard.settle(timeout=5)
    assert not later.acked, "nothing after a refused flush is acknowledged before it"
    assert [e.message.offset for e in shard.pending[p]] == [mine[0].message.offset, 10_000]


async def test_oversized_flags_alerts_and_state_records_are_never_sent(detection, profile):
    stage = IngestStage(load_settings(), detection, Metrics(CollectorRegistry()), loop=None)
    attack = list(private_api_library(profile, 40, seed=6))
    proc, shard, sent, table = shard_setup(detection)
    shard.limits = RecordLimits(verdict=1, dlq=1, envelope=1, alert=64, flag=16, state=32, shard_dlq=900_000,
                                 shard_verdict=1)
    for i, (p, value) in enumerate(await envelopes_of(stage, attack)):
        await proc.process(FakeEvent(p, i, value))
    for p in list(shard.engines):
        shard.flush(p)
    await writes_done()
    m = proc.metrics
    assert sent.alerts == [] and sent.flags == [] and table.sent == []
    assert sample(m, "detector_oversized_records_total", kind="alert") > 0
    assert sample(m, "detector_oversized_records_total", kind="state") > 0
    assert sample(m, "detector_alerts_total", severity="high") + sample(m, "detector_alerts_total", severity="critical") == 0


def test_no_exception_handler_in_the_worker_swallows_cancellation():
    """`except Exception` (never bare or BaseException) in the per-message paths: a stop
    (CancelledError) still stops the worker."""
    for module in (agents.app, ingest, records, agents.shards):
        src = Path(module.__file__ or "").read_text(encoding="utf-8")
        assert "except BaseException" not in src and "except:" not in src, module.__name__
    assert issubclass(asyncio.CancelledError, BaseException) and not issubclass(asyncio.CancelledError, Exception)


async def test_a_future_request_carries_the_flags_in_force_at_the_reference(stage, events):
    """A flagged device cannot shed its flag by dating its requests ahead: the flag
    (valid for an hour after the reference) still applies to a request dated a month on."""
    from detector.behaviour.engine import behaviour_codes
    from detector.behaviour.flags import Flag, FlagUpdate

    code = sorted(behaviour_codes())[0]
    ref = events[-1]["ts"] + 1
    first = FakeOut()
    await stage._score_batch({TP: [msg(0, orjson.dumps(events[0]), ref * 1000)]}, first)
    device = orjson.loads(first.of(VERDICTS.name)[0])["entities"]["device"]
    stage.flags.apply([FlagUpdate("device", device, (Flag(code, "test flag", ref + 3600),), ref - 10)])
    ahead = dict(events[0], request_id="ahead-flagged", ts=ref + 30 * 86400)
    out = FakeOut()
    await stage._score_batch({TP: [msg(1, orjson.dumps(ahead), ref * 1000)]}, out)
    (verdict,) = [orjson.loads(v) for v in out.of(VERDICTS.name)]
    assert code in [s["code"] for s in verdict["signals"]]
    assert out.of(ENTITY_EVENTS.name) == [] and sample(stage.metrics, "detector_future_events_total") == 1


async def test_verdicts_emit_flagged_writes_no_clean_verdict_but_scores_counts_and_routes_every_request(
        detection, profile):
    """verdicts.emit: flagged drops only the clean verdicts from the output: the same
    entity records go to the shards and the metrics count every request."""
    import dataclasses

    events = list(genuine(profile, 8, seed=3)) + list(private_api_library(profile, 4, seed=3))
    batch = {TP: [msg(i, orjson.dumps(e), stamp(events)) for i, e in enumerate(events)]}
    outs, stages = [], []
    for emit in ("all", "flagged"):
        st = IngestStage(load_settings(), dataclasses.replace(detection, verdicts_emit=emit),
                         Metrics(CollectorRegistry()), loop=None)
        out = FakeOut()
        verdicts = await st._score_batch(batch, out)
        st.metrics.observe_batch(verdicts, messages=len(events), now=time.time(), seconds=0.01)
        outs.append(out)
        stages.append(st)
    every, flagged = ([orjson.loads(v) for v in o.of(VERDICTS.name)] for o in outs)
    assert len(every) == len(events) and {v["verdict"] for v in every} >= {"clean", "malicious"}
    assert flagged == [v for v in every if v["verdict"] != "clean"]
    assert outs[0].of(ENTITY_EVENTS.name) == outs[1].of(ENTITY_EVENTS.name)
    for level in ("clean", "malicious"):
        counts = [sample(st.metrics, "detector_verdicts_total", verdict=level) for st in stages]
        assert counts[0] == counts[1] == sum(v["verdict"] == level for v in every) > 0


async def test_the_shards_export_how_far_behind_they_run_and_how_many_envelopes_they_processed(detection, profile):
    # detector_entity_shard_lag_seconds: wall clock minus the envelope's Kafka timestamp
    # (the ingest's publication); detector_entity_envelopes_total counts every envelope,
    # a dead-lettered one too (the bench waits for the shards to have caught up by it)
    stage = IngestStage(load_settings(), detection, Metrics(CollectorRegistry()), loop=None)
    (p, value), *_ = await envelopes_of(stage, list(genuine(profile, 20, seed=3)))
    proc, shard, sent, _ = shard_setup(detection)
    event = FakeEvent(p, 0, value)
    event.message.timestamp = time.time() - 7.5  # published 7.5 s ago
    await proc.process(event)
    assert 7.5 <= sample(proc.metrics, "detector_entity_shard_lag_seconds") < 60
    assert sample(proc.metrics, "detector_entity_envelopes_total") == 1
    await proc.process(FakeEvent(p, 1, b"not an envelope"))  # dead-lettered, counted; its timestamp is now
    assert sample(proc.metrics, "detector_entity_envelopes_total") == 2
    assert sample(proc.metrics, "detector_entity_shard_lag_seconds") < 7.5


@pytest.mark.parametrize("hold", [True, False])
async def test_the_collector_is_held_off_for_one_batch_only_and_back_after_a_failure(detection, events, hold):
    import gc

    stage = IngestStage(load_settings(ingest_gc_hold=hold), detection, Metrics(CollectorRegistry()), loop=None)
    seen: list[bool] = []
    real = stage._decode_and_score

    async def spy(batches: Any, out: Any) -> Any:
        seen.append(gc.isenabled())
        if len(seen) == 2:
            raise RuntimeError("a batch that fails")
        return await real(batches, out)

    stage._decode_and_score = spy  # type: ignore[method-assign]
    batch = {TP: [msg(1, orjson.dumps(events[0]), stamp(events))]}
    assert gc.isenabled()
    assert len(await stage._score_batch(batch, FakeOut())) == 1
    assert gc.isenabled()
    with pytest.raises(RuntimeError):
        await stage._score_batch(batch, FakeOut())
    assert gc.isenabled() and seen == [not hold, not hold]
    gc.disable()  # a collector someone else turned off stays off
    try:
        await stage._score_batch({TP: []}, FakeOut())
        assert not gc.isenabled()
    finally:
        gc.enable()


async def test_a_record_edge_the_topic_does_not_allow_is_dead_lettered_and_requests_are_counted_per_edge(
        detection, events):
    import dataclasses
    cfg = dataclasses.replace(detection, input_edge="haproxy", allowed_edges=frozenset({"envoy"}))
    stage = IngestStage(load_settings(), cfg, Metrics(CollectorRegistry()), loop=None)
    value = orjson.dumps([events[0], {**events[1], "edge": "envoy"}, {**events[2], "edge": "nginx-njs"},
                          {**events[3], "edge": "squid"}, events[4]])
    out = FakeOut()
    await stage._score_batch({TP: [msg(5, value, stamp(events))]}, out)
    verdicts = [orjson.loads(v) for v in out.of(VERDICTS.name)]
    assert [v["request_id"] for v in verdicts] == [events[i]["request_id"] for i in (0, 1, 4)]
    assert verdicts[0]["not_assessed"] == ["attestation", "behaviour", "body", "headers", "network", "transport"]  # the topic's edge: haproxy
    assert verdicts[1]["not_assessed"] == ["attestation", "behaviour", "body", "headers", "network", "signature", "transport"]  # its own: envoy
    (dlq,) = [orjson.loads(v) for v in out.of(CLIENT_REQUESTS_DLQ.name)]
    assert sorted((e["index"], e["code"]) for e in dlq["errors"]) == [(2, "edge_not_allowed"), (3, "unknown_edge")]
    m = stage.metrics
    assert sample(m, "detector_edge_requests_total", edge="haproxy") == 2
    assert sample(m, "detector_edge_requests_total", edge="envoy") == 1
    assert sample(m, "detector_dlq_records_total", reason="edge_not_allowed") == 1
    assert sample(m, "detector_dlq_records_total", reason="unknown_edge") == 1


async def test_records_of_the_haproxy_adapter_are_judged_as_haproxy(detection):
    """The adapter marks its records `edge: haproxy` (the line cannot): the topic admits
    that edge although `input.allowed_edges` is empty."""
    from detector.adapters import format_edge
    settings = load_settings(input_format="haproxy")
    stage = IngestStage(settings, detection, Metrics(CollectorRegistry()), loop=None)
    assert format_edge("haproxy") == "haproxy" and format_edge("native") is None
    policy = stage.pipeline.edges
    assert policy.default == "full" and policy.allowed == frozenset({"haproxy"})
    native = IngestStage(load_settings(), detection, Metrics(CollectorRegistry()), loop=None)
    assert native.pipeline.edges.allowed == frozenset()
