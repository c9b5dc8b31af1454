"""Poison pills against a real worker on both broker tiers (issue #11): every class of
hostile message the issue found, each followed by normal traffic. The worker must
give every normal request its verdict, account for every pill (a dead letter naming
its source offset with its reason code, or a verdict for a pill that is valid but
huge), keep every record it writes under its topic's limit, and never exit.

The input topic is created with a larger `max.message.bytes` (8 MiB) than Kafka's
1 MB default so the issue's 3 MB pills can be produced at all: the input topic's
limit is the edge operator's choice, and the worker must cope with what it admits.
Every topic the worker writes keeps its declared configuration (Kafka's defaults)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from agents.topics import (ALERTS, ALL_TOPICS, CLIENT_REQUESTS, CLIENT_REQUESTS_DLQ, ENTITY_EVENTS, ENTITY_FLAGS,
                           VERDICTS, create_topics, existing_topics, read_topic_limits, record_limit)
from agents.records import FAUST_MAX_REQUEST_SIZE, INGEST_MAX_REQUEST_SIZE
from detector.simulate import genuine, private_api_library

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.timeout(240)]

INPUT_MAX_BYTES = 8 * 1024 * 1024
CHANGELOG = "detector-behaviour-state-changelog"  # Faust: {app_id}-{table}-changelog
YEAR_2100 = 4102444800.0


@dataclasses.dataclass
class Pill:
    name: str
    value: bytes
    code: str | None  # the dead letter's reason code; None: valid, every request gets a verdict
    request_ids: tuple[str, ...] = ()
    partition: int = -1
    offset: int = -1


def _pills(template: dict[str, Any]) -> list[Pill]:
    """The issue's poison classes, built on a genuine request (`template`)."""
    e = template
    raw_minimal = b'{"request_id":"a","ts":1795860000,"client_ip":"1.2.3.4","method":"GET","path":"/","headers":[],'
    pills = [
        Pill("asn list (unhashable)", raw_minimal + b'"network":{"asn":[]}}', "invalid_type"),
        Pill("asn true", raw_minimal + b'"network":{"asn":true}}', "invalid_type"),
        Pill("ts near the maximum", orjson.dumps(dict(e, request_id="pill-ts-max", ts=253402300700)), "out_of_range"),
        Pill("RFC 3339 year 1", orjson.dumps(dict(e, request_id="pill-ts-year1", ts="0001-01-01T00:00:00+14:00")),
             "out_of_range"),
        Pill("180 KB of 0x01 in a JSON string", b'{"request_id":"' + b"\x01" * 180_000 + b'"}', "invalid_json"),
        Pill("790 KB of 0xff", b"\xff" * 790_000, "invalid_utf8"),
        Pill("3 MB ja4", orjson.dumps(dict(e, request_id="pill-ja4", tls=dict(e["tls"], ja4="t" * 3_000_000))),
             "oversized"),
        Pill("3 MB h2 fingerprint", orjson.dumps(dict(e, request_id="pill-h2", h2={"fingerprint": "h" * 3_000_000})),
             "oversized"),
        Pill("3 MB as_org", orjson.dumps(dict(e, request_id="pill-as-org",
                                              network=dict(e["network"], as_org="o" * 3_000_000))), "oversized"),
    ]
    for field_name, bad in (("as_org", ["x"]), ("country", {"a": 1}), ("hosting", [True])):
        pills.append(Pill(f"network.{field_name} unhashable", orjson.dumps(dict(
            e, request_id=f"pill-{field_name}", network=dict(e["network"], **{field_name: bad}))), "invalid_type"))
    for field_name, bad in (("provider", ["play_integrity"]), ("app_recognition", {"x": 1})):
        pills.append(Pill(f"attestation.{field_name} unhashable", orjson.dumps(dict(
            e, request_id=f"pill-{field_name}", attestation=dict(e["attestation"], **{field_name: bad}))),
            "invalid_type"))
    # valid but huge: scored, with bounded verdicts, envelopes and state
    ids = [dict(e, request_id=f"pill-8k-ids-{i}", device_id=f"{i:04d}" + "d" * 8000,
                account_id=f"{i:04d}" + "a" * 8000, session_id=f"{i:04d}" + "s" * 8000, ts=e["ts"] + i * 0.01)
           for i in range(10)]
    pills.append(Pill("10 requests with 8 KB ids", orjson.dumps(ids), None, tuple(r["request_id"] for r in ids)))
    accounts = [dict(e, request_id=f"pill-8k-account-{i}", account_id=f"{i:05d}" + "a" * 8000,
                     ts=e["ts"] + i * 0.001) for i in range(300)]
    pills.append(Pill("300 requests of one fingerprint, unique 8 KB account ids", orjson.dumps(accounts), None,
                      tuple(r["request_id"] for r in accounts)))
    fps = dict(e, request_id="pill-8k-fingerprints", tls=dict(e["tls"], ja4="t" * 8000), h2={"fingerprint": "h" * 8000})
    pills.append(Pill("8 KB ja4 and h2 fingerprint", orjson.dumps(fps), None, ("pill-8k-fingerprints",)))
    future = [dict(e, request_id=f"pill-2100-{i}", ts=YEAR_2100 + i) for i in range(300)]
    pills.append(Pill("300 requests dated 2100", orjson.dumps(future), None, tuple(r["request_id"] for r in future)))
    return pills


