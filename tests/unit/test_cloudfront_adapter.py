"""The CloudFront input adapter (detector/adapters/cloudfront.py): real-time log lines
of the shipped configuration (config/edges/cloudfront/realtime-log-config.json.example)
into ClientRequests, header fields cut at CloudFront's 800 bytes never turning into
false header values, and bad lines as rejections with codes.

tests/fixtures/edges/cloudfront-realtime.log was built from AWS's documented fields
(tests/fixtures/edges/README.md), not captured from CloudFront."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from urllib.parse import quote

import orjson
import pytest

from detector.adapters import INPUT_FORMATS, cloudfront, format_edge, line_decoder, message_decoder
from detector.config.schema import RuntimeSettings
from detector.decode import REJECTION_CODES, DecodeLimits, InvalidRequest

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "edges" / "cloudfront-realtime.log"
CONFIG = ROOT / "config" / "edges" / "cloudfront" / "realtime-log-config.json.example"
UA = "ExampleSocial 318.0.0 Android (34/14; 420dpi; 1080x2400; Google; Pixel 7; panther; tensor; en_US; 604112318)"
# AWS's real-time log fields, in the order CloudFront writes them (CloudFront
# Developer Guide, "Real-time log configuration fields"; asn after origin-lbl)
DOCUMENTED_ORDER = (
    "timestamp", "c-ip", "time-to-first-byte", "sc-status", "sc-bytes", "cs-method", "cs-protocol", "cs-host",
    "cs-uri-stem", "cs-bytes", "x-edge-location", "x-edge-request-id", "x-host-header", "time-taken",
    "cs-protocol-version", "c-ip-version", "cs-user-agent", "cs-referer", "cs-cookie", "cs-uri-query",
    "x-edge-response-result-type", "x-forwarded-for", "ssl-protocol", "ssl-cipher", "x-edge-result-type",
    "fle-encrypted-fields", "fle-status", "sc-content-type", "sc-content-len", "sc-range-start", "sc-range-end",
    "c-port", "x-edge-detailed-result-type", "c-country", "cs-accept-encoding", "cs-accept",
    "cache-behavior-path-pattern", "cs-headers", "cs-header-names", "cs-headers-count", "origin-fbl", "origin-lbl",
    "asn",
)


def fixture_lines() -> list[bytes]:
    return [ln for ln in FIXTURE.read_bytes().split(b"\n") if ln.strip()]


def fields(n: int = 0) -> dict[str, str]:
    return dict(zip(cloudfront.FIELDS, fixture_lines()[n].decode().split("\t"), strict=True))


def line(n: int = 0, **changes: str) -> str:
    """Fixture line `n` with fields changed (keyword names use _ for -)."""
    f = fields(n)
    for k, v in changes.items():
        key = k.replace("_", "-")
        assert key in f, key
        f[key] = v
    return "\t".join(f[name] for name in cloudfront.FIELDS)


def with_headers(pairs: list[tuple[str, str]], *, count: int | None = None, names: str | None = None,
                 values: str | None = None, n: int = 0) -> str:
    return line(n, cs_headers=values if values is not None else quote("".join(f"{a}:{b}\n" for a, b in pairs), safe=""),
                cs_header_names=names if names is not None else quote("".join(f"{a}\n" for a, _ in pairs), safe=""),
                cs_headers_count=str(len(pairs) if count is None else count))


def reject(text: bytes | str) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        cloudfront.decode_line(text)
    assert info.value.code in REJECTION_CODES
    return info.value


# --- the shipped configuration -------------------------------------------------------------
def test_the_shipped_configuration_names_the_adapters_fields_in_cloudfronts_order():
    config = json.loads(CONFIG.read_text())
    assert tuple(config["Fields"]) == cloudfront.FIELDS
    # CloudFront writes a record's fields in its own fixed order, whatever order a
    # configuration lists them in: FIELDS must be in that order to be read right
    assert set(cloudfront.FIELDS) <= set(DOCUMENTED_ORDER)
    positions = [DOCUMENTED_ORDER.index(f) for f in cloudfront.FIELDS]
    assert positions == sorted(positions)
    assert config["SamplingRate"] == 100 and config["EndPoints"][0]["StreamType"] == "Kinesis"


# --- the fixture's lines -------------------------------------------------------------------
def test_an_http2_line_becomes_the_native_contract():
    r = cloudfront.decode_line(fixture_lines()[0])
    assert r.request_id == "Y2xvdWRmcm9udC1maXh0dXJlLXJlcXVlc3QtMDAwMDE="
    assert r.ts == pytest.approx(1796256423.586)
    assert (r.client_ip, r.method, r.path, r.query, r.http_version) == ("198.51.100.7", "GET", "/api/v1/x", "a=1", "2")
    assert r.response_status == 200
    # names in order from cs-header-names, values from cs-headers
    assert r.headers == (("x-es-device-id", "android-0123456789abcdef"), ("x-es-device-checksum", "3b1f5e0a"),
                         ("x-es-timestamp", "1796256423"), ("accept-language", "en-US"),
                         ("x-es-connection-type", "WIFI"), ("accept-encoding", "gzip"), ("user-agent", UA))
    assert dict(r.h2 or {}) == {"authority": "api.example-social.test"}  # HTTP/2: no Host, x-host-header
    assert dict(r.tls or {}) == {"version": "TLSv1.3"}  # real-time logs have no fingerprint field
    assert dict(r.network or {}) == {"asn": 64500, "country": "DE"}
    assert r.edge == "cloudfront" and not r.extra


def test_an_http1_line_without_fingerprint_headers_or_enrichment():
    r = cloudfront.decode_line(fixture_lines()[1])
    assert (r.client_ip, r.path, r.query, r.http_version, r.response_status) == ("2001:db8::7", "/", None, "1.1", 404)
    assert r.headers == (("Host", "api.example-social.test"), ("User-Agent", "curl/7.88.1"), ("Accept", "*/*"))
    assert r.h2 is None and dict(r.tls or {}) == {"version": "TLSv1.3"} and r.network is None


APP_JA4 = "t13d1516h2_8daaf6152771_02713d6af862"  # the JA4 of the captured curl_cffi chrome131_android hello


@pytest.mark.parametrize("spoof", [APP_JA4, "junk?"])
def test_a_viewer_sent_fingerprint_header_is_a_header_never_the_tls_fingerprint(spoof):
    # cs-headers logs the viewer's request: a client that sends the header picks its
    # own "fingerprint"; it must stay in its header list (the header checks judge it)
    pairs = [("user-agent", UA), ("CloudFront-Viewer-JA4-Fingerprint", spoof),
             ("CloudFront-Viewer-JA3-Fingerprint", "272e7b75ac718a112afb0b62f20f186c"),
             ("CloudFront-Viewer-JA4-Fingerprint", APP_JA4)]
    r = cloudfront.decode_line(with_headers(pairs))
    assert dict(r.tls or {}) == {"version": "TLSv1.3"}
    assert [list(h) for h in r.headers] == [list(p) for p in pairs]


def test_the_cloudfront_edge_profile_claims_no_tls_fingerprint(detection):
    edge = detection.edges["cloudfront"]
    assert (edge.client_hello, edge.ja3, edge.ja4, edge.has_tls) == (False, False, "none", False)
    assert any(code.startswith("tls.") for code in edge.lost_codes())


def test_dash_is_an_absent_value():
    r = cloudfront.decode_line(line(1, ssl_protocol="-", sc_status="-", cs_protocol_version="-"))
    assert r.tls is None and r.response_status is None and r.http_version is None


# --- fields cut at CloudFront's 800 bytes -------------------------------------------------
def _padded(extra: int) -> list[tuple[str, str]]:
    return [("user-agent", UA), ("x-es-device-id", "android-0123456789abcdef"), ("x-pad", "p" * extra),
            ("accept-encoding", "gzip")]


def test_cs_headers_at_the_limit_never_gives_a_cut_value():
    pairs = _padded(900)
    values = quote("".join(f"{a}:{b}\n" for a, b in pairs), safe="")[:cloudfront.FIELD_LIMIT_BYTES]
    r = cloudfront.decode_line(with_headers(pairs, values=values))
    # every name (cs-header-names is short), in order; the cut x-pad value is dropped,
    # and what followed it was lost: empty, never a prefix of the real value
    assert [n for n, _ in r.headers] == ["user-agent", "x-es-device-id", "x-pad", "accept-encoding"]
    assert dict(r.headers) == {"user-agent": UA, "x-es-device-id": "android-0123456789abcdef", "x-pad": "",
                               "accept-encoding": ""}


def test_a_lost_user_agent_value_comes_from_cs_user_agent():
    pairs = [("x-pad", "p" * 900), ("user-agent", UA)]
    values = quote("".join(f"{a}:{b}\n" for a, b in pairs), safe="")[:cloudfront.FIELD_LIMIT_BYTES]
    r = cloudfront.decode_line(with_headers(pairs, values=values))
    assert dict(r.headers) == {"x-pad": "", "user-agent": UA}


@pytest.mark.parametrize("cut", range(cloudfront.FIELD_LIMIT_BYTES - 12, cloudfront.FIELD_LIMIT_BYTES + 1))
def test_cs_header_names_cut_anywhere_is_truncated_never_a_false_name(cut):
    pairs = [(f"x-name-{i:03d}-" + "n" * 20, "v") for i in range(40)]
    names = quote("".join(f"{a}\n" for a, _ in pairs), safe="")
    assert len(names) > cloudfront.FIELD_LIMIT_BYTES
    cut_names = names[:cut].ljust(cloudfront.FIELD_LIMIT_BYTES, "x") if cut < cloudfront.FIELD_LIMIT_BYTES \
        else names[:cut]
    assert reject(with_headers(pairs, names=cut_names)).code == "truncated"


def test_cs_header_names_at_the_limit_but_complete_by_its_count_is_read():
    names = [f"x-h{i:02d}-" + "n" * 30 for i in range(19)]
    short = cloudfront.FIELD_LIMIT_BYTES - len(quote("\n".join(names), safe=""))
    names[-1] += "z" * short  # the field ends exactly with the last name, at the limit
    field = quote("\n".join(names), safe="")
    assert len(field) == cloudfront.FIELD_LIMIT_BYTES
    pairs = [(n, "v") for n in names]
    r = cloudfront.decode_line(with_headers(pairs, names=field, count=len(names)))
    assert [n for n, _ in r.headers] == names  # the count says the last name is whole
    assert reject(with_headers(pairs, names=field, count=len(names) + 1)).code == "truncated"


def _names_cut_inside(last: str, keep: int) -> tuple[list[str], str]:
    """Names whose cs-header-names field, cut at the limit, ends `keep` characters into
    `last`: the names and the cut field."""
    first = [f"x-h{i:02d}-" + "n" * 30 for i in range(19)]
    prefix = quote("".join(f"{n}\n" for n in first), safe="")
    first[0] += "p" * (cloudfront.FIELD_LIMIT_BYTES - keep - len(prefix))
    names = [*first, last]
    field = quote("".join(f"{n}\n" for n in names), safe="")[:cloudfront.FIELD_LIMIT_BYTES]
    assert field.endswith("%0A" + last[:keep])
    return names, field


def test_a_name_cut_inside_never_becomes_a_header_even_when_the_count_matches():
    # the count is the real number of names, so it cannot tell a cut last name: only
    # cs-headers holding the name whole can
    names, field = _names_cut_inside("x-es-device-checksum-long", len("x-es-device-checksum-"))
    pairs = [(n, "v") for n in names]
    e = reject(with_headers(pairs, names=field, count=len(pairs)))
    assert e.code == "truncated"


def test_a_whole_last_name_at_the_limit_needs_its_whole_name_in_cs_headers():
    last = "x-es-device-checksum"
    names, field = _names_cut_inside(last, len(last))  # the field ends with the whole name
    pairs = [(n, "v") for n in names]
    whole = quote("".join(f"{a}:{b}\n" for a, b in pairs), safe="")
    r = cloudfront.decode_line(with_headers(pairs, names=field, values=whole))
    assert [n for n, _ in r.headers] == names
    # cs-headers cut inside the last entry's value: the name is whole (its `:` was
    # written), the value is not
    values = (whole[:-3] + "x" * 900)[:cloudfront.FIELD_LIMIT_BYTES + 200]
    r = cloudfront.decode_line(with_headers(pairs, names=field, values=values))
    assert r.headers[-1] == (last, "")
    # cs-headers cut inside the last entry's name: nothing says the name is whole
    cut_name = whole[:whole[:-3].rindex("%0A") + 3] + last[:10]
    assert len(cut_name) >= cloudfront.FIELD_LIMIT_BYTES
    assert reject(with_headers(pairs, names=field, values=cut_name)).code == "truncated"


# --- repeated names: bounded work ------------------------------------------------------------
def test_a_line_of_hundreds_of_thousands_of_repeated_names_is_too_many_at_once():
    # a 2.7 MB line of 340000 repeated names took 10 s of CPU (a quadratic list.pop(0)
    # per name) before the validator said too_many: now told before decoding
    n = 340_000
    text = line(0, cs_headers="a%3Ab%0A" * n, cs_header_names="a%0A" * n, cs_headers_count=str(n))
    started = time.process_time()
    assert reject(text).code == "too_many"
    assert time.process_time() - started < 1.0
    limits = DecodeLimits(max_headers=4)
    for names, code in (("a%0A" * 4, None), ("a%0A" * 5, "too_many")):
        with_names = line(0, cs_headers="a%3A1%0Aa%3A2%0Aa%3A3%0Aa%3A4%0A", cs_header_names=names,
                          cs_headers_count=str(names.count("%0A")))
        if code is None:
            assert cloudfront.decode_line(with_names, limits).headers == (("a", "1"), ("a", "2"), ("a", "3"),
                                                                           ("a", "4"))
        else:
            with pytest.raises(InvalidRequest) as info:
                cloudfront.decode_line(with_names, limits)
            assert info.value.code == code


def test_repeated_names_take_their_values_in_order():
    pairs = [("x-a", "1"), ("x-b", "2"), ("x-a", "3"), ("X-A", "4")]
    r = cloudfront.decode_line(with_headers(pairs))
    assert r.headers == (("x-a", "1"), ("x-b", "2"), ("x-a", "3"), ("X-A", "4"))


# --- bad lines: rejections with codes, never an exception -----------------------------------
def test_every_line_with_fewer_fields_is_truncated():
    text = fixture_lines()[0].decode()
    tabs = [i for i, c in enumerate(text) if c == "\t"]
    assert len(tabs) == len(cloudfront.FIELDS) - 1
    for at in tabs:
        assert reject(text[:at]).code == "truncated"


def test_a_line_cut_inside_a_multibyte_character_is_truncated():
    text = line(1, cs_user_agent="Bücher/1.0 (日本語)").encode()
    at = text.index("本".encode()) + 1  # one byte into a three-byte character
    assert reject(text[:at]).code == "truncated"
    assert reject(text[:at] + b"\n").code == "truncated"
    # every field there, then the first byte of a character: bytes that are not UTF-8
    assert reject(line(1, asn="64500").encode() + b"\xe6").code == "invalid_utf8"
    assert reject(text.replace("本".encode(), b"\xe6", 1)).code == "invalid_utf8"


@pytest.mark.parametrize(("changes", "code"), [
    ({"timestamp": "yesterday"}, "invalid_value"),
    ({"timestamp": "-"}, "invalid_value"),
    ({"timestamp": "1.5e9"}, "invalid_value"),
    ({"timestamp": "99999999999.5"}, "out_of_range"),        # judged by the native validator
    ({"c_ip": "not-an-ip"}, "invalid_value"),
    ({"cs_uri_stem": "images"}, "invalid_value"),
    ({"x_edge_request_id": "-"}, "missing_field"),
    ({"cs_protocol_version": "SPDY/3"}, "invalid_value"),
    ({"sc_status": "2OO"}, "invalid_value"),
    ({"cs_headers_count": "nine"}, "invalid_value"),
    ({"asn": "AS64500"}, "invalid_value"),
    ({"c_country": "Germany"}, "invalid_value"),
    ({"cs_headers": "x-a%3Ab%ZZ"}, "invalid_value"),         # bad URL encoding
    ({"cs_header_names": "x-a%0"}, "invalid_value"),
    ({"cs_headers": "x-a%3A%FF%FE%0A"}, "invalid_utf8"),      # encodes bytes that are not UTF-8
    ({"cs_headers": "no-colon-here%0A"}, "invalid_value"),
])
def test_a_malformed_line_is_rejected_with_its_code(changes, code):
    assert reject(line(0, **changes)).code == code


def test_lines_that_are_not_the_format():
    assert reject(line(0) + "\textra").code == "invalid_value"        # more fields than configured
    assert reject(b"GET / HTTP/1.1").code == "truncated"              # one field
    assert reject(line(0).encode().replace(b"GET", b"G\xffT")).code == "invalid_utf8"
    assert reject("\ud800" + line(0)).code == "invalid_utf8"
    assert reject(line(0, cs_uri_query="a=" + "x" * (5 << 20))).code == "oversized"  # the line's bound
    assert reject(line(0, cs_uri_query="a=" + "x" * 100_000)).code == "oversized"  # a field's (native)


def test_a_line_of_millions_of_fields_is_refused_without_splitting_them_all():
    text = (line(0) + "\t" * 3_000_000).encode()
    tracemalloc.start()
    try:
        assert reject(text).code == "invalid_value"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 12 << 20  # the line's 3 MB as text; a list of 3 million fields alone is 24 MB


def test_a_message_of_lines_keeps_the_good_ones_and_indexes_the_bad():
    good = fixture_lines()
    out = cloudfront.decode_message(b"\n".join([good[0], good[1][:40], good[1], b"x"]))
    assert [r.request_id for r in out.requests] == [cloudfront.decode_line(g).request_id for g in good]
    assert out.indices == [0, 2]
    assert [(r.index, r.code) for r in out.rejections] == [(1, "truncated"), (3, "truncated")]
    one = cloudfront.decode_message(good[0] + b"\n")
    assert one.indices == [None] and not one.rejections
    assert cloudfront.decode_message(b"").rejections[0].code == "empty_message"
    assert cloudfront.decode_message(None).rejections[0].code == "empty_message"


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
                b[i] ^= 1 << rng.randrange(8)                  # a bit flip
            elif op < 0.8:
                del b[i:i + rng.randint(1, 40)]
            else:
                b[i:i] = bytes(rng.choice(b"\t%0A:-x\xff") for _ in range(rng.randint(1, 8)))
        if rng.random() < 0.3:
            b = b[:rng.randrange(len(b))]                      # cut short
        out = cloudfront.decode_message(bytes(b))
        assert len(out.requests) + len(out.rejections) >= 1
        assert all(r.code in REJECTION_CODES for r in out.rejections)
        assert all(r.edge == "cloudfront" for r in out.requests)


# --- selection: the setting, the decoders, `detector score --format` -------------------------
def test_the_input_format_setting_accepts_cloudfront_and_marks_its_edge():
    assert "cloudfront" in INPUT_FORMATS
    assert set(RuntimeSettings.model_fields["input_format"].annotation.__args__) == set(INPUT_FORMATS)
    assert RuntimeSettings(input_format="cloudfront").input_format == "cloudfront"
    assert message_decoder("cloudfront") is cloudfront.decode_message
    assert line_decoder("cloudfront") is cloudfront.decode_line
    assert format_edge("cloudfront") == "cloudfront" == cloudfront.EDGE
    assert (ROOT / "config" / "edges" / "cloudfront.yaml").is_file()


def test_detector_score_reads_cloudfront_lines(tmp_path):
    src = tmp_path / "cloudfront.log"
    src.write_bytes(FIXTURE.read_bytes() + fixture_lines()[0][:60] + b"\n")
    out = subprocess.run([sys.executable, "-m", "agents.cli", "score", "--format", "cloudfront", str(src)],
                         capture_output=True, cwd=ROOT, timeout=120, check=False)
    verdicts = [orjson.loads(ln) for ln in out.stdout.splitlines()]
    assert [v["request_id"] for v in verdicts] == [cloudfront.decode_line(ln).request_id for ln in fixture_lines()]
    assert verdicts[0]["profile"] == "example-android" and "ja4" not in verdicts[0]["fingerprints"]
    assert "tls" in verdicts[0]["not_assessed"]  # the edge has no TLS fingerprint to judge
    assert verdicts[1]["assessed"] is False  # / is outside the example profile's scope
    assert "line 3: rejected: truncated:" in out.stderr.decode()
    assert out.returncode == 1
