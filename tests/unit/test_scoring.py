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


def test_a_code_counts_once_at_its_highest_weight_and_every_instance_is_kept():
    once = policy.score([Signal("a.x", 0.5, "device d1")])
    assert policy.score([Signal("a.x", 0.5, "device d1"), Signal("a.x", 0.5, "account a1")]) == once == 0.5
    # the highest weight of the code counts, whatever the order
    assert policy.score([Signal("a.x", 0.3, "x"), Signal("a.x", 0.5, "y"), Signal("b.y", 0.6, "z")]) == \
        policy.score([Signal("b.y", 0.6, "z"), Signal("a.x", 0.5, "y")])


def test_a_stateless_duplicate_counts_once_in_the_verdict(detection, profile):
    """An emulator-farm request carries device.emulator twice (two of its facts name
    an emulator): the verdict keeps both instances, and the score counts the code once."""
    from detector.decode import request_from_obj
    from detector.simulate import emulator_farm

    pipe = detection.pipeline()
    seen = 0
    for e in emulator_farm(profile, 60, seed=5):
        v, _ = pipe.assess(request_from_obj(e, detection.limits), None)
        codes = [s.code for s in v.signals]
        if len(codes) == len(set(codes)):
            continue
        seen += 1
        best: dict[str, float] = {}
        for s in v.signals:
            best[s.code] = max(best.get(s.code, 0.0), s.weight)
        keep = 1.0
        for w in best.values():
            keep *= 1.0 - w
        assert v.score == pytest.approx(round(1.0 - keep, 4))
    assert seen, "the scenario gives verdicts with a repeated code"


def test_a_behavioural_finding_on_the_device_and_its_account_counts_once(detection, profile):
    """behaviour.action_only_session (weight 0.6, "suspicious alone") flagged on the
    device and on its account: one piece of evidence, so the request is suspicious at
    0.6, not malicious at 0.84; both instances stay in the verdict."""
    from detector.behaviour.flags import Flag, FlagMap, FlagUpdate
    from detector.decode import request_from_obj
    from detector.simulate import genuine

    code = "behaviour.action_only_session"
    assert detection.scoring.weight_of(code) == 0.6
    pipe = detection.pipeline()
    r = request_from_obj(next(iter(genuine(profile, 1, seed=3))), detection.limits)
    clean, _ = pipe.assess(r, None)
    assert clean.verdict == "clean" and clean.score == 0.0
    flags = FlagMap(detection.scoring.weight_of)
    ents = dict(clean.entities)
    flags.apply([FlagUpdate("device", ents["device"], (Flag(code, "2 actions, no browsing", r.ts + 600),), r.ts),
                 FlagUpdate("account", ents["account"], (Flag(code, "2 actions, no browsing", r.ts + 600),), r.ts)])
    v, _ = pipe.assess(r, flags)
    assert [s.code for s in v.signals] == [code, code]
    assert v.score == 0.6 and v.verdict == "suspicious"
