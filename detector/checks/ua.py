"""User-agent checks: does the User-Agent follow the profile's grammar, name a version
in its release table, and pair that version with one of its real version codes?"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import ClassVar

from detector.checks.base import CheckScope, RequestContext
from detector.model import ClientRequest, Signal
from detector.profile import version_key

MISSING = "ua.missing"
MALFORMED = "ua.malformed"
UNKNOWN_VERSION = "ua.unknown_version"
NEWER_VERSION = "ua.newer_version"
RETIRED_VERSION = "ua.retired_version"
VERSION_CODE_MISMATCH = "ua.version_code_mismatch"


class UserAgentCheck:
    name: ClassVar[str] = "ua"
    scope: ClassVar[CheckScope] = "shape"
    codes: ClassVar[Mapping[str, str]] = {
        MISSING: "no User-Agent header",
        MALFORMED: "User-Agent does not follow the profile's grammar",
        UNKNOWN_VERSION: "app version not in the release table and not newer than its newest",
        NEWER_VERSION: "app version newer than any in the table (a staged roll-out the profile has not caught up with)",
        RETIRED_VERSION: "app version the profile marks retired",
        VERSION_CODE_MISMATCH: "version code is not one the claimed version was built with",
    }

    def check(self, request: ClientRequest, ctx: RequestContext) -> Iterable[Signal]:
        profile = ctx.profile
        raw = ctx.derived.ua_raw
        if raw is None:
            yield ctx.signal(MISSING, "the request carries no User-Agent header")
            return
        ua = ctx.derived.ua
        if ua is None:
            shown = raw if len(raw) <= 120 else raw[:117] + "..."
            yield ctx.signal(MALFORMED, f"user agent {shown!r} does not follow the {profile.name} grammar")
            return
        version = ua["app_version"]
        info = profile.versions.get(version)
        if info is None:
            newest = profile.newest_version
            if version_key(version) > newest.sort_key:
                yield ctx.signal(
                    NEWER_VERSION,
                    f"app version {version} is newer than {newest.version}, the newest in the {profile.name} table",
                )
            else:
                yield ctx.signal(
                    UNKNOWN_VERSION,
                    f"app version {version} is not in the {profile.name} release table "
                    f"({profile.oldest_version.version} to {newest.version})",
                )
            return
        if info.status == "retired":
            yield ctx.signal(RETIRED_VERSION, f"app version {version} is retired in {profile.name}")
        code = int(ua["version_code"])
        if code not in info.codes:
            codes = ", ".join(str(c) for c in sorted(info.codes))
            yield ctx.signal(
                VERSION_CODE_MISMATCH,
                f"version code {code} does not belong to app version {version} (built as {codes})",
            )
