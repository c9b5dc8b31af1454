"""Memory and restore time of the behaviour state at scale: N realistic device entities
(one account each, a session of signed requests: 64-hex signatures, of which a record
carries the first 16 digits as the edge sends them, signing ages, an IP, browse and
action calls) held by one engine; prints JSON.

- rss_growth_mb: the process's RSS growth (VmRSS after a full collection) from before
  the first record to after the last; per_entity_bytes = that / N;
- python_mb: tracemalloc's count of the Python allocations held at the end (run with
  --tracemalloc; slower);
- blob_bytes_mean: the entities' encoded state (what the changelog also carries);
- restore_s: a fresh engine loading every entity's record and the meta record (what a
  shard does after Faust restored the table from the changelog; Faust's own reading of
  the changelog comes on top).

    python scripts/state_memory.py --entities 1000000 --session 6
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import re
import sys
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detector.behaviour.engine import BehaviourEngine  # noqa: E402
from detector.behaviour.records import EntityRecord  # noqa: E402
from detector.engine import DEFAULT_CONFIG, DetectionConfig  # noqa: E402

T0 = 1_800_000_000.0
ENDPOINTS = ("startup", "browse", "browse", "action", "browse", "action", "browse", "action")


def rss_mb() -> float:
    gc.collect()
    m = re.search(r"VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text())
    return int(m.group(1)) / 1024 if m else 0.0


def records(i: int, session: int) -> list[EntityRecord]:
    device = f"android-{hashlib.blake2b(i.to_bytes(8, 'little'), digest_size=8).hexdigest()}"
    account = str(1_000_000_000 + i * 7919 % 9_000_000_000)
    sess = f"{i:08x}-4b6c-4c11-a2f4-{i * 31 % 2**48:012x}"
    ip = f"{11 + i % 200}.{i // 200 % 250}.{i // 50000 % 250}.{i % 7 + 2}"
    out = []
    for k in range(session):
        sig64 = hashlib.sha256(f"{i}:{k}".encode()).hexdigest()
        out.append(EntityRecord("device", device, f"req-{i}-{k}", T0 + i * 0.002 + k * 3.1, 0, 0.0, (),
                                "example-android", ip, 64500 + i % 300, False, "US", device, account, sess,
                                ENDPOINTS[k % len(ENDPOINTS)], sig64[:16], 0.3 + (k % 5) * 0.07))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entities", type=int, default=100_000)
    ap.add_argument("--session", type=int, default=6, help="signed requests per device")
    ap.add_argument("--tracemalloc", action="store_true")
    args = ap.parse_args(argv)
    cfg = DetectionConfig.load(DEFAULT_CONFIG)
    n = args.entities
    settings = replace(cfg.behaviour, max_entities=max(2 * n, cfg.behaviour.buckets))  # none evicted
    gc.freeze()
    before = rss_mb()
    if args.tracemalloc:
        tracemalloc.start()
    e = BehaviourEngine(settings, cfg.alerts, cfg.scoring.weight_of)
    t = time.perf_counter()
    applied = 0
    for i in range(n):
        applied += e.observe(records(i, args.session), offset=i).applied
    observe_s = time.perf_counter() - t
    e.take_changes()
    snapshot, meta = e.dump_all()  # every entity encoded (the live cache emptied)
    python_mb = None
    if args.tracemalloc:
        python_mb = tracemalloc.get_traced_memory()[0] / 2**20
        tracemalloc.stop()
    blobs = [b for _, b in snapshot]
    del snapshot
    after = rss_mb()
    growth = after - before
    t = time.perf_counter()
    fresh = BehaviourEngine(settings, cfg.alerts, cfg.scoring.weight_of)
    restored, stale = fresh.restore(meta, ((k, b) for bk in e.buckets for k, b in bk.entities.items()))
    restore_s = time.perf_counter() - t
    print(json.dumps({
        "entities": e.entity_count(), "session": args.session, "records_applied": applied,
        "observe_us_per_record": round(observe_s / max(applied, 1) * 1e6, 2),
        "rss_growth_mb": round(growth, 1), "per_entity_bytes": round(growth * 2**20 / n),
        "python_mb": None if python_mb is None else round(python_mb, 1),
        "blob_bytes_mean": round(sum(map(len, blobs)) / len(blobs), 1),
        "restore_s": round(restore_s, 2), "restored": restored, "stale": stale,
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
