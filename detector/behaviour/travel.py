"""Travel of one account: countries further apart than a person can travel in the
time between two requests (great-circle distance between country centroids, so only
large jumps count), and hopping between many ASNs within an hour. Hosting networks
(VPN exits) are left out: switching a VPN on and off is not travel. A traveller on
foreign Wi-Fi whose mobile data still exits at home alternates between two countries
all day, so a jump counts only once the account has been in three or more countries
within the window: proxy rotation, not a trip."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

from detector.behaviour.base import Finding
from detector.behaviour.records import BehaviourSettings, EntityRecord
from detector.behaviour.state import count_since, touch

IMPOSSIBLE_TRAVEL = "behaviour.impossible_travel"
ASN_HOPPING = "behaviour.asn_hopping"


def km(a: tuple[float, float], b: tuple[float, float]) -> float:
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(h))


class Travel:
    state_key: ClassVar[str] = "Travel"  # stored state's key: never change it
    state_version: ClassVar[int] = 1
    etype: ClassVar[str] = "account"
    codes: ClassVar[Mapping[str, str]] = {
        IMPOSSIBLE_TRAVEL: "an account in two countries further apart than travel allows in the time between",
        ASN_HOPPING: "an account hopping between many networks (ASNs) within an hour",
    }

    def observe(self, st: dict[str, Any], r: EntityRecord, s: BehaviourSettings) -> list[Finding]:
        out = []
        if r.asn is not None:
            seen = st.setdefault("asn", {})
            touch(seen, str(r.asn), r.ts, s.max_distinct)
            n = count_since(seen, r.ts - s.asn_window_s)
            if n > s.asn_max:
                out.append(Finding(ASN_HOPPING, f"account {r.key} used {n} networks (ASNs) within "
                                         f"{s.asn_window_s / 60:.0f} min"))
        if r.country and not r.hosting:
            last = st.get("geo")
            countries = st.setdefault("cc", {})
            touch(countries, r.country, r.ts, 32)
            if last is not None and last[1] != r.country and count_since(countries, r.ts - s.asn_window_s) >= 3:
                a, b = s.centroids.get(last[1]), s.centroids.get(r.country)
                if a and b:
                    dist = km(a, b)
                    hours = max(abs(r.ts - last[0]), 1.0) / 3600
                    if dist >= s.travel_min_km and dist / hours > s.travel_max_kmh:
                        out.append(Finding(IMPOSSIBLE_TRAVEL, f"account {r.key} in {last[1]} then {r.country} "
                                                       f"({dist:.0f} km) {hours * 60:.0f} min later"))
            if last is None or r.ts >= last[0]:
                st["geo"] = [r.ts, r.country]
        return out
