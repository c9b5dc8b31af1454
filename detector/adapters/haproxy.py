"""The HAProxy input adapters: one line of a shipped log-format into the native
ClientRequest contract (docs/contracts.md), JA3 and JA4 computed from the ClientHello
lists HAProxy captured. Two formats, chosen by the input topic (setting
`input_format`), never by the line:
- `haproxy`: config/edges/haproxy/haproxy.cfg.example, HAProxy 2.5 to 3.0 fetches
  (Debian 12: 2.6.12), log-format version 1 (`"haproxy":1`); records are marked
  `edge: "haproxy"`, JA4 is partial (part c `?`: no signature algorithms);
- `haproxy-3.1`: config/edges/haproxy/haproxy-3.1.cfg.example, the same fields plus
  `ssl_fc_sigalgs_bin` and `ssl_fc_supported_versions_bin` (HAProxy 3.1 and later),
  log-format version 2 (`"haproxy":2`); records are marked `edge: "haproxy-3.1"`,
  JA4 is full. A line of the other version is refused (invalid_value), and a 3.1
  line without the two lists is refused (missing_field): a line cannot turn the full
  JA4 of a 3.1 topic into a partial one, nor claim 3.1 on a 2.6 topic.

A line is a JSON object that HAProxy's log-format writes (`json(utf8s)` escaping of
every text, `%{+Q}` quoting: an absent value is ""). What it gives, and what it
cannot:
- header names in the order received, lower-cased by HAProxy for every HTTP version
  (`req.hdr_names`); the values of the headers the log-format names (`hdr`), the
  others arrive with an empty value; over HTTP/2 the `:authority` becomes a leading
  `host` header, turned back into `h2.authority` here;
- JA3 from `ssl_fc_protocol_hello_id` and the hex of `ssl_fc_cipherlist_bin`,
  `ssl_fc_extlist_bin`, `ssl_fc_eclist_bin`, `ssl_fc_ecformats_bin` (GREASE removed,
  as the JA3 definition says); the SNI; the ALPN negotiated (not the list offered:
  JA4's ALPN characters are those of the protocol HAProxy picked, the first one
  offered for a client that offers h2 first); the TLS version negotiated. At 3.1
  also `ssl_fc_sigalgs_bin` (JA4 part c) and `ssl_fc_supported_versions_bin` (JA4's
  version: the highest offered). No raw ClientHello, no HTTP/2 fingerprint.

A line that is cut short (HAProxy's `log ... len`, a syslog relay's maximum message
size) is rejected with code `truncated`; any other bad line with the code of what is
wrong; nothing here raises past `decode_message` / `decode_line`.
"""

from __future__ import annotations

import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from detector.adapters._lines import decode_lines, json_value, validated
from detector.decode.contract import MAX_CLIENT_HELLO_CHARS, DecodeLimits
from detector.decode.messages import Decoded, line_bytes
from detector.decode.rejections import InvalidRequest
from detector.fingerprints.clienthello import EXT_SIGNATURE_ALGORITHMS, EXT_SUPPORTED_VERSIONS
from detector.fingerprints.ja4 import partial_from_parts
from detector.fingerprints.tls import hello_from_lists, ja3, ja4, ja4_partial
from detector.model import ClientRequest


@dataclass(frozen=True, slots=True)
class LogFormat:
    """One shipped log-format: the version its lines carry (the "haproxy" key), the
    edge profile its records are marked with, whether its lists give the full JA4."""

    version: int
    edge: str
    config: str
    full_ja4: bool


