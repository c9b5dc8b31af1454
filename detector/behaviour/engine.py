"""The behaviour engine of one shard: per-entity state, the detectors of each entity
type, flags with an event-time TTL, and the entity alerts.

State is held per entity as a compact blob (detector/behaviour/store.py: a header and
the state's msgpack), split into `buckets` (by adler32 of the entity) that bound how
many entities each keeps and hold the per-source bookkeeping. Only the entities
touched since their last encoding are held decoded (a live cache bounded in entries
and bytes). Persistence is incremental: `take_changes()` gives the entities changed
since the last flush (each encoded once, at the flush, with the offset of the last
envelope applied to it) and the small meta record of the buckets, so a flush costs
what changed, not the state held. A restart restores them and skips, per entity, what
each already contains (`observe(records, offset)`), neither losing nor
double-counting. Re-sent records (an upstream worker re-processing a batch after a
crash) are recognised by their source position and ignored.

Event time: lateness is judged per source partition (each client-requests partition
is read in order), so a backlog read partition by partition is not late; a record
older than its source's watermark by more than `allowed_lateness_s` is dropped.

Eviction, at `max_entities / buckets` per bucket: entities with flags or open alert
windows go last, then the least recently seen.
"""

from __future__ import annotations

import hashlib
import math
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
from detector.behaviour.revision import Revision
from detector.behaviour.store import (
    NO_OFFSET,
    BucketMeta,
    add_sig,
    blob_header,
    decode_blob,
    decode_meta,
    drop_slot,
    encode_blob,
    encode_meta,
    find_sig,
    legacy_bucket,
    migrate_legacy_state,
    sig_bytes,
    valid_blob,
)
from detector.behaviour.travel import Travel
from detector.entities import ip_block

_ETYPE_RANK = {e: i for i, e in enumerate(ENTITY_TYPES)}
# The serialised state of one entity never exceeds this (at the default max_distinct:
# record strings are bounded, long or escaped members digested, every set and list
# capped); a bucket holds at most max_entities / buckets entities.
ENTITY_STATE_MAX_BYTES = 512 * 1024
# The meta record of a partition (every bucket's marks and watermarks, one each per
# client-requests partition) stays under this with up to 64 of those partitions.
META_MAX_BYTES = 256 * 1024


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
    remember it and return None. State: "sg", the packed table of the last 64
    signatures (8 bytes each and a slot: detector/behaviour/store.py), the slot an
    index into "sip", a list of at most 8 [IP block, last seen]. With all slots taken,
    the least recently used is reused and the signatures it held are forgotten."""
    sig8 = sig_bytes(r.sig or "")  # (called only for a record with a signature)
    table: bytes = st.get("sg", b"")
    slots: list[list[Any]] = st.setdefault("sip", [])
    first = find_sig(table, sig8)
    if 0 <= first < len(slots):
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
        table = drop_slot(table, slot)
    st["sg"] = add_sig(table, sig8, slot)
    return None


def _described(flag: list[Any]) -> str:
    """A flag's evidence sentence, with its scope when it has one."""
    detail: str = flag[0]
    if flag[3] is None:
        return detail
    return f"{detail} (applies to {msgspec.convert(flag[3], Scope).describe()})"


def bucket_of(etype: str, key: str, buckets: int) -> int:
    """An entity's bucket: stable across processes (a keyed BLAKE2b, not Python's
    salted hash) and independent of the crc32 that picks its shard partition (with the
    same hash, a partition would only use the buckets congruent to its number). Not
    adler32 either: similar short keys (sequential account numbers, one device's ids)
    crowd a few of its buckets, whose entity cap then evicts early."""
    digest = hashlib.blake2b(f"{etype}:{key}".encode("utf-8", "surrogatepass"), digest_size=8, key=b"bucket").digest()
    return int.from_bytes(digest, "little") % buckets


