"""Benchmark freshness: time from publish to the row being visible in ``bronze/spike_frames``.

The processors (``python -m streams.runner ingest`` and ``python -m streams.runner sink``)
run as child processes on a private broker. This process publishes simulated spike frames
through a gateway `BoardPublisher`, paced so that each event is published at its event time
(boards x 20 frames per second), first for a warm-up and then for the measured duration.
Each board count given with ``--boards`` is one load, run after the previous one.

Times:

- publish time: the wall clock when ``BoardPublisher.publish`` returned, recorded per board and
  sequence number. Rows are matched to it by board pseudonym (computed with the private
  stack's key) and ``seq``.
- ingest time: the timestamp that the ingest worker's producer gave the ``anon.spikes``
  message (CreateTime, in ms), read back from the topic after the run.
- visible time: the modification time of the Delta commit file that added the row. Every bronze
  batch carries one ``ingested_at`` stamp, taken just before its commit, so a row belongs to
  the first commit whose file is not older than its stamp. The clock and the file time come
  from the same machine. The file time has the resolution of the kernel's coarse clock, a few
  milliseconds.

Latency is visible time minus publish time, for the frames published after the warm-up, and
it is split into the ingest stage (publish to ingest time) and the sink (ingest to visible
time). The same latency counted from the event time (when the board meant to publish) adds
the publisher's own lag and is reported too. A frame still missing when the drain timeout
ends counts as infinitely late, so a percentile above the missing share is reported as None.

The defaults offer 1,000 and 2,000 frames/s. The design load of 20,000 frames/s
(``--boards 1000``) is more than one publisher process and the processors reach on a 2-core
machine (see ``publish_throughput.py`` and ``ingest_throughput.py``). At that load the backlog
grows for as long as the run lasts, and the latency grows with it.

Run from the repository root (about three minutes with the defaults)::

    .venv/bin/python bench/freshness.py
    .venv/bin/python bench/freshness.py --boards 1000 --duration-s 20 --drain-timeout-s 120
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import harness
import numpy as np
import numpy.typing as npt
import pyarrow as pa
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from deltalake import DeltaTable

from bcratos.config import Settings
from boards.commands import board_state_dir
from boards.publisher import BoardPublisher
from boards.simulate import Simulation, SimulationConfig
from schemas import codec
from streams.anonymize import Pseudonymizer
from streams.lake import SPIKE_FRAMES
from streams.processor import resolve_key

logger = logging.getLogger(__name__)

NAME = "freshness"
RATE_HZ = 20.0  # frames per second and board: 50 ms bins, one step per frame
POLL_INTERVAL_S = 0.5
SLEEP_AHEAD_S = 0.002  # the publisher sleeps only when it is at least this far ahead
PERCENTILES = (50, 90, 99)
READ_TIMEOUT_S = 300.0  # reading anon.spikes back after a run


def parse_arguments() -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--boards",
        type=int,
        nargs="+",
        default=[50, 100],
        help="board counts to run one after the other; each offers boards x 20 frames/s",
    )
    parser.add_argument("--channels", type=int, default=96, help="channels per spike frame")
    parser.add_argument(
        "--duration-s", type=float, default=60.0, help="measured seconds of publishing"
    )
    parser.add_argument(
        "--warmup-s",
        type=float,
        default=10.0,
        help="seconds of publishing before the measured part, not in the percentiles",
    )
    parser.add_argument(
        "--drain-timeout-s",
        type=float,
        default=60.0,
        help="seconds to wait after publishing for the last rows to become visible",
    )
    parser.add_argument("--workers", type=int, default=1, help="ingest worker processes")
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
    arguments.processor_env = harness.parse_environment(arguments.processor_env)
    return arguments


# ---------------------------------------------------------------------------------------------
# Publishing


@dataclass
class PublishLog:
    """Publish times of every spike frame, by board index and sequence number."""

    times: npt.NDArray[np.float64]  # (boards, sequence numbers), NaN where none was published
    due: npt.NDArray[np.float64]  # (boards, sequence numbers), event times as wall time
    measured_from: float  # wall time where the warm-up ends
    finished_at: float  # wall time after the final flush
    frames: int
    events: int


def publish_paced(
    settings: Settings, config: SimulationConfig, *, warmup_s: float, duration_s: float
) -> PublishLog:
    """Publish every event at its event time; return when each spike frame was published."""
    n_frames = round((warmup_s + duration_s) * config.frame_rate_hz)
    # Sequence numbers count behaviour events too, about one per 17 frames, so twice the
    # frames leaves ample room.
    times = np.full((config.n_boards, 2 * n_frames + 16), np.nan)
    due_times = np.full_like(times, np.nan)
    board_index = {f"{config.board_prefix}-{i:04d}": i for i in range(config.n_boards)}

    origin = config.first_frame_time
    publisher = BoardPublisher(
        settings.kafka.bootstrap,
        None,
        board_state_dir(settings, f"freshness-{config.n_boards}"),
        topic_prefix=settings.kafka.topic_prefix,
    )
    start_wall = origin.timestamp()
    frames = events = 0
    try:
        for event in Simulation(config, n_frames=n_frames).events():
            due = start_wall + (event.event_time - origin) / timedelta(seconds=1)
            ahead = due - time.time()
            if ahead > SLEEP_AHEAD_S:
                time.sleep(ahead)
            seq = publisher.publish(event.record_name, event.record)
            events += 1
            if event.record_name == "SpikeFrame":
                board = board_index[event.record["board_id"]]
                times[board, seq] = time.time()
                due_times[board, seq] = due
                frames += 1
        unflushed = publisher.flush(60.0)
    finally:
        publisher.close(timeout_s=0.0)
    if unflushed:
        raise RuntimeError(f"{unflushed} events still spooled after the final flush")
    return PublishLog(
        times=times,
        due=due_times,
        measured_from=start_wall + warmup_s,
        finished_at=time.time(),
        frames=frames,
        events=events,
    )


# ---------------------------------------------------------------------------------------------
# Visibility


def visible_times(
    settings: Settings, log: harness.DeltaLog, config: SimulationConfig
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Return board index, seq and visible time of every row of ``bronze/spike_frames``."""
    table = DeltaTable(str(Path(settings.lake_uri) / SPIKE_FRAMES))
    rows = table.to_pyarrow_table(columns=["board_pseudonym", "seq", "ingested_at"])

    index_of = _board_indexes(settings, config)
    boards = np.fromiter(
        (index_of[name] for name in rows.column("board_pseudonym").to_pylist()),
        dtype=np.int64,
        count=rows.num_rows,
    )
    seqs = rows.column("seq").to_numpy()
    stamps_us = rows.column("ingested_at").cast(pa.int64()).to_numpy()

    # Each non-empty commit has one ingested_at stamp, taken before its commit file appeared.
    commits = [commit for commit in log.commits if commit.rows]
    visible_at = np.array([commit.visible_at for commit in commits])
    distinct = np.unique(stamps_us)
    if distinct.size != len(commits):
        raise RuntimeError(
            f"{SPIKE_FRAMES} has {distinct.size} distinct ingested_at stamps but "
            f"{len(commits)} commits with rows; expected one stamp per commit"
        )
    position = np.searchsorted(visible_at, stamps_us / 1e6, side="left")
    if np.any(position >= len(commits)):
        raise RuntimeError(
            f"a row of {SPIKE_FRAMES} has an ingested_at stamp later than every commit file; "
            "expected the stamp before its commit, so check that the clock did not step"
        )
    return boards, seqs, visible_at[position]


