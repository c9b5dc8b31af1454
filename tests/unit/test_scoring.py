from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from detector.model import Signal
from detector.scoring import ScoringPolicy

policy = ScoringPolicy(weights={"a.x": 0.5, "b.y": 0.6}, suspicious=0.5, malicious=0.8)


def test_noisy_or_combination_and_levels():
    assert policy.score([]) == 0.0 and policy.level(0.0) == "clean"
    assert policy.score([Signal("a.x", 0.5, "d")]) == 0.5
    s = policy.score([Signal("a.x", 0.5, "d"), Signal("b.y", 0.6, "d")])
    assert s == pytest.approx(0.8) and policy.level(s) == "malicious"
    assert policy.level(0.79) == "suspicious"


@given(st.lists(st.floats(0.001, 1.0), max_size=8), st.floats(0.001, 1.0))
def test_score_is_bounded_and_monotone_in_signals(ws, extra):
    sigs = [Signal("a.x", w, "d") for w in ws]
    before = policy.score(sigs)
    after = policy.score(sigs + [Signal("b.y", extra, "d")])
    assert 0 <= before <= after <= 1


def test_bad_thresholds_and_weights_are_refused():
    with pytest.raises(ValueError):
        ScoringPolicy(weights={}, suspicious=0.9, malicious=0.5)
    with pytest.raises(ValueError):
        ScoringPolicy(weights={"a.x": 1.5})
