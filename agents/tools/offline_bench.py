"""`detector bench --offline`: the offline pipeline's throughput on simulator traffic,
as `detector score` runs it minus file I/O (JSONL lines in memory -> decode -> score in
batches -> Verdict JSON), on one core. Reports the median of several rounds, with the
time split between decoding, scoring and encoding."""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import orjson

from detector.decode import InvalidRequest, decode_line
from detector.engine import DEFAULT_CONFIG, DetectionConfig
from detector.simulate import mixed


def run_offline_bench(n: int = 50_000, rounds: int = 5, seed: int = 1, batch: int = 2000) -> dict[str, Any]:
    cfg = DetectionConfig.load(DEFAULT_CONFIG, secrets=os.environ.get)  # profiles' {env: NAME} secrets
    events = mixed(cfg.profiles[cfg.default_profile], n, seed, catalogue=cfg.catalogue)
    lines = [orjson.dumps(e) for e in events]
    limits = cfg.limits
    results = []
    for _ in range(rounds):
        pipeline = cfg.pipeline()  # fresh caches each round: nothing carried over
        t_decode = t_score = t_encode = 0.0
        for i in range(0, len(lines), batch):
            a = time.perf_counter()
            reqs = []
            for line in lines[i:i + batch]:
                try:
                    reqs.append(decode_line(line, limits))
                except InvalidRequest:
                    pass
            b = time.perf_counter()
            verdicts = pipeline.score_batch(reqs)
            c = time.perf_counter()
            b"".join(v.to_json() + b"\n" for v in verdicts)
            d = time.perf_counter()
            t_decode += b - a
            t_score += c - b
            t_encode += d - c
        results.append((t_decode, t_score, t_encode))
    total = statistics.median(sum(r) for r in results)
    dec = statistics.median(r[0] for r in results)
    sco = statistics.median(r[1] for r in results)
    enc = statistics.median(r[2] for r in results)
    return {
        "mode": "offline",
        "requests": n,
        "rounds": rounds,
        "requests_per_s": round(n / total),
        "decode_us": round(dec / n * 1e6, 2),
        "score_us": round(sco / n * 1e6, 2),
        "encode_us": round(enc / n * 1e6, 2),
    }
