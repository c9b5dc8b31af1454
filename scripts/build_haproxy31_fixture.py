"""Write tests/fixtures/edges/haproxy-3.1.log: one line of the HAProxy 3.1 log-format
(config/edges/haproxy/haproxy-3.1.cfg.example) for each real ClientHello in
tests/data/client_hellos.json, the TLS fields as HAProxy 3.1's fetches render them.

There is no HAProxy 3.1 on the machine the fixture was built on (Debian 12 ships
2.6.12), so the lines are built, not captured; tests/fixtures/edges/haproxy-3.1.README.md
says where each field's layout comes from. The ClientHello is walked here from its
bytes, independently of detector/fingerprints/clienthello.py, so the adapter's JA4 and
JA3 can be compared with those of the project's parser on the same raw hello.

    .venv/bin/python scripts/build_haproxy31_fixture.py          # rewrite the fixture
    .venv/bin/python scripts/build_haproxy31_fixture.py --check  # exit 1 if it differs
"""

from __future__ import annotations

import argparse
import base64
import json
import struct
import sys
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HELLOS = ROOT / "tests" / "data" / "client_hellos.json"
OUT = ROOT / "tests" / "fixtures" / "edges" / "haproxy-3.1.log"
# the shipped bind line's `alpn h2,http/1.1`: HAProxy picks the first of its own list
# the client offers (the HAProxy 2.6 end-to-end test saw httpx offer http/1.1 first
# and get h2), nothing when the client offers none of them
SERVER_ALPN = ("h2", "http/1.1")
HOST = "api.example-social.test"
_TLS_NAMES = {0x0304: "TLSv1.3", 0x0303: "TLSv1.2"}
_HTTP_VERSION = {"h2": "2.0", "http/1.1": "1.1", "": "1.1"}


def hello_lists(record: bytes) -> dict[str, Any]:
    """What HAProxy's TLS fetches give for one ClientHello record: the hello's version
    (ssl_fc_protocol_hello_id), the cipher vector (ssl_fc_cipherlist_bin), the
    extension types in wire order (ssl_fc_extlist_bin), the supported_groups list
    (ssl_fc_eclist_bin), the ec_point_formats list (ssl_fc_ecformats_bin), the
    signature_algorithms list (ssl_fc_sigalgs_bin) and the supported_versions list
    (ssl_fc_supported_versions_bin), each without its length prefix and with GREASE
    kept; plus the SNI and the ALPN ids offered."""
    if record[0] != 0x16 or record[5] != 0x01:
        raise ValueError("not a TLS handshake record holding a ClientHello")
    hs = record[5:]
    body = hs[4:4 + int.from_bytes(hs[1:4], "big")]
    out: dict[str, Any] = {"hello": int.from_bytes(body[0:2], "big"), "sigalgs": b"", "versions": b"",
                           "groups": b"", "formats": b"", "sni": "", "alpn": []}
    pos = 2 + 32
    pos += 1 + body[pos]  # session id
    n = int.from_bytes(body[pos:pos + 2], "big")
    out["ciphers"] = body[pos + 2:pos + 2 + n]
    pos += 2 + n
    pos += 1 + body[pos]  # compression methods
    end = pos + 2 + int.from_bytes(body[pos:pos + 2], "big")
    pos += 2
    exts = b""
    while pos < end:
        etype, elen = struct.unpack(">HH", body[pos:pos + 4])
        data = body[pos + 4:pos + 4 + elen]
        exts += body[pos:pos + 2]
        if etype == 0x0000:  # server_name: list length, type 0, name length, name
            out["sni"] = data[5:5 + int.from_bytes(data[3:5], "big")].decode("ascii")
        elif etype == 0x000A:
            out["groups"] = data[2:2 + int.from_bytes(data[0:2], "big")]
        elif etype == 0x000B:
            out["formats"] = data[1:1 + data[0]]
        elif etype == 0x000D:
            out["sigalgs"] = data[2:2 + int.from_bytes(data[0:2], "big")]
        elif etype == 0x0010:
            ids, i = data[2:2 + int.from_bytes(data[0:2], "big")], 0
            while i < len(ids):
                out["alpn"].append(ids[i + 1:i + 1 + ids[i]].decode("latin-1"))
                i += 1 + ids[i]
        elif etype == 0x002B:
            out["versions"] = data[1:1 + data[0]]
        pos += 4 + elen
    out["exts"] = exts
    return out


def negotiated_alpn(offered: list[str]) -> str:
    return next((p for p in SERVER_ALPN if p in offered), "")


def negotiated_version(lists: dict[str, Any]) -> str:
    versions = {int.from_bytes(lists["versions"][i:i + 2], "big") for i in range(0, len(lists["versions"]), 2)}
    return "TLSv1.3" if 0x0304 in versions else _TLS_NAMES.get(lists["hello"], "TLSv1.2")


def line(i: int, hello: dict[str, Any]) -> str:
    lists = hello_lists(base64.b64decode(hello["client_hello_b64"]))
    alpn = negotiated_alpn(lists["alpn"])
    ver = _HTTP_VERSION[alpn]
    authority = f"{HOST}:18443"
    names = ["host", "user-agent", "accept"]
    hdr = {"host": authority, "user-agent": hello["client"], "content-type": "", "content-length": "",
           "accept-encoding": "", "accept-language": "", "x-es-device-id": "", "x-es-device-checksum": "",
           "x-es-session-id": "", "x-es-user-id": "", "x-es-timestamp": "", "x-es-signature": "",
           "x-es-connection-type": "", "x-es-bandwidth-kbps": ""}
    obj = {
        "haproxy": 2,
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"haproxy-3.1/{hello['client']}")),
        "ts": f"{1796256423.586 + i:.3f}",
        "ci": "127.0.0.1", "method": "GET", "path": "/api/v1/x", "query": "a=1", "ver": ver, "status": 404,
        "names": ",".join(names), "hdr": hdr,
        "tls": {"sni": lists["sni"], "alpn": alpn, "version": negotiated_version(lists), "hello": str(lists["hello"]),
                **{k: lists[k].hex().upper() for k in ("ciphers", "exts", "groups", "formats", "sigalgs",
                                                       "versions")}},
    }
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    # %Ts.%ms is a bare number in the line; HAProxy's json(utf8s) escapes "/" as "\/"
    return text.replace(f'"ts":"{obj["ts"]}"', f'"ts":{obj["ts"]}').replace("/", "\\/")


def build() -> bytes:
    hellos = json.loads(HELLOS.read_text())["hellos"]
    return "".join(line(i, h) + "\n" for i, h in enumerate(hellos)).encode()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="exit 1 when the fixture differs from a fresh build")
    args = ap.parse_args(argv)
    data = build()
    if args.check:
        return 0 if OUT.read_bytes() == data else 1
    OUT.write_bytes(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
