"""Activity of one device or account: action velocity (likes, follows, comments per
minute), cadence regularity (a script's fixed delay makes inter-arrival times nearly
constant; people are bursty, coefficient of variation near 1), and action-only
sessions (a real app session starts up and browses before it acts)."""

from __future__ import annotations

from typing import Any, ClassVar

from detector.behaviour.records import BehaviourSettings, EntityRecord
from detector.behaviour.state import gap_cv, mean_gap, push, ring_count_since

ACTION_VELOCITY = "behaviour.action_velocity"
CADENCE_REGULAR = "behaviour.cadence_regular"
ACTION_ONLY_SESSION = "behaviour.action_only_session"


class Activity:
    """Velocity and cadence, for one entity type (device or account)."""

    codes: ClassVar[dict[str, str]] = {
        ACTION_VELOCITY: "more actions per minute than a person performs",
        CADENCE_REGULAR: "requests at near-constant intervals (a scripted delay)",
    }

    def __init__(self, etype: str):
        self.etype = etype

    def observe(self, st: dict[str, Any], r: EntityRecord, s: BehaviourSettings) -> list[tuple[str, str]]:
        out = []
        if r.endpoint == "action":
            acts = st.setdefault("act", [])
            push(acts, r.ts, s.velocity_actions + 1)
            n = ring_count_since(acts, r.ts - s.velocity_window_s)
            if n > s.velocity_actions:
                out.append((ACTION_VELOCITY, f"{self.etype} {r.key} made {n} actions within "
                                             f"{s.velocity_window_s:.0f} s"))
        times = st.setdefault("t", [])
        push(times, r.ts, s.cadence_last_n + 1)
        if len(times) > s.cadence_last_n:
            cv = gap_cv(times)
            if cv is not None and cv < s.cadence_max_cv:
                out.append((CADENCE_REGULAR, f"last {s.cadence_last_n} requests of {self.etype} {r.key} every "
                                             f"{mean_gap(times) or 0:.2f} s (coefficient of variation {cv:.3f})"))
        return out


class ActionOnlySessions:
    etype: ClassVar[str] = "device"
    codes: ClassVar[dict[str, str]] = {
        ACTION_ONLY_SESSION: "a session of actions without the start-up and browsing calls a real app session makes",
    }

    def observe(self, st: dict[str, Any], r: EntityRecord, s: BehaviourSettings) -> list[tuple[str, str]]:
        if r.endpoint is None:
            return []
        sessions = st.setdefault("sess", {})
        key = r.session or ""
        counts = sessions.pop(key, None) or [0, 0, 0]
        sessions[key] = counts  # most recent last
        if len(sessions) > 16:
            del sessions[next(iter(sessions))]
        counts[{"startup": 0, "browse": 1}.get(r.endpoint, 2)] += 1
        if counts[2] >= s.action_only_min_actions and counts[0] == 0 and counts[1] == 0:
            which = f"session {r.session}" if r.session else "requests without a session id"
            return [(ACTION_ONLY_SESSION, f"{which} of device {r.key}: {counts[2]} actions, no start-up or "
                                          "browsing calls")]
        return []
