"""The HAProxy input adapter (detector/adapters/haproxy.py): lines of the shipped
log-format (config/edges/haproxy/haproxy.cfg.example) into ClientRequests, JA3 from
the ClientHello lists HAProxy 2.6 captures, and bad lines as rejections with codes.

tests/fixtures/edges/haproxy-2.6.log holds two lines Debian 12's HAProxy 2.6.12
wrote with that config (curl over HTTP/2 and HTTP/1.1): one as rsyslog's %msg% gives
it, one as the whole syslog line."""

from __future__ import annotations

import json
import random
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from detector.adapters import INPUT_FORMATS, haproxy, line_decoder, message_decoder
from detector.config.schema import RuntimeSettings
from detector.decode import REJECTION_CODES, InvalidRequest
from detector.fingerprints.tls import (
    fingerprints_from_b64,
    hello_from_lists,
    ja3,
    ja4_partial,
)
from tests.unit._adapter_fixtures import edited, nonempty_lines, rejected

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "edges" / "haproxy-2.6.log"
HELLOS = json.loads((ROOT / "tests" / "data" / "client_hellos.json").read_text())["hellos"]
CURL_JA3 = "0149f47eabf9a20d0893e2a44e5a6323"  # curl 7.88.1 / OpenSSL 3.0 (tests/data/client_hellos.json)


def fixture_lines() -> list[bytes]:
    return nonempty_lines(FIXTURE)


def a_line(**changes: Any) -> dict[str, Any]:
    """The HTTP/2 fixture line as an object, with `changes` applied (dotted keys go
    into nested objects)."""
    obj = orjson.loads(fixture_lines()[0])
    return edited(obj, changes)


def reject(line: bytes | str) -> InvalidRequest:
    return rejected(haproxy.decode_line, line)


# --- lines HAProxy 2.6 wrote ----------------------------------------------------------
def test_an_http2_line_becomes_the_native_contract():
    r = haproxy.decode_line(fixture_lines()[0])
    assert r.request_id == "21c08e97-f1e9-45b6-8b4d-3a611fc3a504"
    assert r.ts == pytest.approx(1796256423.586)
    assert (r.client_ip, r.method, r.path, r.query, r.http_version) == ("127.0.0.1", "GET", "/api/v1/x", "a=1", "2")
    assert r.response_status == 404
    # names in the order received, lower-cased by HAProxy; the values the format
    # names, "" for the others; the :authority HAProxy turned into a leading host
    assert r.headers == (("accept", ""), ("user-agent", 'ExampleSocial 1 "x"'),
                         ("x-es-device-id", "android-0123456789abcdef"))
    assert dict(r.h2 or {}) == {"authority": "api.example-social.test:18443"}
    tls = dict(r.tls or {})
    assert tls["sni"] == "api.example-social.test" and tls["alpn"] == "h2" and tls["version"] == "TLSv1.3"
    assert tls["ja3"] == CURL_JA3
    assert tls["ja3_full"].startswith("771,4866-4867-4865-49196-")
    assert "client_hello" not in tls  # HAProxy 2.6 has no raw hello, and JA4 without part c:
    assert tls["ja4"].endswith("_????????????") and len(tls["ja4"]) == 36
    assert r.edge == "haproxy" and not r.extra  # the contract's `edge` field (docs/edges.md)


def test_an_http1_syslog_line_keeps_its_host_header():
    r = haproxy.decode_line(fixture_lines()[1])  # the whole syslog line: the header is skipped
    assert r.http_version == "1.1" and r.query is None and r.h2 is None
    assert r.headers == (("host", "api.example-social.test:18443"), ("user-agent", "curl/7.88.1"), ("accept", ""))
    assert dict(r.tls or {})["ja3"] == CURL_JA3


def test_the_captured_curl_line_has_the_ja3_of_curls_raw_client_hello():
    curl = next(h for h in HELLOS if h["client"] == "curl-cli")
    assert fingerprints_from_b64(curl["client_hello_b64"]).ja3 == CURL_JA3


def test_a_line_without_tls_has_no_tls_object():
    obj = a_line(**{"tls.sni": "", "tls.alpn": "", "tls.version": "", "tls.hello": "", "tls.ciphers": "",
                    "tls.exts": "", "tls.groups": "", "tls.formats": ""})
    assert haproxy.decode_line(orjson.dumps(obj)).tls is None


