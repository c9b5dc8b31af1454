"""Where `detector demo` and `detector bench` keep what a run writes (the broker's and
the worker's logs, the worker's Faust data directory, a settings copy): `--log-dir DIR`
(created if needed, always kept), else a new directory under the system temp named per
run (`detector-demo-XXXX`), removed when the run ends normally and kept, with its path
printed, when it fails."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path


class RunDir:
    def __init__(self, tool: str, log_dir: str | Path | None = None) -> None:
        self.tool = tool
        self.keep = log_dir is not None
        if log_dir is not None:
            self.path = Path(log_dir)
            self.path.mkdir(parents=True, exist_ok=True)
        else:
            self.path = Path(tempfile.mkdtemp(prefix=f"detector-{tool}-"))

    def finish(self, ok: bool) -> str:
        """Remove the directory after a normal end (unless it was asked for); the line
        that says what became of the logs."""
        if ok and not self.keep:
            shutil.rmtree(self.path, ignore_errors=True)
            return f"logs removed ({self.path}; --log-dir keeps them)"
        return f"logs kept in {self.path}"
