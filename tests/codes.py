"""The golden fixtures per signal code (tests/fixtures/codes/, written by
scripts/build_code_fixtures.py), for the suites that read them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from detector.decode import decode_line
from detector.engine import DetectionConfig
from detector.model import ClientRequest

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "codes"
CODES = sorted(p.name[: -len(".jsonl")] for p in FIXTURES.glob("*.jsonl"))


def _profile_value(section: str, key: str, value: Any) -> Any:
    """A profile change's JSON value as the profile holds it (headers.clock: a list of
    {header, unit, max_skew_s})."""
    from detector.profile import ClockHeader

    if section == "headers" and key == "clock":
        return tuple(ClockHeader(c["header"], c.get("unit", "s"), float(c["max_skew_s"])) for c in value)
    return value

def expected(code: str) -> dict[str, Any]:
    """The fixture's expected file: must, must_not, reference_time, profile_changes,
    the golden verdict codes and raised flags."""
    data: dict[str, Any] = json.loads((FIXTURES / f"{code}.expected.json").read_text())
    return data


def config_for(detection: DetectionConfig, code: str) -> DetectionConfig:
    """`detection` with the fixture's profile changes: fields of the default profile's
    sections replaced (a code the shipped profile cannot raise, e.g. tls.missing
    needs tls.required)."""
    changes = expected(code).get("profile_changes") or {}
    if not changes:
        return detection
    p = detection.profiles[detection.default_profile]
    for section, values in changes.items():
        p = dataclasses.replace(p, **{section: dataclasses.replace(
            getattr(p, section), **{k: _profile_value(section, k, v) for k, v in values.items()})})
    return dataclasses.replace(detection, profiles={**detection.profiles, detection.default_profile: p})


def requests(cfg: DetectionConfig, code: str) -> list[ClientRequest]:
    """The fixture's requests, decoded as `detector score` decodes its input lines."""
    lines = (FIXTURES / f"{code}.jsonl").read_bytes().splitlines()
    return [decode_line(line, cfg.limits) for line in lines if line.strip()]