HAPROXY_26 = LogFormat(1, "haproxy", "config/edges/haproxy/haproxy.cfg.example", full_ja4=False)
HAPROXY_31 = LogFormat(2, "haproxy-3.1", "config/edges/haproxy/haproxy-3.1.cfg.example", full_ja4=True)
EDGE = HAPROXY_26.edge
EDGE_31 = HAPROXY_31.edge
FORMAT_VERSION = HAPROXY_26.version  # the log-format's "haproxy" key: a line of another version is refused
FORMAT_VERSION_31 = HAPROXY_31.version
_HTTP_VERSIONS = {"1.0": "1.0", "1.1": "1.1", "2.0": "2", "2": "2", "3.0": "3", "3": "3"}
# a ClientHello list in hex is at most the hello, and the contract bounds a hello at
# MAX_CLIENT_HELLO_CHARS of base64 (3 bytes a 4 characters)
_MAX_HEX_CHARS = 2 * (MAX_CLIENT_HELLO_CHARS * 3 // 4)
_MARKER = b'{"haproxy":'  # a syslog header before it (a relay forwards the whole syslog line) is skipped
_CUT_HINT = "raise `log ... len` in haproxy.cfg and the relay's maximum message size"


def _text(obj: Mapping[str, Any], key: str, where: str = "") -> str:
    v = obj.get(key, "")
    if not isinstance(v, str):
        raise InvalidRequest(f"haproxy field {where}{key!r} must be a string", "invalid_type")
    return v


def _u16_list(hexed: str, what: str) -> tuple[int, ...]:
    raw = _unhex(hexed, what)
    if len(raw) % 2:
        raise InvalidRequest(f"haproxy tls.{what} is {len(raw)} bytes, not a list of 16-bit values", "invalid_value")
    return tuple(int.from_bytes(raw[i:i + 2], "big") for i in range(0, len(raw), 2))


def _unhex(hexed: str, what: str) -> bytes:
    if len(hexed) > _MAX_HEX_CHARS:  # bounded before any of it is read
        raise InvalidRequest(f"haproxy tls.{what} of {len(hexed)} hex characters exceeds {_MAX_HEX_CHARS} (a "
                             "ClientHello's list is at most the hello)", "oversized")
    try:
        return binascii.unhexlify(hexed)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"haproxy tls.{what} is not hex", "invalid_value") from None


def _present_text(obj: Mapping[str, Any], key: str) -> str:
    """A field the 3.1 format always writes (%{+Q}: "" when HAProxy has no value)."""
    if key not in obj:
        raise InvalidRequest(f"haproxy field tls.{key!r} is missing: a line of the HAProxy 3.1 log-format "
                             f"({HAPROXY_31.config}) always has it", "missing_field")
    return _text(obj, key, "tls.")


def _tls(tls: Any, fmt: LogFormat) -> dict[str, Any] | None:
    """The contract's `tls` object from HAProxy's TLS fields; None for a connection
    without TLS (no ClientHello captured)."""
    if not isinstance(tls, dict):
        raise InvalidRequest("haproxy field 'tls' must be an object", "invalid_type")
    hello = _text(tls, "hello", "tls.")
    out: dict[str, Any] = {}
    for src, dst in (("sni", "sni"), ("alpn", "alpn"), ("version", "version")):
        v = _text(tls, src, "tls.")
        if v:
            out[dst] = v
    if not hello:  # no TLS, or tune.ssl.capture-buffer-size left at 0: no lists
        return out or None
    if not (hello.isascii() and hello.isdigit() and len(hello) <= 5) or int(hello) > 0xFFFF:
        raise InvalidRequest("haproxy tls.hello must be the ClientHello's version as an integer", "invalid_value")
    formats = _unhex(_text(tls, "formats", "tls."), "formats")
    alpn = out.get("alpn")
    exts = _u16_list(_text(tls, "exts", "tls."), "exts")
    sigalgs: tuple[int, ...] = ()
    versions: tuple[int, ...] = ()
    if fmt.full_ja4:
        sigalgs = _u16_list(_present_text(tls, "sigalgs"), "sigalgs")
        versions = _u16_list(_present_text(tls, "versions"), "versions")
        # each list comes from its extension: one without the other is a capture
        # buffer too small (tune.ssl.capture-buffer-size) or an edited line
        for ext, values, what in ((EXT_SIGNATURE_ALGORITHMS, sigalgs, "sigalgs"),
                                  (EXT_SUPPORTED_VERSIONS, versions, "versions")):
            if (ext in exts) != bool(values):
                raise InvalidRequest(f"haproxy tls.{what} {'is empty' if values == () else 'is set'} but the "
                                     f"extension list {'has' if ext in exts else 'lacks'} extension {ext} (raise "
                                     "tune.ssl.capture-buffer-size)", "invalid_value")
    ch = hello_from_lists(int(hello), _u16_list(_text(tls, "ciphers", "tls."), "ciphers"), exts,
                          _u16_list(_text(tls, "groups", "tls."), "groups"), tuple(formats),
                          alpn.encode("latin-1", "replace") if alpn else None,
                          signature_algorithms=sigalgs, supported_versions=versions)
    out["ja3_full"], out["ja3"] = ja3(ch)
    if fmt.full_ja4:
        # every part: the version the highest offered, part c with the signature algorithms
        out["ja4"] = ja4(ch)
    else:
        # parts a and b of JA4, part c unknown (docs/contracts.md "Partial JA4")
        out["ja4"] = partial_from_parts(*ja4_partial(ch, out.get("version")))
    return out


