"""Device catalogue: what a real Android device of a given model can report.

Three data files under ``config/devices/`` (see the comments at the top of each):

* ``models.yaml``: facts per ``Build.MODEL`` (codenames, SoC and ``Build.HARDWARE``,
  densities, panel resolutions, Android API range, ABIs, a popularity estimate);
* ``emulators.yaml``: emulator / virtual-device markers with the field they match;
* ``play_devices.csv.gz``: Google Play's supported-devices list (brand, marketing name,
  ``Build.DEVICE``, ``Build.MODEL``), built by ``scripts/build_device_list.py``.

``DeviceCatalogue.load(dir)`` validates all of it and builds every index up front, so the
per-request methods are dictionary look-ups (plus one pre-compiled regular expression per
field for emulator markers). Pure: standard library and PyYAML, no network, no clock.

A missing fact means "unknown" and never produces a complaint: the catalogue is an
allowlist of the possible, and it only speaks where it knows.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detector.cache import bounded_cache
from detector.config import ConfigError, YamlDocument, unknown_key
from detector.config.schema import EmulatorsFile, MarkerEntry, ModelEntry, ModelsFile, Section, check

__all__ = [
    "PLAUSIBILITY_CODES",
    "CatalogueError",
    "DeviceCatalogue",
    "EmulatorMarker",
    "ModelFacts",
]

MODELS_FILE = "models.yaml"
EMULATORS_FILE = "emulators.yaml"
PLAY_FILE = "play_devices.csv.gz"

#: Reason codes `plausibility` can return, with their meaning.
PLAUSIBILITY_CODES: Mapping[str, str] = {
    "dpi_not_listed": "density not among the values the model reports (model's list is exhaustive)",
    "dpi_out_of_range": "density outside what the model can report at any display size / resolution",
    "width_not_listed": "portrait width matches none of the model's panels or resolution settings",
    "height_exceeds_panel": "portrait height larger than the model's panel",
    "hardware_vendor_mismatch": "Build.HARDWARE names another vendor's SoC than the model's",
    "sdk_below_min": "Android API level older than the one the model launched with",
    "sdk_above_max": "Android API level newer than the model's last upgrade",
}

_FIELDS = ("manufacturer", "brand", "model", "device", "hardware", "board", "product", "abi", "screen")
_MATCH_KINDS = ("exact", "prefix", "contains", "regex")
_STRENGTHS = ("strong", "medium", "weak")
_ABIS = {"arm64-v8a", "armeabi-v7a", "armeabi", "x86", "x86_64", "riscv64", "mips", "mips64"}
_ARM_ABIS = {"arm64-v8a", "armeabi-v7a", "armeabi"}
_RES = re.compile(r"^(\d{2,5})x(\d{2,5})$")
_SCREEN = re.compile(r"^(\d{2,4})dpi (\d{2,5})x(\d{2,5})$")
_MODEL_KEYS = frozenset(ModelEntry.model_fields)
_MARKER_KEYS = frozenset(MarkerEntry.model_fields)
_SCREEN_FIT = 0.12  # a panel minus system bars: reported height within 12% of the panel's
_CACHE_BYTES = 16 << 20  # per memoised check: its arguments and result
_CACHE_ITEM_BYTES = 4096  # a device tuple larger than this is checked every time


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
# YAML reading with positions


class _Doc:
    """A catalogue file read as every config file is (`detector.config.YamlDocument`),
    with errors as CatalogueError (file, entry, problem, line)."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self._doc = YamlDocument(path)
        except ConfigError as exc:
            raise CatalogueError(path, exc.key, exc.reason, exc.line) from None
        self.data = self._doc.data

    def check(self, model: type[Section], keys_only: bool = False) -> None:
        """Keys and value types against the file's schema (detector.config.schema)."""
        try:
            check(self._doc, model, keys_only=keys_only)
        except ConfigError as exc:
            raise CatalogueError(self.path, exc.key, exc.reason, exc.line) from None

    def line_of(self, path: Sequence[str | int]) -> int | None:
        return self._doc.line_of(path)

    def error(self, path: Sequence[str | int], where: str, problem: str) -> CatalogueError:
        return CatalogueError(self.path, where, problem, self.line_of(path))


