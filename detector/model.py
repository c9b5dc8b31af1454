"""The values that flow through the core: one observed request, the signals a check
raises about it, and the verdict that combines them (event-schema.md, version 1).

Everything here is a frozen value; decoding from the wire lives in `detector.decode`.
They are msgspec Structs, not dataclasses, because they are built once per request
on the hot path: a 21-field frozen dataclass costs ~3.8 us to construct here, a
Struct a fraction of that, and `gc=False` keeps them out of the cyclic collector
(they never form cycles).
"""

from __future__ import annotations

from typing import Any, Literal, Mapping, Sequence

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
    schema: str = "verdict/1"

    def to_json(self) -> bytes:
        """The wire form (event-schema.md section 2), encoded in C."""
        return _encode(self)

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
        }


_encode = msgspec.json.Encoder().encode
