"""The bench's event-time handling and its histogram bound, without a broker: a
translation moves `ts` and the signed timestamp by whole seconds, spacing kept, and
every request is judged as before; record timestamps are never before their requests;
the loop-stall bound."""

from __future__ import annotations

import copy

from agents.tools.bench import ending_now, histogram_bound, paced, record_ms
from detector.decode import request_from_obj
from detector.simulate import mixed


def _codes(detection, events):  # type: ignore[no-untyped-def]
    pipe = detection.pipeline()
    return [sorted(s.code for s in pipe.score_one(request_from_obj(e)).signals) for e in events]


def test_a_translation_ends_at_now_keeps_the_spacing_and_every_verdict(profile, detection) -> None:
    events = mixed(profile, 200, 3, catalogue=detection.catalogue)
    before = copy.deepcopy(events)
    now = events[-1]["ts"] + 86_400.7
    ending_now(events, profile, now)
    assert now - 1 < events[-1]["ts"] <= now
    delta = events[0]["ts"] - before[0]["ts"]
    assert delta == int(delta) and all(abs(e["ts"] - b["ts"] - delta) < 1e-6 for e, b in zip(events, before))
    assert _codes(detection, events) == _codes(detection, before)
    assert record_ms(events[:5]) >= max(e["ts"] for e in events[:5]) * 1000


def test_pacing_spreads_requests_at_the_rate_and_keeps_every_verdict(profile, detection) -> None:
    events = mixed(profile, 100, 4, catalogue=detection.catalogue)
    before = copy.deepcopy(events)
    paced(events, before[0]["ts"] + 3600.0, 50.0, profile)
    assert [e["request_id"] for e in events] == [b["request_id"] for b in before]
    assert all(abs(b["ts"] - a["ts"] - 0.02) < 2e-3 for a, b in zip(events, events[1:]))
    assert _codes(detection, events) == _codes(detection, before)


def test_histogram_bound_is_the_highest_bucket_that_gained() -> None:
    before = [(0.01, 5.0), (0.05, 6.0), (0.1, 6.0), (float("inf"), 7.0)]
    assert histogram_bound(before, [(0.01, 9.0), (0.05, 11.0), (0.1, 11.0), (float("inf"), 13.0)]) == float("inf")
    assert histogram_bound(before, [(0.01, 9.0), (0.05, 11.0), (0.1, 11.0), (float("inf"), 12.0)]) == 0.05
    assert histogram_bound(before, before) == 0.0
