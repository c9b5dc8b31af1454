"""The attack scenarios by name, which of them per-request checks must catch, and how
a scenario is called with the options it takes."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any

from detector.devices import DeviceCatalogue
from detector.profile import ClientProfile
from detector.simulate.scenarios.bot_network import bot_network
from detector.simulate.scenarios.emulator_farm import emulator_farm
from detector.simulate.scenarios.fingerprint_spoofing import fingerprint_spoofing
from detector.simulate.scenarios.low_and_slow import low_and_slow
from detector.simulate.scenarios.private_api_library import private_api_library
from detector.simulate.scenarios.replay import replay
from detector.simulate.scenarios.synthetic_devices import synthetic_devices

# Scenarios

ATTACKS: dict[str, Callable[..., Iterator[dict[str, Any]]]] = {
    "private_api_library": private_api_library,
    "emulator_farm": emulator_farm,
    "synthetic_devices": synthetic_devices,
    "bot_network": bot_network,
    "replay": replay,
    "low_and_slow": low_and_slow,
    "fingerprint_spoofing": fingerprint_spoofing,
}

# Attacks that per-request (stateless) checks must catch at every evasion level, and
# those that at their strongest look like the app per request, so that only behaviour,
# replay or population state can catch them (docs/evaluation.md).
STATELESS_DETECTABLE = ("private_api_library", "emulator_farm", "synthetic_devices", "fingerprint_spoofing")
NEEDS_STATE = ("bot_network", "replay", "low_and_slow")


def _call(gen: Callable[..., Iterator[dict[str, Any]]], profile: ClientProfile, count: int, seed: int,
          start_ts: float, rate: float | None, catalogue: DeviceCatalogue | None,
          evasion: int | None) -> Iterator[dict[str, Any]]:
    params = inspect.signature(gen).parameters
    kwargs: dict[str, Any] = {"rate": rate}
    if "catalogue" in params:
        kwargs["catalogue"] = catalogue
    if evasion is not None and "evasion" in params:
        kwargs["evasion"] = evasion
    return gen(profile, count, seed, start_ts, **kwargs)
