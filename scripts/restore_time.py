"""Restore time of the behaviour state: N entity records (realistic device blobs, see
scripts/state_memory.py) and a meta record per partition written to a shard worker's
changelog on the embedded broker, then a `detector run --role shards` process started
on it: prints JSON with the seconds from the process start to Faust's "Recovery
complete" (the table read from the changelog) and to every partition's engine having
taken its records ("restored N entities", at its first envelope: one per partition is
sent), and each partition's own engine restore time.

    python scripts/restore_time.py --entities 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aiokafka import AIOKafkaProducer  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402

from agents.tools.broker import EmbeddedBroker, free_port  # noqa: E402
from agents.tools.demo import EMBEDDED_WORKER_ENV, stop_process  # noqa: E402
from agents.topics import ENTITY_EVENTS, create_topics, partitions_of  # noqa: E402
from detector.behaviour.engine import BehaviourEngine  # noqa: E402
from detector.behaviour.records import Envelope, encode_envelope  # noqa: E402
from detector.behaviour.store import changelog_key, entity_table_key, meta_table_key  # noqa: E402
from detector.engine import DEFAULT_CONFIG, DetectionConfig  # noqa: E402
from scripts.state_memory import records  # noqa: E402


async def run(n: int, workdir: Path) -> dict[str, object]:
    if os.environ.get("RESTORE_TIER") == "kafka":  # real Apache Kafka (tests/brokers.py)
        from tests.brokers import start_tier

        broker: Any = start_tier("kafka")
    else:
        broker = EmbeddedBroker(log_path=workdir / "broker.log").start()
    proc = None
    try:
        await create_topics(broker.bootstrap, partitions=4)
        parts = partitions_of(ENTITY_EVENTS, 4)
        app = f"restore-{time.time_ns()}"
        changelog = f"{app}-behaviour-state-changelog"
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        await admin.start()
        await admin.create_topics([NewTopic(changelog, parts, 1, topic_configs={"cleanup.policy": "compact"})])
        await admin.close()
        cfg = DetectionConfig.load(DEFAULT_CONFIG)
        engines = [BehaviourEngine(cfg.behaviour, cfg.alerts, cfg.scoring.weight_of) for _ in range(parts)]
        for i in range(256):  # realistic blobs, reused under N distinct keys
            e = engines[0]
            e.observe(records(i, 6), offset=i)
        samples = [b for _, b in engines[0].dump_all()[0]]
        p = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=20, max_batch_size=1024 * 1024,
                             max_request_size=8 * 1024 * 1024)
        await p.start()
        t = time.perf_counter()
        written = 0
        for q in range(parts):
            batch = p.create_batch()
            for i in range(q, n, parts):
                key = changelog_key(entity_table_key(q, f"device|android-{i:016x}"))
                if batch.append(key=key, value=samples[i % len(samples)], timestamp=None) is None:
                    batch.close()
                    await (await p.send_batch(batch, changelog, partition=q))
                    batch = p.create_batch()
                    batch.append(key=key, value=samples[i % len(samples)], timestamp=None)
                written += 1
            batch.append(key=changelog_key(meta_table_key(q)), value=engines[q].dump_meta(), timestamp=None)
            batch.close()
            await (await p.send_batch(batch, changelog, partition=q))
        produce_s = time.perf_counter() - t
        port = free_port()
        env = {**os.environ, **EMBEDDED_WORKER_ENV, "DETECTOR_KAFKA_BOOTSTRAP": broker.bootstrap,
               "DETECTOR_WEB_PORT": str(port), "DETECTOR_APP_ID": app, "APP_DATADIR": str(workdir / "data"),
               "DETECTOR_BEHAVIOUR__MAX_ENTITIES": str(n), "PYTHONPATH": str(ROOT)}
        log = workdir / "worker.log"
        started = time.monotonic()
        with open(log, "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "agents.cli", "run", "--role", "shards"], stdout=out,
                                    stderr=subprocess.STDOUT, env=env, cwd=workdir, start_new_session=True)
        recovered_s = None
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline and recovered_s is None:
            if "Recovery complete" in log.read_text(errors="replace"):
                recovered_s = time.monotonic() - started
            await asyncio.sleep(0.2)
        for q in range(parts):  # an empty envelope per partition: each engine takes its records
            await p.send_and_wait(ENTITY_EVENTS.name, encode_envelope(Envelope()), partition=q)
        await p.stop()
        per: list[float] = []
        restored = 0
        while time.monotonic() < deadline:
            found = re.findall(r"restored (\d+) entities in ([0-9.]+) s", log.read_text(errors="replace"))
            if len(found) >= parts:
                per = [float(s) for _, s in found]
                restored = sum(int(k) for k, _ in found)
                break
            await asyncio.sleep(0.2)
        loaded_s = time.monotonic() - started
        return {"entities": written, "produce_s": round(produce_s, 1),
                "faust_recovery_s": recovered_s and round(recovered_s, 1),
                "engines_loaded_s": round(loaded_s, 1), "engine_restore_s_per_partition": per,
                "restored": restored, "log": str(log)}
    finally:
        if proc is not None:
            stop_process(proc)
        broker.stop()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entities", type=int, default=100_000)
    args = ap.parse_args()
    print(json.dumps(asyncio.run(run(args.entities, Path(tempfile.mkdtemp(prefix="restore-"))))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
