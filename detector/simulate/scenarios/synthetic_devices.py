"""A library that gives every account a physically impossible device."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

from detector.devices import DeviceCatalogue
from detector.profile import ClientProfile, signing_key_for
from detector.simulate.handsets import (
    ANDROID_RELEASE,
    NEWEST_SDK,
    DeviceSpec,
    _draw_handset,
    _Model,
    _models,
    ua_string,
)
from detector.simulate.kit import (
    CURL_H2_STACK,
    HOSTING_NETWORKS,
    PYTHON_STACK,
    _account_id,
    _action_call,
    _app_release,
    _app_stack,
    _AppHeaders,
    _browse_call,
    _check_evasion,
    _hosting,
    _real_device_attestation,
    _residential,
)
from detector.simulate.places import _COUNTRY
from detector.simulate.wire import DEFAULT_START_TS, _Builder, _hex, _uuid4

_SOC_HARDWARE = {"qualcomm": ("qcom", "sm8250", "sdm660"), "mediatek": ("mt6765", "mt6785", "mt6877"),
                 "samsung": ("exynos9820", "s5e8825"), "hisilicon": ("kirin980", "hi6250"),
                 "unisoc": ("ums512", "sc9863a")}
_COMMON_WIDTHS = (480, 540, 600, 720, 800, 828, 900, 1080, 1170, 1200, 1284, 1440, 1600)


def _impossible_device(rng: random.Random, m: _Model, flaws: int, codenames: Sequence[str]) -> DeviceSpec:
    """A handset of model `m` with `flaws` of its facts made physically impossible,
    judged from the model's own facts (panel widths, densities, SoC vendor, the Android
    versions it shipped with or received, its codenames)."""
    d = _draw_handset(rng, m)
    f = m.facts
    options = ["sdk_release"]
    if f.dpi:
        options.append("dpi")
    if f.resolutions:
        options += ["width", "height"]
    if f.soc_vendor in _SOC_HARDWARE:
        options.append("hardware")
    if f.sdk_min is not None and f.sdk_min > min(ANDROID_RELEASE):
        options.append("sdk_low")
    if f.sdk_max is not None and f.sdk_max < NEWEST_SDK:
        options.append("sdk_high")
    foreign = [c for c in codenames if c not in f.devices]
    if foreign:
        options.append("codename")
    for flaw in rng.sample(options, min(flaws, len(options))):
        if flaw == "dpi":  # far outside what display-size settings reach (0.85x..1.5x)
            widths = [w for w, _ in f.resolutions] or [d.width]
            low = 0.6 * min(f.dpi) * min(widths) / max(widths)
            lows = [x for x in (100, 120, 140, 160, 180, 200, 213, 240) if x < low]
            high = rng.choice((880, 960)) if max(f.dpi) * 1.7 < 880 else 1200
            d = replace(d, dpi=rng.choice(lows) if lows else high)
        elif flaw == "width":  # a panel width the model does not have
            w = rng.choice([x for x in _COMMON_WIDTHS if x not in {pw for pw, _ in f.resolutions}])
            d = replace(d, width=w, height=round(w * d.height / d.width))
        elif flaw == "height":  # taller than the model's panel of that width
            same = [h for w, h in f.resolutions if w == d.width]
            d = replace(d, height=max(same or [h for _, h in f.resolutions]) + rng.randint(120, 480))
        elif flaw == "hardware":  # another vendor's SoC
            vendor = rng.choice([v for v in _SOC_HARDWARE if v != f.soc_vendor])
            d = replace(d, hardware=rng.choice(_SOC_HARDWARE[vendor]))
        elif flaw == "sdk_low" and f.sdk_min is not None:  # older than the model's launch
            sdk = rng.randint(max(min(ANDROID_RELEASE), f.sdk_min - 5), f.sdk_min - 1)
            d = replace(d, sdk_int=sdk, release=ANDROID_RELEASE[sdk])
        elif flaw == "sdk_high" and f.sdk_max is not None:  # newer than its last upgrade
            sdk = rng.randint(f.sdk_max + 1, NEWEST_SDK)
            d = replace(d, sdk_int=sdk, release=ANDROID_RELEASE[sdk])
        elif flaw == "sdk_release":
            major = int(ANDROID_RELEASE[d.sdk_int].split(".")[0])
            if rng.random() < 0.5:  # the two swapped: "14/34"
                d = replace(d, sdk_int=max(10, major), release=str(d.sdk_int))
            else:  # a release that never shipped with that API level
                d = replace(d, release=str(major + rng.choice((-2, -1, 1))))
        elif flaw == "codename":  # another model's codename
            d = replace(d, device=rng.choice(foreign))
    return d


def synthetic_devices(profile: ClientProfile, count: int, seed: int, start_ts: float = DEFAULT_START_TS,
                      evasion: int = 0, rate: float | None = None, *,
                      catalogue: DeviceCatalogue | None = None) -> Iterator[dict[str, Any]]:
    """A library that gives every account a device from a large pool of generated device
    strings, each physically impossible: a real model with facts it cannot have (a
    density far outside its panel's, a panel width or height it does not have, another
    vendor's SoC, an Android version it never ran, API level and release swapped, another
    model's codename). Calls go out at a fixed pace, accounts in turn. `evasion` 0:
    Python requests (desktop TLS, HTTP/1.1, its own header order), a retired build's
    key, datacenter addresses, two or three flaws per device; 1: PHP curl over HTTP/2
    with the app's header order, the current build's key, two flaws; 2: OkHttp with
    Conscrypt on a server JVM (the app's TLS and HTTP/2), Play Integrity tokens relayed
    from real phones, residential proxies, one flaw per device: only the device tuple
    gives it away."""
    _check_evasion(evasion)
    rng = random.Random(f"synthetic_devices:{seed}")
    b = _Builder(profile, rng, "synthetic_devices", True)
    if count <= 0:
        return
    models, weights = _models(catalogue)
    codenames = sorted({c for m in models for c in m.facts.devices})
    if evasion == 0:
        retired = [v for v in profile.versions.values() if v.status == "retired" and v.keys]
        old = max(retired, key=lambda v: v.sort_key) if retired else profile.newest_version
        version, code, key_id = old.version, min(old.codes), signing_key_for(profile, old)
    else:
        version, code, key_id = _app_release(profile, start_ts)
    stack = PYTHON_STACK if evasion == 0 else CURL_H2_STACK if evasion == 1 else _app_stack(profile, version)
    hdrs = _AppHeaders(profile)
    delay = 1.0 / (rate or 2.0)
    n_accounts = max(5, count // 8)
    flaws = (2, 2, 1)[evasion] + (rng.random() < 0.5 if evasion == 0 else 0)
    country = _COUNTRY["US"]
    accounts = []
    for _ in range(n_accounts):
        m = rng.choices(models, weights=weights)[0]
        device = _impossible_device(rng, m, flaws, codenames)
        accounts.append((_account_id(rng), f"android-{_hex(rng, 16)}", device, rng.choice(country.locales)[0]))
    host = rng.choice(HOSTING_NETWORKS)
    ts = start_ts + rng.uniform(0, 3)
    for i in range(count):
        account, device_id, device, locale = accounts[i % n_accounts]
        method, path, query, body_size = _action_call(rng) if i % 3 == 0 else _browse_call(rng, 1 + i // n_accounts)
        if evasion == 2:
            ip, network = _residential(rng, country)
        else:
            ip, network = _hosting(rng, host)
        ua = ua_string(b.app_token, version, code, device, locale)
        values = hdrs.values(device_id=device_id, session_id=_uuid4(rng) if evasion else None, account=account,
                             signed_at=ts, locale=locale, conn="WIFI" if evasion else None,
                             bandwidth=rng.uniform(5000, 50000) if evasion else None, ua=ua, body_size=body_size)
        if evasion == 0:
            values["accept-encoding"] = "gzip, deflate"
            headers = [("accept", "*/*"), ("connection", "keep-alive")] + hdrs.ordered(values)
        else:
            headers = hdrs.ordered(values)
        yield b.request(ts, ip=ip, method=method, path=path, query=query, headers=headers, key_id=key_id,
                        body_size=body_size, title_case=evasion == 0, http_version=stack.http_version,
                        tls=dict(stack.tls), h2=stack.h2, network=network,
                        attestation=_real_device_attestation(profile, rng) if evasion == 2 else None)
        ts += delay
