"""docker-compose.yml and the Dockerfile. No Docker engine runs here, so the compose
file is validated with Debian's docker-compose 1.29 (`config`, which parses and
resolves it the way `up` would) and its wiring is checked against the repository:
mounted files exist, the worker runs as one service per process role, Prometheus
discovers every replica of both, Grafana's provisioning points at the mounted
dashboards."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
# the worker's services, by the role each runs (docs/operations.md "Process roles")
WORKERS = {"detector-ingest": "ingest", "detector-shards": "shards"}


def compose_config(*args: str, env: dict[str, str] | None = None) -> str:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose not found: `make test-deps` installs Debian's docker-compose (1.29) package")
    res = subprocess.run([exe, "-f", str(COMPOSE), *args, "config"], capture_output=True, text=True, timeout=120,
                         cwd=ROOT, env={"PATH": "/usr/bin:/bin", **(env or {})})
    assert res.returncode == 0, res.stderr
    return res.stdout


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def test_docker_compose_1_29_accepts_the_file_with_and_without_the_demo_profile():
    default = yaml.safe_load(compose_config())
    demo = yaml.safe_load(compose_config("--profile", "demo"))
    # `config` lists every service; `up` starts those without a profile, and the
    # simulator only with --profile demo.
    assert set(demo["services"]) == set(default["services"]) == {
        "kafka", "topics", *WORKERS, "simulator", "prometheus", "alertmanager", "grafana"}
    assert {n: s["profiles"] for n, s in demo["services"].items() if s.get("profiles")} == {"simulator": ["demo"]}
    # every bind mount resolves to a file or directory of the repository
    for svc in demo["services"].values():
        for vol in svc.get("volumes", []):
            source = vol.split(":")[0] if isinstance(vol, str) else vol.get("source", "")
            if source.startswith("/"):
                assert Path(source).exists(), f"mounted path {source} does not exist"


def test_kafka_runs_in_kraft_mode_from_the_official_image(spec):
    kafka = spec["services"]["kafka"]
    assert re.fullmatch(r"apache/kafka:\d+\.\d+\.\d+", kafka["image"])
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller" and "CONTROLLER" in env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert "kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert len(env["CLUSTER_ID"]) == 22, "KRaft needs a base64-encoded UUID (22 characters)"
    assert kafka["healthcheck"]["test"]


def test_the_external_listener_is_advertised_under_a_host_name_other_hosts_reach():
    def kafka(env: dict[str, str] | None = None) -> tuple[list[str], Any]:
        svc = yaml.safe_load(compose_config(env=env))["services"]["kafka"]
        return svc["environment"]["KAFKA_ADVERTISED_LISTENERS"].split(","), svc["ports"]

    listeners, ports = kafka()
    assert listeners == ["PLAINTEXT://kafka:9092", "EXTERNAL://localhost:9094"]  # one machine: the default
    assert [(p["published"], p["target"]) if isinstance(p, dict) else p for p in ports] in (
        [(9094, 9094)], ["9094:9094/tcp"], ["9094:9094"])
    listeners, ports = kafka({"KAFKA_EXTERNAL_HOST": "kafka1.example.net", "KAFKA_EXTERNAL_PORT": "19094"})
    assert listeners == ["PLAINTEXT://kafka:9092", "EXTERNAL://kafka1.example.net:19094"]
    # the advertised port is the one published (on every interface: no host address)
    assert [(p["published"], p["target"]) if isinstance(p, dict) else p for p in ports] in (
        [(19094, 9094)], ["19094:9094/tcp"], ["19094:9094"])


def test_each_role_is_a_service_of_the_one_image_and_the_simulator_uses_it_too(spec):
    services = spec["services"]
    for name, role in WORKERS.items():
        w = services[name]
        assert w["build"]["context"] == "." and w["command"] == ["run", "--role", role]
        assert w["environment"]["DETECTOR_KAFKA_BOOTSTRAP"] == "kafka:9092"
        assert w["environment"]["DETECTOR_WEB_HOST"] == "0.0.0.0"
        assert "DETECTOR_ROLE" not in w["environment"], "the role is the command's, not the shared environment's"
        assert w["depends_on"]["kafka"]["condition"] == "service_healthy"
        assert w["depends_on"]["topics"]["condition"] == "service_completed_successfully"
        assert w["stop_grace_period"] == "30s"
    # one image, one configuration: the roles differ by their command alone
    ingest, shards = (services[n] for n in WORKERS)
    assert {k: v for k, v in ingest.items() if k not in ("command", "ports")} == \
        {k: v for k, v in shards.items() if k not in ("command", "ports")}
    assert ingest["environment"]["DETECTOR_APP_ID"] == shards["environment"]["DETECTOR_APP_ID"]
    assert not any(s.get("command", [None])[0] == "run" for n, s in services.items() if n not in WORKERS)
    sim = services["simulator"]
    assert sim["profiles"] == ["demo"]
    cmd = sim["command"]
    assert cmd[0] == "simulate" and cmd[cmd.index("--to") + 1] == "kafka" and "--rate" in cmd
    assert services["topics"]["command"] == ["topics", "--create"]


def test_scaled_replicas_of_a_role_get_host_ports_of_their_own_range():
    resolved = yaml.safe_load(compose_config())["services"]
    ranges = []
    for name in WORKERS:
        (port,) = resolved[name]["ports"]
        assert str(port["target"]) == resolved[name]["environment"]["DETECTOR_WEB_PORT"]
        low, high = (int(p) for p in str(port["published"]).split("-"))
        assert high > low, f"{name}: a port range, so that --scale does not collide"
        ranges.append(range(low, high + 1))
    assert not set(ranges[0]) & set(ranges[1])


def test_prometheus_scrapes_every_replica_of_both_roles_and_grafana_is_provisioned(spec):
    services = spec["services"]
    prom_cfg = yaml.safe_load((ROOT / "config" / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in prom_cfg["scrape_configs"] if j["job_name"] == "detector")
    # DNS discovery (Docker's DNS answers a service with every container of it), not a
    # static list that would miss the scaled replicas
    assert "static_configs" not in job
    (sd,) = job["dns_sd_configs"]
    assert set(sd["names"]) == set(WORKERS) and sd["type"] == "A"
    assert {str(sd["port"])} == {services[w]["environment"]["DETECTOR_WEB_PORT"] for w in WORKERS}
    assert {"source_labels": ["__meta_dns_name"], "target_label": "service"} in job["relabel_configs"]
    am = prom_cfg["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"][0]
    assert am.split(":")[0] in services
    prom_mounts = {v.split(":")[1] for v in services["prometheus"]["volumes"]}
    assert any(rf.startswith(m) for rf in prom_cfg["rule_files"] for m in prom_mounts)

    graf = services["grafana"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in graf["volumes"]}
    assert mounts["./config/grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = yaml.safe_load((ROOT / "config/grafana/provisioning/dashboards/detector.yml").read_text())["providers"][0]
    assert provider["options"]["path"] == mounts["./config/grafana/dashboards"]
    home = graf["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (ROOT / "config/grafana/dashboards" / Path(home).name).exists()
    ds = yaml.safe_load((ROOT / "config/grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"][0]
    assert ds["url"].split("//")[1].split(":")[0] in services
    for path in (ROOT / "config/grafana/dashboards").glob("*.json"):
        dash = json.loads(path.read_text())
        ds_var = next(v for v in dash["templating"]["list"] if v["type"] == "datasource")
        assert ds_var["current"]["value"] == ds["uid"], f"{path.name}: default data source is not the provisioned one"


def test_dockerfile_is_slim_non_root_and_pinned():
    text = (ROOT / "Dockerfile").read_text()
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert froms and all("slim" in f for f in froms)
    assert "-c constraints.txt" in text, "dependencies are installed with the tested pins"
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and user[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"^ENTRYPOINT \[\"detector\"\]", text, re.M)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored
    for line in re.findall(r"^COPY (?!--from)(?:--\S+ )*(.+) \S+$", text, re.M):
        for src in line.split():
            assert (ROOT / src).exists(), f"Dockerfile copies {src}, which does not exist"
            assert src not in ignored, f"Dockerfile copies {src}, which .dockerignore excludes"


def test_every_runtime_dependency_is_pinned_for_the_image():
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[re.sub(r"[-_.]+", "-", name.strip().lower())] = version.strip()
    for dep in deps:
        name = re.sub(r"[-_.]+", "-", re.split(r"[<>=!~\[; ]", dep, maxsplit=1)[0].lower())
        assert name in pins, f"{name} is not pinned in constraints.txt (run `make constraints`)"