# --- JA3 and the JA4 parts from the lists, against the raw ClientHello -------------------
def _lists_haproxy_logs(record: bytes) -> dict[str, str]:
    """What HAProxy's ssl_fc_protocol_hello_id and ssl_fc_*_bin,hex fetches log for a
    ClientHello record: walked here from the bytes, independently of the project's
    parser (the cipher vector as sent, the extension types in wire order, the
    supported_groups list and the ec_point_formats list, GREASE kept)."""
    hs = record[5:]
    assert record[0] == 0x16 and hs[0] == 0x01
    body = hs[4:4 + int.from_bytes(hs[1:4], "big")]
    version = int.from_bytes(body[0:2], "big")
    pos = 2 + 32
    pos += 1 + body[pos]  # session id
    n = int.from_bytes(body[pos:pos + 2], "big")
    ciphers = body[pos + 2:pos + 2 + n]
    pos += 2 + n
    pos += 1 + body[pos]  # compression methods
    end = pos + 2 + int.from_bytes(body[pos:pos + 2], "big")
    pos += 2
    exts, groups, formats = b"", b"", b""
    while pos < end:
        etype, elen = struct.unpack(">HH", body[pos:pos + 4])
        data = body[pos + 4:pos + 4 + elen]
        exts += body[pos:pos + 2]
        if etype == 0x000A:
            groups = data[2:2 + int.from_bytes(data[0:2], "big")]
        elif etype == 0x000B:
            formats = data[1:1 + data[0]]
        pos += 4 + elen
    return {"hello": str(version), "ciphers": ciphers.hex().upper(), "exts": exts.hex().upper(),
            "groups": groups.hex().upper(), "formats": formats.hex().upper()}


@pytest.mark.parametrize("hello", HELLOS, ids=[h["client"] for h in HELLOS])
def test_ja3_from_the_lists_equals_the_ja3_of_the_raw_client_hello(hello):
    import base64

    raw = base64.b64decode(hello["client_hello_b64"])
    lists = _lists_haproxy_logs(raw)
    expected = fingerprints_from_b64(hello["client_hello_b64"])
    # as the adapter reads a logged line (the negotiated ALPN: the first offered, the
    # server offering h2 and http/1.1)
    alpn = expected.alpn if expected.alpn in ("h2", "http/1.1") else ""
    obj = a_line(**{f"tls.{k}": v for k, v in lists.items()}, **{"tls.alpn": alpn})
    tls = dict(haproxy.decode_line(orjson.dumps(obj)).tls or {})
    assert (tls["ja3_full"], tls["ja3"]) == (expected.ja3_full, expected.ja3), hello["client"]
    # the JA4 parts the lists allow: counts, SNI flag, ALPN, version (negotiated), cipher hash
    ch = hello_from_lists(int(lists["hello"]), *(
        tuple(int(lists[k][i:i + 4], 16) for i in range(0, len(lists[k]), 4)) for k in ("ciphers", "exts", "groups")),
        tuple(bytes.fromhex(lists["formats"])), alpn.encode() or None)
    assert ja3(ch) == (expected.ja3_full, expected.ja3)
    part_a, part_b, _ = expected.ja4.split("_")
    assert ja4_partial(ch, expected.tls_version) == (part_a, part_b), hello["client"]


def test_grease_leaves_ja3_and_stays_in_the_ja4_counts_out():
    grease_hellos = [h for h in HELLOS if h["client"].startswith("curl_cffi")]
    assert grease_hellos, "the captured Chrome-like hellos carry GREASE"
    import base64

    lists = _lists_haproxy_logs(base64.b64decode(grease_hellos[0]["client_hello_b64"]))
    assert "0A0A" in lists["ciphers"] or any(f"{g:02X}{g:02X}" in lists["ciphers"] for g in range(0x0A, 0xFB, 0x10))
    tls = dict(haproxy.decode_line(orjson.dumps(a_line(**{f"tls.{k}": v for k, v in lists.items()}))).tls or {})
    assert not any(str(0x0A0A + 0x1010 * i) in tls["ja3_full"].split(",")[1].split("-") for i in range(16))


