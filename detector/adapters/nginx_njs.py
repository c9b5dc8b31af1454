"""The nginx-njs input adapter: one line of the shipped access log (nginx 1.22 with
njs 0.7.9, config/edges/nginx/nginx.conf.example and detector.js) into the native
ClientRequest contract (docs/contracts.md).

The njs module writes the contract itself, behind a version marker: `{"nginx":1,
"request_id":..., "headers":[[name, value], ...], ...}` (`log_format ... escape=none`,
the object is njs's JSON.stringify). What it gives, and what it cannot:
- every header name in the order received with the case the client sent
  (`r.rawHeadersIn`; HTTP/2 names are lower-case on the wire), every value but the
  credentials detector.js blanks; over HTTP/2 nginx turns `:authority` into a
  leading `host` header, which detector.js writes back as `h2.authority`;
- the TLS SNI, version, cipher (`tls.cipher`, kept, not judged) and the ALPN
  negotiated; no ClientHello, JA3 or JA4 (a stock nginx has none), no HTTP/2
  fingerprint;
- the body's SHA-256 and size when nginx held the body in memory (njs crypto over
  `r.requestBuffer`).

Every request is marked `edge: "nginx-njs"` (an `edge` in the line is overwritten: the
adapter's format decides it). Only the keys detector.js writes are taken from a line
(`tls` and `h2` likewise): any other key (`network`, `attestation`, `tls.ja4`, ...)
is dropped, as nginx provides none of them. A line cut short (a syslog relay's maximum message
size) is rejected with code `truncated`; any other bad line with the code of what is
wrong; nothing here raises past `decode_message` / `decode_line`.
"""

from __future__ import annotations

from typing import Any

from detector.adapters._lines import decode_lines, json_value, validated
from detector.decode.contract import DecodeLimits
from detector.decode.messages import Decoded, line_bytes
from detector.decode.rejections import InvalidRequest
from detector.model import ClientRequest

EDGE = "nginx-njs"
FORMAT_VERSION = 1  # detector.js's "nginx" key: a line of another version is refused
# the keys detector.js writes (config/edges/nginx/detector.js `line`): only they are
# taken from a line; nginx has no network enrichment, attestation or TLS fingerprint
_KEYS = frozenset({"request_id", "ts", "client_ip", "method", "path", "query", "headers", "http_version", "h2",
                   "response_status", "tls", "body_size", "body_sha256"})
_TLS_KEYS = frozenset({"version", "cipher", "sni", "alpn"})
_H2_KEYS = frozenset({"authority"})
_MARKER = b'{"nginx":'  # a syslog header before it (a relay forwards the whole syslog line) is skipped
_CUT_HINT = "raise the relay's maximum message size: rsyslog's maxMessageSize"


def native(obj: Any) -> dict[str, Any]:
    """The native ClientRequest object of one parsed log line (the line without its
    marker, marked with the edge); raises InvalidRequest (reason, code) when the line
    is not the shipped format."""
    if not isinstance(obj, dict):
        raise InvalidRequest("an nginx-njs log line must be a JSON object", "invalid_type")
    version = obj.get("nginx")
    if type(version) is not int or version != FORMAT_VERSION:  # true and 1.0 equal 1, and are not the version
        raise InvalidRequest(f"not a line of the nginx-njs log format version {FORMAT_VERSION} "
                             "(config/edges/nginx/detector.js)", "invalid_value")
    out = {k: v for k, v in obj.items() if k in _KEYS}
    for key, keys in (("tls", _TLS_KEYS), ("h2", _H2_KEYS)):
        v = out.get(key)
        if isinstance(v, dict):  # another type: the contract's validator refuses it
            out[key] = {k: x for k, x in v.items() if k in keys}
    out["edge"] = EDGE
    return out


def decode_line(line: bytes | str, limits: DecodeLimits = DecodeLimits()) -> ClientRequest:
    """One nginx-njs log line into a ClientRequest; raises InvalidRequest (reason, code)."""
    return validated(native(json_value(line_bytes(line, limits), "nginx-njs", _CUT_HINT, _MARKER)), limits)


def decode_message(value: bytes | None, limits: DecodeLimits = DecodeLimits()) -> Decoded:
    """A Kafka message of nginx-njs log lines (rsyslog's omkafka sends one per message;
    a relay that batches sends several, one per line) into requests and rejections."""
    return decode_lines(value, limits, decode_line)
