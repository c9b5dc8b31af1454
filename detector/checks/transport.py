"""Transport checks: the HTTP version and the HTTP/2 fingerprint (Akamai format:
SETTINGS|WINDOW_UPDATE|PRIORITY|PSEUDO_HEADER_ORDER) against the official client's.
OkHttp speaks HTTP/2 with its own SETTINGS and pseudo-header order (m,p,a,s); desktop
libraries mostly speak HTTP/1.1, browsers have their own HTTP/2 settings."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import ClassVar

from detector.checks.base import CheckScope, RequestContext
from detector.fingerprints.known import KnownStacks
from detector.model import ClientRequest, Signal

HTTP_VERSION = "transport.http_version"
H2_FINGERPRINT_MISMATCH = "transport.h2_fingerprint_mismatch"
KNOWN_BROWSER_H2 = "transport.known_browser_h2"
SNI_HOST_MISMATCH = "transport.sni_host_mismatch"
# HTTP/2 and HTTP/3 clients reuse a connection for another host of its certificate
# (RFC 9113 section 9.1.1, RFC 9114 section 3.3), so there an SNI that differs from the
# :authority is not a lie in itself; HTTP/1 has no such reuse.


class TransportCheck:
    name: ClassVar[str] = "transport"
    scope: ClassVar[CheckScope] = "shape"
    codes: ClassVar[Mapping[str, str]] = {
        HTTP_VERSION: "an HTTP version the official client never uses",
        H2_FINGERPRINT_MISMATCH: "HTTP/2 fingerprint differs from the official client's",
        KNOWN_BROWSER_H2: "HTTP/2 fingerprint of a known browser or HTTP library",
        SNI_HOST_MISMATCH: "the TLS SNI names another host than the request's Host or :authority",
    }

    def __init__(self, known: KnownStacks | None = None):
        self.known = known or KnownStacks()

    def check(self, request: ClientRequest, ctx: RequestContext) -> Iterable[Signal]:
        profile = ctx.profile
        mismatch = ctx.derived.host_mismatch
        if mismatch is not None:
            sni, host = mismatch
            scope = profile.scope
            # HTTP/2 or 3 (or a version the edge did not report): connection reuse is
            # legitimate across the hosts of one certificate, so only an SNI the
            # profile's scope does not know counts; without a scope, none does.
            if request.http_version in ("1.0", "1.1") or (scope is not None and scope.hosts
                                                          and not scope.knows_host(sni)):
                yield ctx.signal(SNI_HOST_MISMATCH, f"TLS SNI {sni[:80]!r} but the request is for {host[:80]!r}"
                                                    f" (HTTP/{request.http_version or '?'})")
        policy = profile.transport
        if policy is None:
            return
        v = request.http_version
        if v is not None and v not in policy.http_versions:
            yield ctx.signal(HTTP_VERSION, f"HTTP/{v}, but {profile.name} only speaks HTTP/"
                                           f"{' or HTTP/'.join(sorted(policy.http_versions))}")
        fp = ctx.derived.fingerprints.get("h2")
        if fp is not None and policy.h2_fingerprints and fp not in policy.h2_fingerprints:
            shown = fp if len(fp) <= 60 else fp[:57] + "..."
            yield ctx.signal(H2_FINGERPRINT_MISMATCH, f"HTTP/2 fingerprint {shown} is not the official client's")
            stack = self.known.h2.get(fp)
            if stack:
                yield ctx.signal(KNOWN_BROWSER_H2, f"HTTP/2 fingerprint of {stack}")
