"""Edge profiles (config/edges/, docs/edges.md): the shipped files and their schema,
the input topic's edge policy, the checks a lost fact silences and the verdict's
`not_assessed`, the partial JA4, the per-message `edge` field in decode and `detector
score`, and the simulator's loss transforms."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from detector.config import ConfigError, YamlDocument
from detector.decode import decode_line, decode_message, request_from_obj
from detector.edges import BODY_TEXT_CODES, FULL, EdgePolicy, edge_from_file, load_edges
from detector.fingerprints.ja4 import haproxy_26_partial, is_partial, matches
from detector.simulate import OKHTTP_JA4, PYTHON_REQUESTS_JA4, genuine, private_api_library
from detector.simulate.edges import at_risk, survives, through_edge

ROOT = Path(__file__).resolve().parents[2]
EDGES = ROOT / "config" / "edges"
SHIPPED = {"full", "haproxy", "haproxy-3.1", "envoy", "nginx-njs", "cloudfront", "cloudflare", "fastly"}


@pytest.fixture(scope="module")
def base(profile, detection):
    return next(genuine(profile, 1, seed=3, catalogue=detection.catalogue))


def title_cased(obj):
    return {**obj, "headers": [["-".join(p.capitalize() for p in n.split("-")), v] for n, v in obj["headers"]]}


def with_edge(obj, name):
    return {**obj, "edge": name}


# --- the shipped files and their schema ------------------------------------------------
def test_every_shipped_edge_loads_with_its_facts(detection):
    assert SHIPPED <= set(detection.edges)
    e = detection.edges
    assert e["haproxy"].ja4 == "partial" and e["haproxy"].ja3 and not e["haproxy"].header_case
    assert e["haproxy"].header_order and not e["haproxy"].h2_fingerprint
    assert e["haproxy-3.1"].ja4 == "full"
    assert not e["envoy"].header_order and e["envoy"].header_names == "some"
    assert e["nginx-njs"].header_case and e["nginx-njs"].ja4 == "none" and not e["nginx-njs"].has_tls
    # CloudFront real-time logs carry no fingerprint (a CloudFront-Viewer-JA4 entry in cs-headers is the viewer's)
    assert e["cloudfront"].ja4 == "none" and not e["cloudfront"].ja3 and not e["cloudfront"].has_tls
    # Fastly keeps every fact a proxy can see; the integrity verdict needs an enrichment step
    assert e["fastly"].client_hello and e["fastly"].h2_fingerprint
    # (and no shipped edge but full passes the body itself on: body_text, for the body rules)
    assert e["fastly"].lost_codes() == {"attestation.missing"} | BODY_TEXT_CODES
    assert all("attestation.missing" in e[n].lost_codes() for n in SHIPPED - {"full"})
    assert not e["full"].lost_codes()
    assert e["cloudfront"].allowed_lateness_s >= 300 and e["cloudflare"].allowed_lateness_s >= 300


def test_an_unknown_key_in_an_edge_file_names_file_and_line(tmp_path):
    path = tmp_path / "haproxy.yaml"
    text = (EDGES / "haproxy.yaml").read_text().replace("h2_fingerprint: false", "h2_fingerprints: false")
    path.write_text(text)
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if ln.startswith("h2_fingerprints"))
    with pytest.raises(ConfigError) as exc:
        edge_from_file(YamlDocument(path))
    assert f"{path}:{line}: h2_fingerprints: unknown key (did you mean h2_fingerprint?)" in str(exc.value)


def test_a_wrong_fact_value_and_a_name_other_than_the_file_are_errors(tmp_path):
    path = tmp_path / "envoy.yaml"
    path.write_text((EDGES / "envoy.yaml").read_text().replace("ja4: full", "ja4: most"))
    with pytest.raises(ConfigError, match=r"envoy.yaml:\d+: tls.ja4"):
        edge_from_file(YamlDocument(path))
    other = tmp_path / "other.yaml"
    other.write_text((EDGES / "envoy.yaml").read_text())
    with pytest.raises(ConfigError, match="must be the file's name"):
        edge_from_file(YamlDocument(other))


def test_the_full_edge_file_must_keep_every_fact(tmp_path):
    (tmp_path / "full.yaml").write_text((EDGES / "full.yaml").read_text().replace("h2_fingerprint: true",
                                                                                   "h2_fingerprint: false"))
    with pytest.raises(ConfigError, match="keeps every fact"):
        load_edges(tmp_path)


def test_the_input_edge_must_name_an_edge_profile(tmp_path):
    cfg = tmp_path / "detector.yaml"
    text = (ROOT / "config" / "detector.yaml").read_text()
    for key in ("profiles_dir", "devices_dir", "known_stacks", "country_centroids", "edges_dir"):
        text = text.replace(f"\n{key}: ", f"\n{key}: {ROOT / 'config'}/", 1)
    text = text.replace("  allowed_edges: []", "  allowed_edges: [envoy, haproxy-2]")
    cfg.write_text(text)
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if "allowed_edges:" in ln and "haproxy-2" in ln)
    from detector.engine import DetectionConfig
    with pytest.raises(ConfigError) as exc:
        DetectionConfig.load(cfg)
    assert f"{cfg}:{line}: input.allowed_edges.1: no edge profile named 'haproxy-2'" in str(exc.value)


# --- the policy: a message cannot switch checks off ----------------------------------------
def test_a_record_edge_is_honoured_only_when_allowed(detection, base):
    policy = EdgePolicy(detection.edges, "haproxy", frozenset({"envoy"}))
    assert policy.refusal(request_from_obj(base)) is None
    assert policy.resolve(request_from_obj(base)).name == "haproxy"
    assert policy.refusal(request_from_obj(with_edge(base, "haproxy"))) is None  # the topic's own
    assert policy.resolve(request_from_obj(with_edge(base, "envoy"))).name == "envoy"
    refused = policy.refusal(request_from_obj(with_edge(base, "nginx-njs")))
    assert refused is not None and refused.code == "edge_not_allowed" and "allowed_edges (envoy)" in refused.reason
    # even unchecked, resolve never gives an edge the topic does not allow
    assert policy.resolve(request_from_obj(with_edge(base, "nginx-njs"))).name == "haproxy"
    unknown = policy.refusal(request_from_obj(with_edge(base, "squid")))
    assert unknown is not None and unknown.code == "unknown_edge"
    assert EdgePolicy.offline(detection.edges).refusal(request_from_obj(with_edge(base, "nginx-njs"))) is None
    with pytest.raises(ValueError, match="no edge profile named squid"):
        EdgePolicy(detection.edges, "squid")


def test_decode_takes_the_edge_field_on_both_paths(base):
    line = orjson.dumps(with_edge(base, "envoy"))
    assert decode_line(line).edge == "envoy"
    assert request_from_obj(with_edge(base, "envoy")).edge == "envoy"
    assert decode_message(line).requests[0].edge == "envoy"
    assert decode_line(orjson.dumps(base)).edge is None
    for bad, code in (("x" * 65, "invalid_value"), ("", "invalid_value"), (3, "invalid_type")):
        got = decode_message(orjson.dumps(with_edge(base, bad)))
        assert not got.requests and got.rejections[0].code == code, (bad, got.rejections)


# --- gating and not_assessed ---------------------------------------------------------------
def test_a_lost_fact_silences_its_checks_and_the_verdict_says_so(detection, base):
    title = request_from_obj(title_cased(base))
    full = detection.pipeline().score_one(title)
    assert "headers.name_case" in [s.code for s in full.signals]
    assert b"not_assessed" not in full.to_json()  # the default edge: every family assessed, the field absent
    haproxy = detection.pipeline(edges=EdgePolicy(detection.edges, "haproxy")).score_one(title)
    assert "headers.name_case" not in [s.code for s in haproxy.signals]
    assert haproxy.not_assessed == ("attestation", "behaviour", "body", "headers", "network", "transport")
    assert orjson.loads(haproxy.to_json())["not_assessed"] == ["attestation", "behaviour", "body", "headers", "network", "transport"]
    assert haproxy.as_dict()["not_assessed"] == ["attestation", "behaviour", "body", "headers", "network", "transport"]


@pytest.mark.parametrize(("edge", "code", "change"), [
    ("envoy", "headers.order_mismatch", lambda o: {**o, "headers": o["headers"][::-1]}),
    ("envoy", "headers.missing_required", lambda o: {**o, "headers": o["headers"][1:]}),
    ("cloudflare", "transport.h2_fingerprint_mismatch", lambda o: {**o, "h2": {"fingerprint": "1:65536|0|0|m,a,s,p"}}),
    ("nginx-njs", "tls.fingerprint_mismatch", lambda o: {**o, "tls": {**o["tls"], "ja4": PYTHON_REQUESTS_JA4}}),
    ("cloudfront", "network.hosting", lambda o: {**o, "network": {**(o.get("network") or {}), "hosting": True}}),
])
def test_each_lost_fact_silences_its_code(detection, base, edge, code, change):
    changed = request_from_obj(change(base))
    assert code in [s.code for s in detection.pipeline().score_one(changed).signals]
    v = detection.pipeline(edges=EdgePolicy(detection.edges, edge)).score_one(changed)
    assert code not in [s.code for s in v.signals]
    assert code.split(".")[0] in v.not_assessed


def test_a_record_of_an_allowed_edge_is_judged_by_that_edge(detection, base):
    pipe = detection.pipeline(edges=EdgePolicy(detection.edges, FULL, frozenset({"haproxy"})))
    own = pipe.score_one(request_from_obj(with_edge(title_cased(base), "haproxy")))
    assert "headers.name_case" not in [s.code for s in own.signals]
    topic = pipe.score_one(request_from_obj(title_cased(base)))
    assert "headers.name_case" in [s.code for s in topic.signals]


# --- partial JA4 ----------------------------------------------------------------------------
def test_partial_ja4_compares_the_parts_it_has():
    p = haproxy_26_partial(OKHTTP_JA4)
    assert p == "t13d1513h2_8daaf6152771_????????????" and is_partial(p) and not is_partial(OKHTTP_JA4)
    assert matches(p, OKHTTP_JA4)
    assert not matches(haproxy_26_partial(PYTHON_REQUESTS_JA4), OKHTTP_JA4)
    assert not matches(p, OKHTTP_JA4[:-1])
    # the same counts, ALPN and cipher hash with other extensions: part c is unknown, it matches
    assert matches(p, OKHTTP_JA4[:24] + "000000000000")


def test_the_tls_check_judges_a_partial_ja4(detection, base):
    pipe = detection.pipeline(edges=EdgePolicy(detection.edges, "haproxy"))
    ok = {**base, "tls": {**base["tls"], "ja4": haproxy_26_partial(base["tls"]["ja4"])}}
    assert not [s for s in pipe.score_one(request_from_obj(ok)).signals if s.code.startswith("tls.")]
    bad = {**base, "tls": {**base["tls"], "ja4": haproxy_26_partial(PYTHON_REQUESTS_JA4)}}
    got = {s.code: s.detail for s in pipe.score_one(request_from_obj(bad)).signals}
    assert "partial JA4 t13d1812h1_85036bcba153_" in got["tls.fingerprint_mismatch"]
    # two known stacks agree with its parts (requests and httpx share counts and cipher hash): both named
    assert got["tls.known_automation_stack"].endswith("Python httpx or aiohttp (OpenSSL 3) or Python requests/urllib3 "
                                                      "(OpenSSL 3)")


# --- the loss transforms ----------------------------------------------------------------------
def test_through_edge_applies_each_loss(detection, profile, base):
    e = detection.edges
    attack = next(private_api_library(profile, 1, seed=1, evasion=0))
    h = through_edge(attack, e["haproxy"], profile)
    assert [n for n, _ in h["headers"]] == [n.lower() for n, _ in attack["headers"]]  # lower-cased, order kept
    assert h["tls"]["ja4"] == haproxy_26_partial(attack["tls"]["ja4"])
    assert "fingerprint" not in through_edge(base, e["haproxy"], profile).get("h2", {}) and "network" not in h
    if "h2" in base and "authority" in base["h2"]:
        assert through_edge(base, e["haproxy"], profile)["h2"] == {"authority": base["h2"]["authority"]}
    v = through_edge(attack, e["envoy"], profile)
    names = [n for n, _ in v["headers"]]
    assert names == sorted(names) and set(names) <= profile.headers.known  # order lost, a partial set
    assert "accept" not in names and any(n.lower() == "accept" for n, _ in attack["headers"])
    assert "body_sha256" not in through_edge(base, e["envoy"], profile) or "body_sha256" not in base
    assert through_edge(base, e["nginx-njs"], profile)["tls"] == {"sni": base["tls"]["sni"]}  # no fingerprint
    assert through_edge(base, e["cloudfront"], profile).get("network", {}).keys() <= {"asn", "as_org", "country"}
    assert through_edge(base, e["full"], profile) == base
    # this attack sends no attestation; its body is not in Fastly's log line
    assert through_edge(attack, e["fastly"], profile) == {k: v for k, v in attack.items() if k != "body"}
    assert "body" in attack
    assert "attestation" in base and "attestation" not in through_edge(base, e["fastly"], profile)
    signed = next(x for x in genuine(profile, 50, seed=3, catalogue=detection.catalogue) if "body_sha256" in x)
    lost = through_edge(signed, e["cloudflare"], profile)
    assert "body_sha256" not in lost and "body_size" not in lost


def test_at_risk_and_survives(detection, profile):
    risk = at_risk(detection.edges["envoy"], profile)
    assert {"headers.order_mismatch", "headers.forbidden", "transport.h2_fingerprint_mismatch"} <= risk
    assert not at_risk(detection.edges["full"], profile)
    assert survives([("tls.fingerprint_mismatch", 0.8)], risk, 0.5)
    assert not survives([("headers.order_mismatch", 0.7), ("population.fingerprint_device_surge", 0.3)], risk, 0.5)
    assert not survives([("network.hosting", 0.35)], frozenset(), 0.5)


def test_the_default_edge_changes_no_verdict(detection, profile):
    """`input.edge: full` and no `edge` field: the verdicts are today's, byte for byte."""
    events = list(genuine(profile, 300, seed=5, catalogue=detection.catalogue))
    events += list(private_api_library(profile, 100, seed=5, evasion=1))
    default = detection.pipeline()
    bare = dataclasses.replace(detection, edges={FULL: detection.edges[FULL]}).pipeline()
    for e in events:
        r = request_from_obj(e)
        assert default.score_one(r).to_json() == bare.score_one(r).to_json()


