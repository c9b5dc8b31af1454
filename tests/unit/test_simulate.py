"""The simulator's genuine population against the full configuration: deterministic,
clean under every stateless check, and as diverse as real users (devices from the
catalogue, versions, networks, countries, sessions); the private-API library is
malicious on every request."""

from __future__ import annotations

import collections
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest

from detector.decode import request_from_obj
from detector.profile import signing_key_for
from detector.simulate import (
    BUILTIN_MODELS,
    COUNTRIES,
    DEFAULT_START_TS,
    genuine,
    genuine_request,
    mixed,
    private_api_library,
    resign,
    simulate,
)

ROOT = Path(__file__).resolve().parents[2]
N = 20_000
FPR_MAX = 0.001


def hdr(e: dict[str, Any]) -> dict[str, str]:
    return {n: v for n, v in e["headers"]}


# The user agent as the simulator writes it (the profile's grammar is what the checks
# hold it to; here the fields are read back to compare them with their sources).
UA = re.compile(r"^(?P<app_name>\S+) (?P<app_version>\S+) Android \((?P<sdk_int>\d+)/(?P<release>[^;]+); "
                r"(?P<dpi>\d+)dpi; (?P<width>\d+)x(?P<height>\d+); (?P<manufacturer>[^;]+); (?P<model>[^;]+); "
                r"(?P<device>[^;]+); (?P<hardware>[^;]+); (?P<locale>[^;]+); (?P<version_code>\d+)\)$")


def ua_fields(e: dict[str, Any]) -> dict[str, str]:
    m = UA.fullmatch(hdr(e)["user-agent"])
    assert m, hdr(e)["user-agent"]
    return m.groupdict()


def jsonl(events) -> bytes:
    return b"".join(orjson.dumps(e, option=orjson.OPT_SORT_KEYS) + b"\n" for e in events)


@pytest.fixture(scope="module")
def events(profile, detection) -> list[dict[str, Any]]:
    return list(genuine(profile, N, seed=1, catalogue=detection.catalogue))


@pytest.fixture(scope="module")
def verdicts(detection, events):
    return detection.pipeline().score_batch([request_from_obj(e) for e in events])


def top_signals(verdicts, n: int = 12) -> str:
    c = collections.Counter((s.code, s.detail) for v in verdicts if v.verdict != "clean" for s in v.signals)
    return "\n".join(f"{k:6d}  {code}: {detail}" for (code, detail), k in c.most_common(n))


# ---------------------------------------------------------------- determinism


def test_same_seed_same_bytes_other_seed_differs(profile, detection):
    cat = detection.catalogue
    a = jsonl(genuine(profile, 3000, seed=7, catalogue=cat))
    assert a == jsonl(genuine(profile, 3000, seed=7, catalogue=cat))
    assert a != jsonl(genuine(profile, 3000, seed=8, catalogue=cat))
    m = jsonl(mixed(profile, 1000, seed=7, catalogue=cat))
    assert m == jsonl(mixed(profile, 1000, seed=7, catalogue=cat))


def test_output_does_not_depend_on_the_process_hash_seed():
    code = ("import hashlib, orjson; from detector.engine import DetectionConfig; from detector.simulate import mixed; "
            "c = DetectionConfig.load(); p = c.profiles[c.default_profile]; "
            "print(hashlib.sha256(b''.join(orjson.dumps(e) for e in mixed(p, 600, 3, catalogue=c.catalogue)))"
            ".hexdigest())")
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, timeout=60)
        assert res.returncode == 0, res.stderr.decode()
        digests.add(res.stdout.strip())
    assert len(digests) == 1


def test_event_time_only_and_rate_sets_the_span(profile, detection):
    evs = list(genuine(profile, 5000, seed=2, catalogue=detection.catalogue, rate=5.0))
    ts = [e["ts"] for e in evs]
    assert ts == sorted(ts) and ts[0] == DEFAULT_START_TS
    assert 0.8 * 1000 <= ts[-1] - ts[0] <= 1.2 * 1000
    later = list(genuine(profile, 50, seed=2, start_ts=DEFAULT_START_TS + 86400))
    assert later[0]["ts"] == DEFAULT_START_TS + 86400


