"""The real app on emulator farms: cloned images, synchronised scripts."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any

from detector.devices import DeviceCatalogue
from detector.profile import ClientProfile
from detector.simulate.handsets import DeviceSpec, _draw_handset, _models, ua_string
from detector.simulate.kit import (
    HOSTING_NETWORKS,
    _account_id,
    _action_call,
    _app_release,
    _app_stack,
    _AppHeaders,
    _attestation,
    _browse_call,
    _carrier_blocks,
    _check_evasion,
    _hosting,
    _in_order,
    _startup_call,
)
from detector.simulate.places import COUNTRIES
from detector.simulate.wire import (
    DEFAULT_START_TS,
    STARTUP_PATHS,
    _Builder,
    _hex,
    _uuid4,
)

# Emulator images as their build properties show in the user agent. Level 0: stock
# images (Android Studio AVDs, Genymotion). Attestation: Play images of the Android
# Emulator meet virtual integrity only; AOSP and Genymotion images meet nothing.
AVD_IMAGES: tuple[tuple[DeviceSpec, tuple[str, ...]], ...] = (
    (DeviceSpec("Google", "sdk_gphone64_x86_64", "emu64xa", "ranchu", 420, 1080, 1794, 34, "14"),
     ("MEETS_VIRTUAL_INTEGRITY",)),
    (DeviceSpec("Google", "sdk_gphone_x86", "generic_x86_arm", "ranchu", 420, 1080, 1794, 30, "11"),
     ("MEETS_VIRTUAL_INTEGRITY",)),
    (DeviceSpec("unknown", "Android SDK built for x86", "generic_x86", "ranchu", 320, 768, 1184, 28, "9"), ()),
    (DeviceSpec("Genymobile", "Google Pixel 3", "vbox86p", "vbox86", 440, 1080, 2028, 29, "10"), ()),
)
# Level 1: third-party emulators that present a real phone's model but leak their own
# Build.HARDWARE (LDPlayer ttVM_x86, Nox nox, MEmu memu) or run at their default window
# (BlueStacks 1600x900 at 240 dpi, which leaks only the board, not in the user agent).
THIRD_PARTY_EMULATORS = (("LDPlayer", "ttVM_x86", None), ("Nox", "nox", None), ("MEmu", "memu", None),
                         ("BlueStacks", None, (240, 900, 1600)))


def emulator_farm(profile: ClientProfile, count: int, seed: int, start_ts: float = DEFAULT_START_TS,
                  evasion: int = 0, rate: float | None = None, *,
                  catalogue: DeviceCatalogue | None = None) -> Iterator[dict[str, Any]]:
    """The real app (current version: right headers, TLS, HTTP/2 and signature) on
    emulators: host servers of 12 emulator instances each, every instance logged in to
    four accounts in turn; all instances of the farm run one image (identical device
    tuples and screens) and one script, started together every round (synchronised
    schedules: the same calls with the same pauses). Play Integrity sees a virtual or
    failing device. `evasion` 0: stock emulator images (Android Studio AVDs, Genymotion),
    instances cloned from one snapshot (one ANDROID_ID per host), the hosts' datacenter
    addresses; 1: LDPlayer / Nox / MEmu / BlueStacks presenting a real phone's model but
    leaking their hardware or default window, one ANDROID_ID per instance; 2: build
    properties spoofed to a real catalogue phone with its own screen, residential
    proxies; only the attestation verdict, and the farm's behaviour, show it."""
    _check_evasion(evasion)
    rng = random.Random(f"emulator_farm:{seed}")
    b = _Builder(profile, rng, "emulator_farm", True)
    if count <= 0:
        return
    rate = rate or 5.0
    models, weights = _models(catalogue)
    version, code, key_id = _app_release(profile, start_ts)
    stack = _app_stack(profile, version)
    hdrs = _AppHeaders(profile)
    script_len = 10  # start-up burst, two browse calls, four actions
    instances = max(2, min(240, count // (3 * script_len)))
    per_host = 12
    hosts = max(1, math.ceil(instances / per_host))
    gap = 1.5 if evasion == 0 else 2.5  # the script's pause between calls
    cycle = max(script_len * gap * 2.5, instances * script_len / rate)
    rounds = math.ceil(count / (instances * script_len))
    country = rng.choice([c for c in COUNTRIES if c.code in ("US", "BR", "IN", "ID", "VN")])
    locale = country.locales[0][0] if evasion == 2 else "en_US"

    # One image per host, two images in the farm.
    images: list[tuple[DeviceSpec, tuple[str, ...]]] = []
    for _ in range(2):
        if evasion == 0:
            images.append(rng.choice(AVD_IMAGES))
            continue
        model = rng.choices(models, weights=weights)[0]
        handset = _draw_handset(rng, model)
        if evasion == 1:
            _, hardware, window = rng.choice(THIRD_PARTY_EMULATORS)
            if hardware is not None:
                handset = DeviceSpec(handset.manufacturer, handset.model, handset.device, hardware, handset.dpi,
                                     handset.width, handset.height, handset.sdk_int, handset.release)
            if window is not None:
                dpi, w, h = window
                handset = DeviceSpec(handset.manufacturer, handset.model, handset.device, handset.hardware, dpi, w, h,
                                     handset.sdk_int, handset.release)
            images.append((handset, rng.choice(((), ("MEETS_BASIC_INTEGRITY",)))))
        else:
            images.append((handset, rng.choice((("MEETS_BASIC_INTEGRITY",), ("MEETS_VIRTUAL_INTEGRITY",)))))
    datacenter = [rng.choice(HOSTING_NETWORKS) for _ in range(hosts)]
    host_ip = [_hosting(rng, dc) for dc in datacenter]
    snapshot_id = [f"android-{_hex(rng, 16)}" for _ in range(hosts)]
    proxies = _carrier_blocks(rng, country, 6)
    events: list[dict[str, Any]] = []
    for inst in range(instances):
        host = inst // per_host
        device, recognition = images[host % len(images)]
        device_id = snapshot_id[host] if evasion == 0 else f"android-{_hex(rng, 16)}"
        accounts = [_account_id(rng) for _ in range(4)]
        ua = ua_string(b.app_token, version, code, device, locale)
        for r in range(rounds):
            account = accounts[r % len(accounts)]
            ts = start_ts + r * cycle + rng.uniform(0, 2.0 if evasion == 0 else 10.0 * evasion)
            if evasion == 2:
                block, network = rng.choice(proxies)
                ip = f"{block}.{rng.randint(2, 254)}"
            else:
                ip, network = host_ip[host]
            sid, conn, bandwidth = _uuid4(rng), "WIFI", rng.uniform(20000, 90000)
            calls = [_startup_call(rng, s) for s in range(len(STARTUP_PATHS))]
            calls += [_browse_call(rng, p + 1) for p in range(2)]
            calls += [_action_call(rng) for _ in range(script_len - len(calls))]
            token_ts = ts - rng.uniform(0.3, 2.0)
            for step, (method, path, query, body_size) in enumerate(calls):
                values = hdrs.values(device_id=device_id, session_id=sid, account=account, signed_at=ts,
                                     locale=locale, conn=conn, bandwidth=bandwidth if step else None, ua=ua,
                                     body_size=body_size)
                events.append(b.request(
                    ts, ip=ip, method=method, path=path, query=query, headers=hdrs.ordered(values), key_id=key_id,
                    body_size=body_size, http_version=stack.http_version, tls=dict(stack.tls), h2=stack.h2,
                    network=network, attestation=_attestation(profile, recognition, ts - token_ts)))
                ts += (rng.uniform(0.02, 0.3) if step < len(STARTUP_PATHS) - 1
                       else gap + (rng.uniform(0, 0.2) if evasion == 0 else rng.uniform(-1.0, 1.5)))
    yield from _in_order(events, count)
