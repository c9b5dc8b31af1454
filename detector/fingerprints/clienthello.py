"""A TLS ClientHello parsed from its raw bytes (a TLS record or a bare handshake message)
into the parts fingerprints read, as sent; a malformed hello is a ClientHelloError
naming the field. Pure Python, no I/O."""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["ClientHello", "ClientHelloError", "is_grease", "parse_client_hello"]

_CONTENT_HANDSHAKE = 0x16
_HS_CLIENT_HELLO = 0x01
# RFC 8446 5.1: a TLSPlaintext fragment MUST NOT exceed 2^14 bytes.
_MAX_RECORD_LEN = 1 << 14
# Larger than any real hello (post-quantum key shares push Chrome to ~1.8 KB), small
# enough that a hostile length field cannot make us buffer much.
_MAX_HELLO_LEN = 1 << 16

EXT_SERVER_NAME = 0x0000
EXT_SUPPORTED_GROUPS = 0x000A
EXT_EC_POINT_FORMATS = 0x000B
EXT_SIGNATURE_ALGORITHMS = 0x000D
EXT_ALPN = 0x0010
EXT_SUPPORTED_VERSIONS = 0x002B
_PARSED_EXTENSIONS = frozenset(
    {
        EXT_SERVER_NAME,
        EXT_SUPPORTED_GROUPS,
        EXT_EC_POINT_FORMATS,
        EXT_SIGNATURE_ALGORITHMS,
        EXT_ALPN,
        EXT_SUPPORTED_VERSIONS,
    }
)


class ClientHelloError(ValueError):
    """The bytes are not a well-formed TLS ClientHello; the message says why, on one line."""


# RFC 8701 GREASE: 0x?A?A with both bytes equal (0x0A0A, 0x1A1A, ... 0xFAFA). A set
# lookup is what the hot loops use; it is several times cheaper than the bit test.
_GREASE = frozenset(0x0A0A + 0x1010 * i for i in range(16))


def is_grease(value: int) -> bool:
    """RFC 8701 GREASE value (0x0A0A, 0x1A1A, ... 0xFAFA)?"""
    return value in _GREASE


@dataclass(frozen=True, slots=True)
class ClientHello:
    """The parts of a ClientHello that fingerprints read, as sent (GREASE included,
    original order), so every fingerprint can apply its own rules."""

    legacy_version: int
    cipher_suites: tuple[int, ...]
    compression_methods: bytes
    extensions: tuple[int, ...]  # extension ids in wire order, duplicates kept
    sni: str | None  # first host_name in server_name, None without one
    alpn: tuple[bytes, ...]  # raw protocol ids: RFC 7301 allows any bytes
    signature_algorithms: tuple[int, ...]
    supported_groups: tuple[int, ...]
    ec_point_formats: tuple[int, ...]
    supported_versions: tuple[int, ...]
    session_id: bytes = b""

    @property
    def max_version(self) -> int:
        """Highest version offered: supported_versions minus GREASE when the extension is
        there (RFC 8446 4.2.1 makes legacy_version 0x0303 then), else legacy_version."""
        versions = [v for v in self.supported_versions if v not in _GREASE]
        return max(versions) if versions else self.legacy_version


class _Reader:
    """Bounds-checked cursor: every short read becomes a ClientHelloError naming the field."""

    __slots__ = ("buf", "end", "pos")

    def __init__(self, buf: bytes, pos: int = 0, end: int | None = None) -> None:
        self.buf = buf
        self.pos = pos
        self.end = len(buf) if end is None else end

    def remaining(self) -> int:
        return self.end - self.pos

    def _need(self, n: int, what: str) -> None:
        if self.end - self.pos < n:
            raise ClientHelloError(
                f"truncated {what}: needs {n} bytes at offset {self.pos}, "
                f"only {self.end - self.pos} left"
            )

    def u8(self, what: str) -> int:
        self._need(1, what)
        v = self.buf[self.pos]
        self.pos += 1
        return v

    def u16(self, what: str) -> int:
        self._need(2, what)
        p = self.pos
        self.pos = p + 2
        return (self.buf[p] << 8) | self.buf[p + 1]

    def u24(self, what: str) -> int:
        self._need(3, what)
        p = self.pos
        self.pos = p + 3
        return (self.buf[p] << 16) | (self.buf[p + 1] << 8) | self.buf[p + 2]

    def take(self, n: int, what: str) -> bytes:
        self._need(n, what)
        p = self.pos
        self.pos = p + n
        return self.buf[p : p + n]

    def sub(self, n: int, what: str) -> _Reader:
        """A reader over the next n bytes (a length-prefixed vector's body)."""
        self._need(n, what)
        r = _Reader(self.buf, self.pos, self.pos + n)
        self.pos += n
        return r

    def u16_list(self, n: int, what: str) -> tuple[int, ...]:
        if n % 2:
            raise ClientHelloError(f"{what} has odd length {n}; it is a list of 16-bit values")
        self._need(n, what)
        vals: tuple[int, ...] = struct.unpack_from(f">{n // 2}H", self.buf, self.pos)
        self.pos += n
        return vals

    def expect_end(self, what: str) -> None:
        if self.pos != self.end:
            raise ClientHelloError(f"{what} has {self.end - self.pos} unexpected trailing bytes")


