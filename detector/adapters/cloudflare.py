"""The Cloudflare input adapter: one line of a Logpush job of the `http_requests` dataset
(NDJSON, the Logpush default output type; the shipped job is
config/edges/cloudflare/logpush-job.json.example) into the native ClientRequest
contract (docs/contracts.md). Logpush delivers batches of many lines; a Kafka message
may hold many of them, each judged on its own.

The fields, by their names in Cloudflare's http_requests field list:
- `RayID` the request id; `EdgeStartTimestamp` its time, in the job's
  `timestamp_format`: `unixnano` (the shipped job and the API's default: an integer of
  nanoseconds), `unix` (an integer of seconds) or `rfc3339` (a string); an integer is
  read by its size (below 10^11 seconds, from 10^17 nanoseconds, between: out of range);
- `ClientIP`, `ClientRequestMethod`, `ClientRequestURI` (path and query, split here),
  `ClientRequestProtocol` (`HTTP/1.1`, `HTTP/2`, `HTTP/3`), `EdgeResponseStatus`;
- `ClientRequestHost`: over HTTP/1 the `host` header, over HTTP/2 and 3 `h2.authority`;
- headers: `ClientRequestUserAgent` (`user-agent`), `ClientRequestReferer` (`referer`),
  `ClientXRequestedWith` (`x-requested-with`) and the `RequestHeaders` object of the
  zone's Logpush custom fields (names lower case, values strings; a pseudo-header
  name such as `:authority` is dropped, as is `host`: the host is
  `ClientRequestHost`). Cloudflare logs no header order and only the headers named:
  the adapter emits those with a value sorted by name (a fixed order, the same for
  every request; the `cloudflare` edge profile says order, case and the full set of
  names are lost, so the checks needing them do not fire). An empty value is read as
  an absent header;
- TLS: `ClientSSLProtocol` (`none`: no TLS), `JA3Hash` (the MD5 only, no JA3 string)
  and `JA4` (the full JA4), both Bot Management fields; no SNI, ALPN or ClientHello;
- network enrichment: `ClientASN` (`network.asn`, 0 read as unknown) and
  `ClientCountry` (`network.country`, upper-cased; `XX` and `T1`, Cloudflare's codes
  for an unknown country and Tor, are not countries and are dropped).

Every request is marked `edge: "cloudflare"`. A line cut short is rejected with code
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

EDGE = "cloudflare"
_CUT_HINT = "the relay between Logpush and Kafka must split batches at line ends"
_NANOS_FROM = 10**17  # unixnano: 2000-01-01 is 9.5e17
_SECONDS_BELOW = 10**11  # unix: 2200-01-01 is 7.3e9
_NOT_COUNTRIES = frozenset({"XX", "T1"})
_FIELD_HEADERS = (("ClientRequestUserAgent", "user-agent"), ("ClientRequestReferer", "referer"),
                  ("ClientXRequestedWith", "x-requested-with"))


def _opt(obj: Mapping[str, Any], key: str, where: str = "") -> str | None:
    """A string field; None when absent, null or empty."""
    v = obj.get(key)
    if v is None:
        return None
    if not isinstance(v, str):
        raise InvalidRequest(f"cloudflare field {where}{key!r} must be a string", "invalid_type")
    return v or None


def _required(obj: Mapping[str, Any], key: str) -> str:
    v = _opt(obj, key)
    if v is None:
        raise InvalidRequest(f"cloudflare field {key!r} is missing: the Logpush job must include it", "missing_field")
    return v


def _int(obj: Mapping[str, Any], key: str) -> int | None:
    v = obj.get(key)
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool):
        raise InvalidRequest(f"cloudflare field {key!r} must be an integer", "invalid_type")
    return v


_MAX_TS_DIGITS = 20  # unixnano has 19 digits until the year 2286


def _ts(obj: Mapping[str, Any]) -> str | float:
    v = obj.get("EdgeStartTimestamp")
    if isinstance(v, str) and v.isascii() and v.isdigit():  # an integer written as a string
        if len(v) > _MAX_TS_DIGITS:
            raise InvalidRequest(f"cloudflare field 'EdgeStartTimestamp' has {len(v)} digits", "out_of_range")
        v = int(v)
    if isinstance(v, bool):
        raise InvalidRequest("cloudflare field 'EdgeStartTimestamp' must be an integer or a string", "invalid_type")
    if isinstance(v, int):
        if not 0 <= v < 10 ** _MAX_TS_DIGITS:
            raise InvalidRequest("cloudflare field 'EdgeStartTimestamp' is out of range", "out_of_range")
        if v >= _NANOS_FROM:
            return v / 1_000_000_000
        if v < _SECONDS_BELOW:
            return float(v)
        raise InvalidRequest(f"cloudflare field 'EdgeStartTimestamp' {v} is neither unix seconds nor unixnano",
                             "out_of_range")
    if isinstance(v, float):
        return v
    return _required(obj, "EdgeStartTimestamp")  # rfc3339, judged by the contract


def _headers(obj: Mapping[str, Any], host: str | None, http_version: str | None) -> list[list[str]]:
    values: dict[str, str] = {}
    extra = obj.get("RequestHeaders")
    if extra is not None:
        if not isinstance(extra, dict):
            raise InvalidRequest("cloudflare field 'RequestHeaders' must be an object", "invalid_type")
        if len(extra) > MAX_HEADERS_OBJECT:
            raise InvalidRequest(f"cloudflare field 'RequestHeaders' holds {len(extra)} headers "
                                 f"(at most {MAX_HEADERS_OBJECT})", "too_many")
        for name in extra:
            v = _opt(extra, name, "RequestHeaders.")
            if v is not None and name and not name.startswith(":"):  # a pseudo-header is no header
                values[name.lower()] = v
    for field, name in _FIELD_HEADERS:  # the dataset's own fields win over a custom field
        v = _opt(obj, field)
        if v is not None:
            values[name] = v
    values.pop("host", None)
    headers = [[name, values[name]] for name in sorted(values)]
    if host is not None and http_version not in ("2", "3"):
        headers.insert(0, ["host", host])
    return headers


def _tls(obj: Mapping[str, Any]) -> dict[str, str] | None:
    out: dict[str, str] = {}
    version = _opt(obj, "ClientSSLProtocol")
    if version is not None and version != "none":
        out["version"] = version
    ja3 = _opt(obj, "JA3Hash")
    if ja3 is not None:
        out["ja3"] = check_ja3(ja3, "cloudflare JA3Hash")
    ja4 = _opt(obj, "JA4")
    if ja4 is not None:
        out["ja4"] = check_ja4(ja4, "cloudflare JA4")
    return out or None


def _network(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    asn = _int(obj, "ClientASN")
    if asn:  # 0: no AS known
        out["asn"] = asn
    country = _opt(obj, "ClientCountry")
    if country is not None and country.upper() not in _NOT_COUNTRIES:
        out["country"] = country.upper()  # the contract judges it (two letters)
    return out or None


def native(obj: dict[str, Any]) -> dict[str, Any]:
    """The native ClientRequest object (docs/contracts.md) of one Logpush line; raises
    InvalidRequest (reason, code) when the line is not an http_requests record with
    the shipped job's fields."""
    proto = _opt(obj, "ClientRequestProtocol")
    http_version = HTTP_VERSIONS.get(proto) if proto is not None else None
    if proto is not None and http_version is None:
        raise InvalidRequest(f"cloudflare field 'ClientRequestProtocol' {proto[:16]!r} is not an HTTP protocol",
                             "invalid_value")
    path, sep, query = _required(obj, "ClientRequestURI").partition("?")
    host = _opt(obj, "ClientRequestHost")
    out: dict[str, Any] = {
        "request_id": _required(obj, "RayID"),
        "ts": _ts(obj),
        "client_ip": _required(obj, "ClientIP"),
        "method": _required(obj, "ClientRequestMethod"),
        "path": path,
        "headers": _headers(obj, host, http_version),
        "edge": EDGE,
    }
    if sep:
        out["query"] = query
    if http_version:
        out["http_version"] = http_version
    if host is not None and http_version in ("2", "3"):
        out["h2"] = {"authority": host}
    status = _int(obj, "EdgeResponseStatus")
    if status is not None:
        out["response_status"] = status
    tls = _tls(obj)
    if tls:
        out["tls"] = tls
    network = _network(obj)
    if network:
        out["network"] = network
    return out


def decode_line(line: bytes | str, limits: DecodeLimits = DecodeLimits()) -> ClientRequest:
    """One Logpush http_requests line into a ClientRequest; raises InvalidRequest."""
    obj = json_object(line_bytes(line, limits), "Cloudflare Logpush", _CUT_HINT)
    return validated(native(obj), limits)


def decode_message(value: bytes | None, limits: DecodeLimits = DecodeLimits()) -> Decoded:
    """A Kafka message of Logpush lines (a relay's share of one Logpush batch) into
    requests and rejections."""
    return decode_lines(value, limits, decode_line)
