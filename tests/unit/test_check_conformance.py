"""Written once, run for every registered check: deterministic, declares its codes,
every emitted code declared, weighted and documented, details are sentences, and no
signal on the profile's own genuine requests."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from detector.checks.base import RequestContext
from detector.decode import request_from_obj
from detector.pipeline import default_checks
from detector.simulate import genuine, private_api_library

DOCS = (Path(__file__).resolve().parents[2] / "docs" / "detections.md").read_text()
CHECKS = default_checks()


@pytest.fixture(scope="module")
def traffic(profile, detection):
    evs = list(genuine(profile, 300, seed=5, catalogue=detection.catalogue)) + list(private_api_library(profile, 100, seed=5))
    return [request_from_obj(e) for e in evs]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.name)
def test_codes_are_declared_weighted_and_documented(check, detection):
    assert check.codes
    for code in check.codes:
        assert re.fullmatch(r"[a-z0-9_]+\.[a-z0-9_]+", code) and code.startswith(check.name + ".")
        assert code in detection.scoring.weights, f"{code} has no weight in config"
        assert f"`{code}`" in DOCS, f"{code} is not documented in docs/detections.md"


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.name)
def test_check_is_deterministic_and_emits_only_declared_codes(check, detection, traffic):
    pipe = detection.pipeline()
    for r in traffic:
        runs = []
        for _ in range(2):
            ctx: RequestContext = pipe.derive(r)
            runs.append(list(check.check(r, ctx)))
        assert runs[0] == runs[1]
        for s in runs[0]:
            assert s.code in check.codes
            assert s.detail and s.detail[0].isalnum() and len(s.detail) < 300
            assert 0 < s.weight <= 1


# Genuine users do travel and use VPNs: the network family may fire on a few genuine
# requests (its weights keep them clean); every other family must stay silent.
EXPECTED_ON_GENUINE = {"network": 0.05}


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.name)
def test_no_signal_on_genuine_requests(check, detection, profile):
    pipe = detection.pipeline()
    fired = []
    for e in genuine(profile, 1000, seed=9, catalogue=detection.catalogue):
        r = request_from_obj(e)
        fired.extend(s.detail for s in check.check(r, pipe.derive(r)))
    assert len(fired) <= 1000 * EXPECTED_ON_GENUINE.get(check.name, 0.0), fired[:3]
