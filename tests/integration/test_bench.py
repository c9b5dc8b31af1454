"""`detector bench` against a real broker (each tier), with a tiny N: one final JSON
line with throughput beside the raw-consumer baseline, end-to-end latency at a fixed
offered load, and the worker's peak memory, all within sane bounds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.broker, pytest.mark.timeout(240)]


@pytest.mark.slow  # a worker process: > 5 s
def test_bench_reports_throughput_latency_and_memory_in_one_json_line(broker, tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "agents.cli", "bench", "--json", "--count", "3000", "--bootstrap", broker.bootstrap,
         "--latency-rate", "200", "--latency-seconds", "3"],
        capture_output=True, cwd=tmp_path, timeout=220,
    )
    assert res.returncode == 0, res.stderr.decode()[-3000:]
    lines = res.stdout.decode().strip().splitlines()
    assert len(lines) == 1
    r = orjson.loads(lines[-1])
    for key in ("events_per_s", "baseline_events_per_s", "ratio", "latency_p50_ms", "latency_p99_ms", "rss_mb"):
        assert key in r, key
    assert r["requests"] == 3000 and r["messages"] == 3000
    assert r["events_per_s"] > 100 and r["baseline_events_per_s"] > 100
    assert r["ratio"] == pytest.approx(r["events_per_s"] / r["baseline_events_per_s"], rel=0.01, abs=1e-3)
    assert r["alerts"] >= 1  # the simulated library is alerted on
    assert r["latency_requests"] == 600  # every offered request came back as a verdict
    assert 0 < r["latency_p50_ms"] <= r["latency_p99_ms"] < 10_000
    assert 20 < r["rss_mb"] < 2000
    assert not list(tmp_path.glob("bench-*-data"))  # the worker's files stay in the bench's own directory
    # Its logs: a directory it named at the start and removed after the run completed.
    err = res.stderr.decode()
    logs = Path(err.split("detector bench: logs in ", 1)[1].splitlines()[0])
    assert r["logs"] == str(logs) and f"detector bench: logs removed ({logs};" in err
    assert not logs.exists()


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
