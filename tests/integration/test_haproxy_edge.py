"""End to end through a real edge: Debian's HAProxy 2.6 terminating TLS (a test
certificate for api.example-social.test) in front of a small backend, logging with
the shipped log-format (config/edges/haproxy/haproxy.cfg.example) to rsyslog, whose
omkafka (config/edges/haproxy/rsyslog-kafka.conf.example) puts each line into
client-requests; a real worker with input_format haproxy turns them into verdicts.

The clients are real stacks of this machine (curl, Python urllib, requests, httpx
over HTTP/2, Node, Java's HttpClient over HTTP/2, whichever exist), each resolving
the name to loopback its own way so it sends the SNI. Each first sends its hello to
a capture listener (the entries of this run: raw ClientHello -> JA3 by the project's
own parser), then its request through HAProxy; each client's verdict must carry the
JA3 of its own captured hello, which names its stack among the entries, and the
partial JA4 whose parts a and b are that hello's.

HAProxy, rsyslogd and the backend run as unprivileged-port processes in the test's
tmp dir; nothing of the system's services is touched. Where the packages are missing
the test skips, unless it runs as root: then `make test-deps` should have installed
them, and the test fails."""

from __future__ import annotations

import asyncio
import datetime as dt
import http.server
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from agents.tools.broker import free_port
from agents.topics import CLIENT_REQUESTS, VERDICTS, create_topics
from detector.adapters import haproxy as adapter
from detector.fingerprints.tls import ClientHelloError, fingerprint, parse_client_hello

ROOT = Path(__file__).resolve().parents[2]
EDGE_CONFIG = ROOT / "config" / "edges" / "haproxy"
HOST = "api.example-social.test"
OMKAFKA = [Path("/usr/lib/x86_64-linux-gnu/rsyslog/omkafka.so"), Path("/usr/lib/rsyslog/omkafka.so")]
CLIENT_TIMEOUT_S = 60.0

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.timeout(240)]


def _require_packages() -> None:
    missing = [what for what, ok in (("haproxy", shutil.which("haproxy")), ("rsyslogd", shutil.which("rsyslogd")),
                                     ("rsyslog-kafka (omkafka.so)", any(p.exists() for p in OMKAFKA))) if not ok]
    if not missing:
        return
    why = f"missing {', '.join(missing)}: `make test-deps` installs Debian's haproxy and rsyslog-kafka"
    if os.geteuid() == 0:  # the packages could have been installed here: not a reason to skip
        pytest.fail(why)
    pytest.skip(why)


