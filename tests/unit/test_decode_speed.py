"""The decoder's speed, checked without timing anything: valid traffic must take the
fast path (msgspec-typed conversion, ~3x cheaper than the reference validator after
orjson.loads) and never reach `request_from_obj`, which only runs for input the fast
path declines. Wall-clock numbers: see `detector bench --offline` (decode_us)."""

from __future__ import annotations

import orjson
import pytest

from detector.decode import DecodeLimits, decode_line, decode_message, fastpath, messages
from detector.simulate import mixed


@pytest.fixture
def reference_calls(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Counts calls of the reference validator (the decoder's slow path)."""
    calls: list[object] = []
    real = messages.request_from_obj

    def counting(obj, limits=DecodeLimits()):  # type: ignore[no-untyped-def]
        calls.append(obj)
        return real(obj, limits)

    monkeypatch.setattr(messages, "request_from_obj", counting)  # where the message forms look it up
    return calls


def test_valid_traffic_never_reaches_the_reference_validator(detection, profile, reference_calls):
    events = mixed(profile, 2000, 1, catalogue=detection.catalogue)
    limits = detection.limits
    lines = [orjson.dumps(e) for e in events]
    assert fastpath._build_fast_path(limits) is not fastpath._no_fast_path  # not disabled by a model change

    singles = [decode_message(line, limits) for line in lines]
    arrays = [decode_message(orjson.dumps(events[i:i + 200]), limits) for i in range(0, len(events), 200)]
    ndjson = [decode_message(b"\n".join(lines[i:i + 200]) + b"\n", limits) for i in range(0, len(lines), 200)]
    offline = [decode_line(line, limits) for line in lines]

    for d in singles + arrays + ndjson:
        assert not d.rejections
    assert sum(len(d.requests) for d in singles) == len(events)
    assert [r for d in arrays for r in d.requests] == [r for d in ndjson for r in d.requests] == offline
    assert [d.form for d in arrays[:1] + ndjson[:1]] == ["array", "ndjson"]
    assert reference_calls == []


def test_invalid_input_does_reach_the_reference_validator(reference_calls):
    """The control for the test above: the counter sees the slow path when it runs."""
    d = decode_message(orjson.dumps([{"request_id": "r-1"}, 7]))
    assert [r.reason for r in d.rejections] == ["missing required field 'ts'", "a ClientRequest must be a JSON object, got integer"]
    assert len(reference_calls) == 2
