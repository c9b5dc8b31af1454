"""Prometheus configuration and alerting rules: `promtool check` and the rules' unit
tests (`promtool test rules`), and Alertmanager's configuration (`amtool`). Debian's
`prometheus` and `prometheus-alertmanager` packages provide the tools (`make test-deps`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "config" / "prometheus"
RULES = PROM / "rules" / "detector.yml"
RULE_TESTS = PROM / "tests" / "detector_test.yml"


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not found: `make test-deps` installs Debian's {package} package")
    return path


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(list(args), capture_output=True, text=True, timeout=120, cwd=cwd)
    assert res.returncode == 0, f"{' '.join(args)}:\n{res.stdout}\n{res.stderr}"
    return res


def test_alerting_rules_pass_their_promtool_unit_tests():
    out = run(tool("promtool", "prometheus"), "test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert "SUCCESS" in out.stdout + out.stderr


def test_rules_and_scrape_config_are_valid(tmp_path):
    promtool = tool("promtool", "prometheus")
    run(promtool, "check", "rules", str(RULES))
    # The shipped config names the rules by their path in the container; check it with
    # the repository's path instead, so the rule files are loaded through it too.
    cfg = (PROM / "prometheus.yml").read_text().replace("/etc/prometheus/rules/", f"{PROM / 'rules'}/")
    (tmp_path / "prometheus.yml").write_text(cfg)
    out = run(promtool, "check", "config", str(tmp_path / "prometheus.yml"))
    assert "1 rule files found" in out.stdout + out.stderr


def test_alertmanager_config_is_valid():
    run(tool("amtool", "prometheus-alertmanager"), "check-config", str(ROOT / "config" / "alertmanager" / "alertmanager.yml"))


def test_every_alert_is_unit_tested_firing_and_documented():
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r]
    assert {r["alert"] for r in rules} >= {"DetectorWorkerDown", "DetectorConsumerLagGrowing", "DetectorDeadLetterRate",
                                           "DetectorWebhookFailures", "DetectorMaliciousSurge"}
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {a["alertname"] for t in tests for a in t.get("alert_rule_test", []) if a.get("exp_alerts")}
    quiet = {a["alertname"] for t in tests for a in t.get("alert_rule_test", []) if not a.get("exp_alerts")}
    docs = (ROOT / "docs" / "operations.md").read_text()
    for r in rules:
        assert r["alert"] in fired, f"{r['alert']}: no test where it fires"
        assert r["alert"] in quiet, f"{r['alert']}: no test where it stays quiet"
        assert r["labels"]["severity"] in ("warning", "critical")
        assert r["annotations"].get("summary") and r["annotations"].get("description")
        assert r["alert"] in docs, f"{r['alert']} is not described in docs/operations.md"
