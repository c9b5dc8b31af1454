"""The offline commands, run as a user runs them (the console script's module)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import orjson

ROOT = Path(__file__).resolve().parents[2]
VERDICT_SCHEMA = json.loads((ROOT / "config" / "schema" / "verdict.schema.json").read_text())


def detector(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "agents.cli", *args], input=stdin, capture_output=True, cwd=ROOT,
                          timeout=120)


def test_simulate_is_deterministic_for_a_seed(tmp_path):
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    for path, seed in ((a, "7"), (b, "7"), (c, "8")):
        assert detector("simulate", "--scenario", "genuine", "--count", "200", "--seed", seed, "-o", str(path)).returncode == 0
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    rows = [orjson.loads(x) for x in a.read_bytes().splitlines()]
    assert len(rows) == 200 and all(r["label"] == {"scenario": "genuine", "malicious": False} for r in rows)


def test_score_prints_one_valid_verdict_per_line_in_order(tmp_path):
    src = tmp_path / "in.jsonl"
    detector("simulate", "--scenario", "private_api_library", "--count", "3", "--seed", "1", "-o", str(src))
    ids = [orjson.loads(x)["request_id"] for x in src.read_bytes().splitlines()]
    res = detector("score", str(src))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 3
    for line, rid in zip(lines, ids):
        v = orjson.loads(line)
        jsonschema.validate(v, VERDICT_SCHEMA)
        assert v["request_id"] == rid and v["verdict"] == "malicious"


def test_score_reports_malformed_lines_with_their_number_and_exits_1(tmp_path):
    good = detector("simulate", "--count", "2", "--seed", "1").stdout.splitlines()
    data = b"\n".join([good[0], b"{broken", good[1], b'{"request_id": "x"}']) + b"\n"
    res = detector("score", stdin=data)
    assert res.returncode == 1
    assert len(res.stdout.splitlines()) == 2
    err = res.stderr.decode()
    assert "line 2: rejected: invalid JSON" in err and "line 4: rejected: missing required field 'ts'" in err


def test_score_can_write_alerts(tmp_path):
    src, alerts = tmp_path / "in.jsonl", tmp_path / "alerts.jsonl"
    detector("simulate", "--scenario", "private_api_library", "--count", "30", "--seed", "1", "-o", str(src))
    assert detector("score", str(src), "-o", str(tmp_path / "out.jsonl"), "--alerts", str(alerts)).returncode == 0
    assert alerts.read_bytes().count(b"\n") >= 2


def test_config_check_accepts_the_shipped_config():
    res = detector("config", "check", "config")
    assert res.returncode == 0, res.stderr
    assert b"ok: 1 profile(s) (example-android)" in res.stdout


def test_config_check_names_file_key_and_line_of_an_error(tmp_path):
    (tmp_path / "profiles").mkdir()
    prof = (ROOT / "config" / "profiles" / "example-android.yaml").read_text()
    (tmp_path / "profiles" / "p.yaml").write_text(prof.replace("status: current", "status: shiny", 1))
    (tmp_path / "detector.yaml").write_text((ROOT / "config" / "detector.yaml").read_text())
    res = detector("config", "check", str(tmp_path))
    assert res.returncode == 2
    err = res.stderr.decode()
    assert f"{tmp_path / 'profiles' / 'p.yaml'}:" in err and "versions.0.status: must be one of current, supported, retired" in err
    line = int(err.split("p.yaml:")[1].split(":")[0])
    assert "shiny" in (tmp_path / "profiles" / "p.yaml").read_text().splitlines()[line - 1]
