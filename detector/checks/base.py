"""The one interface every stateless check implements, and the context it is given.

A check looks at one request (plus what the pipeline already derived from it, such
as the parsed user agent) and yields signals. It declares every code it can emit, so
the conformance suite and the catalogue can hold it to them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Mapping, Protocol

from detector.model import ClientRequest, Signal


@dataclass(slots=True)
class RequestContext:
    """What the pipeline knows about a request before the checks run.

    `derived` is a per-request scratch space filled by earlier stages (parsed user
    agent, computed fingerprints, resolved ids) so no check parses the same thing
    twice. `weight_of` maps a code to its configured weight.
    """

    profile: Any
    weight_of: Callable[[str], float]
    headers: dict[str, str] = field(default_factory=dict)  # lower-cased name -> first value
    derived: dict[str, Any] = field(default_factory=dict)

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
    check runs on every request (`scope = "request"`, the default)."""

    name: ClassVar[str]
    codes: ClassVar[Mapping[str, str]]  # code -> one-line meaning

    def check(self, request: ClientRequest, ctx: RequestContext) -> Iterable[Signal]: ...
