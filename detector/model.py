"""The values that flow through the core: one observed request, the signals a check
raises about it, and the verdict that combines them (docs/contracts.md, version 1).

Everything here is a frozen value; decoding from the wire lives in `detector.decode`.
They are msgspec Structs, not dataclasses, because they are built once per request
on the hot path: a 21-field frozen dataclass costs ~3.8 us to construct here, a
Struct a fraction of that, and `gc=False` keeps them out of the cyclic collector
(they never form cycles).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import msgspec

VerdictLevel = Literal["clean", "suspicious", "malicious"]


class ClientRequest(msgspec.Struct, frozen=True, gc=False):
    """One API request as the edge saw it. Optional parts stay `None` when absent;
    `extra` keeps unknown fields so nothing the edge sent is lost."""

    request_id: str
    ts: float  # epoch seconds, event time
    client_ip: str
    method: str
    path: str
    headers: tuple[tuple[str, str], ...]  # in the order received, names as sent
    query: str | None = None
    http_version: str | None = None
    body_sha256: str | None = None
    body_size: int | None = None
    params: Mapping[str, str] | None = None
    tls: Mapping[str, Any] | None = None
    h2: Mapping[str, Any] | None = None
    network: Mapping[str, Any] | None = None
    attestation: Mapping[str, Any] | None = None
    account_id: str | None = None
    device_id: str | None = None
    session_id: str | None = None
    response_status: int | None = None
    label: Mapping[str, Any] | None = None
    edge: str | None = None  # the edge profile the record came through (docs/edges.md); None: the topic's
    # the body as an edge that keeps bodies passed it on: text, encoding, truncated
    body: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] | None = None

    def header(self, name: str) -> str | None:
        """First value of a header, matched case-insensitively (names keep their case
        on the wire, so lookups must not depend on it)."""
        lname = name.lower()
        for n, v in self.headers:
            if n.lower() == lname:
                return v
        return None


class Signal(msgspec.Struct, frozen=True, gc=False):
    """One piece of evidence: a stable code (`family.name`), its weight in (0, 1] and
    one human sentence naming what was seen."""

    code: str
    weight: float
    detail: str

    @property
    def family(self) -> str:
        return self.code.split(".", 1)[0]

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "weight": self.weight, "detail": self.detail}


class Verdict(msgspec.Struct, frozen=True, gc=False):
    request_id: str
    ts: float
    score: float
    verdict: VerdictLevel
    profile: str | None
    entities: Mapping[str, str]
    fingerprints: Mapping[str, str]
    signals: Sequence[Signal] = ()
    app_version: str | None = None  # the version the user agent claims (optional field)
    # False: the request is outside every profile's scope and was not judged as the app
    # (verdict clean, score 0; docs/contracts.md, Scope)
    assessed: bool = True
    # the signal families the request's edge lost the facts of (sorted); unset (never
    # encoded) when every family was assessed (docs/edges.md)
    not_assessed: tuple[str, ...] | msgspec.UnsetType = msgspec.UNSET
    # a later revision of the request's verdict (docs/contracts.md, Verdict revisions):
    # unset (never encoded) on the ingest stage's verdict, revision 0; a revision
    # names the revision it replaces (`supersedes`); consumers keep the highest
    revision: int | msgspec.UnsetType = msgspec.UNSET
    supersedes: int | msgspec.UnsetType = msgspec.UNSET
    schema: str = "verdict/1"

    def to_json(self) -> bytes:
        """The wire form (docs/contracts.md, Verdict), encoded in C; never more than
        VERDICT_MAX_BYTES. A verdict over `_PLAIN_MAX_BYTES` (genuine ones are about
        1 KB) is re-encoded with its strings shortened: fingerprints to
        VERDICT_FINGERPRINT_CHARS, entity ids to VERDICT_ENTITY_CHARS, signal details
        to VERDICT_DETAIL_CHARS, each ending in TRUNCATED when cut."""
        out = _encode(self)
        if len(out) <= _PLAIN_MAX_BYTES:
            return out
        return self._bounded_json()

    def _bounded_json(self) -> bytes:
        def clip(s: str, n: int) -> str:
            return s if len(s) <= n else s[: max(0, n - len(TRUNCATED))] + TRUNCATED

        def shorten(v: Verdict, scale: int) -> Verdict:
            f, e, d = (max(len(TRUNCATED), n // scale) for n in
                       (VERDICT_FINGERPRINT_CHARS, VERDICT_ENTITY_CHARS, VERDICT_DETAIL_CHARS))
            return msgspec.structs.replace(
                v,
                request_id=clip(v.request_id, 256),
                profile=None if v.profile is None else clip(v.profile, 128),
                entities={clip(k, 32): clip(x, e) for k, x in list(v.entities.items())[:_MAX_MAP_ITEMS]},
                fingerprints={clip(k, 32): clip(x, f) for k, x in list(v.fingerprints.items())[:_MAX_MAP_ITEMS]},
                signals=tuple(Signal(clip(s.code, 128), s.weight, clip(s.detail, d))
                              for s in list(v.signals)[:_MAX_SIGNALS]),
                app_version=None if v.app_version is None else clip(v.app_version, 64),
            )

        # JSON escaping makes a character up to 6 bytes: shorten further until it fits
        for scale in (1, 2, 4, 8, 16, 64):
            out = _encode(shorten(self, scale))
            if len(out) <= VERDICT_MAX_BYTES:
                return out
        raise AssertionError("unreachable: the smallest form is a few KB")  # pragma: no cover

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "request_id": self.request_id,
            "ts": self.ts,
            "score": self.score,
            "verdict": self.verdict,
            "profile": self.profile,
            "entities": dict(self.entities),
            "fingerprints": dict(self.fingerprints),
            "signals": [s.as_dict() for s in self.signals],
            "app_version": self.app_version,
            "assessed": self.assessed,
            **({} if self.not_assessed is msgspec.UNSET else {"not_assessed": list(self.not_assessed)}),
            **({} if self.revision is msgspec.UNSET else {"revision": self.revision, "supersedes": self.supersedes}),
        }


_encode = msgspec.json.Encoder().encode

VERDICT_MAX_BYTES = 64 * 1024  # an encoded verdict is never larger
VERDICT_FINGERPRINT_CHARS = 256  # JA4 is 36, our header fingerprint 22, an Akamai HTTP/2 string ~100
VERDICT_ENTITY_CHARS = 512
VERDICT_DETAIL_CHARS = 1024
TRUNCATED = "...[truncated]"
_PLAIN_MAX_BYTES = 8 * 1024  # verdicts up to this size are written as they are
_MAX_MAP_ITEMS = 16  # entities, fingerprints (the pipeline makes 7 and 5 at most)
_MAX_SIGNALS = 64  # every signal code at most once, in practice
