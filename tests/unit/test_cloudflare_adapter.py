"""The Cloudflare input adapter (detector/adapters/cloudflare.py): Logpush http_requests
lines (NDJSON; the job in config/edges/cloudflare/logpush-job.json.example) into
ClientRequests marked `edge: cloudflare`, ASN and country as the network enrichment,
batches of many lines per Kafka message, bad lines as rejections with codes.

tests/fixtures/edges/cloudflare-logpush.ndjson holds three lines built from Cloudflare's
documented http_requests fields, not captured from Cloudflare
(tests/fixtures/edges/cloudflare-logpush.md says where each field comes from)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from detector.adapters import INPUT_FORMATS, cloudflare, format_edge, line_decoder, message_decoder
from detector.config.schema import RuntimeSettings
from detector.decode import REJECTION_CODES, DecodeLimits, InvalidRequest
from tests.unit._adapter_fixtures import edited, nonempty_lines, rejected

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "edges" / "cloudflare-logpush.ndjson"
JOB = ROOT / "config" / "edges" / "cloudflare" / "logpush-job.json.example"
APP_JA4 = "t13d1513h2_8daaf6152771_eca864cca44a"  # config/profiles/example-android.yaml
REQUESTS_JA4 = "t13d1812h1_85036bcba153_b26ce05bbdd6"  # Python requests (config/fingerprints/known-stacks.yaml)
REQUESTS_JA3 = "a48c0d5f95b1ef98f560f324fd275da1"


def fixture_lines() -> list[bytes]:
    return nonempty_lines(FIXTURE)


def a_line(n: int = 0, **changes: Any) -> dict[str, Any]:
    """Fixture line `n` as an object with `changes` (dotted keys go into nested
    objects; None removes the key)."""
    obj = orjson.loads(fixture_lines()[n])
    return edited(obj, changes)


def reject(line: bytes | str) -> InvalidRequest:
    return rejected(cloudflare.decode_line, line)


# --- fixture lines -----------------------------------------------------------------------
def test_an_http2_line_becomes_the_native_contract():
    r = cloudflare.decode_line(fixture_lines()[0])
    assert r.request_id == "8e5b2c1f4a3d7e90"
    assert r.ts == pytest.approx(1796256423.586)  # unixnano 1796256423586000000
    assert (r.client_ip, r.method, r.path, r.query, r.http_version) == (
        "211.253.1.193", "GET", "/api/v1/config", "locale=hi_IN", "2")
    assert r.response_status == 200
    names = [n for n, _ in r.headers]
    # the user agent and the custom fields with a value, sorted by name; the host of an
    # HTTP/2 request is h2.authority
    assert names == ["accept-encoding", "accept-language", "user-agent", "x-es-bandwidth-kbps",
                     "x-es-connection-type", "x-es-device-checksum", "x-es-device-id", "x-es-session-id",
                     "x-es-signature", "x-es-timestamp", "x-es-user-id"]
    assert dict(r.headers)["user-agent"].startswith("ExampleSocial 317.1.0 Android")
    assert dict(r.h2 or {}) == {"authority": "api.example-social.test"}
    assert dict(r.tls or {}) == {"version": "TLSv1.3", "ja3": "9b0d79d10808bc0e509b4789f870a650", "ja4": APP_JA4}
    # ClientASN and ClientCountry are the network enrichment (the country upper-cased)
    assert dict(r.network or {}) == {"asn": 55410, "country": "IN"}
    assert r.edge == "cloudflare" and not r.extra


def test_an_http1_line_keeps_its_host_header_and_the_datasets_own_header_fields():
    r = cloudflare.decode_line(fixture_lines()[1])
    assert r.http_version == "1.1" and r.h2 is None and r.method == "POST"
    assert r.headers[0] == ("host", "api.example-social.test")
    assert dict(r.headers)["accept"] == "*/*"
    assert dict(r.network or {}) == {"asn": 16509, "country": "US"}
    assert dict(r.tls or {})["ja4"] == REQUESTS_JA4
    # ClientRequestReferer and ClientXRequestedWith become the headers they log
    obj = a_line(1, ClientRequestReferer="https://evil.test/", ClientXRequestedWith="XMLHttpRequest")
    h = dict(cloudflare.decode_line(orjson.dumps(obj)).headers)
    assert h["referer"] == "https://evil.test/" and h["x-requested-with"] == "XMLHttpRequest"


def test_unknown_country_and_asn_and_no_tls_are_absent():
    r = cloudflare.decode_line(fixture_lines()[2])  # ClientASN 0, ClientCountry xx
    assert r.network is None and r.client_ip == "2001:db8:85a3::8a2e:370:7334"
    assert dict(r.headers)["referer"] == "https://www.example.test/"
    for country in ("T1", "t1", "XX", ""):
        assert cloudflare.decode_line(orjson.dumps(a_line(0, ClientCountry=country))).network == {"asn": 55410}
    obj = a_line(0, ClientSSLProtocol="none", JA3Hash="", JA4="", ClientRequestProtocol="",
                 RequestHeaders=None, ClientRequestUserAgent=None)
    r = cloudflare.decode_line(orjson.dumps(obj))
    assert r.tls is None and r.http_version is None and r.headers == (("host", "api.example-social.test"),)


@pytest.mark.parametrize(("ts", "expected"), [
    (1796256423586000000, 1796256423.586),          # unixnano (the shipped job)
    ("1796256423586000000", 1796256423.586),
    (1796256423, 1796256423.0),                     # unix
    ("2026-12-03T00:07:03Z", 1796256423.0),         # rfc3339
])
def test_the_documented_timestamp_formats(ts, expected):
    assert cloudflare.decode_line(orjson.dumps(a_line(0, EdgeStartTimestamp=ts))).ts == pytest.approx(expected)


def test_the_shipped_job_asks_for_every_field_the_adapter_reads():
    job = json.loads(JOB.read_text())
    assert job["dataset"] == "http_requests"
    options = job["output_options"]
    assert options["output_type"] == "ndjson" and options["timestamp_format"] == "unixnano"
    fields = set(options["field_names"])
    assert set(orjson.loads(fixture_lines()[0])) == fields
    assert job["destination_conf"].startswith("https://")  # Logpush's HTTP destination: the relay


# --- the TLS check judges Cloudflare's fingerprints -----------------------------------------
def test_a_requests_like_ja4_on_the_api_is_flagged_and_the_apps_is_not(detection):
    from detector.edges import EdgePolicy

    pipeline = detection.pipeline(edges=EdgePolicy(detection.edges, "full").admitting("cloudflare"))
    app = pipeline.score_one(cloudflare.decode_line(fixture_lines()[0]))
    assert app.profile == "example-android" and app.assessed
    assert not [s.code for s in app.signals if s.code.startswith(("tls.", "network."))]
    spoof = a_line(0, JA4=REQUESTS_JA4, JA3Hash=REQUESTS_JA3)
    lib = pipeline.score_one(cloudflare.decode_line(orjson.dumps(spoof)))
    codes = [s.code for s in lib.signals]
    assert "tls.fingerprint_mismatch" in codes and "tls.known_automation_stack" in codes
    assert lib.score > app.score


def test_the_country_feeds_the_locale_check(detection):
    from detector.edges import EdgePolicy

    pipeline = detection.pipeline(edges=EdgePolicy(detection.edges, "full").admitting("cloudflare"))
    far = pipeline.score_one(cloudflare.decode_line(orjson.dumps(a_line(0, ClientCountry="br"))))
    assert "network.locale_country_mismatch" in [s.code for s in far.signals]  # hi_IN from Brazil


# --- bad lines: rejections with codes, never an exception -----------------------------------
def test_pseudo_header_names_in_request_headers_are_not_headers():
    base = cloudflare.decode_line(orjson.dumps(a_line(0)))
    r = cloudflare.decode_line(orjson.dumps(a_line(0, **{"RequestHeaders.:authority": "evil.example",
                                                          "RequestHeaders.:path": "/x"})))
    assert r.headers == base.headers and not any(n.startswith(":") for n, _ in r.headers)
    assert r.h2 == base.h2


def test_every_cut_of_a_line_is_rejected_as_truncated():
    for line in fixture_lines():
        line = line.strip()
        codes = {reject(line[:n]).code for n in range(1, len(line) - 1)}
        assert codes == {"truncated"}


def test_every_cut_of_a_non_ascii_line_is_rejected_as_truncated():
    line = orjson.dumps(a_line(0, ClientRequestURI="/é€?q=日本語", ClientRequestUserAgent="Bücher/1.0"))
    assert {reject(line[:n]).code for n in range(1, len(line) - 1)} == {"truncated"}
    # a whole object, then the first byte of a character; a byte that is never UTF-8
    assert reject(line + b"\xe2").code == "invalid_utf8"
    assert reject(line.replace("é".encode(), b"\xff", 1)).code == "invalid_utf8"


@pytest.mark.parametrize(("changes", "code"), [
    ({"RayID": ""}, "missing_field"),
    ({"RayID": None}, "missing_field"),
    ({"RayID": 12}, "invalid_type"),
    ({"EdgeStartTimestamp": None}, "missing_field"),
    ({"EdgeStartTimestamp": True}, "invalid_type"),
    ({"EdgeStartTimestamp": 179625642358600}, "out_of_range"),   # neither seconds nor nanoseconds
    ({"EdgeStartTimestamp": 900000000}, "out_of_range"),          # 1998
    ({"EdgeStartTimestamp": "yesterday"}, "invalid_value"),
    ({"EdgeStartTimestamp": [1]}, "invalid_type"),
    ({"ClientIP": ""}, "missing_field"),
    ({"ClientIP": "256.1.1.1"}, "invalid_value"),
    ({"ClientRequestMethod": None}, "missing_field"),
    ({"ClientRequestURI": "api/v1"}, "invalid_value"),
    ({"ClientRequestURI": None}, "missing_field"),
    ({"ClientRequestProtocol": "SPDY/3"}, "invalid_value"),
    ({"EdgeResponseStatus": "200"}, "invalid_type"),
    ({"ClientASN": "55410"}, "invalid_type"),
    ({"ClientASN": False}, "invalid_type"),
    ({"ClientASN": 2**33}, "out_of_range"),                       # judged by the native validator
    ({"ClientCountry": "IND"}, "invalid_value"),
    ({"ClientCountry": 1}, "invalid_type"),
    ({"JA3Hash": "abc"}, "invalid_value"),
    ({"JA3Hash": "A48C0D5F95B1EF98F560F324FD275DA1"}, "invalid_value"),
    ({"JA4": "t13d1513h2_8daaf6152771_eca864cca44"}, "invalid_value"),
    ({"JA4": "t13d1513h2-8daaf6152771-eca864cca44a"}, "invalid_value"),
    ({"JA4": ["t13d1513h2_8daaf6152771_eca864cca44a"]}, "invalid_type"),
    ({"RequestHeaders": "accept: */*"}, "invalid_type"),
    ({"RequestHeaders.accept": ["*/*"]}, "invalid_type"),
    ({"RequestHeaders": {f"x-h-{i}": "1" for i in range(300)}}, "too_many"),
    ({"ClientRequestUserAgent": "x" * 70000}, "oversized"),
])
def test_a_malformed_line_is_rejected_with_its_code(changes, code):
    assert reject(orjson.dumps(a_line(0, **changes))).code == code


@pytest.mark.parametrize(("line", "code"), [
    (b"[1, 2]", "invalid_type"),
    (b"42", "invalid_type"),
    (b"RayID,ClientIP", "invalid_json"),                  # a CSV job's line
    (b'{"RayID":"8e5b2c1f4a3d7e90",}', "invalid_json"),
    (b'{"RayID":"\xff"}', "invalid_utf8"),
    ("{\"RayID\":\"\udc80\"}", "invalid_utf8"),
    (b'{"content":"tests"}', "missing_field"),           # Logpush's destination check
])
def test_lines_that_are_not_the_format(line, code):
    assert reject(line).code == code


def test_a_logpush_batch_in_one_message():
    batch = FIXTURE.read_bytes() * 40  # 120 lines, as a relay passes on a share of one Logpush batch
    out = cloudflare.decode_message(batch)
    assert len(out.requests) == 120 and not out.rejections and out.form == "ndjson"
    assert out.indices == list(range(120)) and {r.edge for r in out.requests} == {"cloudflare"}
    good = fixture_lines()
    mixed = cloudflare.decode_message(b"\n".join([good[0], good[1][:77], b'{"content":"tests"}', good[2]]))
    assert [r.request_id for r in mixed.requests] == ["8e5b2c1f4a3d7e90", "8e5b2c2a0d9e3b44"]
    assert [(r.index, r.code) for r in mixed.rejections] == [(1, "truncated"), (2, "missing_field")]
    assert cloudflare.decode_message(batch, DecodeLimits(max_batch_elements=100)).rejections[0].code == "too_many"
    assert cloudflare.decode_message(batch, DecodeLimits(max_message_bytes=10_000)).rejections[0].code == "oversized"
    for empty in (b"", None, b"\n\n"):
        assert cloudflare.decode_message(empty).rejections[0].code == "empty_message"


def test_hostile_bytes_never_raise():
    rng = random.Random(14)
    for base in fixture_lines():
        for _ in range(600):
            b = bytearray(base)
            for _ in range(rng.randint(1, 6)):
                op = rng.random()
                i = rng.randrange(len(b))
                if op < 0.3:
                    b[i] ^= 1 << rng.randrange(8)
                elif op < 0.5:
                    b[i] = rng.randrange(256)
                elif op < 0.7:
                    del b[i:i + rng.randint(1, 40)]
                elif op < 0.85:
                    del b[i:]
                    break
                else:
                    b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
            out = cloudflare.decode_message(bytes(b) + b"\n" + base)  # with a good sibling
            assert out.requests and out.requests[-1].request_id == orjson.loads(base)["RayID"]
            assert all(r.code in REJECTION_CODES for r in out.rejections)


# --- selection: the setting, the decoders, the edge, `detector score --format cloudflare` ---
def test_the_input_format_setting_and_the_registry_name_cloudflare():
    assert "cloudflare" in INPUT_FORMATS
    assert "cloudflare" in RuntimeSettings.model_fields["input_format"].annotation.__args__
    assert RuntimeSettings(input_format="cloudflare").input_format == "cloudflare"
    assert message_decoder("cloudflare") is cloudflare.decode_message
    assert line_decoder("cloudflare") is cloudflare.decode_line
    assert format_edge("cloudflare") == "cloudflare" == cloudflare.EDGE


async def test_the_ingest_admits_and_judges_the_records_as_cloudflare(detection):
    from prometheus_client import CollectorRegistry

    from agents.ingest import IngestStage
    from agents.metrics import Metrics
    from agents.settings import load_settings

    stage = IngestStage(load_settings(input_format="cloudflare"), detection, Metrics(CollectorRegistry()), loop=None)
    policy = stage.pipeline.edges
    assert policy.default == "full" and policy.allowed == frozenset({"cloudflare"})
    assert stage.decode is cloudflare.decode_message
    req = stage.decode(FIXTURE.read_bytes(), DecodeLimits()).requests[1]
    assert policy.refusal(req) is None and policy.resolve(req).name == "cloudflare"


def test_detector_score_reads_logpush_lines(tmp_path):
    src = tmp_path / "logpush.ndjson"
    src.write_bytes(FIXTURE.read_bytes() + fixture_lines()[1][:200] + b"\n")
    out = subprocess.run([sys.executable, "-m", "agents.cli", "score", "--format", "cloudflare", str(src)],
                         capture_output=True, cwd=ROOT, timeout=120, check=False)
    verdicts = [orjson.loads(ln) for ln in out.stdout.splitlines()]
    assert [v["request_id"] for v in verdicts] == ["8e5b2c1f4a3d7e90", "8e5b2c20b7c14f21", "8e5b2c2a0d9e3b44"]
    assert verdicts[0]["profile"] == "example-android" and verdicts[0]["fingerprints"]["ja4"] == APP_JA4
    assert "tls.fingerprint_mismatch" in [s["code"] for s in verdicts[1]["signals"]]
    assert verdicts[2]["assessed"] is False
    assert "headers" in verdicts[0]["not_assessed"]
    assert out.stderr.decode().strip().endswith(
        "line 4: rejected: truncated: Cloudflare Logpush log line cut short after 200 bytes (the relay between "
        "Logpush and Kafka must split batches at line ends)")
    assert out.returncode == 1


@pytest.mark.parametrize("ts", ["0" * 5000, "9" * 400, "9" * 21, 18 * 10 ** 18])
def test_a_timestamp_of_too_many_digits_is_out_of_range_not_raised(ts):
    """int() refuses more than 4,300 digits and a huge integer overflows the division
    to seconds: neither may escape the decoder (found by review)."""
    line = orjson.dumps(a_line(EdgeStartTimestamp=ts))
    assert reject(line).code == "out_of_range"
    got = cloudflare.decode_message(line)
    assert not got.requests and got.rejections[0].code == "out_of_range"
