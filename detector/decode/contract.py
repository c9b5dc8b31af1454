"""What the ClientRequest contract (docs/contracts.md, ClientRequest) lets a request
carry: its fields, the nested objects' keys and kinds, the bounds every message obeys
and the configured `limits` (DecodeLimits)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

HTTP_VERSIONS = frozenset({"1.0", "1.1", "2", "3"})
_KNOWN_FIELDS = frozenset(
    {
        "request_id", "ts", "client_ip", "method", "path", "headers", "query",
        "http_version", "body_sha256", "body_size", "params", "tls", "h2", "network",
        "attestation", "account_id", "device_id", "session_id", "response_status", "label", "edge", "body",
    }
)
_OBJECT_FIELDS = ("tls", "h2", "network", "attestation", "label", "body")
_ID_FIELDS = ("account_id", "device_id", "session_id")
_HEX = frozenset("0123456789abcdefABCDEF")

# `ts` must lie in [TS_MIN, TS_MAX) in both forms: 2000-01-01T00:00:00Z up to (not
# including) 2200-01-01T00:00:00Z. Later times cannot be formatted by every consumer
# (year 10000 crashed alert building), earlier ones are always late. Events far ahead
# of the stream's clock still decode: the event-time guard judges them.
TS_MIN = 946684800.0
TS_MAX = 7258118400.0
_MAX_RFC3339_CHARS = 64  # "2026-11-22T10:00:00.123456789+01:00" is 35

# Bounds of the nested objects (the contract's section 1), the same for every limits.
MAX_OBJECT_ENTRIES = 64  # keys of one nested object (tls, h2, network, attestation, label, body)
MAX_UNKNOWN_BYTES = 8192  # JSON size of the unknown keys' values of one nested object
MAX_EXTRA_FIELDS = 64  # unknown top-level fields
MAX_EXTRA_BYTES = 65536  # their JSON size
MAX_LIST_ITEMS = 32  # tls.alpn, attestation.device_recognition
MAX_PARAMS = 256  # entries of `params`
MAX_PARAM_NAME_CHARS = 256
MAX_CLIENT_HELLO_CHARS = 16384  # base64 of a 12 KB ClientHello (real ones are < 2 KB)
MAX_ASN = 2**32 - 1
MAX_EDGE_CHARS = 64  # an edge profile's name (config/edges/<name>.yaml)
# `body.text`: the leading part of the request body an edge that keeps bodies passes on
# (its first MAX_BODY_CHARS characters; `body.truncated` says the body was longer)
MAX_BODY_CHARS = 16384
BODY_ENCODINGS = ("text", "base64")  # body.text is the body as UTF-8 text, or base64 of its bytes

# What each known key of a nested object may hold. Every key is optional and may be
# null (absent). Strings are bounded by `limits.max_field_chars` unless named here.
# Unknown keys are kept (the object is passed on as received) but bounded: at most
# MAX_OBJECT_ENTRIES keys, their values at most MAX_UNKNOWN_BYTES of JSON.
_Kind = Literal["str", "hex32", "hello", "country", "bool", "asn", "number", "str_or_list", "list", "body_text",
                "body_encoding"]
_NESTED: dict[str, dict[str, _Kind]] = {
    "tls": {"ja3": "hex32", "ja3_full": "str", "ja4": "str", "alpn": "str_or_list", "version": "str", "sni": "str",
            "client_hello": "hello"},
    "h2": {"fingerprint": "str", "authority": "str"},
    "network": {"asn": "asn", "as_org": "str", "country": "country", "hosting": "bool"},
    "attestation": {"provider": "str", "app_recognition": "str", "device_recognition": "list",
                    "request_hash_ok": "bool", "token_age_s": "number"},
    "label": {"scenario": "str", "malicious": "bool"},
    # the request body as the edge kept it (an edge with the `body_text` fact, docs/edges.md)
    "body": {"text": "body_text", "encoding": "body_encoding", "truncated": "bool"},
}
_NESTED_KEYS = {name: frozenset(spec) for name, spec in _NESTED.items()}


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """Bounds on what one message may carry (config `limits`). A message or element
    over a bound is rejected whole, so an attacker cannot make the worker allocate
    without limit."""

    max_message_bytes: int = 4 * 1024 * 1024
    max_batch_elements: int = 10_000
    max_headers: int = 128
    max_header_bytes: int = 8192  # one name + value
    max_field_chars: int = 8192  # any other string field
    dlq_copy_bytes: int = 900_000  # larger originals are truncated in the DLQ record

    def __post_init__(self) -> None:
        for name in self.__slots__:
            if getattr(self, name) <= 0:
                raise ValueError(f"limits.{name} must be a positive integer")
