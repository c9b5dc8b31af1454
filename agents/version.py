"""What `detector --version` prints: the package version, the git commit when run from a
checkout, and the engine (the Python that runs the detection), made only when asked for."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def version_text() -> str:
    """`detector --version`: the package version, the git commit when run from a
    checkout, and the engine (the Python that runs the detection)."""
    import platform
    import subprocess
    from importlib import metadata

    try:
        version = metadata.version("app-impersonation-detector")
    except metadata.PackageNotFoundError:
        version = "unknown"
    root = Path(__file__).resolve().parent.parent
    commit = None
    if (root / ".git").exists():
        try:
            res = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                                 text=True, timeout=5)
            commit = res.stdout.strip() if res.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            pass
    parts = [f"commit {commit}"] if commit else []
    parts.append(f"engine python {platform.python_version()}")
    return f"detector {version} ({', '.join(parts)})"


class VersionAction(argparse.Action):
    """Like argparse's "version" action, with the text made only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest=dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(version_text())
        parser.exit()
