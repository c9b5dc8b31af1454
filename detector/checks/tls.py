"""TLS checks: is the TLS fingerprint the official app's network stack? JA4 is the
allowlist key (per app-version range); JA3 is informative only, because stacks that
permute extension order (Chrome since 110) change it on every connection. A JA4 of a
known desktop or automation stack adds confidence and names it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import ClassVar

from detector.checks.base import CheckScope, RequestContext
from detector.fingerprints.ja4 import first_match, is_partial
from detector.fingerprints.known import KnownStacks
from detector.model import ClientRequest, Signal

MISSING = "tls.missing"
FINGERPRINT_MISMATCH = "tls.fingerprint_mismatch"
KNOWN_AUTOMATION_STACK = "tls.known_automation_stack"
ALPN_MISMATCH = "tls.alpn_mismatch"
CLIENT_HELLO_INVALID = "tls.client_hello_invalid"


class TlsCheck:
    name: ClassVar[str] = "tls"
    scope: ClassVar[CheckScope] = "shape"
    codes: ClassVar[Mapping[str, str]] = {
        MISSING: "no TLS facts although the profile requires them",
        FINGERPRINT_MISMATCH: "JA4 not among the profile's fingerprints for the claimed app version",
        KNOWN_AUTOMATION_STACK: "JA4 of a known desktop, automation or browser stack",
        ALPN_MISMATCH: "ALPN does not offer what the official client offers first (h2)",
        CLIENT_HELLO_INVALID: "the raw ClientHello the edge captured cannot be parsed",
    }

    def __init__(self, known: KnownStacks | None = None):
        self.known = known or KnownStacks()

    def _known_partial(self, partial: str) -> str | None:
        """The known stacks a partial JA4 agrees with ("A or B" when several do)."""
        found = sorted({stack for ja4, stack in self.known.ja4.items() if first_match(partial, (ja4,))})
        return " or ".join(found) if found else None

    def check(self, request: ClientRequest, ctx: RequestContext) -> Iterable[Signal]:
        profile = ctx.profile
        policy = profile.tls
        if policy is None:
            return
        error = ctx.derived.tls_error
        if error:
            yield ctx.signal(CLIENT_HELLO_INVALID, f"the captured ClientHello cannot be parsed: {error}")
        ja4 = ctx.derived.fingerprints.get("ja4")
        if ja4 is None:
            if policy.required and not error:
                yield ctx.signal(MISSING, f"no JA4 or ClientHello although {profile.name} requires TLS facts")
            return
        ua = ctx.derived.ua
        version = ua.get("app_version") if ua else None
        allowed = [r.value for r in policy.ja4 if r.covers(version)]
        # a partial JA4 (docs/contracts.md) is compared on the characters it knows
        partial = is_partial(ja4)
        if allowed and (first_match(ja4, allowed) is None if partial else ja4 not in allowed):
            stack = self._known_partial(ja4) if partial else self.known.ja4.get(ja4)
            where = f" for app version {version}" if version else ""
            what = "partial JA4" if partial else "JA4"
            yield ctx.signal(FINGERPRINT_MISMATCH, f"{what} {ja4} is not among the {len(allowed)} fingerprint(s) "
                                                   f"of {profile.name}{where}")
            if stack:
                yield ctx.signal(KNOWN_AUTOMATION_STACK, f"JA4 {ja4} is the fingerprint of {stack}")
        alpn = ctx.derived.alpn
        if policy.alpn_first and alpn is not None and alpn != policy.alpn_first:
            yield ctx.signal(ALPN_MISMATCH, f"ALPN offers {alpn or 'nothing'} first; the official client offers "
                                            f"{policy.alpn_first}")