def _where(section: str, index: int, label: str | None, key: str | None = None) -> str:
    w = f"{section}[{index}]"
    if label:
        w += f" ({label})"
    if key:
        w += f".{key}"
    return w


def _str(v: Any) -> bool:
    return isinstance(v, str) and v.strip() != ""


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(_str(x) for x in v)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


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


# --------------------------------------------------------------------------------------


class DeviceCatalogue:
    """Model facts, emulator markers and the Play supported-devices list, indexed."""

    def __init__(
        self,
        models: Mapping[str, ModelFacts],
        limits: Mapping[str, _Limits],
        markers: Sequence[EmulatorMarker],
        pairs: Mapping[str, Mapping[str, frozenset[str]]],
        known_brands: frozenset[str],
        aliases: Mapping[str, frozenset[str]],
        vendors: _Vendors,
        play_rows: int,
    ):
        self._models = dict(models)
        self._limits = dict(limits)
        self._markers = tuple(markers)
        self._pairs = pairs
        self._known_brands = known_brands
        self._aliases = aliases
        self._vendors = vendors
        self.play_rows = play_rows
        self._build_marker_index()
        # Real traffic repeats a small set of device tuples: memoise the two heavier checks
        # (bounded by bytes, so attacker-chosen values cannot grow memory: detector.cache).
        self._emulator_cached = bounded_cache(max_bytes=_CACHE_BYTES, max_item_bytes=_CACHE_ITEM_BYTES)(
            self._emulator_markers)
        self._plausibility_cached = bounded_cache(max_bytes=_CACHE_BYTES, max_item_bytes=_CACHE_ITEM_BYTES)(
            self._plausibility)

    # ---------------------------------------------------------------- loading

    @classmethod
    def load(cls, directory: Path | str) -> DeviceCatalogue:
        """Read and validate ``models.yaml``, ``emulators.yaml`` and (when present)
        ``play_devices.csv.gz`` from ``directory``. Raises ``CatalogueError``."""
        directory = Path(directory)
        mdoc, edoc = _Doc(directory / MODELS_FILE), _Doc(directory / EMULATORS_FILE)
        mdoc.check(ModelsFile, keys_only=True)
        edoc.check(EmulatorsFile, keys_only=True)
        aliases, vendors, factors, models = _parse_models(mdoc)
        markers = _parse_markers(edoc)

        limits = {m: _limits_for(f, factors, vendors) for m, f in models.items()}

        pairs: dict[str, dict[str, set[str]]] = {}
        known_brands: set[str] = set()
        play_rows = 0
        play = directory / PLAY_FILE
        if play.is_file():
            play_rows = _read_play(play, pairs, known_brands)
        for facts in models.values():  # hand-added models (newer than the Play snapshot)
            brands = {b.lower() for b in (facts.brand, facts.manufacturer) if b}
            known_brands |= brands
            for d in facts.devices:
                pairs.setdefault(facts.model, {}).setdefault(d.lower(), set()).update(brands)
        known_brands |= set(aliases)
        frozen_pairs = {m: {d: frozenset(b) for d, b in ds.items()} for m, ds in pairs.items()}
        return cls(models, limits, markers, frozen_pairs, frozenset(known_brands), aliases, vendors, play_rows)

    # ---------------------------------------------------------------- look-ups

    def __len__(self) -> int:
        return len(self._models)

    def __contains__(self, model: object) -> bool:
        return isinstance(model, str) and self.facts(model) is not None

    @property
    def markers(self) -> tuple[EmulatorMarker, ...]:
        return self._markers

    def all_models(self) -> tuple[ModelFacts, ...]:
        return tuple(self._models.values())

    def facts(self, model: str | None) -> ModelFacts | None:
        """Facts for a ``Build.MODEL`` (case-sensitive; surrounding whitespace ignored)."""
        if not model:
            return None
        found = self._models.get(model)
        if found is None:
            found = self._models.get(model.strip())
        return found

    def is_known_pair(self, manufacturer_or_brand: str | None, model: str | None, device: str | None) -> bool | None:
        """Does Google Play's supported-devices list (plus the hand-added models) know this
        (brand, model, device) combination?

        ``None``: the catalogue cannot tell (model unknown, missing input, or a
        manufacturer string it has never seen). ``False``: the model is known but never with
        this device, or the device is listed only under other brands than the one given.
        The brand compares case-insensitively, through ``manufacturer_aliases`` (Play lists
        the retail brand, e.g. Redmi or Nokia, where ``Build.MANUFACTURER`` says Xiaomi or
        HMD Global). Device codenames compare case-insensitively.
        """
        if not model or not device:
            return None
        devices = self._pairs.get(model)
        if devices is None:
            devices = self._pairs.get(model.strip())
            if devices is None:
                return None
        brands = devices.get(device.strip().lower())
        if brands is None:
            return False
        if not manufacturer_or_brand or not manufacturer_or_brand.strip():
            return None
        given = manufacturer_or_brand.strip().lower()
        candidates = self._aliases.get(given)
        if candidates is None:
            if given in brands:
                return True
        elif not candidates.isdisjoint(brands):
            return True
        if "" in brands or given not in self._known_brands:
            return None  # a row without brand, or a manufacturer string we cannot place
        return False

    # ---------------------------------------------------------------- emulators

    def _build_marker_index(self) -> None:
        exact: dict[str, dict[str, list[EmulatorMarker]]] = {}
        pattern: dict[str, list[tuple[re.Pattern[str], EmulatorMarker]]] = {}
        for mk in self._markers:
            if mk.match == "exact":
                bucket = exact.setdefault(mk.field, {})
                for v in mk.values:
                    bucket.setdefault(v.lower(), []).append(mk)
                continue
            parts = []
            for v in mk.values:
                if mk.match == "prefix":
                    parts.append("^" + re.escape(v))
                elif mk.match == "contains":
                    parts.append(re.escape(v))
                else:
                    parts.append(v)
            flags = 0 if mk.case_sensitive else re.IGNORECASE
            pattern.setdefault(mk.field, []).append((re.compile("|".join(f"(?:{p})" for p in parts), flags), mk))
        self._exact = {f: {k: tuple(v) for k, v in d.items()} for f, d in exact.items()}
        self._pattern = {f: tuple(v) for f, v in pattern.items()}
        # One combined expression per field, to reject clean values in a single search.
        self._quick = {
            f: re.compile("|".join(f"(?:{p.pattern})" if not (p.flags & re.IGNORECASE) else f"(?i:{p.pattern})"
                                   for p, _ in v))
            for f, v in self._pattern.items()
        }

    def emulator_markers(
        self,
        manufacturer: str | None,
        model: str | None,
        device: str | None,
        hardware: str | None,
        *,
        brand: str | None = None,
        board: str | None = None,
        product: str | None = None,
        abis: Iterable[str] | None = None,
        dpi: int | None = None,
        width: int | None = None,
        height: int | None = None,
    ) -> list[EmulatorMarker]:
        """Emulator markers matched by the reported values (``None`` = not reported).
        ``abis``: Build.SUPPORTED_ABIS; ``dpi``/``width``/``height``: the reported screen."""
        key_abis = tuple(abis) if abis is not None else None
        try:
            return list(self._emulator_cached(manufacturer, model, device, hardware, brand, board, product,
                                              key_abis, dpi, width, height))
        except TypeError:  # an unhashable argument: compute without the cache
            return list(self._emulator_markers(manufacturer, model, device, hardware, brand, board, product,
                                               key_abis, dpi, width, height))

    def _emulator_markers(self, manufacturer: str | None, model: str | None, device: str | None,
                          hardware: str | None, brand: str | None, board: str | None, product: str | None,
                          abis: tuple[str, ...] | None, dpi: int | None, width: int | None,
                          height: int | None) -> tuple[EmulatorMarker, ...]:
        values: dict[str, str] = {}
        for name, val in (("manufacturer", manufacturer), ("brand", brand), ("model", model), ("device", device),
                          ("hardware", hardware), ("board", board), ("product", product)):
            if val is not None and val.strip():
                values[name] = val.strip()
        found: list[EmulatorMarker] = []
        seen: set[str] = set()

        def consider(mk: EmulatorMarker) -> None:
            if mk.id in seen or self._suppressed(mk, values, model, dpi, width, height):
                return
            seen.add(mk.id)
            found.append(mk)

        for name, val in values.items():
            self._match_field(name, val, consider)
        if abis is not None:
            for abi in abis:
                if abi:
                    self._match_field("abi", abi.strip(), consider)
        if dpi and width and height:
            w, h = sorted((int(width), int(height)))
            self._match_field("screen", f"{int(dpi)}dpi {w}x{h}", consider)
        return tuple(found)

    def _match_field(self, name: str, val: str, consider: Any) -> None:
        bucket = self._exact.get(name)
        if bucket:
            for mk in bucket.get(val.lower(), ()):
                if not mk.case_sensitive or val in mk.values:
                    consider(mk)
        quick = self._quick.get(name)
        if quick is not None and quick.search(val):
            for pat, mk in self._pattern[name]:
                if pat.search(val):
                    consider(mk)

    def _suppressed(self, mk: EmulatorMarker, values: Mapping[str, str], model: str | None,
                    dpi: int | None, width: int | None, height: int | None) -> bool:
        for name, allowed in mk.unless:
            val = values.get(name)
            if val is not None and val.lower() in allowed:
                return True
        if mk.requires_arm_only_model:
            facts = self.facts(model) if model else None
            if facts is None or not facts.arm_only:
                return True
        if mk.suppress_if_model_fits and model:
            facts = self.facts(model)
            if facts is not None and width and height and self._screen_fits(facts, dpi, int(width), int(height)):
                return True
        return False

    def _screen_fits(self, facts: ModelFacts, dpi: int | None, width: int, height: int) -> bool:
        w, h = sorted((width, height))
        lim = self._limits[facts.model]
        panel_h = lim.max_height_by_width.get(w)
        if panel_h is None or h > panel_h or (panel_h - h) > _SCREEN_FIT * panel_h:
            return False
        return dpi is None or not self._dpi_problem(facts, lim, dpi)

    # ---------------------------------------------------------------- plausibility

    def plausibility(
        self,
        model: str | None,
        dpi: int | None,
        width: int | None,
        height: int | None,
        hardware: str | None,
        sdk_int: int | None,
    ) -> list[tuple[str, str]]:
        """Facts that are impossible for the claimed model, as ``(reason_code, sentence)``
        (codes in ``PLAUSIBILITY_CODES``). Unknown model or unknown facts: no complaint.
        A landscape report (width > height) is swapped to portrait first."""
        try:
            return list(self._plausibility_cached(model, dpi, width, height, hardware, sdk_int))
        except TypeError:  # an unhashable argument: compute without the cache
            return list(self._plausibility(model, dpi, width, height, hardware, sdk_int))

    def _plausibility(self, model: str | None, dpi: int | None, width: int | None, height: int | None,
                      hardware: str | None, sdk_int: int | None) -> tuple[tuple[str, str], ...]:
        facts = self.facts(model) if model else None
        if facts is None:
            return ()
        lim = self._limits[facts.model]
        out: list[tuple[str, str]] = []
        label = facts.model + (f" ({facts.name})" if facts.name and facts.name != facts.model else "")

        if dpi is not None and facts.dpi:
            problem = self._dpi_problem(facts, lim, int(dpi))
            if problem:
                out.append((problem, self._dpi_sentence(problem, label, facts, lim, int(dpi))))

        if width and height and facts.resolutions:
            w, h = sorted((int(width), int(height)))
            widths = ", ".join(str(x) for x in facts.widths)
            panel_h = lim.max_height_by_width.get(w)
            which = "tallest panel of that width"
            if panel_h is None:
                out.append(("width_not_listed",
                            f"{label} reports a screen {w} px wide (portrait); its panels are {widths} px wide."))
                panel_h, which = lim.max_height, "tallest panel"
            if panel_h is not None and h > panel_h:
                out.append(("height_exceeds_panel",
                            f"{label} reports a screen {h} px tall (portrait); its {which} is {panel_h} px."))

        if hardware and lim.vendors:
            vendor = self._vendors.classify_hardware(hardware)
            if vendor is not None and vendor not in lim.vendors:
                soc = facts.soc or "/".join(facts.hardware)
                vendors = "/".join(sorted(lim.vendors))
                out.append(("hardware_vendor_mismatch",
                            f"{label} reports hardware {hardware.strip()!r}, a {vendor} platform; "
                            f"the model uses {soc} ({vendors})."))

        if sdk_int is not None:
            sdk = int(sdk_int)
            if facts.sdk_min is not None and sdk < facts.sdk_min:
                out.append(("sdk_below_min",
                            f"{label} reports Android API {sdk}; it launched with API {facts.sdk_min}."))
            if facts.sdk_max is not None and sdk > facts.sdk_max:
                out.append(("sdk_above_max",
                            f"{label} reports Android API {sdk}; its last official upgrade is API {facts.sdk_max}."))
        return tuple(out)

    @staticmethod
    def _dpi_problem(facts: ModelFacts, lim: _Limits, dpi: int) -> str | None:
        if facts.dpi_exhaustive:
            return None if dpi in lim.dpi_set else "dpi_not_listed"
        if lim.dpi_lo is not None and (dpi < lim.dpi_lo or dpi > lim.dpi_hi):  # type: ignore[operator]
            return "dpi_out_of_range"
        return None

    @staticmethod
    def _dpi_sentence(code: str, label: str, facts: ModelFacts, lim: _Limits, dpi: int) -> str:
        known = ", ".join(str(d) for d in facts.dpi)
        if code == "dpi_not_listed":
            return f"{label} reports {dpi} dpi; the model reports only {known} dpi."
        return (f"{label} reports {dpi} dpi; the model reports {known} dpi by default and between "
                f"{lim.dpi_lo} and {lim.dpi_hi} dpi at any display-size setting.")

    # ---------------------------------------------------------------- simulation

    def models_for_simulation(self) -> list[tuple[ModelFacts, float]]:
        """``(facts, popularity)`` for every model with a positive popularity estimate, in
        file order (deterministic), for drawing devices with a real-world skew."""
        return [(f, f.popularity) for f in self._models.values() if f.popularity > 0]


