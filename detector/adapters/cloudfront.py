"""The CloudFront input adapter: one Amazon CloudFront real-time log record (the
shipped configuration, config/edges/cloudfront/realtime-log-config.json.example) into
the native ClientRequest contract (docs/contracts.md).

CloudFront delivers real-time logs to Kinesis Data Streams, one record per request:
the configured fields as tab-separated text, no header line, "-" for an absent value,
always in CloudFront's own fixed field order (the order of AWS's fields list, whatever
order the configuration names them in: FIELDS below is that order, and the shipped
configuration lists them so). A consumer (config/edges/cloudfront/kinesis-to-kafka.py
.example, a Lambda function) puts each record's line into Kafka unchanged.

What it gives, and what it cannot:
- header names in the order received (`cs-header-names`), values from `cs-headers`
  (URL-encoded `Name:value` lines); CloudFront documents both fields as cut at 800
  bytes. A field at the limit is treated as possibly cut: its last entry is dropped
  (a cut value must not become a false header value), a header whose value was lost
  takes it from its own field (`cs-user-agent`, `x-host-header`) or arrives with an
  empty value. The last name of a `cs-header-names` at the limit is kept only when
  `cs-headers-count` says it is the one missing and `cs-headers` holds that name
  whole (`Name:`): a name cut inside never becomes a header. When the names left are
  fewer than `cs-headers-count`, the record is rejected `truncated` (the set would be
  partial). Every name logged is the
  client's: `cs-headers` and `cs-header-names` log the viewer's request, so a
  `CloudFront-*` name there is one the client sent, kept in its header list for the
  header checks to judge;
- no TLS fingerprint: real-time logs have no JA3 or JA4 field, and a
  `CloudFront-Viewer-JA3-Fingerprint` / `-JA4-Fingerprint` entry in `cs-headers` is a
  header the viewer sent (a client would pick its own fingerprint), never read as
  one. `ssl-protocol` is `tls.version`. No raw ClientHello, no SNI, no ALPN, no
  HTTP/2 fingerprint, no body. (The JA4 CloudFront computes reaches only the origin,
  in the header an origin request policy adds: docs/edges.md "CloudFront");
- `asn` and `c-country` become the contract's `network.asn` / `network.country`.

Every request is marked `edge: "cloudfront"`. A line with fewer fields than FIELDS
(cut short on its way, also inside a multi-byte character) is rejected `truncated`;
any other bad line with the code of what is wrong; nothing raises past
`decode_message` / `decode_line`.
"""

from __future__ import annotations

import re
from collections import deque
from typing import Any
from urllib.parse import unquote_to_bytes

from detector.adapters._lines import HTTP_VERSIONS, as_text, decode_lines, validated
from detector.decode.contract import DecodeLimits
from detector.decode.messages import Decoded, line_bytes
from detector.decode.rejections import InvalidRequest
from detector.model import ClientRequest

EDGE = "cloudfront"
# CloudFront's documented limit of cs-headers, cs-header-names (and cs-cookie)
FIELD_LIMIT_BYTES = 800
# The fields of the shipped real-time log configuration, in the order CloudFront
# writes them (AWS's fields list order); realtime-log-config.json.example lists these.
FIELDS: tuple[str, ...] = (
    "timestamp", "c-ip", "sc-status", "cs-method", "cs-protocol", "cs-host", "cs-uri-stem", "x-edge-request-id",
    "x-host-header", "cs-protocol-version", "cs-user-agent", "cs-uri-query", "ssl-protocol", "c-country",
    "cs-headers", "cs-header-names", "cs-headers-count", "asn",
)
_INDEX = {name: i for i, name in enumerate(FIELDS)}
_HTTP_VERSIONS: dict[str, str | None] = {**HTTP_VERSIONS, "HTTP/0.9": None}  # 0.9: not a contract version
_TIMESTAMP = re.compile(r"[0-9]{1,12}(\.[0-9]{1,9})?")
_DIGITS = re.compile(r"[0-9]{1,10}")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _field(fields: list[str], name: str) -> str | None:
    v = fields[_INDEX[name]]
    return None if v == "-" else v


