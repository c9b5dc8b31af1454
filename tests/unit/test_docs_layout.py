"""docs/architecture.md's "Where things live" names every module and package of
detector/, agents/ and agents/tools/, so the layout it shows is the one `ls` shows."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _layout() -> str:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("## Where things live", 1)[1]
    return section.split("```", 2)[1]


def test_the_layout_section_names_every_module_and_package():
    layout = _layout()
    missing = []
    for pkg in ("detector", "agents", "agents/tools"):
        for entry in sorted((ROOT / pkg).iterdir()):
            if entry.name.startswith(("_", ".")) or (entry.is_file() and entry.suffix != ".py"):
                continue
            if entry.is_dir() and not (entry / "__init__.py").exists():
                continue
            name = entry.name + ("/" if entry.is_dir() else "")
            if not re.search(rf"(?<![\w/.]){re.escape(name)}", layout):
                missing.append(f"{pkg}/{name}")
    assert not missing, f"docs/architecture.md 'Where things live' does not name: {missing}"


def test_the_layout_section_names_nothing_that_is_gone():
    layout = _layout()
    gone = []
    for line in layout.splitlines():
        m = re.match(r"^(\s*)(\S+\.py|\S+/)\s", line + " ")
        if not m or m.group(2) in ("tests/unit", "config/"):
            continue
        indent, name = len(m.group(1)), m.group(2)
        if indent == 0:
            parent = ""
        elif indent == 2:
            parent = current_top
        else:
            continue
        if indent == 0:
            current_top = name
        path = ROOT / parent / name
        if not path.exists():
            gone.append(str(path.relative_to(ROOT)))
    assert not gone, f"docs/architecture.md 'Where things live' names what is not there: {gone}"
