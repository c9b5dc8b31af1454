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

from collections.abc import Mapping
from typing import Any, ClassVar

from detector.behaviour.base import Finding
from detector.behaviour.flags import Scope
from detector.behaviour.records import BehaviourSettings, EntityRecord
from detector.behaviour.state import touch, window_start
from detector.entities import account_number

DEVICE_SURGE = "population.fingerprint_device_surge"
ACCOUNT_SURGE = "population.fingerprint_account_surge"
BULK_ACCOUNTS = "population.bulk_registered_accounts"
MAX_ACCOUNT_ID = 2**63 - 1  # account_number() returns only ids below 2**63
MAX_BLOCKS_PER_DEVICE = 0.5


class Population:
    state_key: ClassVar[str] = "Population"  # stored state's key: never change it
    state_version: ClassVar[int] = 1
    etype: ClassVar[str] = "fingerprint"
    codes: ClassVar[Mapping[str, str]] = {
        DEVICE_SURGE: "a fingerprint carried by far more device ids than its baseline, concentrated on few networks",
        ACCOUNT_SURGE: "a fingerprint carried by far more accounts than its baseline, concentrated on few networks",
        BULK_ACCOUNTS: "a fingerprint carried by a run of accounts registered in one batch (neighbouring numeric ids); "
                       "applies to the requests of accounts in that id range",
    }

    def observe(self, st: dict[str, Any], r: EntityRecord,
                s: BehaviourSettings) -> list[Finding]:
        w = window_start(r.ts, s.population_window_s)
        cur = st.get("w")
        if cur is None or w > cur:
            if cur is not None and not st.get("flagged"):
                a = s.population_alpha
                st["bd"] = (1 - a) * st.get("bd", s.population_prior) + a * len(st.get("dev", {}))
                st["ba"] = (1 - a) * st.get("ba", s.population_prior) + a * len(st.get("acc", {}))
            st["w"], st["dev"], st["acc"], st["blk"], st["host"], st["n"], st["flagged"] = w, {}, {}, {}, 0, 0, False
            st.pop("run", None)
        elif w < cur:
            return []  # a late event of a closed window: its baseline is already counted
        cap = s.max_distinct * 4
        if r.device:
            touch(st["dev"], r.device, r.ts, cap)
        out: list[Finding] = []
        if r.account:
            if touch(st["acc"], r.account, r.ts, cap) and account_number(r.account) is not None:
                run = densest_run(st["acc"], s.population_bulk_max_gap)
                if run is not None and run[0] >= s.population_bulk_min_accounts:
                    st["run"] = list(run)
            run = st.get("run")
            if run is not None:
                n, lo, hi = run
                # the rest of the batch lies around the run: as far again as the run spans
                pad = max(s.population_bulk_max_gap, hi - lo)
                out.append(Finding(BULK_ACCOUNTS, f"fingerprint {r.key} carried by {n} accounts with neighbouring ids "
                                           f"{lo}-{hi} this window (registered in one batch)",
                            Scope(account_ids=(max(0, lo - pad), min(MAX_ACCOUNT_ID, hi + pad)))))
        touch(st["blk"], r.ip.rsplit(".", 1)[0] if "." in r.ip else r.ip[:14], r.ts, cap)
        st["n"] += 1
        st["host"] += 1 if r.hosting else 0
        devices, accounts, blocks = len(st["dev"]), len(st["acc"]), len(st["blk"])
        # (a bulk-registered run is not counted here: it has its own flag, scoped to the
        # batch's ids; the surge flags reach every user of the fingerprint)
        concentrated = blocks <= MAX_BLOCKS_PER_DEVICE * max(devices, accounts) or st["host"] * 2 >= st["n"]
        if not concentrated:
            return out
        base_d = st.get("bd", s.population_prior)
        if devices >= max(s.population_min_devices, s.population_ratio * base_d):
            out.append(Finding(DEVICE_SURGE, f"fingerprint {r.key} carried by {devices} device ids behind {blocks} "
                                             f"IP blocks this window (baseline {base_d:.1f})"))
        base_a = st.get("ba", s.population_prior)
        if accounts >= max(s.population_min_accounts, s.population_ratio * base_a):
            out.append(Finding(ACCOUNT_SURGE, f"fingerprint {r.key} carried by {accounts} accounts behind {blocks} "
                                              f"IP blocks this window (baseline {base_a:.1f})"))
        if out:
            st["flagged"] = True
        return out


def densest_run(accounts: dict[str, float], max_gap: int) -> tuple[int, int, int] | None:
    """The longest run of numeric account ids whose neighbours are at most `max_gap`
    apart: (length, lowest, highest). Accounts registered in one batch get neighbouring
    ids; real users of one phone model have ids from the whole id space, and one real
    account among a batch's neighbours does not hide it (only the densest run counts)."""
    ids = sorted(n for a in accounts if (n := account_number(a)) is not None)
    if not ids:
        return None
    best = (1, ids[0], ids[0])
    start = 0
    for i in range(1, len(ids)):
        if ids[i] - ids[i - 1] > max_gap:
            start = i
        elif i - start + 1 > best[0]:
            best = (i - start + 1, ids[start], ids[i])
    return best
