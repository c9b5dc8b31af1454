"""End to end through a real edge: Debian's nginx 1.22.1 with njs 0.7.9
(libnginx-mod-http-js) terminating TLS (a test certificate for api.example-social.test)
in front of a small backend, logging with the shipped config
(config/edges/nginx/nginx.conf.example, detector.js) over syslog to rsyslog, whose
omkafka (config/edges/haproxy/rsyslog-kafka.conf.example, the same relay as HAProxy's)
puts each line into client-requests; a real worker with input_format nginx-njs turns
them into verdicts.

Over HTTP/1.1 the header names must arrive in the order and with the case each client
sent them. What a client sent is recorded independently: each first sends the same
request in plain HTTP to a listener that keeps its header lines as they came off the
socket. The clients: curl with its own headers replaced and added in a chosen order
and case, and Python's http.client sending mixed-case names in a chosen order (host
not first). curl over HTTP/2 checks the other path: lower-case names, `:authority` as
h2.authority. Each verdict is judged through edge nginx-njs: TLS not assessed, the
header families assessed.

nginx, rsyslogd and the backend run as unprivileged-port processes in the test's tmp
dir (`nginx -c ... -p ...`, its own pid file, logs and temp dirs); the system's nginx
service is not touched. Where the packages are missing the test skips, unless it runs
as root: then `make test-deps` should have installed them, and the test fails."""

from __future__ import annotations

import asyncio
import http.client
import http.server
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from agents.tools.broker import free_port
from agents.topics import CLIENT_REQUESTS, VERDICTS, create_topics
from detector.adapters import nginx_njs as adapter
from detector.model import ClientRequest
from tests.integration.test_haproxy_edge import HOST, OMKAFKA, _Backend, _certificate, _rsyslog_config, _stop

ROOT = Path(__file__).resolve().parents[2]
EDGE_CONFIG = ROOT / "config" / "edges" / "nginx"
JS_MODULE = Path("/usr/lib/nginx/modules/ngx_http_js_module.so")

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.timeout(240)]

# the chosen names (order and case) and values of each HTTP/1.1 client
CURL_HEADERS = [("X-Es-Device-Id", "android-0123456789abcdef"), ("user-agent", "ExampleSocial/4.2.0 (Android 14)"),
                ("ACCEPT", "application/json"), ("x-Es-Session-Id", "s-1"), ("Accept-Language", "de-DE")]
PY_HEADERS = [("x-es-DEVICE-id", "android-fedcba9876543210"), ("User-Agent", "ExampleSocial/4.2.0 (Android 14)"),
              ("Host", HOST), ("accept-Encoding", "gzip"), ("X-ES-USER-ID", "u-7"), ("Accept", "*/*")]


def _require_packages() -> None:
    missing = [what for what, ok in (("nginx", shutil.which("nginx")), ("libnginx-mod-http-js", JS_MODULE.exists()),
                                     ("rsyslogd", shutil.which("rsyslogd")),
                                     ("rsyslog-kafka (omkafka.so)", any(p.exists() for p in OMKAFKA))) if not ok]
    if not missing:
        return
    why = f"missing {', '.join(missing)}: `make test-deps` installs Debian's nginx, libnginx-mod-http-js, rsyslog-kafka"
    if os.geteuid() == 0:  # the packages could have been installed here: not a reason to skip
        pytest.fail(why)
    pytest.skip(why)


