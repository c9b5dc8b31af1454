"""Population: one fingerprint (device tuple + screen + app version + TLS + header
order) suddenly carried by many device ids or accounts, against its own baseline (an
EWMA of past windows that learns only from windows it did not flag, so an attacker
cannot train it).

A popular real phone also carries many device ids, but each behind its own line and
with its own account: its devices spread over as many IP blocks as there are
devices, and its accounts over the whole id space. A farm's or a library's default
device concentrates them: behind few blocks or hosting networks, or on accounts
registered in bulk (numeric ids packed into a narrow range). A surge counts only when
concentrated in one of these ways. A new fingerprint starts from a small prior, so a
library's default device is caught in the first window it appears. Weights are below
"suspicious" alone: a fingerprint flag reaches every request of that fingerprint,
real users of the same phone included; the fingerprint's alert names the surge."""

from __future__ import annotations

from typing import Any, ClassVar

from detector.behaviour.records import BehaviourSettings, EntityRecord
from detector.behaviour.state import touch, window_start

DEVICE_SURGE = "population.fingerprint_device_surge"
ACCOUNT_SURGE = "population.fingerprint_account_surge"
MAX_BLOCKS_PER_DEVICE = 0.5
MAX_ID_SPACING = 1000  # mean gap between numeric account ids registered in one batch


class Population:
    etype: ClassVar[str] = "fingerprint"
    codes: ClassVar[dict[str, str]] = {
        DEVICE_SURGE: "a fingerprint carried by far more device ids than its baseline, concentrated on few networks",
        ACCOUNT_SURGE: "a fingerprint carried by far more accounts than its baseline, concentrated on few networks",
    }

    def observe(self, st: dict[str, Any], r: EntityRecord, s: BehaviourSettings) -> list[tuple[str, str]]:
        w = window_start(r.ts, s.population_window_s)
        cur = st.get("w")
        if cur is None or w > cur:
            if cur is not None and not st.get("flagged"):
                a = s.population_alpha
                st["bd"] = (1 - a) * st.get("bd", s.population_prior) + a * len(st.get("dev", {}))
                st["ba"] = (1 - a) * st.get("ba", s.population_prior) + a * len(st.get("acc", {}))
            st["w"], st["dev"], st["acc"], st["blk"], st["host"], st["n"], st["flagged"] = w, {}, {}, {}, 0, 0, False
        elif w < cur:
            return []  # a late event of a closed window: its baseline is already counted
        cap = s.max_distinct * 4
        if r.device:
            touch(st["dev"], r.device, r.ts, cap)
        if r.account:
            touch(st["acc"], r.account, r.ts, cap)
        touch(st["blk"], r.ip.rsplit(".", 1)[0] if "." in r.ip else r.ip[:14], r.ts, cap)
        st["n"] += 1
        st["host"] += 1 if r.hosting else 0
        devices, accounts, blocks = len(st["dev"]), len(st["acc"]), len(st["blk"])
        concentrated = (blocks <= MAX_BLOCKS_PER_DEVICE * max(devices, accounts) or st["host"] * 2 >= st["n"]
                        or _bulk_registered(st["acc"]))
        if not concentrated:
            return []
        out = []
        base_d = st.get("bd", s.population_prior)
        if devices >= max(s.population_min_devices, s.population_ratio * base_d):
            out.append((DEVICE_SURGE, f"fingerprint {r.key} carried by {devices} device ids behind {blocks} IP blocks "
                                      f"this window (baseline {base_d:.1f})"))
        base_a = st.get("ba", s.population_prior)
        if accounts >= max(s.population_min_accounts, s.population_ratio * base_a):
            out.append((ACCOUNT_SURGE, f"fingerprint {r.key} carried by {accounts} accounts behind {blocks} IP blocks "
                                       f"this window (baseline {base_a:.1f})"))
        if out:
            st["flagged"] = True
        return out


def _bulk_registered(accounts: dict[str, float]) -> bool:
    ids = [int(a) for a in accounts if a.isdigit()]
    if len(ids) < 10:
        return False
    return (max(ids) - min(ids)) / (len(ids) - 1) <= MAX_ID_SPACING
