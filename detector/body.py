"""The request body's fields, as the profile's body rules judge them (docs/profiles.md).

An edge that keeps bodies (edge fact `body_text`, docs/edges.md) passes the body's
first characters on as the contract's `body` object (`text`, `encoding`, `truncated`;
docs/contracts.md). `parse_body` reads it as the app's encodings: a form
(`application/x-www-form-urlencoded`), a JSON object, or a form whose envelope field
holds `<signature>.<json>` (`signed_body=SIGNATURE.{...}`), whose JSON keys are the
body's fields beside the form's other fields. Values are strings: a JSON value that is
not a string is its compact JSON text. Pure and bounded: at most MAX_FIELDS fields, a
body of at most the contract's MAX_BODY_CHARS characters.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl

BodyKind = Literal["form", "json", "signed_body", "empty", "other"]
BODY_KINDS: tuple[BodyKind, ...] = ("form", "json", "signed_body", "empty", "other")
MAX_FIELDS = 256  # fields kept of one body (the contract's params bound)
DEFAULT_ENVELOPE = "signed_body"


@dataclass(frozen=True, slots=True)
class BodyFields:
    """What a body holds. `complete`: every field is known (not truncated, parsed);
    `error`: why a body that claims a structure could not be read (None: read)."""

    kind: BodyKind
    fields: Mapping[str, str] = field(default_factory=dict)
    signature: str | None = None  # the envelope's <signature> part (signed_body)
    signed: str | None = None  # the envelope's JSON text (what a body HMAC covers)
    content_kind: BodyKind | None = None  # what the Content-Type header says it is
    truncated: bool = False
    complete: bool = True
    error: str | None = None


def _content_kind(content_type: str | None) -> BodyKind | None:
    if not content_type:
        return None
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/x-www-form-urlencoded":
        return "form"
    if media == "application/json" or media.endswith("+json"):
        return "json"
    return "other"


def _text(body: Mapping[str, Any]) -> str | None:
    text = body.get("text")
    if not isinstance(text, str):
        return None
    if body.get("encoding") == "base64":
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            return None
        return raw.decode("utf-8", errors="replace")
    return text


def _json_fields(text: str) -> dict[str, str] | None:
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    out: dict[str, str] = {}
    for k, v in list(obj.items())[:MAX_FIELDS]:
        out[str(k)] = v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))
    return out


def split_envelope(value: str) -> tuple[str, str] | None:
    """`<signature>.<json>` as (signature, json); None when it is not that shape."""
    sig, dot, rest = value.partition(".")
    if not dot or not rest.startswith("{"):
        return None
    return sig, rest


def parse_body(body: Mapping[str, Any] | None, content_type: str | None,
               envelope: str = DEFAULT_ENVELOPE) -> BodyFields | None:
    """The fields of the contract's `body` object; None when the request has none."""
    if not isinstance(body, Mapping):
        return None
    truncated = body.get("truncated") is True
    content = _content_kind(content_type)
    text = _text(body)
    if text is None:
        return BodyFields("other", content_kind=content, truncated=truncated, complete=False,
                          error="body.text is absent or not valid base64")
    stripped = text.lstrip()
    if not stripped:
        return BodyFields("empty", content_kind=content, truncated=truncated, complete=not truncated)
    if stripped.startswith(("{", "[")):
        if truncated:
            return BodyFields("json", content_kind=content, truncated=True, complete=False)
        fields = _json_fields(stripped)
        if fields is None:
            return BodyFields("json", content_kind=content, complete=False, error="not a JSON object")
        return BodyFields("json", fields, content_kind=content)
    if "=" not in text:
        return BodyFields("other", content_kind=content, truncated=truncated, complete=not truncated)
    pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=None)
    if truncated and pairs:
        pairs = pairs[:-1]  # the last pair may be cut short
    form: dict[str, str] = {}
    for k, v in pairs[:MAX_FIELDS]:
        form.setdefault(k, v)
    wrapped = form.get(envelope)
    if wrapped is None:
        return BodyFields("form", form, content_kind=content, truncated=truncated, complete=not truncated)
    parts = split_envelope(wrapped)
    inner = _json_fields(parts[1]) if parts is not None else None
    if parts is None or inner is None:
        return BodyFields("signed_body", {k: v for k, v in form.items() if k != envelope},
                          signature=parts[0] if parts else None, content_kind=content, truncated=truncated,
                          complete=False, error=f"{envelope} is not <signature>.<JSON object>")
    fields = {k: v for k, v in form.items() if k != envelope}
    for k, v in inner.items():
        fields.setdefault(k, v)
    return BodyFields("signed_body", fields, signature=parts[0], signed=parts[1], content_kind=content,
                      truncated=truncated, complete=not truncated)


__all__ = ["BODY_KINDS", "BodyFields", "BodyKind", "parse_body", "split_envelope"]
