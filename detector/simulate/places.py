"""Where simulated users are: countries with their carriers, home ISPs, locales and time
zones, consumer VPNs, stable address blocks per ASN and the daily rhythm of use."""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass

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
            ((7922, "Comcast Cable"), (20115, "Charter Communications"), (7018, "AT&T Services"),
             (701, "Verizon Fios")),
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
            ((131445, "Advanced Wireless Network (AIS)"), (24378, "True Move")),
            ((7470, "True Internet"), (45758, "3BB")),
            0.55, 0.2, 0.01, 3),
    Country("SA", (3.0,), (("ar_SA", 0.8), ("en_SA", 0.2)),
            ((25019, "Saudi Telecom"), (35819, "Mobily")), ((25019, "Saudi Telecom"), (35753, "ITC")),
            0.5, 0.35, 0.0, 2),
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
