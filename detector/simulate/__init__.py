"""Labelled traffic for demos, tests and evaluation: a genuine population of the app's
users built from the client profile and the device catalogue, and attack scenarios that
imitate the app the way real tools do (one module per scenario in `scenarios/`), and the
evaluation that scores them (`evaluate.py`). Never imported by the detection path.

Deterministic for a seed: every random draw comes from one `random.Random` per
scenario, nothing iterates an unordered set, and time is the events' own (`start_ts`
plus simulated gaps), never the clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from detector.devices import DeviceCatalogue
from detector.profile import ClientProfile
from detector.simulate.attacks import ATTACKS, NEEDS_STATE, STATELESS_DETECTABLE, _call
from detector.simulate.handsets import ANDROID_RELEASE, BUILTIN_MODELS, DeviceSpec, ua_string
from detector.simulate.kit import EVASION_LEVELS, _check_evasion
from detector.simulate.places import COUNTRIES
from detector.simulate.scenarios.bot_network import bot_network
from detector.simulate.scenarios.emulator_farm import emulator_farm
from detector.simulate.scenarios.fingerprint_spoofing import fingerprint_spoofing
from detector.simulate.scenarios.genuine import genuine, genuine_request
from detector.simulate.scenarios.low_and_slow import low_and_slow
from detector.simulate.scenarios.mixed import mixed, realistic_day
from detector.simulate.scenarios.private_api_library import LIBRARY_DEFAULT_DEVICE, private_api_library
from detector.simulate.scenarios.replay import replay, replay_once
from detector.simulate.scenarios.synthetic_devices import synthetic_devices
from detector.simulate.wire import (
    DEFAULT_START_TS,
    OKHTTP_H2,
    OKHTTP_JA4,
    PYTHON_REQUESTS_JA4,
    app_token,
    device_checksum,
    resign,
)

SCENARIOS: dict[str, Callable[..., Iterator[dict[str, Any]]]] = {
    "genuine": genuine,
    **ATTACKS,
    "mixed": realistic_day,
}


def simulate(scenario: str, profile: ClientProfile, count: int, seed: int, start_ts: float = DEFAULT_START_TS,
             rate: float | None = None, *, catalogue: DeviceCatalogue | None = None,
             evasion: int | None = None) -> Iterator[dict[str, Any]]:
    """`count` labelled requests of a scenario (SCENARIOS). `evasion`: the attack's
    level (0..2; default each scenario's own, 0 for the attacks); ignored by genuine."""
    try:
        gen = SCENARIOS[scenario]
    except KeyError:
        raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}") from None
    if evasion is not None:
        _check_evasion(evasion)
    return _call(gen, profile, count, seed, start_ts, rate, catalogue, evasion)


__all__ = [
    "ANDROID_RELEASE", "ATTACKS", "BUILTIN_MODELS", "COUNTRIES", "DEFAULT_START_TS", "DeviceSpec", "EVASION_LEVELS",
    "LIBRARY_DEFAULT_DEVICE", "NEEDS_STATE", "OKHTTP_H2", "OKHTTP_JA4", "PYTHON_REQUESTS_JA4", "SCENARIOS",
    "STATELESS_DETECTABLE", "app_token", "bot_network", "device_checksum", "emulator_farm", "fingerprint_spoofing",
    "genuine", "genuine_request", "low_and_slow", "mixed", "private_api_library", "realistic_day", "replay",
    "replay_once", "resign", "simulate", "synthetic_devices", "ua_string",
]