def native(obj: Any, fmt: LogFormat = HAPROXY_26, limits: DecodeLimits = DecodeLimits()) -> dict[str, Any]:
    """The native ClientRequest object (docs/contracts.md) of one parsed log line of
    `fmt`; raises InvalidRequest (reason, code) when the line is not that format."""
    if not isinstance(obj, dict):
        raise InvalidRequest("a HAProxy log line must be a JSON object", "invalid_type")
    version = obj.get("haproxy")
    if type(version) is not int or version != fmt.version:  # true and 1.0 equal 1, and are not the version
        raise InvalidRequest(f"not a line of the HAProxy log-format version {fmt.version} ({fmt.config}; "
                             f"input format {fmt.edge})", "invalid_value")
    request_id = _text(obj, "id")
    if not request_id:
        raise InvalidRequest("haproxy field 'id' is empty: the frontend needs unique-id-format", "missing_field")
    ver = _text(obj, "ver")
    http_version = _HTTP_VERSIONS.get(ver)
    if ver and http_version is None:
        raise InvalidRequest(f"haproxy field 'ver' {ver[:16]!r} is not an HTTP version", "invalid_value")
    names_text = _text(obj, "names")
    values = obj.get("hdr", {})
    if not isinstance(values, dict):
        raise InvalidRequest("haproxy field 'hdr' must be an object", "invalid_type")
    names = names_text.split(",", limits.max_headers) if names_text else []
    if len(names) > limits.max_headers:  # told before a header is built
        raise InvalidRequest(f"haproxy field 'names' lists more than limits.max_headers={limits.max_headers} "
                             "headers", "too_many")
    headers: list[list[str]] = []
    for name in names:
        v = values.get(name, "")
        if not isinstance(v, str):
            raise InvalidRequest(f"haproxy header value of {name[:64]!r} must be a string", "invalid_type")
        headers.append([name, v])
    out: dict[str, Any] = {
        "request_id": request_id,
        "ts": obj.get("ts"),
        "client_ip": _text(obj, "ci"),
        "method": _text(obj, "method"),
        "path": _text(obj, "path"),
        "headers": headers,
        "edge": fmt.edge,
    }
    # HTTP/2: HAProxy turns :authority into a Host header in front of the others
    if http_version in ("2", "3") and headers and headers[0][0] == "host":
        out["h2"] = {"authority": headers.pop(0)[1]}
    query = _text(obj, "query")
    if query:
        out["query"] = query
    if http_version:
        out["http_version"] = http_version
    status = obj.get("status")
    if isinstance(status, int) and not isinstance(status, bool) and status >= 0:
        out["response_status"] = status
    if "tls" in obj:
        tls = _tls(obj["tls"], fmt)
        if tls:
            out["tls"] = tls
    return out


def decode_line(line: bytes | str, limits: DecodeLimits = DecodeLimits()) -> ClientRequest:
    """One line of the HAProxy 2.6 log-format into a ClientRequest; raises
    InvalidRequest (reason, code)."""
    return _decode_line(line, limits, HAPROXY_26)


def decode_line_31(line: bytes | str, limits: DecodeLimits = DecodeLimits()) -> ClientRequest:
    """One line of the HAProxy 3.1 log-format into a ClientRequest; raises
    InvalidRequest (reason, code)."""
    return _decode_line(line, limits, HAPROXY_31)


def _decode_line(line: bytes | str, limits: DecodeLimits, fmt: LogFormat) -> ClientRequest:
    raw = line_bytes(line, limits)
    return validated(native(json_value(raw, "HAProxy", _CUT_HINT, _MARKER), fmt, limits), limits)


def decode_message(value: bytes | None, limits: DecodeLimits = DecodeLimits()) -> Decoded:
    """A Kafka message of HAProxy 2.6 log lines (rsyslog's omkafka sends one per
    message; a relay that batches sends several, one per line) into requests and
    rejections."""
    return _decode_message(value, limits, HAPROXY_26)


def decode_message_31(value: bytes | None, limits: DecodeLimits = DecodeLimits()) -> Decoded:
    """A Kafka message of HAProxy 3.1 log lines into requests and rejections."""
    return _decode_message(value, limits, HAPROXY_31)


def _decode_message(value: bytes | None, limits: DecodeLimits, fmt: LogFormat) -> Decoded:
    return decode_lines(value, limits, lambda line, lim: _decode_line(line, lim, fmt))
