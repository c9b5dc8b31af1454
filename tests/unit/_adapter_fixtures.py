"""Helpers the input adapters' unit tests share: a fixture's non-empty lines, a
parsed line with dotted-key changes, and a line's rejection."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from detector.decode import REJECTION_CODES, InvalidRequest


def nonempty_lines(path: Path) -> list[bytes]:
    return [ln for ln in path.read_bytes().split(b"\n") if ln.strip()]


def edited(obj: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """`obj` with `changes` applied in place: dotted keys go into nested objects,
    None removes the key."""
    for key, value in changes.items():
        node = obj
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return obj


def rejected(decode: Callable[[Any], object], line: Any) -> InvalidRequest:
    """The InvalidRequest `decode` raises for `line`, its code a known one."""
    with pytest.raises(InvalidRequest) as info:
        decode(line)
    assert info.value.code in REJECTION_CODES
    return info.value
