"""Replay: a request signature seen again within its TTL. Re-sent from the same
network it may be a client retry (weak); from another IP, ASN or device it is a
captured request replayed (strong), graded low / medium / high by how many networks
reused it (as AWS WAF grades token reuse). The first request id per signature is
stored, so a request re-processed after a restart is never its own replay."""

from __future__ import annotations

from typing import Any, ClassVar

from detector.behaviour.records import BehaviourSettings, EntityRecord

REUSED = "replay.signature_reused"
REUSED_ELSEWHERE = "replay.signature_reused_elsewhere"


def grade(networks: int) -> str:
    return "low" if networks <= 2 else "medium" if networks <= 4 else "high"


class ReplayDetector:
    etype: ClassVar[str] = "signature"
    codes: ClassVar[dict[str, str]] = {
        REUSED: "a request signature seen again from the same network and device (a retry or a local replay)",
        REUSED_ELSEWHERE: "a request signature seen again from another IP, ASN or device: a captured request replayed",
    }

    def observe(self, st: dict[str, Any], r: EntityRecord, s: BehaviourSettings) -> list[tuple[str, str]]:
        first = st.get("first")
        if first is None or r.ts - first[1] > s.replay_ttl_s:
            st["first"] = [r.request_id, r.ts, r.ip, r.asn, r.device]
            st["uses"] = 1
            st["ips"] = [r.ip]
            st["asns"] = [r.asn]
            st["devs"] = [r.device]
            return []
        if r.request_id == first[0]:
            return []  # the first request itself, processed again
        st["uses"] = st.get("uses", 1) + 1
        for name, value in (("ips", r.ip), ("asns", r.asn), ("devs", r.device)):
            seen = st.setdefault(name, [])
            if value not in seen and len(seen) < 64:
                seen.append(value)
        networks = len(st["ips"])
        if networks == 1 and len(st["devs"]) == 1:
            return [(REUSED, f"signature used {st['uses']} times within {s.replay_ttl_s:.0f} s, first by request "
                             f"{first[0]}, always from {r.ip}")]
        return [(REUSED_ELSEWHERE, f"signature of request {first[0]} reused {st['uses'] - 1} time(s) from "
                                   f"{networks} IPs, {len(st['asns'])} ASNs and {len(st['devs'])} devices "
                                   f"(grade {grade(networks)})")]
