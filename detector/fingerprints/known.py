"""Known non-app stacks (config/fingerprints/known-stacks.yaml): JA4 and HTTP/2
fingerprints of desktop libraries, automation tools and browsers. A denylist that
adds confidence and names the stack; the profile's allowlist decides on its own."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from detector.config import YamlDocument
from detector.config.schema import KnownStacksFile, check


@dataclass(frozen=True, slots=True)
class KnownStacks:
    ja4: Mapping[str, str] = field(default_factory=dict)
    h2: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> KnownStacks:
        doc = YamlDocument(path)
        data = doc.data or {}
        if not isinstance(data, dict):
            raise doc.error([], "must be a mapping with ja4 and h2")
        check(doc, KnownStacksFile, data, keys_only=True)
        out = {}
        for section in ("ja4", "h2"):
            m = data.get(section) or {}
            if not isinstance(m, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in m.items()):
                raise doc.error([section], "must map fingerprints to stack names")
            out[section] = dict(m)
        check(doc, KnownStacksFile, data)
        return cls(out["ja4"], out["h2"])
