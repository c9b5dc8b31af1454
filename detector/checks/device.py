"""Device checks: is the device tuple in the user agent a real phone? Emulator and
virtual-device markers (config/devices/emulators.yaml), SDK/release pairs that never
shipped together, and facts impossible for the claimed model (dpi, screen, SoC
vendor, SDK range, model/codename pairs from Google Play's supported-devices list).
What the catalogue does not know is never a violation."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import ClassVar

from detector.cache import ByteCache
from detector.checks.base import CheckScope, RequestContext
from detector.devices import DeviceCatalogue
from detector.model import ClientRequest, Signal

EMULATOR = "device.emulator"
EMULATOR_SCREEN = "device.emulator_screen"
SDK_RELEASE_MISMATCH = "device.sdk_release_mismatch"
UNKNOWN_PAIR = "device.unknown_pair"
DPI_IMPOSSIBLE = "device.dpi_impossible"
RESOLUTION_IMPOSSIBLE = "device.resolution_impossible"
HARDWARE_MISMATCH = "device.hardware_mismatch"
SDK_OUT_OF_RANGE = "device.sdk_out_of_range"

_PLAUSIBILITY_TO_CODE = {
    "dpi_not_listed": DPI_IMPOSSIBLE,
    "dpi_out_of_range": DPI_IMPOSSIBLE,
    "width_not_listed": RESOLUTION_IMPOSSIBLE,
    "height_exceeds_panel": RESOLUTION_IMPOSSIBLE,
    "hardware_vendor_mismatch": HARDWARE_MISMATCH,
    "sdk_below_min": SDK_OUT_OF_RANGE,
    "sdk_above_max": SDK_OUT_OF_RANGE,
}
_CACHE_BYTES = 8 * 2**20  # memory of the cache, by bytes (detector.cache)


def _int(v: str | None) -> int | None:
    return int(v) if v and v.isdigit() else None


class DeviceCheck:
    name: ClassVar[str] = "device"
    scope: ClassVar[CheckScope] = "shape"
    codes: ClassVar[Mapping[str, str]] = {
        EMULATOR: "an emulator or virtual-device build property in the device tuple",
        EMULATOR_SCREEN: "a default emulator screen (density and resolution) on a model that has no such panel",
        SDK_RELEASE_MISMATCH: "Android API level and release that never shipped together",
        UNKNOWN_PAIR: "model and device codename that Google Play's device list never pairs",
        DPI_IMPOSSIBLE: "screen density impossible for the claimed model",
        RESOLUTION_IMPOSSIBLE: "screen resolution impossible for the claimed model",
        HARDWARE_MISMATCH: "SoC/hardware of another vendor than the claimed model's",
        SDK_OUT_OF_RANGE: "Android version the claimed model never ran",
    }

    def __init__(self, catalogue: DeviceCatalogue | None, releases: Mapping[int, tuple[str, ...]]):
        self.catalogue = catalogue
        self.releases = releases
        self._cache: ByteCache[tuple[str, ...], tuple[tuple[str, str], ...]] = ByteCache(_CACHE_BYTES, 16 * 1024)

    def check(self, request: ClientRequest, ctx: RequestContext) -> Iterable[Signal]:
        ua = ctx.derived.ua
        if ua is None or "model" not in ua:
            return ()
        key = tuple(ua.get(f) or "" for f in ("manufacturer", "model", "device", "hardware", "dpi", "width", "height",
                                              "sdk_int", "release"))
        found = self._cache.get(key)
        if found is None:
            found = tuple(self._evaluate(*key))
            self._cache.put(key, found)
        return [ctx.signal(code, detail) for code, detail in found]

    def _evaluate(self, manufacturer: str, model: str, device: str, hardware: str, dpi_s: str, width_s: str,
                  height_s: str, sdk_s: str, release: str) -> Iterable[tuple[str, str]]:
        dpi, width, height, sdk = _int(dpi_s), _int(width_s), _int(height_s), _int(sdk_s)
        cat = self.catalogue
        if cat is not None:
            for marker in cat.emulator_markers(manufacturer, model, device, hardware,
                                               dpi=dpi, width=width, height=height):
                observed = {"manufacturer": manufacturer, "model": model, "device": device, "hardware": hardware}.get(
                    marker.field, f"{dpi_s}dpi {width_s}x{height_s}")
                code = EMULATOR_SCREEN if marker.strength == "weak" else EMULATOR
                yield code, marker.explain(observed)
        if sdk is not None:
            allowed = self.releases.get(sdk)
            if allowed is not None and not any(release == r or release.startswith(r + ".") for r in allowed):
                yield SDK_RELEASE_MISMATCH, (f"API level {sdk} ships as Android {' or '.join(allowed)}, "
                                             f"but the user agent says release {release}")
            elif allowed is None and release and sdk < min(self.releases, default=0):
                yield SDK_RELEASE_MISMATCH, f"API level {sdk} is older than any Android release the app supports"
        if cat is None:
            return
        if cat.is_known_pair(manufacturer, model, device) is False:
            yield UNKNOWN_PAIR, (f"Google Play's device list has model {model} ({manufacturer}) but never with "
                                 f"device codename {device}")
        for reason, detail in cat.plausibility(model, dpi, width, height, hardware, sdk):
            found = _PLAUSIBILITY_TO_CODE.get(reason)
            if found is not None:
                yield found, detail
