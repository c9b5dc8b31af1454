"""What travels to the entity shards: one compact record per (request, entity) it
updates, not the whole request, plus the settings of the behaviour detectors.

Records are msgspec array-like Structs: they encode as short JSON arrays in C, so a
batch envelope of hundreds of them costs little on the hot path.

Every string a record carries is bounded (`records_for`): an entity key, device,
account or session id longer than `KEY_MAX_BYTES` is replaced by its *digest form*,
a readable prefix and a SHA-256 digest of the whole value (`bounded_id`), stable
across workers and restarts, so a hostile 8 KB id is one small entity; the state,
flags and alerts name the entity by this form (the verdict keeps the raw id, and
`entity_key` maps a raw id to the form). A batch's records go out in envelopes split
by bytes (`encode_envelopes`), each under the topic's record limit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from detector.model import ClientRequest, Verdict

if TYPE_CHECKING:  # (the checks' context imports the profiles, whose schema imports these settings)
    from detector.checks.base import RequestContext

ENTITY_TYPES = ("device", "account", "ip_block", "asn", "signature", "fingerprint")
LEVEL_RANK = {"clean": 0, "suspicious": 1, "malicious": 2}


class EntityRecord(msgspec.Struct, array_like=True, frozen=True, gc=False):
    etype: str
    key: str
    request_id: str
    ts: float
    level: int  # stateless verdict: 0 clean, 1 suspicious, 2 malicious
    score: float
    codes: tuple[str, ...]  # stateless signal codes
    profile: str | None
    ip: str
    asn: int | None
    hosting: bool
    country: str | None
    device: str | None
    account: str | None
    session: str | None
    endpoint: str | None  # endpoint class from the profile: startup, browse, action
    sig: str | None = None  # the request signature's first 16 hex digits (replays share it)
    sign_age: float | None = None  # arrival minus signing time, s (a replay carries the original's)


class Envelope(msgspec.Struct, array_like=True, gc=False):
    """The records of one ingest batch for one shard partition, each with its source
    position (client-requests partition, offset, index in the message) so a batch
    re-sent after an upstream crash is recognised."""

    records: list[EntityRecord] = msgspec.field(default_factory=list)
    sources: list[tuple[int, int, int]] = msgspec.field(default_factory=list)


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Envelope).decode


def encode_envelope(envelope: Envelope) -> bytes:
    return _encode(envelope)


def decode_envelope(value: bytes) -> Envelope:
    return _decode(value)


def encode_envelopes(records: Sequence[EntityRecord], sources: Sequence[tuple[int, int, int]],
                     max_bytes: int) -> list[bytes]:
    """`records` (with their `sources`, one each) as envelopes of at most `max_bytes`
    encoded bytes each, in order: decoding every envelope in turn gives back all
    records and sources in their order. One envelope when it fits (the usual case,
    encoded once); else records are packed greedily by their encoded sizes. Raises
    ValueError for a record that cannot fit alone (records are bounded by
    `records_for` to a few KB, far below any topic limit)."""
    if len(records) != len(sources):
        raise ValueError(f"{len(records)} records but {len(sources)} sources")
    whole = _encode(Envelope(list(records), list(sources)))
    if len(whole) <= max_bytes:
        return [whole]
    out: list[bytes] = []
    empty = len(_encode(Envelope()))  # [[],[]]
    group: list[EntityRecord] = []
    group_src: list[tuple[int, int, int]] = []
    size = empty
    for r, src in zip(records, sources):
        # each element adds its encoding and (after the first) a comma, in both lists
        add = len(_encode(r)) + len(_encode(src)) + (2 if group else 0)
        if group and size + add > max_bytes:
            out.append(_encode(Envelope(group, group_src)))
            group, group_src, size = [], [], empty
            add -= 2
        if size + add > max_bytes:
            raise ValueError(f"an entity record of {add} bytes exceeds the envelope limit of {max_bytes} bytes")
        group.append(r)
        group_src.append(src)
        size += add
    if group:
        out.append(_encode(Envelope(group, group_src)))
    return out


# --- bounded strings -----------------------------------------------------------------
KEY_MAX_BYTES = 128  # entity keys, device, account and session ids, request ids
FIELD_MAX_BYTES = 64  # ip, country, profile, endpoint
_DIGEST_MARK = "~sha256:"


def bounded_id(value: str, limit: int = KEY_MAX_BYTES) -> str:
    """`value` when its UTF-8 form has at most `limit` bytes; else its digest form:
    its first `limit - 40` characters (printable ASCII kept, any other as `?`), then
    `~sha256:` and the first 32 hex digits of the SHA-256 of the whole value (128
    bits: distinct ids stay distinct), `limit` bytes in all. Deterministic, so every
    worker names the entity alike."""
    n = len(value)
    if n * 4 <= limit or (n <= limit and value.isascii()):  # (isascii is O(1))
        return value
    raw = value.encode("utf-8", "surrogatepass")
    if len(raw) <= limit:
        return value
    digest = hashlib.sha256(raw).hexdigest()[:32]
    room = max(0, limit - len(_DIGEST_MARK) - 32)
    # the prefix in printable ASCII (anything else as "?"): JSON never escapes it
    head = "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in value[:room])
    return head + _DIGEST_MARK + digest


def entity_key(key: str) -> str:
    """The name the behaviour state, its flags and alerts give an entity whose raw id
    is `key` (the verdict's `entities`): `key` itself unless it is over
    `KEY_MAX_BYTES` bytes, then its digest form (`bounded_id`)."""
    return key if len(key) <= KEY_MAX_BYTES and key.isascii() else bounded_id(key)


def _opt(value: str | None, limit: int = KEY_MAX_BYTES) -> str | None:
    return None if value is None else bounded_id(value, limit)


IMPOSSIBLE_TRAVEL_CODE = "behaviour.impossible_travel"


def records_for(request: ClientRequest, ctx: RequestContext, verdict: Verdict) -> list[EntityRecord]:
    """One record per entity this request updates; none for a request outside every
    profile's scope (`verdict.assessed` false): it is not the app's traffic, so it
    feeds no entity's state."""
    if not verdict.assessed:
        return []
    ents = verdict.entities
    net = request.network or {}
    asn = net.get("asn") if type(net.get("asn")) is int else None  # a bool is not an ASN
    country = net.get("country") if isinstance(net.get("country"), str) else None
    hosting = net.get("hosting") is True
    if ctx.gated and IMPOSSIBLE_TRAVEL_CODE in ctx.gated:
        # an edge without the hosting fact: a VPN exit cannot be told from a journey,
        # so the country does not feed impossible travel (docs/edges.md)
        country = None
    device, account, session = ents.get("device"), ents.get("account"), ents.get("session")
    endpoint = ctx.profile.endpoint_class(request.path)
    # the request's own (stateless) evidence, never the flags it was scored with
    own = ctx.stateless
    if own is None:
        raise ValueError("records_for needs the context of an assessed request (Pipeline.assess)")
    score, level, codes = own.score, LEVEL_RANK[own.level], own.codes
    # every string bounded (ids over KEY_MAX_BYTES by their digest form, see bounded_id)
    device, account, session = _opt(device), _opt(account), _opt(session)
    keys: list[tuple[str, str | None]] = [
        ("device", device), ("account", account), ("ip_block", _opt(ents.get("ip_block"))),
        # only hosting networks: the ASN detector ignores carriers and home ISPs (each
        # carries millions of users), so their records would be work without a signal
        ("asn", f"AS{asn}" if asn is not None and hosting else None), ("signature", _opt(ents.get("signature"))),
        ("fingerprint", _opt(ents.get("fingerprint"))),
    ]
    sig = ents.get("signature")
    sig = sig[:16] if sig else None
    age = ctx.derived.sign_age
    age = round(age, 1) if age is not None else None
    rid, ip = bounded_id(request.request_id), bounded_id(request.client_ip, FIELD_MAX_BYTES)
    profile, country, endpoint = (_opt(verdict.profile, FIELD_MAX_BYTES), _opt(country, FIELD_MAX_BYTES),
                                  _opt(endpoint, FIELD_MAX_BYTES))
    return [
        EntityRecord(etype, key, rid, request.ts, level, score, codes, profile,
                     ip, asn, hosting, country, device, account, session, endpoint, sig, age)
        for etype, key in keys if key
    ]


# --- settings ------------------------------------------------------------------------
@dataclass(frozen=True)
class Fanout:
    window_s: float
    threshold: int


@dataclass(frozen=True)
class BehaviourSettings:
    """Windows, thresholds and TTLs (config `behaviour`; defaults justified in
    docs/detections.md)."""

    state_version: int = 2
    buckets: int = 64  # state buckets per shard partition (unit of a changelog write)
    allowed_lateness_s: float = 120.0
    max_entities: int = 200_000  # per shard partition; least recently seen evicted first
    max_distinct: int = 256  # members kept per distinct set; counts saturate there
    flag_ttl_s: float = 3600.0  # a flag lasts this long after it was last confirmed
    replay_ttl_s: float = 900.0
    replay_retry_s: float = 15.0  # the same device re-sending a signed request this soon: an app retry
    device_accounts: Fanout = Fanout(3600, 5)
    account_devices: Fanout = Fanout(86400, 6)
    ip_block_accounts: Fanout = Fanout(3600, 40)
    ip_block_devices: Fanout = Fanout(3600, 40)
    hosting_asn_accounts: Fanout = Fanout(3600, 15)
    hosting_asn_devices: Fanout = Fanout(3600, 15)
    velocity_window_s: float = 60.0
    velocity_actions: int = 20
    cadence_last_n: int = 12
    cadence_max_cv: float = 0.1
    action_only_min_actions: int = 2
    replay_sign_age_margin_s: float = 10.0
    population_bulk_min_accounts: int = 3
    population_bulk_max_gap: int = 10_000
    travel_max_kmh: float = 1000.0
    travel_min_km: float = 1000.0
    asn_window_s: float = 3600.0
    asn_max: int = 5
    population_window_s: float = 3600.0
    population_min_devices: int = 25
    population_min_accounts: int = 40
    population_ratio: float = 5.0
    population_alpha: float = 0.3
    population_prior: float = 3.0
    alert_entity_types: tuple[str, ...] = ("device", "account")  # for stateless-flagged requests
    centroids: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any],
                  centroids: Mapping[str, tuple[float, float]] | None = None) -> BehaviourSettings:
        kw: dict[str, Any] = {}
        names = {f.name: f for f in fields(cls)}
        for k, v in data.items():
            if k not in names or k == "centroids":
                raise ValueError(f"unknown key {k!r}")
            default = getattr(cls, k, None)
            if is_dataclass(default):
                if not isinstance(v, dict):
                    raise ValueError(f"{k} must be a mapping with window_s and threshold")
                kw[k] = Fanout(float(v["window_s"]), int(v["threshold"]))
            elif isinstance(default, tuple):
                kw[k] = tuple(v)
            elif isinstance(default, bool) or not isinstance(default, (int, float)):
                kw[k] = v
            else:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                    raise ValueError(f"{k} must be a positive number, got {v!r}")
                kw[k] = type(default)(v)
        return cls(**kw, centroids=dict(centroids or {}))


def codes_of(records: Iterable[EntityRecord]) -> set[str]:
    return {c for r in records for c in r.codes}