# --- bad lines: rejections with codes, never an exception -------------------------------
def test_every_cut_of_a_line_is_rejected_as_truncated():
    line = fixture_lines()[0].strip()
    codes = set()
    for n in range(1, len(line) - 1):
        codes.add(reject(line[:n]).code)
    assert codes == {"truncated"}


def test_every_cut_of_a_non_ascii_line_is_rejected_as_truncated():
    # a cut inside a multi-byte UTF-8 character (one byte into the € of "/é€") is a
    # line cut short, not bytes that are not UTF-8
    # (HAProxy's json(utf8s) writes UTF-8 as it is; a relay may cut anywhere)
    line = orjson.dumps(a_line(path="/é€", **{"hdr.user-agent": "Bücher/1.0 (日本語)"}))
    assert reject(line[:line.index("€".encode()) + 1]).code == "truncated"
    assert {reject(line[:n]).code for n in range(1, len(line) - 1)} == {"truncated"}
    # a whole object, then the first byte of a character; a byte that is never UTF-8
    assert reject(line + b"\xe2").code == "invalid_utf8"
    assert reject(line.replace("é".encode(), b"\xff", 1)).code == "invalid_utf8"


def test_every_cut_of_a_line_behind_a_syslog_header_is_truncated():
    # a relay that forwards the whole syslog line: a cut inside the header or the
    # first bytes of {"haproxy": is a line cut short, not a line of another format
    line = fixture_lines()[1].strip()
    assert line.startswith(b"<134>") and line.index(b'{"haproxy":') > 20
    assert {reject(line[:k]).code for k in range(1, len(line) - 1)} == {"truncated"}
    head = line[:line.index(b"{")]
    assert reject(head + b"haproxy[20218]: Proxy api started.").code == "invalid_json"  # a syslog line with another message
    assert reject(b"GET / HTTP/1.1").code == "invalid_json"


@pytest.mark.parametrize(("changes", "code"), [
    ({"haproxy": 2}, "invalid_value"),                   # another format version
    ({"haproxy": None}, "invalid_value"),
    ({"haproxy": True}, "invalid_value"),                  # equals 1 in Python, is not the version
    ({"haproxy": 1.0}, "invalid_value"),
    ({"id": ""}, "missing_field"),                       # no unique-id-format
    ({"ver": "9.9"}, "invalid_value"),
    ({"ci": "not-an-ip"}, "invalid_value"),              # judged by the native validator
    ({"path": ""}, "invalid_value"),
    ({"names": 7}, "invalid_type"),
    ({"hdr": []}, "invalid_type"),
    ({"hdr.user-agent": 1}, "invalid_type"),
    ({"tls": "x"}, "invalid_type"),
    ({"tls.ciphers": "13021"}, "invalid_value"),         # odd hex
    ({"tls.ciphers": "1302ZZ"}, "invalid_value"),
    ({"tls.exts": "000000"}, "invalid_value"),           # not 16-bit values
    ({"tls.hello": "TLSv1"}, "invalid_value"),
    ({"tls.hello": "70000"}, "invalid_value"),
    ({"ts": "yesterday"}, "invalid_value"),
])
def test_a_malformed_line_is_rejected_with_its_code(changes, code):
    assert reject(orjson.dumps(a_line(**changes))).code == code


@pytest.mark.parametrize(("line", "code"), [
    (b"GET / HTTP/1.1", "invalid_json"),
    (b'<134>Dec  3 haproxy[1]: {"haproxy":1, oops}', "invalid_json"),
    (b"[1, 2]", "invalid_json"),
    (b'{"haproxy":1,"id":"\xff"}', "invalid_utf8"),
    (b"{}", "invalid_value"),
])
def test_lines_that_are_not_the_format(line, code):
    assert reject(line).code == code


def test_a_message_of_lines_keeps_the_good_ones_and_indexes_the_bad():
    good = fixture_lines()
    value = b"\n".join([good[0], good[1][:100], good[1], b"{}"])
    out = haproxy.decode_message(value)
    assert [r.request_id for r in out.requests] == [orjson.loads(good[0])["id"], "687086c6-738d-4f6c-a3d2-213aca0fe9df"]
    assert out.indices == [0, 2]
    assert [(r.index, r.code) for r in out.rejections] == [(1, "truncated"), (3, "invalid_value")]
    one = haproxy.decode_message(good[0] + b"\n")
    assert one.indices == [None] and not one.rejections
    assert haproxy.decode_message(b"").rejections[0].code == "empty_message"
    assert haproxy.decode_message(None).rejections[0].code == "empty_message"
    assert haproxy.decode_message(b" \n").rejections[0].code == "empty_message"


