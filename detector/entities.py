"""What a request names besides its ids: the IP block it came from, the population
fingerprint of its client stack, its account id as a number, and the facts a scoped
behavioural flag reads. Shared by the stateless pipeline (which puts them in the
verdict) and the behaviour stage (which keys its state and scopes its flags by them).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping

import msgspec

from detector.cache import bounded_cache
from detector.fingerprints.headers import names_fingerprint


@bounded_cache(max_bytes=8 << 20, max_item_bytes=512)
def ip_block(ip: str) -> str:
    """The /24 of an IPv4 address, the /48 of an IPv6 one (the usual allocation unit
    behind one subscriber line or one hosting customer)."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    prefix = 24 if addr.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def population_fingerprint(ua: Mapping[str, str], fingerprints: Mapping[str, str],
                           required: frozenset[str] | None, header_names: tuple[str, ...]) -> str:
    """Device tuple + screen + app version + TLS + header order: what a library's
    default device or an emulator image repeats across many device ids. The header
    order is that of the names the profile requires on every request (`required`;
    as received, case included): the optional ones (content type and length,
    bandwidth) come and go with the endpoint, and one client must keep one
    fingerprint across its calls. Without header rules, the whole order counts."""
    order = (_required_order(header_names, required) if required is not None
             else fingerprints.get("headers", ""))
    raw = "|".join((fingerprints.get("device", ""), f"{ua.get('dpi')}/{ua.get('width')}x{ua.get('height')}",
                    ua.get("app_version", ""), fingerprints.get("ja4", ""), order))
    return "fp1_" + hashlib.sha256(raw.encode()).hexdigest()[:16]


@bounded_cache(max_bytes=4 << 20, max_item_bytes=8192)
def _required_order(names: tuple[str, ...], required: frozenset[str]) -> str:
    return names_fingerprint(tuple(n for n in names if n.lower() in required))


def account_number(account: str) -> int | None:
    """The account id as a number, when it is one that fits 63 bits (ids are at most
    19 digits; a longer digit string is not an id to compare, and `int()` of a
    many-thousand-digit string is refused by Python)."""
    if len(account) > 19 or not (account.isascii() and account.isdigit()):
        return None
    n = int(account)
    return n if n < 2**63 else None


class RequestFacts(msgspec.Struct, frozen=True, gc=False):
    """What a scoped flag needs to know of a request (see detector.behaviour.flags.Scope)."""

    sign_age: float | None = None  # arrival time minus signing time, seconds
    account_number: int | None = None  # the account id, when it is a number
    ts: float | None = None  # the request's event time
