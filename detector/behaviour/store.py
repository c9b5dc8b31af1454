"""How the behaviour state is held and persisted: one compact record per entity.

In memory, an entity's state is a *blob*: a 16-byte header and the state's msgpack
encoding (msgspec, in C). Only the entities touched since their last encoding are
held decoded (the engine's bounded live cache), so a million entities cost their
blobs, not a million nests of Python dicts (~3 KB each before).

The header lets the engine judge a blob without decoding it:

| bytes | field |
|---|---|
| 0-1 | state version (uint16: `state_version` of the engine that wrote it) |
| 2-5 | protected until (uint32 epoch seconds: flags or alert windows still open) |
| 6-7 | position epoch (uint16: bumped when the broker lost its log) |
| 8-15 | offset (int64: the last entity-events offset applied to the entity, -1 none) |

The changelog holds the same blobs, one record per entity (key `<partition>:e:<etype>|<key>`
(JSON-encoded, as Faust's table codec reads it),
a tombstone when the entity is evicted), and one small *meta* record per partition
(key `<partition>:m`: every bucket's source marks, per-source watermarks and late
count). A flush writes only what changed since the last one, entity records first
and the meta record last. Each entity carries the offset of the last envelope applied
to it, so an envelope read again after a crash (its state half written) is applied
to exactly the entities that do not yet include it.

The previous release wrote one JSON snapshot per bucket (key `<partition>:<bucket>`):
`legacy_bucket` reads one, so a worker upgraded on that changelog migrates its state.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import orjson

HEADER = struct.Struct("<HIHq")
HEADER_BYTES = HEADER.size  # 16
UNTIL_MAX = 2**32 - 1
NO_OFFSET = -1

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(dict[str, Any]).decode


def encode_blob(version: int, until: float, epoch: int, offset: int, st: dict[str, Any]) -> bytes:
    u = 0 if not math.isfinite(until) or until <= 0 else min(UNTIL_MAX, math.ceil(until))
    return HEADER.pack(version & 0xFFFF, u, epoch & 0xFFFF, offset) + _encode(st)


def blob_header(blob: bytes) -> tuple[int, int, int, int]:
    """(state version, protected until, epoch, offset) of a blob."""
    version, until, epoch, offset = HEADER.unpack_from(blob)
    return version, until, epoch, offset


def decode_blob(blob: bytes) -> dict[str, Any]:
    return _decode(memoryview(blob)[HEADER_BYTES:])


def valid_blob(blob: object) -> bool:
    return isinstance(blob, bytes) and len(blob) > HEADER_BYTES


# --- keys ------------------------------------------------------------------------------
def entity_table_key(p: int, ekey: str) -> str:
    return f"{p}:e:{ekey}"


def meta_table_key(p: int) -> str:
    return f"{p}:m"


def changelog_key(name: str) -> bytes:
    """A table key as the changelog record carries it (the table's JSON key codec)."""
    return orjson.dumps(name)


@dataclass(frozen=True, slots=True)
class TableKey:
    partition: int
    kind: str  # "entity", "meta" or "legacy" (a bucket snapshot of the previous release)
    name: str  # the entity key, or the legacy bucket number


def parse_table_key(key: bytes | str) -> TableKey | None:
    """What a key of the state table names; None for a key of no known form."""
    try:
        text = key.decode() if isinstance(key, bytes) else str(key)
        head, sep, rest = text.partition(":")
        if not sep or not head.isdigit():
            return None
        p = int(head)
    except (UnicodeDecodeError, ValueError):
        return None
    if rest == "m":
        return TableKey(p, "meta", "")
    if rest.startswith("e:") and len(rest) > 2:
        return TableKey(p, "entity", rest[2:])
    if rest.isdigit():
        return TableKey(p, "legacy", rest)
    return None


# --- the per-partition meta record -----------------------------------------------------
@dataclass
class BucketMeta:
    marks: dict[str, list[int]] = field(default_factory=dict)  # source partition -> [offset, index, etype]
    watermarks: dict[str, float] = field(default_factory=dict)  # source partition ("" without) -> watermark
    late: int = 0


def encode_meta(format_version: int, state_version: int, epoch: int, buckets: list[BucketMeta]) -> bytes:
    return orjson.dumps({"f": format_version, "v": state_version, "g": epoch,
                         "b": [[m.marks, m.watermarks, m.late] for m in buckets]})


def decode_meta(raw: bytes) -> tuple[int, int, int, list[BucketMeta]]:
    """(format, state version, epoch, buckets) of a meta record."""
    data = orjson.loads(raw)
    buckets = [BucketMeta(dict(marks), {str(k): float(v) for k, v in wms.items()}, int(late))
               for marks, wms, late in data["b"]]
    return int(data["f"]), int(data["v"]), int(data["g"]), buckets


# --- the signatures a device or account sent -------------------------------------------
SIG_ENTRY = 9  # 8 bytes of the signature, 1 byte: its slot (the IP block that sent it first)
SIGS_MAX = 64


def sig_bytes(sig: str) -> bytes:
    """A record's signature (its first 16 hex digits) as 8 bytes; a value that is not
    16 hex digits by its 8-byte digest."""
    if len(sig) == 16:
        try:
            return bytes.fromhex(sig)
        except ValueError:
            pass
    return hashlib.blake2b(sig.encode("utf-8", "surrogatepass"), digest_size=8).digest()


def find_sig(table: bytes, sig8: bytes) -> int:
    """The slot of `sig8` in a packed signature table, or -1."""
    i = table.find(sig8)
    while i >= 0 and i % SIG_ENTRY:
        i = table.find(sig8, i + 1)
    return -1 if i < 0 else table[i + 8]


def add_sig(table: bytes, sig8: bytes, slot: int) -> bytes:
    table += sig8 + bytes((slot,))
    if len(table) > SIGS_MAX * SIG_ENTRY:
        table = table[SIG_ENTRY:]
    return table


def drop_slot(table: bytes, slot: int) -> bytes:
    return b"".join(table[i:i + SIG_ENTRY] for i in range(0, len(table), SIG_ENTRY) if table[i + 8] != slot)


# --- the previous release's bucket snapshots ------------------------------------------
@dataclass
class LegacyBucket:
    version: int
    offset: int
    marks: dict[str, list[int]]
    watermark: float
    late: int
    entities: dict[str, dict[str, Any]]


def legacy_bucket(raw: bytes) -> LegacyBucket:
    data = orjson.loads(raw)
    return LegacyBucket(int(data["v"]), int(data["offset"]), dict(data["marks"]), float(data["wm"]),
                        int(data.get("late", 0)), dict(data["e"]))


def migrate_legacy_state(st: dict[str, Any]) -> dict[str, Any]:
    """An entity's state as the previous release kept it -> as this one does: the
    version moves to the blob header, the signature map to the packed table."""
    st.pop("v", None)
    sigs = st.pop("sigs", None)
    if isinstance(sigs, dict):
        table = b""
        for sig, slot in sigs.items():
            if isinstance(sig, str) and isinstance(slot, int) and 0 <= slot < 256:
                table = add_sig(table, sig_bytes(sig), slot)
        if table:
            st["sg"] = table
    return st


def iter_entries(table: bytes) -> Iterator[tuple[bytes, int]]:
    for i in range(0, len(table), SIG_ENTRY):
        yield table[i:i + 8], table[i + 8]
