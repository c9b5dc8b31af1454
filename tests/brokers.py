"""The two broker tiers of the integration tests: the embedded broker (Tansu) and
real Apache Kafka in KRaft mode, started from the jars tests/kafka/fetch.sh fetched
from Maven Central (formatted with kafka.tools.StorageTool, run with kafka.Kafka)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from agents.tools.broker import EmbeddedBroker, free_port, port_open

KAFKA_DIR = Path(__file__).resolve().parent / "kafka"
KAFKA_LIBS = KAFKA_DIR / "target" / "libs"


def kafka_available() -> tuple[bool, str]:
    if not shutil.which("java"):
        return False, "java not found: the Apache Kafka tier needs Java 17 and Maven"
    if not glob.glob(str(KAFKA_LIBS / "kafka_2.13-*.jar")):
        if not shutil.which("mvn"):
            return False, "mvn not found and Kafka jars not fetched (tests/kafka/fetch.sh)"
        result = subprocess.run(["bash", str(KAFKA_DIR / "fetch.sh")], capture_output=True, text=True)
        if result.returncode != 0:
            return False, f"fetching Kafka jars failed: {result.stderr.strip()[-500:]}"
    return True, ""


class KafkaBroker:
    """Apache Kafka 3.9 (KRaft, combined broker+controller) on free loopback ports.
    `restart()` keeps the log directory: data survives, unlike the embedded broker."""

    def __init__(self) -> None:
        self.port = free_port()
        self.controller_port = free_port()
        self.host = "127.0.0.1"
        self.dir = Path(tempfile.mkdtemp(prefix="kafka-tier-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.classpath = str(KAFKA_LIBS / "*")
        self._format()

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def _format(self) -> None:
        props = self.dir / "server.properties"
        props.write_text(
            "\n".join([
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                "controller.listener.names=CONTROLLER",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                f"log.dirs={self.dir / 'data'}",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=4",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                "num.partitions=1",
                "auto.create.topics.enable=true",
            ]) + "\n"
        )
        (self.dir / "log4j.properties").write_text(
            "log4j.rootLogger=WARN, file\nlog4j.appender.file=org.apache.log4j.FileAppender\n"
            f"log4j.appender.file.File={self.dir / 'kafka.log'}\n"
            "log4j.appender.file.layout=org.apache.log4j.PatternLayout\n"
            "log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
        )
        cluster_id = subprocess.run(
            ["java", "-cp", self.classpath, "kafka.tools.StorageTool", "random-uuid"],
            capture_output=True, text=True, check=True,
        ).stdout.strip() or uuid.uuid4().hex[:22]
        subprocess.run(
            ["java", "-cp", self.classpath, f"-Dlog4j.configuration=file:{self.dir / 'log4j.properties'}",
             "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)],
            capture_output=True, text=True, check=True,
        )

    def start(self, timeout: float = 60.0) -> KafkaBroker:
        env = {**os.environ, "KAFKA_HEAP_OPTS": "-Xmx512m"}
        with open(self.dir / "stdout.log", "ab") as log:  # the child has its own copy
            self.proc = subprocess.Popen(
                ["java", "-Xmx512m", "-XX:+UseSerialGC", "-cp", self.classpath,
                 f"-Dlog4j.configuration=file:{self.dir / 'log4j.properties'}",
                 "kafka.Kafka", str(self.dir / "server.properties")],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Kafka exited with {self.proc.returncode}; see {self.dir}")
            if port_open(self.host, self.port):
                return self
            time.sleep(0.2)
        raise RuntimeError(f"Kafka did not listen on {self.bootstrap} within {timeout} s; see {self.dir}")

    def stop(self, kill: bool = False, grace: float = 30.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        if kill:
            proc.kill()
        else:
            proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def start_tier(tier: str) -> EmbeddedBroker | KafkaBroker:
    if tier == "embedded":
        return EmbeddedBroker().start()
    return KafkaBroker().start()
