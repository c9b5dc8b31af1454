"""Where demo and bench keep their logs (agents/tools/rundir.py)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from agents.tools.rundir import RunDir


def test_a_temporary_run_directory_is_named_per_run_and_removed_after_a_normal_end():
    a, b = RunDir("demo"), RunDir("demo")
    assert a.path != b.path and a.path.parent == b.path.parent == Path(tempfile.gettempdir())
    assert a.path.name.startswith("detector-demo-") and a.path.is_dir()
    (a.path / "worker.log").write_text("x")
    assert a.finish(ok=True) == f"logs removed ({a.path}; --log-dir keeps them)"
    assert not a.path.exists()
    assert b.finish(ok=False) == f"logs kept in {b.path}"
    assert b.path.is_dir()
    b.path.rmdir()


def test_a_log_dir_asked_for_is_created_and_always_kept(tmp_path):
    d = RunDir("bench", tmp_path / "logs" / "run1")
    assert d.path == tmp_path / "logs" / "run1" and d.path.is_dir()
    (d.path / "broker.log").write_text("x")
    assert d.finish(ok=True) == f"logs kept in {d.path}"
    assert (d.path / "broker.log").exists()