def anon_times(
    settings: Settings, config: SimulationConfig
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Return board index, seq and producer timestamp of every message of ``anon.spikes``.

    The ingest worker's producer stamps each message when it sends it (CreateTime, in ms), so
    the stamp marks the end of the ingest stage for that frame.
    """
    topic = settings.topic("anon.spikes")
    index_of = _board_indexes(settings, config)
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap,
            "group.id": f"{settings.kafka.topic_prefix}freshness-reader",
            "enable.auto.commit": False,
            "logger": logging.getLogger(f"{__name__}.librdkafka"),
        }
    )
    boards: list[int] = []
    seqs: list[int] = []
    stamps_ms: list[int] = []
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        }
        remaining = sum(ends.values())
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        deadline = time.monotonic() + READ_TIMEOUT_S
        while remaining > 0:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"reading {topic} back timed out after {READ_TIMEOUT_S:.0f} s with "
                    f"{remaining} of {sum(ends.values())} messages left"
                )
            for message in consumer.consume(num_messages=10_000, timeout=5.0):
                if message.error() is not None:
                    continue
                remaining -= 1
                record = codec.decode(message.value()).record
                boards.append(index_of[record["board_pseudonym"]])
                seqs.append(record["seq"])
                stamps_ms.append(message.timestamp()[1])
    finally:
        consumer.close()
    return np.asarray(boards), np.asarray(seqs), np.asarray(stamps_ms) / 1000.0


def _board_indexes(settings: Settings, config: SimulationConfig) -> dict[str, int]:
    # The benchmark owns the private stack's key, so it can compute the board pseudonyms.
    key, key_id = resolve_key(settings)
    pseudonymizer = Pseudonymizer(key, key_id)
    return {
        pseudonymizer.board(f"{config.board_prefix}-{i:04d}"): i for i in range(config.n_boards)
    }


def latency_summary(values: npt.NDArray[np.float64], expected: int) -> dict[str, Any]:
    """Return percentiles in seconds, counting frames not visible as infinitely late.

    `expected` is the number of frames measured. A value that is not finite (a frame that
    cannot be matched) counts as not visible.
    """
    values = values[np.isfinite(values)]
    missing = expected - values.size
    padded = np.concatenate([np.sort(values), np.full(max(0, missing), np.inf)])
    summary: dict[str, Any] = {"frames": int(expected), "not_visible": int(max(0, missing))}
    for percent in PERCENTILES:
        value = np.percentile(padded, percent, method="inverted_cdf") if padded.size else np.inf
        summary[f"p{percent}_s"] = None if np.isinf(value) else round(float(value), 3)
    summary["max_visible_s"] = round(float(values.max()), 3) if values.size else None
    summary["mean_s"] = round(float(values.mean()), 3) if values.size else None
    return summary


# ---------------------------------------------------------------------------------------------
# One load


def run_load(
    stack_settings: Settings, boards: int, arguments: argparse.Namespace
) -> dict[str, Any]:
    """Run the processors and a paced publisher of `boards` boards; return the latencies."""
    settings = harness.run_settings(stack_settings, f"fresh-b{boards}")
    harness.provision_topics(settings)
    start_time = datetime.now(UTC) + timedelta(seconds=15)  # after the processors start
    config = SimulationConfig(
        n_boards=boards,
        n_channels=arguments.channels,
        frame_rate_hz=RATE_HZ,
        start_time=start_time.replace(microsecond=0),
    )
    children = harness.Children(settings.data_dir / "logs" / settings.kafka.topic_prefix)
    environment = harness.child_environment(settings, arguments.processor_env)
    work_dir = settings.data_dir / f"work-fresh-b{boards}"
    work_dir.mkdir(parents=True, exist_ok=True)
    bronze = harness.DeltaLog(Path(settings.lake_uri) / SPIKE_FRAMES)
    broker_pid = harness.broker_pid(settings)
    broker_cpu_before = harness.process_cpu_seconds(broker_pid)
    cpu_before = time.process_time()
    machine = harness.MachineCpu()
    try:
        for index in range(arguments.workers):
            children.start(
                f"ingest-{index + 1}", ["-m", "streams.runner", "ingest"], environment, work_dir
            )
        children.start("sink", ["-m", "streams.runner", "sink"], environment, work_dir)
        published = publish_paced(
            settings, config, warmup_s=arguments.warmup_s, duration_s=arguments.duration_s
        )
        publisher_cpu_s = time.process_time() - cpu_before
        backlog = _drain(children, bronze, published, arguments.drain_timeout_s)
        cpu = children.cpu_seconds()
        broker_cpu = _difference(harness.process_cpu_seconds(broker_pid), broker_cpu_before)
        own_cpu = [*cpu.values(), broker_cpu, time.process_time() - cpu_before]
        machine_cpu = machine.snapshot(
            None if any(part is None for part in own_cpu) else sum(own_cpu)  # type: ignore[misc]
        )
    finally:
        outcomes = children.stop()
    bronze.poll()

    result = {
        "boards": boards,
        "offered_frames_per_s": round(boards * RATE_HZ),
        "published_frames": published.frames,
        "published_frames_per_s": round(
            published.frames / (published.finished_at - config.first_frame_time.timestamp())
        ),
        "backlog_at_publish_end_rows": backlog["at_publish_end"],
        "drain_s": backlog["drain_s"],
        **measure_latencies(settings, bronze, config, published),
        "delta_commits": len(bronze.commits),
        "cpu_s": {
            **{name: _round(value) for name, value in cpu.items()},
            "publisher (this process)": round(publisher_cpu_s, 1),
            "broker": _round(broker_cpu),
        },
        "machine_cpu": machine_cpu,
        "children": outcomes,
    }
    logger.info(
        "%d boards (%d frames/s): latency p50 %s s, p99 %s s",
        boards,
        boards * RATE_HZ,
        result["latency_from_publish"]["p50_s"],
        result["latency_from_publish"]["p99_s"],
    )
    return result


def measure_latencies(
    settings: Settings, bronze: harness.DeltaLog, config: SimulationConfig, published: PublishLog
) -> dict[str, Any]:
    """Match every row and anon message to its publish time; return the latency figures."""
    board_rows, seq_rows, visible = visible_times(settings, bronze, config)
    anon_boards, anon_seqs, anon_stamps = anon_times(settings, config)
    anon_at = np.full_like(published.times, np.nan)  # (boards, sequence numbers)
    anon_at[anon_boards, anon_seqs] = anon_stamps

    published_at = published.times[board_rows, seq_rows]
    measured = published_at >= published.measured_from
    anon_published_at = published.times[anon_boards, anon_seqs]
    anon_measured = anon_published_at >= published.measured_from
    expected = int(np.count_nonzero(published.times >= published.measured_from))
    lags = (published.times - published.due)[np.isfinite(published.times)]
    return {
        "rows_visible": int(visible.size),
        "latency_from_publish": latency_summary((visible - published_at)[measured], expected),
        "ingest_stage_latency": latency_summary(
            (anon_stamps - anon_published_at)[anon_measured], expected
        ),
        "sink_stage_latency": latency_summary(
            (visible - anon_at[board_rows, seq_rows])[measured], expected
        ),
        "latency_from_event_time": latency_summary(
            (visible - published.due[board_rows, seq_rows])[measured], expected
        ),
        "publisher_lag_s": {
            f"p{percent}": round(float(np.percentile(lags, percent)), 4) for percent in PERCENTILES
        }
        | {"max": round(float(lags.max()), 4)},
    }


def _drain(
    children: harness.Children,
    bronze: harness.DeltaLog,
    published: PublishLog,
    timeout_s: float,
) -> dict[str, Any]:
    bronze.poll()
    at_publish_end = published.frames - bronze.rows
    deadline = time.monotonic() + timeout_s
    while bronze.rows < published.frames and time.monotonic() < deadline:
        children.check_running()
        time.sleep(POLL_INTERVAL_S)
        bronze.poll()
    drained = bronze.rows >= published.frames
    return {
        "at_publish_end": int(at_publish_end),
        "drain_s": round(time.time() - published.finished_at, 1) if drained else None,
    }


def _difference(after: float | None, before: float | None) -> float | None:
    return after - before if after is not None and before is not None else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


# ---------------------------------------------------------------------------------------------
# Main


def main() -> None:
    """Run each load on one private broker and record the results."""
    arguments = parse_arguments()
    harness.configure_logging(arguments.verbose)
    harness.raise_on_sigterm()
    start = harness.RunStart.now()
    loads = []
    with harness.private_stack(NAME) as stack_settings:
        for boards in arguments.boards:
            logger.info("load: %d boards x %.0f Hz", boards, RATE_HZ)
            loads.append(run_load(stack_settings, boards, arguments))

    figures = {
        "parameters": {
            "boards": arguments.boards,
            "rate_hz": RATE_HZ,
            "channels": arguments.channels,
            "duration_s": arguments.duration_s,
            "warmup_s": arguments.warmup_s,
            "drain_timeout_s": arguments.drain_timeout_s,
            "ingest_workers": arguments.workers,
            "processor_env": arguments.processor_env,
        },
        "method": (
            "publish time: wall clock when BoardPublisher.publish returned; visible time: "
            "modification time of the Delta commit file that added the row (matched through "
            "the batch's ingested_at stamp)"
        ),
        "loads": loads,
    }
    parts = []
    for load in loads:
        latency = load["latency_from_publish"]
        parts.append(
            f"{load['boards']} boards, {load['published_frames_per_s']:,} frames/s published "
            f"(offered {load['offered_frames_per_s']:,}): p50 {_seconds(latency['p50_s'])}, "
            f"p99 {_seconds(latency['p99_s'])}, {latency['not_visible']:,} of "
            f"{latency['frames']:,} not visible after the drain"
        )
    summary = f"{arguments.duration_s:.0f} s measured per load: " + "; ".join(parts)
    harness.record_result(NAME, start, figures=figures, summary=summary)
    print(summary)


def _seconds(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.2f} s"


if __name__ == "__main__":
    main()
