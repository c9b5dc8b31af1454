"""The nginx-njs input adapter (detector/adapters/nginx_njs.py): lines of the shipped
access log (config/edges/nginx/nginx.conf.example, detector.js) into ClientRequests
marked with edge nginx-njs, and bad lines as rejections with codes.

tests/fixtures/edges/nginx-njs.log holds six lines Debian 12's nginx 1.22.1 with njs
0.7.9 wrote with that config (tests/fixtures/edges/nginx-njs.md says which request
made each)."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from detector.adapters import INPUT_FORMATS, format_edge, line_decoder, message_decoder, nginx_njs
from detector.config.schema import RuntimeSettings
from detector.decode import REJECTION_CODES, DecodeLimits, InvalidRequest
from tests.unit._adapter_fixtures import edited, nonempty_lines, rejected

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "edges" / "nginx-njs.log"
HOST = "api.example-social.test"


def fixture_lines() -> list[bytes]:
    return nonempty_lines(FIXTURE)


def a_line(**changes: Any) -> dict[str, Any]:
    """The HTTP/1.1 fixture line as an object, with `changes` applied (dotted keys go
    into nested objects; None removes the key)."""
    obj = orjson.loads(fixture_lines()[0])
    return edited(obj, changes)


def reject(line: bytes | str) -> InvalidRequest:
    return rejected(nginx_njs.decode_line, line)


# --- lines nginx wrote -------------------------------------------------------------------
def test_an_http1_line_keeps_the_order_and_case_the_client_sent():
    r = nginx_njs.decode_line(fixture_lines()[0])
    assert r.request_id == "e836e95ac935f84f191f99219410fe05"
    assert r.ts == pytest.approx(1796279989.302)  # $msec - $request_time: its first bytes
    assert (r.client_ip, r.method, r.path, r.query, r.http_version) == ("127.0.0.1", "GET", "/api/v1/x",
                                                                         "a=1&b=%20", "1.1")
    assert r.response_status == 200
    # every name, in the order and case received (Host third, as http.client sent it),
    # every value but the credential detector.js blanks
    assert r.headers == (("x-es-DEVICE-id", "android-0123456789abcdef"), ("User-Agent", 'ExampleSocial 1 "x"'),
                         ("Host", f"{HOST}:18443"), ("Accept", "*/*"), ("Authorization", ""))
    tls = dict(r.tls or {})
    assert tls == {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384", "sni": HOST}  # no print, no ALPN offered
    assert r.h2 is None and r.body_sha256 is None
    assert r.edge == "nginx-njs" and not r.extra


def test_an_http2_post_has_its_authority_and_body_hash():
    r = nginx_njs.decode_line(fixture_lines()[1])
    assert (r.method, r.path, r.http_version, r.response_status) == ("POST", "/api/v1/upload", "2", 501)
    # lower-case on the wire; nginx's host from :authority is h2.authority, not a header
    assert r.headers == (("user-agent", "curl/7.88.1"), ("accept", "*/*"), ("content-type", "application/json"),
                         ("content-length", "7"))
    assert dict(r.h2 or {}) == {"authority": f"{HOST}:18443"}
    import hashlib

    assert r.body_sha256 == hashlib.sha256(b'{"a":1}').hexdigest() and r.body_size == 7
    assert dict(r.tls or {})["alpn"] == "h2"


def test_the_whole_syslog_line_decodes_without_its_header():
    line = fixture_lines()[2]
    assert line.startswith(b"<134>")
    r = nginx_njs.decode_line(line)
    assert r.path == "/" and r.query is None and r.http_version == "1.1"
    assert [k for k, _ in r.headers] == ["Host", "User-Agent", "Accept"]
    # as rsyslog's %msg% gives it: a leading space
    assert nginx_njs.decode_line(b" " + line.split(b"nginx: ", 1)[1]).request_id == r.request_id


def test_bytes_that_are_not_utf8_arrive_as_replacement_characters():
    r = nginx_njs.decode_line(fixture_lines()[3])
    assert r.headers[-1] == ("X-Bad", "\ufffd\ufffd")
    r = nginx_njs.decode_line(fixture_lines()[5])
    assert (r.path, r.query) == ("/api/v1/\ufffd\ufffd", "q=\ufffd")
    assert r.headers == (("Host", "x"),)  # nginx dropped the header named X-\xffName


def test_a_request_nginx_refused_before_its_line_is_dead_lettered():
    obj = orjson.loads(fixture_lines()[4])
    assert (obj["method"], obj["path"], obj["response_status"]) == ("", "", 400)
    assert reject(fixture_lines()[4]).code == "invalid_value"


def test_the_edge_is_the_adapters_not_the_lines():
    assert nginx_njs.decode_line(orjson.dumps(a_line(edge="full"))).edge == "nginx-njs"
    assert format_edge("nginx-njs") == "nginx-njs"


def test_only_the_keys_detector_js_writes_are_taken():
    # nginx has no enrichment, attestation or TLS fingerprint: a line's own are dropped
    obj = a_line(label="attack", account_id="acct-1", attestation={"verdict": "MEETS_DEVICE_INTEGRITY"},
                 network={"asn": 64500, "hosting": False}, **{"tls.ja4": "t13d1516h2_8daaf6152771_02713d6af862",
                                                            "tls.client_hello": "FgMB"})
    obj["h2"] = {"authority": "api.example-social.test", "fingerprint": "1:65536|0|0|m,a,s,p"}
    r = nginx_njs.decode_line(orjson.dumps(obj))
    assert r.attestation is None and r.network is None and not r.extra
    assert set(dict(r.tls or {})) == {"version", "cipher", "sni", "alpn"} & set(obj["tls"])
    assert dict(r.h2 or {}) == {"authority": "api.example-social.test"}
    assert r.request_id == obj["request_id"] and r.headers == nginx_njs.decode_line(fixture_lines()[0]).headers


def test_a_line_without_tls_has_no_tls_object():
    assert nginx_njs.decode_line(orjson.dumps(a_line(tls=None))).tls is None


# --- bad lines: rejections with codes, never an exception -------------------------------
def test_every_cut_of_a_line_is_rejected_as_truncated():
    for line in fixture_lines()[:2]:
        line = line.strip()
        codes = {reject(line[:n]).code for n in range(1, len(line) - 1)}
        assert codes == {"truncated"}


def test_every_cut_of_a_non_ascii_line_is_rejected_as_truncated():
    # a cut inside a multi-byte UTF-8 character (one byte into the € of "/é€") is a
    # line cut short, not bytes that are not UTF-8
    line = orjson.dumps(a_line(path="/é€"))
    assert reject(line[:line.index("€".encode()) + 1]).code == "truncated"
    assert {reject(line[:n]).code for n in range(1, len(line) - 1)} == {"truncated"}
    # a whole object, then the first byte of a character; a byte that is never UTF-8
    assert reject(line + b"\xe2").code == "invalid_utf8"
    assert reject(line.replace("é".encode(), b"\xff", 1)).code == "invalid_utf8"


def test_every_cut_of_a_line_behind_a_syslog_header_is_truncated():
    # a relay that forwards the whole syslog line: a cut inside the header or the
    # first bytes of {"nginx": is a line cut short, not a line of another format
    line = fixture_lines()[2].strip()
    assert line.startswith(b"<134>") and line.index(b'{"nginx":') > 20
    assert {reject(line[:k]).code for k in range(1, len(line) - 1)} == {"truncated"}
    head = line[:line.index(b"{")]
    assert reject(head + b"nginx: 2026/12/03 06:39:49 [warn] 1#1: a warning").code == "invalid_json"  # a syslog line with another message
    assert reject(b"GET / HTTP/1.1").code == "invalid_json"


@pytest.mark.parametrize(("changes", "code"), [
    ({"nginx": 2}, "invalid_value"),                     # another format version
    ({"nginx": None}, "invalid_value"),
    ({"nginx": True}, "invalid_value"),                  # equals 1 in Python, is not the version
    ({"nginx": 1.0}, "invalid_value"),
    ({"nginx": "1"}, "invalid_value"),
    ({"request_id": None}, "missing_field"),             # the rest is the native contract's
    ({"request_id": ""}, "invalid_value"),
    ({"client_ip": "not-an-ip"}, "invalid_value"),
    ({"path": "api"}, "invalid_value"),
    ({"headers": [["Host"]]}, "invalid_type"),
    ({"headers": {"Host": "x"}}, "invalid_type"),
    ({"http_version": "2.0"}, "invalid_value"),
    ({"tls": "x"}, "invalid_type"),
    ({"tls.sni": 7}, "invalid_type"),
    ({"ts": "yesterday"}, "invalid_value"),
])
def test_a_malformed_line_is_rejected_with_its_code(changes, code):
    assert reject(orjson.dumps(a_line(**changes))).code == code


@pytest.mark.parametrize(("line", "code"), [
    (b"127.0.0.1 - - [03/Dec/2026:06:28:59 +0000] \"GET / HTTP/1.1\" 200 2", "invalid_json"),  # nginx's combined
    (b'<134>Dec  3 vm nginx: {"nginx":1, oops}', "invalid_json"),
    (b"[1, 2]", "invalid_json"),
    (b'{"nginx":1,"request_id":"\xff"}', "invalid_utf8"),
    (b"{}", "invalid_value"),
    (b'"x"', "invalid_json"),
    ("{\"nginx\":1,\"request_id\":\"\ud800\"}", "invalid_utf8"),
])
def test_lines_that_are_not_the_format(line, code):
    assert reject(line).code == code


def test_an_oversized_line_is_rejected():
    with pytest.raises(InvalidRequest) as info:
        nginx_njs.decode_line(fixture_lines()[0], DecodeLimits(max_message_bytes=100))
    assert info.value.code == "oversized"


def test_a_message_of_lines_keeps_the_good_ones_and_indexes_the_bad():
    good = fixture_lines()
    value = b"\n".join([good[0], good[1][:100], good[2], b"{}"])
    out = nginx_njs.decode_message(value)
    assert [r.request_id for r in out.requests] == ["e836e95ac935f84f191f99219410fe05",
                                                    "963a8ef978b90a657abe4b340fdfd352"]
    assert out.indices == [0, 2]
    assert [(r.index, r.code) for r in out.rejections] == [(1, "truncated"), (3, "invalid_value")]
    one = nginx_njs.decode_message(good[0] + b"\n")
    assert one.indices == [None] and not one.rejections and one.requests[0].edge == "nginx-njs"
    assert nginx_njs.decode_message(b"").rejections[0].code == "empty_message"
    assert nginx_njs.decode_message(None).rejections[0].code == "empty_message"
    assert nginx_njs.decode_message(b" \n").rejections[0].code == "empty_message"
    big = nginx_njs.decode_message(good[0], DecodeLimits(max_message_bytes=100))
    assert [r.code for r in big.rejections] == ["oversized"]
    many = nginx_njs.decode_message(b"\n".join([good[0]] * 3), DecodeLimits(max_batch_elements=2))
    assert [r.code for r in many.rejections] == ["too_many"] and not many.requests


def test_hostile_bytes_never_raise():
    rng = random.Random(14)
    bases = fixture_lines()
    for _ in range(1500):
        b = bytearray(rng.choice(bases))
        for _ in range(rng.randint(1, 6)):
            op = rng.random()
            i = rng.randrange(len(b))
            if op < 0.4:
                b[i] = rng.randrange(256)
            elif op < 0.7:
                del b[i:i + rng.randint(1, 40)]
            else:
                b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        out = nginx_njs.decode_message(bytes(b))
        assert len(out.requests) + len(out.rejections) >= 1
        assert all(r.code in REJECTION_CODES for r in out.rejections)
        assert all(r.edge == "nginx-njs" for r in out.requests)


# --- selection: the setting, the decoders, `detector score --format` ----------------------
def test_the_input_format_setting_names_the_adapter():
    assert "nginx-njs" in INPUT_FORMATS
    assert "nginx-njs" in RuntimeSettings.model_fields["input_format"].annotation.__args__
    assert RuntimeSettings(input_format="nginx-njs").input_format == "nginx-njs"
    assert message_decoder("nginx-njs") is nginx_njs.decode_message
    assert line_decoder("nginx-njs") is nginx_njs.decode_line


def test_detector_score_reads_nginx_lines(tmp_path):
    src = tmp_path / "nginx.log"
    src.write_bytes(FIXTURE.read_bytes() + fixture_lines()[0][:121] + b"\n")
    good = [ln for i, ln in enumerate(fixture_lines()) if i != 4]
    out = subprocess.run([sys.executable, "-m", "agents.cli", "score", "--format", "nginx-njs", str(src)],
                         capture_output=True, cwd=ROOT, timeout=120, check=False)
    verdicts = [orjson.loads(ln) for ln in out.stdout.splitlines()]
    assert [v["request_id"] for v in verdicts] == [nginx_njs.decode_line(ln).request_id for ln in good]
    # /api/v1/x is in the example profile's scope and judged through the nginx-njs
    # edge: TLS not assessed, the headers are (the app writes lower-case names)
    first = verdicts[0]
    assert first["profile"] == "example-android" and first["assessed"] is True
    assert "tls" in first["not_assessed"] and "headers" not in first["not_assessed"]
    codes = {s["code"] for s in first["signals"]}
    assert "headers.name_case" in codes and not {c for c in codes if c.startswith("tls.")}
    assert verdicts[2]["assessed"] is False  # "/" is not in the profile's scope
    assert "line 5: rejected: invalid_value" in out.stderr.decode()  # the 400
    assert out.stderr.decode().strip().endswith("line 7: rejected: truncated: nginx-njs log line cut short after "
                                                "121 bytes (raise the relay's maximum message size: rsyslog's "
                                                "maxMessageSize)")
    assert out.returncode == 1
    native = subprocess.run([sys.executable, "-m", "agents.cli", "score", str(src)],
                            capture_output=True, cwd=ROOT, timeout=120, check=False)
    # the native decoder takes the lines nginx wrote to the file (the contract with one
    # unknown key), not the syslog line, the 400 or the cut one
    assert native.stderr.count(b"rejected:") == 3
