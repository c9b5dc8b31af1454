"""Loading YAML configuration with errors that name the file, the key path and the
line, so a bad config stops start-up with a message an operator can act on. Every
config file (settings, profiles, device catalogue, fingerprints, webhooks) is read
through `YamlDocument` and checked against its model in `detector.config.schema`."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

# libyaml when available: same result, faster (the device catalogue is large)
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ConfigError(ValueError):
    """A configuration value is missing or wrong. `str()` names file, key and line."""

    def __init__(self, file: str | Path | None, key: Sequence[str | int] | str, reason: str, line: int | None = None):
        self.file = str(file) if file is not None else None
        self.key = key if isinstance(key, str) else ".".join(str(k) for k in key)
        self.reason = reason
        self.line = line
        where = self.file or "<config>"
        if line is not None:
            where += f":{line}"
        super().__init__(f"{where}: {self.key or '<root>'}: {reason}")


class YamlDocument:
    """A parsed YAML file that remembers where each key came from."""

    def __init__(self, path: Path, text: str | None = None):
        self.path = path
        try:
            text = path.read_text(encoding="utf-8") if text is None else text
        except OSError as exc:
            raise ConfigError(path, "", f"cannot read file: {exc.strerror}") from None
        self.text = text
        try:
            self.data: Any = yaml.load(text, Loader=_Loader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark is not None else None
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(path, "", f"invalid YAML: {problem}", line) from None

    @cached_property
    def node(self) -> Any:
        """The composed node tree, for line numbers: only worked out for an error."""
        try:
            return yaml.compose(self.text, Loader=_Loader)
        except yaml.YAMLError:  # pragma: no cover - the text parsed above
            return None

    def line_of(self, key: Sequence[str | int]) -> int | None:
        return node_line(self.node, key)

    def error(self, key: Sequence[str | int], reason: str) -> ConfigError:
        return ConfigError(self.path, key, reason, self.line_of(key))


def node_line(node: Any, key: Sequence[str | int]) -> int | None:
    """The 1-based line of `key` (a path of mapping keys and list indices) in a
    composed YAML node tree: the deepest part of the path that exists."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in key:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == str(part):
                    node, line = v, k.start_mark.line + 1
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def did_you_mean(key: object, known: Iterable[str]) -> str:
    """` (did you mean X?)` when a known key is close to a misspelled one, else ``."""
    close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def unknown_key(key: object, known: Iterable[str]) -> str:
    """The reason text of an unknown key: the suggestion, or the keys allowed there."""
    known = sorted(known)
    hint = did_you_mean(key, known)
    return f"unknown key{hint}" if hint else f"unknown key (allowed: {', '.join(known)})"


def load_yaml(path: Path) -> YamlDocument:
    return YamlDocument(path)


def require(doc: YamlDocument, obj: Any, key: Sequence[str | int], kind: type | tuple[type, ...], *,
            optional: bool = False, default: Any = None) -> Any:
    """Read `obj[key[-1]]`, checking its type; errors point at the full key path."""
    name = key[-1]
    if not isinstance(obj, dict):
        raise doc.error(key[:-1], f"must be a mapping, got {type(obj).__name__}")
    if name not in obj or obj[name] is None:
        if optional:
            return default
        raise doc.error(key, "is required")
    value = obj[name]
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise doc.error(key, f"must be {_kind(kind)}, got boolean")
    if not isinstance(value, kind):
        raise doc.error(key, f"must be {_kind(kind)}, got {type(value).__name__}")
    return value


def _kind(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", dict: "a mapping", list: "a list",
             bool: "true or false"}
    if isinstance(kind, tuple):
        return " or ".join(names.get(k, k.__name__) for k in kind)
    return names.get(kind, kind.__name__)
