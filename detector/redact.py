"""Credentials stay out of what the detector writes: DLQ records, logs and verdicts.

A `Redactor` names the request headers and body parameters (`params`) whose values
are credentials (config `redact:`; by default `authorization`, `cookie`,
`proxy-authorization`, `set-cookie`, `x-api-key`, `x-auth-token`, and the
parameters `password`, `access_token`, `refresh_token`, `client_secret`). It:

- replaces their values in a parsed original (`redact_json`) before a copy of it
  goes to the dead-letter topic;
- scrubs them from text that cannot be parsed (`scrub_bytes`): JSON pairs
  (`["Authorization","..."]`, `"cookie": "..."`) and HTTP header lines
  (`Authorization: ...`), a value cut off by truncation included;
- scrubs them from signal details (`scrub_detail`), which quote header values (an
  invalid value, two fields that disagree), whole or as a prefix;
- replaces the `params` names' values in a request body (`redact_body_text`, the
  contract's `body.text`): form fields, JSON keys at any depth, the JSON inside a
  `signed_body=<sig>.<json>` envelope, and by pattern in a body cut off or not parsed.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

MARK = "[redacted]"
DEFAULT_HEADERS = frozenset({
    "authorization", "cookie", "proxy-authorization", "set-cookie", "x-api-key", "x-auth-token",
})
DEFAULT_PARAMS = frozenset({"password", "access_token", "refresh_token", "client_secret"})
_MIN_SECRET_CHARS = 6  # shorter values are not searched for in details (they would match anywhere)
_PREFIX_CHARS = 16  # checks quote at least this many leading chars of a value they shorten
_NAME = re.compile(r"\A[A-Za-z0-9!#$%&'*+.^_`|~-]{1,256}\Z")  # an HTTP token (RFC 9110)


def _names(values: Iterable[str], what: str) -> frozenset[str]:
    out = set()
    for v in values:
        if not isinstance(v, str) or not _NAME.match(v):
            raise ValueError(f"{what} must be names (HTTP tokens), got {v!r}")
        out.add(v.lower())
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class Redactor:
    headers: frozenset[str] = DEFAULT_HEADERS  # lower-case header names
    params: frozenset[str] = DEFAULT_PARAMS  # lower-case body parameter names
    _text_patterns: tuple[re.Pattern[bytes], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "headers", _names(self.headers, "redact.headers"))
        object.__setattr__(self, "params", _names(self.params, "redact.params"))
        names = sorted(self.headers | self.params)
        if not names:
            object.__setattr__(self, "_text_patterns", ())
            return
        alt = b"|".join(re.escape(n.encode()) for n in names)
        value = rb'"((?:[^"\\]|\\.)*)(?:"|\Z)'  # a JSON string, possibly cut off at the end
        object.__setattr__(self, "_text_patterns", (
            # ["Authorization", "..."] (headers as pairs) and "cookie": "..." (objects)
            re.compile(rb'(?i)("(?:' + alt + rb')"\s*[,:]\s*)' + value),
            # Authorization: Bearer ... (an HTTP header line, raw or inside a JSON string)
            re.compile(rb'(?im)(^|\\n|\\r|[\r\n"])((?:' + alt + rb')[ \t]*:[ \t]*)[^\r\n\\"]*'),
            # a form body's field, password=... (raw or inside the JSON string body.text)
            re.compile(rb'(?i)(^|[&?"])((?:' + alt + rb')=)[^&"\\\s]*'),
            # a URL-encoded JSON field, %22password%22%3A%22...%22 (a signed_body envelope)
            re.compile(rb'(?i)(%22)((?:' + alt + rb')%22(?:%3A|:)(?:%20|\+)*%22)(?:(?!%22)[^&"\\\s])*'),
            # an escaped JSON field inside a JSON string, \"password\":\"...\"
            re.compile(rb'(?i)(\\")((?:' + alt + rb')\\"\s*:\s*\\")(?:[^"\\]|\\[^"])*'),
        ))

    @classmethod
    def default(cls) -> Redactor:
        return _DEFAULT

    @classmethod
    def from_config(cls, data: Mapping[str, Any]) -> Redactor:
        """From the `redact:` section: `headers` and `params`, each a list of names that
        replaces the default list (an empty list redacts nothing of that kind).
        ValueError names a wrong key or value."""
        unknown = set(data) - {"headers", "params"}
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(sorted(map(str, unknown)))} (allowed: headers, params)")
        kw: dict[str, frozenset[str]] = {}
        for key in ("headers", "params"):
            if key in data:
                v = data[key]
                if not isinstance(v, list):
                    raise ValueError(f"redact.{key} must be a list of names, got {type(v).__name__}")
                kw[key] = _names(v, f"redact.{key}")
        return cls(**kw)

    # --- parsed originals ----------------------------------------------------------

    def redact_json(self, obj: Any) -> tuple[Any, bool]:
        """A copy of a parsed message (an object, or an array of them) with the
        credential values of `headers` and `params` replaced; and whether anything was."""
        if isinstance(obj, list):
            changed = False
            out = []
            for item in obj:
                r, c = self.redact_json(item) if isinstance(item, dict) else (item, False)
                out.append(r)
                changed |= c
            return (out, True) if changed else (obj, False)
        if not isinstance(obj, dict):
            return obj, False
        changed = False
        new = dict(obj)
        hs = obj.get("headers")
        if isinstance(hs, list) and self.headers:
            pairs = []
            for pair in hs:
                if (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)
                        and pair[0].lower() in self.headers and pair[1] != MARK):
                    pairs.append([pair[0], MARK])
                    changed = True
                else:
                    pairs.append(pair)
            new["headers"] = pairs
        elif isinstance(hs, dict):  # not the contract's form, but redact it all the same
            red = {k: (MARK if isinstance(k, str) and k.lower() in self.headers else v) for k, v in hs.items()}
            changed |= red != hs
            new["headers"] = red
        ps = obj.get("params")
        if isinstance(ps, dict) and self.params:
            red = {k: (MARK if isinstance(k, str) and k.lower() in self.params else v) for k, v in ps.items()}
            changed |= red != ps
            new["params"] = red
        body = obj.get("body")
        if isinstance(body, dict) and isinstance(body.get("text"), str) and self.params:
            text = self.redact_body_text(body["text"], base64_text=body.get("encoding") == "base64")
            if text != body["text"]:
                new["body"] = {**body, "text": text}
                changed = True
        return (new, True) if changed else (obj, False)

    def redact_body_text(self, text: str, *, base64_text: bool = False) -> str:
        """A request body (the contract's `body.text`) with the values of the `params`
        names replaced: form fields, JSON keys at any depth, and the JSON inside a
        `signed_body=<sig>.<json>` envelope; a body that does not parse (cut off) is
        scrubbed by pattern. `base64_text`: `text` is base64 of the body's bytes."""
        if base64_text:
            try:
                raw = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                return text
            return base64.b64encode(self._redact_body_bytes(raw)).decode("ascii")
        return self._redact_body_bytes(text.encode("utf-8", errors="surrogatepass")).decode(
            "utf-8", errors="surrogatepass")

    def _redact_body_bytes(self, raw: bytes) -> bytes:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return self.scrub_bytes(raw)[0]
        stripped = text.lstrip()
        if stripped.startswith(("{", "[")):
            try:
                obj = json.loads(stripped)
            except (ValueError, RecursionError):
                return self.scrub_bytes(raw)[0]
            red, changed = self._redact_tree(obj)
            return json.dumps(red, separators=(",", ":"), ensure_ascii=False).encode() if changed else raw
        if "=" not in text:
            return raw
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=None)
        out = []
        changed = False
        for k, v in pairs:
            if k.lower() in self.params:
                out.append((k, MARK))
                changed = True
                continue
            sig, dot, rest = v.partition(".")
            inner = rest if dot and rest.startswith("{") else v if v.startswith("{") else None
            if inner is not None:
                try:
                    tree = json.loads(inner)
                except (ValueError, RecursionError):
                    scrubbed = self.scrub_bytes(inner.encode())[0].decode("utf-8", errors="replace")
                    red_text, c = scrubbed, scrubbed != inner
                else:
                    red_tree, c = self._redact_tree(tree)
                    red_text = json.dumps(red_tree, separators=(",", ":"), ensure_ascii=False) if c else inner
                if c:
                    v = (sig + "." + red_text) if inner is rest else red_text
                    changed = True
            out.append((k, v))
        if not changed:
            return self.scrub_bytes(raw)[0]  # a cut-off value parse_qsl could not split
        return urlencode(out).encode()

    def _redact_tree(self, obj: Any, depth: int = 0) -> tuple[Any, bool]:
        """A parsed JSON value with the `params` names' values replaced at any depth."""
        if depth > 32:
            return obj, False
        if isinstance(obj, dict):
            changed = False
            out = {}
            for k, v in obj.items():
                if isinstance(k, str) and k.lower() in self.params:
                    out[k] = MARK
                    changed |= v != MARK
                else:
                    out[k], c = self._redact_tree(v, depth + 1)
                    changed |= c
            return (out, True) if changed else (obj, False)
        if isinstance(obj, list):
            items = [self._redact_tree(v, depth + 1) for v in obj]
            if any(c for _, c in items):
                return [v for v, _ in items], True
        return obj, False

    def redact_pairs(self, headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """Header pairs with credential values replaced (for logs)."""
        return [(n, MARK if n.lower() in self.headers else v) for n, v in headers]

    # --- text ----------------------------------------------------------------------

    def scrub_bytes(self, raw: bytes) -> tuple[bytes, bool]:
        """`raw` with credential values of the patterns it recognises replaced."""
        out = raw
        for i, pattern in enumerate(self._text_patterns):
            if i == 0:
                out = pattern.sub(lambda m: m.group(1) + b'"' + MARK.encode() + b'"', out)
            elif i == 3:  # the URL-encoded JSON field: the mark inside %22...%22
                out = pattern.sub(lambda m: m.group(1) + m.group(2) + quote(MARK).encode(), out)
            else:
                out = pattern.sub(lambda m: m.group(1) + m.group(2) + MARK.encode(), out)
        return out, out != raw

    # --- verdict details -----------------------------------------------------------

    def secrets(self, headers: Mapping[str, str], params: Mapping[str, str] | None,
                body: Mapping[str, str] | None = None) -> tuple[str, ...]:
        """The credential values a request carries (`headers`: lower-cased names;
        `params` and `body`, the body's parsed fields, by the names of `params`)."""
        names = headers.keys() & self.headers  # in C; usually empty
        found = [v for n in names if isinstance(v := headers.get(n), str) and len(v) >= _MIN_SECRET_CHARS]
        for fields in (params, body):
            if fields and self.params:
                for k, v in fields.items():
                    if (isinstance(k, str) and k.lower() in self.params
                            and isinstance(v, str) and len(v) >= _MIN_SECRET_CHARS):
                        found.append(v)
        return tuple(found)


def scrub_detail(detail: str, secrets: Sequence[str]) -> str:
    """`detail` with every quoted secret, whole or a leading part of it (at least
    `_PREFIX_CHARS` or all of it), replaced by the mark."""
    for s in secrets:
        needle = s[:_PREFIX_CHARS]
        start = detail.find(needle)
        while start >= 0:
            k = len(needle)
            limit = min(len(s), len(detail) - start)
            while k < limit and detail[start + k] == s[k]:
                k += 1
            detail = detail[:start] + MARK + detail[start + k:]
            start = detail.find(needle, start + len(MARK))
    return detail


_DEFAULT = Redactor()

__all__ = ["DEFAULT_HEADERS", "DEFAULT_PARAMS", "MARK", "Redactor", "scrub_detail"]
