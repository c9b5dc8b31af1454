"""The user-agent and signature checks against the example profile."""

from __future__ import annotations

import pytest

from detector.decode import request_from_obj
from detector.simulate import genuine, private_api_library


@pytest.fixture(scope="module")
def pipeline(detection):
    return detection.pipeline()


@pytest.fixture(scope="module")
def base(profile, detection):
    return next(genuine(profile, 1, seed=3, catalogue=detection.catalogue))


def codes(pipeline, obj) -> list[str]:
    return [s.code for s in pipeline.score_one(request_from_obj(obj)).signals]


def with_header(obj, name, value):
    """Replace a header's value in place (None removes it), keeping the order."""
    hs = []
    for n, v in obj["headers"]:
        if n.lower() == name.lower():
            if value is not None:
                hs.append([n, value])
        else:
            hs.append([n, v])
    return {**obj, "headers": hs}


def ua_of(obj):
    return next(v for n, v in obj["headers"] if n == "user-agent")


def test_genuine_request_has_no_signal(pipeline, base):
    assert codes(pipeline, base) == []


def test_missing_and_malformed_user_agents(pipeline, base):
    assert codes(pipeline, with_header(base, "user-agent", None))[:1] == ["ua.missing"]
    assert codes(pipeline, with_header(base, "user-agent", "python-requests/2.32.3"))[0] == "ua.malformed"
    # the app's token but not its grammar (release and SDK swapped into a free-text form)
    broken = ua_of(base).replace(" Android (", " Android/")
    assert codes(pipeline, with_header(base, "user-agent", broken))[0] == "ua.malformed"


def test_retired_version_is_flagged(pipeline, base, profile):
    ua = ua_of(base)
    v = profile.versions["311.0.0"]
    old = ua.split(" ", 2)
    retired = f"{old[0]} 311.0.0 {old[2].rsplit('; ', 1)[0]}; {min(v.codes)})"
    assert "ua.retired_version" in codes(pipeline, with_header(base, "user-agent", retired))


def test_unknown_version_older_than_the_table_is_flagged(pipeline, base):
    ua = ua_of(base)
    parts = ua.split(" ", 2)
    assert codes(pipeline, with_header(base, "user-agent", f"{parts[0]} 250.0.0 {parts[2]}")) == ["ua.unknown_version"]


def test_newer_version_gets_only_a_low_weight_signal(pipeline, base):
    ua = ua_of(base)
    parts = ua.split(" ", 2)
    v = pipeline.score_one(request_from_obj(with_header(base, "user-agent", f"{parts[0]} 999.0.0 {parts[2]}")))
    assert [s.code for s in v.signals] == ["ua.newer_version"]
    assert v.verdict == "clean" and v.signals[0].weight <= 0.1


def test_version_code_of_another_version_is_flagged(pipeline, base, profile):
    ua = ua_of(base)
    version = ua.split(" ")[1]
    other = next(c for v in profile.versions.values() if v.version != version for c in v.codes)
    forged = ua.rsplit("; ", 1)[0] + f"; {other})"
    assert codes(pipeline, with_header(base, "user-agent", forged)) == ["ua.version_code_mismatch"]


def test_broken_signature_is_flagged(pipeline, base):
    sig = next(v for n, v in base["headers"] if n == "x-es-signature")
    bad = sig[:-1] + ("0" if sig[-1] != "0" else "1")
    assert codes(pipeline, with_header(base, "x-es-signature", bad)) == ["signature.invalid"]


def test_tampered_path_breaks_the_signature(pipeline, base):
    assert codes(pipeline, {**base, "path": "/api/v1/friendships/1/follow"}) == ["signature.invalid"]


@pytest.mark.parametrize(
    "value, code",
    [(None, "signature.missing"), ("v2:whatever", "signature.malformed"), ("v1:stolen-key:" + "0" * 64, "signature.unknown_key")],
)
def test_missing_malformed_and_unknown_key_signatures(pipeline, base, value, code):
    assert code in codes(pipeline, with_header(base, "x-es-signature", value))


def test_signing_timestamp_outside_the_skew_is_flagged(pipeline, base):
    shifted = {**base, "ts": base["ts"] + 3600}
    assert "signature.timestamp_skew" in codes(pipeline, shifted)


def test_private_api_library_is_malicious(pipeline, profile):
    reqs = [request_from_obj(e) for e in private_api_library(profile, 50, seed=1)]
    verdicts = pipeline.score_batch(reqs)
    assert all(v.verdict == "malicious" for v in verdicts)
    assert {"ua.retired_version", "signature.retired_key"} <= {s.code for s in verdicts[0].signals}


def test_genuine_traffic_scores_clean(pipeline, profile, detection):
    reqs = [request_from_obj(e) for e in genuine(profile, 3000, seed=11, catalogue=detection.catalogue)]
    verdicts = pipeline.score_batch(reqs)
    flagged = [v for v in verdicts if v.verdict != "clean"]
    assert len(flagged) <= len(verdicts) * 0.001, flagged[:3]
