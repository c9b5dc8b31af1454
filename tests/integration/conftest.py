"""Fixtures of the integration tests: real worker processes against the broker tiers."""

from __future__ import annotations

import subprocess

import pytest

from agents.tools.broker import free_port
from agents.tools.demo import start_worker, stop_process


@pytest.fixture
def worker_factory(broker, tmp_path):
    procs: list[subprocess.Popen[bytes]] = []

    def start(**env: str) -> tuple[subprocess.Popen[bytes], int]:
        port = free_port()
        proc = start_worker(broker.bootstrap, port, tmp_path / "worker.log", extra_env=env)
        procs.append(proc)
        return proc, port

    yield start
    for p in procs:
        stop_process(p)
