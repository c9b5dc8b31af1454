"""Process roles (`detector run --role all|ingest|shards`, setting `role`,
$DETECTOR_ROLE): how the role is read and checked, and what the worker built for each
role runs. The roles running side by side on a broker: tests/integration/test_roles.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from agents.app import build_app
from agents.cli import parser
from agents.metrics import Metrics
from agents.settings import load_settings
from detector.config import ConfigError
from detector.engine import DetectionConfig

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DETECTOR_")}
    # port 9 (discard): should a role be accepted by mistake, the worker fails fast
    return subprocess.run([sys.executable, "-m", "agents.cli", "run", "--bootstrap", "127.0.0.1:9", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=60, env={**clean, **(env or {})})


def test_an_unknown_role_on_the_command_line_exits_2_naming_the_roles():
    res = run("--role", "ingester")
    assert res.returncode == 2
    assert "argument --role: invalid choice: 'ingester' (choose from 'all', 'ingest', 'shards')" in res.stderr


def test_an_unknown_role_in_the_environment_exits_2_naming_the_variable():
    res = run(env={"DETECTOR_ROLE": "shard"})
    assert res.returncode == 2
    assert "configuration error" in res.stderr and "role: Input should be 'all', 'ingest' or 'shards'" in res.stderr
    assert "(from DETECTOR_ROLE)" in res.stderr


def test_an_unknown_role_in_the_settings_file_names_its_file_and_line(tmp_path, monkeypatch):
    monkeypatch.delenv("DETECTOR_ROLE", raising=False)
    text = (ROOT / "config" / "detector.yaml").read_text().replace("\nrole: all\n", "\nrole: everything\n")
    assert "role: everything" in text
    (tmp_path / "detector.yaml").write_text(text)
    with pytest.raises(ConfigError) as err:
        load_settings(tmp_path / "detector.yaml")
    line = text.splitlines().index("role: everything") + 1
    assert f"detector.yaml:{line}" in str(err.value) and "role" in str(err.value)


def test_the_role_is_all_by_default_and_set_by_the_environment_or_the_command_line(monkeypatch):
    monkeypatch.delenv("DETECTOR_ROLE", raising=False)
    assert load_settings().role == "all"
    monkeypatch.setenv("DETECTOR_ROLE", "shards")
    assert load_settings().role == "shards"
    assert load_settings(role="ingest").role == "ingest"  # what `run --role ingest` passes: it wins
    assert parser().parse_args(["run", "--role", "ingest"]).role == "ingest"
    assert parser().parse_args(["run"]).role is None  # then the settings decide


def worker(role: str, detection: DetectionConfig) -> tuple[object, str]:
    metrics = Metrics(CollectorRegistry())
    app = build_app(load_settings(role=role, web_enabled=False), detection, metrics)
    return app, generate_latest(metrics.registry).decode()


@pytest.mark.parametrize("role", ["all", "ingest", "shards"])
def test_each_role_builds_only_its_stages(role, detection):
    app, text = worker(role, detection)
    parts = app.detector  # type: ignore[attr-defined]
    assert parts.role == role and parts.link is not None
    assert (parts.ingest is not None) == (role in ("all", "ingest"))
    assert (parts.shard is not None) == (role in ("all", "shards"))
    agents = set(app.agents)  # type: ignore[attr-defined]
    tables = set(app.tables)  # type: ignore[attr-defined]
    if role == "ingest":
        # no entity-shard agent, no state table (no changelog recovery), no Faust
        # consumer: the process never joins the shards' consumer group
        assert agents == set() and tables == set()
        assert list(app.boot_strategy.kafka_consumer()) == []  # type: ignore[attr-defined]
        assert list(app.boot_strategy.tables()) == []  # type: ignore[attr-defined]
    else:
        assert {a.split(".")[-1] for a in agents} == {"entity-shard"}
        assert tables == {"behaviour-state"}
        assert list(app.boot_strategy.kafka_consumer())  # type: ignore[attr-defined]
    assert f'detector_worker_info{{role="{role}",version="' in text
    assert text.count("detector_worker_info{") == 1


def test_the_shard_role_reads_the_changelog_limit_and_forgets_positions_when_the_broker_lost_its_log(detection):
    app, _ = worker("shards", detection)
    parts = app.detector  # type: ignore[attr-defined]
    assert "detector-behaviour-state-changelog" in parts.link.limit_topics
    assert parts.shard.forget_positions in parts.link.on_log_lost
    ingest_app, _ = worker("ingest", detection)
    ingest_parts = ingest_app.detector  # type: ignore[attr-defined]
    assert "detector-behaviour-state-changelog" not in ingest_parts.link.limit_topics
    assert ingest_parts.link.on_log_lost == [] and ingest_parts.ingest.broker is ingest_parts.link.health


class _Event:
    def __init__(self, is_set: bool):
        self._set = is_set

    def is_set(self) -> bool:
        return self._set


def test_a_shard_process_is_ready_once_its_first_assignment_is_restored_and_the_broker_answers(detection):
    from agents.app import _not_ready

    app, _ = worker("shards", detection)
    parts = app.detector  # type: ignore[attr-defined]
    recovery = app.tables.recovery  # type: ignore[attr-defined]
    recovery.completed = _Event(False)
    assert "no assignment yet" in (_not_ready(app, parts) or "")
    recovery.completed = _Event(True)
    assert _not_ready(app, parts) is None
    for _ in range(parts.link.health.unready_failures):
        parts.link.failed("metadata", OSError("connection refused"))
    assert (_not_ready(app, parts) or "").startswith("broker unreachable: ")
