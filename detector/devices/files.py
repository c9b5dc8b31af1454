"""The catalogue's three files under ``config/devices/`` read and checked (every entry,
with file, line and entry in each error) into ModelFacts, EmulatorMarkers, SoC vendors
and the Play list's (model, device, brand) pairs."""

from __future__ import annotations

import csv
import gzip
import io
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from detector.config import ConfigError, YamlDocument, unknown_key
from detector.config.schema import EmulatorsFile, MarkerEntry, ModelEntry, ModelsFile, Section, check
from detector.devices.facts import CatalogueError, EmulatorMarker, ModelFacts, _Limits, _Vendor, _Vendors

MODELS_FILE = "models.yaml"
EMULATORS_FILE = "emulators.yaml"
PLAY_FILE = "play_devices.csv.gz"

_FIELDS = ("manufacturer", "brand", "model", "device", "hardware", "board", "product", "abi", "screen")
_MATCH_KINDS = ("exact", "prefix", "contains", "regex")
_STRENGTHS = ("strong", "medium", "weak")
_ABIS = {"arm64-v8a", "armeabi-v7a", "armeabi", "x86", "x86_64", "riscv64", "mips", "mips64"}
_ARM_ABIS = {"arm64-v8a", "armeabi-v7a", "armeabi"}
_RES = re.compile(r"^(\d{2,5})x(\d{2,5})$")
_SCREEN = re.compile(r"^(\d{2,4})dpi (\d{2,5})x(\d{2,5})$")
_MODEL_KEYS = frozenset(ModelEntry.model_fields)
_MARKER_KEYS = frozenset(MarkerEntry.model_fields)


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
            raise doc.error(["soc_vendors", name, "hardware"], where + ".hardware",
                            f"bad regular expression: {exc}") from None
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
