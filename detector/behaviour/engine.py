"""The behaviour engine of one shard: per-entity state in compact in-process
structures, the detectors of each entity type, flags with an event-time TTL, and the
entity alerts.

State is split into `buckets` (by adler32 of the entity) so persistence is bulk and
bounded: `dirty_buckets()` returns only the buckets changed since the last snapshot,
each serialised whole with the input offset it includes, so a restart restores
them and skips what they already contain (`observe(records, offset)`), neither losing
nor double-counting. Re-sent records (an upstream worker re-processing a batch after a
crash) are recognised by their source position and ignored.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import orjson

from detector.alerts import Alert, AlertSettings, AlertWindow, FlaggedRequest, build_alert, window_start
from detector.behaviour.activity import ActionOnlySessions, Activity
from detector.behaviour.base import BehaviourDetector, Finding, state_version
from detector.behaviour.fanout import AccountFanout, DeviceFanout, HostingAsnFanout, IpBlockFanout
from detector.behaviour.flags import FLAG_DETAIL_MAX, Flag, FlagUpdate, Scope
from detector.behaviour.population import Population
from detector.behaviour.records import ENTITY_TYPES, BehaviourSettings, EntityRecord
from detector.behaviour.replay import DeviceReplay, ReplayDetector
from detector.behaviour.travel import Travel
from detector.entities import ip_block

_ETYPE_RANK = {e: i for i, e in enumerate(ENTITY_TYPES)}
# The serialised state of one entity never exceeds this (at the default max_distinct:
# record strings are bounded, long or escaped members digested, every set and list
# capped); a bucket holds at most max_entities / buckets entities.
ENTITY_STATE_MAX_BYTES = 512 * 1024


def all_detectors() -> dict[str, list[BehaviourDetector]]:
    """Entity type -> its detectors (detector.behaviour.base)."""
    return {
        "device": [DeviceFanout(), Activity("device"), ActionOnlySessions("device"), DeviceReplay()],
        "account": [AccountFanout(), Activity("account"), ActionOnlySessions("account"), Travel()],
        "ip_block": [IpBlockFanout()],
        "asn": [HostingAsnFanout()],
        "signature": [ReplayDetector()],
        "fingerprint": [Population()],
    }


def behaviour_codes() -> dict[str, str]:
    return {code: meaning for ds in all_detectors().values() for d in ds for code, meaning in d.codes.items()}


def _remember_signature(st: dict[str, Any], r: EntityRecord) -> str | None:
    """The IP block that first sent `r.sig` from this entity, if it did before; else
    remember it and return None. State: "sigs", signature prefix -> slot in "sip", a
    list of at most 8 [IP block, last seen] (a small int per signature: a device's 64
    signatures cost little). With all slots taken, the least recently used is reused
    and the signatures it held are forgotten."""
    sig = r.sig or ""  # (called only for a record with a signature)
    sigs: dict[str, int] = st.setdefault("sigs", {})
    slots: list[list[Any]] = st.setdefault("sip", [])
    first = sigs.get(sig)
    if first is not None:
        found: str = slots[first][0]
        return found
    block = ip_block(r.ip)
    slot = next((i for i, sl in enumerate(slots) if sl[0] == block), None)
    if slot is not None:
        slots[slot][1] = max(slots[slot][1], r.ts)
    elif len(slots) < 8:
        slots.append([block, r.ts])
        slot = len(slots) - 1
    else:
        slot = min(range(len(slots)), key=lambda i: slots[i][1])
        slots[slot] = [block, r.ts]
        for k in [k for k, v in sigs.items() if v == slot]:
            del sigs[k]
    sigs[sig] = slot
    if len(sigs) > 64:
        del sigs[next(iter(sigs))]
    return None


def _described(flag: list[Any]) -> str:
    """A flag's evidence sentence, with its scope when it has one."""
    detail: str = flag[0]
    if flag[3] is None:
        return detail
    return f"{detail} (applies to {msgspec.convert(flag[3], Scope).describe()})"


def bucket_of(etype: str, key: str, buckets: int) -> int:
    # adler32, not the crc32 that picks the shard partition: with the same hash, a
    # partition would only ever use the buckets congruent to its own number
    return zlib.adler32(f"{etype}:{key}".encode()) % buckets


@dataclass
class Bucket:
    entities: dict[str, dict[str, Any]] = field(default_factory=dict)  # "etype|key" -> state
    offset: int = -1  # last input offset included
    marks: dict[str, list[int]] = field(default_factory=dict)  # source partition -> [offset, index, etype]
    watermark: float = 0.0
    late: int = 0


