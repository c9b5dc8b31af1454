"""The Envoy input adapter: one line of the shipped JSON access log
(config/edges/envoy/envoy.yaml.example: a file or stdout access logger's `json_format`,
Envoy 1.35 and later) into the native ClientRequest contract (docs/contracts.md).

The line is the JSON object Envoy's formatter writes for the shipped `json_format`:
every value a string (an unset or empty value is `"-"`, or the key is absent with
`omit_empty_values`), keys as the config names them:

- `envoy`: the format's version ("1"); `ts` %START_TIME% (RFC 3339, or epoch seconds
  with `%START_TIME(%s.%3f)%`); `id` %STREAM_ID% (the x-request-id of an HTTP request);
  `ci` %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%; `method` %REQ(:METHOD)%; `path`
  %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% (path and query, split here); `proto` %PROTOCOL%;
  `authority` %REQ(:AUTHORITY)%; `status` %RESPONSE_CODE%;
- `tls`: `sni` %REQUESTED_SERVER_NAME%, `version` %DOWNSTREAM_TLS_VERSION%, `ja3`
  %TLS_JA3_FINGERPRINT% (the MD5 only: Envoy logs no JA3 string), `ja4`
  %TLS_JA4_FINGERPRINT% (the full JA4 string), both from the listener's tls_inspector;
- `req`: request header name (lower case) to %REQ(name)%, for every header the config
  names. Envoy keeps headers in a map: neither their order nor, over HTTP/1, their case
  arrives, and only the headers named. The adapter emits the headers present sorted by
  name (a fixed order, the same for every request; the `envoy` edge profile says order,
  case and the full set of names are lost, so the checks needing them do not fire). A
  header whose value is `-` (absent, or empty) is not emitted; over HTTP/1 the
  authority is the Host header (first), over HTTP/2 and 3 it is `h2.authority`. Two
  `req` keys that differ only in case (`User-Agent`, `user-agent`) reject the line
  `invalid_value`: the shipped config names each header once, in lower case.

No raw ClientHello, no ALPN list, no HTTP/2 fingerprint, no body hash. Every request is
marked `edge: "envoy"`. A line cut short (a shipper's line limit) is rejected with code
`truncated`; any other bad line with the code of what is wrong; nothing here raises
past `decode_message` / `decode_line`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from detector.adapters._lines import (
    HTTP_VERSIONS,
    MAX_HEADERS_OBJECT,
    check_ja3,
    check_ja4,
    decode_lines,
    json_object,
    validated,
)
from detector.decode.contract import DecodeLimits
from detector.decode.messages import Decoded, line_bytes
from detector.decode.rejections import InvalidRequest
from detector.model import ClientRequest

EDGE = "envoy"
FORMAT_VERSION = "1"  # the json_format's "envoy" key: a line of another version is refused
UNSET = "-"  # what Envoy's formatter writes for a value that is not set or empty
_CUT_HINT = "raise the log shipper's maximum line size"


def _opt(obj: Mapping[str, Any], key: str, where: str = "") -> str | None:
    """A string value of the line; None when absent or unset ("-")."""
    v = obj.get(key)
    if v is None:
        return None
    if not isinstance(v, str):
        raise InvalidRequest(f"envoy field {where}{key!r} must be a string", "invalid_type")
    return None if v in (UNSET, "") else v


def _required(obj: Mapping[str, Any], key: str, operator: str) -> str:
    v = _opt(obj, key)
    if v is None:
        raise InvalidRequest(f"envoy field {key!r} is unset: the access log needs {operator}", "missing_field")
    return v


def _ts(obj: Mapping[str, Any]) -> str | float:
    v = obj.get("ts")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)  # judged by the contract's range
    ts = _required(obj, "ts", "%START_TIME%")
    if ts.isascii() and ts[0].isdigit() and ts.replace(".", "", 1).isdigit():  # %START_TIME(%s.%3f)%
        return float(ts)
    return ts  # RFC 3339 (the default %START_TIME%), judged by the contract


def _status(obj: Mapping[str, Any]) -> int | None:
    v = obj.get("status")
    if isinstance(v, int) and not isinstance(v, bool):  # typed_json_format
        return v
    s = _opt(obj, "status")
    if s is None:
        return None
    if not (s.isascii() and s.isdigit() and len(s) <= 3):
        raise InvalidRequest(f"envoy field 'status' {s[:16]!r} is not a response code", "invalid_value")
    return int(s)


def _tls(tls: Any) -> dict[str, str] | None:
    """The contract's `tls` object (JA3 hash without `ja3_full`, the full JA4, the SNI and
    version); None for a request without TLS (every value unset)."""
    if not isinstance(tls, dict):
        raise InvalidRequest("envoy field 'tls' must be an object", "invalid_type")
    out: dict[str, str] = {}
    for key in ("sni", "version"):
        v = _opt(tls, key, "tls.")
        if v is not None:
            out[key] = v
    ja3 = _opt(tls, "ja3", "tls.")
    if ja3 is not None:
        out["ja3"] = check_ja3(ja3, "envoy tls.ja3")
    ja4 = _opt(tls, "ja4", "tls.")
    if ja4 is not None:
        out["ja4"] = check_ja4(ja4, "envoy tls.ja4")
    return out or None


def _headers(req: Any, authority: str | None, http_version: str | None) -> list[list[str]]:
    if not isinstance(req, dict):
        raise InvalidRequest("envoy field 'req' must be an object", "invalid_type")
    if len(req) > MAX_HEADERS_OBJECT:
        raise InvalidRequest(f"envoy field 'req' names {len(req)} headers (at most {MAX_HEADERS_OBJECT})", "too_many")
    headers: list[list[str]] = []
    seen: set[str] = set()
    for name in sorted(req, key=str.lower):
        low = name.lower()
        if low in seen:  # the json_format names each header once
            raise InvalidRequest(f"envoy field 'req' names {low[:64]!r} twice (keys that differ only in case)",
                                 "invalid_value")
        seen.add(low)
        v = _opt(req, name, "req.")
        if v is not None and low not in ("host", ":authority"):
            headers.append([low, v])
    # HTTP/1: Envoy keeps the Host header as :authority; it is the Host the client sent
    if authority is not None and http_version not in ("2", "3"):
        headers.insert(0, ["host", authority])
    return headers


def native(obj: dict[str, Any]) -> dict[str, Any]:
    """The native ClientRequest object (docs/contracts.md) of one parsed access log
    line; raises InvalidRequest (reason, code) when the line is not the shipped format."""
    version = obj.get("envoy")
    if version != FORMAT_VERSION and not (type(version) is int and str(version) == FORMAT_VERSION):
        raise InvalidRequest(f"not a line of the Envoy access log format version {FORMAT_VERSION} "
                             "(config/edges/envoy/envoy.yaml.example)", "invalid_value")
    proto = _opt(obj, "proto")
    http_version = HTTP_VERSIONS.get(proto) if proto is not None else None
    if proto is not None and http_version is None:
        raise InvalidRequest(f"envoy field 'proto' {proto[:16]!r} is not an HTTP protocol", "invalid_value")
    target = _required(obj, "path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%")
    path, sep, query = target.partition("?")
    authority = _opt(obj, "authority")
    out: dict[str, Any] = {
        "request_id": _required(obj, "id", "%STREAM_ID%"),
        "ts": _ts(obj),
        "client_ip": _required(obj, "ci", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"),
        "method": _required(obj, "method", "%REQ(:METHOD)%"),
        "path": path,
        "headers": _headers(obj.get("req", {}), authority, http_version),
        "edge": EDGE,
    }
    if sep:
        out["query"] = query
    if http_version:
        out["http_version"] = http_version
    if authority is not None and http_version in ("2", "3"):
        out["h2"] = {"authority": authority}
    status = _status(obj)
    if status is not None:
        out["response_status"] = status
    if "tls" in obj:
        tls = _tls(obj["tls"])
        if tls:
            out["tls"] = tls
    return out


def decode_line(line: bytes | str, limits: DecodeLimits = DecodeLimits()) -> ClientRequest:
    """One Envoy access log line into a ClientRequest; raises InvalidRequest (reason, code)."""
    obj = json_object(line_bytes(line, limits), "Envoy", _CUT_HINT)
    return validated(native(obj), limits)


def decode_message(value: bytes | None, limits: DecodeLimits = DecodeLimits()) -> Decoded:
    """A Kafka message of Envoy access log lines (a shipper sends one line per message,
    or several newline-separated) into requests and rejections."""
    return decode_lines(value, limits, decode_line)
