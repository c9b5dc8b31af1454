"""Scope (issue #14 part 2): host normalisation, a profile's API surface, the profile
that judges a request, the out-of-scope verdict (clean, 0, `assessed: false`, no
behaviour records, one verdict per line of `detector score`) and the SNI/Host signal."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest

from detector.behaviour.offline import OfflineScorer
from detector.behaviour.records import records_for
from detector.config import ConfigError
from detector.decode import decode_line, request_from_obj
from detector.decode.rejections import InvalidRequest
from detector.pipeline import Pipeline
from detector.profile import load_profile
from detector.scope import HostEvidence, Scope, host_evidence, normalise_host, normalise_path
from detector.simulate import ATTACKS, genuine, private_api_library
from detector.simulate.attacks import _call

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / "config" / "profiles" / "example-android.yaml"
VERDICT_SCHEMA = json.loads((ROOT / "config" / "schema" / "verdict.schema.json").read_text())
API = "api.example-social.test"
SAFARI_UA = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
             "Version/17.1 Mobile/15E148 Safari/604.1")
SNI_MISMATCH = "transport.sni_host_mismatch"


def safari(path: str, host: str, rid: str = "safari-1") -> dict[str, Any]:
    """iPhone Safari over HTTP/2, as an edge with the full facts reports it."""
    return {"request_id": rid, "ts": 1795860000.0, "client_ip": "203.0.113.9", "method": "GET", "path": path,
            "http_version": "2",
            "headers": [["accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"],
                        ["sec-fetch-site", "none"], ["sec-fetch-dest", "document"],
                        ["accept-language", "en-US,en;q=0.9"],
                        ["sec-fetch-mode", "navigate"], ["user-agent", SAFARI_UA],
                        ["accept-encoding", "gzip, deflate, br"]],
            "tls": {"ja4": "t13d2014h2_a09f3c656075_14788d8d241b", "alpn": "h2", "version": "1.3", "sni": host},
            "h2": {"fingerprint": "2:0;4:4194304;3:100|10485760|0|m,s,p,a", "authority": host}}


def python_requests(path: str, host: str = API, sni: str | None = API, rid: str = "py-1") -> dict[str, Any]:
    """python-requests over HTTP/1.1: Host first (http.client), then its defaults."""
    tls: dict[str, Any] = {"ja4": "t13d1812h1_85036bcba153_b26ce05bbdd6", "alpn": "http/1.1", "version": "1.3"}
    if sni is not None:
        tls["sni"] = sni
    return {"request_id": rid, "ts": 1795860000.0, "client_ip": "198.51.100.4", "method": "GET", "path": path,
            "http_version": "1.1",
            "headers": [["Host", host], ["User-Agent", "python-requests/2.32.3"], ["Accept-Encoding", "gzip, deflate"],
                        ["Accept", "*/*"], ["Connection", "keep-alive"]],
            "tls": tls}


@pytest.fixture(scope="module")
def pipe(detection) -> Pipeline:
    return detection.pipeline()


# --- host and path normalisation -------------------------------------------------------

@pytest.mark.parametrize(("raw", "want"), [
    ("api.example-social.test", API), ("API.Example-Social.TEST", API), ("api.example-social.test.", API),
    ("api.example-social.test:443", API), ("API.example-social.test.:8443", API), (" api.example-social.test ", API),
    ("[2001:db8::1]:443", "2001:db8::1"), ("[2001:db8::1]", "2001:db8::1"), ("2001:db8::1", "2001:db8::1"),
    ("203.0.113.9:80", "203.0.113.9"), ("", None), (".", None), (":443", None), (None, None),
])
def test_host_names_are_lower_cased_without_port_or_trailing_dot(raw, want):
    assert normalise_host(raw) == want


def test_a_long_host_value_is_normalised_without_being_cached():
    assert normalise_host("A" * 5000 + ".test.:1") == "a" * 5000 + ".test"


@pytest.mark.parametrize(("raw", "want"), [
    ("/api/v1/config", "/api/v1/config"), ("//api/v1/config", "/api/v1/config"), ("/x/../api/v1", "/api/v1"),
    ("/./api/", "/api/"), ("/%61pi/v1", "/api/v1"), ("/api%2Fv1", "/api%2Fv1"), ("/..", "/"), ("/", "/"),
    ("/.well-known/x", "/.well-known/x"),
])
def test_paths_are_compared_as_servers_route_them(raw, want):
    assert normalise_path(raw) == want


# --- scope matching ---------------------------------------------------------------------

def test_scope_matching_hosts_paths_and_missing_evidence():
    s = Scope(hosts=(API, "*.cdn.example-social.test"), path_prefixes=("/api/",))
    assert s.admits(HostEvidence(sni=API, authority=API), "/api/v1/config")
    assert not s.admits(HostEvidence(sni=API, authority=API), "/")  # the host is, the path is not
    assert not s.admits(HostEvidence(host="www.example-social.test"), "/api/v1/config")
    assert s.admits(HostEvidence(), "/api/v1/config")  # no host evidence: the path decides
    assert not s.admits(HostEvidence(), "/login")
    assert s.admits(HostEvidence(host="img.cdn.example-social.test"), "/api/x")  # a wildcard: any name below
    assert not s.admits(HostEvidence(host="cdn.example-social.test"), "/api/x")  # ... not the name itself
    # any name of the evidence puts it in scope: a lie in one of them cannot take an API request out
    assert s.admits(HostEvidence(sni="www.example-social.test", host=API), "/api/v1/config")
    assert s.admits(HostEvidence(sni=API, host="www.example-social.test"), "/api/v1/config")
    assert s.admits(HostEvidence(host=API), "//api/v1/config")  # the path the server routes
    assert Scope(hosts=(API,)).admits(HostEvidence(host=API), "/anything")  # hosts only
    assert Scope(path_prefixes=("/api/",)).admits(HostEvidence(host="other.test"), "/api/x")  # prefixes only


def test_host_evidence_reads_sni_host_header_and_authority():
    obj = python_requests("/api/v1/config", host="API.example-social.test:443", sni="Api.Example-Social.Test.")
    r = request_from_obj({**obj, "h2": {"authority": "x.test"}})
    ev = host_evidence(r)
    assert (ev.sni, ev.host, ev.authority) == (API, API, "x.test")
    assert ev.request_host == "x.test" and ev.names == (API, "x.test")


def test_the_example_profile_declares_its_api_surface(profile):
    assert profile.scope == Scope(hosts=(API,), path_prefixes=("/api/",))


# --- the profile's scope section ------------------------------------------------------------

def _profile_with(tmp_path: Path, scope_yaml: str) -> Path:
    text = PROFILE.read_text().split("\nscope:\n")[0] + "\nscope:\n" + scope_yaml
    p = tmp_path / "p.yaml"
    p.write_text(text)
    return p


def test_an_unknown_scope_key_is_an_error_with_file_and_line(tmp_path):
    p = _profile_with(tmp_path, "  hosts: [api.example-social.test]\n  path_prefix: [/api/]\n")
    with pytest.raises(ConfigError) as e:
        load_profile(p)
    line = p.read_text().splitlines().index("  path_prefix: [/api/]") + 1
    assert f"{p}:{line}" in str(e.value) and "path_prefix" in str(e.value) and "path_prefixes" in str(e.value)


@pytest.mark.parametrize(("body", "message"), [
    ("  hosts: [api.example-social.test:443]\n", "without a port"),
    ("  hosts: ['exa mple.test']\n", "must be a DNS name"),
    ("  hosts: [3]\n", "must be a DNS name"),
    ("  path_prefixes: [api/]\n", "starting with /"),
    ("  path_prefixes: ['//api/']\n", "normalised path"),
    ("  hosts: []\n", "must name hosts or path_prefixes"),
    ("  path_prefixes: [/api/]\n  coalesce_hosts: [www.example-social.test]\n", "needs scope.hosts"),
])
def test_an_invalid_scope_is_an_error(tmp_path, body, message):
    with pytest.raises(ConfigError, match=message):
        load_profile(_profile_with(tmp_path, body))


def test_hosts_are_stored_normalised(tmp_path):
    p = load_profile(_profile_with(tmp_path, "  hosts: [API.Example-Social.Test., '*.cdn.example-social.test']\n"))
    assert p.scope == Scope(hosts=(API, "*.cdn.example-social.test"))


# --- the verdicts ------------------------------------------------------------------------

def test_iphone_safari_on_another_host_is_not_assessed_and_on_the_api_it_is_judged(pipe):
    """Issue #14: an iPhone Safari `GET /` scored malicious 0.998. Outside the scope it
    is not the app's traffic; the same Safari request to the API is still judged."""
    site = pipe.score_one(request_from_obj(safari("/", "www.example-social.test")))
    got = (site.verdict, site.score, site.assessed, site.profile, list(site.signals))
    assert got == ("clean", 0.0, False, None, [])
    body = orjson.loads(site.to_json())
    assert body["assessed"] is False
    jsonschema.validate(body, VERDICT_SCHEMA)
    # the same page on the API host is outside the path prefixes: not assessed either
    assert pipe.score_one(request_from_obj(safari("/", API))).assessed is False
    api = pipe.score_one(request_from_obj(safari("/api/v1/feed/timeline", API)))
    assert api.assessed and api.profile == "example-android" and api.verdict == "malicious", api
    assert {"ua.malformed", "headers.forbidden"} <= {s.code for s in api.signals}


