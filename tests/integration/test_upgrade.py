"""Upgrade: a worker of this release started on the behaviour-state changelog and the
flag topic written by the previous release (tests/fixtures/upgrade, produced by that
release's worker: see its README) migrates that state, or discards it when its state
version differs, and never crashes; it then works on as usual."""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from agents.tools.broker import free_port
from agents.tools.demo import start_worker, stop_process
from agents.topics import ALERTS, CLIENT_REQUESTS, ENTITY_EVENTS, ENTITY_FLAGS, create_topics, partitions_of
from detector.simulate import genuine, private_api_library
from tests.integration.test_roles import scrape
from tests.integration.test_worker import collect, produce

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.timeout(240)]

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "upgrade" / "previous-release.jsonl"
APP_ID = "upgrade-fixture"  # the app id the fixture's worker ran under: its changelog's name
CHANGELOG = f"{APP_ID}-behaviour-state-changelog"
FILLER = 120  # past the fixture's highest source mark (103)


def fixture() -> list[dict[str, Any]]:
    out = []
    for line in FIXTURE.read_text().splitlines():
        r = json.loads(line)
        r["key"] = base64.b64decode(r["key"]) if r["key"] else None
        r["value"] = base64.b64decode(r["value"]) if r["value"] else None
        out.append(r)
    return out


async def write_previous_release(bootstrap: str) -> int:
    """The fixture's records on their topics and partitions; the number of entities
    its bucket snapshots hold."""
    await create_topics(bootstrap, partitions=4)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        n = partitions_of(ENTITY_EVENTS, 4)
        await admin.create_topics([NewTopic(CHANGELOG, n, 1, topic_configs={"cleanup.policy": "compact"})])
    finally:
        await admin.close()
    p = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await p.start()
    entities = 0
    try:
        # The input log goes on where the previous release left it: the state's source
        # marks name client-requests positions up to ~100 per partition, so this
        # broker's log starts past them (messages the new worker dead-letters)
        for q in range(4):
            for _ in range(FILLER):
                await p.send(CLIENT_REQUESTS.name, b"{}", partition=q)
        await p.flush()
        for r in fixture():
            topic = CHANGELOG if r["topic"] == "changelog" else ENTITY_FLAGS.name
            await p.send_and_wait(topic, r["value"], key=r["key"], partition=r["partition"])
            if topic == CHANGELOG:
                entities += len(orjson.loads(r["value"])["e"])
    finally:
        await p.stop()
    return entities


async def changelog_keys(bootstrap: str) -> list[tuple[str, bool]]:
    """(key, is a tombstone) of every changelog record, in order per partition."""
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest")
    await c.start()
    try:
        tps = [TopicPartition(CHANGELOG, q) for q in range(partitions_of(ENTITY_EVENTS, 4))]  # as created
        c.assign(tps)
        ends = await c.end_offsets(tps)
        await c.seek_to_beginning(*tps)
        out: list[tuple[str, bool]] = []
        for tp in tps:
            while await c.position(tp) < ends[tp]:
                for m in (await c.getmany(tp, timeout_ms=1000)).get(tp, []):
                    out.append((orjson.loads(m.key), m.value is None))
        return out
    finally:
        await c.stop()


@pytest.mark.parametrize("state_version", ["2", "3"], ids=["migrated", "discarded"])
async def test_a_worker_on_the_previous_release_changelog_migrates_or_discards_it(
        broker, profile, tmp_path, state_version):
    entities = await write_previous_release(broker.bootstrap)
    assert entities > 100
    port = free_port()
    log = tmp_path / "worker.log"
    proc = start_worker(broker.bootstrap, port, log, extra_env={
        "DETECTOR_APP_ID": APP_ID, "DETECTOR_BEHAVIOUR__STATE_VERSION": state_version})
    try:
        # every assigned partition loads its state once recovery completes, before any
        # traffic: the new traffic then reaches shards that hold the migrated state
        n = partitions_of(ENTITY_EVENTS, 4)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(re.findall(r"previous-release buckets", log.read_text())) < n:
            time.sleep(0.5)
        # new traffic: the attack raises alerts on top of whatever state was kept
        start = time.time() - 120
        attack = list(private_api_library(profile, 40, seed=21, start_ts=start))
        good = list(genuine(profile, 200, seed=22, start_ts=start))
        await produce(broker.bootstrap, [orjson.dumps(attack), orjson.dumps(good)])
        out = await collect(broker.bootstrap, [ALERTS.name], lambda o: len(o[ALERTS.name]) > 0, timeout=90)
        metrics = [ln for ln in scrape(port).splitlines()
                   if ln.startswith(("detector_shard_envelopes", "detector_state_", "detector_requests_total"))]
        assert out[ALERTS.name], "the upgraded worker raises alerts\n" + "\n".join(metrics)
        # every assigned partition loads its state once recovery completes, whether
        # or not it got an envelope
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (len(re.findall(r"previous-release buckets", log.read_text())) < n
                                               or not re.search(r"^detector_state_writes_total [1-9]", scrape(port),
                                                                re.M)):
            time.sleep(0.5)
        text = log.read_text()
        shards = [ln for ln in text.splitlines() if "shard " in ln or "Recovery]" in ln or "assigned" in ln]
        assert len(re.findall(r"previous-release buckets", text)) == n, "\n".join(shards[-40:])
        assert proc.poll() is None, "the worker runs on"
        assert "Traceback" not in text
        migrated = sum(int(n) for n in re.findall(r"migrated (\d+) entities", text))
        if state_version == "2":
            assert migrated == entities
        else:
            assert migrated == 0 and "discarded" in text
    finally:
        stop_process(proc)
    keys = await changelog_keys(broker.bootstrap)
    legacy = {k for k, dead in keys if re.fullmatch(r"\d+:\d+", k) and not dead}
    assert legacy and {k for k, dead in keys if dead} >= legacy, "every previous-release snapshot is tombstoned"
    written = {k for k, dead in keys if ":e:" in k and not dead}
    if state_version == "2":
        assert len(written) >= entities, "the migrated entities are written in this release's layout"
