"""The attack scenarios of the simulator: deterministic and labelled, exactly `count`
requests in event-time order, and realistic the way each adversary is (detections.md):
what each one gets right, what it gets wrong, and how it behaves. The stateless-
detectable ones are flagged on every request at every evasion level; the ones that need
state look like the app per request at their strongest level."""

from __future__ import annotations

import collections
import statistics
from typing import Any

import orjson
import pytest

from detector.decode import request_from_obj
from detector.simulate import (
    ATTACKS,
    DEFAULT_START_TS,
    EVASION_LEVELS,
    LIBRARY_DEFAULT_DEVICE,
    NEEDS_STATE,
    PYTHON_REQUESTS_JA4,
    STATELESS_DETECTABLE,
    simulate,
)
from tests.unit.test_simulate import UA, hdr

N = 1200


def ua_of(e: dict[str, Any]) -> dict[str, str]:
    ua = next(v for n, v in e["headers"] if n.lower() == "user-agent")
    m = UA.fullmatch(ua)
    assert m, ua
    return m.groupdict()


def tuple_of(e: dict[str, Any]) -> tuple[str, ...]:
    u = ua_of(e)
    return tuple(u[k] for k in ("manufacturer", "model", "device", "hardware", "dpi", "width", "height", "sdk_int",
                                "release"))


def lh(e: dict[str, Any]) -> dict[str, str]:
    """Headers by lower-cased name (libraries write Title-Case)."""
    return {n.lower(): v for n, v in e["headers"]}


def block(ip: str) -> str:
    return ".".join(ip.split(".")[:3])


@pytest.fixture(scope="module")
def traffic(profile, detection):
    """Every attack at every level, generated once: (scenario, evasion) -> events."""
    cache: dict[tuple[str, int], list[dict[str, Any]]] = {}

    def get(name: str, evasion: int, count: int = N) -> list[dict[str, Any]]:
        key = (name, evasion)
        if key not in cache or len(cache[key]) != count:
            cache[key] = list(simulate(name, profile, count, seed=3, rate=1.0, catalogue=detection.catalogue,
                                       evasion=evasion))
        return cache[key]

    return get


@pytest.fixture(scope="module")
def pipe(detection):
    return detection.pipeline()


def attack_only(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["label"]["malicious"]]


# ---------------------------------------------------------------- every scenario


@pytest.mark.parametrize("name", list(ATTACKS))
def test_deterministic_for_a_seed_exact_count_in_event_time_order(name, profile, detection):
    cat = detection.catalogue

    def run(seed: int, evasion: int) -> bytes:
        return b"".join(orjson.dumps(e, option=orjson.OPT_SORT_KEYS) + b"\n"
                        for e in simulate(name, profile, 400, seed, catalogue=cat, evasion=evasion))

    for evasion in EVASION_LEVELS:
        a = run(7, evasion)
        assert a == run(7, evasion) != run(8, evasion)
        events = [orjson.loads(x) for x in a.splitlines()]
        assert len(events) == 400
        ts = [e["ts"] for e in events]
        assert ts == sorted(ts) and ts[0] >= DEFAULT_START_TS
        assert len({e["request_id"] for e in events}) == 400
    assert run(7, 0) != run(7, 2)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_labels_name_the_scenario(name, traffic):
    for evasion in EVASION_LEVELS:
        events = traffic(name, evasion)
        for e in events:
            assert e["label"]["scenario"] == name
            if name == "replay" and not e["label"]["malicious"]:
                assert e["label"]["role"] == "captured"  # the originals: real app traffic
            else:
                assert e["label"]["malicious"] is True
        assert len(attack_only(events)) >= 0.8 * len(events)


def test_unknown_scenario_and_evasion_are_refused(profile):
    with pytest.raises(ValueError, match="unknown scenario"):
        simulate("nope", profile, 1, 1)
    with pytest.raises(ValueError, match="evasion"):
        simulate("emulator_farm", profile, 1, 1, evasion=3)
    assert len(list(simulate("emulator_farm", profile, 0, 1))) == 0


