"""One config path: every config file kind rejects an unknown key with file, line and
a suggestion; DETECTOR_* variables override any key; --config takes a file or a
directory, before or after the subcommand; the core reads no environment."""

from __future__ import annotations

import ast
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from agents import settings as settings_mod
from agents.settings import env_overrides, load_detection, load_settings
from detector.config import ConfigError, YamlDocument
from detector.engine import DetectionConfig

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config"


def detector(*args: str, env: dict[str, str] | None = None, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    import os

    full = {k: v for k, v in os.environ.items() if not k.startswith("DETECTOR_")} | (env or {})
    return subprocess.run([sys.executable, "-m", "agents.cli", *args], input=stdin, capture_output=True, cwd=ROOT,
                          timeout=120, env=full)


@pytest.fixture()
def config_dir(tmp_path: Path) -> Path:
    d = tmp_path / "config"
    d.mkdir()
    shutil.copy(CONFIG / "detector.yaml", d / "detector.yaml")
    for sub in ("profiles", "devices", "fingerprints", "geo", "edges"):
        shutil.copytree(CONFIG / sub, d / sub)
    return d


def _edit(path: Path, old: str, new: str) -> int:
    """Replace the first `old` in `path`; the 1-based line of the change."""
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))
    return text[:text.index(old)].count("\n") + 1 + old[:len(old) - len(old.lstrip("\n"))].count("\n")


# (file under the config dir, text replaced, misspelled, the expected suggestion)
MISSPELLINGS = [
    ("detector.yaml", "\nweb_port: 6066", "\nweb_prot: 6067", "web_prot: unknown key (did you mean web_port?)"),
    ("detector.yaml", "\n  malicious: 0.8", "\n  malicous: 0.8", "scoring.malicous: unknown key (did you mean malicious?)"),
    ("detector.yaml", "\n  min_count: 3", "\n  min_cuont: 3", "alerts.min_cuont: unknown key (did you mean min_count?)"),
    ("detector.yaml", "threshold: 5}", "treshold: 5}", "behaviour.device_accounts.treshold: unknown key (did you mean threshold?)"),
    ("profiles/example-android.yaml", "\n  forbidden:", "\n  forbiden:", "headers.forbiden: unknown key (did you mean forbidden?)"),
    ("profiles/example-android.yaml", "\ntls:", "\ntsl:", "tsl: unknown key (did you mean tls?)"),
    ("devices/models.yaml", "\nplausibility:", "\nplausability:", "plausability: unknown key (did you mean plausibility?)"),
    ("devices/emulators.yaml", "\n    family:", "\n    famliy:", "famliy: unknown key (did you mean family?)"),
    ("fingerprints/known-stacks.yaml", "\nh2:", "\nh22:", "h22: unknown key (did you mean h2?)"),
]


@pytest.mark.parametrize("file, old, new, expected", MISSPELLINGS, ids=[m[3].split(":")[0] for m in MISSPELLINGS])
def test_config_check_names_file_line_and_key_of_a_misspelled_key(config_dir: Path, file: str, old: str, new: str,
                                                                    expected: str) -> None:
    line = _edit(config_dir / file, old, new)
    res = detector("config", "check", str(config_dir))
    err = res.stderr.decode()
    assert res.returncode == 2, err
    assert f"{config_dir / file}:{line}: " in err and expected in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_a_misspelled_webhook_key_fails_config_check(config_dir: Path) -> None:
    path = config_dir / "detector.yaml"
    lines = len(path.read_text().splitlines())
    path.write_text(path.read_text() + "webhooks:\n  - name: soc\n    url: https://soc.example.com/a\n    timeout: 3\n")
    res = detector("config", "check", str(config_dir))
    err = res.stderr.decode()
    assert res.returncode == 2
    assert f"{path}:{lines + 4}: webhooks[0].timeout: unknown key (did you mean timeout_s?)" in err, err


def test_the_shipped_config_passes_and_counts_its_webhooks() -> None:
    res = detector("config", "check")
    assert res.returncode == 0, res.stderr
    assert b"0 webhook(s)" in res.stdout


def test_a_wrong_value_type_names_the_line(config_dir: Path) -> None:
    line = _edit(config_dir / "detector.yaml", "\n  max_future_s: 300", "\n  max_future_s: soon")
    with pytest.raises(ConfigError) as exc:
        DetectionConfig.load(config_dir / "detector.yaml")
    assert exc.value.line == line and exc.value.key == "event_time.max_future_s"


