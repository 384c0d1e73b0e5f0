"""Benchmark ingestion: spike frames per second through validate, anonymize, window and sink.

Every run gets topics, consumer groups and a lake of its own on one private broker:

1. Preload: publish N spike frames (default 200,000 from 1,000 boards, 96 channels) into
   ``raw.spikes`` with the board publisher. The simulator also publishes class-label
   behaviour events into ``raw.behavior``, about one per 17 frames.
2. Bare loop: a confluent-kafka consumer reads every message of ``raw.spikes`` from the
   beginning with ``consume(num_messages=..., timeout=...)`` and decodes nothing. The
   median of three passes is the reference rate.
3. Processors, as separate processes with the run's settings in their environment:
   ``python -m streams.runner ingest`` (one per worker) and ``python -m streams.runner sink``.

   - pipelined: all start together. The end-to-end time runs from their start to the Delta
     commit that brings ``bronze/spike_frames`` to N rows. The ingest stage is done when the
     high watermarks of ``anon.spikes`` sum to N, and it shares the cores with the sink.
   - staged: the ingest workers run alone until ``anon.spikes`` contains N frames, and are
     stopped. Then the sink runs alone until ``bronze/spike_frames`` has N rows.

   Start-up (Python imports, faust start, consumer group join, Delta table creation) is
   inside every time. The steady rate, from 10 % to 90 % of N, leaves it out.

Progress is sampled every 0.25 s: watermarks from the broker, rows from the ``numRecords``
statistics of new Delta commit files. The end of the sink is the modification time of the
commit file, so it does not depend on the sampling interval. Children are stopped with SIGTERM
and their exit codes are in the result. They write their metrics files every second instead
of every 10 s, so that the result has their last counters.

Each stage's CPU seconds per frame are in the result too. Unlike wall time, they change little
when other work shares the machine.

Run from the repository root (six to nine minutes with the defaults on the 2-core development
machine while other work shared it)::

    .venv/bin/python bench/ingest_throughput.py
    .venv/bin/python bench/ingest_throughput.py --frames 50000 --workers 1 --no-staged
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import harness
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from bcratos.config import Settings
from boards.commands import simulate_load
from streams.lake import SPIKE_FRAMES

logger = logging.getLogger(__name__)

NAME = "ingest_throughput"
SAMPLE_INTERVAL_S = 0.25
BARE_PASSES = 3
BARE_BATCH = 10_000  # messages per consume() call of the bare loop
METRICS_INTERVAL_S = 1.0  # how often the children write their metrics files (default 10 s)


def parse_arguments() -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=200_000, help="spike frames to preload")
    parser.add_argument("--boards", type=int, default=1000, help="simulated boards")
    parser.add_argument("--channels", type=int, default=96, help="channels per spike frame")
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[1, 2],
        help="ingest worker counts of the pipelined runs, one run each",
    )
    parser.add_argument(
        "--pipelined",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run ingest and sink together, once per --workers count",
    )
    parser.add_argument(
        "--staged",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the ingest stage and the sink one after the other (1 worker)",
    )
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=600.0,
        help="seconds one stage may take before the run is abandoned",
    )
    parser.add_argument(
        "--processor-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=(
            "extra environment variable of the processor processes, such as a faust setting "
            "(PRODUCER_LINGER=0.02); repeat for several"
        ),
    )
    parser.add_argument("--verbose", action="store_true", help="log library messages at INFO")

    arguments = parser.parse_args()
    if arguments.frames <= 0 or arguments.frames % arguments.boards:
        parser.error(
            f"--frames {arguments.frames} must be a positive multiple of --boards "
            f"{arguments.boards}, so that every board publishes the same number of frames"
        )
    arguments.processor_env = harness.parse_environment(arguments.processor_env)
    return arguments


# ---------------------------------------------------------------------------------------------
# 1. Preload


def preload(settings: Settings, arguments: argparse.Namespace) -> dict[str, Any]:
    """Publish the run's spike frames into ``raw.spikes`` and return what was published."""
    rate_hz = 20.0
    duration_s = arguments.frames / (arguments.boards * rate_hz)
    result = simulate_load(
        settings,
        boards=arguments.boards,
        rate_hz=rate_hz,
        duration_s=duration_s,
        channels=arguments.channels,
    )
    if result.unflushed or result.frames != arguments.frames:
        raise RuntimeError(
            f"preload failed: published {result.frames} of {arguments.frames} spike frames, "
            f"{result.unflushed} events still spooled after the final flush"
        )
    logger.info(
        "preloaded %d spike frames (%d events) in %.1f s",
        result.frames,
        result.events,
        result.elapsed_s,
    )
    return {
        "frames": result.frames,
        "events": result.events,
        "elapsed_s": round(result.elapsed_s, 2),
        "frames_per_s": round(result.frames_per_s),
    }