# ---------------------------------------------------------------- clean


def test_genuine_population_scores_clean(events, verdicts):
    assert len(verdicts) == N
    flagged = [v for v in verdicts if v.verdict != "clean"]
    fpr = len(flagged) / len(verdicts)
    print(f"genuine FPR {fpr:.4%} ({len(flagged)} of {len(verdicts)})")
    assert fpr <= FPR_MAX, f"FPR {fpr:.3%} over {len(verdicts)} requests; top signals:\n{top_signals(verdicts)}"


def test_travellers_and_vpn_users_carry_only_weak_signals(verdicts):
    codes = collections.Counter(s.code for v in verdicts for s in v.signals)
    assert 0 < codes["network.locale_country_mismatch"] <= 0.05 * N  # some travellers and expats
    assert 0 < codes["network.hosting"] <= 0.02 * N  # a few on a consumer VPN
    weak = [v for v in verdicts if v.signals and {s.code for s in v.signals} <= {"network.locale_country_mismatch",
                                                                                 "network.hosting"}]
    assert weak and all(v.verdict == "clean" for v in weak)


def test_builtin_population_without_a_catalogue_is_clean(profile, detection):
    pipe = detection.pipeline()
    vs = pipe.score_batch([request_from_obj(e) for e in genuine(profile, 3000, seed=4)])
    assert all(v.verdict == "clean" for v in vs), top_signals(vs)


def test_builtin_models_agree_with_the_catalogue(detection):
    cat = detection.catalogue
    for b in BUILTIN_MODELS:
        f = cat.facts(b.model)
        assert f is not None, b.model
        assert b.manufacturer == f.manufacturer and set(b.devices) <= set(f.devices) and set(b.hardware) <= set(f.hardware)
        assert set(b.dpi) <= set(f.dpi) and set(b.resolutions) <= set(f.resolutions)
        assert (b.sdk_min, b.sdk_max) == (f.sdk_min, f.sdk_max)


def test_genuine_request_and_resign(profile, detection):
    pipe = detection.pipeline()
    base = genuine_request(profile, 5, catalogue=detection.catalogue)
    assert [s.code for s in pipe.score_one(request_from_obj(base)).signals] == []
    moved = {**base, "path": "/api/v1/config"}
    assert [s.code for s in pipe.score_one(request_from_obj(moved)).signals] == ["signature.invalid"]
    assert [s.code for s in pipe.score_one(request_from_obj(resign(profile, moved))).signals] == []


# ---------------------------------------------------------------- agrees with the profile


def test_requests_follow_the_profile(profile, detection, events):
    rules = profile.headers
    rank = {n: i for i, n in enumerate(rules.order)}
    schema = json.loads((ROOT / "config" / "schema" / "client-request.schema.json").read_text())
    sigs = set()
    for i, e in enumerate(events):
        names = [n for n, _ in e["headers"]]
        h = hdr(e)
        assert all(n == n.lower() and n in rank for n in names)
        assert [rank[n] for n in names] == sorted(rank[n] for n in names)
        assert rules.required <= set(names)
        assert ("content-length" in h) == ("content-type" in h) == (e["method"] == "POST")
        if e["method"] == "POST":
            assert h["content-length"] == str(e["body_size"])
        assert h["x-es-device-checksum"] == hashlib.sha256(h["x-es-device-id"].encode()).hexdigest()[:8]
        for name, rule in rules.values.items():
            assert name not in h or rule.accepts(h[name]), (name, h.get(name))
        ua = ua_fields(e)
        assert h["accept-language"] == ua["locale"].replace("_", "-")
        assert re.fullmatch(r"android-[0-9a-f]{16}", h["x-es-device-id"])
        assert "x-es-user-id" not in h or profile.ids["account"].regex.fullmatch(h["x-es-user-id"])
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", h["x-es-session-id"])
        v = profile.versions[ua["app_version"]]
        assert v.status != "retired" and int(ua["version_code"]) in v.codes
        assert h["x-es-signature"].split(":")[1] == signing_key_for(profile, v)
        assert e["http_version"] == "2" and e["h2"]["fingerprint"] in profile.transport.h2_fingerprints
        assert e["tls"]["ja4"] in {r.value for r in profile.tls.ja4} and e["tls"]["alpn"] == "h2"
        a = e["attestation"]
        assert a["app_recognition"] == "PLAY_RECOGNIZED" and a["request_hash_ok"] is True
        assert {"MEETS_DEVICE_INTEGRITY", "MEETS_BASIC_INTEGRITY"} <= set(a["device_recognition"])
        assert 0 < a["token_age_s"] < profile.attestation.max_token_age_s
        assert e["label"] == {"scenario": "genuine", "malicious": False}
        sigs.add(h["x-es-signature"])
        if i % 500 == 0:
            jsonschema.validate(e, schema)
    assert len(sigs) == len(events)  # no genuine request looks like a replay