def nginx_config(tmp: Path, site: Path, port: int, syslog_port: int, backend_port: int) -> Path:
    """The shipped nginx.conf.example pointed at this run's ports and files, nginx's
    own files (pid, logs, temp dirs) in `tmp`."""
    text = (EDGE_CONFIG / "nginx.conf.example").read_text()
    user = "user root;" if os.geteuid() == 0 else ""  # the worker reads files under tmp (0700)
    temp = "".join(f"    {d}_temp_path {tmp / 'temp' / d};\n"
                   for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    for old, new in ((r"listen 443 ssl http2;", f"listen 127.0.0.1:{port} ssl http2;"),
                     (r"ssl_certificate /etc/nginx/certs/api\.pem;", f"ssl_certificate {site};"),
                     (r"ssl_certificate_key /etc/nginx/certs/api\.pem;", f"ssl_certificate_key {site};"),
                     (r"syslog:server=127\.0\.0\.1:514,", f"syslog:server=127.0.0.1:{syslog_port},"),
                     (r"server 127\.0\.0\.1:8080;", f"server 127.0.0.1:{backend_port};"),
                     (r"/etc/nginx/detector/detector\.js", str(EDGE_CONFIG / "detector.js")),
                     (r"user www-data;", user),
                     (r"worker_processes auto;", "worker_processes 1;"),
                     (r"pid /run/nginx\.pid;", f"pid {tmp / 'nginx.pid'};"),
                     (r"error_log /var/log/nginx/error\.log;", f"error_log {tmp / 'nginx-error.log'} info;"),
                     (r"http \{\n", "http {\n" + temp),
                     # the same lines into a file too, for the assertion messages
                     (r"(        access_log syslog:.*\n)",
                      rf"\g<1>        access_log {tmp / 'nginx-access.log'} detector;\n")):
        text, n = re.subn(old, new, text)
        assert n == 1, f"nginx.conf.example has no line matching {old!r}"
    (tmp / "temp").mkdir(exist_ok=True)
    path = tmp / "nginx.conf"
    path.write_text(text)
    return path


# --- what each client sent: a plain-HTTP listener that keeps the header lines --------
class _HeaderCatcher:
    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.seen: list[list[tuple[str, str]]] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                lines = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
                self.seen.append([(k, v.strip()) for k, v in (ln.split(":", 1) for ln in lines)])
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    def close(self) -> None:
        self.sock.close()


def _curl(url: str, port: int, ca: Path, *args: str) -> list[str]:
    return ["curl", "-sS", "-o", "/dev/null", "--max-time", "10", "--cacert", str(ca),
            "--resolve", f"{HOST}:{port}:127.0.0.1", *args, url]


def _curl_h1(url: str, port: int, ca: Path) -> None:
    hdrs = [a for k, v in CURL_HEADERS for a in ("-H", f"{k}: {v}")]
    subprocess.run(_curl(url, port, ca, "--http1.1", *hdrs), stdin=subprocess.DEVNULL, capture_output=True,
                   timeout=30, check=False)


def _http_client(url: str, port: int, ca: Path | None) -> None:
    """Python's http.client with the names of PY_HEADERS in their order and case (its
    own Host and Accept-Encoding left out), over TLS with the SNI when `ca` is given."""
    if ca is None:
        conn: http.client.HTTPConnection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    else:
        ctx = ssl.create_default_context(cafile=str(ca))
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=ctx)
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        conn.sock = ctx.wrap_socket(raw, server_hostname=HOST)
    try:
        conn.putrequest("GET", url.split(f":{port}", 1)[1], skip_host=True, skip_accept_encoding=True)
        for k, v in PY_HEADERS:
            conn.putheader(k, v)
        conn.endheaders()
        conn.getresponse().read()
    finally:
        conn.close()


def _sent(catcher: _HeaderCatcher) -> dict[str, list[tuple[str, str]]]:
    """The header lines each HTTP/1.1 client sends, as the listener received them."""
    out = {}
    for name, send in (("curl-h1", lambda url: _curl_h1(url, catcher.port, Path("/nonexistent"))),
                       ("python-http-client", lambda url: _http_client(url, catcher.port, None))):
        before = len(catcher.seen)
        send(f"http://{HOST}:{catcher.port}/api/v1/e2e/{name}".replace(HOST, "127.0.0.1"))
        deadline = time.monotonic() + 10
        while len(catcher.seen) == before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(catcher.seen) == before + 1, f"{name} sent nothing to the header listener"
        out[name] = catcher.seen[-1]
    return out


# --- the test ----------------------------------------------------------------------------
async def _read(bootstrap: str, want: set[str], timeout: float) -> tuple[dict[str, ClientRequest], dict[str, Any]]:
    """(the decoded log lines by client, the verdicts by request id) once every client
    in `want` has a line with a verdict, or at the timeout."""
    lines: dict[str, ClientRequest] = {}
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


