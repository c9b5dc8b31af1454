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

    def _listeners(self) -> list[str]:
        """The listener lines of server.properties (SecureKafkaBroker adds one)."""
        return [
            f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        ]

    def _format_args(self) -> list[str]:
        """Extra arguments of `StorageTool format` (SCRAM credentials)."""
        return []

    def _format(self) -> None:
        props = self.dir / "server.properties"
        props.write_text(
            "\n".join([
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                *self._listeners(),
                "inter.broker.listener.name=PLAINTEXT",
                "controller.listener.names=CONTROLLER",
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
             "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props), *self._format_args()],
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


class SecureKafkaBroker(KafkaBroker):
    """KafkaBroker with a second listener, SASL_SSL on `secure_port` (SCRAM-SHA-512,
    the user `SCRAM_USER` created by the storage format's `--add-scram`), its
    certificate signed by a CA made for the test (`ca_file`; the certificate names
    127.0.0.1). The PLAINTEXT listener stays for the broker itself and the controller."""

    SCRAM_USER = "detector"

    def __init__(self, password: str) -> None:
        self.password = password
        self.secure_port = free_port()
        self.tls_dir = Path(tempfile.mkdtemp(prefix="kafka-tls-"))
        self.ca_file, keystore = make_test_pki(self.tls_dir, "127.0.0.1")
        self.keystore = keystore
        super().__init__()

    @property
    def secure_bootstrap(self) -> str:
        return f"{self.host}:{self.secure_port}"

    def _listeners(self) -> list[str]:
        return [
            f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port},"
            f"SASL_SSL://127.0.0.1:{self.secure_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port},SASL_SSL://127.0.0.1:{self.secure_port}",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL",
            "sasl.enabled.mechanisms=SCRAM-SHA-512",
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config="
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            "listener.name.sasl_ssl.ssl.keystore.type=PEM",
            f"listener.name.sasl_ssl.ssl.keystore.location={self.keystore}",
        ]

    def _format_args(self) -> list[str]:
        return ["--add-scram", f"SCRAM-SHA-512=[name={self.SCRAM_USER},password={self.password}]"]

    def start(self, timeout: float = 60.0) -> KafkaBroker:
        super().start(timeout)
        deadline = time.monotonic() + timeout
        while not port_open(self.host, self.secure_port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"Kafka did not listen on {self.secure_bootstrap}; see {self.dir}")
            time.sleep(0.2)
        return self

    def cleanup(self) -> None:
        super().cleanup()
        shutil.rmtree(self.tls_dir, ignore_errors=True)


def make_test_pki(folder: Path, ip: str) -> tuple[Path, Path]:
    """A CA and a server certificate for `ip` signed by it (the `cryptography`
    package): returns the CA's PEM file and the server's PEM keystore (its key in
    PKCS#8 and its certificate, the form Kafka's `ssl.keystore.type=PEM` reads)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "detector test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kafka test broker")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip)),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_file = folder / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    keystore = folder / "broker-keystore.pem"
    keystore.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption())
                         + cert.public_bytes(serialization.Encoding.PEM))
    return ca_file, keystore


def start_tier(tier: str) -> EmbeddedBroker | KafkaBroker:
    if tier == "embedded":
        return EmbeddedBroker().start()
    return KafkaBroker().start()
