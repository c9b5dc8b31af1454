"""Handsets for simulated users: Android releases per API level, the device
catalogue's models (or a small built-in list) and handsets drawn from their facts."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from detector.devices import DeviceCatalogue, ModelFacts


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """One handset as the user agent reports it (Build.* values and DisplayMetrics)."""

    manufacturer: str
    model: str
    device: str
    hardware: str
    dpi: int
    width: int
    height: int
    sdk_int: int
    release: str
    weight: float = 1.0


def ua_string(profile_app: str, version: str, code: int, d: DeviceSpec, locale: str) -> str:
    return (
        f"{profile_app} {version} Android ({d.sdk_int}/{d.release}; {d.dpi}dpi; {d.width}x{d.height}; "
        f"{d.manufacturer}; {d.model}; {d.device}; {d.hardware}; {locale}; {code})"
    )


# --------------------------------------------------------------------------------------
# Android facts

# Build.VERSION.RELEASE as devices report it per API level (developer.android.com,
# "Platform codenames, versions, API levels"; 8.x reported three parts, 9+ one).
# Agrees with config/devices/android_releases.yaml, which holds the accepted prefixes.
ANDROID_RELEASE: Mapping[int, str] = {
    21: "5.0.2", 22: "5.1.1", 23: "6.0.1", 24: "7.0", 25: "7.1.2", 26: "8.0.0", 27: "8.1.0",
    28: "9", 29: "10", 30: "11", 31: "12", 32: "12", 33: "13", 34: "14", 35: "15", 36: "16",
}
NEWEST_SDK = max(ANDROID_RELEASE)

# OS upgrades a model gets after launch when the catalogue leaves `sdk_max` out (still
# supported): Google and Samsung promise more than most (an estimate, and an upper
# bound only where the catalogue says nothing).
_UPGRADES = {"google": 5, "samsung": 4, "oneplus": 3}
_DEFAULT_UPGRADES = 2

# DisplayMetrics density values devices report (DENSITY_* constants and common OEM
# values), for models whose catalogue entry lists no dpi.
_DENSITIES = (240, 260, 280, 300, 320, 340, 360, 380, 400, 420, 440, 450, 460, 480, 500, 520, 560, 600, 640)

# Build.MANUFACTURER for catalogue entries that name only the retail brand.
_MANUFACTURER_OF_BRAND = {"tecno": "TECNO", "infinix": "INFINIX", "itel": "ITEL", "nokia": "HMD Global",
                          "redmi": "Xiaomi", "poco": "Xiaomi", "lenovo": "LENOVO"}


def _facts(manufacturer: str, model: str, device: str, hardware: str, dpi: tuple[int, ...], res: tuple[int, int],
           sdk_min: int, sdk_max: int | None, popularity: float) -> ModelFacts:
    return ModelFacts(model=model, manufacturer=manufacturer, brand=None, name=None, devices=(device,),
                      hardware=(hardware,), soc=None, soc_vendor=None, dpi=dpi, dpi_exhaustive=False,
                      resolutions=(res,), sdk_min=sdk_min, sdk_max=sdk_max, abis=(), arm_only=True,
                      popularity=popularity, source="copy of config/devices/models.yaml")


# A small population for when no device catalogue is given: copies of popular entries
# of config/devices/models.yaml (the same facts, so they pass its checks).
BUILTIN_MODELS: tuple[ModelFacts, ...] = (
    _facts("samsung", "SM-A125F", "a12", "mt6765", (280, 300, 320), (720, 1600), 29, None, 2.2),
    _facts("samsung", "SM-A135F", "a13", "exynos850", (420, 450, 480), (1080, 2408), 31, None, 2.0),
    _facts("samsung", "SM-A546B", "a54x", "s5e8835", (420, 450, 480), (1080, 2340), 33, None, 1.6),
    _facts("samsung", "SM-S911B", "dm1q", "qcom", (420, 450, 480), (1080, 2340), 33, None, 0.8),
    _facts("Xiaomi", "M2006C3LG", "dandelion", "mt6762", (320,), (720, 1600), 29, None, 2.0),
    _facts("Xiaomi", "2201117TG", "spes", "qcom", (440,), (1080, 2400), 30, None, 1.5),
    _facts("Xiaomi", "Redmi Note 8", "ginkgo", "qcom", (440,), (1080, 2340), 28, 30, 1.6),
    _facts("Google", "Pixel 7", "panther", "panther", (356, 420, 460, 500, 540), (1080, 2400), 33, None, 0.35),
    _facts("Google", "Pixel 8", "shiba", "shiba", (356, 420, 460, 500, 540), (1080, 2400), 34, None, 0.35),
    _facts("OPPO", "CPH1931", "OP4B79L1", "qcom", (320,), (720, 1600), 28, 30, 0.5),
    _facts("realme", "RMX2020", "RMX2020", "mt6768", (320,), (720, 1600), 29, None, 0.5),
    _facts("vivo", "V2027", "2027", "qcom", (320,), (720, 1600), 29, None, 0.5),
    _facts("OnePlus", "EB2103", "OnePlusNordCE", "qcom", (420, 480), (1080, 2400), 30, 33, 0.2),
)


@dataclass(frozen=True, slots=True)
class _Model:
    """A catalogue model the simulator can draw handsets of (all needed facts known)."""

    facts: ModelFacts
    manufacturer: str
    hardware: tuple[str, ...]
    sdk_min: int
    sdk_max: int
    screens: tuple[tuple[int, int, tuple[int, ...], int], ...]  # (width, height, dpi choices, default dpi)


def _dp_range(width: int, height: int) -> tuple[float, float]:
    # Phones report 320..480 dp of width; squarish inner screens of foldables 500..800.
    return (500.0, 800.0) if height < 1.45 * width else (320.0, 480.0)


def _screens(facts: ModelFacts) -> tuple[tuple[int, int, tuple[int, ...], int], ...]:
    out = []
    for w, h in facts.resolutions:
        lo, hi = _dp_range(w, h)
        listed = facts.dpi or _DENSITIES
        fits = tuple(d for d in listed if lo <= w * 160 / d <= hi)
        if not fits:
            continue
        # The factory default is the density closest to the typical 400 dp (phones) or
        # 600 dp (inner screens) of width; the others come from display-size settings.
        target = 400.0 if lo < 500 else 620.0
        default = min(fits, key=lambda d: (abs(w * 160 / d - target), d))
        choices = fits if facts.dpi else (default,)
        out.append((w, h, choices, default))
    return tuple(out)


def _prepare(facts: ModelFacts) -> _Model | None:
    """The handset facts of a catalogue model, or None when one the user agent needs is
    unknown and cannot be inferred (a made-up codename or SoC would be a lie)."""
    manufacturer = facts.manufacturer or _MANUFACTURER_OF_BRAND.get((facts.brand or "").lower()) or facts.brand
    if not manufacturer or not facts.devices or not facts.resolutions:
        return None
    hardware = facts.hardware
    if not hardware:
        if facts.soc_vendor == "qualcomm":
            hardware = ("qcom",)  # every current Snapdragon phone reports Build.HARDWARE "qcom"
        elif manufacturer == "Google":
            hardware = facts.devices[:1]  # Pixels report their codename
        else:
            return None
    sdk_min = facts.sdk_min or 28
    sdk_max = facts.sdk_max or min(NEWEST_SDK, sdk_min + _UPGRADES.get(manufacturer.lower(), _DEFAULT_UPGRADES))
    sdk_max = min(sdk_max, NEWEST_SDK)
    if sdk_min > sdk_max or sdk_min not in ANDROID_RELEASE:
        return None
    screens = _screens(facts)
    if not screens:
        return None
    return _Model(facts, manufacturer, hardware, sdk_min, sdk_max, screens)


def _models(catalogue: DeviceCatalogue | None) -> tuple[list[_Model], list[float]]:
    pool = catalogue.models_for_simulation() if catalogue is not None else [(f, f.popularity) for f in BUILTIN_MODELS]
    models, weights = [], []
    for facts, popularity in pool:
        m = _prepare(facts)
        if m is not None:
            models.append(m)
            weights.append(popularity)
    if not models:
        raise ValueError("no model of the device catalogue has the facts a simulated handset needs")
    return models, weights


def _draw_handset(rng: random.Random, m: _Model) -> DeviceSpec:
    # Multi-resolution panels (Samsung flagships) ship at FHD+ and most users keep it;
    # a foldable's app runs on the cover screen more often than on the inner one.
    if len(m.screens) == 1:
        w, h, choices, default = m.screens[0]
    else:
        weights = [4.0 if 1000 <= s[0] <= 1100 or _is_cover_screen(s) else 1.0 for s in m.screens]
        w, h, choices, default = rng.choices(m.screens, weights=weights)[0]
    dpi = default if len(choices) == 1 or rng.random() < 0.8 else rng.choice(choices)
    # DisplayMetrics: the full panel (edge-to-edge, gesture navigation) or the panel
    # minus the 48 dp navigation bar; never taller than the panel.
    r = rng.random()
    if r < 0.55:
        height = h
    elif r < 0.85:
        height = h - round(48 * dpi / 160)
    else:
        height = h - round(24 * dpi / 160)
    span = m.sdk_max - m.sdk_min
    # Most users run the newest release their model got; some never update.
    sdk = m.sdk_max - min(span, int(rng.expovariate(1.3)))
    return DeviceSpec(manufacturer=m.manufacturer, model=m.facts.model, device=rng.choice(m.facts.devices),
                      hardware=rng.choice(m.hardware), dpi=dpi, width=w, height=height, sdk_int=sdk,
                      release=ANDROID_RELEASE[sdk])


def _is_cover_screen(screen: tuple[int, int, Any, Any]) -> bool:
    """A foldable's cover screen: tall and narrow."""
    return screen[1] >= 2.2 * screen[0]
