"""Shared fixtures. Integration tests run once per broker tier: the embedded broker
(always) and real Apache Kafka (where Java and the fetched jars exist; otherwise the
tier is skipped with the reason, shown by `pytest -ra`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from detector.engine import DEFAULT_CONFIG, DetectionConfig

ROOT = Path(__file__).resolve().parent.parent
TIERS = [t.strip() for t in os.environ.get("DETECTOR_TEST_TIERS", "embedded,kafka").split(",") if t.strip()]


@pytest.fixture(scope="session")
def detection() -> DetectionConfig:
    return DetectionConfig.load(DEFAULT_CONFIG)


@pytest.fixture(scope="session")
def profile(detection: DetectionConfig):  # type: ignore[no-untyped-def]
    return detection.profiles[detection.default_profile]


@pytest.fixture(params=TIERS)
def broker(request: pytest.FixtureRequest) -> Iterator[object]:
    """A fresh broker of each tier per test, so tests never see each other's data."""
    from tests.brokers import kafka_available, start_tier

    if request.param == "kafka":
        ok, why = kafka_available()
        if not ok:
            pytest.skip(f"Apache Kafka tier SKIPPED: {why}")
    b = start_tier(request.param)
    b.tier = request.param  # type: ignore[attr-defined]
    try:
        yield b
    finally:
        if hasattr(b, "cleanup"):
            b.cleanup()
        else:
            b.stop()