def test_hostile_bytes_never_raise():
    rng = random.Random(14)
    base = fixture_lines()[0]
    for _ in range(1500):
        b = bytearray(base)
        for _ in range(rng.randint(1, 6)):
            op = rng.random()
            i = rng.randrange(len(b))
            if op < 0.4:
                b[i] = rng.randrange(256)
            elif op < 0.7:
                del b[i:i + rng.randint(1, 40)]
            else:
                b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        out = haproxy.decode_message(bytes(b))
        assert len(out.requests) + len(out.rejections) >= 1
        assert all(r.code in REJECTION_CODES for r in out.rejections)


# --- selection: the setting, the decoders, `detector score --format` ----------------------
def test_the_input_format_setting_names_the_adapters():
    assert RuntimeSettings.model_fields["input_format"].default == "native"
    assert set(RuntimeSettings.model_fields["input_format"].annotation.__args__) == set(INPUT_FORMATS)
    assert message_decoder("haproxy") is haproxy.decode_message
    assert line_decoder("haproxy") is haproxy.decode_line
    with pytest.raises(ValueError, match="unknown input format"):
        message_decoder("nginx")
    with pytest.raises(Exception, match="input_format"):
        RuntimeSettings(input_format="nginx")


def test_detector_score_reads_haproxy_lines(tmp_path):
    src = tmp_path / "haproxy.log"
    src.write_bytes(FIXTURE.read_bytes() + fixture_lines()[0][:121] + b"\n")
    out = subprocess.run([sys.executable, "-m", "agents.cli", "score", "--format", "haproxy", str(src)],
                         capture_output=True, cwd=ROOT, timeout=120, check=False)
    verdicts = [orjson.loads(ln) for ln in out.stdout.splitlines()]
    assert [v["request_id"] for v in verdicts] == [haproxy.decode_line(ln).request_id for ln in fixture_lines()]
    # /api/v1/x is in the example profile's scope and judged; / is not (assessed false)
    assert verdicts[0]["fingerprints"]["ja3"] == CURL_JA3 and verdicts[0]["profile"] == "example-android"
    assert verdicts[1]["assessed"] is False
    assert out.stderr.decode().strip().endswith("line 3: rejected: truncated: HAProxy log line cut short after 120 "
                                                "bytes (raise `log ... len` in haproxy.cfg and the relay's maximum "
                                                "message size)")
    assert out.returncode == 1
    native = subprocess.run([sys.executable, "-m", "agents.cli", "score", str(src)],
                            capture_output=True, cwd=ROOT, timeout=120, check=False)
    assert native.stdout == b"" and native.stderr.count(b"rejected:") == 3


@pytest.mark.parametrize("field", ["ciphers", "exts", "groups", "formats"])
def test_a_hex_list_longer_than_any_hello_is_oversized_before_it_is_read(field):
    # not even hex: refused for its size, before it is unhexed or a JA3 computed over it
    assert reject(orjson.dumps(a_line(**{f"tls.{field}": "zz" * 20_000}))).code == "oversized"


def test_more_header_names_than_the_limit_are_too_many_before_a_header_is_built():
    names = ",".join(f"x-{i}" for i in range(200))
    # a value of the wrong type among them would be found only while building headers
    assert reject(orjson.dumps(a_line(names=names, hdr={"x-0": 5}))).code == "too_many"


@pytest.mark.parametrize("hello", ["²", "0" * 5000, "70000", "１２", "-1", "+3"])
def test_a_hello_version_that_is_not_a_short_ascii_number_is_rejected_not_raised(hello):
    """str.isdigit() is true for Unicode digits int() refuses, and int() refuses more
    than 4,300 digits: neither may escape the decoder (found by review)."""
    line = orjson.dumps(a_line(**{"tls.hello": hello}))
    assert reject(line).code == "invalid_value"
    got = haproxy.decode_message(line)
    assert not got.requests and got.rejections[0].code == "invalid_value"
