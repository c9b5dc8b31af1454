"""Replay: a request signature seen again within its TTL. Re-sent from the same
network it may be a client retry (weak); from another IP, ASN or device it is a
captured request replayed (strong), graded low / medium / high by how many networks
reused it (as AWS WAF grades token reuse). The first request id per signature is
stored, so a request re-processed after a restart is never its own replay.

The replaying request's own verdict was made at ingest before the reuse was known:
the reuse finding names it (`Finding.revise`), and the shard emits a revision of that
verdict (detector/behaviour/revision.py). The same device re-sending a signed request
within `replay_retry_s` from a non-hosting network is an app retry (`is_retry`), not
a replay: weak `replay.signature_reused`, no revision."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from detector.behaviour.base import Finding
from detector.behaviour.flags import Scope
from detector.behaviour.records import BehaviourSettings, EntityRecord
from detector.entities import ip_block

REUSED = "replay.signature_reused"
REUSED_ELSEWHERE = "replay.signature_reused_elsewhere"
DEVICE_REPLAYED = "replay.device_replayed"


def grade(networks: int) -> str:
    return "low" if networks <= 2 else "medium" if networks <= 4 else "high"


class ReplayDetector:
    state_key: ClassVar[str] = "ReplayDetector"  # stored state's key: never change it
    state_version: ClassVar[int] = 1
    etype: ClassVar[str] = "signature"
    codes: ClassVar[Mapping[str, str]] = {
        REUSED: "a request signature seen again from the same network and device (a retry or a local replay)",
        REUSED_ELSEWHERE: "a request signature seen again from another IP, ASN or device: a captured request replayed",
    }

    def observe(self, st: dict[str, Any], r: EntityRecord, s: BehaviourSettings) -> list[Finding]:
        first = st.get("first")
        if first is None or r.ts - first[1] > s.replay_ttl_s:
            st["first"] = _first(r)
            st["uses"] = 1
            st["ips"] = [r.ip]
            st["asns"] = [r.asn]
            st["devs"] = [r.device]
            return []
        if r.request_id == first[0]:
            return []  # the first request itself, processed again
        if first[1] - r.ts > s.replay_ttl_s:
            return []  # a use older than the held first by more than the TTL: another window
        if r.ts < first[1]:
            # The use held as the first is later in event time: the records of several
            # ingest processes reach this shard in any order. `r` is the original; the
            # one held is its reuse, whose verdict is the one to revise.
            original, reuse = r, _held(first, r)
            st["first"] = _first(r)
        else:
            original, reuse = _held(first, r), r
        st["uses"] = st.get("uses", 1) + 1
        for name, value in (("ips", r.ip), ("asns", r.asn), ("devs", r.device)):
            seen = st.setdefault(name, [])
            if value not in seen and len(seen) < 64:
                seen.append(value)
        networks = len(st["ips"])
        after = Scope(after_ts=original.ts)  # never the first use, however late it is scored
        if networks == 1 and len(st["devs"]) == 1:
            return [Finding(REUSED, f"signature used {st['uses']} times within {s.replay_ttl_s:.0f} s, "
                                    f"first by request {original.request_id}, always from {r.ip}", after)]
        if is_retry(original, reuse, s):
            return [Finding(REUSED, f"signature of request {original.request_id} re-sent "
                                    f"{reuse.ts - original.ts:.0f} s later by the same device from {reuse.ip}: "
                                    f"a retry after a network switch, not a replay", after)]
        return [Finding(REUSED_ELSEWHERE, f"signature of request {original.request_id} reused {st['uses'] - 1} "
                                          f"time(s) from {networks} IPs, {len(st['asns'])} ASNs and "
                                          f"{len(st['devs'])} devices (grade {grade(networks)}; this request "
                                          f"from {reuse.ip}, {max(0.0, reuse.ts - original.ts):.0f} s after it)",
                        after, revise=reuse)]


def is_retry(original: EntityRecord, reuse: EntityRecord, s: BehaviourSettings) -> bool:
    """A genuine app retry of the same signed request, not a replay: the same device
    re-sends it within `replay_retry_s` (15 s) of the first use, from a network that
    is not a hosting network (a phone switching from Wi-Fi to mobile data gets a new
    address on a carrier; a replay service runs on servers or comes later)."""
    return (original.device is not None and reuse.device == original.device and not reuse.hosting
            and 0.0 <= reuse.ts - original.ts <= s.replay_retry_s)


def _first(r: EntityRecord) -> list[Any]:
    """What the signature keeps of its first use: enough to tell a retry (device,
    time, network) and, should a use dated earlier arrive after it, to revise its
    verdict: its stateless level, score and codes and whether it came from a hosting
    network, kept only when any is set (a genuine first use costs nothing more)."""
    first: list[Any] = [r.request_id, r.ts, r.ip, r.asn, r.device]
    if r.level or r.codes or r.hosting:
        first.extend((r.level, r.score, list(r.codes), r.hosting))
    return first


def _held(first: list[Any], r: EntityRecord) -> EntityRecord:
    """The record of the held first use, as far as it was kept; its profile is that of
    `r`, the other use of the same signature."""
    extra: list[Any] = first[5:9] if len(first) >= 9 else [0, 0.0, [], False]
    level, score, codes, hosting = extra
    return EntityRecord(r.etype, r.key, first[0], first[1], int(level), float(score), tuple(codes), r.profile,
                        first[2], first[3], bool(hosting), None, first[4], None, None, None, r.sig, None)


class DeviceReplay:
    """The device's side of a replay. The signature shard sees a replay only once its
    signature was used twice, so the first replay of every captured request would pass;
    but a replay also repeats the captured request's device id and signing time. Once
    one of a device's own signatures comes back from another IP block, its requests
    signed longer before arrival than the device's own requests are (the median of its
    last 8 signing ages: its clock offset, plus a margin) are replays too: the
    flag is scoped to those, so the device's owner is not flagged for its own use."""

    state_key: ClassVar[str] = "DeviceReplay"  # stored state's key: never change it
    state_version: ClassVar[int] = 1
    etype: ClassVar[str] = "device"
    codes: ClassVar[Mapping[str, str]] = {
        DEVICE_REPLAYED: "a device whose signed requests come back from other addresses; applies to its requests "
                         "signed longer before arrival than its own requests are",
    }

    def observe(self, st: dict[str, Any], r: EntityRecord, s: BehaviourSettings) -> list[Finding]:
        """A request of the device's own (first use of its signature): keep its signing
        age, if the signature and its time checked out (a forged request naming the
        device must not move its usual age)."""
        if r.sign_age is not None and r.sig and not any(c.startswith("signature.") for c in r.codes):
            ages = st.setdefault("age", [])
            ages.append(r.sign_age)
            if len(ages) > 8:
                del ages[0]
        return []

    def replayed(self, st: dict[str, Any], r: EntityRecord, s: BehaviourSettings,
                 first_block: str) -> list[Finding]:
        """A request repeating a signature the device already sent first from the IP
        block `first_block`."""
        if ip_block(r.ip) == first_block:
            return []  # a retry from the same line (IPv6 privacy addresses change within a /48)
        # the median of its recent own ages: its clock offset, which one odd request
        # (or a replay taken for its own after its signature was forgotten) cannot move
        ages = sorted(st.get("age") or [0.0])
        usual = ages[len(ages) // 2]
        if not r.hosting and r.sign_age is not None and r.sign_age <= usual + s.replay_retry_s:
            # signed within replay_retry_s of its usual age: the app re-sent it seconds
            # later after a network switch (replay.is_retry), not a replay
            return []
        st["n"] = st.get("n", 0) + 1
        over = usual + s.replay_sign_age_margin_s  # negative: a clock running ahead
        age = f", signed {r.sign_age:.0f} s before it arrived" if r.sign_age is not None else ""
        return [Finding(DEVICE_REPLAYED, f"{st['n']} signed request(s) of device {r.key} replayed from other addresses "
                                  f"(latest from {r.ip}{age})", Scope(sign_age_over=round(over, 1)))]
