"""The HAProxy 3.1 input format (input_format haproxy-3.1, detector/adapters/haproxy.py):
lines of config/edges/haproxy/haproxy-3.1.cfg.example into ClientRequests marked
edge haproxy-3.1, with the full JA4 from ssl_fc_sigalgs_bin and
ssl_fc_supported_versions_bin.

tests/fixtures/edges/haproxy-3.1.log holds one line per real ClientHello of
tests/data/client_hellos.json, built (no HAProxy 3.1 here) by
scripts/build_haproxy31_fixture.py as the 3.1 fetches render them (its README)."""

from __future__ import annotations

import base64
import dataclasses
import importlib.util
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from agents.ingest import IngestStage
from agents.metrics import Metrics
from agents.settings import load_settings
from detector.adapters import INPUT_FORMATS, format_edge, haproxy, line_decoder, message_decoder
from detector.config.schema import RuntimeSettings
from detector.decode import REJECTION_CODES, InvalidRequest
from detector.fingerprints.clienthello import is_grease, parse_client_hello
from detector.fingerprints.ja4 import is_partial, matches
from detector.fingerprints.tls import fingerprints_from_b64
from detector.profile import Ja4Rule

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "edges" / "haproxy-3.1.log"
FIXTURE_26 = ROOT / "tests" / "fixtures" / "edges" / "haproxy-2.6.log"
HELLOS = json.loads((ROOT / "tests" / "data" / "client_hellos.json").read_text())["hellos"]
CHROME_ANDROID = "curl_cffi-chrome131_android"


def lines(path: Path = FIXTURE) -> list[bytes]:
    return [ln for ln in path.read_bytes().split(b"\n") if ln.strip()]


def line_of(client: str) -> bytes:
    return lines()[[h["client"] for h in HELLOS].index(client)]


def changed(client: str, **changes: Any) -> bytes:
    """The fixture line of `client` with `changes` (dotted keys into nested objects;
    None removes the key)."""
    obj = orjson.loads(line_of(client))
    for key, value in changes.items():
        node = obj
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return orjson.dumps(obj)


def reject(line: bytes, decode: Any = haproxy.decode_line_31) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        decode(line)
    assert info.value.code in REJECTION_CODES
    return info.value


def tls_of(line: bytes) -> dict[str, Any]:
    return dict(haproxy.decode_line_31(line).tls or {})


# --- the fixture: what the script builds, the raw hellos' lists -----------------------------
def test_the_fixture_is_what_its_script_builds():
    spec = importlib.util.spec_from_file_location("build_haproxy31_fixture",
                                                  ROOT / "scripts" / "build_haproxy31_fixture.py")
    assert spec and spec.loader
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.build() == FIXTURE.read_bytes()
    assert len(lines()) == len(HELLOS) == 9


@pytest.mark.parametrize("hello", HELLOS, ids=[h["client"] for h in HELLOS])
def test_the_lines_carry_the_raw_hellos_lists_as_sent(hello):
    """The script walks the bytes itself; the project's parser reads the same lists,
    GREASE included (HAProxy's fetches without their filter argument)."""
    ch = parse_client_hello(base64.b64decode(hello["client_hello_b64"]))
    tls = orjson.loads(line_of(hello["client"]))["tls"]

    def u16(hexed: str) -> tuple[int, ...]:
        return tuple(int(hexed[i:i + 4], 16) for i in range(0, len(hexed), 4))

    assert u16(tls["sigalgs"]) == ch.signature_algorithms
    assert u16(tls["versions"]) == ch.supported_versions
    assert (u16(tls["ciphers"]), u16(tls["exts"])) == (ch.cipher_suites, ch.extensions)
    assert int(tls["hello"]) == ch.legacy_version


def test_grease_stays_in_the_lines_and_leaves_the_fingerprints():
    tls = orjson.loads(line_of(CHROME_ANDROID))["tls"]
    versions = [int(tls["versions"][i:i + 4], 16) for i in range(0, len(tls["versions"]), 4)]
    assert is_grease(versions[0]) and 0x0304 in versions  # Chrome puts a GREASE version first
    got = tls_of(line_of(CHROME_ANDROID))
    assert got["ja4"].startswith("t13d1516h2_")  # the version is the highest real one, GREASE not counted


# --- JA4 and JA3 of every line against the raw ClientHello ---------------------------------
@pytest.mark.parametrize("hello", HELLOS, ids=[h["client"] for h in HELLOS])
def test_the_full_ja4_and_ja3_equal_those_of_the_raw_client_hello(hello):
    raw = fingerprints_from_b64(hello["client_hello_b64"])
    r = haproxy.decode_line_31(line_of(hello["client"]))
    tls = dict(r.tls or {})
    assert r.edge == "haproxy-3.1" and not r.extra
    assert (tls["ja3_full"], tls["ja3"]) == (raw.ja3_full, raw.ja3)
    assert not is_partial(tls["ja4"]) and len(tls["ja4"]) == 36
    # JA4's ALPN characters are those of the protocol HAProxy negotiated (ssl_fc_alpn):
    # the first offered, but for httpx (http/1.1 before h2, HAProxy picks h2)
    alpn = {"h2": "h2", "http/1.1": "h1"}.get(tls.get("alpn", ""), "00")
    if hello["client"] == "python-httpx-h2":
        assert raw.ja4[8:10] == "h1" and alpn == "h2"
    else:
        assert alpn == raw.ja4[8:10], hello["client"]
    assert tls["ja4"] == raw.ja4[:8] + alpn + raw.ja4[10:], hello["client"]
    assert (tls["version"], tls["sni"]) == ("TLSv1.3", "api.example-social.test")


