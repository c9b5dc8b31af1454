"""The one interface every stateless check implements, and the context it is given.

A check looks at one request (plus what the pipeline already derived from it, such
as the parsed user agent) and yields signals. It declares every code it can emit, so
the conformance suite and the catalogue can hold it to them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol

import msgspec

from detector.body import BodyFields
from detector.model import ClientRequest, Signal, VerdictLevel
from detector.profile import ClientProfile

CheckScope = Literal["shape", "request"]


class Derived(msgspec.Struct, frozen=True, gc=False):
    """What `Pipeline.derive` works out of a request once, so no check parses the same
    thing twice (a msgspec Struct: one is built per request on the hot path)."""

    ua_raw: str | None  # the User-Agent header as sent; None: absent
    header_names: tuple[str, ...]  # in the order received, names as sent
    ua: Mapping[str, str] | None  # the profile grammar's named groups; None: absent or malformed
    entities: Mapping[str, str]  # entity type -> id (ip, ip_block, device, account, session, signature, fingerprint)
    fingerprints: Mapping[str, str]  # headers, ja4, ja3, h2, device
    signed_at: float | None = None  # the signing timestamp header (None: absent, not finite, or no signing)
    sign_age: float | None = None  # arrival minus signing time, seconds
    tls_error: str | None = None  # why the captured ClientHello cannot be parsed
    alpn: str | None = None  # the protocol offered first ("" none); None: no TLS facts
    # (SNI, request host) normalised, when both are given and differ (detector/scope.py)
    host_mismatch: tuple[str, str] | None = None
    # the body's fields (detector/body.py), parsed when the request carries a body and
    # the profile has body rules
    body: BodyFields | None = None


class Stateless(msgspec.Struct, frozen=True, gc=False):
    """What a request shows on its own, before the behavioural flags of its entities:
    the behaviour stage's records carry only this."""

    score: float
    level: VerdictLevel
    codes: tuple[str, ...]


@dataclass(slots=True)
class RequestContext:
    """What the pipeline knows about a request before the checks run: its profile, its
    headers by lower-cased name (first value), what was derived from it, and
    `weight_of`, which maps a code to its configured weight. `stateless` is set once
    the checks have run (`Pipeline.assess`)."""

    profile: ClientProfile
    weight_of: Callable[[str], float]
    headers: dict[str, str]
    derived: Derived
    stateless: Stateless | None = None
    # the codes the request's edge cannot judge (detector.edges): set by Pipeline.assess
    gated: frozenset[str] = frozenset()

    def header(self, name: str) -> str | None:
        """First value of a header by lower-case name (built once per request)."""
        return self.headers.get(name)

    def signal(self, code: str, detail: str) -> Signal:
        return Signal(code, self.weight_of(code), detail)


class Check(Protocol):
    """A stateless detection: `check(request, ctx) -> Iterable[Signal]`.

    `scope = "shape"` declares that the check reads only the request's shape (profile,
    user agent, TLS and HTTP fingerprints, ALPN, HTTP version, network facts), so the
    pipeline may reuse its signals for every request of the same shape; any other
    check runs on every request (`scope = "request"`)."""

    name: ClassVar[str]
    scope: ClassVar[CheckScope]
    codes: ClassVar[Mapping[str, str]]  # code -> one-line meaning

    def check(self, request: ClientRequest, ctx: RequestContext) -> Iterable[Signal]: ...