# --------------------------------------------------------------------------------------
# parsing


def _parse_models(doc: _Doc) -> tuple[dict[str, frozenset[str]], _Vendors, tuple[float, float], dict[str, ModelFacts]]:
    data = doc.data
    if not isinstance(data, dict):
        raise doc.error([], "", "must be a mapping with a `models` list")
    if data.get("version") != 1:
        raise doc.error(["version"], "version", f"must be 1, got {data.get('version')!r}")

    aliases: dict[str, frozenset[str]] = {}
    raw_aliases = data.get("manufacturer_aliases", {}) or {}
    if not isinstance(raw_aliases, dict):
        raise doc.error(["manufacturer_aliases"], "manufacturer_aliases", "must be a mapping")
    for k, v in raw_aliases.items():
        if not _str(k) or not _str_list(v):
            raise doc.error(["manufacturer_aliases", k], f"manufacturer_aliases.{k}",
                            "must map a manufacturer to a non-empty list of brand names")
        aliases[k.strip().lower()] = frozenset({k.strip().lower()} | {b.strip().lower() for b in v})

    raw_vendors = data.get("soc_vendors")
    if not isinstance(raw_vendors, dict) or not raw_vendors:
        raise doc.error(["soc_vendors"], "soc_vendors", "must be a non-empty mapping")
    vendor_list = []
    for name, spec in raw_vendors.items():
        where = f"soc_vendors.{name}"
        if not isinstance(spec, dict) or not _str_list(spec.get("hardware")) or not _str_list(spec.get("soc")):
            raise doc.error(["soc_vendors", name], where, "needs `hardware` (regex list) and `soc` (word list)")
        try:
            pat = re.compile("|".join(f"(?:{p})" for p in spec["hardware"]))
        except re.error as exc:
            raise doc.error(["soc_vendors", name, "hardware"], where + ".hardware", f"bad regular expression: {exc}") from None
        arch = spec.get("arch")
        if arch is not None and arch not in ("arm", "x86"):
            raise doc.error(["soc_vendors", name, "arch"], where + ".arch", "must be arm or x86")
        vendor_list.append(_Vendor(str(name), arch, pat, tuple(spec["soc"])))
    vendors = _Vendors(vendor_list)

    plaus = data.get("plausibility", {}) or {}
    if not isinstance(plaus, dict):
        raise doc.error(["plausibility"], "plausibility", "must be a mapping")
    lo, hi = plaus.get("dpi_low_factor", 0.75), plaus.get("dpi_high_factor", 1.5)
    if not _number(lo) or not 0 < lo <= 1:
        raise doc.error(["plausibility", "dpi_low_factor"], "plausibility.dpi_low_factor", "must be a number in (0, 1]")
    if not _number(hi) or hi < 1:
        raise doc.error(["plausibility", "dpi_high_factor"], "plausibility.dpi_high_factor", "must be a number >= 1")

    entries = data.get("models")
    if not isinstance(entries, list) or not entries:
        raise doc.error(["models"], "models", "must be a non-empty list")
    models: dict[str, ModelFacts] = {}
    for i, entry in enumerate(entries):
        facts = _parse_model(doc, i, entry, vendors)
        if facts.model in models:
            raise doc.error(["models", i, "model"], _where("models", i, facts.model, "model"),
                            f"duplicate model {facts.model!r}")
        models[facts.model] = facts
    doc.check(ModelsFile)  # what the checks above leave: unknown keys anywhere, value types
    return aliases, vendors, (float(lo), float(hi)), models


