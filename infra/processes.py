"""Background services of the embedded stack: start a command detached, find it, stop it.

A service started here runs in its own session (process group), writes its output to
``<data_dir>/logs/<name>.log`` and its pid to ``<data_dir>/run/<name>.pid``. A pid counts as
the service only while ``/proc/<pid>/cmdline`` still contains the service's marker, so a stale
pid file whose number the system gave to another process is ignored.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bcratos.config import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Service:
    """A long-running command of the platform."""

    name: str  # file stem of the pid and log files
    argv: tuple[str, ...]
    marker: bytes  # a part of the command line that identifies the running process

    def pid_file(self, settings: Settings) -> Path:
        return settings.data_dir / "run" / f"{self.name}.pid"

    def log_file(self, settings: Settings) -> Path:
        return settings.data_dir / "logs" / f"{self.name}.log"


def start_detached(
    settings: Settings, service: Service, *, env: dict[str, str] | None = None
) -> int:
    """Start ``service`` in the background and return its pid, or the pid of the instance that
    already runs."""
    running = detached_pid(settings, service)
    if running is not None:
        return running
    log_file = service.log_file(settings)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    service.pid_file(settings).parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        process = subprocess.Popen(
            list(service.argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=None if env is None else {**os.environ, **env},
        )
    service.pid_file(settings).write_text(f"{process.pid}\n")
    logger.info("started %s in the background, pid %d, log %s", service.name, process.pid, log_file)
    return process.pid


def detached_pid(settings: Settings, service: Service) -> int | None:
    """Return the pid of the background ``service`` while it runs, else None."""
    try:
        pid = int(service.pid_file(settings).read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if service.marker in cmdline and is_running(pid) else None


def stop_detached(settings: Settings, service: Service, *, timeout_s: float = 90.0) -> bool:
    """Send SIGTERM to the background ``service``, wait up to ``timeout_s`` seconds, then kill
    its process group. Return True when it was running."""
    pid = detached_pid(settings, service)
    service.pid_file(settings).unlink(missing_ok=True)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while is_running(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if is_running(pid):
        logger.warning(
            "%s, pid %d, ignored SIGTERM for %.0f s; killing it", service.name, pid, timeout_s
        )
        os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10.0
        while is_running(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    logger.info("stopped %s, pid %d", service.name, pid)
    return True


def is_running(pid: int) -> bool:
    """Return True while process ``pid`` exists and has not exited (a zombie has)."""
    try:
        return b") Z " not in Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False


def log_tail(settings: Settings, service: Service, *, lines: int = 20) -> Sequence[str]:
    """Return the last ``lines`` lines of the service's log, for error messages."""
    try:
        text = service.log_file(settings).read_text(errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]
