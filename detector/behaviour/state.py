"""Compact, event-time state primitives for the behaviour detectors, on plain dicts
and lists so a whole shard bucket serialises with one `orjson.dumps` for the changelog.

Everything is bounded: a member longer than `MEMBER_MAX_BYTES` is kept as a
fixed-size digest, and a last-seen map keeps at most `cap` members (the least
recently seen are dropped first), so a distinct count saturates at `cap` instead of
growing; every threshold is far below the cap, so saturation never hides a
detection. A time ring keeps the last `n` times. Members older than a window are
expired on access. Time is always the events' own `ts`, never the clock.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

MEMBER_MAX_BYTES = 64


def _plain(value: str) -> bool:
    """Printable ASCII that JSON writes as is (no quote, backslash or control
    character to escape): UUIDs, numeric ids, IPs, country codes."""
    return value.isascii() and value.isprintable() and '"' not in value and "\\" not in value


def member_of(value: str) -> str:
    """How a distinct set holds `value`: itself when it is plain (`_plain`) and at most
    `MEMBER_MAX_BYTES` long, else a fixed-size digest (`~` and 24 hex digits of its
    SHA-256, 96 bits): a set only counts its members, so a hostile 8 KB id (or one
    full of characters JSON escapes six-fold) costs what a UUID costs, and a set of
    `cap` members serialises to at most about cap * 90 bytes."""
    if len(value) <= MEMBER_MAX_BYTES and _plain(value):
        return value
    return "~" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def touch(seen: dict[str, float], member: str, ts: float, cap: int) -> bool:
    """Record `member` (bounded: `member_of`) at `ts`; returns True when it was not
    in the map."""
    member = member_of(member)
    prev = seen.pop(member, None)  # re-insert: dict order is recency order
    seen[member] = ts if prev is None or ts > prev else prev
    if len(seen) > cap:
        del seen[next(iter(seen))]
    return prev is None


def count_since(seen: dict[str, float], since: float) -> int:
    return sum(1 for t in seen.values() if t >= since)


def expire(seen: dict[str, float], before: float) -> None:
    for m in [m for m, t in seen.items() if t < before]:
        del seen[m]


def push(ring: list[float], ts: float, n: int) -> None:
    ring.append(ts)
    if len(ring) > n:
        del ring[0]


def ring_count_since(ring: list[float], since: float) -> int:
    return sum(1 for t in ring if t >= since)


def gap_cv(ring: list[float]) -> float | None:
    """Coefficient of variation of the gaps between consecutive times (sorted, so a
    late event does not create a negative gap)."""
    ts = sorted(ring)
    gaps = [b - a for a, b in zip(ts, ts[1:])]
    if len(gaps) < 2:
        return None
    mean = sum(gaps) / len(gaps)
    if mean <= 0:
        return 0.0
    var = sum((g - mean) ** 2 for g in gaps) / len(gaps)
    return math.sqrt(var) / mean


def mean_gap(ring: list[float]) -> float | None:
    ts = sorted(ring)
    return (ts[-1] - ts[0]) / (len(ts) - 1) if len(ts) >= 2 else None


def window_start(ts: float, size: float) -> float:
    return math.floor(ts / size) * size


def sub(state: dict[str, Any], name: str, factory: type) -> Any:
    """A detector's own part of an entity's state, created on first use."""
    v = state.get(name)
    if v is None:
        v = state[name] = factory()
    return v
