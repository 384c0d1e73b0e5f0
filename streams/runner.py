"""``bcratos streams run``: the ingest workers and the lake sink as supervised processes."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Literal

from bcratos.config import Settings, load_settings

logger = logging.getLogger(__name__)

Stage = Literal["all", "ingest", "sink"]


def run(settings: Settings, *, workers: int = 1, stage: str = "all") -> None:
    """Run the processors until SIGINT or SIGTERM.

    ``ingest`` with one worker and ``sink`` run in this process. Anything more starts one
    child process per worker, and stops them all when one fails or a signal arrives.
    """
    if stage == "sink":
        run_sink(settings)
        return
    if stage == "ingest" and workers == 1:
        from streams.processor import build_pipeline, run_worker

        build_pipeline(settings)  # fail fast on a missing key before faust starts
        run_worker(settings)
        return

    stages = ["ingest"] * workers + (["sink"] if stage == "all" else [])
    supervise(stages)


def run_sink(settings: Settings) -> None:
    """Run the lake sink in this process until SIGINT or SIGTERM."""
    from streams.sink import LakeSink

    stopping = False

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        logger.info("lake sink received signal %d; committing and stopping", signum)
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    LakeSink(settings).run(should_stop=lambda: stopping)


def supervise(stages: list[str]) -> None:
    """Start one child per stage entry and stop them all on a signal or a child's exit."""
    from streams.processor import build_pipeline

    build_pipeline(load_settings())  # fail fast on a missing key before starting children
    children = [
        subprocess.Popen([sys.executable, "-m", "streams.runner", stage_name])
        for stage_name in stages
    ]
    logger.info(
        "started %s as processes %s", ", ".join(stages), ", ".join(str(c.pid) for c in children)
    )
    stopping = False

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    failed: list[str] = []
    while not stopping:
        for name, child in zip(stages, children, strict=True):
            if child.poll() is not None:
                failed.append(f"{name} (pid {child.pid}) exited with code {child.returncode}")
        if failed:
            break
        time.sleep(0.5)
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            logger.warning("process %d did not stop within 60 s; killing it", child.pid)
            child.kill()
    if failed:
        from streams.exceptions import StreamsError

        raise StreamsError("stream processor stopped: " + "; ".join(failed))


def pid_file(settings: Settings) -> Path:
    """Return the file that records the pid of processors started with `start_detached`."""
    return settings.data_dir / "run" / "streams.pid"


def start_detached(settings: Settings, *, workers: int = 1) -> int:
    """Start ``workers`` ingest workers and the sink in the background; return the pid.

    Returns the pid of a detached supervisor already running instead of starting another.
    Output goes to ``<data_dir>/logs/streams.log``.
    """
    running = detached_pid(settings)
    if running is not None:
        return running
    log_dir = settings.data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    pid_file(settings).parent.mkdir(parents=True, exist_ok=True)
    with (log_dir / "streams.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "streams.runner", "all", str(workers)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    pid_file(settings).write_text(f"{process.pid}\n")
    logger.info("started stream processors in the background, pid %d", process.pid)
    return process.pid


def detached_pid(settings: Settings) -> int | None:
    """Return the pid of the background processors when they still run."""
    try:
        pid = int(pid_file(settings).read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"streams.runner" in cmdline else None


def stop_detached(settings: Settings, timeout_s: float = 90.0) -> bool:
    """Stop processors started with `start_detached`; return True when some were running."""
    pid = detached_pid(settings)
    pid_file(settings).unlink(missing_ok=True)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _running(pid):
        logger.warning("stream processors, pid %d, ignored SIGTERM; killing them", pid)
        os.killpg(pid, signal.SIGKILL)
    logger.info("stopped stream processors, pid %d", pid)
    return True


def _running(pid: int) -> bool:
    try:
        return b") Z " not in Path(f"/proc/{pid}/stat").read_bytes()  # a zombie has exited
    except OSError:
        return False


def _main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    stage = sys.argv[1] if len(sys.argv) > 1 else "all"
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    run(load_settings(), workers=workers, stage=stage)


if __name__ == "__main__":
    _main()
