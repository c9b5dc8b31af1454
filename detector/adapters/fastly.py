"""The Fastly input adapter: one JSON line of the shipped Fastly Compute logger
(config/edges/fastly/compute-logger.rs.example; its shape in
config/edges/fastly/README.md) into the native ClientRequest contract
(docs/contracts.md). Fastly's Kafka logging endpoint puts each logged line into
Kafka as it is.

What a Compute service gives (fastly crate, `fastly::handle`): the header names as
received, in order and case (`client_original_header_names`), the raw TLS ClientHello
(`client_tls_client_hello`, logged as base64: it becomes the contract's
`tls.client_hello`, so the detector computes JA3 and JA4 itself, and its server_name
the `tls.sni`), Fastly's JA3 and JA4, the HTTP/2 fingerprint (`client_h2_fingerprint`), the body's SHA-256
and size when the service reads it, and the geolocation's ASN, country and proxy
type (`hosting`: `network.hosting`).

A VCL service can log JA3 (`tls.client.ja3_md5`), JA4 (`tls.client.ja4`), the HTTP/2
fingerprint and the geolocation, but no raw ClientHello and no list of the header
names in order: its lines (config/edges/fastly/vcl-log-format.example, `"src":"vcl"`)
are refused (`invalid_value`), since the `fastly` edge profile would judge an order
and case they do not have.

Every request is marked `edge: "fastly"`. A line cut short is rejected `truncated`;
any other bad line with the code of what is wrong; nothing raises past
`decode_message` / `decode_line`.
"""

from __future__ import annotations

import binascii
from collections.abc import Mapping
from typing import Any

from detector.adapters._lines import HTTP_VERSIONS, check_ja3, check_ja4, decode_lines, json_value, validated
from detector.decode.contract import MAX_CLIENT_HELLO_CHARS, DecodeLimits
from detector.decode.messages import Decoded, line_bytes
from detector.decode.rejections import InvalidRequest
from detector.fingerprints.clienthello import ClientHelloError, parse_client_hello
from detector.model import ClientRequest

EDGE = "fastly"
FORMAT_VERSION = 1  # the line's "fastly" key: a line of another version is refused
_CUT_HINT = "raise the relay's maximum message size; Fastly's Kafka endpoint sends whole lines"


def _text(obj: Mapping[str, Any], key: str, where: str = "") -> str:
    v = obj.get(key, "")
    if v is None:
        return ""
    if not isinstance(v, str):
        raise InvalidRequest(f"fastly field {where}{key!r} must be a string", "invalid_type")
    return v


def _object(obj: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    v = obj.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise InvalidRequest(f"fastly field {key!r} must be an object", "invalid_type")
    return v


def _headers(value: Any) -> tuple[list[list[str]], str | None]:
    """The client's headers in order and case, and the HTTP/2 :authority when the
    list carries pseudo-headers (they go to h2, not to the headers)."""
    if not isinstance(value, list):
        raise InvalidRequest("fastly field 'headers' must be a list of [name, value] pairs", "invalid_type")
    out: list[list[str]] = []
    authority = None
    for pair in value:
        if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str) and isinstance(pair[1], str)):
            raise InvalidRequest("fastly field 'headers' must be a list of [name, value] string pairs",
                                 "invalid_type")
        name, v = pair
        if name.startswith(":"):
            if name == ":authority":
                authority = v
            continue
        out.append([name, v])
    return out, authority


