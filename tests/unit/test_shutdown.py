"""The stop deadline, the child-process helpers and the `shutdown_grace_s` setting
(agents/shutdown.py, agents/settings.py). Real processes, no broker."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agents.settings import load_settings
from agents.shutdown import EXIT_DEADLINE, ChildProcesses, StopDeadline, die_with_parent
from detector.config import ConfigError
from detector.engine import DEFAULT_CONFIG

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups and /proc")


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


def _wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        time.sleep(0.02)
    return _gone(pid)


def test_the_deadline_exits_after_the_grace_with_its_status_and_a_log_line(capfd):
    exits: list[tuple[int, float]] = []
    d = StopDeadline(0.2, exit=lambda code: exits.append((code, time.monotonic())))
    assert d.arm()
    started = d.armed_at
    assert started is not None
    assert not d.arm(), "a second arm is refused (the caller then forces the exit)"
    time.sleep(0.5)
    assert [code for code, _ in exits] == [EXIT_DEADLINE]
    assert 0.15 <= exits[0][1] - started <= 0.45
    err = capfd.readouterr().err
    assert "the graceful stop did not finish within 0.2 s" in err and '"level":"error"' in err


def test_a_cancelled_deadline_never_fires_and_force_exits_at_once():
    exits: list[int] = []
    d = StopDeadline(0.1, exit=exits.append)
    d.arm()
    d.cancel()
    time.sleep(0.3)
    assert exits == []
    d.force("second stop signal (SIGTERM)")
    assert exits == [EXIT_DEADLINE]


def test_the_deadline_rejects_a_grace_that_is_not_positive():
    with pytest.raises(ValueError):
        StopDeadline(0)


@linux_only
def test_stop_kills_a_child_that_ignores_sigterm_after_the_grace():
    children = ChildProcesses()
    stubborn = children.add("stubborn", subprocess.Popen(
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                               "print('ready', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, start_new_session=True))
    polite = children.add("polite", subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                                     start_new_session=True))
    assert stubborn.stdout is not None and stubborn.stdout.readline() == b"ready\n"
    t0 = time.monotonic()
    asyncio.run(children.stop("polite", 5.0))
    assert polite.poll() == -signal.SIGTERM and time.monotonic() - t0 < 2.0
    t0 = time.monotonic()
    asyncio.run(children.stop("stubborn", 0.3))
    took = time.monotonic() - t0
    stubborn.stdout.close()
    assert stubborn.poll() == -signal.SIGKILL
    assert 0.25 <= took < 2.0
    assert children.alive() == []


@linux_only
def test_kill_takes_the_whole_process_group_with_it():
    children = ChildProcesses()
    shell = children.add("shell", subprocess.Popen(
        ["sh", "-c", "sleep 60 & echo $!; wait"], stdout=subprocess.PIPE, start_new_session=True))
    assert shell.stdout is not None
    grandchild = int(shell.stdout.readline())
    shell.stdout.close()
    children.kill()
    assert shell.poll() is not None
    assert _wait_gone(grandchild), "the shell's background child survived"


@linux_only
def test_a_child_started_with_die_with_parent_dies_when_its_parent_is_killed(tmp_path):
    # the parent starts a child in its own session (as the demo does), reports its pid
    # and is then SIGKILLed: no finally, no atexit, only PR_SET_PDEATHSIG is left
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""
        import subprocess, sys, time
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from agents.shutdown import die_with_parent
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                 start_new_session=True, preexec_fn=die_with_parent())
        print(child.pid, flush=True)
        time.sleep(60)
    """))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    parent.stdout.close()
    assert not _gone(child)
    parent.kill()
    parent.wait(5)
    assert _wait_gone(child), "the child outlived its SIGKILLed parent"


def test_die_with_parent_exists_on_linux_only():
    assert (die_with_parent() is not None) == sys.platform.startswith("linux")


def test_shutdown_grace_defaults_to_10_s_and_is_validated_with_the_file_line(tmp_path, monkeypatch):
    monkeypatch.delenv("DETECTOR_SHUTDOWN_GRACE_S", raising=False)
    assert load_settings(DEFAULT_CONFIG).shutdown_grace_s == 10.0
    text = DEFAULT_CONFIG.read_text()
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if ln.startswith("shutdown_grace_s:"))
    for bad, why in (("ten", "valid number"), ("0", "greater than 0"), ("[1]", "valid number")):
        path = tmp_path / "detector.yaml"
        path.write_text(text.replace("shutdown_grace_s: 10", f"shutdown_grace_s: {bad}"))
        with pytest.raises(ConfigError) as exc:
            load_settings(path)
        assert str(exc.value).startswith(f"{path}:{line}: shutdown_grace_s: "), str(exc.value)
        assert why in str(exc.value)
    monkeypatch.setenv("DETECTOR_SHUTDOWN_GRACE_S", "-1")
    with pytest.raises(ConfigError, match="from DETECTOR_SHUTDOWN_GRACE_S"):
        load_settings(DEFAULT_CONFIG)
    monkeypatch.setenv("DETECTOR_SHUTDOWN_GRACE_S", "2.5")
    assert load_settings(DEFAULT_CONFIG).shutdown_grace_s == 2.5