# --- the alert settings that alias what runs ----------------------------------------
ALERTS_LINE = "  severity_by_count: {1: medium, 30: high, 300: critical}\n"
@pytest.mark.parametrize("old, new, problem", [
    (ALERTS_LINE, "  entity_types: [account]\n" + ALERTS_LINE, "must be [device, account]"),
    (ALERTS_LINE, "  allowed_lateness_s: 60\n" + ALERTS_LINE, "is behaviour.allowed_lateness_s (120), got 60"),
    (ALERTS_LINE, "  max_open_windows: 5000\n" + ALERTS_LINE, "is behaviour.max_entities (200000"),
])
def test_alert_alias_settings_only_take_the_values_that_run(config_dir: Path, old: str, new: str, problem: str) -> None:
    line = _edit(config_dir / "detector.yaml", old, new)
    with pytest.raises(ConfigError) as exc:
        DetectionConfig.load(config_dir / "detector.yaml")
    assert problem in str(exc.value) and exc.value.line == line


def test_alert_alias_settings_accept_the_values_that_run(config_dir: Path) -> None:
    _edit(config_dir / "detector.yaml", ALERTS_LINE, "  entity_types: [account, device]\n  allowed_lateness_s: 130\n"
          "  max_open_windows: 200000\n" + ALERTS_LINE)
    _edit(config_dir / "detector.yaml", "  allowed_lateness_s: 120\n", "  allowed_lateness_s: 130\n")
    cfg = DetectionConfig.load(config_dir / "detector.yaml")
    assert cfg.behaviour.allowed_lateness_s == 130


def test_the_setting_that_runs_can_be_overridden_alone(config_dir: Path) -> None:
    (data,) = [YamlDocument(config_dir / "detector.yaml").data]
    overrides = env_overrides(data, {"DETECTOR_BEHAVIOUR__ALLOWED_LATENESS_S": "60"})
    cfg = DetectionConfig.load(config_dir / "detector.yaml", overrides)
    assert cfg.behaviour.allowed_lateness_s == 60


# --- environment overrides -------------------------------------------------------------
def test_scoring_override_changes_verdict_levels_through_the_cli() -> None:
    events = detector("simulate", "--scenario", "fingerprint_spoofing", "--count", "200", "--seed", "3").stdout
    base = [orjson.loads(v)["verdict"] for v in detector("score", stdin=events).stdout.splitlines()]
    strict = detector("score", stdin=events, env={"DETECTOR_SCORING__MALICIOUS": "0.99"})
    levels = [orjson.loads(v)["verdict"] for v in strict.stdout.splitlines()]
    assert len(levels) == len(base) == 200
    assert base.count("malicious") == 200 and levels.count("malicious") == 0, (base.count("malicious"), levels.count("malicious"))


