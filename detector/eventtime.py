"""Event time that a client cannot hijack.

Windows, watermarks and flag expiry run on the requests' own `ts`, which the client
(or the edge in front of it) chooses. A request dated far ahead would move the
watermarks: every later genuine request would then be "late" and dropped from
state, and every flag would expire. So each event is judged against a reference
clock that the client does not control: in the stream, the Kafka record's own
timestamp (capped at the worker's clock plus the tolerance); offline, the time the
CLI passes in (`--reference-time`, the wall clock at start by default). The core
never reads a clock itself.

An event more than `max_future_s` ahead of the reference is *future*: it is scored
statelessly (its verdict as usual, with the flags already known at the reference),
yields no entity records, moves no watermark, window or flag, and is counted. An
event within the tolerance is applied, but the watermark it moves is capped at the
reference (`BehaviourEngine.observe(..., reference=)`), so it cannot make genuine
traffic late either. Time in the past is the lateness rule's job
(`behaviour.allowed_lateness_s`): those records are counted as late.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DEFAULT_MAX_FUTURE_S = 300.0


@dataclass(frozen=True, slots=True)
class EventTimeGuard:
    """Config `event_time`: `max_future_s`, how far (seconds) an event's `ts` may lie
    ahead of the reference clock and still update behaviour state."""

    max_future_s: float = DEFAULT_MAX_FUTURE_S

    def __post_init__(self) -> None:
        v = self.max_future_s
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"max_future_s must be a finite number of seconds >= 0, got {v!r}")
        object.__setattr__(self, "max_future_s", float(v))

    def is_future(self, ts: float, reference: float) -> bool:
        """True when `ts` is more than the tolerance ahead of `reference` (a NaN `ts`,
        which decode never lets through, counts as future: it must not reach state)."""
        return not ts <= reference + self.max_future_s

    def horizon(self, reference: float) -> float:
        """The latest event time that still updates state at this reference."""
        return reference + self.max_future_s


__all__ = ["DEFAULT_MAX_FUTURE_S", "EventTimeGuard"]