def test_devices_agree_with_the_catalogue(profile, detection, events):
    cat, releases = detection.catalogue, detection.releases
    seen = set()
    for e in events:
        ua = ua_fields(e)
        key = tuple(ua[k] for k in ("manufacturer", "model", "device", "hardware", "dpi", "width", "height",
                                     "sdk_int", "release"))
        if key in seen:
            continue
        seen.add(key)
        f = cat.facts(ua["model"])
        assert f is not None
        sdk, w, h = int(ua["sdk_int"]), int(ua["width"]), int(ua["height"])
        assert (f.sdk_min or 0) <= sdk <= (f.sdk_max or 99)
        assert any(ua["release"] == r or ua["release"].startswith(r + ".") for r in releases[sdk])
        assert not f.dpi or int(ua["dpi"]) in f.dpi
        panels = {pw: ph for pw, ph in f.resolutions}
        assert w in panels and 0.88 * panels[w] <= h <= panels[w]
        assert ua["device"] in f.devices
        assert not f.hardware or ua["hardware"] in f.hardware
        assert cat.is_known_pair(ua["manufacturer"], ua["model"], ua["device"]) is not False


# ---------------------------------------------------------------- diverse like real users


def test_population_is_diverse(profile, events):
    uas = [ua_fields(e) for e in events]
    devices = {hdr(e)["x-es-device-id"] for e in events}
    assert len(devices) >= 500 and N / len(devices) <= 30
    assert len({u["model"] for u in uas}) >= 100
    assert len({u["manufacturer"] for u in uas}) >= 8
    versions = collections.Counter(u["app_version"] for u in uas)
    live = sorted((v for v in profile.versions.values() if v.status != "retired"), key=lambda v: v.sort_key)
    assert len(versions) >= 5 and versions.most_common(1)[0][0] == live[-1].version
    assert len({u["version_code"] for u in uas}) > len(versions)  # per-split builds
    conns = collections.Counter(hdr(e)["x-es-connection-type"] for e in events)
    assert conns["WIFI"] >= 0.2 * N and sum(k for c, k in conns.items() if c.startswith("MOBILE.")) >= 0.2 * N
    assert len({c for c in conns if c.startswith("MOBILE.")}) >= 3
    countries = collections.Counter(e["network"]["country"] for e in events)
    assert len(countries) >= 10 and countries.most_common(1)[0][1] <= 0.4 * N
    assert len({u["locale"] for u in uas}) >= 12
    assert len({e["network"]["asn"] for e in events}) >= 30
    assert any(":" in e["client_ip"] for e in events) and any("." in e["client_ip"] for e in events)


def test_sessions_start_with_the_startup_burst_then_browse_and_act(profile, events):
    sessions: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for e in events:
        sessions[hdr(e)["x-es-session-id"]].append(e)
    assert len(sessions) >= 500
    complete = [s for s in sessions.values() if s[0]["ts"] > DEFAULT_START_TS and len(s) >= 4]
    for s in complete:
        assert [profile.endpoint_class(e["path"]) for e in s[:3]] == ["startup"] * 3
        assert s[3]["path"] == "/api/v1/feed/timeline"
        assert s[3]["ts"] - s[0]["ts"] < 2.0  # a burst
    classes = collections.Counter(profile.endpoint_class(e["path"]) for e in events)
    assert None not in classes
    assert classes["browse"] > classes["startup"] > classes["action"]
    assert 0.05 <= classes["action"] / N <= 0.15


