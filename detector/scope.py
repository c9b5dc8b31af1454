"""Scope: the API surface a client profile judges (its hosts and path prefixes) and the
host evidence a request carries (TLS SNI, the Host header, HTTP/2's `:authority`).

A request is in a scope when its path starts with one of the scope's prefixes and,
when it carries host evidence, when any of its names is one of the scope's hosts.
"Any" is deliberate: the edge routes a request by one of those names, so a client
that lies in the others cannot take an API request out of scope; the SNI that
differs from the Host is a signal of its own (`transport.sni_host_mismatch`).
A profile without a scope judges every request (docs/contracts.md, Scope).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from detector.model import ClientRequest

# RFC 3986 section 2.3: percent-encoded unreserved characters are the same path
# (section 6.2.2.2), and servers decode them before routing.
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PCT = re.compile(r"%([0-9A-Fa-f]{2})")
_HOST_CACHE_ITEM_CHARS = 255  # a DNS name is at most 253 characters; longer values are not cached


def normalise_host(value: str | None) -> str | None:
    """A host name as the scope compares it: lower-cased, without a port or a trailing
    dot, an IPv6 literal without its brackets; None for no name at all."""
    if value is None:
        return None
    if len(value) <= _HOST_CACHE_ITEM_CHARS:
        return _normalise_cached(value)
    return _normalise(value)


def _normalise(value: str) -> str | None:
    v = value.strip().lower()
    if v.startswith("["):  # an IPv6 literal, "[::1]" or "[::1]:8443"
        end = v.find("]")
        v = v[1:end] if end > 0 else v[1:]
    elif v.count(":") == 1:  # "host:port" (a bare IPv6 address has several colons)
        v = v.partition(":")[0]
    v = v.rstrip(".")
    return v or None


_normalise_cached = lru_cache(maxsize=4096)(_normalise)


def normalise_path(path: str) -> str:
    """The path a server routes: percent-encoded unreserved characters decoded, runs of
    `/` collapsed and dot segments removed (RFC 3986 sections 6.2.2.2 and 5.2.4), so
    `//api/`, `/x/../api/` and `/%61pi/` are the `/api/` they reach."""
    if "%" in path:
        path = _PCT.sub(lambda m: c if (c := chr(int(m[1], 16))) in _UNRESERVED else m[0], path)
    if "//" not in path and "/." not in path:
        return path
    out: list[str] = []
    parts = path.split("/")
    for seg in parts[1:]:
        if seg == "..":
            if out:
                out.pop()
        elif seg not in (".", ""):
            out.append(seg)
    trailing = parts[-1] in ("", ".", "..") and len(parts) > 1
    return "/" + "/".join(out) + ("/" if trailing and out else "")


@dataclass(frozen=True, slots=True)
class HostEvidence:
    """The names a request gives for the host it is for, normalised (None: absent)."""

    sni: str | None = None
    host: str | None = None  # the Host header
    authority: str | None = None  # HTTP/2 and HTTP/3 `:authority`

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(n for n in (self.sni, self.host, self.authority) if n is not None))

    @property
    def request_host(self) -> str | None:
        """The host the request itself names (`:authority` first, as RFC 9113 8.3.1 says)."""
        return self.authority if self.authority is not None else self.host


def host_evidence(request: ClientRequest, host_header: str | None = None) -> HostEvidence:
    """What `request` says about its host: `tls.sni`, the Host header (the first one;
    `host_header` when the caller already looked it up) and `h2.authority`."""
    tls, h2 = request.tls, request.h2
    sni = tls.get("sni") if tls else None
    authority = h2.get("authority") if h2 else None
    if host_header is None:
        host_header = request.header("host")
    return HostEvidence(
        sni=normalise_host(sni) if isinstance(sni, str) else None,
        host=normalise_host(host_header),
        authority=normalise_host(authority) if isinstance(authority, str) else None,
    )


def _host_in(name: str, exact: frozenset[str], suffixes: tuple[str, ...]) -> bool:
    return name in exact or (bool(suffixes) and name.endswith(suffixes))


@dataclass(frozen=True, slots=True)
class Scope:
    """A profile's API surface. `hosts` are normalised names; `*.example.test` stands
    for every name below example.test (not example.test itself). `coalesce_hosts` are
    the other names of the API's certificate whose HTTP/2 connections the official
    client may reuse for the API (RFC 9113 section 9.1.1): an SNI among them is not an
    SNI/Host mismatch on HTTP/2 or HTTP/3."""

    hosts: tuple[str, ...] = ()
    path_prefixes: tuple[str, ...] = ()
    coalesce_hosts: tuple[str, ...] = ()
    _exact: frozenset[str] = field(init=False, repr=False, compare=False, default=frozenset())
    _suffixes: tuple[str, ...] = field(init=False, repr=False, compare=False, default=())
    _known_exact: frozenset[str] = field(init=False, repr=False, compare=False, default=frozenset())
    _known_suffixes: tuple[str, ...] = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "_exact", frozenset(h for h in self.hosts if not h.startswith("*.")))
        object.__setattr__(self, "_suffixes", tuple(h[1:] for h in self.hosts if h.startswith("*.")))
        known = self.hosts + self.coalesce_hosts
        object.__setattr__(self, "_known_exact", frozenset(h for h in known if not h.startswith("*.")))
        object.__setattr__(self, "_known_suffixes", tuple(h[1:] for h in known if h.startswith("*.")))

    def host_in_scope(self, name: str) -> bool:
        return _host_in(name, self._exact, self._suffixes)

    def knows_host(self, name: str) -> bool:
        """`name` is one of the scope's hosts or of the hosts sharing its certificate."""
        return _host_in(name, self._known_exact, self._known_suffixes)

    def path_in_scope(self, path: str) -> bool:
        return not self.path_prefixes or normalise_path(path).startswith(self.path_prefixes)

    def admits(self, evidence: HostEvidence, path: str) -> bool:
        """In scope: the path is (when the scope names prefixes) and, when the request
        carries host evidence and the scope names hosts, any of its names is."""
        if not self.path_in_scope(path):
            return False
        names = evidence.names
        return not self.hosts or not names or any(self.host_in_scope(n) for n in names)