@pytest.mark.parametrize("name", STATELESS_DETECTABLE)
@pytest.mark.parametrize("evasion", EVASION_LEVELS)
def test_stateless_detectable_attacks_are_flagged_on_every_request(name, evasion, traffic, pipe):
    events = traffic(name, evasion)
    verdicts = pipe.score_batch([request_from_obj(e) for e in events])
    missed = [v for v in verdicts if v.verdict == "clean"]
    assert not missed, (len(missed), missed[0])


@pytest.mark.parametrize("name", NEEDS_STATE)
def test_at_the_strongest_level_stateful_attacks_look_like_the_app_per_request(name, traffic, pipe, profile, detection):
    events = attack_only(traffic(name, 2))
    verdicts = pipe.score_batch([request_from_obj(e) for e in events])
    codes = collections.Counter(s.code for v in verdicts for s in v.signals)
    assert all(v.verdict == "clean" for v in verdicts), codes
    assert set(codes) <= {"network.locale_country_mismatch"}, codes  # replays of travellers' requests at most
    rank = {n: i for i, n in enumerate(profile.headers.order)}
    for e in events:
        names = [n for n, _ in e["headers"]]
        assert [rank[n] for n in names] == sorted(rank[n] for n in names)
        assert e["tls"]["ja4"] in {r.value for r in profile.tls.ja4} and e["http_version"] == "2"
        assert "MEETS_DEVICE_INTEGRITY" in e["attestation"]["device_recognition"]
        assert detection.catalogue.facts(ua_of(e)["model"]) is not None  # real catalogue phones


# ---------------------------------------------------------------- private_api_library


def test_private_api_library_is_one_script_on_one_default_device(traffic):
    for evasion in EVASION_LEVELS:
        events = traffic("private_api_library", evasion)
        assert {tuple_of(e)[:4] for e in events} == {(LIBRARY_DEFAULT_DEVICE.manufacturer, LIBRARY_DEFAULT_DEVICE.model,
                                                      LIBRARY_DEFAULT_DEVICE.device, LIBRARY_DEFAULT_DEVICE.hardware)}
        assert all(e["network"]["hosting"] and e["http_version"] == "1.1" for e in events)
        assert {e["tls"]["ja4"] for e in events} == {PYTHON_REQUESTS_JA4}
        assert len({lh(e)["x-es-user-id"] for e in events}) >= 20
    devices = {lh(e)["x-es-device-id"] for e in traffic("private_api_library", 0)}
    assert len(devices) == 1  # every account on the library's one device id


def test_private_api_library_has_a_fixed_delay_and_identical_retries(traffic):
    events = traffic("private_api_library", 0)
    retries = 0
    for a, b in zip(events, events[1:]):
        if a.get("response_status") == 429:
            retries += 1
            assert b["ts"] - a["ts"] == pytest.approx(1.0, abs=0.002)
            same = {k: v for k, v in a.items() if k not in ("request_id", "ts", "response_status")}
            assert same == {k: v for k, v in b.items() if k not in ("request_id", "ts", "response_status")}
    assert retries >= 20
    gaps = {round(b["ts"] - a["ts"], 2) for a, b in zip(events, events[1:]) if a.get("response_status") != 429}
    assert len(gaps) <= 3  # one fixed delay (rounding of ts to ms aside)


# ---------------------------------------------------------------- emulator_farm


