"""Stopping on time, and leaving no process behind.

- `StopDeadline`: once a stop is requested, the process exits after `grace_s` seconds
  whatever its event loop is doing (a timer thread calls `os._exit`). Nothing is lost
  by that: the worker commits an input offset only after every output of it was
  acknowledged, so what it had not committed is read again on restart (at-least-once).
- `die_with_parent`: a `preexec_fn` that asks Linux to send SIGTERM to a child when its
  parent dies (PR_SET_PDEATHSIG), so a demo killed with SIGKILL leaves no worker or
  broker behind. Elsewhere it does nothing; `ChildProcesses` then still kills the
  children in `finally` and at exit.
- `ChildProcesses`: the children a command started, each in its own session (so a
  terminal's Ctrl-C reaches only the parent, which stops them in order), stopped with
  SIGTERM and a deadline, then SIGKILL to the whole process group.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("detector.shutdown")

EXIT_DEADLINE = 1  # exit status when the graceful stop did not finish within the grace
_PR_SET_PDEATHSIG = 1


class StopDeadline:
    """Arms once per process: `grace_s` seconds after `arm()`, `os._exit(EXIT_DEADLINE)`.
    `force()` (a second stop request) exits at once."""

    def __init__(self, grace_s: float, what: str = "worker",
                 exit: Callable[[int], None] = os._exit):  # noqa: A002 - injectable for tests
        if grace_s <= 0:
            raise ValueError(f"grace_s must be > 0, got {grace_s}")
        self.grace_s = grace_s
        self.what = what
        self._exit = exit
        self._timer: threading.Timer | None = None
        self._lock = threading.RLock()  # re-entrant: arm() runs in signal handlers
        self.armed_at: float | None = None

    @property
    def armed(self) -> bool:
        return self._timer is not None

    def arm(self) -> bool:
        """Start the countdown; False when it was already running."""
        with self._lock:
            if self._timer is not None:
                return False
            self.armed_at = time.monotonic()
            self._timer = threading.Timer(self.grace_s, self._expire)
            self._timer.daemon = True
            self._timer.name = "stop-deadline"
            self._timer.start()
        log.info("stopping: the %s exits within %.0f s", self.what, self.grace_s)
        return True

    def cancel(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()

    def force(self, why: str) -> None:
        try:
            self._emit(f"{why}: exiting now without waiting for the graceful stop "
                       "(input that was not committed is read again on restart)")
        finally:
            self._exit(EXIT_DEADLINE)

    def _expire(self) -> None:
        try:
            self._emit(f"the graceful stop did not finish within {self.grace_s:g} s (shutdown_grace_s): exiting "
                       "anyway (input that was not committed is read again on restart)")
        finally:
            self._exit(EXIT_DEADLINE)

    def _emit(self, message: str) -> None:
        # Never through a logging handler: the main thread may hold its lock while it
        # is stuck, and the deadline must fire regardless. Same JSON shape as agents/logs.
        record = logging.LogRecord("detector.shutdown", logging.ERROR, __file__, 0, message, None, None)
        try:
            from agents.logs import JsonFormatter, log_format

            line = JsonFormatter().format(record) if log_format() == "json" else f"ERROR detector.shutdown: {message}"
        except ValueError:
            line = f"ERROR detector.shutdown: {message}"
        try:  # fd 2 itself: Faust's worker replaces sys.stderr with a logging proxy
            os.write(2, (line + "\n").encode())
        except OSError:
            pass


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()  # resolved in the parent: the child only calls it


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` for a child: SIGTERM to it when this process dies (Linux's
    PR_SET_PDEATHSIG); None where that does not exist. The function runs between fork
    and exec, so it only calls prctl, getppid and _exit."""
    prctl = _PRCTL
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Signal the child's process group (its own session: pgid == pid), else the child."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass


@dataclass
class ChildProcesses:
    """Children started by this process, stopped in reverse order of `add`."""

    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def add(self, name: str, proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        self.procs.append((name, proc))
        return proc

    def alive(self) -> list[str]:
        return [name for name, p in self.procs if p.poll() is None]

    def kill(self, wait: bool = True) -> None:
        """SIGKILL every child's process group now: the last resort of a second Ctrl-C
        (`wait=False`: from a signal handler, the stop in progress reaps them), of
        `finally` and of `atexit` (reaps them, at most a second each)."""
        for _, p in reversed(self.procs):
            if p.poll() is None:
                _signal_group(p, signal.SIGKILL)
        if wait:
            for _, p in self.procs:
                try:
                    p.wait(1.0)
                except subprocess.TimeoutExpired:
                    pass

    async def stop(self, name: str, grace_s: float) -> None:
        """SIGTERM one child, wait up to `grace_s` (without blocking the event loop),
        then SIGKILL its process group."""
        for n, p in self.procs:
            if n != name or p.poll() is not None:
                continue
            _signal_group(p, signal.SIGTERM)
            deadline = time.monotonic() + max(0.0, grace_s)
            while p.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if p.poll() is None:
                log.info("%s did not stop within %.1f s: killing it", name, grace_s)
                _signal_group(p, signal.SIGKILL)
                reaped_by = time.monotonic() + 2.0  # SIGKILL cannot be ignored; bounded all the same
                while p.poll() is None and time.monotonic() < reaped_by:
                    await asyncio.sleep(0.02)