@dataclass
class Bucket:
    # "etype|key" -> its state blob (store.py), least recently seen first; b"" for an
    # entity created since the last encoding (its state is in the engine's live cache)
    entities: dict[str, bytes] = field(default_factory=dict)
    marks: dict[str, list[int]] = field(default_factory=dict)  # source partition -> [offset, index, etype]
    watermarks: dict[str, float] = field(default_factory=dict)  # source partition ("" without) -> watermark
    late: int = 0

    @property
    def watermark(self) -> float:
        return max(self.watermarks.values(), default=0.0)


class _Live:
    """An entity's decoded state, held from its first touch until it is encoded."""

    __slots__ = ("bucket", "offset", "size", "st")

    def __init__(self, st: dict[str, Any], bucket: int, offset: int, size: int):
        self.st = st
        self.bucket = bucket
        self.offset = offset
        self.size = size  # its encoded size when it was decoded (what the live cache counts)


# The live cache of decoded entities, per engine (shard partition): bounded in entries
# and in the encoded bytes of what it holds; past either, the least recently touched
# is encoded back into its bucket (it is still written at the next flush).
LIVE_MAX_ENTITIES = 4096
LIVE_MAX_BYTES = 8 * 1024 * 1024
# Eviction looks at most this many of the oldest entities for one that is neither
# flagged nor has an open alert window (those move to the recent end), then takes the
# oldest whatever it holds.
EVICTION_SCAN = 16
FORMAT_VERSION = 3  # the changelog's layout (store.py); 2 was a JSON snapshot per bucket


