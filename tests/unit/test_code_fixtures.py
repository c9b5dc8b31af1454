"""Golden fixtures per signal code (tests/fixtures/codes/, written by
scripts/build_code_fixtures.py): each `<code>.jsonl` is scored through the path
`detector score` takes (decode with the configured limits, OfflineScorer, a fixed
reference time) and must give its `<code>.expected.json`: the code appears (in a
verdict or as a raised behaviour flag), its `must_not` codes do not, and every
verdict's codes and the raised flags are the golden ones. Every code documented in
docs/detections.md has a fixture, a weight and a declaration, and nothing else does."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from detector.behaviour.engine import behaviour_codes
from detector.behaviour.offline import OfflineScorer
from tests.codes import CODES, FIXTURES, config_for, expected, requests

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTED = re.findall(r"^\| `([a-z0-9_]+\.[a-z0-9_]+)` \|", (ROOT / "docs" / "detections.md").read_text(), re.M)


def test_every_documented_code_has_a_fixture_a_weight_and_a_declaration(detection):
    assert len(DOCUMENTED) == len(set(DOCUMENTED)), "a code is documented twice"
    documented = set(DOCUMENTED)
    declared = set(detection.pipeline().codes) | set(behaviour_codes())
    assert documented == set(CODES), (f"documented without a fixture: {sorted(documented - set(CODES))}; "
                                      f"fixture of an undocumented code: {sorted(set(CODES) - documented)}")
    assert documented == set(detection.scoring.weights), "docs/detections.md and scoring.weights list other codes"
    assert documented == declared, "docs/detections.md and the checks' and detectors' declared codes differ"


@pytest.mark.parametrize("code", CODES)
def test_fixture_gives_its_codes(code, detection):
    want = expected(code)
    assert want["code"] == code and code in want["must"]
    cfg = config_for(detection, code)
    scorer = OfflineScorer(cfg, reference_time=want["reference_time"])
    verdicts, _ = scorer.score(requests(cfg, code))
    got = [[s.code for s in v.signals] for v in verdicts]
    flags = sorted({f"{etype}:{f.code}" for (etype, _), fl in scorer.flags.current().items() for f in fl})
    seen = {c for codes in got for c in codes} | {f.split(":", 1)[1] for f in flags}
    assert set(want["must"]) <= seen, f"{code}: missing {sorted(set(want['must']) - seen)}"
    assert not seen & set(want["must_not"]), f"{code}: unexpected {sorted(seen & set(want['must_not']))}"
    assert scorer.future == 0 and scorer.late == 0  # the reference time covers every request; none dropped
    assert got == want["verdicts"], f"{code}: verdict codes differ from the golden ones"
    assert flags == want["flags"], f"{code}: raised flags differ from the golden ones"


def test_stateless_fixtures_have_a_clean_control(detection):
    """A stateless fixture is a genuine request of one user and one changed request of
    another: the control gives no signal, so the change alone raises the code."""
    stateless = set(detection.pipeline().codes)
    for code in sorted(stateless & set(CODES)):
        verdicts = expected(code)["verdicts"]
        assert len(verdicts) == 2 and verdicts[0] == [] and code in verdicts[1], code


def test_detector_score_gives_the_golden_codes(tmp_path):
    """The command itself on one behaviour fixture: the same codes per verdict."""
    code = "replay.device_replayed"
    want = expected(code)
    res = subprocess.run([sys.executable, "-m", "agents.cli", "score", str(FIXTURES / f"{code}.jsonl"),
                          "--reference-time", str(want["reference_time"])], capture_output=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    got = [[s["code"] for s in orjson.loads(line)["signals"]] for line in res.stdout.splitlines()]
    assert got == want["verdicts"]


def test_committed_fixtures_equal_the_script_output(detection):
    """The fixtures are what scripts/build_code_fixtures.py writes today: a change to the
    simulator's genuine traffic or to what a fixture gives shows here and in the diff
    of a regeneration."""
    spec = importlib.util.spec_from_file_location("build_code_fixtures", ROOT / "scripts" / "build_code_fixtures.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    files = mod.render(detection)
    committed = {p.name: p.read_bytes() for p in FIXTURES.glob("*.json*")}
    assert sorted(files) == sorted(committed)
    stale = [name for name in files if files[name] != committed[name]]
    assert not stale, f"{stale[:3]} stale: run .venv/bin/python scripts/build_code_fixtures.py"