def test_shared_devices_and_reinstalls(events):
    accounts_of: dict[str, set[str]] = collections.defaultdict(set)
    devices_of: dict[str, set[str]] = collections.defaultdict(set)
    for e in events:
        h = hdr(e)
        if "x-es-user-id" in h:
            accounts_of[h["x-es-device-id"]].add(h["x-es-user-id"])
            devices_of[h["x-es-user-id"]].add(h["x-es-device-id"])
    shared = sum(len(a) == 2 for a in accounts_of.values())
    reinstalled = sum(len(d) == 2 for d in devices_of.values())
    assert shared >= 3 and reinstalled >= 3
    assert max(len(a) for a in accounts_of.values()) == 2 and max(len(d) for d in devices_of.values()) == 2


def test_fewer_sessions_at_night_in_local_time(profile, detection):
    offsets = {c.code: sum(c.utc_offsets) / len(c.utc_offsets) for c in COUNTRIES}
    evs = genuine(profile, 8000, seed=6, catalogue=detection.catalogue, rate=0.05)  # 44 hours
    by_hour = collections.Counter()
    for e in evs:
        if e["path"] == "/api/v1/launcher/sync" and e["network"]["country"] in offsets:
            by_hour[int((e["ts"] / 3600 + offsets[e["network"]["country"]]) % 24)] += 1
    night = sum(by_hour[h] for h in range(1, 6))
    evening = sum(by_hour[h] for h in range(18, 23))
    assert evening >= 2.5 * night, sorted(by_hour.items())


# ---------------------------------------------------------------- attacks


@pytest.mark.parametrize("evasion", [0, 1, 2])
def test_private_api_library_is_malicious_on_every_request(profile, detection, evasion):
    pipe = detection.pipeline()
    vs = pipe.score_batch([request_from_obj(e) for e in private_api_library(profile, 300, seed=1, evasion=evasion)])
    assert all(v.verdict == "malicious" for v in vs)
    codes = {s.code for v in vs for s in v.signals}
    assert {"tls.fingerprint_mismatch", "transport.http_version", "network.hosting"} <= codes
    # it copies the app's derived fields right: only its real tells show
    assert not codes & {"headers.checksum_mismatch", "headers.inconsistent", "signature.invalid"}
    if evasion < 2:
        assert {"ua.retired_version", "signature.retired_key", "headers.name_case", "headers.forbidden"} <= codes


def test_simulate_and_mixed_dispatch(profile, detection):
    cat = detection.catalogue
    assert jsonl(simulate("genuine", profile, 200, 3, catalogue=cat)) == jsonl(genuine(profile, 200, 3, catalogue=cat))
    assert next(simulate("private_api_library", profile, 1, 3, catalogue=cat))["label"]["malicious"] is True
    with pytest.raises(ValueError):
        simulate("nope", profile, 1, 1)
    evs = mixed(profile, 2000, 3, catalogue=cat)
    labels = collections.Counter(e["label"]["scenario"] for e in evs)
    assert labels == {"genuine": 1900, "private_api_library": 100}
    assert [e["ts"] for e in evs] == sorted(e["ts"] for e in evs)


def test_simulate_passes_the_evasion_level_and_mixed_splits_its_attacks(profile, detection):
    cat = detection.catalogue
    a = jsonl(simulate("private_api_library", profile, 50, 3, catalogue=cat, evasion=2))
    assert a == jsonl(private_api_library(profile, 50, 3, evasion=2)) != jsonl(private_api_library(profile, 50, 3))
    # genuine has no evasion level: it is ignored, not an error
    assert jsonl(simulate("genuine", profile, 50, 3, catalogue=cat, evasion=1)) == jsonl(genuine(profile, 50, 3, catalogue=cat))
    evs = mixed(profile, 2000, 3, catalogue=cat, attack_share=0.1, attacks=("emulator_farm", "replay"), evasion=1)
    labels = collections.Counter(e["label"]["scenario"] for e in evs)
    assert labels["genuine"] == 1800 and labels["emulator_farm"] == 100 and labels["replay"] == 100
    assert [e["ts"] for e in evs] == sorted(e["ts"] for e in evs)
