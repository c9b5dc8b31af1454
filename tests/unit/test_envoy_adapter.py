"""The Envoy input adapter (detector/adapters/envoy.py): lines of the shipped JSON
access log (config/edges/envoy/envoy.yaml.example) into ClientRequests marked
`edge: envoy`, bad lines as rejections with codes, and the TLS check judging Envoy's
JA3 hash (no JA3 string) and full JA4.

tests/fixtures/edges/envoy-1.35.jsonl holds three lines built from Envoy's documented
command operators, not captured from a running Envoy (tests/fixtures/edges/envoy-1.35.md
says where each field's layout comes from)."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from detector.adapters import INPUT_FORMATS, envoy, format_edge, line_decoder, message_decoder
from detector.config.schema import RuntimeSettings
from detector.decode import REJECTION_CODES, DecodeLimits, InvalidRequest
from tests.unit._adapter_fixtures import edited, nonempty_lines, rejected

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "edges" / "envoy-1.35.jsonl"
CONFIG = ROOT / "config" / "edges" / "envoy" / "envoy.yaml.example"
APP_JA4 = "t13d1513h2_8daaf6152771_eca864cca44a"  # config/profiles/example-android.yaml
REQUESTS_JA4 = "t13d1812h1_85036bcba153_b26ce05bbdd6"  # Python requests (config/fingerprints/known-stacks.yaml)
REQUESTS_JA3 = "a48c0d5f95b1ef98f560f324fd275da1"  # its hello in tests/data/client_hellos.json


def fixture_lines() -> list[bytes]:
    return nonempty_lines(FIXTURE)


def a_line(n: int = 0, **changes: Any) -> dict[str, Any]:
    """Fixture line `n` as an object with `changes` (dotted keys go into nested
    objects; None removes the key)."""
    obj = orjson.loads(fixture_lines()[n])
    return edited(obj, changes)


def reject(line: bytes | str) -> InvalidRequest:
    return rejected(envoy.decode_line, line)


# --- fixture lines -----------------------------------------------------------------------
def test_an_http2_line_becomes_the_native_contract():
    r = envoy.decode_line(fixture_lines()[0])
    assert r.request_id == "5f0c3a7e-2b1d-4e8a-9c41-7d2e6b9a0f13"
    assert r.ts == pytest.approx(1796256423.586)  # %START_TIME%: 2026-12-03T00:07:03.586Z
    assert (r.client_ip, r.method, r.path, r.query, r.http_version) == (
        "211.253.1.193", "GET", "/api/v1/config", "locale=hi_IN", "2")
    assert r.response_status == 200
    # the named headers with a value, sorted by name ("-" is Envoy's unset); the
    # :authority of HTTP/2 is h2.authority, not a header
    names = [n for n, _ in r.headers]
    assert names == sorted(names) and "host" not in names and "accept" not in names
    assert names == ["accept-encoding", "accept-language", "user-agent", "x-es-bandwidth-kbps",
                     "x-es-connection-type", "x-es-device-checksum", "x-es-device-id", "x-es-session-id",
                     "x-es-signature", "x-es-timestamp", "x-es-user-id"]
    assert dict(r.headers)["x-es-device-id"] == "android-ada64882dffb9f20"
    assert dict(r.h2 or {}) == {"authority": "api.example-social.test"}
    # JA3 is the hash only (no ja3_full), JA4 the full string, as Envoy logs them
    assert dict(r.tls or {}) == {"sni": "api.example-social.test", "version": "TLSv1.3",
                                 "ja3": "9b0d79d10808bc0e509b4789f870a650", "ja4": APP_JA4}
    assert r.edge == "envoy" and not r.extra and r.network is None


def test_an_http1_line_keeps_the_authority_as_its_host_header():
    r = envoy.decode_line(fixture_lines()[1])
    assert r.http_version == "1.1" and r.h2 is None and r.query is None and r.method == "POST"
    assert r.headers[0] == ("host", "api.example-social.test")  # first, then the others sorted
    names = [n for n, _ in r.headers[1:]]
    assert names == sorted(names) and "accept" in names and "connection" not in names
    assert dict(r.tls or {})["ja4"] == REQUESTS_JA4 and dict(r.tls or {})["ja3"] == REQUESTS_JA3
    assert r.response_status == 403


def test_an_ipv6_client_and_unset_values():
    r = envoy.decode_line(fixture_lines()[2])
    assert r.client_ip == "2001:db8:85a3::8a2e:370:7334" and r.path == "/"
    # every "-" of the line is absent; a line without TLS has no tls object
    obj = a_line(2, **{"tls.sni": "-", "tls.version": "-", "tls.ja3": "-", "tls.ja4": "-", "status": "-",
                       "proto": "-", "authority": "-"})
    r = envoy.decode_line(orjson.dumps(obj))
    assert r.tls is None and r.response_status is None and r.http_version is None and r.h2 is None
    assert all(v != "-" for _, v in r.headers)


def test_omitted_values_and_typed_json_are_read_too():
    # omit_empty_values drops the keys of unset values; typed_json_format writes numbers
    obj = a_line(0, status=200, **{"tls": None, "req": None, "proto": None, "authority": None})
    r = envoy.decode_line(orjson.dumps(obj))
    assert r.response_status == 200 and r.tls is None and r.headers == () and r.http_version is None
    r = envoy.decode_line(orjson.dumps(a_line(0, ts="1796256423.586", envoy=1)))  # %START_TIME(%s.%3f)%
    assert r.ts == pytest.approx(1796256423.586)


def test_the_shipped_config_names_every_field_the_adapter_reads():
    text = CONFIG.read_text()
    for operator in ("%START_TIME%", "%STREAM_ID%", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", "%REQ(:METHOD)%",
                     "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", "%PROTOCOL%", "%REQ(:AUTHORITY)%", "%RESPONSE_CODE%",
                     "%REQUESTED_SERVER_NAME%", "%DOWNSTREAM_TLS_VERSION%", "%TLS_JA3_FINGERPRINT%",
                     "%TLS_JA4_FINGERPRINT%", "enable_ja3_fingerprinting: true", "enable_ja4_fingerprinting: true"):
        assert operator in text, operator
    # every header of the fixture is named in the config's req object, and back
    fixture_names = set(orjson.loads(fixture_lines()[0])["req"])
    for name in fixture_names:
        assert f"{name}: \"%REQ({name.upper()})" in text, name
    # the example profile's headers, required and forbidden, are all logged
    import yaml
    profile = yaml.safe_load((ROOT / "config" / "profiles" / "example-android.yaml").read_text())
    wanted = set(profile["headers"]["order"]) | set(profile["headers"]["forbidden"])
    assert wanted <= fixture_names


# --- the TLS check judges Envoy's fingerprints --------------------------------------------
def test_a_requests_like_ja4_on_the_api_is_flagged_and_the_apps_is_not(detection):
    """JA3 hash without ja3_full, full JA4: the TLS check judges the JA4 (the allowlist
    key) through the envoy edge, which keeps TLS facts."""
    from detector.edges import EdgePolicy

    pipeline = detection.pipeline(edges=EdgePolicy(detection.edges, "full").admitting("envoy"))
    app = pipeline.score_one(envoy.decode_line(fixture_lines()[0]))
    assert app.profile == "example-android" and app.assessed
    assert not [s.code for s in app.signals if s.code.startswith("tls.")]
    assert app.fingerprints["ja4"] == APP_JA4
    # the same app request from a Python requests stack: only the TLS facts differ
    spoof = a_line(0, **{"tls.ja4": REQUESTS_JA4, "tls.ja3": REQUESTS_JA3})
    lib = pipeline.score_one(envoy.decode_line(orjson.dumps(spoof)))
    codes = [s.code for s in lib.signals]
    assert "tls.fingerprint_mismatch" in codes and "tls.known_automation_stack" in codes
    assert lib.score > app.score and lib.fingerprints["ja3"] == REQUESTS_JA3
    assert "tls" not in (lib.not_assessed or ())
    # the fixture's private-API client (requests JA4, the app's user agent) too
    fixture_lib = pipeline.score_one(envoy.decode_line(fixture_lines()[1]))
    assert "tls.fingerprint_mismatch" in [s.code for s in fixture_lib.signals]


# --- bad lines: rejections with codes, never an exception -----------------------------------
def test_every_cut_of_a_line_is_rejected_as_truncated():
    for line in fixture_lines():
        line = line.strip()
        codes = {reject(line[:n]).code for n in range(1, len(line) - 1)}
        assert codes == {"truncated"}


def test_a_multibyte_character_cut_at_the_end_is_truncated_not_invalid_utf8():
    line = orjson.dumps(a_line(0, **{"req.accept-language": "fr-FR é"}))
    at = line.index("é".encode()) + 1  # inside the two bytes of é
    assert reject(line[:at]).code == "truncated"


def test_every_cut_of_a_non_ascii_line_is_rejected_as_truncated():
    line = orjson.dumps(a_line(0, path="/é€", **{"req.user-agent": "Bücher/1.0 (日本語)"}))
    assert {reject(line[:n]).code for n in range(1, len(line) - 1)} == {"truncated"}
    # a whole object, then the first byte of a character; a byte that is never UTF-8
    assert reject(line + b"\xe2").code == "invalid_utf8"
    assert reject(line.replace("é".encode(), b"\xff", 1)).code == "invalid_utf8"


@pytest.mark.parametrize(("changes", "code"), [
    ({"envoy": "2"}, "invalid_value"),                   # another format version
    ({"envoy": None}, "invalid_value"),
    ({"envoy": True}, "invalid_value"),                  # a boolean is not the version 1
    ({"id": "-"}, "missing_field"),                      # %STREAM_ID% unset
    ({"id": None}, "missing_field"),
    ({"id": 7}, "invalid_type"),
    ({"ts": "-"}, "missing_field"),
    ({"ts": "yesterday"}, "invalid_value"),              # judged by the native validator
    ({"ts": "1990-01-01T00:00:00Z"}, "out_of_range"),
    ({"ts": True}, "invalid_type"),
    ({"ci": "-"}, "missing_field"),
    ({"ci": "211.253.1.193:51234"}, "invalid_value"),    # %DOWNSTREAM_REMOTE_ADDRESS% (with port)
    ({"method": "-"}, "missing_field"),
    ({"path": "api/v1"}, "invalid_value"),
    ({"proto": "SPDY/3"}, "invalid_value"),
    ({"status": "OK"}, "invalid_value"),
    ({"status": ["200"]}, "invalid_type"),
    ({"tls": "x"}, "invalid_type"),
    ({"tls.ja3": "9B0D79D1"}, "invalid_value"),          # not 32 lower-case hex
    ({"tls.ja3": "zz0d79d10808bc0e509b4789f870a650"}, "invalid_value"),
    ({"tls.ja4": "t13d1513h2_8daaf6152771"}, "invalid_value"),          # two parts
    ({"tls.ja4": "t13d1513h2_8daaf6152771_????????????"}, "invalid_value"),  # Envoy's JA4 is full
    ({"tls.ja4": "x13d1513h2_8daaf6152771_eca864cca44a"}, "invalid_value"),
    ({"tls.ja4": "t13d1513h2_8DAAF6152771_eca864cca44a"}, "invalid_value"),
    ({"tls.ja4": 5}, "invalid_type"),
    ({"req": []}, "invalid_type"),
    ({"req.user-agent": 1}, "invalid_type"),
    ({"req.User-Agent": "curl/8.5.0"}, "invalid_value"),  # a second user-agent, differing only in case
    ({"req.USER-AGENT": "-"}, "invalid_value"),
    ({"req.x-es-device-id": "x" * 70000}, "oversized"),  # a header over limits.max_header_bytes
])
def test_a_malformed_line_is_rejected_with_its_code(changes, code):
    assert reject(orjson.dumps(a_line(0, **changes))).code == code


@pytest.mark.parametrize(("line", "code"), [
    (b"[1, 2]", "invalid_type"),                         # not an object
    (b'"a string"', "invalid_type"),
    (b"null", "invalid_type"),
    (b"GET / HTTP/1.1", "invalid_json"),
    (b'{"envoy":"1", oops}', "invalid_json"),
    (b'{"envoy":"1","id":"\xff"}', "invalid_utf8"),
    ("{\"envoy\":\"1\",\"id\":\"\udc80\"}", "invalid_utf8"),  # a str with a lone surrogate
    (b"{}", "invalid_value"),
])
def test_lines_that_are_not_the_format(line, code):
    assert reject(line).code == code


def test_an_oversized_line_and_message():
    small = DecodeLimits(max_message_bytes=1000)
    with pytest.raises(InvalidRequest) as info:
        envoy.decode_line(fixture_lines()[0], small)
    assert info.value.code == "oversized"
    assert envoy.decode_message(fixture_lines()[0], small).rejections[0].code == "oversized"
    many = b"\n".join([fixture_lines()[2]] * 3)
    assert envoy.decode_message(many, DecodeLimits(max_batch_elements=2)).rejections[0].code == "too_many"


def test_a_message_of_lines_keeps_the_good_ones_and_indexes_the_bad():
    good = fixture_lines()
    out = envoy.decode_message(b"\n".join([good[0], good[1][:100], good[2], b"{}"]))
    assert [r.request_id for r in out.requests] == [orjson.loads(good[0])["id"], orjson.loads(good[2])["id"]]
    assert out.indices == [0, 2] and out.form == "ndjson"
    assert [(r.index, r.code) for r in out.rejections] == [(1, "truncated"), (3, "invalid_value")]
    assert all(r.edge == "envoy" for r in envoy.decode_message(FIXTURE.read_bytes()).requests)
    one = envoy.decode_message(good[0] + b"\n")
    assert one.indices == [None] and not one.rejections
    for empty in (b"", None, b" \n"):
        assert envoy.decode_message(empty).rejections[0].code == "empty_message"


def test_hostile_bytes_never_raise():
    rng = random.Random(35)
    for base in fixture_lines():
        for _ in range(600):
            b = bytearray(base)
            for _ in range(rng.randint(1, 6)):
                op = rng.random()
                i = rng.randrange(len(b))
                if op < 0.3:
                    b[i] ^= 1 << rng.randrange(8)  # a bit flip
                elif op < 0.5:
                    b[i] = rng.randrange(256)
                elif op < 0.7:
                    del b[i:i + rng.randint(1, 40)]
                elif op < 0.85:
                    del b[i:]  # cut short
                    break
                else:
                    b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
            out = envoy.decode_message(bytes(b))
            assert len(out.requests) + len(out.rejections) >= 1
            assert all(r.code in REJECTION_CODES for r in out.rejections)


# --- selection: the setting, the decoders, the edge, `detector score --format envoy` --------
def test_the_input_format_setting_and_the_registry_name_envoy():
    assert "envoy" in INPUT_FORMATS
    assert "envoy" in RuntimeSettings.model_fields["input_format"].annotation.__args__
    assert RuntimeSettings(input_format="envoy").input_format == "envoy"
    assert message_decoder("envoy") is envoy.decode_message
    assert line_decoder("envoy") is envoy.decode_line
    assert format_edge("envoy") == "envoy" == envoy.EDGE


async def test_the_ingest_admits_and_judges_the_records_as_envoy(detection):
    from prometheus_client import CollectorRegistry

    from agents.ingest import IngestStage
    from agents.metrics import Metrics
    from agents.settings import load_settings

    stage = IngestStage(load_settings(input_format="envoy"), detection, Metrics(CollectorRegistry()), loop=None)
    policy = stage.pipeline.edges
    assert policy.default == "full" and policy.allowed == frozenset({"envoy"})
    assert stage.decode is envoy.decode_message
    req = stage.decode(fixture_lines()[0], DecodeLimits()).requests[0]
    assert policy.refusal(req) is None and policy.resolve(req).name == "envoy"


def test_detector_score_reads_envoy_lines(tmp_path):
    src = tmp_path / "envoy.jsonl"
    src.write_bytes(FIXTURE.read_bytes() + fixture_lines()[0][:150] + b"\n")
    out = subprocess.run([sys.executable, "-m", "agents.cli", "score", "--format", "envoy", str(src)],
                         capture_output=True, cwd=ROOT, timeout=120, check=False)
    verdicts = [orjson.loads(ln) for ln in out.stdout.splitlines()]
    assert [v["request_id"] for v in verdicts] == [envoy.decode_line(ln).request_id for ln in fixture_lines()]
    assert verdicts[0]["profile"] == "example-android" and verdicts[0]["fingerprints"]["ja4"] == APP_JA4
    assert "tls.fingerprint_mismatch" in [s["code"] for s in verdicts[1]["signals"]]
    assert verdicts[2]["assessed"] is False  # www.example-social.test/ is outside the example scope
    assert "headers" in verdicts[0]["not_assessed"]  # order, case and the full set of names are lost
    assert out.stderr.decode().strip().endswith(
        "line 4: rejected: truncated: Envoy log line cut short after 150 bytes (raise the log shipper's maximum "
        "line size)")
    assert out.returncode == 1