# ---------------------------------------------------------------------------------------------
# 2. Bare loop


def bare_pass(settings: Settings, expected: int, timeout_s: float) -> dict[str, float]:
    """Read every message of ``raw.spikes`` once, without decoding; return the timings."""
    topic = settings.topic("raw.spikes")
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap,
            "group.id": f"{settings.kafka.topic_prefix}bare-loop",
            "enable.auto.commit": False,
            "logger": logging.getLogger(f"{__name__}.librdkafka"),
        }
    )
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        started = time.perf_counter()
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        received = 0
        first_at: float | None = None
        deadline = started + timeout_s
        while received < expected:
            if time.perf_counter() > deadline:
                raise TimeoutError(
                    f"bare loop read {received} of {expected} messages of {topic} in "
                    f"{timeout_s:.0f} s; expected all of them"
                )
            for message in consumer.consume(num_messages=BARE_BATCH, timeout=1.0):
                if message.error() is None:
                    received += 1
            if first_at is None and received:
                first_at = time.perf_counter()
        finished = time.perf_counter()
    finally:
        consumer.close()
    return {
        "messages": received,
        "elapsed_s": round(finished - started, 3),
        "frames_per_s": round(received / (finished - started)),
        "first_batch_after_s": round((first_at or finished) - started, 3),
    }


def bare_loop(settings: Settings, expected: int, timeout_s: float) -> dict[str, Any]:
    """Run `BARE_PASSES` passes of the bare loop and return them with their median rate."""
    passes = [bare_pass(settings, expected, timeout_s) for _ in range(BARE_PASSES)]
    median = statistics.median(p["frames_per_s"] for p in passes)
    logger.info("bare loop: median %.0f frames/s over %d passes", median, len(passes))
    return {"passes": passes, "median_frames_per_s": round(median)}


# ---------------------------------------------------------------------------------------------
# 3. Processors


