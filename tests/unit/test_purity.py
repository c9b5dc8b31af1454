"""detector/ stays pure: no Kafka, Faust, HTTP or metrics libraries, no clock reads."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "detector"
FORBIDDEN_MODULES = {"faust", "mode", "aiokafka", "kafka", "aiohttp", "httpx", "requests", "urllib3", "prometheus_client",
                     "socket", "asyncio"}
FORBIDDEN_CALLS = {("time", "time"), ("time", "monotonic"), ("datetime", "now"), ("datetime", "utcnow"), ("date", "today")}


def test_core_imports_no_io_library_and_reads_no_clock():
    problems = []
    for path in CORE.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                names = []
            for n in names:
                if n.split(".")[0] in FORBIDDEN_MODULES:
                    problems.append(f"{path.name}:{node.lineno} imports {n}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name):
                if (node.func.value.id, node.func.attr) in FORBIDDEN_CALLS:
                    problems.append(f"{path.name}:{node.lineno} reads the clock ({node.func.value.id}.{node.func.attr})")
    assert not problems, problems



SHELL = CORE.parent / "agents"
# What the detection path and the service must never load: the simulator and the tools.
NOT_IN_SERVICE = ("detector.simulate", "agents.tools")


def _modules(root: Path, skip: set[str]) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if len(parts) > 1 and parts[1] in skip:
            continue
        out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


def test_detection_path_and_service_never_import_the_simulator_or_the_tools():
    # Every module of detector/ outside the simulator, and of agents/ outside the tools
    # and the CLI (which imports each tool in its command), in a fresh interpreter: this
    # test process has the simulator loaded by other tests.
    modules = _modules(CORE, {"simulate"}) + _modules(SHELL, {"tools", "cli"})
    assert {"detector.pipeline", "detector.behaviour.engine", "agents.app", "agents.ingest", "agents.shards"} <= set(modules)
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            f"print(sorted(m for m in sys.modules if m.startswith({NOT_IN_SERVICE!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=CORE.parent).stdout.strip()
    assert out == "[]", f"the detection path or the service imports: {out}"