async def _produce(bootstrap: str, items: list[Pill | bytes]) -> None:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=INPUT_MAX_BYTES)
    await p.start()
    try:
        for item in items:
            md = await p.send_and_wait(CLIENT_REQUESTS.name, item.value if isinstance(item, Pill) else item)
            if isinstance(item, Pill):
                item.partition, item.offset = md.partition, md.offset
    finally:
        await p.stop()


async def _collect(bootstrap: str, topics: list[str], done: Any, timeout: float) -> dict[str, list[tuple[bytes, bytes]]]:
    out: dict[str, list[tuple[bytes, bytes]]] = {t: [] for t in topics}
    c = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                         max_partition_fetch_bytes=INPUT_MAX_BYTES)
    await c.start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not done(out):
            for tp, msgs in (await c.getmany(timeout_ms=250)).items():
                out[tp.topic].extend((m.key or b"", m.value or b"") for m in msgs)
        for tp, msgs in (await c.getmany(timeout_ms=1000)).items():
            out[tp.topic].extend((m.key or b"", m.value or b"") for m in msgs)
    finally:
        await c.stop()
    return out


def _alerted(records: list[tuple[bytes, bytes]]) -> set[str]:
    return {orjson.loads(v)["entity"]["type"] for _, v in records}


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def _value(text: str, sample: str) -> float:
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{sample} not exported")