async def test_nginx_njs_keeps_each_clients_header_order_and_case_over_http1_into_verdicts(
        broker, worker_factory, tmp_path):
    if broker.tier == "embedded":
        # the same limit as the HAProxy test: rsyslog's omkafka (librdkafka) gets no
        # produce through to the embedded broker
        pytest.skip("embedded tier: rsyslog's omkafka cannot produce to the embedded broker "
                    "(librdkafka: Local: Broker transport failure); the Apache Kafka tier runs this test")
    _require_packages()
    await create_topics(broker.bootstrap, partitions=4)
    worker_factory(DETECTOR_INPUT_FORMAT="nginx-njs")
    site, ca = _certificate(tmp_path)
    catcher = _HeaderCatcher()
    sent = await asyncio.to_thread(_sent, catcher)
    catcher.close()
    # the listener saw what http.client was told to send, in that order and case
    assert sent["python-http-client"] == PY_HEADERS
    procs: list[subprocess.Popen[bytes]] = []
    backend = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Backend)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    names = ["curl-h1", "python-http-client", "curl-h2"]
    try:
        port, syslog_port = free_port(), free_port()
        rsyslog_conf = _rsyslog_config(tmp_path, syslog_port, broker.bootstrap)
        with open(tmp_path / "rsyslogd.log", "wb") as log:
            procs.append(subprocess.Popen(["rsyslogd", "-n", "-f", str(rsyslog_conf),
                                           "-i", str(tmp_path / "rsyslogd.pid")],
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        cfg = nginx_config(tmp_path, site, port, syslog_port, backend.server_address[1])
        nginx = ["nginx", "-c", str(cfg), "-p", str(tmp_path)]
        check = subprocess.run([*nginx, "-t"], capture_output=True, timeout=30, check=False)
        assert check.returncode == 0, check.stderr.decode()[-2000:]
        with open(tmp_path / "nginx.log", "wb") as log:
            procs.append(subprocess.Popen([*nginx, "-g", "daemon off;"], stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True))
        deadline = time.monotonic() + 20  # nginx and rsyslog listening
        while time.monotonic() < deadline:
            probe = subprocess.run(_curl(f"https://{HOST}:{port}/healthz", port, ca), capture_output=True,
                                   timeout=15, check=False)
            if probe.returncode == 0:
                break
            await asyncio.sleep(0.2)
        url = f"https://{HOST}:{port}/api/v1/e2e/"
        await asyncio.to_thread(_curl_h1, url + "curl-h1", port, ca)
        await asyncio.to_thread(_http_client, url + "python-http-client", port, ca)
        await asyncio.to_thread(subprocess.run, _curl(url + "curl-h2", port, ca, "--http2"), capture_output=True,
                                timeout=30, check=False)
        lines, verdicts = await _read(broker.bootstrap, set(names), timeout=45)
    finally:
        for p in reversed(procs):
            _stop(p)
        backend.shutdown()
        backend.server_close()
    logs = "\n".join(f"{f.name}: {f.read_text(errors='replace')[-1500:]}"
                     for f in (tmp_path / "nginx-error.log", tmp_path / "nginx-access.log", tmp_path / "rsyslogd.log",
                               tmp_path / "worker.log") if f.exists())
    missing = [n for n in names if n not in lines]
    assert not missing, f"no nginx log line reached client-requests for {missing}\n{logs}"
    for name in names:
        r = lines[name]
        assert r.edge == "nginx-njs"
        tls = dict(r.tls or {})
        assert tls.get("sni") == HOST and tls.get("version") == "TLSv1.3", f"{name}: {tls}"
        assert not {"ja3", "ja3_full", "ja4", "client_hello"} & set(tls), f"{name}: a stock nginx has no TLS print"
        v = verdicts.get(r.request_id)
        assert v is not None, f"no verdict for {name} ({r.request_id})\n{logs}"
        assert v["assessed"] is True and v["profile"] == "example-android", v
        # judged through nginx-njs: TLS not assessed, the header families are
        assert "tls" in v["not_assessed"] and "headers" not in v["not_assessed"], v["not_assessed"]
        assert not [s for s in v["signals"] if s["code"].startswith("tls.")], v["signals"]
        # the profile's app writes lower-case names: the case kept over HTTP/1.1 is judged
        name_case = any(s["code"] == "headers.name_case" for s in v["signals"])
        assert name_case == (name != "curl-h2"), (name, v["signals"])
    # HTTP/1.1: the names in the order and case each client sent them, the values too
    # (the Host's port differs: the listener's and nginx's)
    for name in ("curl-h1", "python-http-client"):
        r = lines[name]
        assert r.http_version == "1.1"
        assert [k for k, _ in r.headers] == [k for k, _ in sent[name]], f"{name}: {r.headers} against {sent[name]}"
        got = [(k, v) for k, v in r.headers if k.lower() != "host"]
        assert got == [(k, v) for k, v in sent[name] if k.lower() != "host"], name
    assert [k for k, _ in lines["python-http-client"].headers] == [k for k, _ in PY_HEADERS]
    curl_names = [k for k, _ in lines["curl-h1"].headers]
    assert [k for k in curl_names if k != "Host"] == [k for k, _ in CURL_HEADERS], curl_names
    # HTTP/2: names lower-case on the wire, :authority as h2.authority, not a header
    h2 = lines["curl-h2"]
    assert h2.http_version == "2" and dict(h2.h2 or {}) == {"authority": f"{HOST}:{port}"}
    assert [k for k, _ in h2.headers] == ["user-agent", "accept"], h2.headers
    print("header names through nginx-njs:", {n: [k for k, _ in lines[n].headers] for n in names})
