"""Partial JA4 (docs/contracts.md "Partial JA4"): an edge that cannot see every part of
the ClientHello writes the JA4 layout with each character it does not know as `?`.
HAProxy 2.6 knows the protocol, the TLS version of the connection (against a TLS 1.3
frontend, the highest the client offers), the SNI flag, the cipher and extension
counts, the ALPN characters (of the protocol negotiated) and the cipher hash (part b),
not the extension/signature-algorithm hash (part c: no sigalgs fetch before 3.1):
`t13d1513h2_8daaf6152771_????????????`. A partial JA4 matches a full one when every
character it knows is the same."""

from __future__ import annotations

from collections.abc import Iterable

UNKNOWN = "?"
JA4_CHARS = 36  # a (10) _ b (12) _ c (12)
PART_C_UNKNOWN = UNKNOWN * 12
# the characters HAProxy 2.6 gives: part a (protocol, version, SNI flag, counts, ALPN) and b
_HAPROXY_26_KNOWN = frozenset(range(24))  # through the second underscore


def is_partial(ja4: str) -> bool:
    return UNKNOWN in ja4


def matches(partial: str, full: str) -> bool:
    """`partial` (with `?` for unknown characters) agrees with the JA4 `full`."""
    if len(partial) != len(full):
        return False
    return all(p in (UNKNOWN, f) for p, f in zip(partial, full))


def first_match(partial: str, candidates: Iterable[str]) -> str | None:
    for c in candidates:
        if matches(partial, c):
            return c
    return None


def haproxy_26_partial(ja4: str) -> str:
    """The partial JA4 HAProxy 2.6 gives for a client whose JA4 is `ja4`."""
    if len(ja4) != JA4_CHARS:
        return ja4
    return "".join(ch if i in _HAPROXY_26_KNOWN else UNKNOWN for i, ch in enumerate(ja4))


def partial_from_parts(part_a: str, part_b: str) -> str:
    """The partial JA4 of an edge that knows parts a and b only (HAProxy 2.6)."""
    return f"{part_a}_{part_b}_{PART_C_UNKNOWN}"