def test_emulator_farm_runs_emulator_tuples(traffic, detection):
    cat = detection.catalogue
    for evasion in (0, 1):
        tuples = {tuple_of(e) for e in traffic("emulator_farm", evasion)}
        assert 1 <= len(tuples) <= 2  # one image per host, two in the farm
        for manufacturer, model, device, hardware, dpi, w, h, _, _ in tuples:
            markers = cat.emulator_markers(manufacturer, model, device, hardware, dpi=int(dpi), width=int(w),
                                           height=int(h))
            impossible = cat.plausibility(model, int(dpi), int(w), int(h), hardware, None)
            assert markers or impossible, (model, hardware, dpi, w, h)
    for evasion in EVASION_LEVELS:
        for e in traffic("emulator_farm", evasion):
            assert "MEETS_DEVICE_INTEGRITY" not in e["attestation"]["device_recognition"]


def test_emulator_farm_has_many_accounts_per_host_and_synchronised_rounds(traffic):
    events = traffic("emulator_farm", 0)
    per_ip: dict[str, set[str]] = collections.defaultdict(set)
    per_device: dict[str, set[str]] = collections.defaultdict(set)
    for e in events:
        per_ip[e["client_ip"]].add(hdr(e)["x-es-user-id"])
        per_device[hdr(e)["x-es-device-id"]].add(hdr(e)["x-es-user-id"])
    assert max(len(a) for a in per_ip.values()) >= 30
    assert max(len(a) for a in per_device.values()) >= 30  # instances cloned from one snapshot
    starts = sorted(e["ts"] for e in events if e["path"] == "/api/v1/launcher/sync")
    first_round = [t for t in starts if t < starts[0] + 60]
    assert len(first_round) >= 10 and first_round[-1] - first_round[0] <= 2.0
    screens = {(u["dpi"], u["width"], u["height"]) for u in map(ua_of, traffic("emulator_farm", 2))}
    assert len(screens) <= 2  # identical screens across the farm


# ---------------------------------------------------------------- synthetic_devices


def test_synthetic_devices_come_from_a_large_pool_of_impossible_tuples(traffic, detection):
    cat, releases = detection.catalogue, detection.releases
    for evasion in EVASION_LEVELS:
        tuples = {tuple_of(e) for e in traffic("synthetic_devices", evasion)}
        assert len(tuples) >= 100
        for manufacturer, model, device, hardware, dpi, w, h, sdk, release in tuples:
            assert cat.facts(model) is not None  # real models, impossible facts
            release_ok = any(release == r or release.startswith(r + ".") for r in releases.get(int(sdk), ()))
            problems = cat.plausibility(model, int(dpi), int(w), int(h), hardware, int(sdk))
            assert problems or not release_ok or cat.is_known_pair(manufacturer, model, device) is False, model


# ---------------------------------------------------------------- bot_network


def test_bot_network_has_many_accounts_per_device_and_ip_block_hopping_and_action_only(traffic, profile):
    for evasion in EVASION_LEVELS:
        events = traffic("bot_network", evasion)
        per_device: dict[str, set[str]] = collections.defaultdict(set)
        per_block: dict[str, set[str]] = collections.defaultdict(set)
        devices_of: dict[str, set[str]] = collections.defaultdict(set)
        for e in events:
            h = hdr(e)
            per_device[h["x-es-device-id"]].add(h["x-es-user-id"])
            per_block[block(e["client_ip"])].add(h["x-es-user-id"])
            devices_of[h["x-es-user-id"]].add(h["x-es-device-id"])
        assert statistics.mean(len(a) for a in per_device.values()) >= 15
        assert statistics.mean(len(a) for a in per_block.values()) >= 8
        assert sum(len(d) >= 2 for d in devices_of.values()) >= 0.3 * len(devices_of)  # accounts hop
        classes = collections.Counter(profile.endpoint_class(e["path"]) for e in events)
        assert classes["browse"] == 0 and classes["action"] >= 0.8 * len(events)
        assert all(e["network"]["hosting"] is (evasion == 0) for e in events)


# ---------------------------------------------------------------- replay