@dataclass
class Progress:
    """Samples of one run's progress: wall time, messages in ``anon.spikes``, bronze rows."""

    started_at: float  # wall time when the children started, seconds since the epoch
    samples: list[tuple[float, int, int]] = field(default_factory=list)

    def add(self, now: float, anon: int, bronze: int) -> None:
        """Record one sample."""
        self.samples.append((now - self.started_at, anon, bronze))

    def reached(self, column: int, count: int) -> float | None:
        """Return the seconds after start of the first sample with at least `count`."""
        for sample in self.samples:
            if sample[column] >= count:
                return sample[0]
        return None

    def steady_rate(self, column: int, total: int) -> float | None:
        """Return the rate between the samples that first reach 10 % and 90 % of `total`."""
        low = self.reached(column, total // 10)
        high = self.reached(column, total * 9 // 10)
        if low is None or high is None or high <= low:
            return None
        first = next(s[column] for s in self.samples if s[0] == low)
        last = next(s[column] for s in self.samples if s[0] == high)
        return (last - first) / (high - low)

    def as_list(self, every_s: float = 1.0) -> list[list[float]]:
        """Return the samples thinned to about one per `every_s`, for the JSON result."""
        kept: list[list[float]] = []
        for elapsed, anon, bronze in self.samples:
            if not kept or elapsed - kept[-1][0] >= every_s:
                kept.append([round(elapsed, 2), anon, bronze])
        return kept


class Watcher:
    """Sampler of one run's progress, until a target count or a timeout."""

    def __init__(self, settings: Settings, children: harness.Children) -> None:
        self.settings = settings
        self.children = children
        self.sizes = harness.TopicSizes(settings.kafka.bootstrap)
        self.bronze = harness.DeltaLog(Path(settings.lake_uri) / SPIKE_FRAMES)
        self.anon_topic = settings.topic("anon.spikes")

    def wait(
        self, progress: Progress, *, anon: int | None, bronze: int | None, timeout_s: float
    ) -> None:
        """Sample until ``anon.spikes`` has `anon` messages or the bronze table `bronze` rows."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.children.check_running()
            self.bronze.poll()
            anon_now = self.sizes.messages(self.anon_topic)
            progress.add(time.time(), anon_now, self.bronze.rows)
            if anon is not None and anon_now >= anon:
                return
            if bronze is not None and self.bronze.rows >= bronze:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"run timed out after {timeout_s:.0f} s: {self.anon_topic} has {anon_now} "
                    f"messages (expected {anon}), {SPIKE_FRAMES} has {self.bronze.rows} rows "
                    f"(expected {bronze}); see the child logs under {self.children.log_dir}"
                )
            time.sleep(SAMPLE_INTERVAL_S)

    def commit_reaching(self, rows: int) -> harness.Commit:
        """Return the first Delta commit after which the bronze table held `rows` rows."""
        total = 0
        for commit in self.bronze.commits:
            total += commit.rows
            if total >= rows:
                return commit
        raise ValueError(f"{SPIKE_FRAMES} never reached {rows} rows: it has {total}")

    def close(self) -> None:
        """Close the watermark consumer."""
        self.sizes.close()


def start_ingest(
    children: harness.Children, settings: Settings, workers: int, extra: dict[str, str]
) -> None:
    """Start `workers` ingest processes, each one faust worker of the ingest consumer group."""
    environment = _environment(settings, extra)
    for index in range(workers):
        children.start(
            f"ingest-{index + 1}",
            ["-m", "streams.runner", "ingest"],
            environment,
            cwd=_work_dir(settings),
        )


def start_sink(children: harness.Children, settings: Settings, extra: dict[str, str]) -> None:
    """Start the lake sink process."""
    environment = _environment(settings, extra)
    children.start(
        "sink", ["-m", "streams.runner", "sink"], environment, cwd=_work_dir(settings)
    )


def _environment(settings: Settings, extra: dict[str, str]) -> dict[str, str]:
    return harness.child_environment(
        settings, extra, STREAMS__METRICS_INTERVAL_S=str(METRICS_INTERVAL_S)
    )


def _work_dir(settings: Settings) -> Path:
    # Faust keeps a data folder in its working directory; this keeps it in the run's folder.
    path = settings.data_dir / f"work-{settings.kafka.topic_prefix.rstrip('.')}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def stage_counters(settings: Settings, outcomes: dict[str, Any]) -> dict[str, Any]:
    """Return the last metrics file of each stopped child, by child name.

    The children write them every `METRICS_INTERVAL_S`, so a file may miss the last second.
    """
    counters: dict[str, Any] = {}
    for name, outcome in outcomes.items():
        stage = "sink" if name == "sink" else "ingest"
        path = settings.data_dir / "streams" / f"{stage}-{outcome['pid']}.json"
        try:
            counters[name] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return counters


def run_pipelined(
    settings: Settings,
    workers: int,
    frames: int,
    bare_rate: float,
    timeout_s: float,
    extra: dict[str, str],
) -> dict[str, Any]:
    """Run ingest and sink together over preloaded frames and return the timings."""
    children = harness.Children(settings.data_dir / "logs" / settings.kafka.topic_prefix)
    watcher = Watcher(settings, children)
    try:
        meter = StageMeter(harness.broker_pid(settings))
        progress = Progress(time.time())
        start_ingest(children, settings, workers, extra)
        start_sink(children, settings, extra)
        watcher.wait(progress, anon=None, bronze=frames, timeout_s=timeout_s)
        cpu = children.cpu_seconds()
        machine_cpu = meter.snapshot(cpu)
    finally:
        outcomes = children.stop()
        watcher.close()

    done = watcher.commit_reaching(frames)
    end_to_end_s = done.visible_at - progress.started_at
    ingest_s = progress.reached(1, frames)
    steady_bronze = progress.steady_rate(2, frames)
    steady_anon = progress.steady_rate(1, frames)
    result = {
        "mode": "pipelined",
        "ingest_workers": workers,
        "end_to_end_s": round(end_to_end_s, 2),
        "end_to_end_frames_per_s": round(frames / end_to_end_s),
        "end_to_end_ratio_to_bare": round(frames / end_to_end_s / bare_rate, 4),
        "steady_end_to_end_frames_per_s": _rounded(steady_bronze),
        "steady_ratio_to_bare": _ratio(steady_bronze, bare_rate),
        "ingest_stage_s": _rounded(ingest_s, 2),
        "ingest_stage_frames_per_s": round(frames / ingest_s) if ingest_s else None,
        "steady_ingest_frames_per_s": _rounded(steady_anon),
        "first_bronze_commit_after_s": _first_commit_after(watcher, progress),
        "delta_commits": len(watcher.bronze.commits),
        "cpu_s": _rounded_map(cpu),
        "machine_cpu": machine_cpu,
        "cpu_per_frame": cpu_per_frame(cpu, machine_cpu["broker_cpu_s"], frames, workers),
        "children": outcomes,
        "counters": stage_counters(settings, outcomes),
        "progress_s_anon_bronze": progress.as_list(),
    }
    logger.info(
        "pipelined, %d ingest worker(s): %.0f frames/s end to end (%.1f %% of the bare loop)",
        workers,
        frames / end_to_end_s,
        100 * frames / end_to_end_s / bare_rate,
    )
    return result


def run_staged(
    settings: Settings,
    workers: int,
    frames: int,
    bare_rate: float,
    timeout_s: float,
    extra: dict[str, str],
) -> dict[str, Any]:
    """Run the ingest workers alone, stop them, then run the sink alone; return both timings."""
    children = harness.Children(settings.data_dir / "logs" / settings.kafka.topic_prefix)
    watcher = Watcher(settings, children)
    broker_pid = harness.broker_pid(settings)
    try:
        meter = StageMeter(broker_pid)
        ingest_progress = Progress(time.time())
        start_ingest(children, settings, workers, extra)
        watcher.wait(ingest_progress, anon=frames, bronze=None, timeout_s=timeout_s)
        ingest_cpu = children.cpu_seconds()
        ingest_machine = meter.snapshot(ingest_cpu)
        ingest_outcomes = children.stop()

        meter = StageMeter(broker_pid)
        sink_progress = Progress(time.time())
        start_sink(children, settings, extra)
        watcher.wait(sink_progress, anon=None, bronze=frames, timeout_s=timeout_s)
        sink_cpu = children.cpu_seconds()
        sink_machine = meter.snapshot(sink_cpu)
    finally:
        sink_outcomes = children.stop()
        watcher.close()

    ingest_s = ingest_progress.reached(1, frames) or float("nan")
    sink_s = watcher.commit_reaching(frames).visible_at - sink_progress.started_at
    steady_anon = ingest_progress.steady_rate(1, frames)
    steady_bronze = sink_progress.steady_rate(2, frames)
    result = {
        "mode": "staged",
        "ingest_workers": workers,
        "ingest_alone_s": round(ingest_s, 2),
        "ingest_alone_frames_per_s": round(frames / ingest_s),
        "ingest_alone_ratio_to_bare": round(frames / ingest_s / bare_rate, 4),
        "steady_ingest_alone_frames_per_s": _rounded(steady_anon),
        "sink_alone_s": round(sink_s, 2),
        "sink_alone_frames_per_s": round(frames / sink_s),
        "steady_sink_alone_frames_per_s": _rounded(steady_bronze),
        "sum_of_stages_s": round(ingest_s + sink_s, 2),
        "delta_commits": len(watcher.bronze.commits),
        "cpu_s": {**_rounded_map(ingest_cpu), **_rounded_map(sink_cpu)},
        "ingest_machine_cpu": ingest_machine,
        "sink_machine_cpu": sink_machine,
        "cpu_per_frame": cpu_per_frame(
            {**ingest_cpu, **sink_cpu},
            _total((), ingest_machine["broker_cpu_s"], sink_machine["broker_cpu_s"]),
            frames,
            workers,
        ),
        "children": {**ingest_outcomes, **sink_outcomes},
        "counters": stage_counters(settings, {**ingest_outcomes, **sink_outcomes}),
        "ingest_progress_s_anon_bronze": ingest_progress.as_list(),
        "sink_progress_s_anon_bronze": sink_progress.as_list(),
    }
    logger.info(
        "staged, %d ingest worker(s): ingest alone %.0f frames/s, sink alone %.0f frames/s",
        workers,
        frames / ingest_s,
        frames / sink_s,
    )
    return result


def cpu_per_frame(
    cpu: dict[str, float | None], broker_cpu_s: float | None, frames: int, workers: int
) -> dict[str, Any]:
    """Return CPU microseconds per spike frame by stage, and the rate they would allow.

    CPU time depends much less than wall time on other work sharing the machine. The rate is
    an estimate that assumes the stages were bound by CPU alone and had the cores to
    themselves. Each process counts as at most one core (Python's GIL), and all of them
    together as at most all cores.
    """
    ingest = _total(value for name, value in cpu.items() if name.startswith("ingest"))
    parts = {"ingest": ingest, "sink": cpu.get("sink"), "broker": broker_cpu_s}
    if any(value is None for value in parts.values()):
        return {"us": None, "cpu_bound_estimate_frames_per_s": None}
    us = {name: 1e6 * value / frames for name, value in parts.items()}  # type: ignore[operator]
    cores = harness.machine_info()["nproc"]
    bounds = (
        workers * 1e6 / us["ingest"],
        1e6 / us["sink"],
        cores * 1e6 / sum(us.values()),
    )
    return {
        "us": {name: round(value) for name, value in us.items()},
        "cpu_bound_estimate_frames_per_s": round(min(bounds)),
    }


class StageMeter:
    """CPU seconds of the broker, this process and the machine during one stage."""

    def __init__(self, broker_pid: int | None) -> None:
        self._broker_pid = broker_pid
        self._broker_before = harness.process_cpu_seconds(broker_pid)
        self._own_before = time.process_time()
        self._machine = harness.MachineCpu()

    def snapshot(self, children_cpu: dict[str, float | None]) -> dict[str, float | None]:
        """Return the machine's CPU figures with the broker's share, given the children's."""
        broker = _difference(harness.process_cpu_seconds(self._broker_pid), self._broker_before)
        own = _total(children_cpu.values(), broker, time.process_time() - self._own_before)
        return {**self._machine.snapshot(own), "broker_cpu_s": _rounded(broker, 1)}


def _total(values: Iterable[float | None], *more: float | None) -> float | None:
    parts = [*values, *more]
    return None if any(part is None for part in parts) else sum(parts)  # type: ignore[misc]


def _first_commit_after(watcher: Watcher, progress: Progress) -> float | None:
    for commit in watcher.bronze.commits:
        if commit.rows:
            return round(commit.visible_at - progress.started_at, 2)
    return None


def _difference(after: float | None, before: float | None) -> float | None:
    return after - before if after is not None and before is not None else None


def _rounded(value: float | None, digits: int = 0) -> float | None:
    if value is None:
        return None
    return round(value, digits) if digits else round(value)


def _rounded_map(values: dict[str, float | None]) -> dict[str, float | None]:
    return {name: _rounded(value, 1) for name, value in values.items()}


def _ratio(rate: float | None, bare_rate: float) -> float | None:
    return round(rate / bare_rate, 4) if rate is not None else None


# ---------------------------------------------------------------------------------------------
# Main


def run_one(
    stack_settings: Settings,
    name: str,
    arguments: argparse.Namespace,
    *,
    workers: int,
    staged: bool,
) -> dict[str, Any]:
    """Preload a run's own topics, measure the bare loop on them, then the processors."""
    settings = harness.run_settings(stack_settings, name)
    harness.provision_topics(settings)
    loaded = preload(settings, arguments)
    bare = bare_loop(settings, arguments.frames, arguments.timeout_s)
    bare_rate = float(bare["median_frames_per_s"])
    runner = run_staged if staged else run_pipelined
    processors = runner(
        settings,
        workers,
        arguments.frames,
        bare_rate,
        arguments.timeout_s,
        arguments.processor_env,
    )
    sizes = harness.TopicSizes(settings.kafka.bootstrap)
    try:
        topic_messages = {
            short: sizes.messages(settings.topic(short))
            for short in ("raw.spikes", "raw.behavior", "anon.spikes", "anon.behavior", "dlq")
        }
    finally:
        sizes.close()
    return {
        "run": name,
        "preload": loaded,
        "bare_loop": bare,
        "processors": processors,
        "topic_messages": topic_messages,
    }


def summarize(runs: Sequence[dict[str, Any]]) -> str:
    """Return the table row text of all runs."""
    parts = []
    for run in runs:
        bare = run["bare_loop"]["median_frames_per_s"]
        processors = run["processors"]
        workers = processors["ingest_workers"]
        if processors["mode"] == "pipelined":
            parts.append(
                f"{workers} ingest worker(s) + sink: {processors['end_to_end_frames_per_s']:,} "
                f"frames/s end to end ({processors['end_to_end_ratio_to_bare']:.1%} of bare "
                f"{bare:,}), steady {processors['steady_end_to_end_frames_per_s'] or 0:,}; "
                f"ingest stage {processors['ingest_stage_frames_per_s'] or 0:,}; "
                + _cpu_text(processors["cpu_per_frame"])
            )
        else:
            parts.append(
                f"staged, {workers} worker(s): ingest alone "
                f"{processors['ingest_alone_frames_per_s']:,}, sink alone "
                f"{processors['sink_alone_frames_per_s']:,} frames/s (bare {bare:,}); "
                + _cpu_text(processors["cpu_per_frame"])
            )
    return f"{runs[0]['preload']['frames']:,} frames: " + "; ".join(parts)


def _cpu_text(cpu: dict[str, Any]) -> str:
    us = cpu["us"]
    if us is None:
        return "CPU per frame unknown"
    return (
        f"CPU µs/frame ingest {us['ingest']}, sink {us['sink']}, broker {us['broker']}"
    )


def main() -> None:
    """Run every configured run on one private broker and record the results."""
    arguments = parse_arguments()
    harness.configure_logging(arguments.verbose)
    harness.raise_on_sigterm()
    start = harness.RunStart.now()
    plan = []
    if arguments.pipelined:
        plan += [(f"pipelined-w{workers}", workers, False) for workers in arguments.workers]
    if arguments.staged:
        plan.append(("staged-w1", 1, True))
    if not plan:
        raise SystemExit("nothing to run: --no-pipelined and --no-staged leave no run")

    runs = []
    with harness.private_stack(NAME) as stack_settings:
        for name, workers, staged in plan:
            logger.info("run %s", name)
            runs.append(run_one(stack_settings, name, arguments, workers=workers, staged=staged))

    figures = {
        "parameters": {
            "frames": arguments.frames,
            "boards": arguments.boards,
            "channels": arguments.channels,
            "rate_hz": 20.0,
            "workers": arguments.workers,
            "pipelined": arguments.pipelined,
            "staged": arguments.staged,
            "processor_env": arguments.processor_env,
            "bare_loop_batch": BARE_BATCH,
            "sample_interval_s": SAMPLE_INTERVAL_S,
        },
        "runs": runs,
    }
    summary = summarize(runs)
    harness.record_result(NAME, start, figures=figures, summary=summary)
    print(summary)


if __name__ == "__main__":
    main()
