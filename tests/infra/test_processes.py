"""Background services of `infra.processes`: start, find, stop, and stale pid files."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from bcratos.config import Settings, load_settings
from infra.processes import Service, detached_pid, is_running, start_detached, stop_detached

SLEEPER = Service(
    "sleeper",
    (sys.executable, "-c", "import time; print('sleeping', flush=True); time.sleep(600)"),
    b"time.sleep(600)",
)


def _settings(tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path)


def _wait_for_line(log: Path, line: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if log.is_file() and line in log.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"{log} has no line {line!r} after 30 s")


def test_start_find_and_stop(tmp_path: Path) -> None:
    settings = _settings(tmp_path)

    pid = start_detached(settings, SLEEPER)
    _wait_for_line(SLEEPER.log_file(settings), "sleeping")

    assert detached_pid(settings, SLEEPER) == pid
    assert start_detached(settings, SLEEPER) == pid  # a second start finds the first
    assert stop_detached(settings, SLEEPER, timeout_s=10)
    assert not is_running(pid)
    assert detached_pid(settings, SLEEPER) is None
    assert not SLEEPER.pid_file(settings).exists()


def test_stale_pid_file_is_ignored(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    SLEEPER.pid_file(settings).parent.mkdir(parents=True)
    # This test's own process runs, but its command line lacks the service's marker.
    SLEEPER.pid_file(settings).write_text("1\n")

    assert detached_pid(settings, SLEEPER) is None
    assert not stop_detached(settings, SLEEPER)


def test_stop_kills_a_service_that_ignores_sigterm(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    stubborn = Service(
        "stubborn",
        (
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(601)",
        ),
        b"time.sleep(601)",
    )
    pid = start_detached(settings, stubborn)
    _wait_for_line(stubborn.log_file(settings), "ready")

    assert stop_detached(settings, stubborn, timeout_s=1)

    assert not is_running(pid)