def _url_decoded(value: str, name: str) -> str:
    if _BAD_PERCENT.search(value):
        raise InvalidRequest(f"cloudfront field {name!r} has a % that is not URL encoding", "invalid_value")
    try:
        return unquote_to_bytes(value).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"cloudfront field {name!r} decodes to invalid UTF-8 at byte {exc.start}",
                             "invalid_utf8") from None


def _entries(value: str | None, name: str, at_most: int) -> tuple[list[str], str | None]:
    """The newline-separated entries of a URL-encoded header field, and, when the field
    is at CloudFront's limit (so possibly cut), what follows its last newline: the
    entry that may be cut, left to the caller (None when the field is under the limit).
    A field of more than `at_most` entries is `too_many`, told before any of it is
    decoded."""
    if value is None:
        return [], None
    lines = value.count("%0A") + value.count("%0a")
    if lines > at_most:
        raise InvalidRequest(f"cloudfront field {name!r} holds {lines} entries, more than limits.max_headers="
                             f"{at_most}", "too_many")
    at_limit = len(value.encode()) >= FIELD_LIMIT_BYTES
    if not at_limit:
        return [e for e in _url_decoded(value, name).split("\n") if e], None
    # the cut may fall inside an escape or a UTF-8 sequence of the last entry: what
    # follows the last encoded newline is judged apart
    cut = max(value.rfind("%0A"), value.rfind("%0a"))
    head, tail = (value[:cut], value[cut + 3:]) if cut >= 0 else ("", value)
    return [e for e in _url_decoded(head, name).split("\n") if e], tail


def _tail_name(tail: str | None) -> str | None:
    """The header name of cs-headers' possibly cut last entry when the name is whole
    (its `:` was written); None otherwise."""
    if not tail:
        return None
    at = min((i for i in (tail.find("%3A"), tail.find("%3a")) if i >= 0), default=-1)
    if at <= 0:
        return None
    try:
        return _url_decoded(tail[:at], "cs-headers")
    except InvalidRequest:
        return None


def _lenient(value: str | None) -> str | None:
    """A URL-encoded field used only to fill a value cs-headers lost: None when it
    does not decode (the header then arrives with an empty value)."""
    try:
        return _url_decoded(value, "") if value is not None else None
    except InvalidRequest:
        return None


def _integer(fields: list[str], name: str) -> int | None:
    v = _field(fields, name)
    if v is None:
        return None
    if not _DIGITS.fullmatch(v):
        raise InvalidRequest(f"cloudfront field {name!r} {v[:16]!r} is not an integer", "invalid_value")
    return int(v)


def _headers(fields: list[str], limits: DecodeLimits) -> list[list[str]]:
    """The client's headers (names in order, values where known) from cs-header-names,
    cs-headers and the count."""
    count = _integer(fields, "cs-headers-count")
    names, names_tail = _entries(_field(fields, "cs-header-names"), "cs-header-names", limits.max_headers)
    lines, values_tail = _entries(_field(fields, "cs-headers"), "cs-headers", limits.max_headers)
    values: dict[str, deque[str]] = {}  # a repeated name's values, taken in order
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep or not name:
            raise InvalidRequest("cloudfront cs-headers has an entry that is not Name:value", "invalid_value")
        values.setdefault(name.lower(), deque()).append(value)
    if names_tail is not None:
        # cs-header-names is at the limit: what follows its last newline is a name only
        # when the count says one is missing and cs-headers holds it whole (`Name:`);
        # a name cut inside ('x-es-device-checksum-' of 'x-es-device-checksum-long')
        # is neither
        try:
            last = _url_decoded(names_tail, "cs-header-names")
        except InvalidRequest:
            last = ""  # cut inside its encoding
        whole = values.keys() | {n.lower() for n in (_tail_name(values_tail),) if n}
        if last and len(names) + 1 == count and last.lower() in whole:
            names.append(last)
        if count is not None and len(names) < count:
            raise InvalidRequest(f"cloudfront cs-header-names holds {len(names)} whole names of {count} (cut at "
                                 f"{FIELD_LIMIT_BYTES} bytes): the header set would be partial", "truncated")
    out: list[list[str]] = []
    fallback = {"user-agent": _lenient(_field(fields, "cs-user-agent")), "host": _field(fields, "x-host-header")}
    for name in names:
        low = name.lower()
        known = values.get(low)
        value = known.popleft() if known else (fallback.get(low) or "")
        out.append([name, value])
    return out


