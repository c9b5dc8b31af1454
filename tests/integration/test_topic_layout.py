"""A detector-entity-events topic with another partition count than the settings say
(created by hand, or recreated with fewer): the worker refuses to start with one
readable error and exit code 2, instead of crash-looping on the producer's
"Unrecognized partition" assertion at the first envelope."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from agents.tools.broker import free_port
from agents.tools.demo import start_worker, stop_process
from agents.topics import ENTITY_EVENTS, create_topics

pytestmark = [pytest.mark.broker, pytest.mark.timeout(120)]


async def test_a_worker_on_an_entity_topic_with_fewer_partitions_exits_2_with_the_reason(broker, tmp_path):
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(ENTITY_EVENTS.name, 2, 1)])
    finally:
        await admin.close()
    await create_topics(broker.bootstrap, partitions=4)  # the others, as the settings say
    log = tmp_path / "worker.log"
    proc = start_worker(broker.bootstrap, free_port(), log, extra_env={"DETECTOR_TOPIC_PARTITIONS": "4"})
    try:
        code = await asyncio.to_thread(proc.wait, 60)
    finally:
        stop_process(proc)
    text = log.read_text(errors="replace")
    assert code == 2, text[-3000:]
    assert (f"topic {ENTITY_EVENTS.name} has 2 partitions, the settings say 4" in text
            and "set topic_partitions to 2" in text), text[-3000:]
    assert "Traceback" not in text and "Unrecognized partition" not in text
    assert text.count(f"topic {ENTITY_EVENTS.name} has 2 partitions") == 1
