"""Genuine traffic with attacks interleaved in event time (the `mixed` scenario)."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

from detector.devices import DeviceCatalogue
from detector.profile import ClientProfile
from detector.simulate.attacks import ATTACKS, _call
from detector.simulate.kit import EVASION_LEVELS
from detector.simulate.scenarios.genuine import genuine
from detector.simulate.wire import DEFAULT_START_TS


def mixed(profile: ClientProfile, count: int, seed: int, start_ts: float = DEFAULT_START_TS,
          attack_share: float = 0.05, rate: float | None = None, *,
          catalogue: DeviceCatalogue | None = None, attacks: Sequence[str] = ("private_api_library",),
          evasion: int | None = 0) -> list[dict[str, Any]]:
    """Genuine traffic with attacks interleaved in event time: `attack_share` of the
    requests, split evenly between `attacks`, each spread over the genuine traffic's
    span. `evasion` None draws each attack's level from the seed."""
    n_attack = int(count * attack_share)
    events = list(genuine(profile, count - n_attack, seed, start_ts, rate=rate, catalogue=catalogue))
    if n_attack and attacks:
        span = (events[-1]["ts"] - start_ts) if events else 60.0
        rng = random.Random(f"mixed:{seed}")
        for k, name in enumerate(attacks):
            n = n_attack // len(attacks) + (1 if k < n_attack % len(attacks) else 0)
            if n == 0:
                continue
            level = rng.choice(EVASION_LEVELS) if evasion is None else evasion
            offset = rng.uniform(0, 0.2 * span) if len(attacks) > 1 else 0.0
            arate = n / max(span - offset, 1.0)
            events.extend(_call(ATTACKS[name], profile, n, seed, start_ts + offset, arate, catalogue, level))
    events.sort(key=lambda e: e["ts"])
    return events


def realistic_day(profile: ClientProfile, count: int, seed: int, start_ts: float = DEFAULT_START_TS,
                  evasion: int | None = None, rate: float | None = None, *,
                  catalogue: DeviceCatalogue | None = None) -> Iterator[dict[str, Any]]:
    """The `mixed` scenario: about 99% genuine traffic with every attack interleaved,
    each at an evasion level drawn from the seed (or the one given)."""
    yield from mixed(profile, count, seed, start_ts, attack_share=0.01, rate=rate, catalogue=catalogue,
                     attacks=tuple(ATTACKS), evasion=evasion)