@dataclass
class Output:
    flags: list[FlagUpdate] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    # findings about a request's own verdict (a signature's reuse): the shard emits a
    # revision of each request's verdict (detector/behaviour/revision.py)
    revisions: list[Revision] = field(default_factory=list)
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
        self.live: dict[str, _Live] = {}  # least recently touched first
        self.live_bytes = 0
        # entities to write at the next flush -> their bucket (one evicted since is
        # written as a tombstone), and whether the buckets' meta changed
        self.changed: dict[str, int] = {}
        self.meta_changed = False
        self.epoch = 0  # input position epoch (forget_positions)
        self.evicted = 0
        self.stale = 0  # stored entities of another state version, discarded
        self._per_bucket_cap = max(1, settings.max_entities // settings.buckets)
        # the lowest stateless level that reaches the alert windows
        self._alert_floor = 1 if alerts.suspicious_min_count or alerts.min_level == "suspicious" else 2

    # --- processing -------------------------------------------------------------------
    def observe(self, records: Iterable[EntityRecord], offset: int | None = None,
                sources: Iterable[tuple[int, int, int]] | None = None, reference: float | None = None) -> Output:
        """Apply records in order. `offset`: the input offset of the envelope holding
        them (stream): an entity that already includes it (restored from a flush that
        had it) skips it; `sources`: per record, its (source partition, source offset,
        index) so a re-sent record is applied once, and lateness is judged against
        its source partition's watermark. `reference`: the reference clock
        (detector.eventtime): no record moves a watermark past it, so a record dated
        ahead (within the tolerance; those beyond it never become records) cannot make
        the records after it late. A record whose `ts` is not finite is dropped (late)."""
        out = Output()
        s = self.s
        src_iter = iter(sources) if sources is not None else None
        take: dict[str, bool] = {}  # entity -> does this envelope apply to it? (at its first record)
        for r in records:
            src = next(src_iter) if src_iter is not None else None
            b = bucket_of(r.etype, r.key, s.buckets)
            bucket = self.buckets[b]
            wkey = ""
            if src is not None:
                wkey = str(src[0])
                mark = [src[1], src[2], _ETYPE_RANK.get(r.etype, 0)]
                prev = bucket.marks.get(wkey)
                if prev is not None and mark <= prev:
                    continue  # re-sent by the upstream stage
                bucket.marks[wkey] = mark
            self.meta_changed = True
            ts = r.ts
            if not math.isfinite(ts):  # never from decode; state must not hold it
                bucket.late += 1
                out.late += 1
                continue
            wm = bucket.watermarks.get(wkey, 0.0)
            if ts > wm:
                bucket.watermarks[wkey] = ts if reference is None or ts <= reference else max(wm, reference)
            elif ts < wm - s.allowed_lateness_s:
                bucket.late += 1
                out.late += 1
                continue  # later than the allowed lateness: dropped from state
            st = self._touch(b, bucket, r, offset, take)
            if st is None:
                continue  # the entity already includes this envelope
            out.applied += 1
            self._apply(st, r, out)
        return out

    def _touch(self, b: int, bucket: Bucket, r: EntityRecord, offset: int | None,
               take: dict[str, bool]) -> dict[str, Any] | None:
        """The decoded state of r's entity, most recently seen now and to be written at
        the next flush (created, evicting another, when new); None when it already
        includes the envelope at `offset` (judged at the envelope's first record of the
        entity: `take`)."""
        ekey = f"{r.etype}|{r.key}"
        ents = bucket.entities
        live = self.live.pop(ekey, None)
        if live is None:
            blob = ents.pop(ekey, None)
            st: dict[str, Any] | None = None
            included = NO_OFFSET
            size = 0
            if blob:
                version, _, epoch, included = blob_header(blob)
                if version == self.state_version & 0xFFFF:
                    st = decode_blob(blob)
                    size = len(blob)
                    if epoch != self.epoch & 0xFFFF:
                        included = NO_OFFSET
                else:
                    self.stale += 1
                    included = NO_OFFSET
            if st is None:
                st = {}
                blob = b""
                if len(ents) >= self._per_bucket_cap:  # bounded
                    self._evict(b, bucket)
            ents[ekey] = blob or b""  # most recent last
            live = _Live(st, b, included, size)
            self.live_bytes += size
        else:
            ents[ekey] = ents.pop(ekey, b"")
        self.live[ekey] = live
        self.changed[ekey] = b
        if offset is not None:
            ok = take.get(ekey)
            if ok is None:
                ok = take[ekey] = live.offset < offset
            if not ok:
                self._trim_live()
                return None
            live.offset = offset
        self._trim_live()
        return live.st

    def _trim_live(self) -> None:
        while len(self.live) > LIVE_MAX_ENTITIES or (self.live_bytes > LIVE_MAX_BYTES and len(self.live) > 1):
            ekey = next(iter(self.live))
            self._encode_live(ekey, self.live.pop(ekey))

    def _encode_live(self, ekey: str, live: _Live) -> bytes:
        self.live_bytes -= live.size
        blob = encode_blob(self.state_version, self._protected_until(live.st), self.epoch, live.offset, live.st)
        ents = self.buckets[live.bucket].entities
        if ekey in ents:
            ents[ekey] = blob
        return blob

    def _protected_until(self, st: dict[str, Any]) -> float:
        """Until when (event time) an entity's state holds flags or an alert window that
        is still open: eviction takes such entities last."""
        until = 0.0
        flags = st.get("flags")
        if flags:
            until = max(f[1] for f in flags.values())
        windows = st.get("aw")
        if windows:
            until = max(until, max(float(k) for k in windows) + 2 * self.alerts.window_s)
        return until

    def _evict(self, b: int, bucket: Bucket) -> None:
        """Evict one entity of a full bucket: the least recently seen that holds no
        flag and no open alert window among the oldest EVICTION_SCAN, else the oldest."""
        ents = bucket.entities
        horizon = bucket.watermark
        for _ in range(min(EVICTION_SCAN, len(ents) - 1)):
            ekey = next(iter(ents))
            live = self.live.get(ekey)
            until = self._protected_until(live.st) if live is not None else blob_header(ents[ekey])[1]
            if until <= horizon:
                break
            ents[ekey] = ents.pop(ekey)  # protected: to the recent end
        ekey = next(iter(ents))
        del ents[ekey]
        live = self.live.pop(ekey, None)
        if live is not None:
            self.live_bytes -= live.size
        self.changed[ekey] = b  # written as a tombstone
        self.evicted += 1

    def _apply(self, st: dict[str, Any], r: EntityRecord, out: Output) -> None:
        s = self.s
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
            if finding.revise is not None:
                out.revisions.append(Revision(finding.revise, code, detail))
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
        own = r.codes if stateless else ()
        codes = tuple(sorted(c for c in flags if c not in own)) + own
        keep = 1.0 - (r.score if stateless else 0.0)
        for c in flags:
            if c not in own:  # a code counts once (detector/scoring.py)
                keep *= 1.0 - self.weight_of(c)
        # a request of a flagged entity counts as malicious; otherwise its own level
        level = "malicious" if flags or r.level >= 2 else "suspicious"
        fr = FlaggedRequest(r.etype, r.key, r.request_id, r.ts, round(1.0 - keep, 4), level, r.profile, r.ip, codes)
        start = window_start(r.ts, a.window_s)
        windows: dict[str, list[Any]] = st.setdefault("aw", {})
        for old in [k for k in windows if int(k) < start - a.window_s]:
            del windows[old]  # closed windows: only the current and the previous stay
            st["awc"] = max(int(old), st.get("awc", int(old)))
        raw = windows.get(str(start))
        if raw is None and start <= st.get("awc", start - 1):
            # a window newer requests closed: older requests that arrive after that (from
            # a source partition read behind the others) do not open it again as a new
            # revision 1 of the same alert id
            return
        w = AlertWindow.load(raw) if raw is not None else AlertWindow(first_ts=r.ts, last_ts=r.ts)
        if w.update(fr, a):
            out.alerts.append(build_alert(r.etype, r.key, start, w, a, {c: _described(f) for c, f in flags.items()}))
        windows[str(start)] = w.dump()

    # --- persistence ----------------------------------------------------------------
    def take_changes(self) -> tuple[list[tuple[str, int]], bytes | None]:
        """What the next flush writes: the entities changed since the last one (with
        their bucket; `encoded()` gives each its record) and the buckets' meta record
        as it is now (None when nothing changed). Marks them written."""
        keys = list(self.changed.items())
        self.changed.clear()
        meta = self.dump_meta() if keys or self.meta_changed else None
        self.meta_changed = False
        return keys, meta

    def encoded(self, ekey: str, b: int) -> bytes | None:
        """An entity's record as it is now (None: evicted, a tombstone). One held
        decoded is encoded and leaves the live cache."""
        live = self.live.pop(ekey, None)
        if live is not None:
            return self._encode_live(ekey, live)
        blob = self.buckets[b].entities.get(ekey)
        return blob or None

    def mark_changed(self, keys: Iterable[tuple[str, int]], meta: bool = True) -> None:
        """Write these again at the next flush (the broker refused them)."""
        for ekey, b in keys:
            self.changed[ekey] = b
        self.meta_changed = self.meta_changed or meta

    def dump_meta(self) -> bytes:
        return encode_meta(FORMAT_VERSION, self.state_version, self.epoch,
                           [BucketMeta(b.marks, b.watermarks, b.late) for b in self.buckets])

    def load_meta(self, raw: bytes) -> bool:
        """Restore the buckets' marks, watermarks and late counts; False (nothing
        restored) for a meta record of another layout or state version."""
        fmt, version, epoch, metas = decode_meta(raw)
        if fmt != FORMAT_VERSION or version != self.state_version:
            return False
        self.epoch = epoch
        for bucket, m in zip(self.buckets, metas, strict=False):
            bucket.marks, bucket.watermarks, bucket.late = m.marks, m.watermarks, m.late
        return True

    def load_entity(self, ekey: str, blob: bytes) -> bool:
        """Restore one entity's blob (in changelog order: the last written is the most
        recent); False for a blob of another state version (discarded)."""
        return self._place(ekey, blob) >= 0

    def _place(self, ekey: str, blob: bytes) -> int:
        """Put an entity's blob in its bucket; the bucket, or -1 for a blob of another
        state version (discarded)."""
        if not valid_blob(blob) or blob_header(blob)[0] != self.state_version & 0xFFFF:
            self.stale += 1
            return -1
        etype, _, key = ekey.partition("|")
        b = bucket_of(etype, key, self.s.buckets)
        ents = self.buckets[b].entities
        ents.pop(ekey, None)
        if len(ents) >= self._per_bucket_cap:
            self._evict(b, self.buckets[b])
        ents[ekey] = blob
        return b

    def load_legacy_bucket(self, b: int, raw: bytes) -> int:
        """Migrate a bucket snapshot of the previous release (one JSON document per
        bucket, format 2): its entities (to be written in this layout at the next
        flush) and bookkeeping; the number of entities taken, -1 for a snapshot of
        another state version (discarded)."""
        old = legacy_bucket(raw)
        if old.version != self.state_version or not 0 <= b < len(self.buckets):
            return -1
        # Its marks hold the last source positions applied in this partition (records of
        # one source partition arrive in order): they hold for every bucket of this
        # layout, where its entities now spread. Its watermark is left to the records
        # after the upgrade (no record is judged late against the previous layout).
        for bucket in self.buckets:
            for src, mark in old.marks.items():
                prev = bucket.marks.get(src)
                if prev is None or mark > prev:
                    bucket.marks[src] = mark
        self.buckets[b].late += old.late
        taken = 0
        for ekey, st in old.entities.items():
            if not isinstance(st, dict):
                continue
            st = migrate_legacy_state(st)
            blob = encode_blob(self.state_version, self._protected_until(st), self.epoch, old.offset, st)
            placed = self._place(ekey, blob)
            if placed >= 0:
                self.changed[ekey] = placed  # written in this layout at the next flush
                taken += 1
        self.meta_changed = True
        return taken

    def forget_positions(self) -> int:
        """The input log was lost (a restarted memory-only broker): offsets start again
        from 0. Forget every position the state holds (source marks; entity offsets, by
        a new epoch); the entities' state stays. The number of buckets reset."""
        self.epoch = (self.epoch + 1) & 0xFFFF
        for live in self.live.values():
            live.offset = NO_OFFSET
        reset = 0
        for bucket in self.buckets:
            if bucket.marks:
                bucket.marks = {}
                reset += 1
        self.meta_changed = True
        return reset

    def entity_count(self) -> int:
        return sum(len(b.entities) for b in self.buckets)

    def state(self, etype: str, key: str) -> dict[str, Any] | None:
        """An entity's current state, decoded (inspection and tests)."""
        ekey = f"{etype}|{key}"
        live = self.live.get(ekey)
        if live is not None:
            return live.st
        blob = self.buckets[bucket_of(etype, key, self.s.buckets)].entities.get(ekey)
        return decode_blob(blob) if blob else None

    def states(self) -> Iterable[tuple[str, dict[str, Any]]]:
        """Every entity's current state, decoded (inspection and tests)."""
        for bucket in self.buckets:
            for ekey, blob in bucket.entities.items():
                live = self.live.get(ekey)
                yield ekey, live.st if live is not None else decode_blob(blob)

    def dump_all(self) -> tuple[list[tuple[str, bytes]], bytes]:
        """Every entity's record and the meta record, as a complete snapshot (tests,
        inspection); marks nothing written."""
        for ekey in list(self.live):
            self._encode_live(ekey, self.live.pop(ekey))
        return [(ekey, blob) for bucket in self.buckets for ekey, blob in bucket.entities.items()], self.dump_meta()

    def restore(self, meta: bytes | None, entities: Iterable[tuple[str, bytes]]) -> tuple[int, int]:
        """Load a snapshot (`dump_all`, or the changelog's records in their order):
        (entities restored, discarded as another state version)."""
        if meta is not None and not self.load_meta(meta):
            return 0, sum(1 for _ in entities)
        restored = stale = 0
        for ekey, blob in entities:
            if self.load_entity(ekey, blob):
                restored += 1
            else:
                stale += 1
        return restored, stale
