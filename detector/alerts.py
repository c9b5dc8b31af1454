"""Alerts: the typed alert revision (`Alert`), its settings, and the window that
aggregates an entity's flagged requests into one alert per entity and window, which
escalates while the behaviour continues, instead of one alert per request. The
behaviour engine (detector.behaviour.engine) keeps the windows in its state and
raises the alerts; this module decides what a window's revision says.

Everything is a function of the events: windows are aligned to the epoch, the alert
id is a hash of (rule, entity, window), times come from the requests' `ts`, so a
replayed or re-processed stream yields the same alerts (docs/contracts.md, Alert).
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from detector.behaviour.records import bounded_id, entity_key

RULE_FLAGGED_ENTITY = "entity.flagged_requests"
_LEVEL_RANK = {"clean": 0, "suspicious": 1, "malicious": 2}
_SEVERITIES = ("low", "medium", "high", "critical")
_ALLOWLIST_KEYS = ("entity_type", "id", "reason")
ALERT_MAX_BYTES = 256 * 1024  # an encoded alert (orjson) never exceeds this
MAX_SAMPLES = 100  # alerts.samples at most
_CODE_MAX = 64  # chars of a signal code (codes come from a closed set; bounded anyway)
_TEXT_MAX = 1024  # chars of a flag's evidence sentence and of the summary
_MAX_CODES = 200  # distinct codes listed (the most frequent first)
_MAX_PROFILES = 50
_MAX_FLAGS = 64


Severity = Literal["low", "medium", "high", "critical"]
ALERT_SCHEMA = "alert/1"


class AlertEntity(msgspec.Struct, frozen=True, gc=False):
    type: str  # entity type: device, account, ...
    id: str  # its bounded form (detector.behaviour.records.entity_key)


class AlertSpan(msgspec.Struct, frozen=True, gc=False):
    start: str  # RFC 3339 UTC, milliseconds
    end: str


class AlertEvidence(msgspec.Struct, frozen=True, gc=False):
    """What the window's requests showed. The contract requires none of its parts: a
    part that is UNSET is left out of the JSON (the engine leaves out `truncated`,
    `suspicious_count` and `flags` when they say nothing), so an alert read back from
    its JSON writes the same JSON."""

    code_counts: dict[str, int] | UnsetType = UNSET
    profiles: tuple[str, ...] | UnsetType = UNSET
    distinct_ips: int | UnsetType = UNSET
    truncated: bool | UnsetType = UNSET
    suspicious_count: int | UnsetType = UNSET  # of `count`, the requests below min_level
    flags: dict[str, str] | UnsetType = UNSET  # code -> the detector's sentence of evidence

    def flag_details(self) -> Mapping[str, str]:
        """The behavioural flags' sentences (empty when there are none)."""
        return self.flags if not isinstance(self.flags, UnsetType) else {}


