"""Which TLS stack opened a connection, decided from its raw ClientHello bytes alone.

Derives JA4 (FoxIO, BSD-3-Clause, technical_details/JA4.md) and JA3 from the hello
clienthello.py parses (its names are re-exported here); pure Python, no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass

from detector.cache import bounded_cache
from detector.fingerprints.clienthello import (
    _GREASE,
    EXT_ALPN,
    EXT_SERVER_NAME,
    ClientHello,
    ClientHelloError,
    is_grease,
    parse_client_hello,
)

__all__ = [
    "ClientHello",
    "ClientHelloError",
    "TlsFingerprint",
    "fingerprint",
    "fingerprints_from_b64",
    "hello_from_lists",
    "is_grease",
    "ja3",
    "ja4",
    "ja4_partial",
    "parse_client_hello",
]

# JA4.md "TLS and DTLS Version"; anything else is "00".
_JA4_VERSION = {
    0x0304: "13",
    0x0303: "12",
    0x0302: "11",
    0x0301: "10",
    0x0300: "s3",
    0x0002: "s2",
    0xFEFF: "d1",
    0xFEFD: "d2",
    0xFEFC: "d3",
}
# OpenSSL's names (what nginx's $ssl_protocol and Python's SSLSocket.version() print),
# so the value compares directly with what an edge logs.
_VERSION_NAME = {
    0x0304: "TLSv1.3",
    0x0303: "TLSv1.2",
    0x0302: "TLSv1.1",
    0x0301: "TLSv1",
    0x0300: "SSLv3",
    0x0002: "SSLv2",
    0xFEFF: "DTLSv1",
    0xFEFD: "DTLSv1.2",
    0xFEFC: "DTLSv1.3",
}
# JA4.md: "If there are no ciphers ... JA4_b is set to 000000000000" (same for JA4_c).
_EMPTY_HASH = "000000000000"


@dataclass(frozen=True, slots=True)
class TlsFingerprint:
    """Everything the checks compare for one hello."""

    ja4: str
    ja3: str  # md5 hex of ja3_full
    ja3_full: str
    alpn: str | None  # first ALPN id (latin-1 so any byte survives), None if no ALPN
    tls_version: str  # highest version offered, OpenSSL naming ("TLSv1.3")



def _hex_list(values: list[int]) -> str:
    """ "002f,0035,..." in one C call (bytes.hex with a separator every 2 bytes)."""
    return struct.pack(f">{len(values)}H", *values).hex(",", 2)


def _hash12(s: str) -> str:
    return hashlib.sha256(s.encode("ascii")).hexdigest()[:12]


def _is_alnum(b: int) -> bool:
    return 0x30 <= b <= 0x39 or 0x41 <= b <= 0x5A or 0x61 <= b <= 0x7A


def _ja4_alpn(first: bytes) -> str:
    # JA4.md "ALPN Extension Value": no/empty first value -> "00"; a one-byte value
    # serves as both ends; a non-alphanumeric end byte switches to the first and last
    # characters of the value's hex (0xAB -> "ab", 0x30 0xAB -> "3b").
    if not first:
        return "00"
    a, z = first[0], first[-1]
    if _is_alnum(a) and _is_alnum(z):
        return chr(a) + chr(z)
    h = first.hex()
    return h[0] + h[-1]


def ja4(ch: ClientHello) -> str:
    """JA4 of a ClientHello seen over TCP (JA4.md; QUIC/DTLS are not our transport)."""
    ciphers = [c for c in ch.cipher_suites if c not in _GREASE]
    exts = [e for e in ch.extensions if e not in _GREASE]
    version = _JA4_VERSION.get(ch.max_version, "00")
    # JA4.md "SNI": presence of extension 0x0000 means a domain, not the name's content.
    sni = "d" if EXT_SERVER_NAME in exts else "i"
    alpn = _ja4_alpn(ch.alpn[0] if ch.alpn else b"")
    # Counts exclude GREASE but include SCSVs, SNI and ALPN, capped at 99.
    part_a = f"t{version}{sni}{min(len(ciphers), 99):02d}{min(len(exts), 99):02d}{alpn}"

    # Sorting the ints equals sorting their fixed-width lowercase hex.
    part_b = _hash12(_hex_list(sorted(ciphers))) if ciphers else _EMPTY_HASH

    # JA4.md "Extension hash": SNI and ALPN leave the hash (already in part a) so one
    # client hashes the same to a domain or an IP; signature algorithms follow in wire
    # order, GREASE removed, with no underscore when there are none.
    hashed_exts = sorted([e for e in exts if e != EXT_SERVER_NAME and e != EXT_ALPN])
    if hashed_exts:
        c_in = _hex_list(hashed_exts)
        sigs = [s for s in ch.signature_algorithms if s not in _GREASE]
        if sigs:
            c_in += "_" + _hex_list(sigs)
        part_c = _hash12(c_in)
    else:
        part_c = _EMPTY_HASH
    return f"{part_a}_{part_b}_{part_c}"


def ja3(ch: ClientHello) -> tuple[str, str]:
    """(JA3 string, its md5 hex): "SSLVersion,Ciphers,Extensions,EllipticCurves,
    EllipticCurvePointFormats" in decimal, wire order, GREASE removed (Salesforce JA3)."""

    def dec(values: tuple[int, ...]) -> str:
        return "-".join([str(v) for v in values if v not in _GREASE])

    full = ",".join(
        (
            str(ch.legacy_version),
            dec(ch.cipher_suites),
            dec(ch.extensions),
            dec(ch.supported_groups),
            "-".join(str(v) for v in ch.ec_point_formats),
        )
    )
    # md5 is the JA3 definition, not a security use.
    return full, hashlib.md5(full.encode("ascii"), usedforsecurity=False).hexdigest()