@dataclass
class Output:
    flags: list[FlagUpdate] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    late: int = 0
    applied: int = 0


class BehaviourEngine:
    def __init__(self, settings: BehaviourSettings, alerts: AlertSettings, weight_of: Callable[[str], float],
                 disabled_families: Iterable[str] = ()):
        self.s = settings
        self.alerts = alerts
        self.weight_of = weight_of
        off = set(disabled_families)
        self.detectors = {etype: [d for d in ds if not {c.split(".")[0] for c in d.codes} <= off]
                          for etype, ds in all_detectors().items()}
        # (state key, detector) per entity type: each detector keeps its own part of the
        # state, under the key it declares
        self._plan = {etype: [(d.state_key, d) for d in ds] for etype, ds in self.detectors.items()}
        # of every detector, enabled or not: disabling a family keeps the stored state readable
        self.state_version = state_version(settings, [d for ds in all_detectors().values() for d in ds])
        self._device_replay = next((d for d in self.detectors["device"] if isinstance(d, DeviceReplay)), None)
        self.buckets = [Bucket() for _ in range(settings.buckets)]
        self.dirty: set[int] = set()
        self._per_bucket_cap = max(1, settings.max_entities // settings.buckets)
        # the lowest stateless level that reaches the alert windows
        self._alert_floor = 1 if alerts.suspicious_min_count or alerts.min_level == "suspicious" else 2

    # --- processing -------------------------------------------------------------------
    def observe(self, records: Iterable[EntityRecord], offset: int | None = None,
                sources: Iterable[tuple[int, int, int]] | None = None, reference: float | None = None) -> Output:
        """Apply records in order. `offset`: the input offset of the envelope holding
        them (stream); `sources`: per record, its (source partition, source offset,
        index) so a re-sent record is applied once. `reference`: the reference clock
        (detector.eventtime): no record moves a watermark past it, so a record dated
        ahead (within the tolerance; those beyond it never become records) cannot make
        the records after it late. A record whose `ts` is not finite is dropped (late)."""
        out = Output()
        s = self.s
        src_iter = iter(sources) if sources is not None else None
        take: dict[int, bool] = {}  # bucket -> does this envelope apply to it?
        for r in records:
            src = next(src_iter) if src_iter is not None else None
            b = bucket_of(r.etype, r.key, s.buckets)
            bucket = self.buckets[b]
            if offset is not None:
                ok = take.get(b)
                if ok is None:
                    ok = take[b] = offset > bucket.offset  # else: already in the restored snapshot
                if not ok:
                    continue
            if src is not None:
                mark = [src[1], src[2], _ETYPE_RANK.get(r.etype, 0)]
                prev = bucket.marks.get(str(src[0]))
                if prev is not None and mark <= prev:
                    continue  # re-sent by the upstream stage
                bucket.marks[str(src[0])] = mark
            self.dirty.add(b)
            if offset is not None:
                bucket.offset = offset
            ts = r.ts
            if not math.isfinite(ts):  # never from decode; state must not hold it
                bucket.late += 1
                out.late += 1
                continue
            if ts > bucket.watermark:
                bucket.watermark = ts if reference is None or ts <= reference else max(bucket.watermark, reference)
            elif ts < bucket.watermark - s.allowed_lateness_s:
                bucket.late += 1
                out.late += 1
                continue  # later than the allowed lateness: dropped from state
            out.applied += 1
            self._apply(bucket, r, out)
        return out

    def _apply(self, bucket: Bucket, r: EntityRecord, out: Output) -> None:
        s = self.s
        ekey = f"{r.etype}|{r.key}"
        ents = bucket.entities
        st = ents.pop(ekey, None)
        if st is None:
            st = {"v": self.state_version}
            if len(ents) >= self._per_bucket_cap:  # bounded: evict the least recently seen
                del ents[next(iter(ents))]
        ents[ekey] = st  # most recent last
        st["last"] = r.ts
        raised: list[Finding] = []
        resent = False
        if r.sig and r.etype in ("device", "account"):
            # A replayed request repeats a signature this device or account already
            # sent: it is the signature shard's evidence, not new activity of the
            # identity (which would flag it for velocity or hopping); the device keeps
            # only that its signatures are being replayed (DeviceReplay).
            first_block = _remember_signature(st, r)
            if first_block is not None:
                if r.etype != "device" or self._device_replay is None:
                    return
                part = st.setdefault(self._device_replay.state_key, {})
                raised.extend(self._device_replay.replayed(part, r, s, first_block))
                if not raised:
                    return
                resent = True
        for name, d in () if resent else self._plan.get(r.etype, ()):
            part = st.get(name)
            if part is None:
                part = st[name] = {}
            found = d.observe(part, r, s)
            if found:
                raised.extend(found)
        if not raised and "flags" not in st:
            if r.level >= self._alert_floor and r.etype in s.alert_entity_types:
                self._alert(st, r, {}, out)
            return
        # flags: code -> [detail, until, emitted_at, scope]; a flag is (re-)broadcast
        # when it is new, when half its TTL has passed (refresh), when its scope changed
        # and the last broadcast is 10 s old, or when its evidence changed and the last
        # broadcast is a minute old (bounded: a busy bot cannot flood the topic)
        flags: dict[str, list[Any]] = st.setdefault("flags", {})
        changed = False
        for code in [c for c, f in flags.items() if f[1] < r.ts]:
            del flags[code]
            changed = True
        for finding in raised:
            code, detail = finding.code, finding.detail
            if len(detail) > FLAG_DETAIL_MAX:  # bounded: a flag update stays under FLAG_MAX_BYTES
                detail = detail[:FLAG_DETAIL_MAX - 3] + "..."
            # as it reads back from a snapshot (lists, not tuples), so a restored flag
            # compares equal and is not re-broadcast
            scope = orjson.loads(msgspec.json.encode(finding.scope)) if finding.scope is not None else None
            prev = flags.get(code)
            if (prev is None or prev[1] - r.ts < s.flag_ttl_s / 2
                    or (prev[3] != scope and r.ts - prev[2] >= 10)
                    or (prev[0] != detail and r.ts - prev[2] >= 60)):
                flags[code] = [detail, r.ts + s.flag_ttl_s, r.ts, scope]
                changed = True
            else:
                prev[0] = detail  # (a changed scope waits for the next record 10 s on)
        if not flags:
            del st["flags"]
        if changed:
            out.flags.append(FlagUpdate(r.etype, r.key, tuple(
                Flag(c, f[0], f[1], msgspec.convert(f[3], Scope) if f[3] is not None else None)
                for c, f in sorted(flags.items())), r.ts))
        self._alert(st, r, flags, out)

    def _alert(self, st: dict[str, Any], r: EntityRecord, flags: dict[str, list[Any]], out: Output) -> None:
        a = self.alerts
        stateless = r.level >= self._alert_floor and r.etype in self.s.alert_entity_types
        if not flags and not stateless:
            return
        codes = tuple(sorted(flags)) + (r.codes if stateless else ())
        keep = 1.0 - (r.score if stateless else 0.0)
        for c in flags:
            keep *= 1.0 - self.weight_of(c)
        # a request of a flagged entity counts as malicious; otherwise its own level
        level = "malicious" if flags or r.level >= 2 else "suspicious"
        fr = FlaggedRequest(r.etype, r.key, r.request_id, r.ts, round(1.0 - keep, 4), level, r.profile, r.ip, codes)
        start = window_start(r.ts, a.window_s)
        windows: dict[str, list[Any]] = st.setdefault("aw", {})
        for old in [k for k in windows if int(k) < start - a.window_s]:
            del windows[old]  # closed windows: only the current and the previous stay
        raw = windows.get(str(start))
        w = AlertWindow.load(raw) if raw is not None else AlertWindow(first_ts=r.ts, last_ts=r.ts)
        if w.update(fr, a):
            out.alerts.append(build_alert(r.etype, r.key, start, w, a, {c: _described(f) for c, f in flags.items()}))
        windows[str(start)] = w.dump()

    # --- persistence ----------------------------------------------------------------
    def dirty_buckets(self) -> list[tuple[int, bytes]]:
        """The changed buckets, serialised, and marks them clean."""
        out = [(b, self.dump_bucket(b)) for b in sorted(self.dirty)]
        self.dirty.clear()
        return out

    def dump_bucket(self, b: int) -> bytes:
        bucket = self.buckets[b]
        return orjson.dumps({"v": self.state_version, "offset": bucket.offset, "marks": bucket.marks,
                             "wm": bucket.watermark, "late": bucket.late, "e": bucket.entities})

    def load_bucket(self, b: int, raw: bytes) -> bool:
        """Restore one bucket; False (and an empty bucket) when its state version is
        not this engine's: stale state is never read with a new meaning."""
        data = orjson.loads(raw)
        if data.get("v") != self.state_version:
            self.buckets[b] = Bucket()
            return False
        self.buckets[b] = Bucket(entities=data["e"], offset=data["offset"], marks=data["marks"],
                                 watermark=data["wm"], late=data.get("late", 0))
        return True

    def entity_count(self) -> int:
        return sum(len(b.entities) for b in self.buckets)
