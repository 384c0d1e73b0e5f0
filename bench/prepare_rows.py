"""Benchmark dataset preparation: gold rows per second of `jobs.prepare.prepare_dataset`.

1. Lake: with ``--lake PATH`` of an existing lake (``silver/spike_steps`` and
   ``bronze/behavior_events``), the benchmark reads it and writes its dataset there, under
   ``gold/datasets/<--name>``. Otherwise it builds one the way the platform does: a private
   broker, the real processors (``python -m streams.runner ingest`` and ``sink``) and the
   first ``--spike-days`` limblab Spike sessions plus the Jango session replayed by a
   `BoardPublisher` as fast as possible. The lake goes to ``--lake PATH`` when that folder
   contains no lake yet (to reuse later), else to a temporary folder deleted at the end.
2. Runs: ``--runs`` preparations of the whole lake with default parameters in one Spark
   session (``local[2]`` unless the settings set another master), then one ``--reproduce`` check.
   The first run includes the Spark and Delta warm-up (class loading, code generation); the
   later ones show the steady cost. Each run's wall time covers reading the pinned source
   versions, labelling, statistics, writing the gold table, hashing it and the manifest.

Rows per second count gold rows (one per session and 50 ms step). The JSON result has the
stage timings of each manifest and the CPU seconds of the Spark JVM, of this process and of the
whole machine. Rows per CPU second of the JVM and this process depend less on other work
running on the machine than rows per wall-clock second do.

Run from the repository root (about 5 minutes on a 2-core machine with the defaults, most of
it building the lake)::

    .venv/bin/python bench/prepare_rows.py
    .venv/bin/python bench/prepare_rows.py --lake /tmp/bench-lake --runs 3
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import harness

from bcratos.config import PROJECT_ROOT, Settings, load_settings
from boards.publisher import BoardPublisher
from boards.replay import open_recording, replay
from jobs.dataset.sources import BEHAVIOR_EVENTS, SPIKE_STEPS
from jobs.prepare import PrepareParameters, PrepareResult, prepare_dataset, reproduce_dataset

logger = logging.getLogger(__name__)

NAME = "prepare_rows"
DATA = PROJECT_ROOT.parent / "shared" / "data"  # the real recordings
SAMPLE_INTERVAL_S = 1.0


def parse_arguments() -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--lake", type=Path, help="lake to read, or empty folder to build the lake into"
    )
    parser.add_argument(
        "--spike-days", type=int, default=4, help="Spike sessions to replay when building"
    )
    parser.add_argument("--runs", type=int, default=2, help="preparation runs to time")
    parser.add_argument("--name", default="bench-prepare-rows", help="dataset name to write")
    parser.add_argument(
        "--timeout-s", type=float, default=1200, help="maximum seconds to wait for the lake to fill"
    )
    parser.add_argument("--verbose", action="store_true", help="log library messages at INFO")
    arguments = parser.parse_args()
    if arguments.runs < 1 or arguments.spike_days < 1:
        parser.error("--runs and --spike-days must be at least 1")
    return arguments


# ---------------------------------------------------------------------------------------------
# 1. Lake


def has_lake(path: Path) -> bool:
    """Return whether `path` contains both source tables of the job."""
    return all((path / table / "_delta_log").is_dir() for table in (SPIKE_STEPS, BEHAVIOR_EVENTS))


def build_lake(lake: Path, spike_days: int, timeout_s: float) -> dict[str, Any]:
    """Replay recordings through a private broker and the processors into the lake at `lake`."""
    files = sorted((DATA / "limblab-spike-wf").glob("Spike_*.mat"))[:spike_days]
    files += sorted((DATA / "limblab-jango").glob("*.mat"))
    if len(files) < spike_days + 1:
        raise FileNotFoundError(f"expected {spike_days} Spike files and one Jango file in {DATA}")
    started = time.monotonic()
    with harness.private_stack(NAME) as stack_settings:
        settings = harness.run_settings(stack_settings, NAME, lake_uri=str(lake))
        harness.provision_topics(settings)
        children = harness.Children(settings.data_dir / "logs-prepare-rows")
        environment = harness.child_environment(settings, STREAMS__IDLE_FLUSH_S="2")
        try:
            for stage in ("ingest", "sink"):
                children.start(
                    stage, ["-m", "streams.runner", stage], environment, cwd=settings.data_dir
                )
            published = publish(settings, files)
            wait_for_rows(lake, published, children, timeout_s)
        finally:
            outcomes = children.stop()
    return {
        "files": [path.name for path in files],
        "published": dict(published),
        "build_s": round(time.monotonic() - started, 1),
        "children": outcomes,
    }


def publish(settings: Settings, files: list[Path]) -> Counter[str]:
    """Replay each file as one board session; return the events published by record name."""
    published: Counter[str] = Counter()
    for path in files:
        subject = path.name.split("_")[0]
        board = f"{subject.lower()}-board"
        recording = open_recording(path, board_id=board, subject_id=subject)
        publisher = BoardPublisher(
            settings.kafka.bootstrap,
            board,
            settings.data_dir / "boards" / board,
            topic_prefix=settings.kafka.topic_prefix,
        )
        result = replay([recording], publisher, speed=None)
        unflushed = publisher.close()
        if unflushed:
            raise RuntimeError(f"{unflushed} events of {path.name} are still spooled")
        published.update(result.published)
        logger.info("replayed %s: %s", path.name, dict(result.published))
    return published


def wait_for_rows(
    lake: Path, published: Counter[str], children: harness.Children, timeout_s: float
) -> None:
    """Wait until the silver steps and behaviour events cover everything published."""
    logs = {
        SPIKE_STEPS: harness.DeltaLog(lake / SPIKE_STEPS),
        BEHAVIOR_EVENTS: harness.DeltaLog(lake / BEHAVIOR_EVENTS),
    }
    expected = {SPIKE_STEPS: published["SpikeFrame"], BEHAVIOR_EVENTS: published["BehaviorEvent"]}
    deadline = time.monotonic() + timeout_s
    while True:
        children.check_running()
        for log in logs.values():
            if log.table_path.is_dir():
                log.poll()
        if all(logs[table].rows >= rows for table, rows in expected.items()):
            return
        if time.monotonic() > deadline:
            counts = {table: log.rows for table, log in logs.items()}
            raise TimeoutError(
                f"the lake did not fill within {timeout_s:.0f} s: rows {counts}, expected at "
                f"least {expected}; see the child logs"
            )
        time.sleep(SAMPLE_INTERVAL_S)


# ---------------------------------------------------------------------------------------------
# 2. Runs


def jvm_pid(spark: Any) -> int | None:
    """Return the process id of the Spark driver JVM."""
    try:
        return int(spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid())
    except Exception:  # noqa: BLE001 - the CPU figure is optional
        return None


def timed_run(settings: Settings, spark: Any, name: str) -> tuple[PrepareResult, dict[str, Any]]:
    """Prepare the dataset once and return its result with wall and CPU figures."""
    pid = jvm_pid(spark)
    jvm_before = harness.process_cpu_seconds(pid)
    own_before = time.process_time()
    machine = harness.MachineCpu()
    started = time.monotonic()
    result = prepare_dataset(settings, PrepareParameters(name=name), spark=spark)
    wall_s = time.monotonic() - started
    jvm_after = harness.process_cpu_seconds(pid)
    jvm_cpu_s = jvm_after - jvm_before if jvm_after is not None and jvm_before is not None else None
    python_cpu_s = time.process_time() - own_before
    own_cpu_s = jvm_cpu_s + python_cpu_s if jvm_cpu_s is not None else None
    rows = sum(result.rows_by_split.values())
    manifest = _read_json(result.manifest_uri)
    figures = {
        "wall_s": round(wall_s, 2),
        "rows": rows,
        "rows_per_s": round(rows / wall_s),
        "rows_by_split": result.rows_by_split,
        "stage_timings_s": manifest["timings_s"],
        "jvm_cpu_s": round(jvm_cpu_s, 1) if jvm_cpu_s is not None else None,
        "python_cpu_s": round(python_cpu_s, 1),
        # Rows per CPU second of this run's processes: less sensitive to other load.
        "rows_per_cpu_s": round(rows / own_cpu_s) if own_cpu_s else None,
        "machine": machine.snapshot(own_cpu_s),
        "content_hash": result.content_hash,
    }
    logger.info("prepared %d rows in %.1f s: %.0f rows/s", rows, wall_s, rows / wall_s)
    return result, figures


def _read_json(path: str) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(Path(path).read_text())
    return parsed


def measure(lake: Path, data_dir: Path, arguments: argparse.Namespace) -> dict[str, Any]:
    """Time the preparation runs and one reproduction on the lake at `lake`."""
    from infra.spark import spark_session

    settings = load_settings(data_dir=data_dir, lake={"uri": str(lake)})
    spark = spark_session(settings, app_name="bcratos-bench-prepare")
    try:
        runs = []
        hashes = set()
        for _ in range(arguments.runs):
            result, figures = timed_run(settings, spark, arguments.name)
            runs.append(figures)
            hashes.add(result.content_hash)
        started = time.monotonic()
        reproduction = reproduce_dataset(settings, arguments.name, spark=spark)
        reproduce_s = time.monotonic() - started
    finally:
        spark.stop()
    return {
        "spark_master": settings.spark.master,
        "shuffle_partitions": settings.spark.shuffle_partitions,
        "silver_rows_read": runs[0]["rows"],
        "runs": runs,
        "same_hash_every_run": len(hashes) == 1,
        "reproduce_s": round(reproduce_s, 2),
        "reproduced": reproduction.matches,
    }


def summarize(figures: dict[str, Any]) -> str:
    """Return the table row text."""
    runs = figures["runs"]
    first = runs[0]
    best = max(runs, key=lambda run: run["rows_per_s"])
    lake = figures["lake"]
    source = f"{len(lake['files'])} replayed sessions" if "files" in lake else "an existing lake"
    cpu = f", {best['rows_per_cpu_s']:,} rows per CPU second" if best["rows_per_cpu_s"] else ""
    others = best["machine"]["other_processes_cpu_s"]
    shared = f" (other processes used {others} CPU s meanwhile)" if others is not None else ""
    return (
        f"{first['rows']:,} gold rows from {source}: first run {first['rows_per_s']:,} rows/s "
        f"({first['wall_s']} s, with Spark warm-up), best of {len(runs)} "
        f"{best['rows_per_s']:,} rows/s ({best['wall_s']} s{cpu}){shared}; reproduce check "
        f"{figures['reproduce_s']} s, {'hash matched' if figures['reproduced'] else 'MISMATCH'}"
    )


def main() -> None:
    """Build or open the lake, time the runs, record the result."""
    arguments = parse_arguments()
    harness.configure_logging(arguments.verbose)
    harness.raise_on_sigterm()
    start = harness.RunStart.now()

    temporary = Path(tempfile.mkdtemp(prefix="bcratos-bench-prepare-"))
    try:
        lake = arguments.lake if arguments.lake is not None else temporary / "lake"
        if has_lake(lake):
            lake_figures: dict[str, Any] = {"reused": True}
        else:
            lake_figures = build_lake(lake, arguments.spike_days, arguments.timeout_s)
        figures = {"lake": lake_figures, **measure(lake, temporary, arguments)}
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    harness.record_result(NAME, start, figures=figures, summary=summarize(figures))


if __name__ == "__main__":
    main()
