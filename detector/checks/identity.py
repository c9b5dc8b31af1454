"""Identity checks: device, account and session ids in the formats the official app
gives them. Scripts invent ids (random strings, wrong prefixes) or use time-based
UUIDs (version 1), which also leak the generating host's MAC address."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import ClassVar

from detector.cache import ByteCache
from detector.checks.base import CheckScope, RequestContext
from detector.model import ClientRequest, Signal
from detector.profile import ClientProfile

INVALID_DEVICE_ID = "identity.invalid_device_id"
INVALID_ACCOUNT_ID = "identity.invalid_account_id"
INVALID_SESSION_ID = "identity.invalid_session_id"
TIME_BASED_UUID = "identity.time_based_uuid"

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-([0-9a-f])[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
_CACHE_BYTES = 16 * 2**20  # memory of the cache, by bytes (detector.cache)
_CODE = {"device": INVALID_DEVICE_ID, "account": INVALID_ACCOUNT_ID, "session": INVALID_SESSION_ID}


class IdentityCheck:
    name: ClassVar[str] = "identity"
    scope: ClassVar[CheckScope] = "request"
    codes: ClassVar[Mapping[str, str]] = {
        INVALID_DEVICE_ID: "device id not in the official app's format",
        INVALID_ACCOUNT_ID: "account id not in the official app's format",
        INVALID_SESSION_ID: "session id not in the official app's format",
        TIME_BASED_UUID: "a time-based (version 1) UUID where the app uses random ones; it leaks a MAC address",
    }

    def __init__(self) -> None:
        # ids repeat for every request of a device, account or session
        self._cache: ByteCache[tuple[str, str, str], tuple[tuple[str, str], ...]] = ByteCache(_CACHE_BYTES, 16 * 1024)

    def check(self, request: ClientRequest, ctx: RequestContext) -> Iterable[Signal]:
        profile = ctx.profile
        entities = ctx.derived.entities
        out: list[Signal] = []
        for kind in _CODE:
            value = entities.get(kind)
            if value is None:
                continue
            key = (profile.name, kind, value)
            found = self._cache.get(key)
            if found is None:
                found = tuple(self._judge(profile, kind, value))
                self._cache.put(key, found)
            out.extend(ctx.signal(code, detail) for code, detail in found)
        return out

    @staticmethod
    def _judge(profile: ClientProfile, kind: str, value: str) -> Iterable[tuple[str, str]]:
        src = profile.ids.get(kind)
        if src is None:
            return
        code = _CODE[kind]
        shown = value if len(value) <= 40 else value[:37] + "..."
        if src.regex is not None and not src.regex.fullmatch(value):
            yield code, f"{kind} id {shown!r} does not match {src.regex.pattern}"
        elif src.uuid_version is not None:
            m = _UUID.fullmatch(value.lower())
            if m is None:
                yield code, f"{kind} id {shown!r} is not a UUID"
            elif int(m.group(1), 16) != src.uuid_version:
                if m.group(1) == "1":
                    yield TIME_BASED_UUID, (f"{kind} id {shown!r} is a time-based UUID (node {value[-12:]}); "
                                            f"the app uses version {src.uuid_version}")
                else:
                    yield code, (f"{kind} id {shown!r} is a version {m.group(1)} UUID, "
                                 f"the app uses version {src.uuid_version}")