# --- detector score ---------------------------------------------------------------------------
def test_detector_score_takes_any_shipped_edge_and_rejects_an_unknown_one(tmp_path, base):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n".join(orjson.dumps(x) for x in (
        with_edge(title_cased(base), "haproxy"), with_edge(base, "squid"), title_cased(base))) + b"\n")
    out = tmp_path / "out.jsonl"
    res = subprocess.run([sys.executable, "-m", "agents.cli", "score", str(src), "-o", str(out)],
                         capture_output=True, cwd=ROOT, timeout=120)
    assert res.returncode == 1
    assert "line 2: rejected: unknown_edge: field 'edge' names no edge profile: 'squid'" in res.stderr.decode()
    verdicts = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    assert len(verdicts) == 2
    assert verdicts[0]["not_assessed"] == ["attestation", "behaviour", "body", "headers", "network", "transport"]
    assert "headers.name_case" not in [s["code"] for s in verdicts[0]["signals"]]
    assert "not_assessed" not in verdicts[1] and "headers.name_case" in [s["code"] for s in verdicts[1]["signals"]]


def test_without_the_hosting_fact_the_country_does_not_feed_impossible_travel(detection, base):
    """A VPN user's exits look like travel unless hosting networks can be left out: an
    edge without hosting enrichment (CloudFront, Cloudflare: ASN and country only) sends
    no country to the travel detector, and its verdicts say behaviour was not fully assessed."""
    from detector.behaviour.records import records_for
    obj = {**base, "network": {"asn": 64500, "country": "DE"}}
    for edge, country in (("full", "DE"), ("cloudfront", None)):
        pipe = detection.pipeline(edges=EdgePolicy(detection.edges, edge))
        v, ctx = pipe.assess(request_from_obj(obj))
        assert {r.country for r in records_for(request_from_obj(obj), ctx, v)} == {country}
    assert "behaviour.impossible_travel" in detection.edges["cloudfront"].gated(detection.profiles["example-android"])


def test_an_input_edge_set_by_a_variable_names_the_variable(monkeypatch):
    from agents.settings import load_detection
    monkeypatch.setenv("DETECTOR_INPUT__EDGE", "squid")
    with pytest.raises(ConfigError, match=r"input.edge: no edge profile named 'squid' .*\(from DETECTOR_INPUT__EDGE\)"):
        load_detection(ROOT / "config" / "detector.yaml")
    monkeypatch.setenv("DETECTOR_INPUT__EDGE", "cloudfront")
    cfg = load_detection(ROOT / "config" / "detector.yaml")
    # the edge's lateness (a CDN log path: minutes) raises the behaviour's
    assert cfg.input_edge == "cloudfront" and cfg.behaviour.allowed_lateness_s == 600
