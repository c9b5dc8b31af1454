"""Sending ClientRequest events to Kafka the way a batching edge does: one JSON array
of `batch` requests per message, paced to a rate (requests per second)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from agents.kafkaclient import PLAINTEXT, KafkaSecurity
from agents.topics import CLIENT_REQUESTS


async def produce_events(
    bootstrap: str,
    events: Iterable[dict[str, Any]],
    *,
    rate: float | None = None,
    batch: int = 50,
    topic: str = CLIENT_REQUESTS.name,
    stop: asyncio.Event | None = None,
    security: KafkaSecurity = PLAINTEXT,
) -> int:
    """Returns the number of requests sent (all acknowledged). `security`: SASL / TLS
    (agents/kafkaclient.py; `detector simulate --to kafka` passes the settings')."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all", max_request_size=4 * 1024 * 1024,
                                **security.client_kwargs())
    await producer.start()
    sent = 0
    started = time.monotonic()
    pending: list[dict[str, Any]] = []
    futures = []
    try:
        for event in events:
            if stop is not None and stop.is_set():
                break
            pending.append(event)
            if len(pending) < batch:
                continue
            futures.append(await producer.send(topic, orjson.dumps(pending)))
            sent += len(pending)
            pending = []
            if rate:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            if len(futures) > 200:
                await asyncio.gather(*futures)
                futures.clear()
        if pending:
            futures.append(await producer.send(topic, orjson.dumps(pending)))
            sent += len(pending)
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return sent