def test_eight_of_the_nine_lines_give_exactly_the_raw_hellos_ja4():
    same = [h["client"] for h in HELLOS
            if tls_of(line_of(h["client"]))["ja4"] == fingerprints_from_b64(h["client_hello_b64"]).ja4]
    assert len(same) == 8 and "python-httpx-h2" not in same


def test_a_hello_without_supported_versions_takes_its_own_version():
    """A TLS 1.2 client (no extension 43): JA4's version is the hello's."""
    obj = orjson.loads(line_of("curl-cli"))
    exts = obj["tls"]["exts"]
    obj["tls"]["exts"] = "".join(exts[i:i + 4] for i in range(0, len(exts), 4) if exts[i:i + 4] != "002B")
    obj["tls"]["versions"] = ""
    tls = tls_of(orjson.dumps(obj))
    assert tls["ja4"].startswith("t12d3111h2_")


def test_a_hello_without_signature_algorithms_hashes_the_extensions_alone():
    obj = orjson.loads(line_of("curl-cli"))
    exts = obj["tls"]["exts"]
    obj["tls"]["exts"] = "".join(exts[i:i + 4] for i in range(0, len(exts), 4) if exts[i:i + 4] != "000D")
    obj["tls"]["sigalgs"] = ""
    assert not is_partial(tls_of(orjson.dumps(obj))["ja4"])


def test_a_line_without_tls_has_no_tls_object():
    empty = {f"tls.{k}": "" for k in ("sni", "alpn", "version", "hello", "ciphers", "exts", "groups", "formats",
                                       "sigalgs", "versions")}
    assert haproxy.decode_line_31(changed("curl-cli", **empty)).tls is None


# --- bad lines: rejection codes -------------------------------------------------------------
@pytest.mark.parametrize(("changes", "code"), [
    ({"tls.sigalgs": "04030"}, "invalid_value"),          # odd hex
    ({"tls.sigalgs": "0403ZZ"}, "invalid_value"),         # not hex
    ({"tls.sigalgs": "040305"}, "invalid_value"),         # not 16-bit values
    ({"tls.versions": "030"}, "invalid_value"),
    ({"tls.versions": "03G4"}, "invalid_value"),
    ({"tls.versions": "030403"}, "invalid_value"),
    ({"tls.sigalgs": 1027}, "invalid_type"),
    ({"tls.versions": ["0304"]}, "invalid_type"),
    ({"tls.sigalgs": None}, "missing_field"),             # a 3.1 line always has both keys
    ({"tls.versions": None}, "missing_field"),
    ({"tls.sigalgs": ""}, "invalid_value"),               # extension 13 listed, no list: capture too small
    ({"tls.versions": ""}, "invalid_value"),              # extension 43 listed, no list
    ({"haproxy": 1}, "invalid_value"),                    # a 2.6 line on the 3.1 input
    ({"haproxy": True}, "invalid_value"),
    ({"haproxy": "2"}, "invalid_value"),
    ({"haproxy": None}, "invalid_value"),
])
def test_a_malformed_3_1_line_is_rejected_with_its_code(changes, code):
    assert reject(changed("curl-cli", **changes)).code == code


def test_a_list_without_its_extension_is_rejected():
    obj = orjson.loads(line_of("curl-cli"))
    exts = obj["tls"]["exts"]
    for ext in ("000D", "002B"):
        obj2 = json.loads(json.dumps(obj))
        obj2["tls"]["exts"] = "".join(exts[i:i + 4] for i in range(0, len(exts), 4) if exts[i:i + 4] != ext)
        err = reject(orjson.dumps(obj2))
        assert err.code == "invalid_value" and f"lacks extension {int(ext, 16)}" in str(err)


def test_every_cut_of_a_3_1_line_is_rejected_as_truncated():
    line = line_of(CHROME_ANDROID).strip()
    assert {reject(line[:n]).code for n in range(1, len(line) - 1)} == {"truncated"}


def test_a_3_1_line_on_the_2_6_input_is_refused_not_read_as_partial():
    """One message cannot switch the checks: neither format reads the other's lines."""
    for ln in lines():
        assert reject(ln, haproxy.decode_line).code == "invalid_value"
    for ln in lines(FIXTURE_26):
        assert reject(ln, haproxy.decode_line_31).code == "invalid_value"
    out = haproxy.decode_message(b"\n".join(lines(FIXTURE_26)[:1] + lines()[:1]))
    assert [r.edge for r in out.requests] == ["haproxy"] and [(r.index, r.code) for r in out.rejections] == [
        (1, "invalid_value")]


