#!/usr/bin/env python3
"""Capture the real ClientHello of each TLS client stack on this machine.

A plain TCP listener on 127.0.0.1 reads the first handshake record(s) a client sends,
keeps them and hangs up, so every handshake fails by design. Each client is pointed at
https://api.example-social.test:<port>/ with its own name-override option, so the
hello carries that SNI. The result, with JA4/JA3 from detector.fingerprints.tls, goes
to tests/data/client_hellos.json. Clients that are not installed are skipped, with why.

Run from the repository root:  PYTHONPATH=. python scripts/capture_client_hellos.py
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import importlib.metadata
import json
import platform
import queue
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from detector.fingerprints.tls import (  # noqa: E402 (after the sys.path line above: run as a script)
    ClientHelloError,
    fingerprint,
    parse_client_hello,
)

HOST = "api.example-social.test"
OUT = REPO / "tests" / "data" / "client_hellos.json"
CLIENT_TIMEOUT_S = 90.0  # java's single-file launch compiles first: give it room
HELLO_WAIT_S = 10.0


class Skip(Exception):
    """This client cannot be had here; the message says why."""


# --------------------------------------------------------------------------- server


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"peer closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def read_client_hello(conn: socket.socket) -> bytes:
    """The leading handshake records, up to the end of the first handshake message.

    A hello may be split over several records (RFC 8446 5.1), so records are read
    until their bodies cover the 4-byte handshake header's length.
    """
    out = bytearray()
    hs = bytearray()
    need = -1
    while need < 0 or len(hs) < need:
        header = _recv_exact(conn, 5)
        out += header
        if header[0] != 0x16:  # not a handshake record: keep it, the parser will say why
            break
        length = int.from_bytes(header[3:5], "big")
        body = _recv_exact(conn, length)
        out += body
        hs += body
        if need < 0 and len(hs) >= 4:
            need = 4 + int.from_bytes(hs[1:4], "big")
    return bytes(out)


class HelloCatcher:
    """Accepts connections on 127.0.0.1:<free port>; each first flight goes to a queue."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port: int = self.sock.getsockname()[1]
        self.hellos: queue.Queue[bytes | Exception] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    self.hellos.put(read_client_hello(conn))
                except (OSError, ConnectionError) as exc:
                    self.hellos.put(exc)

    def drain(self) -> None:
        while True:
            try:
                self.hellos.get_nowait()
            except queue.Empty:
                return

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(timeout=2)


# --------------------------------------------------------------------------- clients

# Runs inside a child interpreter: map HOST to loopback at the resolver so the client
# library's own connect path (and its own SSLContext) builds the hello untouched.
_PY_PRELUDE = textwrap.dedent(
    f"""
    import socket
    _gai = socket.getaddrinfo
    def _resolve(host, *a, **k):
        return _gai("127.0.0.1" if host == {HOST!r} else host, *a, **k)
    socket.getaddrinfo = _resolve
    """
)


def _pkg_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        raise Skip(f"Python package {name!r} is not installed in {sys.executable}") from None


def _run(cmd: list[str], env: dict[str, str] | None = None) -> None:
    """Run a client; its failure is expected (the server hangs up mid-handshake)."""
    subprocess.run(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=CLIENT_TIMEOUT_S,
        env=env,
        check=False,
    )


def _run_python(body: str) -> None:
    _run([sys.executable, "-c", _PY_PRELUDE + textwrap.dedent(body)])