def _tls(tls: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    hello = _text(tls, "hello", "tls.")
    for src, dst in (("ja3", "ja3"), ("ja4", "ja4"), ("sni", "sni"), ("protocol", "version")):
        if v := _text(tls, src, "tls."):
            out[dst] = v
    if "ja3" in out:  # Fastly's own, as Envoy's and Cloudflare's: the layout is checked
        check_ja3(out["ja3"], "fastly tls.ja3")
    if "ja4" in out:
        check_ja4(out["ja4"], "fastly tls.ja4")
    if hello:
        if len(hello) > MAX_CLIENT_HELLO_CHARS:  # told before it is decoded
            raise InvalidRequest(f"field 'tls.client_hello' of {len(hello)} chars exceeds {MAX_CLIENT_HELLO_CHARS}",
                                 "oversized")
        try:
            raw = binascii.a2b_base64(hello, strict_mode=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest("fastly tls.hello is not base64", "invalid_value") from None
        out["client_hello"] = hello  # the detector computes JA3 and JA4 from it
        if "sni" not in out:
            try:  # the SNI the client sent (the scope's host evidence); a bad hello is the TLS check's
                sni = parse_client_hello(raw).sni
            except ClientHelloError:
                sni = None
            if sni:
                out["sni"] = sni
    return out


def native(obj: Any) -> dict[str, Any]:
    """The native ClientRequest object (docs/contracts.md) of one parsed line;
    raises InvalidRequest (reason, code) when the line is not the shipped shape."""
    if not isinstance(obj, dict):
        raise InvalidRequest("a Fastly log line must be a JSON object", "invalid_type")
    version = obj.get("fastly")
    if type(version) is not int or version != FORMAT_VERSION:  # true and 1.0 equal 1, and are not the version
        raise InvalidRequest(f"not a line of the Fastly log shape version {FORMAT_VERSION} "
                             "(config/edges/fastly/README.md)", "invalid_value")
    src = _text(obj, "src")
    if src == "vcl":
        raise InvalidRequest("a Fastly VCL line has no header names in order and no ClientHello: the fastly edge "
                             "profile needs the Compute logger (config/edges/fastly/compute-logger.rs.example)",
                             "invalid_value")
    if src != "compute":
        raise InvalidRequest(f"fastly field 'src' {src[:16]!r} is not compute", "invalid_value")
    request_id = _text(obj, "id")
    if not request_id:
        raise InvalidRequest("fastly field 'id' is empty", "missing_field")
    if "headers" not in obj:
        raise InvalidRequest("fastly field 'headers' is absent", "missing_field")
    headers, authority = _headers(obj["headers"])
    proto = _text(obj, "proto")
    http_version = HTTP_VERSIONS.get(proto)
    if proto and http_version is None:
        raise InvalidRequest(f"fastly field 'proto' {proto[:16]!r} is not an HTTP version", "invalid_value")
    out: dict[str, Any] = {
        "request_id": request_id,
        "ts": obj.get("ts"),
        "client_ip": _text(obj, "ip"),
        "method": _text(obj, "method"),
        "path": _text(obj, "path"),
        "headers": headers,
        "edge": EDGE,
    }
    if query := _text(obj, "query"):
        out["query"] = query
    if http_version:
        out["http_version"] = http_version
    h2: dict[str, Any] = {}
    if fp := _text(obj, "h2"):
        h2["fingerprint"] = fp
    if authority is None and http_version in ("2", "3"):
        authority = _text(obj, "host") or None  # the logger's :authority when the list has no pseudo-headers
    if authority is not None:
        h2["authority"] = authority
    if h2:
        out["h2"] = h2
    if tls := _tls(_object(obj, "tls")):
        out["tls"] = tls
    geo = _object(obj, "geo")
    network: dict[str, Any] = {}
    if geo.get("asn") is not None:
        network["asn"] = geo["asn"]  # an integer: the native validator judges it
    if country := _text(geo, "country", "geo."):
        network["country"] = country.upper()
    proxy = _text(geo, "proxy", "geo.")
    if proxy and proxy != "?":
        network["hosting"] = proxy == "hosting"
    if network:
        out["network"] = network
    body = _object(obj, "body")
    if body.get("sha256") is not None:
        out["body_sha256"] = body["sha256"]
    if body.get("size") is not None:
        out["body_size"] = body["size"]
    if obj.get("status") is not None:
        out["response_status"] = obj["status"]
    return out


def decode_line(line: bytes | str, limits: DecodeLimits = DecodeLimits()) -> ClientRequest:
    """One Fastly log line into a ClientRequest; raises InvalidRequest (reason, code)."""
    raw = line_bytes(line, limits)
    return validated(native(json_value(raw, "Fastly", _CUT_HINT)), limits)


def decode_message(value: bytes | None, limits: DecodeLimits = DecodeLimits()) -> Decoded:
    """A Kafka message of Fastly log lines (the logging endpoint sends one per
    message; a relay that batches sends several, one per line)."""
    return decode_lines(value, limits, decode_line)
