"""What the device catalogue knows, as values: the facts per model, the emulator
markers, the SoC vendors with their hardware names, the plausibility limits computed per
model at load; and CatalogueError, which names the file, line and entry at fault."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from detector.cache import bounded_cache


class CatalogueError(ValueError):
    """A catalogue file is missing or wrong. ``str()`` names the file (and line), the entry
    (index and model / marker id) and what is wrong."""

    def __init__(self, file: str | Path, where: str, problem: str, line: int | None = None):
        self.file = str(file)
        self.where = where
        self.problem = problem
        self.line = line
        loc = self.file + (f":{line}" if line is not None else "")
        super().__init__(f"{loc}: {where or '<root>'}: {problem}")


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """What the catalogue knows about one ``Build.MODEL``. Empty tuples / ``None`` mean
    unknown. ``resolutions`` are portrait ``(width, height)`` panel sizes."""

    model: str
    manufacturer: str | None
    brand: str | None
    name: str | None
    devices: tuple[str, ...]
    hardware: tuple[str, ...]
    soc: str | None
    soc_vendor: str | None
    dpi: tuple[int, ...]
    dpi_exhaustive: bool
    resolutions: tuple[tuple[int, int], ...]
    sdk_min: int | None
    sdk_max: int | None
    abis: tuple[str, ...]
    arm_only: bool
    popularity: float
    source: str
    note: str | None = None

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(sorted({w for w, _ in self.resolutions}))


@dataclass(frozen=True, slots=True)
class EmulatorMarker:
    """One emulator / virtual-device marker from ``emulators.yaml``."""

    id: str
    family: str
    field: str
    match: str
    values: tuple[str, ...]
    strength: str
    citation: str
    case_sensitive: bool = False
    unless: tuple[tuple[str, tuple[str, ...]], ...] = ()
    requires_arm_only_model: bool = False
    suppress_if_model_fits: bool = False

    def explain(self, observed: str) -> str:
        """One sentence naming the evidence, for a signal's ``detail``."""
        how = {"exact": "is", "prefix": "starts with", "contains": "contains", "regex": "matches"}[self.match]
        vals = ", ".join(repr(v) for v in self.values)
        return (f"{self.field} {observed!r} {how} {vals}: a {self.family.replace('_', ' ')} marker "
                f"({self.strength}).")


@dataclass(frozen=True, slots=True)
class _Limits:
    """Per-model plausibility limits, precomputed at load time."""

    dpi_set: frozenset[int]
    dpi_lo: int | None
    dpi_hi: int | None
    max_height_by_width: Mapping[int, int]
    max_height: int | None
    vendors: frozenset[str]


# --------------------------------------------------------------------------------------
# SoC vendors


@dataclass(frozen=True, slots=True)
class _Vendor:
    name: str
    arch: str | None
    hardware: re.Pattern[str]
    soc_words: tuple[str, ...]


class _Vendors:
    def __init__(self, vendors: Sequence[_Vendor]):
        self._vendors = tuple(vendors)
        # keys come from requests: bounded by bytes (detector.cache), long ones not kept
        self.classify_hardware = bounded_cache(max_bytes=2 << 20, max_item_bytes=1024)(self._classify_hardware)

    def _classify_hardware(self, hardware: str) -> str | None:
        hw = hardware.strip().lower()
        for v in self._vendors:
            if v.hardware.match(hw):
                return v.name
        return None

    def classify_soc(self, soc: str) -> str | None:
        low = soc.lower()
        for v in self._vendors:
            if any(w.lower() in low for w in v.soc_words):
                return v.name
        return None

    def arch(self, name: str | None) -> str | None:
        for v in self._vendors:
            if v.name == name:
                return v.arch
        return None