def native(line: str, limits: DecodeLimits = DecodeLimits()) -> dict[str, Any]:
    """The native ClientRequest object (docs/contracts.md) of one real-time log
    line; raises InvalidRequest (reason, code) when it is not the shipped format."""
    fields = line.split("\t", len(FIELDS))  # one more than FIELDS is enough to refuse the line
    if len(fields) < len(FIELDS):
        raise InvalidRequest(f"cloudfront real-time log line has {len(fields)} of {len(FIELDS)} fields (cut short)",
                             "truncated")
    if len(fields) > len(FIELDS):
        raise InvalidRequest(f"cloudfront real-time log line has {len(fields)} fields, the shipped configuration "
                             f"{len(FIELDS)} (config/edges/cloudfront/realtime-log-config.json.example)",
                             "invalid_value")
    ts = _field(fields, "timestamp")
    if ts is None or not _TIMESTAMP.fullmatch(ts):
        raise InvalidRequest(f"cloudfront timestamp {str(ts)[:24]!r} is not epoch seconds", "invalid_value")
    request_id = _field(fields, "x-edge-request-id")
    if request_id is None:
        raise InvalidRequest("cloudfront x-edge-request-id is absent", "missing_field")
    version = _field(fields, "cs-protocol-version")
    if version is not None and version not in _HTTP_VERSIONS:
        raise InvalidRequest(f"cloudfront cs-protocol-version {version[:16]!r} is not an HTTP version",
                             "invalid_value")
    http_version = _HTTP_VERSIONS.get(version) if version else None
    headers = _headers(fields, limits)
    out: dict[str, Any] = {
        "request_id": request_id,
        "ts": float(ts),
        "client_ip": _field(fields, "c-ip") or "",
        "method": _field(fields, "cs-method") or "",
        "path": _field(fields, "cs-uri-stem") or "",  # as logged (URL-encoded), like a raw request path
        "headers": headers,
        "edge": EDGE,
    }
    query = _field(fields, "cs-uri-query")
    if query is not None:
        out["query"] = query
    if http_version:
        out["http_version"] = http_version
    host = _field(fields, "x-host-header")
    if http_version in ("2", "3") and host and not any(n.lower() == "host" for n, _ in headers):
        out["h2"] = {"authority": host}  # HTTP/2 and 3 send :authority, no Host
    status = _integer(fields, "sc-status")
    if status is not None:
        out["response_status"] = status
    tls: dict[str, Any] = {}
    if ssl := _field(fields, "ssl-protocol"):
        tls["version"] = ssl
    if tls:
        out["tls"] = tls
    network: dict[str, Any] = {}
    asn = _integer(fields, "asn")
    if asn is not None:
        network["asn"] = asn
    if country := _field(fields, "c-country"):
        network["country"] = country
    if network:
        out["network"] = network
    return out


def decode_line(line: bytes | str, limits: DecodeLimits = DecodeLimits()) -> ClientRequest:
    """One CloudFront real-time log line into a ClientRequest; raises InvalidRequest."""
    text, cut_inside = as_text(line_bytes(line, limits).rstrip(b"\r\n"))
    if cut_inside and text.count("\t") >= len(FIELDS) - 1:  # every field there: not cut short
        raise InvalidRequest(f"invalid UTF-8 at byte {len(text.encode())} (the line's last bytes)", "invalid_utf8")
    return validated(native(text, limits), limits)


def decode_message(value: bytes | None, limits: DecodeLimits = DecodeLimits()) -> Decoded:
    """A Kafka message of CloudFront real-time log lines (one per message from the
    shipped consumer; a relay that batches sends several, one per line)."""
    return decode_lines(value, limits, decode_line)
