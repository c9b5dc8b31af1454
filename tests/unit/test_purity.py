"""detector/ stays pure: no Kafka, Faust, HTTP or metrics libraries, no clock reads."""

from __future__ import annotations

import ast
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
