"""Activity of one device or account: action velocity (likes, follows, comments per
minute), cadence regularity (a script's fixed delay makes inter-arrival times nearly
constant; people are bursty, coefficient of variation near 1), and action-only
sessions (a real app session starts up and browses before it acts)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from detector.behaviour.base import Finding
from detector.behaviour.records import BehaviourSettings, EntityRecord
from detector.behaviour.state import gap_cv, mean_gap, push, ring_count_since

ACTION_VELOCITY = "behaviour.action_velocity"
CADENCE_REGULAR = "behaviour.cadence_regular"
ACTION_ONLY_SESSION = "behaviour.action_only_session"


class Activity:
    """Velocity and cadence, for one entity type (device or account)."""

    state_key: ClassVar[str] = "Activity"  # stored state's key: never change it
    state_version: ClassVar[int] = 1
    codes: ClassVar[Mapping[str, str]] = {
        ACTION_VELOCITY: "more actions per minute than a person performs",
        CADENCE_REGULAR: "requests at near-constant intervals (a scripted delay)",
    }

    def __init__(self, etype: str):
        self.etype = etype

    def observe(self, st: dict[str, Any], r: EntityRecord, s: BehaviourSettings) -> list[Finding]:
        out = []
        if r.endpoint == "action":
            acts = st.setdefault("act", [])
            push(acts, r.ts, s.velocity_actions + 1)
            n = ring_count_since(acts, r.ts - s.velocity_window_s)
            if n > s.velocity_actions:
                out.append(Finding(ACTION_VELOCITY, f"{self.etype} {r.key} made {n} actions within "
                                             f"{s.velocity_window_s:.0f} s"))
        times = st.setdefault("t", [])
        push(times, r.ts, s.cadence_last_n + 1)
        if len(times) > s.cadence_last_n:
            cv = gap_cv(times)
            if cv is not None and cv < s.cadence_max_cv:
                out.append(Finding(CADENCE_REGULAR, f"last {s.cadence_last_n} requests of {self.etype} {r.key} every "
                                             f"{mean_gap(times) or 0:.2f} s (coefficient of variation {cv:.3f})"))
        return out


class ActionOnlySessions:
    """A session that acts (likes, follows, comments) without having fetched anything
    to act on: a person sees a post or a profile before liking or following it, so the
    app's session browses (feed, media info, profile) before its first action. Start-up
    calls do not count as browsing: a script makes a config call as cheaply as it makes
    the action. Kept per device and per account, for the last 16 sessions of each."""

    state_key: ClassVar[str] = "ActionOnlySessions"  # stored state's key: never change it
    state_version: ClassVar[int] = 1
    codes: ClassVar[Mapping[str, str]] = {
        ACTION_ONLY_SESSION: "a session of actions without the browsing calls a real app session makes first",
    }

    def __init__(self, etype: str = "device"):
        self.etype = etype

    def observe(self, st: dict[str, Any], r: EntityRecord, s: BehaviourSettings) -> list[Finding]:
        if r.endpoint is None:
            return []
        sessions = st.setdefault("sess", {})
        key = r.session or ""
        counts = sessions.pop(key, None) or [0, 0, 0]  # start-up, browse, actions before any browse
        sessions[key] = counts  # most recent last
        if len(sessions) > 16:
            del sessions[next(iter(sessions))]
        if r.endpoint == "startup":
            counts[0] += 1
        elif r.endpoint == "browse":
            counts[1] += 1
        elif counts[1] == 0:
            counts[2] += 1
            # an app that started up (counts[0]) shows content before it can act on it;
            # without a start-up (a notification's action button) allow a few actions
            if counts[2] >= s.action_only_min_actions or counts[0]:
                which = f"session {r.session}" if r.session else "requests without a session id"
                return [Finding(ACTION_ONLY_SESSION, f"{which} of {self.etype} {r.key}: {counts[2]} actions, "
                                              f"no browsing call before them ({counts[0]} start-up calls)")]
        return []