def test_nested_overrides_reach_every_section(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DETECTOR_ALERTS__MIN_COUNT", "7")
    monkeypatch.setenv("DETECTOR_SCORING__WEIGHTS__UA_MISSING", "0.25")
    monkeypatch.setenv("DETECTOR_BEHAVIOUR__DEVICE_ACCOUNTS__THRESHOLD", "9")
    monkeypatch.setenv("DETECTOR_EVENT_TIME__MAX_FUTURE_S", "60")
    monkeypatch.setenv("DETECTOR_DEFAULT_PROFILE", "example-android")
    cfg = load_detection()
    assert cfg.alerts.min_count == 7 and cfg.scoring.weights["ua.missing"] == 0.25
    assert cfg.behaviour.device_accounts.threshold == 9 and cfg.event_time.max_future_s == 60


def test_verdicts_emit_defaults_to_all_and_takes_flagged_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_detection().verdicts_emit == "all"
    monkeypatch.setenv("DETECTOR_VERDICTS__EMIT", "flagged")
    assert load_detection().verdicts_emit == "flagged"
    monkeypatch.setenv("DETECTOR_VERDICTS__EMIT", "clean")
    with pytest.raises(ConfigError) as exc:
        load_detection()
    assert "verdicts.emit" in str(exc.value) and "(from DETECTOR_VERDICTS__EMIT)" in str(exc.value)


def test_flat_runtime_names_keep_working(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DETECTOR_WEB_PORT", "7001")
    monkeypatch.setenv("DETECTOR_KAFKA_BOOTSTRAP", "kafka:9093")
    monkeypatch.setenv("DETECTOR_APP_ID", "det-2")
    s = load_settings()
    assert (s.web_port, s.kafka_bootstrap, s.app_id) == (7001, "kafka:9093", "det-2")


def test_a_bad_override_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DETECTOR_SCORING__MALICIOUS", "high")
    with pytest.raises(ConfigError) as exc:
        load_detection()
    assert "scoring.malicious" in str(exc.value) and "(from DETECTOR_SCORING__MALICIOUS)" in str(exc.value)


def test_an_unknown_variable_is_one_warning_and_reserved_names_none(monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(settings_mod, "_warned", set())
    env = {"DETECTOR_SCORNG__MALICIOUS": "0.9", "DETECTOR_LOG_FORMAT": "text", "DETECTOR_TEST_TIERS": "unit",
           "DETECTOR_BUILD_COMMIT": "abc", "DETECTOR_CONFIG": str(CONFIG), "DETECTOR_WEB_PORT": "1"}
    with caplog.at_level(logging.WARNING, "detector.config"):
        assert env_overrides({}, env) == []
        env_overrides({}, env)  # warned once per process
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "ignoring environment variable DETECTOR_SCORNG__MALICIOUS"]


def test_a_secret_the_file_names_is_not_warned_about(monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(settings_mod, "_warned", set())
    data = {"webhooks": [{"name": "soc", "url": "https://x", "secret": {"env": "DETECTOR_SOC_SECRET"}}]}
    with caplog.at_level(logging.WARNING, "detector.config"):
        assert env_overrides(data, {"DETECTOR_SOC_SECRET": "s"}) == []
    assert not caplog.records


def test_reserved_names_are_documented() -> None:
    ops = (ROOT / "docs" / "operations.md").read_text()
    for name in settings_mod.RESERVED_ENV:
        assert f"`{name}`" in ops, name


# --- --config forms ------------------------------------------------------------------
@pytest.mark.parametrize("args", [
    ["--config", "config", "config", "check"],
    ["config", "check", "--config", "config"],
    ["--config", "config/detector.yaml", "score", "/dev/null"],
    ["score", "--config", "config", "/dev/null"],
])
def test_config_takes_a_file_or_a_directory_before_or_after_the_subcommand(args: list[str]) -> None:
    res = detector(*args)
    assert res.returncode == 0, res.stderr


def test_config_after_the_subcommand_is_the_one_used(config_dir: Path) -> None:
    _edit(config_dir / "detector.yaml", "\nweb_port: 6066", "\nweb_prot: 6066")
    assert detector("score", "--config", str(config_dir), "/dev/null").returncode == 2
    assert detector("--config", str(config_dir), "score", "/dev/null").returncode == 2


# --- the core reads no environment -----------------------------------------------------
def test_the_core_reads_no_environment() -> None:
    problems = []
    for path in (ROOT / "detector").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "environb", "putenv"):
                problems.append(f"{path.relative_to(ROOT)}:{node.lineno} os.{node.attr}")
            if isinstance(node, ast.ImportFrom) and node.module == "os" and any(
                    a.name in ("environ", "getenv") for a in node.names):
                problems.append(f"{path.relative_to(ROOT)}:{node.lineno} imports os.{node.names[0].name}")
    assert not problems, problems


def test_profile_secrets_come_from_the_resolver_the_shell_passes(config_dir: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    prof = config_dir / "profiles" / "example-android.yaml"
    text = prof.read_text()
    start = text.index("secret: {demo:")
    end = text.index("}", start) + 1
    prof.write_text(text[:start] + "secret: {env: ES_KEY_1}" + text[end:])
    with pytest.raises(ConfigError, match="environment variable ES_KEY_1 is not set"):
        DetectionConfig.load(config_dir / "detector.yaml")
    cfg = DetectionConfig.load(config_dir / "detector.yaml", secrets={"ES_KEY_1": "s3cret"}.get)
    keys = cfg.profiles["example-android"].signing.keys  # type: ignore[union-attr]
    assert any(k.secret == b"s3cret" and not k.demo for k in keys.values())
    monkeypatch.setenv("ES_KEY_1", "from-env")
    keys = load_detection(config_dir).profiles["example-android"].signing.keys  # type: ignore[union-attr]
    assert any(k.secret == b"from-env" for k in keys.values())


def test_the_webhooks_list_is_not_overridden_and_says_so(config_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    (data,) = [YamlDocument(config_dir / "detector.yaml").data]
    with caplog.at_level(logging.WARNING, logger="detector.config"):
        out = env_overrides(data, {"DETECTOR_WEBHOOKS": '[{name: x, url: "http://example.com/x"}]'})
    assert out == []
    assert "DETECTOR_WEBHOOKS" in caplog.text and "from the file only" in caplog.text
