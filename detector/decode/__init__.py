"""Decoding of ClientRequest messages (docs/contracts.md, ClientRequest) into typed values.

A Kafka message value holds one JSON object, a JSON array of objects, or NDJSON.
Bad input is data, not an exception: every element that cannot be used comes back
as a `Rejection` with its index and a one-line reason, and its valid siblings are
still decoded. The shell turns rejections into dead-letter records (`encode_dlq_record`).

contract.py says what a request may carry and the limits, messages.py decodes the
message forms, fastpath.py accepts valid requests in C, validate.py (the reference
validator) decides the rest, rejections.py names why, deadletters.py writes the DLQ.
"""

from detector.decode.contract import (
    HTTP_VERSIONS,
    MAX_ASN,
    MAX_CLIENT_HELLO_CHARS,
    MAX_EXTRA_BYTES,
    MAX_EXTRA_FIELDS,
    MAX_LIST_ITEMS,
    MAX_OBJECT_ENTRIES,
    MAX_PARAM_NAME_CHARS,
    MAX_PARAMS,
    MAX_UNKNOWN_BYTES,
    TS_MAX,
    TS_MIN,
    DecodeLimits,
)
from detector.decode.deadletters import (
    DLQ_MAX_ERRORS,
    clip_json_string,
    dlq_reason_class,
    dlq_record,
    encode_dlq_record,
)
from detector.decode.messages import Decoded, decode_line, decode_message, line_bytes
from detector.decode.rejections import REJECTION_CODES, InvalidRequest, Rejection
from detector.decode.validate import request_from_obj

__all__ = [
    "DLQ_MAX_ERRORS", "HTTP_VERSIONS", "MAX_ASN", "MAX_CLIENT_HELLO_CHARS", "MAX_EXTRA_BYTES", "MAX_EXTRA_FIELDS",
    "MAX_LIST_ITEMS", "MAX_OBJECT_ENTRIES", "MAX_PARAMS", "MAX_PARAM_NAME_CHARS", "MAX_UNKNOWN_BYTES",
    "REJECTION_CODES", "TS_MAX", "TS_MIN", "DecodeLimits", "Decoded", "InvalidRequest", "Rejection",
    "clip_json_string", "decode_line", "decode_message", "dlq_reason_class", "dlq_record", "encode_dlq_record",
    "line_bytes", "request_from_obj",
]