def fingerprint(ch: ClientHello) -> TlsFingerprint:
    """All fingerprints of one parsed hello."""
    # Every connection has a fresh random, session_id and key share, so identical hello
    # bytes mostly come from replays; what repeats is the stack's shape. Keying on the
    # fields the fingerprints read lets a deterministic stack (OkHttp, curl, Python)
    # skip the hashing. Chrome-like stacks (random GREASE, permuted extensions) miss.
    return _fingerprint_of_shape(
        ch.legacy_version,
        ch.cipher_suites,
        ch.extensions,
        ch.alpn[:1],
        ch.signature_algorithms,
        ch.supported_groups,
        ch.ec_point_formats,
        ch.supported_versions,
    )


@bounded_cache(8 * 2**20, 16 * 1024)  # by bytes: the shape comes from a request
def _fingerprint_of_shape(
    legacy_version: int,
    cipher_suites: tuple[int, ...],
    extensions: tuple[int, ...],
    first_alpn: tuple[bytes, ...],
    signature_algorithms: tuple[int, ...],
    supported_groups: tuple[int, ...],
    ec_point_formats: tuple[int, ...],
    supported_versions: tuple[int, ...],
) -> TlsFingerprint:
    # JA4 and JA3 read none of sni's text, session_id, compression or later ALPN ids.
    ch = ClientHello(
        legacy_version=legacy_version,
        cipher_suites=cipher_suites,
        compression_methods=b"\x00",
        extensions=extensions,
        sni=None,
        alpn=first_alpn,
        signature_algorithms=signature_algorithms,
        supported_groups=supported_groups,
        ec_point_formats=ec_point_formats,
        supported_versions=supported_versions,
    )
    ja3_full, ja3_hash = ja3(ch)
    v = ch.max_version
    return TlsFingerprint(
        ja4=ja4(ch),
        ja3=ja3_hash,
        ja3_full=ja3_full,
        alpn=first_alpn[0].decode("latin-1") if first_alpn else None,
        tls_version=_VERSION_NAME.get(v, f"0x{v:04x}"),
    )


# Identical hello bytes (an edge that replays or normalises the hello, retries of one
# captured value) become a dict lookup. Bounded so hostile variety cannot grow memory;
# errors are not cached (bounded_cache does not store raised exceptions); bounded by
# bytes, a hello longer than the per-item bound is fingerprinted each time.
@bounded_cache(16 * 2**20, 8 * 1024)
def fingerprints_from_b64(b64: str) -> TlsFingerprint:
    """Fingerprints of a base64 (standard alphabet) ClientHello record or message."""
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise ClientHelloError(f"invalid base64: {exc}") from None
    return fingerprint(parse_client_hello(raw))


# --- from the lists an edge captured (HAProxy's ssl_fc_*_bin fetches) -------------------
def hello_from_lists(legacy_version: int, cipher_suites: tuple[int, ...], extensions: tuple[int, ...],
                     supported_groups: tuple[int, ...], ec_point_formats: tuple[int, ...],
                     alpn_first: bytes | None = None, *, signature_algorithms: tuple[int, ...] = (),
                     supported_versions: tuple[int, ...] = ()) -> ClientHello:
    """The ClientHello parts an edge logs as lists (HAProxy 2.5+: the hello's version,
    cipher suites, extension ids, supported groups and point formats, as sent; 3.1+
    also the signature algorithms and supported versions), as a ClientHello with what
    the lists lack left empty (the SNI's text, later ALPN ids; without 3.1's two lists
    the signature algorithms and supported versions): enough for JA3, for the JA4
    parts the 2.5 lists allow (`ja4_partial`), and with the 3.1 lists for `ja4`."""
    return ClientHello(
        legacy_version=legacy_version,
        cipher_suites=cipher_suites,
        compression_methods=b"\x00",
        extensions=extensions,
        sni=None,
        alpn=(alpn_first,) if alpn_first else (),
        signature_algorithms=signature_algorithms,
        supported_groups=supported_groups,
        ec_point_formats=ec_point_formats,
        supported_versions=supported_versions,
    )


_JA4_VERSION_BY_NAME = {name: _JA4_VERSION[v] for v, name in _VERSION_NAME.items()}


def ja4_partial(ch: ClientHello, tls_version: str | None) -> tuple[str, str]:
    """(JA4 part a, JA4 part b) of a hello known from its lists only. Part a takes the
    TLS version from `tls_version` (OpenSSL's name of the version the connection
    negotiated: an edge without the supported_versions list cannot know the highest
    one offered, and against a TLS 1.3 server the negotiated one is it) and the ALPN
    from `ch.alpn` (at HAProxy 2.6 the protocol negotiated, not the first offered);
    counts and the SNI flag come from the lists. Part c needs the signature algorithms:
    not available."""
    ciphers = [c for c in ch.cipher_suites if c not in _GREASE]
    exts = [e for e in ch.extensions if e not in _GREASE]
    version = _JA4_VERSION_BY_NAME.get(tls_version or "", "00")
    sni = "d" if EXT_SERVER_NAME in exts else "i"
    alpn = _ja4_alpn(ch.alpn[0] if ch.alpn else b"")
    part_a = f"t{version}{sni}{min(len(ciphers), 99):02d}{min(len(exts), 99):02d}{alpn}"
    part_b = _hash12(_hex_list(sorted(ciphers))) if ciphers else _EMPTY_HASH
    return part_a, part_b
