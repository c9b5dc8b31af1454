"""Rejections: why an element of a message cannot be used, as one line and one code of
a closed set (REJECTION_CODES: the metrics label, the DLQ record's code, `detector
score`'s rejections)."""

from __future__ import annotations

from dataclasses import dataclass

REJECTION_CODES = frozenset({
    "empty_message",   # no value at all
    "oversized",       # a message, line, string or header over its limit
    "invalid_utf8",    # bytes that are not UTF-8
    "invalid_json",    # not JSON
    "missing_field",   # a required field is absent or null
    "invalid_type",    # a field of the wrong JSON type (a boolean is never a number)
    "invalid_value",   # the right type but not a valid value (an IP address, a path, hex)
    "out_of_range",    # a number or time outside its range
    "too_many",        # more elements, headers, params or keys than allowed
    "truncated",       # an edge's log line cut short (HAProxy's log length, a syslog relay's limit)
    "unknown_edge",    # the `edge` field names no edge profile (docs/edges.md)
    "edge_not_allowed",  # the `edge` field names an edge the input topic does not allow
    "internal_error",  # processing failed (set by the shell, never by decode)
})


@dataclass(frozen=True, slots=True)
class Rejection:
    index: int | None  # element index inside a batch message; None for the message itself
    reason: str  # one line, may quote (a bounded prefix of) the offending value
    code: str = "invalid_value"  # one of REJECTION_CODES

    def __post_init__(self) -> None:
        if self.code not in REJECTION_CODES:
            raise ValueError(f"unknown rejection code {self.code!r}")


class InvalidRequest(ValueError):
    """One object failed validation; the message is the one-line reason, `code` its
    class (one of REJECTION_CODES)."""

    def __init__(self, reason: str, code: str = "invalid_value"):
        super().__init__(reason)
        self.code = code
