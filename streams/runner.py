"""``bcratos streams run``: the ingest workers, the lake sink and the retrain monitors as
supervised processes."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from types import FrameType
from typing import Literal

from bcratos.config import Settings, load_settings
from infra import processes
from infra.processes import Service

logger = logging.getLogger(__name__)

Stage = Literal["all", "ingest", "sink", "monitor"]
STAGES: tuple[Stage, ...] = ("all", "ingest", "sink", "monitor")


def run(settings: Settings, *, workers: int = 1, stage: str = "all") -> None:
    """Run the processors until SIGINT or SIGTERM.

    ``ingest`` with one worker, ``sink`` and ``monitor`` run in this process. ``all`` starts
    one child process per ingest worker, one for the sink and one for the monitors, and stops
    them all when one fails or a signal arrives.
    """
    if stage == "sink":
        run_sink(settings)
        return
    if stage == "monitor":
        from streams.monitors import run_worker as run_monitors

        run_monitors(settings)
        return
    if stage == "ingest" and workers == 1:
        from streams.processor import build_pipeline, run_worker

        build_pipeline(settings)  # fail fast on a missing key before faust starts
        run_worker(settings)
        return

    stages = ["ingest"] * workers + (["sink", "monitor"] if stage == "all" else [])
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


def service(workers: int = 1) -> Service:
    """Return the background service of ``bcratos streams start``: the supervisor of
    ``workers`` ingest workers, the sink and the monitors. Its log is
    ``<data_dir>/logs/streams.log`` and its pid file ``<data_dir>/run/streams.pid``."""
    return Service(
        "streams", (sys.executable, "-m", "streams.runner", "all", str(workers)), b"streams.runner"
    )


def start_detached(settings: Settings, *, workers: int = 1) -> int:
    """Start the processors in the background and return the supervisor's pid, or the pid of
    a supervisor that already runs."""
    return processes.start_detached(settings, service(workers))


def detached_pid(settings: Settings) -> int | None:
    """Return the pid of the background processors when they still run."""
    return processes.detached_pid(settings, service())


def stop_detached(settings: Settings, timeout_s: float = 90.0) -> bool:
    """Stop processors started with `start_detached`; return True when some were running."""
    return processes.stop_detached(settings, service(), timeout_s=timeout_s)


def _main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    stage = sys.argv[1] if len(sys.argv) > 1 else "all"
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    run(load_settings(), workers=workers, stage=stage)


if __name__ == "__main__":
    _main()
