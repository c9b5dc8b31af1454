"""The offline commands, run as a user runs them (the console script's module)."""

from __future__ import annotations

import json
import os
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


def test_score_writes_only_flagged_verdicts_with_verdicts_emit_flagged(tmp_path):
    src = tmp_path / "in.jsonl"
    detector("simulate", "--scenario", "mixed", "--count", "200", "--seed", "1", "-o", str(src))
    every = [orjson.loads(x) for x in detector("score", str(src)).stdout.splitlines()]
    env = {**os.environ, "DETECTOR_VERDICTS__EMIT": "flagged"}
    res = subprocess.run([sys.executable, "-m", "agents.cli", "score", str(src)], capture_output=True, cwd=ROOT,
                         timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    flagged = [orjson.loads(x) for x in res.stdout.splitlines()]
    assert len(every) == 200 and 0 < len(flagged) < 200
    assert flagged == [v for v in every if v["verdict"] != "clean"]


def test_score_reports_malformed_lines_with_their_number_and_exits_1(tmp_path):
    good = detector("simulate", "--count", "2", "--seed", "1").stdout.splitlines()
    data = b"\n".join([good[0], b"{broken", good[1], b'{"request_id": "x"}']) + b"\n"
    res = detector("score", stdin=data)
    assert res.returncode == 1
    assert len(res.stdout.splitlines()) == 2
    err = res.stderr.decode()
    assert "line 2: rejected: invalid_json: invalid JSON" in err
    assert "line 4: rejected: missing_field: missing required field 'ts'" in err


# Every poison class of issue #11 that a JSONL line can carry, with its rejection code.
_POISON = [
    (b'{"request_id":"a","ts":1795860000,"client_ip":"1.2.3.4","method":"GET","path":"/","headers":[],'
     b'"network":{"asn":[]}}', "invalid_type"),
    (b'{"request_id":"b","ts":1795860000,"client_ip":"1.2.3.4","method":"GET","path":"/","headers":[],'
     b'"network":{"asn":true}}', "invalid_type"),
    *[(orjson.dumps({"request_id": f"c{i}", "ts": 1795860000, "client_ip": "1.2.3.4", "method": "GET", "path": "/",
                     "headers": [], obj: {key: bad}}), "invalid_type")
      for i, (obj, key, bad) in enumerate([("network", "as_org", []), ("network", "country", {}), ("network", "hosting", []),
                                           ("attestation", "provider", []), ("attestation", "app_recognition", {"a": 1})])],
    (b'{"request_id":"d","ts":253402300700,"client_ip":"1.2.3.4","method":"GET","path":"/","headers":[]}', "out_of_range"),
    (b'{"request_id":"e","ts":"0001-01-01T00:00:00+14:00","client_ip":"1.2.3.4","method":"GET","path":"/","headers":[]}',
     "out_of_range"),
    (orjson.dumps({"request_id": "f", "ts": 1795860000, "client_ip": "1.2.3.4", "method": "GET", "path": "/",
                   "headers": [], "tls": {"ja4": "j" * 3_000_000}}), "oversized"),
    (orjson.dumps({"request_id": "g" * 8000, "ts": 1795860000, "client_ip": "1.2.3.4", "method": "GET", "path": "/",
                   "headers": []}), "oversized"),
    (b"\x01" * 1000, "invalid_json"),
    (b"\xff\xfe{}", "invalid_utf8"),
    (b"[1, 2]", "invalid_type"),
]


def test_score_writes_a_verdict_for_every_good_line_and_one_rejection_per_poison_line(tmp_path):
    good = detector("simulate", "--scenario", "mixed", "--count", "40", "--seed", "3").stdout.splitlines()
    lines: list[bytes] = []
    expected: dict[int, str] = {}
    for i, g in enumerate(good):
        lines.append(g)
        if i < len(_POISON):
            lines.append(_POISON[i][0])
            expected[len(lines)] = _POISON[i][1]
    src, rej = tmp_path / "in.jsonl", tmp_path / "rejections.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    res = detector("score", str(src), "--rejections", str(rej))
    assert res.returncode == 1
    assert b"Traceback" not in res.stderr
    verdicts = [orjson.loads(x) for x in res.stdout.splitlines()]
    assert [v["request_id"] for v in verdicts] == [orjson.loads(g)["request_id"] for g in good]
    err = res.stderr.decode().splitlines()
    assert len(err) == len(expected)
    for line, (n, code) in zip(err, sorted(expected.items())):
        assert line.startswith(f"line {n}: rejected: {code}: "), line
    rows = [orjson.loads(x) for x in rej.read_bytes().splitlines()]
    assert [(r["line"], r["code"]) for r in rows] == sorted(expected.items())


def test_a_request_whose_scoring_raises_is_rejected_and_the_others_are_scored():
    """`detector score` isolates a failure to its request (code internal_error)."""
    from agents.cli import _score_isolated

    class Req:
        def __init__(self, rid: str, ts: float):
            self.request_id, self.ts = rid, ts

    class Scorer:  # scores in event-time order like OfflineScorer; "bad" raises
        def score(self, requests):  # type: ignore[no-untyped-def]
            out = []
            for r in sorted(requests, key=lambda r: r.ts):
                if r.request_id == "bad":
                    raise KeyError("boom")
                out.append(r.request_id)
            by_id = {r: r for r in out}
            return [by_id[r.request_id] for r in requests], ["alert-" + r for r in out if r == "a3"]

    reqs = [Req("a1", 3), Req("bad", 2), Req("a3", 1)]
    verdicts, alerts, failed = _score_isolated(Scorer, reqs)
    assert verdicts == ["a1", "a3"] and alerts == ["alert-a3"]
    assert list(failed) == [1] and isinstance(failed[1], KeyError)
    assert _score_isolated(Scorer, reqs[::2])[0] == ["a1", "a3"]  # nothing raised: one pass


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


# --- a new user's mistakes: one line naming the file, exit status 2 -----------------------
def _one_line_error(res: subprocess.CompletedProcess[bytes], cmd: str, path: Path | str) -> str:
    assert res.returncode == 2, res.stderr
    err = res.stderr.decode()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith(f"detector {cmd}: {path}: "), err
    return err


def _a_request() -> bytes:
    return detector("simulate", "--count", "1", "--seed", "1").stdout


def test_score_names_a_missing_or_directory_input(tmp_path):
    assert "No such file" in _one_line_error(detector("score", str(tmp_path / "nope.jsonl")), "score",
                                             tmp_path / "nope.jsonl")
    assert "Is a directory" in _one_line_error(detector("score", str(tmp_path)), "score", tmp_path)


def test_score_checks_every_output_before_scoring_and_leaves_the_input_alone(tmp_path, capsys):
    from agents.cli import main  # in process: the checks come before any work

    request = _a_request()
    src = tmp_path / "in.jsonl"
    src.write_bytes(request)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for flag in ("-o", "--alerts", "--rejections"):
        for bad, reason in ((tmp_path / "no-dir" / "out.jsonl", "No such file"), (tmp_path, "Is a directory"),
                            (blocker / "out.jsonl", "Not a directory")):
            assert main(["score", str(src), flag, str(bad)]) == 2
            out, err = capsys.readouterr()
            assert out == "" and err == f"detector score: {bad}: {reason}" + err.split(reason, 1)[1], (flag, err)
            assert len(err.splitlines()) == 1
        assert src.read_bytes() == request
    res = detector("score", str(src), "--alerts", str(tmp_path))  # the installed command says the same
    assert "Is a directory" in _one_line_error(res, "score", tmp_path) and res.stdout == b""
    # An output that is the input is read first, then written (as before).
    assert detector("score", str(src), "-o", str(src)).returncode == 0
    assert orjson.loads(src.read_bytes())["verdict"]


def test_score_names_an_unwritable_output(tmp_path):
    import os

    if os.geteuid() == 0:
        import pytest

        pytest.skip("root may write anywhere")
    src, ro = tmp_path / "in.jsonl", tmp_path / "ro"
    src.write_bytes(_a_request())
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert "Permission denied" in _one_line_error(detector("score", str(src), "-o", str(ro / "o")), "score", ro / "o")
    finally:
        ro.chmod(0o700)


def test_a_write_that_fails_is_named_too(tmp_path):
    import pytest

    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    src = tmp_path / "in.jsonl"
    src.write_bytes(_a_request())
    assert "No space left" in _one_line_error(detector("score", str(src), "-o", "/dev/full"), "score", "/dev/full")
    assert "No space left" in _one_line_error(detector("simulate", "--count", "5", "-o", "/dev/full"), "simulate",
                                              "/dev/full")
    with open("/dev/full", "wb") as full:  # stdout itself
        res = subprocess.run([sys.executable, "-m", "agents.cli", "score", str(src)], stdout=full,
                             stderr=subprocess.PIPE, cwd=ROOT, timeout=120)
    assert res.returncode == 2 and res.stderr.decode() == "detector score: stdout: No space left on device\n"


def test_other_commands_name_their_bad_files(tmp_path):
    _one_line_error(detector("simulate", "--count", "1", "-o", str(tmp_path / "x" / "y.jsonl")), "simulate",
                    tmp_path / "x" / "y.jsonl")
    _one_line_error(detector("eval", "--plot", str(tmp_path), "--scenario", "replay"), "eval", tmp_path)
    _one_line_error(detector("config", "check", str(tmp_path / "missing.yaml")), "config check",
                    tmp_path / "missing.yaml")
    _one_line_error(detector("config", "check", str(tmp_path)), "config check", tmp_path / "detector.yaml")


def test_score_says_0_requests_for_an_empty_input(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"\n  \n")
    res = detector("score", str(empty))
    assert (res.returncode, res.stdout) == (0, b"")
    assert res.stderr.decode().strip() == f"detector score: 0 requests in {empty}"
    res = detector("score", stdin=b"")
    assert (res.returncode, res.stdout, res.stderr.decode().strip()) == (0, b"", "detector score: 0 requests in stdin")


def test_version_names_package_commit_and_engine():
    import platform
    from importlib import metadata

    res = detector("--version")
    assert res.returncode == 0, res.stderr
    out = res.stdout.decode().strip()
    assert out.startswith(f"detector {metadata.version('app-impersonation-detector')} (")
    assert f"engine python {platform.python_version()}" in out
    if (ROOT / ".git").exists():
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
        assert f"commit {head}" in out


def test_every_option_of_every_subcommand_has_help():
    import argparse

    from agents.cli import parser

    missing, seen = [], 0

    def walk(p: argparse.ArgumentParser, name: str) -> None:
        nonlocal seen
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    walk(sub, f"{name} {sub_name}")
                continue
            if isinstance(action, argparse._HelpAction):
                continue
            seen += 1
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")

    walk(parser(), "detector")
    assert seen > 40 and not missing, missing
