"""Behaviour state at scale (scripts/state_memory.py): the memory a process holding many
realistic device entities grows by, and a fresh engine restoring them all. The closing
figures run it at 1,000,000 entities (docs/detections.md "Memory"); here 100,000."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "state_memory.py"


@pytest.mark.slow  # ~20 s
def test_100k_device_entities_cost_under_1kb_each_and_restore_whole():
    out = subprocess.run([sys.executable, str(SCRIPT), "--entities", "100000", "--session", "6"],
                         capture_output=True, timeout=300, check=True)
    r = json.loads(out.stdout)
    print(f"\n{r}")
    assert r["entities"] == r["restored"] == 100_000 and r["stale"] == 0
    assert r["records_applied"] == 600_000
    # 701 B at 1M (docs/detections.md); the old nest of dicts cost ~3 KB
    assert r["per_entity_bytes"] < 1024
    assert r["blob_bytes_mean"] < 512
    assert r["restore_s"] < 5