def test_replay_resends_captured_signatures_from_other_networks(traffic, profile):
    sig = profile.signing.header
    for evasion in EVASION_LEVELS:
        events = traffic("replay", evasion)
        captured = {hdr(e)[sig]: e for e in events if not e["label"]["malicious"]}
        replays = attack_only(events)
        assert len(replays) >= 0.8 * len(events) and captured
        for r in replays:
            h = {n.lower(): v for n, v in r["headers"]}
            orig = captured[h[sig]]  # the same signature as a captured genuine request
            assert r["ts"] > orig["ts"] and r["client_ip"] != orig["client_ip"]
            assert r["network"]["asn"] != orig["network"]["asn"]
            assert (r["method"], r["path"], r.get("query"), r.get("body_sha256")) == \
                   (orig["method"], orig["path"], orig.get("query"), orig.get("body_sha256"))
            assert h["x-es-timestamp"] == hdr(orig)["x-es-timestamp"]
            if evasion == 2:  # inside the signature's skew and the token's lifetime
                assert r["ts"] - orig["ts"] <= profile.signing.max_skew_s
                assert r["attestation"]["token_age_s"] <= profile.attestation.max_token_age_s
        assert len({hdr(r)[sig] for r in replays if sig in hdr(r)}) < len(replays)  # each one several times


# ---------------------------------------------------------------- low_and_slow


def test_low_and_slow_stays_slow_per_account_on_one_cloned_image(traffic):
    for evasion in EVASION_LEVELS:
        events = traffic("low_and_slow", evasion)
        h = [lh(e) for e in events]
        per_account: dict[str, list[float]] = collections.defaultdict(list)
        for e, hh in zip(events, h):
            per_account[hh["x-es-user-id"]].append(e["ts"])
        for ts in per_account.values():  # one short session (at most 6 calls) per half hour or more
            assert all(sum(1 for u in ts if t <= u < t + 3600) <= 12 for t in ts)
        assert len(per_account) >= 100
        assert len({hh["x-es-device-id"] for hh in h}) == len(per_account)
        assert len({hh["user-agent"] for hh in h}) == 1  # one device tuple, build and locale
        ids = sorted(int(a) for a in per_account)
        assert ids[-1] - ids[0] <= 100_000  # registered in one batch: neighbouring ids
        sessions = {hh["x-es-session-id"]: e["client_ip"] for e, hh in zip(events, h)}
        assert len(set(sessions.values())) >= 0.9 * len(sessions)  # a fresh address per session


# ---------------------------------------------------------------- fingerprint_spoofing


def test_fingerprint_spoofing_has_the_apps_tls_but_not_its_headers_or_http2(traffic, profile):
    app_ja4 = {r.value for r in profile.tls.ja4}
    rank = {n: i for i, n in enumerate(profile.headers.order)}
    for evasion in EVASION_LEVELS:
        flaws = collections.Counter()
        for e in traffic("fingerprint_spoofing", evasion):
            assert e["tls"]["ja4"] in app_ja4 and e["http_version"] == "2"
            names = [n for n, _ in e["headers"]]
            order_wrong = [rank[n] for n in names] != sorted(rank[n] for n in names)
            h2_wrong = e["h2"]["fingerprint"] not in profile.transport.h2_fingerprints
            assert order_wrong or h2_wrong
            if evasion == 2:
                assert order_wrong != h2_wrong  # exactly one flaw left
            flaws[(order_wrong, h2_wrong)] += 1
        if evasion == 2:
            assert len(flaws) == 2


# ---------------------------------------------------------------- mixed


def test_mixed_is_a_realistic_day_with_every_attack_interleaved(profile, detection):
    events = list(simulate("mixed", profile, 20_000, seed=2, catalogue=detection.catalogue))
    assert len(events) == 20_000
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)
    scenarios = collections.Counter(e["label"]["scenario"] for e in events)
    assert set(scenarios) == {"genuine", *ATTACKS}
    share = sum(e["label"]["malicious"] for e in events) / len(events)
    assert 0.005 <= share <= 0.012
