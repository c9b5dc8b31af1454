"""Labelled traffic for demos, tests and evaluation: a genuine population of the app's
users built from the client profile and the device catalogue, and attack scenarios that
imitate the app the way real tools do.

Deterministic for a seed: every random draw comes from one `random.Random` per
scenario, nothing iterates an unordered set, and time is the events' own (`start_ts`
plus simulated gaps), never the clock.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import inspect
import ipaddress
import math
import random
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, Mapping, Sequence

from detector.devices import DeviceCatalogue, ModelFacts
from detector.profile import AppVersion, ClientProfile, signing_key_for
from detector.signing import canonical_string, mac, signature_value

DEFAULT_START_TS = 1795860000.0  # 2026-11-29T10:00:00Z, a fixed origin for reproducible files

# OkHttp 4 on Android's platform TLS (Conscrypt): public facts about the app's stack,
# used when a profile does not name its own.
OKHTTP_JA4 = "t13d1513h2_8daaf6152771_eca864cca44a"
OKHTTP_H2 = "4:16777216|16711681|0|m,p,a,s"
# Python requests/urllib3 on OpenSSL 3 (desktop), as captured from a default client
# (tests/data/client_hellos.json).
PYTHON_REQUESTS_JA4 = "t13d1812h1_85036bcba153_b26ce05bbdd6"
TLS_SNI = "api.example-social.test"


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


# --------------------------------------------------------------------------------------
# Networks and places


@dataclass(frozen=True, slots=True)
class Country:
    code: str
    utc_offsets: tuple[float, ...]  # hours, the zones most users live in
    locales: tuple[tuple[str, float], ...]
    mobile: tuple[tuple[int, str], ...]  # carriers (asn, org)
    wifi: tuple[tuple[int, str], ...]  # home ISPs (asn, org)
    mobile_share: float  # share of sessions on the mobile network in daytime
    nr_share: float  # share of mobile sessions on 5G
    legacy_share: float  # share of mobile sessions on 3G/2G
    weight: float  # share of the app's users


# Weights: a rough split of a global social app's Android users; ASNs are the
# countries' large carriers and home ISPs.
COUNTRIES: tuple[Country, ...] = (
    Country("IN", (5.5,), (("en_IN", 0.7), ("hi_IN", 0.3)),
            ((55836, "Reliance Jio Infocomm"), (45609, "Bharti Airtel"), (55410, "Vodafone Idea")),
            ((55836, "Reliance Jio Infocomm"), (24560, "Bharti Airtel Broadband"), (24309, "Atria Convergence")),
            0.7, 0.25, 0.04, 18),
    Country("BR", (-3.0,), (("pt_BR", 1.0),),
            ((26615, "TIM Brasil"), (26599, "Telefonica Brasil"), (28573, "Claro")),
            ((27699, "Telefonica Brasil (Vivo)"), (28573, "Claro NET"), (7738, "Oi")), 0.5, 0.2, 0.03, 11),
    Country("ID", (7.0, 8.0), (("id_ID", 1.0),),
            ((23693, "Telkomsel"), (4761, "Indosat Ooredoo"), (24203, "XL Axiata")),
            ((7713, "Telkom Indonesia"), (17451, "Biznet")), 0.65, 0.1, 0.04, 10),
    Country("US", (-5.0, -6.0, -8.0), (("en_US", 0.88), ("es_US", 0.12)),
            ((21928, "T-Mobile USA"), (6167, "Verizon Wireless"), (20057, "AT&T Mobility")),
            ((7922, "Comcast Cable"), (20115, "Charter Communications"), (7018, "AT&T Services"), (701, "Verizon Fios")),
            0.4, 0.5, 0.0, 10),
    Country("MX", (-6.0,), (("es_MX", 1.0),),
            ((28403, "Telcel"), (32098, "AT&T Mexico")), ((8151, "Telmex"), (22884, "Totalplay"), (13999, "Megacable")),
            0.5, 0.1, 0.03, 6),
    Country("TR", (3.0,), (("tr_TR", 1.0),),
            ((16135, "Turkcell"), (15897, "Vodafone Turkey"), (34984, "Turk Telekom Mobil")),
            ((9121, "Turk Telekom"), (34984, "Superonline")), 0.5, 0.0, 0.02, 5),
    Country("PH", (8.0,), (("en_PH", 0.6), ("fil_PH", 0.4)),
            ((132199, "Globe Telecom"), (10139, "Smart Communications")), ((9299, "PLDT"), (17639, "Converge ICT")),
            0.55, 0.15, 0.03, 5),
    Country("VN", (7.0,), (("vi_VN", 1.0),),
            ((7552, "Viettel"), (45899, "VNPT")), ((18403, "FPT Telecom"), (7552, "Viettel")), 0.45, 0.1, 0.03, 4),
    Country("NG", (1.0,), (("en_NG", 1.0),),
            ((29465, "MTN Nigeria"), (36873, "Airtel Nigeria"), (37148, "Globacom")), ((37282, "MainOne"),),
            0.85, 0.05, 0.08, 4),
    Country("EG", (2.0,), (("ar_EG", 1.0),),
            ((36935, "Vodafone Egypt"), (37069, "Orange Egypt")), ((8452, "Telecom Egypt"),), 0.6, 0.0, 0.05, 4),
    Country("DE", (1.0,), (("de_DE", 1.0),),
            ((3320, "Deutsche Telekom"), (3209, "Vodafone Germany"), (6805, "Telefonica Germany")),
            ((3320, "Deutsche Telekom"), (3209, "Vodafone Germany"), (8881, "1&1 Versatel")), 0.35, 0.35, 0.0, 4),
    Country("GB", (0.0,), (("en_GB", 1.0),),
            ((12576, "EE"), (25135, "Vodafone UK"), (35228, "O2 UK")),
            ((2856, "British Telecom"), (5089, "Virgin Media"), (5607, "Sky Broadband")), 0.35, 0.35, 0.0, 4),
    Country("FR", (1.0,), (("fr_FR", 1.0),),
            ((3215, "Orange France"), (15557, "SFR"), (51207, "Free Mobile")),
            ((3215, "Orange France"), (12322, "Free SAS"), (5410, "Bouygues Telecom")), 0.35, 0.3, 0.0, 4),
    Country("IT", (1.0,), (("it_IT", 1.0),),
            ((30722, "Vodafone Italia"), (1267, "WIND TRE")), ((3269, "Telecom Italia"), (12874, "Fastweb")),
            0.4, 0.3, 0.0, 3),
    Country("ES", (1.0,), (("es_ES", 1.0),),
            ((3352, "Telefonica de Espana"), (12430, "Vodafone Spain"), (12479, "Orange Espagne")),
            ((3352, "Telefonica de Espana"), (12479, "Orange Espagne")), 0.35, 0.3, 0.0, 3),
    Country("TH", (7.0,), (("th_TH", 1.0),),
            ((131445, "Advanced Wireless Network (AIS)"), (24378, "True Move")), ((7470, "True Internet"), (45758, "3BB")),
            0.55, 0.2, 0.01, 3),
    Country("SA", (3.0,), (("ar_SA", 0.8), ("en_SA", 0.2)),
            ((25019, "Saudi Telecom"), (35819, "Mobily")), ((25019, "Saudi Telecom"), (35753, "ITC")), 0.5, 0.35, 0.0, 2),
)
_COUNTRY = {c.code: c for c in COUNTRIES}

# Consumer VPNs exit from hosting networks.
VPN_NETWORKS = ((9009, "M247 Europe"), (60068, "Datacamp Limited"), (212238, "Datacamp Limited"), (136787, "TEFINCOM"))
VPN_EXITS = ("US", "NL", "GB", "DE", "SG")

# Carriers that give most phones an IPv6 address (T-Mobile US runs IPv6-only with
# 464XLAT; Jio is IPv6-first), with one of their real prefixes.
_IPV6_CARRIERS = {21928: "2607:fb90", 55836: "2409:4040"}

# Activity of a social app by local hour (share of the evening peak).
_DIURNAL = (0.55, 0.35, 0.22, 0.15, 0.12, 0.15, 0.3, 0.55, 0.7, 0.75, 0.78, 0.8,
            0.88, 0.85, 0.8, 0.8, 0.85, 0.9, 0.95, 1.0, 1.0, 1.0, 0.9, 0.75)
_RESERVED_FIRST_OCTETS = {0, 10, 100, 127, 169, 172, 192, 198, 203}


def _diurnal(local_hour: float) -> float:
    h = local_hour % 24.0
    i = int(h)
    frac = h - i
    return _DIURNAL[i] * (1 - frac) + _DIURNAL[(i + 1) % 24] * frac


def _prefixes(asn: int) -> tuple[tuple[int, int], ...]:
    """Four stable /16 blocks per ASN, so an ASN's addresses look like its allocations
    (a generator of its own: the blocks never depend on the scenario's seed)."""
    r = random.Random(f"asn:{asn}")
    out: list[tuple[int, int]] = []
    while len(out) < 4:
        a = r.randint(2, 223)
        if a not in _RESERVED_FIRST_OCTETS:
            out.append((a, r.randint(0, 255)))
    return tuple(out)


def _ipv4(rng: random.Random, asn: int) -> str:
    a, b = rng.choice(_prefixes(asn))
    return f"{a}.{b}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def _ip(rng: random.Random, asn: int) -> str:
    prefix = _IPV6_CARRIERS.get(asn)
    if prefix is not None and rng.random() < 0.7:
        groups = [f"{rng.getrandbits(16):x}" for _ in range(6)]
        return str(ipaddress.IPv6Address(f"{prefix}:{':'.join(groups)}"))
    return _ipv4(rng, asn)


# --------------------------------------------------------------------------------------
# The app's endpoints (the profile's endpoint classes: startup, browse, action)

STARTUP_PATHS = ("/api/v1/launcher/sync", "/api/v1/config", "/api/v1/notifications/badge", "/api/v1/feed/timeline")
BADGE_PATH = "/api/v1/notifications/badge"
BROWSE_PATHS = ("/api/v1/feed/timeline", "/api/v1/media/{id}/info", "/api/v1/users/{id}/info", "/api/v1/explore")
ACTION_PATHS = ("/api/v1/media/{id}/like", "/api/v1/friendships/{id}/follow", "/api/v1/media/{id}/comment")
_FORM = "application/x-www-form-urlencoded; charset=UTF-8"


def _hex(rng: random.Random, n: int) -> str:
    return f"{rng.getrandbits(4 * n):0{n}x}"


def _uuid4(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _fill(path: str, rng: random.Random) -> str:
    return path.replace("{id}", str(rng.randint(10**9, 10**10)))


def _title(name: str) -> str:
    """How HTTP libraries write header names: Title-Case (the app's `ES` kept upper)."""
    return "-".join("ES" if p == "es" else p.capitalize() for p in name.split("-"))


# --------------------------------------------------------------------------------------
# Building signed requests


class _Builder:
    """Assembles one signed request from its headers in wire order."""

    def __init__(self, profile: ClientProfile, rng: random.Random, scenario: str, malicious: bool):
        self.profile = profile
        self.rng = rng
        self.scenario = scenario
        self.malicious = malicious
        self.n = 0
        self.app_token = app_token(profile)

    def request(
        self,
        ts: float,
        *,
        ip: str,
        method: str,
        path: str,
        headers: Sequence[tuple[str, str | None]],
        key_id: str | None,
        query: str | None = None,
        body_size: int | None = None,
        title_case: bool = False,
        http_version: str = "2",
        tls: dict[str, Any] | None = None,
        h2: str | None = None,
        network: dict[str, Any] | None = None,
        attestation: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """`headers`: (lower-case name, value) in wire order; the signature header's value
        is None and filled in here, over the canonical string of the other headers."""
        self.n += 1
        rid = f"{self.scenario}-{self.n:08d}-{_hex(self.rng, 8)}"
        body = hashlib.sha256(self.rng.randbytes(16)).hexdigest() if body_size is not None else None
        scheme = self.profile.signing
        signed: list[tuple[str, str]] = []
        for name, value in headers:
            if value is None:
                if scheme is None or key_id is None or name != scheme.header:
                    continue
                canonical = canonical_string(scheme, method=method, path=path, query=query,
                                             headers=[h for h in headers if h[1] is not None],  # type: ignore[misc]
                                             params=None, body_sha256=body)
                value = signature_value(key_id, mac(scheme.keys[key_id].secret, canonical))
            signed.append((_title(name) if title_case else name, value))
        out: dict[str, Any] = {
            "request_id": rid,
            "ts": round(ts, 3),
            "client_ip": ip,
            "method": method,
            "path": path,
        }
        if query is not None:
            out["query"] = query
        out["headers"] = [list(h) for h in signed]
        out["http_version"] = http_version
        if body is not None:
            out["body_sha256"] = body
            out["body_size"] = body_size
        if tls:
            out["tls"] = tls
        if h2 and http_version == "2":
            out["h2"] = {"fingerprint": h2}
        if network:
            out["network"] = network
        if attestation:
            out["attestation"] = attestation
        out["label"] = {"scenario": self.scenario, "malicious": self.malicious}
        return out


def app_token(profile: ClientProfile) -> str:
    """The app's name as its user agent writes it (the grammar's `app_name` group)."""
    return profile.user_agent.pattern.pattern.split("(?P<app_name>", 1)[-1].split(")", 1)[0]


def device_checksum(profile: ClientProfile, device_id: str) -> str:
    """The checksum header's value, computed as the profile's checksum rule says."""
    for r in profile.headers.consistency if profile.headers else ():
        if r.rule == "checksum":
            return hashlib.new(r.algorithm or "sha256", device_id.encode()).hexdigest()[: r.length or None]
    return hashlib.sha256(device_id.encode()).hexdigest()[:8]


def resign(profile: ClientProfile, request: dict[str, Any], key_id: str | None = None) -> dict[str, Any]:
    """A copy of `request` with its signature recomputed (with `key_id`, or the key it
    names): for tests that vary a signed field and want only that variation seen."""
    scheme = profile.signing
    if scheme is None:
        return dict(request)
    headers = [list(h) for h in request["headers"]]
    idx = next((i for i, (n, _) in enumerate(headers) if n.lower() == scheme.header), None)
    if idx is None:
        return {**request, "headers": headers}
    if key_id is None:
        m = scheme.format.fullmatch(headers[idx][1])
        key_id = m["key_id"] if m else None
    if key_id is None or key_id not in scheme.keys:
        raise ValueError(f"no signing key to re-sign with (got {key_id!r})")
    canonical = canonical_string(scheme, method=request["method"], path=request["path"], query=request.get("query"),
                                 headers=[(n, v) for n, v in headers], params=request.get("params"),
                                 body_sha256=request.get("body_sha256"))
    headers[idx][1] = signature_value(key_id, mac(scheme.keys[key_id].secret, canonical))
    return {**request, "headers": headers}


# --------------------------------------------------------------------------------------
# The genuine population


def _release_ts(v: AppVersion) -> float | None:
    if not v.released:
        return None
    try:
        return datetime.strptime(str(v.released), "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None


@dataclass(slots=True)
class _Release:
    version: AppVersion
    ts: float  # when its staged roll-out started
    codes: tuple[int, ...]
    key_id: str | None


def _releases(profile: ClientProfile, start_ts: float) -> list[_Release]:
    """The versions a genuine user can run (not retired), newest first, with their
    roll-out start; a version without a `released` date is put two weeks before the
    next newer one (or two weeks before the simulation for the newest)."""
    live = sorted((v for v in profile.versions.values() if v.status != "retired"), key=lambda v: v.sort_key,
                  reverse=True)
    if not live:
        raise ValueError(f"profile {profile.name} has no version that is not retired")
    out: list[_Release] = []
    newer_ts = start_ts
    for v in live:
        ts = _release_ts(v)
        ts = newer_ts - 14 * 86400 if ts is None else ts
        newer_ts = min(newer_ts, ts)
        out.append(_Release(v, ts, tuple(sorted(v.codes)), signing_key_for(profile, v)))
    return out


ROLLOUT_S = 7 * 86400.0  # a staged roll-out reaches every user within a week


@dataclass(slots=True)
class _Session:
    sid: str
    account: str | None
    ip: str
    network: dict[str, Any]
    conn: str
    bandwidth: float
    release: _Release
    code: int
    length: int
    token_ts: float
    step: int = 0
    cursor: int = 0
    last_badge: float = 0.0
    media: list[str] = field(default_factory=list)
    users: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _User:
    handset: DeviceSpec
    country: Country
    locale: str
    utc_offset: float  # hours, with the user's own rhythm folded in
    device_id: str
    accounts: list[str]  # empty: not logged in
    home: tuple[int, str, str]  # home ISP (asn, org) and the household's address
    carrier: tuple[int, str]
    activity: float  # sessions per second at the evening peak
    lag_s: float  # how long after a roll-out reaches the user the update is installed
    rollout_u: float  # the user's place in staged roll-outs
    split: float  # which per-ABI/density build of a version the device gets
    strong_integrity: bool
    abroad: Country | None = None  # travelling: Wi-Fi sessions from this country's networks
    clock_s: float = 0.0  # how far the phone's clock runs behind (negative: ahead), seconds
    vpn: bool = False
    reinstall_at: float | None = None
    session: _Session | None = None
    sec: int = -1  # the current second of event time, and what was requested in it
    sec_keys: set[tuple[str, str, str | None]] = field(default_factory=set)


class _Population:
    """Users, their handsets, places and habits, and the sessions they run."""

    # Shares of devices, drawn as exact counts (rounded down) so that small samples
    # are plain and large ones carry every kind of user.
    TRAVELLERS = 0.015
    EXPATS = 0.01
    VPN = 0.008
    SHARED = 0.03
    REINSTALLS = 0.02
    LOGGED_OUT = 0.02
    ACTION_SHARE = 0.10

    def __init__(self, profile: ClientProfile, rng: random.Random, catalogue: DeviceCatalogue | None,
                 count: int, start_ts: float, span: float):
        self.profile = profile
        self.rng = rng
        self.start_ts = start_ts
        self.span = span
        self.releases = _releases(profile, start_ts)
        self.models, self.model_weights = _models(catalogue)
        self.account_ids: set[str] = set()
        mean_len, mean_dur, mean_gap = _session_shape()
        # About one handset per 15 requests; more when the rate is so high that a device
        # could not send its share within the span (half its capacity at most).
        busy = mean_dur + SESSION_PAUSE_S
        capacity = mean_len * span / busy if span > busy else max(1.0, span / mean_gap)
        n = max(1, min(count, max(5, round(count / 15), math.ceil(2 * count / capacity))))
        self.users = self._households(n)
        self._special(n)
        self._calibrate(count)

    # ---------------------------------------------------------------- who

    def _account(self) -> str:
        while True:
            # Older accounts have shorter ids; the profile's format is 5..20 digits.
            digits = self.rng.choices((8, 9, 10, 11), weights=(1, 3, 4, 2))[0]
            a = str(self.rng.randint(10 ** (digits - 1), 10**digits - 1))
            if a not in self.account_ids:
                self.account_ids.add(a)
                return a

    def _households(self, n: int) -> list[_User]:
        rng = self.rng
        users: list[_User] = []
        weights = [c.weight for c in COUNTRIES]
        while len(users) < n:
            country = rng.choices(COUNTRIES, weights=weights)[0]
            home_isp = rng.choice(country.wifi)
            home = (home_isp[0], home_isp[1], _ipv4(rng, home_isp[0]))
            offset = rng.choice(country.utc_offsets)
            size = rng.choices((1, 2, 3, 4), weights=(60, 25, 10, 5))[0]
            for _ in range(min(size, n - len(users))):
                locales = [loc for loc, _ in country.locales]
                locale = rng.choices(locales, weights=[w for _, w in country.locales])[0]
                users.append(_User(
                    handset=_draw_handset(rng, rng.choices(self.models, weights=self.model_weights)[0]),
                    country=country, locale=locale, utc_offset=offset + rng.gauss(0, 1.0),
                    device_id=f"android-{_hex(rng, 16)}", accounts=[self._account()], home=home,
                    carrier=rng.choice(country.mobile), activity=rng.lognormvariate(0, 0.6),
                    lag_s=rng.lognormvariate(math.log(7 * 86400), 1.4), rollout_u=rng.random(), split=rng.random(),
                    strong_integrity=rng.random() < 0.4,
                ))
                users[-1].clock_s = _clock_offset(users[-1].device_id)
        return users

    def _special(self, n: int) -> None:
        rng, users = self.rng, self.users

        def pick(share: float) -> list[_User]:
            return rng.sample(users, int(share * n))

        for u in pick(self.TRAVELLERS):
            u.abroad = rng.choice([c for c in COUNTRIES if c.code != u.country.code])
        for u in pick(self.EXPATS):  # living abroad, phone still set to the home language
            origin = rng.choice([c for c in COUNTRIES if c.code != u.country.code])
            u.locale = origin.locales[0][0]
        for u in pick(self.VPN):
            u.vpn = True
        for u in pick(self.SHARED):  # a family device: a second account logs in on it
            u.accounts.append(self._account())
        for u in pick(self.REINSTALLS):
            u.reinstall_at = self.start_ts + rng.uniform(0.1, 0.9) * self.span
        for u in pick(self.LOGGED_OUT):
            u.accounts = []

    # ---------------------------------------------------------------- when

    def _calibrate(self, count: int) -> None:
        """Scale every user's session rate so the expected number of requests over the
        span is `count`: a user starts sessions at rate k * activity * rhythm while idle
        and is busy for a session's duration and pause after each, so the expected
        sessions over the span are span / (1 / (k * activity * rhythm) + busy)."""
        mean_len, mean_dur, _ = _session_shape()
        busy = mean_dur + SESSION_PAUSE_S
        steps = 24
        base = []
        for u in self.users:
            avg = sum(self._rhythm(u, self.start_ts + self.span * i / steps) for i in range(steps + 1)) / (steps + 1)
            base.append(u.activity * avg)

        def expected(k: float) -> float:
            return sum(self.span * mean_len / (1.0 / (k * b) + busy) for b in base)

        lo, hi = 1e-12, 1.0
        while expected(hi) < count and hi < 1e6:
            hi *= 10
        for _ in range(60):
            mid = math.sqrt(lo * hi)
            lo, hi = (mid, hi) if expected(mid) < count else (lo, mid)
        for u in self.users:
            u.activity *= hi

    @staticmethod
    def _rhythm(u: _User, ts: float) -> float:
        return _diurnal(ts / 3600.0 + u.utc_offset)

    def next_session(self, u: _User, after: float) -> float:
        """The next session start after `after`: a Poisson process thinned by the
        user's local time of day (fewer sessions at night)."""
        rng = self.rng
        t = after
        while True:
            t += rng.expovariate(u.activity)
            if rng.random() < self._rhythm(u, t):
                return t

    # ---------------------------------------------------------------- what

    def release_at(self, u: _User, ts: float) -> _Release:
        delay = u.rollout_u * ROLLOUT_S
        for r in self.releases:
            if r.ts + delay + u.lag_s <= ts:
                return r
        # Retired versions force an update: the newest the roll-out has reached.
        for r in self.releases:
            if r.ts + delay <= ts:
                return r
        return self.releases[-1]

    def start_session(self, u: _User, ts: float) -> _Session:
        rng = self.rng
        if u.reinstall_at is not None and ts >= u.reinstall_at:
            # Reinstalled: a new ANDROID_ID, the newest build from the store, same login.
            u.device_id = f"android-{_hex(rng, 16)}"
            u.reinstall_at, u.lag_s = None, 0.0
        release = self.release_at(u, ts)
        code = release.codes[min(len(release.codes) - 1, int(u.split * len(release.codes)))]
        account = None
        if u.accounts:
            account = u.accounts[0] if len(u.accounts) == 1 or rng.random() < 0.65 else rng.choice(u.accounts[1:])
        local = (ts / 3600.0 + u.utc_offset) % 24
        daytime = 8 <= local < 22
        c = u.country
        mobile = rng.random() < min(0.95, c.mobile_share * (1.15 if daytime else 0.6))
        if mobile:
            r = rng.random()
            if r < c.legacy_share:
                conn = rng.choices(("MOBILE.HSPA", "MOBILE.UMTS", "MOBILE.EDGE"), weights=(6, 3, 1))[0]
            elif r < c.legacy_share + c.nr_share:
                conn = "MOBILE.NR"
            else:
                conn = "MOBILE.LTE"
            asn, org = u.carrier  # roaming is routed through the home carrier
            net_country, ip = c.code, _ip(rng, asn)
        else:
            conn = "WIFI"
            if u.abroad is not None:  # hotel or café Wi-Fi
                asn, org = rng.choice(u.abroad.wifi)
                net_country, ip = u.abroad.code, _ipv4(rng, asn)
            else:
                asn, org, ip = u.home
                net_country = c.code
        network: dict[str, Any] = {"asn": asn, "as_org": org, "country": net_country, "hosting": False}
        if u.vpn and rng.random() < 0.6:
            asn, org = rng.choice(VPN_NETWORKS)
            exit_country = c.code if rng.random() < 0.5 else rng.choice(VPN_EXITS)
            network = {"asn": asn, "as_org": org, "country": exit_country, "hosting": True}
            ip = _ipv4(rng, asn)
        median_kbps = {"WIFI": 30000, "MOBILE.NR": 60000, "MOBILE.LTE": 12000, "MOBILE.HSPA": 2500,
                       "MOBILE.UMTS": 800, "MOBILE.EDGE": 150}[conn]
        # A quick look (the start-up calls and a little more) or a real visit.
        length = _session_length(rng)
        return _Session(sid=_uuid4(rng), account=account, ip=ip, network=network, conn=conn,
                        bandwidth=median_kbps * rng.lognormvariate(0, 0.5), release=release, code=code,
                        length=length, token_ts=ts - rng.uniform(0.3, 2.0), last_badge=ts)

    def next_call(self, s: _Session, ts: float) -> tuple[str, str, str | None, int | None]:
        """(method, path, query, body size) of the session's next request."""
        rng = self.rng
        step = s.step
        if step < len(STARTUP_PATHS):
            path = STARTUP_PATHS[step]
            if step == 0:
                return "POST", path, None, rng.randint(180, 900)
            return "GET", path, None, None
        if ts - s.last_badge > 120:
            s.last_badge = ts
            return "GET", BADGE_PATH, None, None
        if s.account is not None and rng.random() < self.ACTION_SHARE:
            kind = rng.choices(("like", "follow", "comment"), weights=(70, 18, 12))[0]
            # Users act on what they just looked at, once.
            if kind == "follow":
                uid = s.users.pop(rng.randrange(len(s.users))) if s.users else str(rng.randint(10**8, 10**10))
                return "POST", f"/api/v1/friendships/{uid}/follow", None, rng.randint(40, 120)
            mid = s.media.pop(rng.randrange(len(s.media))) if s.media else str(rng.randint(10**17, 10**18))
            size = rng.randint(50, 110) if kind == "like" else rng.randint(80, 700)
            return "POST", f"/api/v1/media/{mid}/{kind}", None, size
        r = rng.random()
        if r < 0.35:
            s.cursor += 1
            return "GET", "/api/v1/feed/timeline", f"max_id={rng.randint(10**17, 10**18)}&page={s.cursor}", None
        if r < 0.7:
            mid = str(rng.randint(10**17, 10**18))
            s.media = (s.media + [mid])[-20:]
            return "GET", f"/api/v1/media/{mid}/info", None, None
        if r < 0.85:
            uid = str(rng.randint(10**8, 10**10))
            s.users = (s.users + [uid])[-20:]
            return "GET", f"/api/v1/users/{uid}/info", None, None
        return "GET", "/api/v1/explore", None, None

    def gap(self, step: int, path: str) -> float:
        kind = "like" if "/like" in path or "/follow" in path else "comment" if "/comment" in path else "browse"
        return _gap(self.rng, step, kind)


def _clock_offset(device_id: str) -> float:
    """How far a phone's clock is off: most follow network time within a second or
    two, some drift by up to a minute, a few were set by hand minutes off (still
    within the signing skew). Drawn from the device id, so adding it moved no other
    draw of the population."""
    r = random.Random(f"clock:{device_id}")
    u = r.random()
    if u < 0.9:
        return r.gauss(0.0, 1.0)
    return r.choice((-1, 1)) * (r.uniform(3.0, 60.0) if u < 0.98 else r.uniform(60.0, 240.0))


def _session_length(rng: random.Random) -> int:
    """Requests in a session: a quick look (the start-up calls and a little more) or a
    real visit."""
    if rng.random() < 0.15:
        return len(STARTUP_PATHS) + rng.randint(0, 3)
    return len(STARTUP_PATHS) + min(150, int(rng.lognormvariate(math.log(12), 0.8)))


def _gap(rng: random.Random, step: int, kind: str) -> float:
    """Seconds until request `step` of a session: the start-up calls leave together
    (OkHttp multiplexes them on one connection), then a user reads and scrolls."""
    if step < len(STARTUP_PATHS):
        return rng.uniform(0.02, 0.35)
    if kind == "like":
        return rng.uniform(0.8, 8.0)
    if kind == "comment":
        return rng.uniform(6.0, 45.0)
    return min(120.0, max(0.3, rng.lognormvariate(math.log(4.0), 0.9)))


SESSION_PAUSE_S = 30.0  # the least time between two sessions of one device


@functools.lru_cache(maxsize=1)
def _session_shape() -> tuple[float, float, float]:
    """(mean requests, mean duration in seconds, mean gap) of a session, by sampling
    the same distributions with a fixed generator of its own (no effect on a seed's
    traffic): what the population needs to size itself to a count and a rate."""
    rng = random.Random("session-shape")
    n, total_len, total_dur, gaps = 4000, 0, 0.0, 0
    for _ in range(n):
        length = _session_length(rng)
        total_len += length
        for step in range(1, length):
            r = rng.random()
            kind = "browse" if r >= _Population.ACTION_SHARE else "comment" if r < 0.012 else "like"
            total_dur += _gap(rng, step, kind)
            gaps += 1
    return total_len / n, total_dur / n, total_dur / max(gaps, 1)


def genuine(profile: ClientProfile, count: int, seed: int, start_ts: float = DEFAULT_START_TS,
            rate: float | None = None, *, catalogue: DeviceCatalogue | None = None) -> Iterator[dict[str, Any]]:
    """Real users of the app: about one handset per 18 requests, drawn from the device
    catalogue's models by popularity (a small built-in list without a catalogue); app
    versions spread over the releases that are not retired, the newest most common and
    growing with event time (staged roll-outs and users' update lag); mobile and Wi-Fi
    networks of the users' countries, a few travellers, expats and VPN users; sessions
    that open with the app's start-up burst and then browse with the occasional
    action, more of them in the users' evening than at night; family devices shared by
    two accounts and reinstalls that change the device id. `rate` (requests per second
    of event time) sets the time span; without it, 20 per second."""
    rng = random.Random(f"genuine:{seed}")
    if count <= 0:
        return
    span = count / rate if rate else max(600.0, count / 20.0)
    pop = _Population(profile, rng, catalogue, count, start_ts, span)
    b = _Builder(profile, rng, "genuine", False)
    scheme = profile.signing
    tls_policy, transport, att = profile.tls, profile.transport, profile.attestation
    http_version = sorted(transport.http_versions)[0] if transport and transport.http_versions else "2"
    h2_fps = sorted(transport.h2_fingerprints) if transport and transport.h2_fingerprints else [OKHTTP_H2]
    alpn = tls_policy.alpn_first if tls_policy and tls_policy.alpn_first else "h2"
    provider = sorted(att.providers)[0] if att and att.providers else "play_integrity"
    app_verdict = sorted(att.app_recognition)[0] if att and att.app_recognition else "PLAY_RECOGNIZED"
    device_verdict = att.device_recognition if att and att.device_recognition else "MEETS_DEVICE_INTEGRITY"
    max_age = min(att.max_token_age_s or 600.0, 600.0) if att else 600.0
    sig_header = scheme.header if scheme else None
    ts_header = scheme.timestamp_header if scheme else "x-es-timestamp"
    order = profile.headers.order if profile.headers else (
        "x-es-device-id", "x-es-device-checksum", "x-es-session-id", "x-es-user-id", ts_header, sig_header or "",
        "accept-language", "x-es-connection-type", "x-es-bandwidth-kbps", "content-type", "content-length",
        "accept-encoding", "user-agent")
    dev_h = (profile.ids.get("device").header if profile.ids.get("device") else None) or "x-es-device-id"
    acct_h = (profile.ids.get("account").header if profile.ids.get("account") else None) or "x-es-user-id"
    sess_h = (profile.ids.get("session").header if profile.ids.get("session") else None) or "x-es-session-id"

    def ja4_for(version: str) -> str:
        if tls_policy:
            for rule in tls_policy.ja4:
                if rule.covers(version):
                    return rule.value
        return OKHTTP_JA4

    # The stream opens with a session starting at `start_ts`; every other user's first
    # session comes when their own rhythm brings it.
    heap: list[tuple[float, int]] = [(start_ts, 0)]
    for i, u in enumerate(pop.users[1:], start=1):
        heap.append((pop.next_session(u, start_ts), i))
    heapq.heapify(heap)
    pending: dict[int, tuple[str, str, str | None, int | None]] = {}
    emitted = 0
    while emitted < count and heap:
        ts, i = heapq.heappop(heap)
        u = pop.users[i]
        if u.session is None:
            u.session = pop.start_session(u, ts)
            pending[i] = pop.next_call(u.session, ts)
        s = u.session
        method, path, query, body_size = pending.pop(i)
        sec = int(ts - u.clock_s)  # the second the phone signs with
        if sec != u.sec:
            u.sec, u.sec_keys = sec, set()
        u.sec_keys.add((method, path, query))
        d = u.handset
        # Play Integrity tokens are requested at session start and renewed before they
        # age out.
        age = ts - s.token_ts
        if age > max_age * 0.5:
            s.token_ts, age = ts - rng.uniform(0.3, 2.0), rng.uniform(0.3, 2.0)
        lang = u.locale.replace("_", "-")
        s.bandwidth = min(999999.0, max(20.0, s.bandwidth * rng.lognormvariate(0, 0.08)))
        values: dict[str, str | None] = {
            dev_h: u.device_id,
            "x-es-device-checksum": device_checksum(profile, u.device_id),
            sess_h: s.sid,
            ts_header: str(int(ts - u.clock_s)),
            "accept-language": lang,
            "x-es-connection-type": s.conn,
            "accept-encoding": "gzip",
            "user-agent": ua_string(b.app_token, s.release.version.version, s.code, d, u.locale),
        }
        if sig_header:
            values[sig_header] = None
        if s.account is not None:
            values[acct_h] = s.account
        if s.step > 0:  # the first call of a session leaves before any bandwidth sample
            values["x-es-bandwidth-kbps"] = str(int(s.bandwidth))
        if body_size is not None:
            values["content-type"] = _FORM
            values["content-length"] = str(body_size)
        headers = [(n, values[n]) for n in order if n in values]
        strong = ["MEETS_STRONG_INTEGRITY"] if u.strong_integrity and d.sdk_int >= 31 else []
        yield b.request(
            ts, ip=s.ip, method=method, path=path, query=query, headers=headers, key_id=s.release.key_id,
            body_size=body_size, http_version=http_version,
            tls={"ja4": ja4_for(s.release.version.version), "alpn": alpn, "version": "1.3", "sni": TLS_SNI},
            h2=h2_fps[i % len(h2_fps)], network=s.network,
            attestation={"provider": provider, "app_recognition": app_verdict,
                         "device_recognition": ["MEETS_BASIC_INTEGRITY", device_verdict, *strong],
                         "request_hash_ok": True, "token_age_s": round(age, 1)},
        )
        emitted += 1
        s.step += 1
        if s.step < s.length:
            nxt = pop.next_call(s, ts)
            t = ts + pop.gap(s.step, nxt[1])
            # The signature covers method, path, query, the second and the device: the
            # app never sends the same call twice in one second.
            if int(t - u.clock_s) == u.sec and nxt[:3] in u.sec_keys:
                t = u.sec + 1 + u.clock_s + rng.uniform(0.01, 0.5)
            pending[i] = nxt
            heapq.heappush(heap, (t, i))
        else:
            u.session = None
            heapq.heappush(heap, (pop.next_session(u, ts + SESSION_PAUSE_S), i))


def genuine_request(profile: ClientProfile, seed: int, catalogue: DeviceCatalogue | None = None) -> dict[str, Any]:
    """One signed genuine request (a session's first call, a POST with a body), for tests
    that derive variations of it (see `resign` to re-sign after changing a signed field)."""
    return next(genuine(profile, 1, seed, catalogue=catalogue))


# --------------------------------------------------------------------------------------
# Attacks
#
# Every attack yields exactly `count` requests in event-time order, labelled with its
# scenario, and is deterministic for a seed. `rate` is the whole attack's requests per
# second of event time; `evasion` (0..2) is how careful the attacker is: 0 a tool with
# its defaults, 1 a tool tuned to look like the app, 2 the best such tools do today.

EVASION_LEVELS = (0, 1, 2)

# The hard-coded default device of a popular private-API library: every install
# of the library sends this same tuple (detections.md, adversary 1).
LIBRARY_DEFAULT_DEVICE = DeviceSpec("OnePlus", "ONEPLUS A3010", "OnePlus3T", "qcom", 420, 1080, 1920, 26, "8.0.0")

# Stacks beneath the headers, as the edge reports them. JA4 values of desktop stacks are
# the captured ones of config/fingerprints/known-stacks.yaml.
CURL_JA4 = "t13d3112h2_e8f1e7e78f70_b26ce05bbdd6"  # curl 7.88 on OpenSSL 3 (PHP curl, pycurl)
CURL_H2 = "3:100;4:10485760;2:0|1048510465|0|m,p,s,a"  # curl with nghttp2
# Go's x/net/http2 transport: ENABLE_PUSH 0, INITIAL_WINDOW_SIZE 4 MiB, MAX_HEADER_LIST_SIZE
# 10 MiB, a 1 GiB connection window, pseudo-headers written :authority, :method, :path,
# :scheme (encodeHeaders). uTLS can copy OkHttp's ClientHello; this stays Go's.
GO_H2 = "2:0;4:4194304;6:10485760|1073741824|0|a,m,p,s"
# OkHttp's SETTINGS copied into a custom HTTP/2 writer that still orders the
# pseudo-headers like Go does.
OKHTTP_SETTINGS_GO_PSEUDO = "4:16777216|16711681|0|a,m,p,s"

# Datacenter networks scripts and farms rent (asn, org, country).
HOSTING_NETWORKS = ((16509, "Amazon.com", "US"), (14061, "DigitalOcean", "US"), (24940, "Hetzner Online", "DE"),
                    (16276, "OVH SAS", "FR"), (63949, "Akamai Connected Cloud", "US"), (45102, "Alibaba Cloud", "SG"),
                    (8075, "Microsoft Azure", "US"))

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

_ACTIONS = (("like", 70), ("follow", 20), ("comment", 10))
_SOC_HARDWARE = {"qualcomm": ("qcom", "sm8250", "sdm660"), "mediatek": ("mt6765", "mt6785", "mt6877"),
                 "samsung": ("exynos9820", "s5e8825"), "hisilicon": ("kirin980", "hi6250"),
                 "unisoc": ("ums512", "sc9863a")}
_COMMON_WIDTHS = (480, 540, 600, 720, 800, 828, 900, 1080, 1170, 1200, 1284, 1440, 1600)


def _check_evasion(evasion: int) -> None:
    if evasion not in EVASION_LEVELS:
        raise ValueError(f"evasion must be 0, 1 or 2, got {evasion!r}")


@dataclass(frozen=True, slots=True)
class _Stack:
    """The TLS and HTTP stack beneath a client's headers, as the edge reports it."""

    tls: Mapping[str, Any]
    http_version: str
    h2: str | None = None


def _app_stack(profile: ClientProfile, version: str, h2: str | None = None) -> _Stack:
    """OkHttp on Conscrypt: the app's own stack, and what OkHttp with Conscrypt on a
    server JVM (or uTLS replaying OkHttp's ClientHello) presents."""
    tls_policy, transport = profile.tls, profile.transport
    ja4 = OKHTTP_JA4
    for rule in tls_policy.ja4 if tls_policy else ():
        if rule.covers(version):
            ja4 = rule.value
            break
    alpn = tls_policy.alpn_first if tls_policy and tls_policy.alpn_first else "h2"
    http = sorted(transport.http_versions)[0] if transport and transport.http_versions else "2"
    fp = sorted(transport.h2_fingerprints)[0] if transport and transport.h2_fingerprints else OKHTTP_H2
    return _Stack({"ja4": ja4, "alpn": alpn, "version": "1.3", "sni": TLS_SNI}, http, h2 or fp)


PYTHON_STACK = _Stack({"ja4": PYTHON_REQUESTS_JA4, "alpn": "http/1.1", "version": "1.3"}, "1.1")
CURL_H2_STACK = _Stack({"ja4": CURL_JA4, "alpn": "h2", "version": "1.3", "sni": TLS_SNI}, "2", CURL_H2)


class _AppHeaders:
    """The app's own header names and values, for clients that reproduce them."""

    def __init__(self, profile: ClientProfile):
        scheme = profile.signing
        self.sig = scheme.header if scheme else "x-es-signature"
        self.stamp = scheme.timestamp_header if scheme else "x-es-timestamp"
        ids = profile.ids
        self.dev = (ids["device"].header if "device" in ids else None) or "x-es-device-id"
        self.acct = (ids["account"].header if "account" in ids else None) or "x-es-user-id"
        self.sess = (ids["session"].header if "session" in ids else None) or "x-es-session-id"
        self.order: tuple[str, ...] = profile.headers.order if profile.headers else (
            self.dev, "x-es-device-checksum", self.sess, self.acct, self.stamp, self.sig, "accept-language",
            "x-es-connection-type", "x-es-bandwidth-kbps", "content-type", "content-length", "accept-encoding",
            "user-agent")
        self.profile = profile

    def values(self, *, device_id: str, session_id: str | None, account: str | None, signed_at: float, locale: str,
               conn: str | None, bandwidth: float | None, ua: str, body_size: int | None) -> dict[str, str | None]:
        v: dict[str, str | None] = {
            self.dev: device_id,
            "x-es-device-checksum": device_checksum(self.profile, device_id),
            self.stamp: str(int(signed_at)),
            self.sig: None,
            "accept-language": locale.replace("_", "-"),
            "accept-encoding": "gzip",
            "user-agent": ua,
        }
        if session_id is not None:
            v[self.sess] = session_id
        if account is not None:
            v[self.acct] = account
        if conn is not None:
            v["x-es-connection-type"] = conn
        if bandwidth is not None:
            v["x-es-bandwidth-kbps"] = str(int(bandwidth))
        if body_size is not None:
            v["content-type"] = _FORM
            v["content-length"] = str(body_size)
        return v

    def ordered(self, values: Mapping[str, str | None]) -> list[tuple[str, str | None]]:
        """In the app's order (what OkHttp's interceptors produce)."""
        return [(n, values[n]) for n in self.order if n in values]


def _attestation(profile: ClientProfile, recognition: Sequence[str], age: float,
                 hash_ok: bool = True) -> dict[str, Any]:
    att = profile.attestation
    provider = sorted(att.providers)[0] if att and att.providers else "play_integrity"
    app_verdict = sorted(att.app_recognition)[0] if att and att.app_recognition else "PLAY_RECOGNIZED"
    return {"provider": provider, "app_recognition": app_verdict, "device_recognition": list(recognition),
            "request_hash_ok": hash_ok, "token_age_s": round(age, 1)}


def _real_device_attestation(profile: ClientProfile, rng: random.Random, age: float | None = None) -> dict[str, Any]:
    """What a real, unmodified phone gets (a phone farm, or a token relayed from one)."""
    att = profile.attestation
    needed = att.device_recognition if att and att.device_recognition else "MEETS_DEVICE_INTEGRITY"
    return _attestation(profile, ["MEETS_BASIC_INTEGRITY", needed],
                        rng.uniform(0.3, 280.0) if age is None else age)


def _hosting(rng: random.Random, asn_org_country: tuple[int, str, str]) -> tuple[str, dict[str, Any]]:
    asn, org, country = asn_org_country
    return _ipv4(rng, asn), {"asn": asn, "as_org": org, "country": country, "hosting": True}


def _carrier_blocks(rng: random.Random, country: Country, n: int) -> list[tuple[str, dict[str, Any]]]:
    """`n` /24 blocks of the country's carriers and ISPs: where a residential or mobile
    proxy provider's exits sit (they concentrate in the blocks it has devices in)."""
    out = []
    nets = list(country.mobile) + list(country.wifi)
    for _ in range(n):
        asn, org = rng.choice(nets)
        a, b = rng.choice(_prefixes(asn))
        out.append((f"{a}.{b}.{rng.randint(0, 255)}",
                    {"asn": asn, "as_org": org, "country": country.code, "hosting": False}))
    return out


def _residential(rng: random.Random, country: Country) -> tuple[str, dict[str, Any]]:
    """An exit of a residential/mobile proxy network: a real carrier or ISP address."""
    asn, org = rng.choice(list(country.mobile) + list(country.wifi))
    return _ipv4(rng, asn), {"asn": asn, "as_org": org, "country": country.code, "hosting": False}


def _browse_call(rng: random.Random, page: int) -> tuple[str, str, str | None, int | None]:
    r = rng.random()
    if r < 0.5:
        return "GET", "/api/v1/feed/timeline", f"max_id={rng.randint(10**17, 10**18)}&page={page}", None
    if r < 0.8:
        return "GET", f"/api/v1/media/{rng.randint(10**17, 10**18)}/info", None, None
    return "GET", "/api/v1/explore", None, None


def _action_call(rng: random.Random) -> tuple[str, str, str | None, int | None]:
    kind = rng.choices([k for k, _ in _ACTIONS], weights=[w for _, w in _ACTIONS])[0]
    if kind == "follow":
        return "POST", f"/api/v1/friendships/{rng.randint(10**8, 10**10)}/follow", None, rng.randint(40, 120)
    size = rng.randint(50, 110) if kind == "like" else rng.randint(80, 700)
    return "POST", f"/api/v1/media/{rng.randint(10**17, 10**18)}/{kind}", None, size


def _startup_call(rng: random.Random, step: int) -> tuple[str, str, str | None, int | None]:
    if step == 0:
        return "POST", STARTUP_PATHS[0], None, rng.randint(180, 900)
    return "GET", STARTUP_PATHS[step], None, None


def _app_release(profile: ClientProfile, start_ts: float) -> tuple[str, int, str | None]:
    """The newest build real users run (farms and bots keep the app current)."""
    rel = _releases(profile, start_ts)[0]
    return rel.version.version, rel.codes[0], rel.key_id


def _in_order(events: list[dict[str, Any]], count: int) -> Iterator[dict[str, Any]]:
    events.sort(key=lambda e: e["ts"])
    yield from events[:count]


def _account_id(rng: random.Random) -> str:
    return str(rng.randint(10**8, 10**11 - 1))


def _copy_request(b: _Builder, request: dict[str, Any], ts: float, **changes: Any) -> dict[str, Any]:
    """The same request sent again: every signed field identical, a new request id."""
    b.n += 1
    return {**request, "request_id": f"{b.scenario}-{b.n:08d}-{_hex(b.rng, 8)}", "ts": round(ts, 3), **changes}


# --------------------------------------------------------------------------------------
# private_api_library


def private_api_library(profile: ClientProfile, count: int, seed: int, start_ts: float = DEFAULT_START_TS,
                        evasion: int = 0, rate: float | None = None) -> Iterator[dict[str, Any]]:
    """A script reproducing the private API from servers: desktop TLS, HTTP/1.1, the
    library's header order and case, one hard-coded default device for every account,
    a fixed delay between calls, identical retries when the API answers 429, datacenter
    IPs, no attestation. It copies the app's headers and signing (a checksum computed
    right, a content length that matches the body) with a key extracted from an old
    build. `evasion` 0..2: how closely it copies the app. 0: python-requests' defaults
    first, Title-Case names, only the identity, signing and locale headers, one device
    id for every account; 1: also the network headers (a random bandwidth on every call,
    where the app reports a measurement) and a device id derived from each account name
    (the tuple stays the library's default); 2: the current version and its key, the
    app's header names, order and case, jittered delays, but the same desktop stack
    beneath."""
    _check_evasion(evasion)
    rng = random.Random(f"private_api_library:{seed}")
    b = _Builder(profile, rng, "private_api_library", True)
    retired = [v for v in profile.versions.values() if v.status == "retired" and v.keys]
    old = max(retired, key=lambda v: v.sort_key) if retired and evasion < 2 else profile.newest_version
    version, code = old.version, min(old.codes)
    key_id = signing_key_for(profile, old)
    accounts = [str(rng.randint(10**9, 10**11)) for _ in range(max(5, count // 50))]
    shared_device = f"android-{_hex(rng, 16)}"
    # Libraries derive the id from the account name (md5 of a seed): one per account.
    per_account = {a: "android-" + hashlib.md5(f"{seed}:{a}".encode()).hexdigest()[:16] for a in accounts}
    delay = 2.0 if rate is None else 1.0 / rate
    retry_after = 1.0  # the library's fixed back-off before an identical retry
    ts = start_ts + rng.uniform(0, 5)
    hosts = [(16509, "Amazon.com"), (14061, "DigitalOcean"), (24940, "Hetzner Online")]
    scheme = profile.signing
    sig = scheme.header if scheme else "x-es-signature"
    stamp = scheme.timestamp_header if scheme else "x-es-timestamp"
    ua = ua_string(b.app_token, version, code, LIBRARY_DEFAULT_DEVICE, "en_US")
    emitted = 0
    i = 0
    while emitted < count:
        asn, org = hosts[i // 200 % len(hosts)]
        acct = accounts[i % len(accounts)]
        device_id = shared_device if evasion == 0 else per_account[acct]
        checksum = device_checksum(profile, device_id)
        post = i % 3 == 0
        method = "POST" if post else "GET"
        path = _fill(rng.choice(ACTION_PATHS if post else BROWSE_PATHS), rng)
        body_size = rng.randint(40, 400) if post else None
        h: list[tuple[str, str | None]] = []
        if evasion < 2:  # requests.Session's default headers come first
            h += [("accept-encoding", "gzip, deflate"), ("accept", "*/*"), ("connection", "keep-alive")]
        h += [("x-es-device-id", device_id), ("x-es-device-checksum", checksum), ("x-es-user-id", acct),
              (stamp, f"{ts:.0f}"), (sig, None), ("accept-language", "en-US")]
        if evasion >= 1:
            conn = "WIFI" if evasion >= 2 else rng.choice(("WIFI", "MOBILE.LTE"))
            h += [("x-es-connection-type", conn), ("x-es-bandwidth-kbps", str(rng.randint(500, 60000)))]
        if body_size is not None:
            h += [("content-type", _FORM), ("content-length", str(body_size))]
        if evasion >= 2:
            h.append(("accept-encoding", "gzip"))
        h.append(("user-agent", ua))
        req = b.request(
            ts, ip=f"{3 + asn % 50}.{asn % 250}.{i // 200 % 250}.{10 + i % 200}", method=method, path=path,
            headers=h, key_id=key_id, body_size=body_size, title_case=evasion < 2, http_version="1.1",
            tls={"ja4": PYTHON_REQUESTS_JA4, "alpn": "http/1.1", "version": "1.3"},
            network={"asn": asn, "as_org": org, "country": "US", "hosting": True},
        )
        # The API throttles the script now and then; it re-sends the very same request
        # (same signature, timestamp and body) after its fixed back-off.
        throttled = emitted + 1 < count and rng.random() < 0.05
        if throttled:
            req["response_status"] = 429
        yield req
        emitted += 1
        if throttled:  # a blocking script: the next call waits for the retry
            ts += retry_after
            yield _copy_request(b, {k: v for k, v in req.items() if k != "response_status"}, ts)
            emitted += 1
        ts += delay if evasion < 2 else delay * rng.uniform(0.7, 1.3)
        i += 1


# --------------------------------------------------------------------------------------
# emulator_farm


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


# --------------------------------------------------------------------------------------
# synthetic_devices


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


# --------------------------------------------------------------------------------------
# bot_network


def bot_network(profile: ClientProfile, count: int, seed: int, start_ts: float = DEFAULT_START_TS,
                evasion: int = 0, rate: float | None = None, *,
                catalogue: DeviceCatalogue | None = None) -> Iterator[dict[str, Any]]:
    """A credential-harvesting network: its users handed over their logins, and it runs
    their accounts (likes, follows, comments sold as engagement). Many accounts per device
    identity (a pool of about one identity per 25 accounts, each session of an account on
    whichever identity is free: accounts hop between devices) and per IP block (the few
    /24 blocks the network exits from), sessions of actions only, with none of the
    start-up and browsing calls of a real session. Devices are real catalogue phones and
    requests carry the current build's headers, TLS, HTTP/2 and a valid signature at
    every level. `evasion` 0: OkHttp on servers in datacenters, no attestation, a fixed
    3 s between actions; 1: residential proxies, Play Integrity tokens reused long after
    they were issued, 2-6 s between actions; 2: a phone farm behind mobile proxies:
    fresh tokens, human-like pauses, a config call before the actions. Per request it is
    then the app; only behaviour gives it away."""
    _check_evasion(evasion)
    rng = random.Random(f"bot_network:{seed}")
    b = _Builder(profile, rng, "bot_network", True)
    if count <= 0:
        return
    rate = rate or 3.0
    models, weights = _models(catalogue)
    version, code, key_id = _app_release(profile, start_ts)
    stack = _app_stack(profile, version)
    hdrs = _AppHeaders(profile)
    span = count / rate
    n_accounts = max(10, count // 12)
    n_identities = max(2, n_accounts // 25)
    country = rng.choice([c for c in COUNTRIES if c.code in ("IN", "BR", "ID", "TR", "US")])
    locales = [loc for loc, _ in country.locales]
    identities = [(f"android-{_hex(rng, 16)}", _draw_handset(rng, rng.choices(models, weights=weights)[0]),
                   rng.choice(locales)) for _ in range(n_identities)]
    accounts = [_account_id(rng) for _ in range(n_accounts)]
    if evasion == 0:
        dcs = rng.sample(HOSTING_NETWORKS, 2)
        blocks = []
        for dc in dcs:
            for _ in range(2):
                a, bb = rng.choice(_prefixes(dc[0]))
                blocks.append((f"{a}.{bb}.{rng.randint(0, 255)}",
                               {"asn": dc[0], "as_org": dc[1], "country": dc[2], "hosting": True}))
    else:
        blocks = _carrier_blocks(rng, country, 6 if evasion == 1 else 10)
    events: list[dict[str, Any]] = []
    while len(events) < count:
        ts = start_ts + rng.uniform(0, span)
        account = rng.choice(accounts)
        device_id, device, locale = rng.choice(identities)
        block, network = rng.choice(blocks)
        ip = f"{block}.{rng.randint(2, 254)}"
        ua = ua_string(b.app_token, version, code, device, locale)
        sid = _uuid4(rng)
        conn = "WIFI" if evasion == 0 else rng.choice(("MOBILE.LTE", "MOBILE.LTE", "WIFI"))
        bandwidth = rng.uniform(3000, 40000)
        calls = [("GET", "/api/v1/config", None, None)] if evasion == 2 else []
        calls += [_action_call(rng) for _ in range(rng.randint(3, 8))]
        token_ts = ts - (rng.uniform(900, 3600) if evasion == 1 else rng.uniform(0.3, 2.0))
        for step, (method, path, query, body_size) in enumerate(calls):
            values = hdrs.values(device_id=device_id, session_id=sid, account=account, signed_at=ts, locale=locale,
                                 conn=conn, bandwidth=bandwidth if step else None, ua=ua, body_size=body_size)
            att = None if evasion == 0 else _real_device_attestation(profile, rng, ts - token_ts)
            events.append(b.request(
                ts, ip=ip, method=method, path=path, query=query, headers=hdrs.ordered(values), key_id=key_id,
                body_size=body_size, http_version=stack.http_version, tls=dict(stack.tls), h2=stack.h2,
                network=network, attestation=att))
            ts += 3.0 if evasion == 0 else rng.uniform(2.0, 6.0) if evasion == 1 else min(
                60.0, rng.lognormvariate(math.log(5.0), 0.6))
    yield from _in_order(events, count)


# --------------------------------------------------------------------------------------
# replay


def replay(profile: ClientProfile, count: int, seed: int, start_ts: float = DEFAULT_START_TS,
           evasion: int = 0, rate: float | None = None, *,
           catalogue: DeviceCatalogue | None = None) -> Iterator[dict[str, Any]]:
    """Captured requests re-sent later: the attacker runs the real app on a few phones
    of its own behind an intercepting proxy, keeps the signed requests (mostly likes and
    follows, some feed calls) and re-sends each of them several times from other
    addresses and networks, byte for byte where it is signed (same signature, signing
    timestamp, device id, body hash, attestation token). The captured originals are in
    the output too, labelled `{"scenario": "replay", "malicious": false, "role":
    "captured"}`: real app traffic, which a replay detector needs to have seen. `evasion`
    0: a Python script re-sends them 15-30 minutes later from datacenters; 1: the app's
    TLS (uTLS), residential proxies abroad, 7-25 minutes later (signing timestamps and
    tokens out of date); 2: the app's stack, residential proxies of the same country on
    other carriers, 20-250 s later: inside the signature's clock skew and the token's
    lifetime, so per request it is the original; only the reuse gives it away."""
    _check_evasion(evasion)
    rng = random.Random(f"replay:{seed}")
    b = _Builder(profile, rng, "replay", True)
    if count <= 0:
        return
    rate = rate or 3.0
    span = count / rate
    n_captured = max(1, count // 8)
    delays = ((900.0, 1800.0), (420.0, 1500.0), (20.0, 250.0))[evasion]
    # The capture phones: a small population of real users (the attacker's own phones).
    capture_span = max(60.0, 0.4 * span - delays[0] / 2)
    captured = list(genuine(profile, n_captured, seed=int(rng.getrandbits(31)), start_ts=start_ts,
                            rate=n_captured / capture_span, catalogue=catalogue))
    events: list[dict[str, Any]] = []
    for k, e in enumerate(captured):
        e["request_id"] = f"replay-captured-{k:08d}-{_hex(rng, 8)}"
        e["label"] = {"scenario": "replay", "malicious": False, "role": "captured"}
        events.append(e)
    worth = [e for e in captured if e["method"] == "POST" and "launcher" not in e["path"]] or captured
    feed = [e for e in captured if e["path"] == "/api/v1/feed/timeline"]
    n_replays = count - len(events)
    python_headers = [["accept", "*/*"], ["connection", "keep-alive"]]
    for _ in range(n_replays):
        orig = rng.choice(worth) if rng.random() < 0.85 or not feed else rng.choice(feed)
        delay = rng.uniform(*delays)
        ts = orig["ts"] + delay
        changes: dict[str, Any] = {"label": {"scenario": "replay", "malicious": True}}
        if evasion == 0:
            ip, network = _hosting(rng, rng.choice(HOSTING_NETWORKS))
            changes.update(http_version="1.1", tls={"ja4": PYTHON_REQUESTS_JA4, "alpn": "http/1.1", "version": "1.3"},
                           headers=python_headers + [list(h) for h in orig["headers"]])
            changes["h2"] = None
        else:
            home = _COUNTRY.get(orig["network"]["country"], _COUNTRY["US"])
            if evasion == 1:
                ip, network = _residential(rng, rng.choice([c for c in COUNTRIES if c.code != home.code]))
            else:  # the original's country, another carrier or ISP
                nets = [n for n in list(home.mobile) + list(home.wifi) if n[0] != orig["network"]["asn"]]
                asn, org = rng.choice(nets or list(home.mobile))
                ip, network = _ipv4(rng, asn), {"asn": asn, "as_org": org, "country": home.code, "hosting": False}
        changes.update(client_ip=ip, network=network)
        if "attestation" in orig:
            att = dict(orig["attestation"])
            att["token_age_s"] = round(att.get("token_age_s", 0.0) + delay, 1)
            changes["attestation"] = att
        copy = _copy_request(b, orig, ts, **changes)
        if copy.get("h2") is None:
            copy.pop("h2", None)
        events.append(copy)
    yield from _in_order(events, count)


# --------------------------------------------------------------------------------------
# low_and_slow


def low_and_slow(profile: ClientProfile, count: int, seed: int, start_ts: float = DEFAULT_START_TS,
                 evasion: int = 0, rate: float | None = None, *,
                 catalogue: DeviceCatalogue | None = None) -> Iterator[dict[str, Any]]:
    """Engagement bots that stay under every rate threshold: hundreds of accounts
    registered in bulk (neighbouring account ids), one device id each, and one short
    session per account every 30-60 minutes (a like or a follow, nothing more), each
    from a fresh residential address. Every account runs the same cloned phone image:
    one device tuple, one app build, one locale across the fleet. Nothing is fast; what
    gives it away is the fingerprint. `evasion` 0: Python requests beneath (desktop TLS,
    HTTP/1.1, its header order and case); 1: uTLS with OkHttp's ClientHello but Go's
    HTTP/2; 2: OkHttp with Conscrypt, relayed Play Integrity tokens and full app
    sessions (start-up burst, a look at the feed, then the action): per request it is
    the app, and only population signals (one device fingerprint on hundreds of new
    device ids and accounts) can see it."""
    _check_evasion(evasion)
    rng = random.Random(f"low_and_slow:{seed}")
    b = _Builder(profile, rng, "low_and_slow", True)
    if count <= 0:
        return
    rate = rate or 1.0
    models, weights = _models(catalogue)
    version, code, key_id = _app_release(profile, start_ts)
    stack = PYTHON_STACK if evasion == 0 else _app_stack(profile, version, GO_H2 if evasion == 1 else None)
    hdrs = _AppHeaders(profile)
    session_len = len(STARTUP_PATHS) + 2 if evasion == 2 else 2
    interval = (1800.0, 3600.0)  # between two sessions of one account
    # Enough accounts that the fleet's total is `rate` while each stays slow.
    n_accounts = max(3, round(rate * sum(interval) / 2 / session_len))
    device = _draw_handset(rng, rng.choices(models, weights=weights)[0])
    country = _COUNTRY["US"]
    locale = "en_US"
    ua = ua_string(b.app_token, version, code, device, locale)
    base = rng.randint(10**10, 5 * 10**10)
    accounts = []
    heap: list[tuple[float, int]] = []
    for k in range(n_accounts):
        base += rng.randint(1, 60)  # registered in one batch: ids close together
        accounts.append((str(base), f"android-{_hex(rng, 16)}"))
        heap.append((start_ts + rng.uniform(0, interval[1]), k))
    heapq.heapify(heap)
    exits = [c for c in COUNTRIES if c.code in ("US", "GB", "DE", "BR", "IN")] if evasion == 0 else [country]
    events: list[dict[str, Any]] = []
    while len(events) < count:
        ts, k = heapq.heappop(heap)
        account, device_id = accounts[k]
        ip, network = _residential(rng, rng.choice(exits))
        sid = _uuid4(rng)
        conn = rng.choice(("WIFI", "MOBILE.LTE"))
        bandwidth = rng.uniform(3000, 40000)
        if evasion == 2:
            calls = [_startup_call(rng, s) for s in range(len(STARTUP_PATHS))]
            calls += [_browse_call(rng, 1), _action_call(rng)]
        else:
            calls = [("GET", "/api/v1/feed/timeline", None, None), _action_call(rng)]
        token_ts = ts - rng.uniform(0.3, 2.0)
        t = ts
        for step, (method, path, query, body_size) in enumerate(calls):
            values = hdrs.values(device_id=device_id, session_id=sid, account=account, signed_at=t, locale=locale,
                                 conn=conn, bandwidth=bandwidth if step else None, ua=ua, body_size=body_size)
            if evasion == 0:
                values["accept-encoding"] = "gzip, deflate"
                headers = [("accept", "*/*"), ("connection", "keep-alive")] + hdrs.ordered(values)
            else:
                headers = hdrs.ordered(values)
            events.append(b.request(
                t, ip=ip, method=method, path=path, query=query, headers=headers, key_id=key_id,
                body_size=body_size, title_case=evasion == 0, http_version=stack.http_version,
                tls=dict(stack.tls), h2=stack.h2, network=network,
                attestation=_real_device_attestation(profile, rng, t - token_ts) if evasion == 2 else None))
            t += rng.uniform(0.05, 0.3) if step < len(calls) - 2 else rng.uniform(3.0, 20.0)
        heapq.heappush(heap, (ts + rng.uniform(*interval), k))
    yield from _in_order(events, count)


# --------------------------------------------------------------------------------------
# fingerprint_spoofing


def fingerprint_spoofing(profile: ClientProfile, count: int, seed: int, start_ts: float = DEFAULT_START_TS,
                         evasion: int = 0, rate: float | None = None, *,
                         catalogue: DeviceCatalogue | None = None) -> Iterator[dict[str, Any]]:
    """A client that impersonates the app's TLS exactly (Go with uTLS replaying OkHttp's
    ClientHello: the app's JA4) with the current build's user agent, key and a real
    catalogue phone per account, from residential proxies, but gets the header order or
    the HTTP/2 fingerprint wrong. `evasion` 0: Go's HTTP/2 and Go's header order (a map:
    a new order on every request), no attestation; 1: Go's HTTP/2 and one fixed order
    copied from a capture with the user agent and encoding moved to the front, no
    attestation; 2: each client instance has one flaw left: OkHttp's SETTINGS copied but
    Go's pseudo-header order, or a perfect HTTP/2 writer with two of the app's headers
    swapped; Play Integrity tokens relayed from real phones."""
    _check_evasion(evasion)
    rng = random.Random(f"fingerprint_spoofing:{seed}")
    b = _Builder(profile, rng, "fingerprint_spoofing", True)
    if count <= 0:
        return
    rate = rate or 2.0
    models, weights = _models(catalogue)
    version, code, key_id = _app_release(profile, start_ts)
    hdrs = _AppHeaders(profile)
    span = count / rate
    n_clients = max(2, count // 60)
    country = rng.choice([c for c in COUNTRIES if c.code in ("US", "GB", "DE", "FR", "MX")])
    swap_at = [i for i, n in enumerate(hdrs.order[:-1]) if n in (hdrs.stamp, "accept-language")]
    clients = []
    for k in range(n_clients):
        flaw = "h2" if evasion < 2 or k % 2 == 0 else "order"
        h2 = GO_H2 if evasion < 2 else OKHTTP_SETTINGS_GO_PSEUDO if flaw == "h2" else None
        clients.append((_account_id(rng), f"android-{_hex(rng, 16)}",
                        _draw_handset(rng, rng.choices(models, weights=weights)[0]),
                        rng.choice(country.locales)[0], _app_stack(profile, version, h2), flaw))
    events: list[dict[str, Any]] = []
    while len(events) < count:
        account, device_id, device, locale, stack, flaw = rng.choice(clients)
        ts = start_ts + rng.uniform(0, span)
        ip, network = _residential(rng, country)
        ua = ua_string(b.app_token, version, code, device, locale)
        sid = _uuid4(rng)
        calls = [_startup_call(rng, s) for s in range(len(STARTUP_PATHS))]
        calls += [_browse_call(rng, p + 1) if rng.random() < 0.6 else _action_call(rng)
                  for p in range(rng.randint(2, 10))]
        token_ts = ts - rng.uniform(0.3, 2.0)
        for step, (method, path, query, body_size) in enumerate(calls):
            values = hdrs.values(device_id=device_id, session_id=sid, account=account, signed_at=ts, locale=locale,
                                 conn="WIFI", bandwidth=rng.uniform(8000, 60000) if step else None, ua=ua,
                                 body_size=body_size)
            headers = hdrs.ordered(values)
            if evasion == 0:
                rng.shuffle(headers)
                if [n for n, _ in headers] == [n for n, _ in hdrs.ordered(values)]:
                    headers.reverse()
            elif evasion == 1:
                front = [h for h in headers if h[0] in ("user-agent", "accept-encoding")]
                headers = front[::-1] + [h for h in headers if h[0] not in ("user-agent", "accept-encoding")]
            elif flaw == "order":
                names = [n for n, _ in headers]
                i = names.index(hdrs.order[swap_at[0]]) if swap_at and hdrs.order[swap_at[0]] in names else 0
                headers[i], headers[i + 1] = headers[i + 1], headers[i]
            att = _real_device_attestation(profile, rng, ts - token_ts) if evasion == 2 else None
            events.append(b.request(
                ts, ip=ip, method=method, path=path, query=query, headers=headers, key_id=key_id,
                body_size=body_size, http_version=stack.http_version, tls=dict(stack.tls), h2=stack.h2,
                network=network, attestation=att))
            ts += rng.uniform(0.02, 0.35) if step < len(STARTUP_PATHS) - 1 else rng.uniform(1.0, 12.0)
    yield from _in_order(events, count)


# --------------------------------------------------------------------------------------
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


def mixed(profile: ClientProfile, count: int, seed: int, start_ts: float = DEFAULT_START_TS,
          attack_share: float = 0.05, rate: float | None = None, *,
          catalogue: DeviceCatalogue | None = None, attacks: Sequence[str] = ("private_api_library",),
          evasion: int | None = 0) -> list[dict[str, Any]]:
    """Genuine traffic with attacks interleaved in event time: `attack_share` of the
    requests, split evenly between `attacks`, each spread over the genuine traffic's
    span. `evasion` None draws each attack's level from the seed."""
    n_attack = int(count * attack_share)
    events = list(genuine(profile, count - n_attack, seed, start_ts, rate=rate, catalogue=catalogue))
    if n_attack and attacks:
        span = (events[-1]["ts"] - start_ts) if events else 60.0
        rng = random.Random(f"mixed:{seed}")
        for k, name in enumerate(attacks):
            n = n_attack // len(attacks) + (1 if k < n_attack % len(attacks) else 0)
            if n == 0:
                continue
            level = rng.choice(EVASION_LEVELS) if evasion is None else evasion
            offset = rng.uniform(0, 0.2 * span) if len(attacks) > 1 else 0.0
            arate = n / max(span - offset, 1.0)
            events.extend(_call(ATTACKS[name], profile, n, seed, start_ts + offset, arate, catalogue, level))
    events.sort(key=lambda e: e["ts"])
    return events


def realistic_day(profile: ClientProfile, count: int, seed: int, start_ts: float = DEFAULT_START_TS,
                  evasion: int | None = None, rate: float | None = None, *,
                  catalogue: DeviceCatalogue | None = None) -> Iterator[dict[str, Any]]:
    """The `mixed` scenario: about 99% genuine traffic with every attack interleaved,
    each at an evasion level drawn from the seed (or the one given)."""
    yield from mixed(profile, count, seed, start_ts, attack_share=0.01, rate=rate, catalogue=catalogue,
                     attacks=tuple(ATTACKS), evasion=evasion)


SCENARIOS: dict[str, Callable[..., Iterator[dict[str, Any]]]] = {
    "genuine": genuine,
    **ATTACKS,
    "mixed": realistic_day,
}


def simulate(scenario: str, profile: ClientProfile, count: int, seed: int, start_ts: float = DEFAULT_START_TS,
             rate: float | None = None, *, catalogue: DeviceCatalogue | None = None,
             evasion: int | None = None) -> Iterator[dict[str, Any]]:
    """`count` labelled requests of a scenario (SCENARIOS). `evasion`: the attack's
    level (0..2; default each scenario's own, 0 for the attacks); ignored by genuine."""
    try:
        gen = SCENARIOS[scenario]
    except KeyError:
        raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}") from None
    if evasion is not None:
        _check_evasion(evasion)
    return _call(gen, profile, count, seed, start_ts, rate, catalogue, evasion)


__all__ = [
    "ANDROID_RELEASE", "ATTACKS", "BUILTIN_MODELS", "COUNTRIES", "DEFAULT_START_TS", "DeviceSpec", "EVASION_LEVELS",
    "LIBRARY_DEFAULT_DEVICE", "NEEDS_STATE", "OKHTTP_H2", "OKHTTP_JA4", "PYTHON_REQUESTS_JA4", "SCENARIOS",
    "STATELESS_DETECTABLE", "app_token", "bot_network", "device_checksum", "emulator_farm", "fingerprint_spoofing",
    "genuine", "genuine_request", "low_and_slow", "mixed", "private_api_library", "realistic_day", "replay", "resign",
    "simulate", "synthetic_devices", "ua_string",
]