def test_another_clients_user_agent_on_the_api_is_flagged(pipe):
    v = pipe.score_one(request_from_obj(python_requests("/api/v1/feed/timeline")))
    assert v.assessed and v.verdict == "malicious"
    assert SNI_MISMATCH not in {s.code for s in v.signals}
    # with no host evidence at all the path decides: judged too
    bare = python_requests("/api/v1/feed/timeline", sni=None)
    bare["headers"] = bare["headers"][1:]
    assert pipe.score_one(request_from_obj(bare)).verdict == "malicious"
    # with no host evidence and a path outside: not judged
    off = python_requests("/health", sni=None)
    off["headers"] = off["headers"][1:]
    assert pipe.score_one(request_from_obj(off)).assessed is False


def test_a_lie_in_one_host_name_does_not_take_an_api_request_out_of_scope(pipe):
    v = pipe.score_one(request_from_obj(python_requests("/api/v1/config", host=API, sni="www.example-social.test")))
    assert v.assessed and v.verdict == "malicious"
    assert SNI_MISMATCH in {s.code for s in v.signals}


def test_a_profile_without_a_scope_judges_every_request(detection):
    unscoped = {n: dataclasses.replace(p, scope=None) for n, p in detection.profiles.items()}
    pipe = Pipeline(unscoped, detection.scoring, catalogue=detection.catalogue, known=detection.known)
    v = pipe.score_one(request_from_obj(safari("/", "www.example-social.test")))
    assert v.assessed and v.verdict == "malicious" and v.profile == "example-android"