def _handshake_bytes(data: bytes) -> bytes:
    """The handshake stream carried by the leading handshake records.

    RFC 8446 5.1 lets a handshake message span several records, so records are joined
    until the ClientHello's own length is covered; later bytes are ignored.
    """
    chunks: list[bytes] = []
    got = 0
    need = -1  # handshake bytes required, known once the 4-byte header is in
    pos = 0
    n = len(data)
    while need < 0 or got < need:
        if pos == n:
            raise ClientHelloError(
                f"truncated ClientHello: records carry {got} handshake bytes"
                + (f", message needs {need}" if need >= 0 else "")
            )
        if n - pos < 5:
            raise ClientHelloError(f"truncated record header at offset {pos}")
        ctype = data[pos]
        if ctype != _CONTENT_HANDSHAKE:
            raise ClientHelloError(
                f"record at offset {pos} has content type {ctype:#04x}, not handshake (0x16)"
            )
        if data[pos + 1] != 3:
            raise ClientHelloError(
                f"record at offset {pos} has version {data[pos + 1]:#04x}{data[pos + 2]:02x}, "
                "not 0x03xx"
            )
        length = (data[pos + 3] << 8) | data[pos + 4]
        if length == 0:
            # RFC 8446 5.1: zero-length handshake fragments MUST NOT be sent.
            raise ClientHelloError(f"record at offset {pos} is an empty handshake fragment")
        if length > _MAX_RECORD_LEN:
            raise ClientHelloError(f"record at offset {pos} is {length} bytes, over 2^14")
        if n - pos - 5 < length:
            raise ClientHelloError(
                f"truncated record at offset {pos}: header says {length} bytes, "
                f"{n - pos - 5} present"
            )
        chunks.append(data[pos + 5 : pos + 5 + length])
        got += length
        pos += 5 + length
        if need < 0 and got >= 4:
            head = chunks[0] if len(chunks[0]) >= 4 else b"".join(chunks)
            need = 4 + ((head[1] << 16) | (head[2] << 8) | head[3])
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def parse_client_hello(data: bytes) -> ClientHello:
    """Parse a ClientHello given as TLS record(s) (first byte 0x16) or as the bare
    handshake message (first byte 0x01). Raises ClientHelloError on anything malformed."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ClientHelloError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise ClientHelloError("empty input")
    first = data[0]
    if first == _CONTENT_HANDSHAKE:
        hs = _handshake_bytes(data)
    elif first == _HS_CLIENT_HELLO:
        hs = data
    else:
        # 0x80-0xff here is usually an SSLv2-compatible hello, which has no extensions
        # and so no JA4 worth computing.
        raise ClientHelloError(
            f"first byte {first:#04x} is neither a handshake record (0x16) "
            "nor a ClientHello message (0x01)"
        )

    r = _Reader(hs)
    msg_type = r.u8("handshake type")
    if msg_type != _HS_CLIENT_HELLO:
        raise ClientHelloError(f"handshake type {msg_type} is not ClientHello (1)")
    body_len = r.u24("handshake length")
    if body_len > _MAX_HELLO_LEN:
        raise ClientHelloError(f"ClientHello length {body_len} is implausibly large")
    b = r.sub(body_len, "ClientHello body")

    legacy_version = b.u16("legacy_version")
    b.take(32, "random")
    sid_len = b.u8("session_id length")
    if sid_len > 32:
        raise ClientHelloError(f"session_id length {sid_len} exceeds 32")
    session_id = b.take(sid_len, "session_id")
    cs_len = b.u16("cipher_suites length")
    if cs_len == 0:
        raise ClientHelloError("cipher_suites is empty")
    cipher_suites = b.u16_list(cs_len, "cipher_suites")
    cm_len = b.u8("compression_methods length")
    if cm_len == 0:
        raise ClientHelloError("compression_methods is empty")
    compression_methods = b.take(cm_len, "compression_methods")

    extensions: list[int] = []
    sni: str | None = None
    alpn: tuple[bytes, ...] = ()
    sigalgs: tuple[int, ...] = ()
    groups: tuple[int, ...] = ()
    point_formats: tuple[int, ...] = ()
    versions: tuple[int, ...] = ()
    seen: set[int] = set()

    # RFC 5246 7.4.1.2: a hello may end after compression_methods (no extensions block).
    if b.remaining():
        ext_total = b.u16("extensions length")
        e = b.sub(ext_total, "extensions")
        b.expect_end("ClientHello body")
        # Inlined walk: this loop is most of the parse cost, so no per-extension
        # reader or message formatting unless something is wrong.
        buf, pos, end = e.buf, e.pos, e.end
        while pos < end:
            if end - pos < 4:
                raise ClientHelloError(
                    f"truncated extension header at offset {pos}: only {end - pos} bytes left"
                )
            ext_type = (buf[pos] << 8) | buf[pos + 1]
            ext_len = (buf[pos + 2] << 8) | buf[pos + 3]
            start = pos + 4
            pos = start + ext_len
            if pos > end:
                raise ClientHelloError(
                    f"truncated extension {ext_type:#06x} data: needs {ext_len} bytes "
                    f"at offset {start}, only {end - start} left"
                )
            extensions.append(ext_type)
            if ext_type not in _PARSED_EXTENSIONS or ext_type in seen:
                # RFC 8446 4.2: duplicates are illegal; keep the id (it is what was
                # sent) but read values from the first occurrence only.
                continue
            seen.add(ext_type)
            x = _Reader(buf, start, pos)
            if ext_type == EXT_SERVER_NAME:
                sni = _parse_sni(x)
            elif ext_type == EXT_ALPN:
                alpn = _parse_alpn(x)
            elif ext_type == EXT_SIGNATURE_ALGORITHMS:
                sigalgs = x.u16_list(x.u16("signature_algorithms length"), "signature_algorithms")
                x.expect_end("signature_algorithms extension")
            elif ext_type == EXT_SUPPORTED_GROUPS:
                groups = x.u16_list(x.u16("supported_groups length"), "supported_groups")
                x.expect_end("supported_groups extension")
            elif ext_type == EXT_EC_POINT_FORMATS:
                point_formats = tuple(x.take(x.u8("ec_point_formats length"), "ec_point_formats"))
                x.expect_end("ec_point_formats extension")
            elif ext_type == EXT_SUPPORTED_VERSIONS:
                versions = x.u16_list(x.u8("supported_versions length"), "supported_versions")
                x.expect_end("supported_versions extension")

    return ClientHello(
        legacy_version=legacy_version,
        cipher_suites=cipher_suites,
        compression_methods=compression_methods,
        extensions=tuple(extensions),
        sni=sni,
        alpn=alpn,
        signature_algorithms=sigalgs,
        supported_groups=groups,
        ec_point_formats=point_formats,
        supported_versions=versions,
        session_id=session_id,
    )


def _parse_sni(x: _Reader) -> str | None:
    lst = x.sub(x.u16("server_name list length"), "server_name list")
    x.expect_end("server_name extension")
    host: str | None = None
    while lst.remaining():
        name_type = lst.u8("server_name type")
        name = lst.take(lst.u16("server_name length"), "server_name")
        if name_type == 0 and host is None:
            # RFC 6066 3: host_name is ASCII; a broken client must not cost us the hello.
            host = name.decode("ascii", "replace")
    return host


def _parse_alpn(x: _Reader) -> tuple[bytes, ...]:
    lst = x.sub(x.u16("ALPN list length"), "ALPN list")
    x.expect_end("ALPN extension")
    protos: list[bytes] = []
    while lst.remaining():
        protos.append(lst.take(lst.u8("ALPN protocol length"), "ALPN protocol"))
    return tuple(protos)