def _catcher_module() -> Any:
    """scripts/capture_client_hellos.py: the capture listener the project's
    tests/data/client_hellos.json was recorded with."""
    script = ROOT / "scripts" / "capture_client_hellos.py"
    spec = importlib.util.spec_from_file_location("capture_client_hellos", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


# --- the test certificate, the backend ------------------------------------------------
def _certificate(tmp: Path) -> tuple[Path, Path]:
    """(HAProxy's PEM of certificate and key, the CA file clients trust)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(HOST)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    ca = tmp / "ca.pem"
    ca.write_bytes(pem)
    site = tmp / "site.pem"
    site.write_bytes(pem + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
    return site, ca


class _Backend(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = b'{"ok":true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
        pass


# --- the shipped configs, pointed at this test's ports and files ------------------------
def _haproxy_config(tmp: Path, site: Path, port: int, syslog_port: int, backend_port: int) -> Path:
    text = (EDGE_CONFIG / "haproxy.cfg.example").read_text()
    for old, new in ((r"bind :443 ssl crt \S+", f"bind 127.0.0.1:{port} ssl crt {site}"),
                     (r"log 127\.0\.0\.1:514 ", f"log 127.0.0.1:{syslog_port} "),
                     (r"server app 127\.0\.0\.1:8080", f"server app 127.0.0.1:{backend_port}")):
        text, n = re.subn(old, new, text)
        assert n == 1, f"haproxy.cfg.example has no line matching {old!r}"
    path = tmp / "haproxy.cfg"
    path.write_text(text)
    return path


def _rsyslog_config(tmp: Path, syslog_port: int, bootstrap: str) -> Path:
    text = (EDGE_CONFIG / "rsyslog-kafka.conf.example").read_text()
    brokers = ", ".join(f'"{b}"' for b in bootstrap.split(","))
    for old, new in ((r'port="514"', f'port="{syslog_port}"'),
                     (r'broker=\["127\.0\.0\.1:9092"\]', f"broker=[{brokers}]")):
        text, n = re.subn(old, new, text)
        assert n == 1, f"rsyslog-kafka.conf.example has no text matching {old!r}"
    work = tmp / "rsyslog"
    work.mkdir()
    path = tmp / "rsyslog.conf"
    path.write_text(f'global(workDirectory="{work}")\n' + text)
    return path


# --- the clients -------------------------------------------------------------------------
_PY_RESOLVE = textwrap.dedent(f"""
    import socket
    _gai = socket.getaddrinfo
    socket.getaddrinfo = lambda host, *a, **k: _gai("127.0.0.1" if host == {HOST!r} else host, *a, **k)
""")

_NODE = """
const https = require('https'), fs = require('fs');
const lookup = (host, opts, cb) => opts && opts.all ? cb(null, [{address: '127.0.0.1', family: 4}]) : cb(null, '127.0.0.1', 4);
const req = https.get(process.argv[1], {lookup, ca: fs.readFileSync(process.argv[2]), timeout: 10000}, (res) => res.resume());
req.on('error', () => {}); req.on('timeout', () => req.destroy());
"""

_JAVA = """
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.time.Duration;

public class Get {
    public static void main(String[] args) {
        HttpClient client = HttpClient.newBuilder().version(HttpClient.Version.HTTP_2)
            .connectTimeout(Duration.ofSeconds(10)).build();
        HttpRequest req = HttpRequest.newBuilder(URI.create(args[0])).timeout(Duration.ofSeconds(10)).GET().build();
        try {
            client.send(req, HttpResponse.BodyHandlers.discarding());
        } catch (Exception e) {
            // the capture listener hangs up mid-handshake
        }
    }
}
"""


def _python(body: str) -> Callable[[str, int, Path, Path], list[str]]:
    def cmd(url: str, port: int, ca: Path, tmp: Path) -> list[str]:
        return [sys.executable, "-c", _PY_RESOLVE + textwrap.dedent(body).format(url=url, ca=str(ca))]
    return cmd


def _curl(url: str, port: int, ca: Path, tmp: Path) -> list[str]:
    return ["curl", "-sS", "-o", "/dev/null", "--max-time", "10", "--cacert", str(ca),
            "--resolve", f"{HOST}:{port}:127.0.0.1", url]


def _node(url: str, port: int, ca: Path, tmp: Path) -> list[str]:
    return ["node", "-e", _NODE, url, str(ca)]


def _java(url: str, port: int, ca: Path, tmp: Path) -> list[str]:
    src, hosts, store = tmp / "Get.java", tmp / "hosts", tmp / "truststore.p12"
    if not src.exists():
        src.write_text(_JAVA)
        hosts.write_text(f"127.0.0.1 {HOST}\n")
        subprocess.run(["keytool", "-importcert", "-noprompt", "-alias", "test", "-file", str(ca), "-keystore",
                        str(store), "-storetype", "PKCS12", "-storepass", "changeit"],
                       check=True, capture_output=True, timeout=60)
    # jdk.net.hosts.file: the JDK's own resolver override, so the SNI stays the name
    return ["java", f"-Djdk.net.hosts.file={hosts}", f"-Djavax.net.ssl.trustStore={store}",
            "-Djavax.net.ssl.trustStorePassword=changeit", "-Djavax.net.ssl.trustStoreType=PKCS12", str(src), url]


_TRY = "try:\n    {call}\nexcept Exception:\n    pass\n"
CLIENTS: dict[str, tuple[str | None, Callable[[str, int, Path, Path], list[str]]]] = {
    # name: (the command it needs on PATH, None for this interpreter; its command line)
    "curl": ("curl", _curl),
    "python-urllib": (None, _python(_TRY.format(
        call="import ssl, urllib.request; urllib.request.urlopen('{url}', timeout=10, "
             "context=ssl.create_default_context(cafile='{ca}')).read()"))),
    "python-requests": (None, _python(_TRY.format(
        call="import requests; requests.get('{url}', verify='{ca}', timeout=10)"))),
    "python-httpx-h2": (None, _python(_TRY.format(
        call="import httpx; httpx.Client(http2=True, verify='{ca}', timeout=10).get('{url}')"))),
    "nodejs-https": ("node", _node),
    "java17-httpclient-h2": ("java", _java),
}


def _run_client(name: str, url: str, port: int, ca: Path, tmp: Path) -> None:
    cmd = CLIENTS[name][1](url, port, ca, tmp)
    subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=CLIENT_TIMEOUT_S, check=False)


def _capture(names: list[str], ca: Path, tmp: Path) -> dict[str, tuple[str, str]]:
    """The entries of this run: each client's (JA3, JA4), from the raw ClientHello it
    sent to a capture listener, by the project's own parser."""
    catcher = _catcher_module().HelloCatcher()
    out: dict[str, tuple[str, str]] = {}
    try:
        for name in names:
            catcher.drain()
            _run_client(name, f"https://{HOST}:{catcher.port}/", catcher.port, ca, tmp)
            try:
                raw = catcher.hellos.get(timeout=10)
            except Exception as exc:  # noqa: BLE001 - named in the assertion
                raise AssertionError(f"{name} sent no ClientHello to the capture listener: {exc!r}") from None
            assert isinstance(raw, bytes), f"{name}: capture failed: {raw!r}"
            try:
                fp = fingerprint(parse_client_hello(raw))
                out[name] = (fp.ja3, fp.ja4)
            except ClientHelloError as exc:
                raise AssertionError(f"{name}: captured hello does not parse: {exc}") from None
    finally:
        catcher.close()
    return out


# --- the test ----------------------------------------------------------------------------
async def _read(bootstrap: str, want: set[str], timeout: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the log lines by client, the verdicts by request id) once every client in
    `want` has a log line with a verdict, or at the timeout."""
    lines: dict[str, Any] = {}
    verdicts: dict[str, Any] = {}
    c = AIOKafkaConsumer(CLIENT_REQUESTS.name, VERDICTS.name, bootstrap_servers=bootstrap, group_id=None,
                         auto_offset_reset="earliest")
    await c.start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for tp, msgs in (await c.getmany(timeout_ms=250)).items():
                for m in msgs:
                    if tp.topic == VERDICTS.name:
                        v = orjson.loads(m.value)
                        verdicts[v["request_id"]] = v
                    else:
                        r = adapter.decode_line(m.value)
                        lines[r.path.rsplit("/", 1)[-1]] = r
            if want <= set(lines) and all(lines[n].request_id in verdicts for n in want):
                break
    finally:
        await c.stop()
    return lines, verdicts


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def test_real_clients_through_haproxy_and_rsyslog_get_verdicts_naming_their_stack_by_ja3(
        broker, worker_factory, tmp_path):
    if broker.tier == "embedded":
        # rsyslog's omkafka (librdkafka) gets no produce through to the embedded broker:
        # "kafka error -195: Local: Broker transport failure" on every attempt, with or
        # without api.version.request (tried 2026-12-03); aiokafka is fine with it
        pytest.skip("embedded tier: rsyslog's omkafka cannot produce to the embedded broker "
                    "(librdkafka: Local: Broker transport failure); the Apache Kafka tier runs this test")
    _require_packages()
    names = [n for n, (needs, _) in CLIENTS.items() if needs is None or shutil.which(needs)]
    assert len(names) >= 4, f"too few clients on this machine: {names}"
    await create_topics(broker.bootstrap, partitions=4)
    worker_factory(DETECTOR_INPUT_FORMAT="haproxy")
    site, ca = _certificate(tmp_path)
    procs: list[subprocess.Popen[bytes]] = []
    backend = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Backend)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    try:
        port, syslog_port = free_port(), free_port()
        rsyslog_conf = _rsyslog_config(tmp_path, syslog_port, broker.bootstrap)
        with open(tmp_path / "rsyslogd.log", "wb") as log:
            procs.append(subprocess.Popen(["rsyslogd", "-n", "-f", str(rsyslog_conf),
                                           "-i", str(tmp_path / "rsyslogd.pid")],
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        cfg = _haproxy_config(tmp_path, site, port, syslog_port, backend.server_address[1])
        check = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, timeout=30, check=False)
        assert check.returncode == 0, check.stderr.decode()[-2000:]
        with open(tmp_path / "haproxy.log", "wb") as log:
            procs.append(subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True))
        # the entries of this run, while the worker starts
        entries = await asyncio.to_thread(_capture, names, ca, tmp_path)
        by_ja3: dict[str, set[str]] = {}
        for name, (ja3, _) in entries.items():
            by_ja3.setdefault(ja3, set()).add(name)
        assert len(by_ja3) >= 3, f"the clients here share too few JA3s to tell stacks apart: {by_ja3}"
        deadline = time.monotonic() + 20  # HAProxy and rsyslog listening
        while time.monotonic() < deadline:
            probe = subprocess.run(_curl(f"https://{HOST}:{port}/healthz", port, ca, tmp_path), capture_output=True,
                                   timeout=15, check=False)
            if probe.returncode == 0:
                break
            await asyncio.sleep(0.2)
        for name in names:
            await asyncio.to_thread(_run_client, name, f"https://{HOST}:{port}/api/v1/e2e/{name}", port, ca, tmp_path)
        lines, verdicts = await _read(broker.bootstrap, set(names), timeout=60)
    finally:
        for p in reversed(procs):
            _stop(p)
        backend.shutdown()
        backend.server_close()
    logs = "\n".join(f"{f.name}: {f.read_text(errors='replace')[-1500:]}"
                     for f in (tmp_path / "haproxy.log", tmp_path / "rsyslogd.log", tmp_path / "worker.log")
                     if f.exists())
    missing = [n for n in names if n not in lines]
    assert not missing, f"no HAProxy log line reached client-requests for {missing}\n{logs}"
    alpn_differs: set[str] = set()
    for name in names:
        r = lines[name]
        tls = dict(r.tls or {})
        assert tls.get("sni") == HOST, f"{name} sent no SNI: {tls}"
        assert r.edge == "haproxy"
        v = verdicts.get(r.request_id)
        assert v is not None, f"no verdict for {name} ({r.request_id})\n{logs}"
        ja3 = v["fingerprints"].get("ja3")
        # the verdict's JA3 (from HAProxy's lists) is the JA3 of this client's own raw hello
        assert ja3 == entries[name][0], f"{name}: verdict JA3 {ja3} != captured {entries[name][0]}"
        assert name in by_ja3[ja3]
        # HAProxy 2.6's partial JA4: part a's version, SNI flag and counts and part b
        # (cipher hash) are the captured hello's, part c unknown; its ALPN characters
        # are the protocol negotiated (httpx offers http/1.1 before h2: HAProxy picks h2)
        ja4, full = v["fingerprints"].get("ja4"), entries[name][1]
        alpn = {"h2": "h2", "http/1.1": "h1"}.get(tls.get("alpn") or "", "00")
        assert ja4 == full[:8] + alpn + full[10:24] + "?" * 12, f"{name}: verdict JA4 {ja4} against captured {full}"
        if alpn != full[8:10]:
            alpn_differs.add(name)
    print("entries (client: JA3, HTTP version through HAProxy):",
          {n: (*entries[n], lines[n].http_version) for n in names})
    print("ALPN of the partial JA4 differs from the first offered for:", sorted(alpn_differs))
    h2 = {n for n in names if lines[n].http_version == "2"}
    assert {"python-httpx-h2"} <= h2, f"httpx did not speak HTTP/2 through HAProxy: {h2}"
