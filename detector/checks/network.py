"""Network checks: where the request came from, against where a phone would be. A
phone app's traffic comes from mobile carriers and home ISPs; a datacenter network
means a server or a proxy. The user agent's locale country against the IP's country
is weak evidence (travellers, expats), so it carries little weight."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import ClassVar

from detector.checks.base import CheckScope, RequestContext
from detector.model import ClientRequest, Signal

HOSTING = "network.hosting"
LOCALE_COUNTRY_MISMATCH = "network.locale_country_mismatch"


class NetworkCheck:
    name: ClassVar[str] = "network"
    scope: ClassVar[CheckScope] = "shape"
    codes: ClassVar[Mapping[str, str]] = {
        HOSTING: "request from a hosting or datacenter network",
        LOCALE_COUNTRY_MISMATCH: "the user agent's locale country differs from the IP's country",
    }

    def check(self, request: ClientRequest, ctx: RequestContext) -> Iterable[Signal]:
        profile = ctx.profile
        net = request.network
        if not net:
            return
        if profile.network.hosting and net.get("hosting") is True:
            org = net.get("as_org") or "unknown"
            yield ctx.signal(HOSTING, f"AS{net.get('asn', '?')} ({str(org)[:40]}) is a hosting network, not a "
                                      "mobile carrier or home ISP")
        if profile.network.locale_country:
            ua = ctx.derived.ua
            locale = ua.get("locale") if ua else None
            country = net.get("country")
            if locale and isinstance(country, str) and "_" in locale and locale.rsplit("_", 1)[1] != country:
                yield ctx.signal(LOCALE_COUNTRY_MISMATCH, f"locale {locale} but the IP is in {country}")