class Alert(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """One alert revision (contract: config/schema/alert.schema.json, docs/alerts.md),
    typed from the engine that raises it to the webhook body that carries it. The
    JSON is `to_json()`; a JSON alert reads back with `decode_alert`."""

    schema: str
    alert_id: str
    revision: int
    rule: str | UnsetType = UNSET  # (the engine always names it; the contract does not require it)
    created_at: str
    updated_at: str
    severity: Severity
    entity: AlertEntity
    codes: tuple[str, ...]
    score: float
    summary: str
    window: AlertSpan
    count: int
    evidence: AlertEvidence
    sample_request_ids: tuple[str, ...]

    def to_json(self) -> bytes:
        return _encode_alert(self)


_encode_alert = msgspec.json.Encoder().encode
_decode_alert = msgspec.json.Decoder(Alert).decode


def decode_alert(raw: bytes | str) -> Alert:
    """An alert from its JSON (raises msgspec.ValidationError, a ValueError, when it
    is not one: a field missing or of another type)."""
    return _decode_alert(raw)


@dataclass(frozen=True, slots=True)
class AlertSettings:
    window_s: int = 300
    min_level: str = "malicious"
    min_count: int = 3
    # requests only `suspicious` (below min_level) of one entity in one window that
    # alert too, at severity low: a persistent mismatch that never reaches malicious
    # (0: off)
    suspicious_min_count: int = 10
    escalate_at: tuple[int, ...] = (3, 10, 30, 100, 300, 1000, 3000, 10000)
    # count reached -> severity; the highest matching threshold wins
    severity_by_count: Mapping[int, Severity] = field(
        default_factory=lambda: {1: "medium", 30: "high", 300: "critical"})
    samples: int = 5
    # code -> the lowest severity of an alert whose requests carry it (the higher of
    # this and the count's severity wins), e.g. {replay.signature_reused_elsewhere: high}
    severity_by_code: Mapping[str, Severity] = field(default_factory=dict)
    # entities that never alert (test devices, partner integrations), each with a reason:
    # [{entity_type: device, id: ..., reason: ...}]
    allowlist: tuple[Mapping[str, str], ...] = ()
    # codes that neither count towards an alert nor appear in its evidence
    suppress_codes: tuple[str, ...] = ()
    _allowed: frozenset[tuple[str, str]] = field(init=False, repr=False, compare=False, default=frozenset())

    def __post_init__(self) -> None:
        entries = tuple(dict(e) if isinstance(e, Mapping) else e for e in self.allowlist)
        for i, e in enumerate(entries):
            if not isinstance(e, dict) or not all(isinstance(e.get(k), str) and e[k] for k in _ALLOWLIST_KEYS):
                raise ValueError(f"alerts.allowlist[{i}]: needs entity_type, id and reason (strings)")
        object.__setattr__(self, "allowlist", entries)
        object.__setattr__(self, "_allowed", frozenset((e["entity_type"], e["id"]) for e in entries))
        object.__setattr__(self, "suppress_codes", tuple(self.suppress_codes))
        for code, sev in self.severity_by_code.items():
            if sev not in _SEVERITIES:
                raise ValueError(f"alerts.severity_by_code.{code}: unknown severity {sev!r}")
        if self.min_level not in ("suspicious", "malicious"):
            raise ValueError("alerts.min_level must be suspicious or malicious")
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or not 0 <= self.samples <= MAX_SAMPLES:
            raise ValueError(f"alerts.samples must be a whole number from 0 to {MAX_SAMPLES}")
        if self.window_s <= 0 or self.min_count <= 0:
            raise ValueError("alerts.window_s and alerts.min_count must be positive")
        if isinstance(self.suspicious_min_count, bool) or not isinstance(self.suspicious_min_count, int) \
                or self.suspicious_min_count < 0:
            raise ValueError("alerts.suspicious_min_count must be a whole number >= 0 (0: off)")
        for sev in self.severity_by_count.values():
            if sev not in _SEVERITIES:
                raise ValueError(f"alerts.severity_by_count: unknown severity {sev!r}")

    def allowlisted(self, entity_type: str, entity_id: str) -> bool:
        return (entity_type, entity_id) in self._allowed

    def severity_for(self, count: int, codes: Iterable[str]) -> Severity:
        """The count's severity, raised to the highest `severity_by_code` of the codes."""
        sev = self.severity(count)
        for c in codes:
            floor = self.severity_by_code.get(c)
            if floor is not None and _SEVERITIES.index(floor) > _SEVERITIES.index(sev):
                sev = floor
        return sev

    def severity(self, count: int) -> Severity:
        sev: Severity = "low"
        for threshold in sorted(self.severity_by_count):
            if count >= threshold:
                sev = self.severity_by_count[threshold]
        return sev


def alert_id(rule: str, entity_type: str, entity_id: str, window_start: int) -> str:
    return hashlib.sha256(f"{rule}|{entity_type}|{entity_id}|{window_start}".encode()).hexdigest()[:32]


_ISO_FIRST = "0001-01-01T00:00:00.000Z"
_ISO_LAST = "9999-12-31T23:59:59.999Z"


def iso(ts: float) -> str:
    """RFC 3339 UTC with milliseconds. Total: a time outside what a datetime can hold
    (decode accepts 2000..2200 only, but this never raises for any float) is clamped
    to year 1 or year 9999; NaN reads as the epoch."""
    try:
        d = datetime.fromtimestamp(ts, tz=UTC).replace(tzinfo=None)
        return d.isoformat(timespec="milliseconds") + "Z"  # milliseconds truncated; year zero-padded
    except (OverflowError, ValueError, OSError):
        if ts != ts:
            return "1970-01-01T00:00:00.000Z"
        return _ISO_LAST if ts > 0 else _ISO_FIRST


def window_start(ts: float, window_s: int) -> int:
    """The epoch-aligned start of the window holding `ts` (a non-finite `ts`, which
    decode never lets through, is placed at the epoch rather than raise)."""
    if not math.isfinite(ts):
        return 0
    return int(ts // window_s) * window_s


@dataclass(frozen=True, slots=True)
class FlaggedRequest:
    """The compact record of one flagged request for one of its entities: what an
    entity shard needs, not the whole request."""

    entity_type: str
    entity_id: str
    request_id: str
    ts: float
    score: float
    verdict: str
    profile: str | None
    ip: str
    codes: tuple[str, ...]


@dataclass(slots=True)
class AlertWindow:
    """The aggregation behind one alert: an entity's flagged requests in one window."""

    first_ts: float
    last_ts: float
    count: int = 0
    max_score: float = 0.0
    revision: int = 0
    severity: Severity = "low"
    codes: Counter[str] = field(default_factory=Counter)
    profiles: set[str] = field(default_factory=set)
    ips: set[str] = field(default_factory=set)
    samples: list[str] = field(default_factory=list)
    weak: int = 0  # requests below min_level (suspicious) counted, see AlertSettings.suspicious_min_count

    def update(self, r: FlaggedRequest, s: AlertSettings) -> bool:
        """Count one flagged request; True when this makes a new alert revision.
        Allowlisted entities never count; suppressed codes are left out, and a request
        flagged only by suppressed codes does not count. A request below `min_level`
        counts apart (`weak`): `suspicious_min_count` of them alert at severity low,
        until `min_count` requests at `min_level` make it a full alert."""
        if s.allowlisted(r.entity_type, r.entity_id):
            return False
        codes = r.codes
        if s.suppress_codes:
            codes = tuple(c for c in codes if c not in s.suppress_codes)
            if r.codes and not codes:
                return False
        weak = _LEVEL_RANK.get(r.verdict, 2) < _LEVEL_RANK[s.min_level]
        if weak and not s.suspicious_min_count:
            return False
        self.first_ts = min(self.first_ts, r.ts)
        self.last_ts = max(self.last_ts, r.ts)
        if weak:
            self.weak += 1
        else:
            self.count += 1
        self.max_score = max(self.max_score, r.score)
        self.codes.update(codes)
        if r.profile:
            self.profiles.add(r.profile)
        if len(self.ips) < 1000:
            self.ips.add(r.ip)
        if len(self.samples) < s.samples:
            self.samples.append(r.request_id)
        if self.count >= s.min_count:
            severity = s.severity_for(self.count, self.codes) if s.severity_by_code else s.severity(self.count)
            escalated = not weak and (
                self.revision == 0 or self.count in s.escalate_at
                or _SEVERITIES.index(severity) > _SEVERITIES.index(self.severity)
            )
        else:
            severity = "low"
            escalated = weak and self.revision == 0 and self.weak >= s.suspicious_min_count
        if escalated:
            self.revision += 1
            self.severity = severity
        return escalated

    def dump(self) -> list[Any]:
        return [self.first_ts, self.last_ts, self.count, self.max_score, self.revision, self.severity,
                dict(self.codes), sorted(self.profiles), sorted(self.ips), self.samples, self.weak]

    @classmethod
    def load(cls, d: list[Any]) -> AlertWindow:
        return cls(d[0], d[1], d[2], d[3], d[4], d[5], Counter(d[6]), set(d[7]), set(d[8]), list(d[9]),
                   d[10] if len(d) > 10 else 0)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def build_alert(etype: str, eid: str, start: int, w: AlertWindow, s: AlertSettings,
                flags: Mapping[str, str] | None = None) -> Alert:
    """The alert revision for window `w`. `flags`: the entity's behavioural flags when
    the revision was raised (code -> the detector's sentence of evidence), carried in
    `evidence.flags` so the alert says what was seen, not only which rules fired.

    Bounded: the encoded alert is at most `ALERT_MAX_BYTES`. The entity is named by
    its bounded form (`entity_key`: an id over 128 bytes by its digest form), sample
    ids, codes, sentences and lists are capped; should escaping still make it larger,
    the evidence is cut further and marked `"truncated": true`."""
    eid = entity_key(eid)
    alert = _alert_doc(etype, eid, start, w, s, flags, _TEXT_MAX, _MAX_FLAGS, s.samples)
    if len(alert.to_json()) > ALERT_MAX_BYTES:
        alert = _alert_doc(etype, eid, start, w, s, flags, 128, 8, min(s.samples, 5), truncated=True)
    return alert


def _alert_doc(etype: str, eid: str, start: int, w: AlertWindow, s: AlertSettings, flags: Mapping[str, str] | None,
               text_max: int, max_flags: int, samples: int, truncated: bool = False) -> Alert:
    top = w.codes.most_common()
    codes = sorted(_clip(c, _CODE_MAX) for c, _ in top[:_MAX_CODES])
    minutes = s.window_s / 60
    top_text = ", ".join(f"{_clip(c, _CODE_MAX)} ({n})" for c, n in top[:3])
    what = f"{w.count + w.weak} flagged requests" if w.count >= s.min_count else f"{w.weak} suspicious requests"
    summary = f"{etype} {eid}: {what} in a {minutes:g}-minute window from {len(w.ips)} IP(s); top evidence: {top_text}"
    evidence = AlertEvidence(
        code_counts=dict(sorted((_clip(c, _CODE_MAX), n) for c, n in top[:_MAX_CODES])),
        profiles=tuple(sorted(_clip(p, _CODE_MAX) for p in w.profiles)[:_MAX_PROFILES]),
        distinct_ips=len(w.ips),
        truncated=True if truncated or len(top) > _MAX_CODES or len(w.profiles) > _MAX_PROFILES else UNSET,
        suspicious_count=w.weak or UNSET,  # of `count`, those below min_level
        flags=({_clip(c, _CODE_MAX): _clip(d, text_max) for c, d in sorted(flags.items())[:max_flags]}
               if flags else UNSET),
    )
    return Alert(
        schema=ALERT_SCHEMA,
        alert_id=alert_id(RULE_FLAGGED_ENTITY, etype, eid, start),
        revision=w.revision,
        rule=RULE_FLAGGED_ENTITY,
        created_at=iso(w.first_ts),
        updated_at=iso(w.last_ts),
        severity=w.severity,
        entity=AlertEntity(_clip(etype, _CODE_MAX), eid),
        codes=tuple(codes),
        score=round(w.max_score, 4),
        summary=_clip(summary, _TEXT_MAX),
        window=AlertSpan(iso(start), iso(start + s.window_s)),
        count=w.count + w.weak,
        evidence=evidence,
        sample_request_ids=tuple(bounded_id(x) for x in w.samples[:samples]),
    )


def alert_from_obj(obj: object) -> Alert:
    """An alert from its decoded JSON object (as `decode_alert`)."""
    return msgspec.convert(obj, Alert)
