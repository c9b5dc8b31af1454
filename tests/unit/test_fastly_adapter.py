"""The Fastly input adapter (detector/adapters/fastly.py): JSON lines of the shipped
Compute logger's shape (config/edges/fastly/README.md) into ClientRequests, the raw
ClientHello into the contract's tls.client_hello (so the project's own fingerprinting
computes JA3/JA4), VCL lines refused, and bad lines as rejections with codes.

tests/fixtures/edges/fastly-compute.jsonl was built from that shape and the fastly
crate's documentation (tests/fixtures/edges/README.md), with real ClientHellos of
tests/data/client_hellos.json, not captured from Fastly."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from detector.adapters import INPUT_FORMATS, fastly, format_edge, line_decoder, message_decoder
from detector.config.schema import RuntimeSettings
from detector.decode import MAX_CLIENT_HELLO_CHARS, REJECTION_CODES, InvalidRequest
from detector.fingerprints.tls import fingerprints_from_b64
from tests.unit._adapter_fixtures import nonempty_lines, rejected

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "edges" / "fastly-compute.jsonl"
HELLOS = {h["client"]: h for h in json.loads((ROOT / "tests" / "data" / "client_hellos.json").read_text())["hellos"]}
CHROME = HELLOS["curl_cffi-chrome131_android"]


def fixture_lines() -> list[bytes]:
    return nonempty_lines(FIXTURE)


def a_line(n: int = 0, **changes: Any) -> dict[str, Any]:
    """Fixture line `n` as an object with `changes` (dotted keys go into nested
    objects; None removes the key)."""
    obj = orjson.loads(fixture_lines()[n])
    for key, value in changes.items():
        node = obj
        *path, last = key.split(".")
        for p in path:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return obj


def decode(obj: dict[str, Any]) -> Any:
    return fastly.decode_line(orjson.dumps(obj))


def reject(text: bytes | str) -> InvalidRequest:
    return rejected(fastly.decode_line, text)


# --- the fixture's lines -------------------------------------------------------------------
def test_an_http2_compute_line_becomes_the_native_contract():
    r = fastly.decode_line(fixture_lines()[0])
    assert r.request_id == "5a3c1e9e2b7f4d0c8e61f0a4b2d9c713"
    assert r.ts == pytest.approx(1796256423.586)
    assert (r.client_ip, r.method, r.path, r.query, r.http_version) == ("198.51.100.7", "GET", "/api/v1/x", "a=1", "2")
    assert [n for n, _ in r.headers] == ["x-es-device-id", "x-es-device-checksum", "x-es-timestamp",
                                         "accept-language", "x-es-connection-type", "accept-encoding", "user-agent"]
    assert dict(r.h2 or {}) == {"fingerprint": "1:65536;2:0;4:6291456;6:262144|15663105|0|m,a,s,p",
                                "authority": "api.example-social.test"}
    tls = dict(r.tls or {})
    assert tls["client_hello"] == CHROME["client_hello_b64"]  # the raw hello, for the detector's own JA3/JA4
    assert tls["sni"] == "api.example-social.test"            # read from the hello: the line has none
    assert tls["version"] == "TLSv1.3"
    assert dict(r.network or {}) == {"asn": 64500, "country": "DE"}  # proxy "?": hosting not known
    assert r.body_size == 0 and r.body_sha256 is None
    assert r.edge == "fastly" and not r.extra


def test_an_http1_line_keeps_header_case_and_order_and_the_hosting_fact():
    r = fastly.decode_line(fixture_lines()[1])
    assert r.http_version == "1.1" and r.query is None and r.h2 is None
    assert r.headers == (("Host", "api.example-social.test"), ("User-Agent", "python-requests/2.34.2"),
                         ("Accept-Encoding", "gzip, deflate"), ("Accept", "*/*"), ("Connection", "keep-alive"))
    assert dict(r.network or {}) == {"asn": 64501, "country": "US", "hosting": True}
    assert dict(r.tls or {})["sni"] == "api.example-social.test"


@pytest.mark.parametrize("client", sorted(HELLOS))
def test_the_detector_computes_ja3_and_ja4_from_the_logged_hello(client, tmp_path):
    hello = HELLOS[client]
    obj = a_line(**{"tls.hello": hello["client_hello_b64"], "tls.ja3": None, "tls.ja4": None})
    r = decode(obj)
    fp = fingerprints_from_b64(dict(r.tls or {})["client_hello"])
    assert (fp.ja4, fp.ja3) == (hello["ja4"], hello["ja3"]), client


def test_pseudo_headers_go_to_h2():
    r = decode(a_line(headers=[[":method", "GET"], [":authority", "api.example-social.test:443"],
                               ["user-agent", "x"]], host=None))
    assert r.headers == (("user-agent", "x"),)
    assert dict(r.h2 or {})["authority"] == "api.example-social.test:443"


def test_a_line_without_tls_or_geo():
    r = decode(a_line(tls=None, geo=None, h2="", body=None))
    assert r.tls is None and r.network is None and r.body_size is None
    assert dict(r.h2 or {}) == {"authority": "api.example-social.test"}


def test_vcl_lines_are_refused_they_have_no_header_order():
    vcl = (ROOT / "config" / "edges" / "fastly" / "vcl-log-format.example").read_text()
    assert '"src":"vcl"' in vcl and "tls.client.ja4" in vcl and "fastly_info.h2.fingerprint" in vcl
    err = reject(orjson.dumps(a_line(src="vcl")))
    assert err.code == "invalid_value" and "Compute logger" in str(err)


# --- bad lines: rejections with codes, never an exception -----------------------------------
def test_a_hello_longer_than_the_contracts_bound_is_oversized_before_it_is_decoded():
    # not even base64: refused for its size, before it is decoded
    assert reject(orjson.dumps(a_line(**{"tls.hello": "!" * (MAX_CLIENT_HELLO_CHARS + 1)}))).code == "oversized"
    good = a_line()["tls"]["hello"]
    assert reject(orjson.dumps(a_line(**{"tls.hello": good + "A" * (MAX_CLIENT_HELLO_CHARS - len(good) + 4)}))).code \
        == "oversized"


def test_every_cut_of_a_line_is_rejected_as_truncated():
    text = fixture_lines()[1].strip()
    assert {reject(text[:n]).code for n in range(1, len(text) - 1)} == {"truncated"}


def test_every_cut_of_a_non_ascii_line_is_rejected_as_truncated():
    # a cut inside a multi-byte UTF-8 character (one byte into the € of "/é€") is a
    # line cut short, not bytes that are not UTF-8
    text = orjson.dumps(a_line(1, path="/é€", **{"headers": [["User-Agent", "Bücher/1.0 (日本語)"]]}))
    assert reject(text[:text.index("€".encode()) + 1]).code == "truncated"
    assert {reject(text[:n]).code for n in range(1, len(text) - 1)} == {"truncated"}
    # a whole object, then the first byte of a character; a byte that is never UTF-8
    assert reject(text + b"\xe2").code == "invalid_utf8"
    assert reject(text.replace("é".encode(), b"\xff", 1)).code == "invalid_utf8"


@pytest.mark.parametrize(("changes", "code"), [
    ({"fastly": 2}, "invalid_value"),                     # another shape version
    ({"fastly": None}, "invalid_value"),
    ({"fastly": True}, "invalid_value"),                  # equals 1 in Python, is not the version
    ({"fastly": 1.0}, "invalid_value"),
    ({"src": None}, "invalid_value"),
    ({"src": "edge"}, "invalid_value"),
    ({"id": ""}, "missing_field"),
    ({"id": 7}, "invalid_type"),
    ({"headers": None}, "missing_field"),
    ({"headers": {"user-agent": "x"}}, "invalid_type"),    # an object: no order
    ({"headers": [["user-agent"]]}, "invalid_type"),
    ({"headers": [["user-agent", 1]]}, "invalid_type"),
    ({"proto": "SPDY/3"}, "invalid_value"),
    ({"tls.ja4": "junk?"}, "invalid_value"),              # not the JA4 layout
    ({"tls.ja4": "t13d1516h2_8daaf6152771_02713d6af86?"}, "invalid_value"),
    ({"tls.ja3": "272E7B75AC718A112AFB0B62F20F186C"}, "invalid_value"),  # not lower-case hex
    ({"ts": "yesterday"}, "invalid_value"),
    ({"ts": 99999999999.0}, "out_of_range"),               # judged by the native validator
    ({"ts": None}, "missing_field"),
    ({"ip": "not-an-ip"}, "invalid_value"),
    ({"path": "x"}, "invalid_value"),
    ({"tls": "x"}, "invalid_type"),
    ({"tls.hello": "not base64!"}, "invalid_value"),
    ({"tls.hello": "QUJ"}, "invalid_value"),               # missing padding
    ({"tls.hello": "QU=JD"}, "invalid_value"),             # padding inside
    ({"tls.ja3": 5}, "invalid_type"),
    ({"tls.ja3": "zz"}, "invalid_value"),
    ({"geo.asn": "64500"}, "invalid_type"),
    ({"geo.asn": True}, "invalid_type"),
    ({"geo.country": "Germany"}, "invalid_value"),
    ({"body.sha256": "xyz"}, "invalid_value"),
    ({"body.size": -1}, "out_of_range"),
    ({"tls.hello": "A" * 20000}, "oversized"),
])
def test_a_malformed_line_is_rejected_with_its_code(changes, code):
    assert reject(orjson.dumps(a_line(**changes))).code == code


@pytest.mark.parametrize(("text", "code"), [
    (b"GET / HTTP/1.1", "invalid_json"),
    (b"[1, 2]", "invalid_type"),
    (b'{"fastly":1,"src":"compute","id":"\xff"}', "invalid_utf8"),
    (b"{}", "invalid_value"),
])
def test_lines_that_are_not_the_shape(text, code):
    assert reject(text).code == code


def test_oversized_and_surrogates():
    assert reject(b"{" + b" " * (5 << 20) + b"}").code == "oversized"  # over limits.max_message_bytes
    assert reject('{"id":"\ud800"}').code == "invalid_utf8"


def test_the_hello_is_judged_by_the_tls_check_not_the_adapter():
    # valid base64 that is no ClientHello: decoded, then tls.client_hello_invalid
    r = decode(a_line(**{"tls.hello": "AAAA"}))
    assert dict(r.tls or {})["client_hello"] == "AAAA"


def test_a_message_of_lines_keeps_the_good_ones_and_indexes_the_bad():
    good = fixture_lines()
    out = fastly.decode_message(b"\n".join([good[0], good[1][:50], good[1], b"{}"]))
    assert out.indices == [0, 2]
    assert [(r.index, r.code) for r in out.rejections] == [(1, "truncated"), (3, "invalid_value")]
    assert fastly.decode_message(b"").rejections[0].code == "empty_message"
    assert fastly.decode_message(None).rejections[0].code == "empty_message"


def test_hostile_bytes_never_raise():
    rng = random.Random(14)
    base = fixture_lines()[0]
    for _ in range(1500):
        b = bytearray(base)
        for _ in range(rng.randint(1, 6)):
            op = rng.random()
            i = rng.randrange(len(b))
            if op < 0.3:
                b[i] = rng.randrange(256)
            elif op < 0.5:
                b[i] ^= 1 << rng.randrange(8)
            elif op < 0.8:
                del b[i:i + rng.randint(1, 40)]
            else:
                b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        if rng.random() < 0.3:
            b = b[:rng.randrange(len(b))]
        out = fastly.decode_message(bytes(b))
        assert len(out.requests) + len(out.rejections) >= 1
        assert all(r.code in REJECTION_CODES for r in out.rejections)
        assert all(r.edge == "fastly" for r in out.requests)


# --- selection: the setting, the decoders, `detector score --format` -------------------------
def test_the_input_format_setting_accepts_fastly_and_marks_its_edge():
    assert "fastly" in INPUT_FORMATS
    assert RuntimeSettings(input_format="fastly").input_format == "fastly"
    assert message_decoder("fastly") is fastly.decode_message
    assert line_decoder("fastly") is fastly.decode_line
    assert format_edge("fastly") == "fastly" == fastly.EDGE
    assert (ROOT / "config" / "edges" / "fastly.yaml").is_file()


def test_detector_score_reads_fastly_lines(tmp_path):
    src = tmp_path / "fastly.jsonl"
    src.write_bytes(FIXTURE.read_bytes() + fixture_lines()[0][:80] + b"\n")
    out = subprocess.run([sys.executable, "-m", "agents.cli", "score", "--format", "fastly", str(src)],
                         capture_output=True, cwd=ROOT, timeout=120, check=False)
    verdicts = [orjson.loads(ln) for ln in out.stdout.splitlines()]
    assert [v["request_id"] for v in verdicts] == [fastly.decode_line(ln).request_id for ln in fixture_lines()]
    # the JA4 the detector computed from the logged hello
    assert verdicts[0]["fingerprints"]["ja4"] == CHROME["ja4"] and verdicts[0]["profile"] == "example-android"
    assert verdicts[1]["assessed"] is False  # / is outside the example profile's scope
    assert "line 3: rejected: truncated:" in out.stderr.decode()
    assert out.returncode == 1