def test_the_profile_in_scope_judges(detection, profile):
    """Two profiles on two API hosts: each request is judged by the one whose scope
    holds it, whatever its user agent claims; the default is used only when in scope."""
    other = dataclasses.replace(profile, name="example-web", ua_prefix="ExampleWeb/",
                                scope=Scope(hosts=("web.example-social.test",), path_prefixes=("/api/",)))
    pipe = Pipeline({"example-android": profile, "example-web": other}, detection.scoring,
                    catalogue=detection.catalogue, known=detection.known)
    app = request_from_obj(next(iter(genuine(profile, 1, seed=3, catalogue=detection.catalogue))))
    assert pipe.profile_in_scope(app) is profile
    web = request_from_obj(safari("/api/v1/config", "web.example-social.test"))
    assert pipe.profile_in_scope(web) is other  # not the default: it is out of its scope
    assert pipe.score_one(web).profile == "example-web"
    assert pipe.profile_in_scope(request_from_obj(safari("/api/v1/config", "www.example-social.test"))) is None


def test_out_of_scope_requests_feed_no_behaviour_state(pipe, detection):
    r = request_from_obj(safari("/", "www.example-social.test"))
    verdict, ctx = pipe.assess(r)
    assert records_for(r, ctx, verdict) == []
    scorer = OfflineScorer(detection, reference_time=1795860000.0)
    reqs = [request_from_obj(safari("/", "www.example-social.test", rid=f"s{i}")) for i in range(50)]
    verdicts, alerts = scorer.score(reqs)
    assert [v.request_id for v in verdicts] == [f"s{i}" for i in range(50)]
    assert all(not v.assessed for v in verdicts) and alerts == []
    assert scorer.engine.observe([], sources=[], reference=1795860000.0).flags == []


