"""`detector bench` against a real broker (each tier), with a tiny N: one final JSON
line with throughput (end to end and the ingest alone) beside the raw-consumer
baseline, no late record, end-to-end latency at half the measured throughput, loop
stalls, shard lag, changelog volume and the processes' peak memory, all sane."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.broker, pytest.mark.timeout(240)]


FIELDS = ("roles", "events_per_s", "baseline_events_per_s", "ratio", "ingest_ratio", "late_records", "latency_rate",
          "latency_offered_per_s", "latency_p50_ms", "latency_p99_ms", "loop_block_max_ms", "shard_lag_max_s", "rss_mb",
          "rss_mb_per_process", "ingest_events_per_s", "changelog_records", "changelog_bytes")


@pytest.mark.slow  # two worker processes: > 5 s
def test_bench_reports_throughput_latency_and_memory_in_one_json_line(broker, tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "agents.cli", "bench", "--json", "--count", "3000", "--bootstrap", broker.bootstrap,
         "--latency-seconds", "3"],
        capture_output=True, cwd=tmp_path, timeout=220,
    )
    assert res.returncode == 0, res.stderr.decode()[-3000:]
    lines = res.stdout.decode().strip().splitlines()
    assert len(lines) == 1
    r = orjson.loads(lines[-1])
    for key in FIELDS:
        assert key in r, key
    assert r["roles"] == "split" and set(r["rss_mb_per_process"]) == {"ingest", "shards"}
    assert r["requests"] == 3000 and r["messages"] == 3000
    assert r["events_per_s"] > 100 and r["baseline_events_per_s"] > 100
    assert r["ingest_events_per_s"] >= r["events_per_s"] * 0.99  # end to end waits for the shards too
    assert r["ratio"] == pytest.approx(r["events_per_s"] / r["baseline_events_per_s"], rel=0.01, abs=1e-3)
    assert r["ingest_ratio"] == pytest.approx(r["ingest_events_per_s"] / r["baseline_events_per_s"], rel=0.01,
                                              abs=1e-3)
    assert r["alerts"] >= 1  # the simulated library is alerted on
    # the latency phase at half of the measured throughput, the rate achieved close to it
    assert r["latency_rate"] == pytest.approx(max(1.0, 0.5 * r["events_per_s"]), rel=0.01, abs=1)
    assert r["latency_requests"] == int(r["latency_rate"] * 3)  # every offered request came back as a verdict
    assert 0.5 * r["latency_rate"] <= r["latency_offered_per_s"] <= 1.2 * r["latency_rate"]
    assert 0 < r["latency_p50_ms"] <= r["latency_p99_ms"] < 10_000
    assert 0 <= r["loop_block_max_ms"] < 10_000 and 0 <= r["shard_lag_max_s"] < 120
    assert r["changelog_records"] > 0 and r["changelog_bytes"] > 0
    assert 20 < r["rss_mb"] < 4000
    assert r["rss_mb"] == pytest.approx(sum(r["rss_mb_per_process"].values()), abs=0.2)
    assert not list(tmp_path.glob("bench-*-data"))  # the worker's files stay in the bench's own directory
    # Its logs: a directory it named at the start and removed after the run completed.
    err = res.stderr.decode()
    logs = Path(err.split("detector bench: logs in ", 1)[1].splitlines()[0])
    assert r["logs"] == str(logs) and f"detector bench: logs removed ({logs};" in err
    assert not logs.exists()
    # Event time translated, records in ts order per partition, lateness judged per
    # source partition: none late
    assert r["late_records"] == 0


def test_bench_keeps_its_logs_after_a_failure(tmp_path):
    # A broker nobody listens on: the run fails; its logs stay and their place is named.
    from agents.tools.broker import free_port

    res = subprocess.run(
        [sys.executable, "-m", "agents.cli", "bench", "--json", "--count", "10", "--bootstrap",
         f"127.0.0.1:{free_port()}"], capture_output=True, cwd=tmp_path, timeout=120,
    )
    assert res.returncode != 0
    err = res.stderr.decode()
    logs = Path(err.split("detector bench: logs in ", 1)[1].splitlines()[0])
    try:
        assert f"detector bench: logs kept in {logs}" in err and logs.is_dir()
    finally:
        import shutil

        shutil.rmtree(logs, ignore_errors=True)
