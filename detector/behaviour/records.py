"""What travels to the entity shards: one compact record per (request, entity) it
updates, not the whole request, plus the settings of the behaviour detectors.

Records are msgspec array-like Structs: they encode as short JSON arrays in C, so a
batch envelope of hundreds of them costs little on the hot path.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field, fields, is_dataclass
from functools import lru_cache
from typing import Any, Iterable, Mapping

import msgspec

from detector.checks.base import RequestContext
from detector.fingerprints.headers import names_fingerprint
from detector.model import ClientRequest, Verdict

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


@lru_cache(maxsize=65536)
def ip_block(ip: str) -> str:
    """The /24 of an IPv4 address, the /48 of an IPv6 one (the usual allocation unit
    behind one subscriber line or one hosting customer)."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    prefix = 24 if addr.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def population_fingerprint(ctx: RequestContext) -> str | None:
    """Device tuple + screen + app version + TLS + header order: what a library's
    default device or an emulator image repeats across many device ids. The header
    order is that of the names the profile requires on every request (as received,
    case included): the optional ones (content type and length, bandwidth) come and go
    with the endpoint, and one client must keep one fingerprint across its calls."""
    ua = ctx.derived.get("ua")
    if ua is None:
        return None
    fps = ctx.derived["fingerprints"]
    rules = ctx.profile.headers
    names = ctx.derived.get("header_names")
    order = (_required_order(names, rules.required) if rules is not None and names is not None
             else fps.get("headers", ""))
    raw = "|".join((fps.get("device", ""), f"{ua.get('dpi')}/{ua.get('width')}x{ua.get('height')}",
                    ua.get("app_version", ""), fps.get("ja4", ""), order))
    return "fp1_" + hashlib.sha256(raw.encode()).hexdigest()[:16]


@lru_cache(maxsize=4096)
def _required_order(names: tuple[str, ...], required: frozenset[str]) -> str:
    return names_fingerprint(tuple(n for n in names if n.lower() in required))


def records_for(request: ClientRequest, ctx: RequestContext, verdict: Verdict) -> list[EntityRecord]:
    """One record per entity this request updates."""
    ents = verdict.entities
    net = request.network or {}
    asn = net.get("asn") if isinstance(net.get("asn"), int) else None
    country = net.get("country") if isinstance(net.get("country"), str) else None
    hosting = net.get("hosting") is True
    device, account, session = ents.get("device"), ents.get("account"), ents.get("session")
    endpoint = ctx.profile.endpoint_class(request.path)
    # the request's own (stateless) evidence, never the flags it was scored with
    score, level_name, codes = ctx.derived["stateless"]
    level = LEVEL_RANK[level_name]
    keys: list[tuple[str, str | None]] = [
        ("device", device), ("account", account), ("ip_block", ents.get("ip_block")),
        # only hosting networks: the ASN detector ignores carriers and home ISPs (each
        # carries millions of users), so their records would be work without a signal
        ("asn", f"AS{asn}" if asn is not None and hosting else None), ("signature", ents.get("signature")),
        ("fingerprint", ents.get("fingerprint")),
    ]
    sig = ents.get("signature")
    sig = sig[:16] if sig else None
    age = ctx.derived.get("sign_age")
    age = round(age, 1) if age is not None else None
    return [
        EntityRecord(etype, key, request.request_id, request.ts, level, score, codes, verdict.profile,
                     request.client_ip, asn, hosting, country, device, account, session, endpoint, sig, age)
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
    def from_dict(cls, data: Mapping[str, Any], centroids: Mapping[str, tuple[float, float]] | None = None) -> BehaviourSettings:
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