async def test_poison_pills_never_stop_blind_or_crash_the_worker(broker, worker_factory, profile, tmp_path: Path):
    started = time.monotonic()
    spec = dataclasses.replace(CLIENT_REQUESTS, configs={"max.message.bytes": str(INPUT_MAX_BYTES)})
    await create_topics(broker.bootstrap, partitions=4, specs=(spec,))
    await create_topics(broker.bootstrap, partitions=4)
    proc, port = worker_factory()
    # The worker creates its state changelog (4 partitions) at start: wait for it, or
    # our consumer's metadata request would auto-create it on Kafka with 1 partition.
    deadline = time.monotonic() + 60
    while CHANGELOG not in await existing_topics(broker.bootstrap):
        assert time.monotonic() < deadline and proc.poll() is None, "the worker did not create its changelog"
        await asyncio.sleep(0.5)

    good = list(genuine(profile, 420, seed=31))
    pills = _pills(good[0])
    chunk = len(good) // (len(pills) + 1)
    items: list[Pill | bytes] = [orjson.dumps(good[:chunk])]
    for i, pill in enumerate(pills):
        items += [pill, orjson.dumps(good[(i + 1) * chunk:(i + 2) * chunk])]
    normal = good[:(len(pills) + 1) * chunk]
    # a bot network after everything: event time was not hijacked by the 2100 batch
    attack = list(private_api_library(profile, 30, seed=31, start_ts=normal[-1]["ts"] + 1))
    items.append(orjson.dumps(attack))
    await _produce(broker.bootstrap, items)

    expected_ids = ({e["request_id"] for e in normal} | {e["request_id"] for e in attack}
                    | {rid for p in pills for rid in p.request_ids})
    dead = [p for p in pills if p.code is not None]
    out = await _collect(
        broker.bootstrap, [VERDICTS.name, CLIENT_REQUESTS_DLQ.name, ALERTS.name, ENTITY_EVENTS.name, ENTITY_FLAGS.name,
                           CHANGELOG],
        lambda o: len(o[VERDICTS.name]) >= len(expected_ids) and len(o[CLIENT_REQUESTS_DLQ.name]) >= len(dead)
        and _alerted(o[ALERTS.name]) >= {"device", "account"} and len(o[CHANGELOG]) > 0, timeout=90)
    log = (tmp_path / "worker.log").read_text(errors="replace")

    verdicts = [orjson.loads(v) for _, v in out[VERDICTS.name]]
    ids = [v["request_id"] for v in verdicts]
    missing = expected_ids - set(ids)
    assert not missing, f"{len(missing)} requests without a verdict, e.g. {sorted(missing)[:5]}\n{log[-4000:]}"
    assert set(ids) == expected_ids

    dlq = [orjson.loads(v) for _, v in out[CLIENT_REQUESTS_DLQ.name]]
    by_source = {(d["source"]["partition"], d["source"]["offset"]): d for d in dlq
                 if d["source"]["topic"] == CLIENT_REQUESTS.name}
    for p in dead:
        d = by_source.get((p.partition, p.offset))
        assert d is not None, f"pill {p.name!r} at {p.partition}@{p.offset} has no dead letter"
        assert d["code"] == p.code, (p.name, d["code"], d["reason"])
        assert d["size"] == len(p.value)
    assert len(dlq) == len(dead), "only the pills are dead-lettered: nothing failed internally"
    assert not [d for d in dlq if d["code"] == "internal_error"]

    # every record the worker wrote fits its topic (with the 10% margin)
    topic_limits = await read_topic_limits(broker.bootstrap, list(out))
    writers = {VERDICTS.name: INGEST_MAX_REQUEST_SIZE, CLIENT_REQUESTS_DLQ.name: INGEST_MAX_REQUEST_SIZE,
               ENTITY_EVENTS.name: INGEST_MAX_REQUEST_SIZE, ALERTS.name: FAUST_MAX_REQUEST_SIZE,
               ENTITY_FLAGS.name: FAUST_MAX_REQUEST_SIZE, CHANGELOG: FAUST_MAX_REQUEST_SIZE}
    largest = {}
    for topic, records in out.items():
        limit = record_limit(topic_limits.topic_max(topic), writers[topic])
        sizes = [len(k) + len(v) for k, v in records]
        largest[topic] = max(sizes, default=0)
        assert largest[topic] <= limit, (topic, largest[topic], limit)
    assert out[ENTITY_EVENTS.name] and out[CHANGELOG], "envelopes and state were written"

    # the bot network after the 2100 batch still raises its alerts
    assert _alerted(out[ALERTS.name]) >= {"device", "account"}, log[-4000:]

    text = _metrics(port)
    assert _value(text, "detector_future_events_total") == 300
    assert _value(text, 'detector_internal_errors_total{stage="ingest"}') == 0
    assert _value(text, 'detector_internal_errors_total{stage="entity-shard"}') == 0
    for code in {p.code for p in dead}:
        assert _value(text, f'detector_dlq_records_total{{reason="{code}"}}') == sum(p.code == code for p in dead)

    # the worker never exited or restarted its stages, and logged no crash
    assert proc.poll() is None
    assert log.count("ingest stage started") == 1
    assert "Traceback" not in log and "crashed" not in log.lower(), log[-4000:]
    elapsed = time.monotonic() - started
    print(f"\n[{broker.tier}] {len(pills)} pills, {len(expected_ids)} verdicts, {len(dlq)} dead letters in "
          f"{elapsed:.1f} s; largest record per topic: {largest}")
