"""DeviceCatalogue: the model facts, emulator markers and Play list indexed at load, so
each per-request question (is this a known pair, which emulator markers match, which
reported facts are impossible for the model) is a look-up."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from detector.cache import bounded_cache
from detector.config.schema import EmulatorsFile, ModelsFile
from detector.devices.facts import EmulatorMarker, ModelFacts, _Limits, _Vendors
from detector.devices.files import (
    EMULATORS_FILE,
    MODELS_FILE,
    PLAY_FILE,
    _Doc,
    _limits_for,
    _parse_markers,
    _parse_models,
    _read_play,
)

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

_SCREEN_FIT = 0.12  # a panel minus system bars: reported height within 12% of the panel's
_CACHE_BYTES = 16 << 20  # per memoised check: its arguments and result
_CACHE_ITEM_BYTES = 4096  # a device tuple larger than this is checked every time


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