def _parse_model(doc: _Doc, i: int, e: Any, vendors: _Vendors) -> ModelFacts:
    if not isinstance(e, dict):
        raise doc.error(["models", i], _where("models", i, None), "must be a mapping")
    label = e.get("model") if isinstance(e.get("model"), str) else None

    def bad(key: str, problem: str) -> CatalogueError:
        return doc.error(["models", i, key], _where("models", i, label, key), problem)

    unknown = set(e) - _MODEL_KEYS
    if unknown:
        raise bad(sorted(unknown)[0], unknown_key(sorted(unknown)[0], _MODEL_KEYS))
    if not _str(e.get("model")):
        raise bad("model", "is required: Build.MODEL as a non-empty string")
    if e.get("model") != e["model"].strip():
        raise bad("model", "must not have surrounding whitespace")
    if not _str(e.get("source")):
        raise bad("source", "is required: cite the spec page / data source of these facts")
    for key in ("manufacturer", "brand", "name", "soc", "note"):
        if key in e and not _str(e[key]):
            raise bad(key, "must be a non-empty string")
    if not e.get("manufacturer") and not e.get("brand"):
        raise bad("manufacturer", "one of `manufacturer` or `brand` is required")
    for key in ("device", "hardware", "abis"):
        if key in e and not _str_list(e[key]):
            raise bad(key, "must be a non-empty list of strings")
    for abi in e.get("abis", []):
        if abi not in _ABIS:
            raise bad("abis", f"unknown ABI {abi!r} (known: {', '.join(sorted(_ABIS))})")
    dpi = e.get("dpi")
    if dpi is not None and not (isinstance(dpi, list) and dpi and all(_int(d) and 72 <= d <= 1000 for d in dpi)):
        raise bad("dpi", "must be a non-empty list of integers between 72 and 1000")
    if "dpi_exhaustive" in e:
        if not isinstance(e["dpi_exhaustive"], bool):
            raise bad("dpi_exhaustive", "must be true or false")
        if e["dpi_exhaustive"] and not dpi:
            raise bad("dpi_exhaustive", "needs a `dpi` list")
    resolutions: list[tuple[int, int]] = []
    if "resolutions" in e:
        if not _str_list(e["resolutions"]):
            raise bad("resolutions", "must be a non-empty list of 'WxH' strings")
        for r in e["resolutions"]:
            m = _RES.match(r.strip())
            if not m:
                raise bad("resolutions", f"{r!r} is not 'WxH' (e.g. 1080x2400)")
            w, h = int(m.group(1)), int(m.group(2))
            if w > h or w < 200:
                raise bad("resolutions", f"{r!r} must be portrait (width <= height) and at least 200 px wide")
            resolutions.append((w, h))
    for key in ("sdk_min", "sdk_max"):
        if key in e and not (_int(e[key]) and 1 <= e[key] <= 100):
            raise bad(key, "must be an Android API level (integer 1..100)")
    if "sdk_min" in e and "sdk_max" in e and e["sdk_min"] > e["sdk_max"]:
        raise bad("sdk_max", f"is below sdk_min ({e['sdk_max']} < {e['sdk_min']})")
    pop = e.get("popularity", 0)
    if not _number(pop) or pop < 0:
        raise bad("popularity", "must be a number >= 0")

    hardware = tuple(h.strip() for h in e.get("hardware", []))
    soc = e.get("soc")
    soc_vendor = vendors.classify_soc(soc) if soc else None
    hw_vendors = {v for v in (vendors.classify_hardware(h) for h in hardware) if v}
    if soc_vendor and hw_vendors - {soc_vendor}:
        raise bad("hardware", f"{list(hardware)} belongs to {sorted(hw_vendors)}, but soc {soc!r} is {soc_vendor}")
    if len(hw_vendors) > 1:
        raise bad("hardware", f"{list(hardware)} mixes SoC vendors {sorted(hw_vendors)}")
    vendor = soc_vendor or (next(iter(hw_vendors)) if hw_vendors else None)
    abis = tuple(e.get("abis", []))
    arm_only = (bool(abis) and set(abis) <= _ARM_ABIS) or (not abis and vendors.arch(vendor) == "arm")
    if abis and not set(abis) <= _ARM_ABIS and vendors.arch(vendor) == "arm":
        raise bad("abis", f"lists a non-ARM ABI but soc {soc!r} is ARM")
    return ModelFacts(
        model=e["model"],
        manufacturer=e.get("manufacturer"),
        brand=e.get("brand"),
        name=e.get("name"),
        devices=tuple(d.strip() for d in e.get("device", [])),
        hardware=hardware,
        soc=soc,
        soc_vendor=vendor,
        dpi=tuple(sorted(set(dpi or ()))),
        dpi_exhaustive=bool(e.get("dpi_exhaustive", False)),
        resolutions=tuple(resolutions),
        sdk_min=e.get("sdk_min"),
        sdk_max=e.get("sdk_max"),
        abis=abis,
        arm_only=arm_only,
        popularity=float(pop),
        source=e["source"].strip(),
        note=e.get("note"),
    )