def _tool_version(cmd: list[str]) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    text = (out.stdout + out.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


@dataclass(frozen=True)
class Client:
    name: str
    version: Callable[[], str]
    drive: Callable[[str, int], None]  # (url, port)


def _py_base() -> str:
    return f"Python {platform.python_version()}, {ssl.OPENSSL_VERSION}"


def _urllib(url: str, port: int) -> None:
    _run_python(
        f"""
        import urllib.request
        try:
            urllib.request.urlopen({url!r}, timeout=5)
        except Exception:
            pass
        """
    )


def _requests(url: str, port: int) -> None:
    _run_python(
        f"""
        import requests
        try:
            requests.get({url!r}, timeout=5)
        except Exception:
            pass
        """
    )


def _httpx(url: str, port: int) -> None:
    _run_python(
        f"""
        import httpx
        try:
            with httpx.Client(http2=True, timeout=5) as c:
                c.get({url!r})
        except Exception:
            pass
        """
    )


def _httpx_version() -> str:
    v = _pkg_version("httpx")
    try:
        h2 = importlib.metadata.version("h2")
    except importlib.metadata.PackageNotFoundError:
        raise Skip("httpx is here but h2 is not: the http2=True hello would not be httpx's h2 one") from None
    return f"{v} (http2=True, h2 {h2}; {_py_base()})"


def _aiohttp(url: str, port: int) -> None:
    _run_python(
        f"""
        import asyncio, aiohttp
        async def main():
            try:
                async with aiohttp.ClientSession() as s:
                    async with s.get({url!r}, timeout=aiohttp.ClientTimeout(total=5)) as r:
                        await r.read()
            except Exception:
                pass
        asyncio.run(main())
        """
    )


def _curl(url: str, port: int) -> None:
    if not shutil.which("curl"):
        raise Skip("curl is not on PATH")
    _run(["curl", "-sS", "--max-time", "5", "--resolve", f"{HOST}:{port}:127.0.0.1", url])


def _curl_version() -> str:
    if not shutil.which("curl"):
        raise Skip("curl is not on PATH")
    return _tool_version(["curl", "--version"])


_NODE_JS = """
const https = require('https');
const url = process.argv[1];
const lookup = (host, opts, cb) => {
  if (opts && opts.all) cb(null, [{address: '127.0.0.1', family: 4}]);
  else cb(null, '127.0.0.1', 4);
};
const req = https.get(url, {lookup, timeout: 5000}, (res) => res.resume());
req.on('error', () => {});
req.on('timeout', () => req.destroy());
"""


def _node(url: str, port: int) -> None:
    if not shutil.which("node"):
        raise Skip("node is not on PATH")
    _run(["node", "-e", _NODE_JS, url])


def _node_version() -> str:
    if not shutil.which("node"):
        raise Skip("node is not on PATH")
    return _tool_version(
        ["node", "-p", "`Node.js ${process.version}, OpenSSL ${process.versions.openssl}`"]
    )


_JAVA_SRC = """
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.time.Duration;

public class Hello {
    public static void main(String[] args) {
        HttpClient client = HttpClient.newBuilder()
            .version(HttpClient.Version.HTTP_2)
            .connectTimeout(Duration.ofSeconds(5))
            .build();
        HttpRequest req = HttpRequest.newBuilder(URI.create(args[0]))
            .timeout(Duration.ofSeconds(5)).GET().build();
        try {
            client.send(req, HttpResponse.BodyHandlers.discarding());
        } catch (Exception e) {
            // expected: the capture server hangs up mid-handshake
        }
    }
}
"""


def _java(url: str, port: int) -> None:
    if not shutil.which("java"):
        raise Skip("java is not on PATH")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "Hello.java"
        src.write_text(_JAVA_SRC)
        hosts = Path(tmp) / "hosts"
        hosts.write_text(f"127.0.0.1 {HOST}\n")
        # jdk.net.hosts.file (JDK 9+) replaces the system resolver with this file: the
        # JDK's own name-override hook, so the hello still carries HOST as SNI.
        _run(["java", f"-Djdk.net.hosts.file={hosts}", str(src), url])


def _java_version() -> str:
    if not shutil.which("java"):
        raise Skip("java is not on PATH")
    line = _tool_version(["java", "-version"])
    if '"17' not in line and " 17" not in line:
        raise Skip(f"java here is not 17: {line}")
    return f"{line}, java.net.http.HttpClient HTTP_2"


def _curl_cffi(target: str) -> Callable[[str, int], None]:
    def drive(url: str, port: int) -> None:
        _run_python(
            f"""
            from curl_cffi import Curl, CurlOpt
            c = Curl()
            c.setopt(CurlOpt.URL, {url!r})
            c.setopt(CurlOpt.RESOLVE, [{f"{HOST}:{port}:127.0.0.1"!r}])
            c.setopt(CurlOpt.TIMEOUT_MS, 5000)
            c.impersonate({target!r})
            try:
                c.perform()
            except Exception:
                pass
            """
        )

    return drive


def _curl_cffi_version(target: str) -> Callable[[], str]:
    def version() -> str:
        v = _pkg_version("curl_cffi")
        from curl_cffi import BrowserType

        if target not in {b.value for b in BrowserType}:
            raise Skip(f"curl_cffi {v} has no impersonation target {target!r}")
        from curl_cffi import Curl

        lib = Curl().version().decode().split()[0]
        return f"{v} impersonate={target} ({lib})"

    return version


def _newest_target(prefix: str, suffix: str, alias: str) -> str:
    """The alias curl_cffi resolves (e.g. chrome_android), else its newest matching target."""
    try:  # a private module: its layout varies between releases
        from curl_cffi.requests.impersonate import REAL_TARGET_MAP
    except ImportError:
        REAL_TARGET_MAP = {}
    if alias in REAL_TARGET_MAP:
        return str(REAL_TARGET_MAP[alias])
    try:
        from curl_cffi import BrowserType
    except ImportError:
        return alias
    names = [
        b.value for b in BrowserType if b.value.startswith(prefix) and b.value.endswith(suffix)
    ]
    return max(names, key=lambda n: int("".join(c for c in n if c.isdigit()) or 0), default=alias)


def clients() -> list[Client]:
    android = _newest_target("chrome", "_android", "chrome_android")
    ios = _newest_target("safari", "_ios", "safari_ios")
    return [
        Client("python-urllib", _py_base, _urllib),
        Client("python-requests", lambda: f"{_pkg_version('requests')} ({_py_base()})", _requests),
        Client("python-httpx-h2", _httpx_version, _httpx),
        Client("python-aiohttp", lambda: f"{_pkg_version('aiohttp')} ({_py_base()})", _aiohttp),
        Client("curl-cli", _curl_version, _curl),
        Client("nodejs-https", _node_version, _node),
        Client("java17-httpclient-h2", _java_version, _java),
        Client(f"curl_cffi-{android}", _curl_cffi_version(android), _curl_cffi(android)),
        Client(f"curl_cffi-{ios}", _curl_cffi_version(ios), _curl_cffi(ios)),
    ]


# --------------------------------------------------------------------------- main


def capture(catcher: HelloCatcher, client: Client) -> dict[str, str]:
    version = client.version()
    url = f"https://{HOST}:{catcher.port}/"
    catcher.drain()
    client.drive(url, catcher.port)
    try:
        got = catcher.hellos.get(timeout=HELLO_WAIT_S)
    except queue.Empty:
        raise Skip("client ran but no connection reached the capture server") from None
    if isinstance(got, Exception):
        raise Skip(f"connection came but no full ClientHello was read: {got}")
    try:
        ch = parse_client_hello(got)
    except ClientHelloError as exc:
        raise Skip(f"captured bytes are not a ClientHello: {exc}") from None
    if ch.sni != HOST:
        raise Skip(f"hello carries SNI {ch.sni!r}, not {HOST!r}")
    fp = fingerprint(ch)
    return {
        "client": client.name,
        "version": version,
        "client_hello_b64": base64.b64encode(got).decode("ascii"),
        "ja4": fp.ja4,
        "ja3": fp.ja3,
        "ja3_full": fp.ja3_full,
        "alpn": fp.alpn or "",
        "tls_version": fp.tls_version,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    catcher = HelloCatcher()
    hellos: list[dict[str, str]] = []
    skipped: list[dict[str, str]] = []
    try:
        for client in clients():
            try:
                rec = capture(catcher, client)
            except Skip as why:
                print(f"SKIP {client.name}: {why}", file=sys.stderr)
                skipped.append({"client": client.name, "reason": str(why)})
                continue
            except subprocess.TimeoutExpired:
                print(f"SKIP {client.name}: timed out", file=sys.stderr)
                skipped.append({"client": client.name, "reason": "client timed out"})
                continue
            print(f"{rec['client']:32} {rec['ja4']}  alpn={rec['alpn'] or '-'}  {rec['version']}")
            hellos.append(rec)
    finally:
        catcher.close()

    today = dt.datetime.now(dt.UTC).date().isoformat()
    doc = {
        "source": (
            f"Captured {today} on {platform.system()} {platform.release()} "
            f"({platform.machine()}) by scripts/capture_client_hellos.py: a plain TCP "
            "listener on 127.0.0.1 stored the first TLS handshake record(s) each client "
            f"sent to https://{HOST}:<port>/ (name forced to 127.0.0.1 through the "
            "client's own override: curl --resolve, CURLOPT_RESOLVE, Node's lookup, "
            "-Djdk.net.hosts.file, a getaddrinfo shim for the Python clients) and then "
            "closed, so every handshake failed on purpose. Tool versions are per hello. "
            "ja4/ja3 come from detector.fingerprints.tls."
        ),
        "hellos": hellos,
        "skipped": skipped,
    }
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {len(hellos)} hellos ({len(skipped)} skipped) to {args.out}")
    return 0 if hellos else 1


if __name__ == "__main__":
    raise SystemExit(main())