def test_detector_score_writes_one_verdict_per_request_in_and_out_of_scope(tmp_path, profile, detection):
    lines = [safari("/", "www.example-social.test", rid="out-1"),
             *list(genuine(profile, 3, seed=4, catalogue=detection.catalogue)),
             safari("/favicon.ico", API, rid="out-2"), python_requests("/api/v1/config", rid="in-py")]
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n".join(orjson.dumps(x) for x in lines) + b"\n")
    res = subprocess.run([sys.executable, "-m", "agents.cli", "score", str(src)], capture_output=True, cwd=ROOT,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    out = [orjson.loads(x) for x in res.stdout.splitlines()]
    assert [v["request_id"] for v in out] == [x["request_id"] for x in lines]
    by_id = {v["request_id"]: v for v in out}
    for rid in ("out-1", "out-2"):
        assert by_id[rid]["assessed"] is False and by_id[rid]["verdict"] == "clean" and by_id[rid]["score"] == 0
    assert by_id["in-py"]["assessed"] is True and by_id["in-py"]["verdict"] == "malicious"
    for v in out:
        jsonschema.validate(v, VERDICT_SCHEMA)


# --- the SNI/Host signal ----------------------------------------------------------------

def _codes(pipe: Pipeline, obj: dict[str, Any]) -> set[str]:
    return {s.code for s in pipe.score_one(request_from_obj(obj)).signals}


def test_sni_host_mismatch_on_http1_fires_on_any_difference(pipe):
    assert SNI_MISMATCH in _codes(pipe, python_requests("/api/v1/config", host=API, sni="lb-7.origin.example.net"))
    # the same name written another way is no mismatch
    assert SNI_MISMATCH not in _codes(pipe, python_requests("/api/v1/config", host="API.example-social.test:443",
                                                            sni="api.example-social.test."))
    assert SNI_MISMATCH not in _codes(pipe, python_requests("/api/v1/config", sni=None))  # no SNI: nothing to compare


def test_sni_host_mismatch_on_http2_spares_connection_coalescing(detection, profile):
    app = next(iter(genuine(profile, 1, seed=6, catalogue=detection.catalogue)))
    assert app["h2"]["authority"] == API and app["tls"]["sni"] == API
    pipe = detection.pipeline()
    assert SNI_MISMATCH not in _codes(pipe, app)
    fronted = {**app, "tls": {**app["tls"], "sni": "lb-7.origin.example.net"}}
    assert SNI_MISMATCH in _codes(pipe, fronted)  # an SNI the scope does not know
    # a host of the same certificate, listed as such: coalescing, not a lie
    shared = {**app, "tls": {**app["tls"], "sni": "www.example-social.test"}}
    assert SNI_MISMATCH in _codes(pipe, shared)
    listed = dataclasses.replace(profile, scope=Scope(hosts=(API,), path_prefixes=("/api/",),
                                                      coalesce_hosts=("*.example-social.test",)))
    coalescing = Pipeline({profile.name: listed}, detection.scoring, catalogue=detection.catalogue,
                          known=detection.known)
    assert SNI_MISMATCH not in _codes(coalescing, shared)
    assert SNI_MISMATCH in _codes(coalescing, fronted)
    # without a scope nothing on HTTP/2 fires (the profile knows no hosts)
    unscoped = Pipeline({profile.name: dataclasses.replace(profile, scope=None)}, detection.scoring,
                        catalogue=detection.catalogue, known=detection.known)
    assert SNI_MISMATCH not in _codes(unscoped, fronted)
    assert SNI_MISMATCH in _codes(unscoped, python_requests("/api/v1/config", sni="lb-7.origin.example.net"))


# --- the contract and the simulator -------------------------------------------------------------

def test_h2_authority_is_part_of_the_contract():
    base = python_requests("/api/v1/config")
    assert decode_line(orjson.dumps({**base, "h2": {"authority": API}})).h2 == {"authority": API}
    with pytest.raises(InvalidRequest):
        request_from_obj({**base, "h2": {"authority": 7}})


def test_every_simulated_stack_sends_the_host_evidence_real_clients_send(profile, detection, pipe):
    events = list(genuine(profile, 200, seed=2, catalogue=detection.catalogue))
    for attack in ATTACKS.values():
        for evasion in (0, 1, 2):
            events.extend(_call(attack, profile, 60, 2, 1795860000.0, 5.0, detection.catalogue, evasion))
    assert any(e["http_version"] == "1.1" for e in events) and any(e["http_version"] == "2" for e in events)
    for e in events:
        assert e["tls"]["sni"] == API, e["request_id"]
        hosts = [v for n, v in e["headers"] if n.lower() == "host"]
        if e["http_version"] == "2":  # :authority only (OkHttp, curl, Go drop Host on HTTP/2)
            assert e["h2"]["authority"] == API and hosts == [], e["request_id"]
        else:  # HTTP/1.1 has no :authority: http.client writes Host first
            assert "authority" not in (e.get("h2") or {}) and e["headers"][0] == ["Host", API], e["request_id"]
        assert pipe.score_one(request_from_obj(e)).assessed, e["request_id"]


def test_python_requests_stacks_write_host_first(profile):
    e = next(iter(private_api_library(profile, 1, seed=1, evasion=0)))
    assert e["headers"][0] == ["Host", API] and e["http_version"] == "1.1"


def test_out_of_scope_requests_are_counted(pipe, detection):
    from prometheus_client import CollectorRegistry

    from agents.metrics import LabelSets, Metrics

    registry = CollectorRegistry()
    m = Metrics(registry, labels=LabelSets.from_config(detection))
    reqs = [request_from_obj(safari("/", "www.example-social.test", rid=f"o{i}")) for i in range(3)]
    reqs.append(request_from_obj(python_requests("/api/v1/config")))
    m.observe_batch(pipe.score_batch(reqs), messages=1, now=1795860001.0, seconds=0.01)
    assert registry.get_sample_value("detector_out_of_scope_requests_total") == 3
    assert registry.get_sample_value("detector_requests_total") == 4