def _limits_for(f: ModelFacts, factors: tuple[float, float], vendors: _Vendors) -> _Limits:
    lo = hi = None
    if f.dpi:
        ratio = 1.0
        if f.resolutions:
            widths = [w for w, _ in f.resolutions]
            ratio = min(widths) / max(widths)
        lo = math.floor(factors[0] * min(f.dpi) * ratio)
        hi = math.ceil(factors[1] * max(f.dpi))
    by_width: dict[int, int] = {}
    for w, h in f.resolutions:
        by_width[w] = max(h, by_width.get(w, 0))
    hw_vendors = {v for v in (vendors.classify_hardware(h) for h in f.hardware) if v}
    vs = frozenset(({f.soc_vendor} if f.soc_vendor else set()) | hw_vendors)
    return _Limits(
        dpi_set=frozenset(f.dpi),
        dpi_lo=lo,
        dpi_hi=hi,
        max_height_by_width=by_width,
        max_height=max(by_width.values()) if by_width else None,
        vendors=vs,
    )


def _parse_markers(doc: _Doc) -> list[EmulatorMarker]:
    data = doc.data
    if not isinstance(data, dict):
        raise doc.error([], "", "must be a mapping with a `markers` list")
    if data.get("version") != 1:
        raise doc.error(["version"], "version", f"must be 1, got {data.get('version')!r}")
    entries = data.get("markers")
    if not isinstance(entries, list) or not entries:
        raise doc.error(["markers"], "markers", "must be a non-empty list")
    out: list[EmulatorMarker] = []
    ids: set[str] = set()
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise doc.error(["markers", i], _where("markers", i, None), "must be a mapping")
        label = e.get("id") if isinstance(e.get("id"), str) else None

        def bad(key: str, problem: str, i: int = i, label: str | None = label) -> CatalogueError:
            return doc.error(["markers", i, key], _where("markers", i, label, key), problem)

        unknown = set(e) - _MARKER_KEYS
        if unknown:
            raise bad(sorted(unknown)[0], unknown_key(sorted(unknown)[0], _MARKER_KEYS))
        for key in ("id", "family", "citation"):
            if not _str(e.get(key)):
                raise bad(key, "is required (non-empty string)")
        if e["id"] in ids:
            raise bad("id", f"duplicate marker id {e['id']!r}")
        ids.add(e["id"])
        if e.get("field") not in _FIELDS:
            raise bad("field", f"must be one of {', '.join(_FIELDS)}")
        if e.get("match") not in _MATCH_KINDS:
            raise bad("match", f"must be one of {', '.join(_MATCH_KINDS)}")
        if e.get("strength") not in _STRENGTHS:
            raise bad("strength", f"must be one of {', '.join(_STRENGTHS)}")
        if not _str_list(e.get("values")):
            raise bad("values", "must be a non-empty list of strings")
        values = tuple(str(v) for v in e["values"])
        if e["match"] == "regex":
            for v in values:
                try:
                    re.compile(v)
                except re.error as exc:
                    raise bad("values", f"bad regular expression {v!r}: {exc}") from None
        if e["field"] == "screen":
            for v in values:
                m = _SCREEN.match(v)
                if e["match"] != "exact" or not m or int(m.group(2)) > int(m.group(3)):
                    raise bad("values", f"screen markers are exact '<dpi>dpi <W>x<H>' (portrait), got {v!r}")
        flags = {}
        for key in ("case_sensitive", "requires_arm_only_model", "suppress_if_model_fits"):
            if key in e and not isinstance(e[key], bool):
                raise bad(key, "must be true or false")
            flags[key] = bool(e.get(key, False))
        if flags["requires_arm_only_model"] and e["field"] != "abi":
            raise bad("requires_arm_only_model", "only applies to abi markers")
        if flags["suppress_if_model_fits"] and e["field"] != "screen":
            raise bad("suppress_if_model_fits", "only applies to screen markers")
        unless: list[tuple[str, tuple[str, ...]]] = []
        if "unless" in e:
            if not isinstance(e["unless"], dict) or not e["unless"]:
                raise bad("unless", "must be a mapping of field -> list of values")
            for f, vals in e["unless"].items():
                if f not in _FIELDS or f in ("abi", "screen") or not _str_list(vals):
                    raise bad("unless", f"{f!r}: must map a Build field to a non-empty list of values")
                unless.append((f, tuple(v.strip().lower() for v in vals)))
        out.append(EmulatorMarker(
            id=e["id"], family=e["family"], field=e["field"], match=e["match"], values=values,
            strength=e["strength"], citation=" ".join(e["citation"].split()),
            case_sensitive=flags["case_sensitive"], unless=tuple(unless),
            requires_arm_only_model=flags["requires_arm_only_model"],
            suppress_if_model_fits=flags["suppress_if_model_fits"],
        ))
    doc.check(EmulatorsFile)
    return out


def _read_play(path: Path, pairs: dict[str, dict[str, set[str]]], brands: set[str]) -> int:
    try:
        with gzip.open(path, "rb") as fh:
            text = io.TextIOWrapper(fh, encoding="utf-8", newline="")
            reader = csv.reader(text)
            header = next(reader, None)
            if header != ["brand", "name", "device", "model"]:
                raise CatalogueError(path, "header", f"expected brand,name,device,model, got {header!r}", 1)
            n = 0
            for n, row in enumerate(reader, start=1):
                if len(row) != 4:
                    raise CatalogueError(path, f"row {n}", f"expected 4 columns, got {len(row)}", n + 1)
                brand, _name, device, model = row
                b = brand.strip().lower()
                pairs.setdefault(model.strip(), {}).setdefault(device.strip().lower(), set()).add(b)
                if b:
                    brands.add(b)
            return n
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as exc:
        raise CatalogueError(path, "", f"cannot read the Play device list: {exc}") from None