def test_a_line_cannot_name_its_edge():
    r = haproxy.decode_line_31(changed("curl-cli", edge="full"))
    assert r.edge == "haproxy-3.1" and "edge" not in (r.extra or {})


def test_the_2_6_lines_still_give_the_partial_ja4_and_edge_haproxy():
    for ln in lines(FIXTURE_26):
        r = haproxy.decode_line(ln)
        assert r.edge == "haproxy" and dict(r.tls or {})["ja4"].endswith("_????????????")


def test_a_message_of_3_1_lines_keeps_the_good_ones():
    good = lines()
    out = haproxy.decode_message_31(b"\n".join([good[0], good[1][:90], good[2]]))
    assert [r.edge for r in out.requests] == ["haproxy-3.1", "haproxy-3.1"] and out.indices == [0, 2]
    assert [(r.index, r.code) for r in out.rejections] == [(1, "truncated")]
    assert haproxy.decode_message_31(None).rejections[0].code == "empty_message"


# --- selection and admission ------------------------------------------------------------------
def test_the_input_format_haproxy_3_1_is_registered():
    assert "haproxy-3.1" in INPUT_FORMATS
    assert message_decoder("haproxy-3.1") is haproxy.decode_message_31
    assert line_decoder("haproxy-3.1") is haproxy.decode_line_31
    assert format_edge("haproxy-3.1") == "haproxy-3.1" and format_edge("haproxy") == "haproxy"
    assert RuntimeSettings(input_format="haproxy-3.1").input_format == "haproxy-3.1"


def test_the_ingest_of_a_3_1_topic_admits_only_the_3_1_edge(detection):
    stage = IngestStage(load_settings(input_format="haproxy-3.1"), detection, Metrics(CollectorRegistry()),
                        loop=None)
    policy = stage.pipeline.edges
    assert policy.allowed == frozenset({"haproxy-3.1"}) and detection.edges["haproxy-3.1"].ja4 == "full"
    assert stage.decode is haproxy.decode_message_31
    r = haproxy.decode_line_31(line_of("curl-cli"))
    assert policy.refusal(r) is None and policy.resolve(r).name == "haproxy-3.1"


# --- the TLS checks judge the full JA4 ------------------------------------------------------
def _tls_codes(detection, line: bytes, decode: Any, app_ja4: str | None = None) -> list[str]:
    """The tls.* codes of the verdict on `line`, through the edge policy the ingest of
    that format uses; `app_ja4` replaces the profile's JA4 allowlist (a stand-in for
    the app's stack among the captured hellos)."""
    cfg = detection
    if app_ja4 is not None:
        name = detection.default_profile
        prof = detection.profiles[name]
        assert prof.tls is not None
        tls = dataclasses.replace(prof.tls, ja4=(Ja4Rule(value=app_ja4),))
        cfg = dataclasses.replace(detection, profiles={**detection.profiles, name: dataclasses.replace(prof, tls=tls)})
    req = decode(line)
    verdict = cfg.pipeline(edges=cfg.edge_policy().admitting(req.edge)).score_one(req)
    assert verdict.assessed
    return [s.code for s in verdict.signals if s.code.startswith("tls.")]


def test_a_curl_ja4_on_the_api_is_flagged(detection):
    assert _tls_codes(detection, line_of("curl-cli"), haproxy.decode_line_31) == [
        "tls.fingerprint_mismatch", "tls.known_automation_stack"]


def test_a_record_with_the_apps_ja4_is_not_flagged_on_tls(detection):
    app = fingerprints_from_b64(next(h for h in HELLOS if h["client"] == CHROME_ANDROID)["client_hello_b64"]).ja4
    assert _tls_codes(detection, line_of(CHROME_ANDROID), haproxy.decode_line_31, app_ja4=app) == []


def test_a_stack_that_copies_the_apps_ciphers_and_extensions_but_not_its_sigalgs_is_caught_only_at_3_1(detection):
    """Part c is what 3.1 adds: other signature algorithms than the app's change only
    part c, which HAProxy 2.6's partial JA4 cannot see."""
    app = fingerprints_from_b64(next(h for h in HELLOS if h["client"] == CHROME_ANDROID)["client_hello_b64"]).ja4
    tls = orjson.loads(line_of(CHROME_ANDROID))["tls"]
    spoof = changed(CHROME_ANDROID, **{"tls.sigalgs": tls["sigalgs"][4:]})  # the first algorithm dropped
    full = tls_of(spoof)["ja4"]
    assert full[:24] == app[:24] and full != app
    assert _tls_codes(detection, spoof, haproxy.decode_line_31, app_ja4=app) == ["tls.fingerprint_mismatch"]
    # the same hello through HAProxy 2.6: a partial JA4 that agrees with the app's
    obj = orjson.loads(spoof)
    obj["haproxy"] = 1
    for key in ("sigalgs", "versions"):
        obj["tls"].pop(key)
    as_26 = orjson.dumps(obj)
    assert matches(dict(haproxy.decode_line(as_26).tls or {})["ja4"], app)
    assert _tls_codes(detection, as_26, haproxy.decode_line, app_ja4=app) == []
