"""Profile the stream stages with cProfile: the pipeline alone, the sink loop, a faust worker.

1. Ingest pipeline: `IngestPipeline.process` (decode, validate, anonymize, encode) over a list
   of raw messages that the simulator and the Avro codec built in memory, exactly as a board
   publisher encodes them. No Kafka and no faust.
2. Sink loop: `LakeSink.poll_once` over the anonymized messages of step 1, served by an
   in-memory stand-in of the Kafka consumer, so the real loop runs: decode, repeat check,
   bronze buffer, windowing, silver steps and Delta commits into a temporary lake. The sink's
   producer (used only for dead letters) connects to a private broker that this script starts.
3. Faust worker: the same number of frames published into the private broker, then one
   ``python -m cProfile -m streams.runner ingest`` process until ``anon.spikes`` contains
   them all. This shows what faust, aiokafka and asyncio add to step 1.

Steps 1 and 2 run twice: once plain for their rate and CPU time, once under cProfile. The
sink's CPU time includes delta-rs threads, so it may exceed its wall time. cProfile slows
Python code down, so its figures are shares of the profiled time, not costs without it. Its clock is
wall time, so a system call that wakes the broker on this machine includes the time the
broker runs before the call returns.

Run from the repository root (about three minutes with the defaults on a 2-core machine)::

    .venv/bin/python bench/profile_stages.py
    .venv/bin/python bench/profile_stages.py --frames-per-board 20 --top 15 --no-worker
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import pstats
import tempfile
import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness
from confluent_kafka import TopicPartition

from bcratos.config import PROJECT_ROOT, Settings
from boards.commands import simulate_load
from boards.publisher import RAW_TOPICS
from boards.simulate import Simulation, SimulationConfig
from schemas import codec
from streams.lake import SPIKE_FRAMES
from streams.processor import build_pipeline
from streams.sink import LakeSink

logger = logging.getLogger(__name__)

NAME = "profile_stages"
RAW_PARTITIONS = {"raw.spikes": 8, "raw.behavior": 4, "raw.eskin": 4, "raw.decoder": 4}
ANON_PARTITIONS = {"anon.spikes": 8, "anon.behavior": 4, "anon.eskin": 4, "anon.decoder": 4}
WORKER_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class FakeMessage:
    """The parts of a confluent-kafka message that the sink reads."""

    _topic: str
    _partition: int
    _offset: int
    _value: bytes

    def error(self) -> None:
        """Return no error."""
        return None

    def topic(self) -> str:
        """Return the topic name."""
        return self._topic

    def partition(self) -> int:
        """Return the partition."""
        return self._partition

    def offset(self) -> int:
        """Return the offset."""
        return self._offset

    def value(self) -> bytes:
        """Return the message value."""
        return self._value


class FakeConsumer:
    """An in-memory stand-in of the sink's consumer that serves a fixed list of messages."""

    def __init__(self, messages: Sequence[FakeMessage]) -> None:
        self._messages = messages
        self._position = 0

    @property
    def exhausted(self) -> bool:
        """True when every message was served."""
        return self._position >= len(self._messages)

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[FakeMessage]:
        """Return the next `num_messages` messages without waiting."""
        batch = self._messages[self._position : self._position + num_messages]
        self._position += len(batch)
        return list(batch)

    def incremental_assign(self, partitions: list[TopicPartition]) -> None:
        """Accept an assignment."""

    def commit(self, offsets: list[TopicPartition], asynchronous: bool = True) -> None:
        """Accept group offsets."""

    def close(self) -> None:
        """Close nothing."""


def parse_arguments() -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--boards", type=int, default=1000, help="simulated boards")
    parser.add_argument("--channels", type=int, default=96, help="channels per spike frame")
    parser.add_argument(
        "--frames-per-board",
        type=int,
        default=60,
        help="spike frames per board (20 per simulated second)",
    )
    parser.add_argument("--top", type=int, default=20, help="functions listed per stage")
    parser.add_argument(
        "--worker",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also profile a faust ingest worker process over the same number of frames",
    )
    parser.add_argument("--verbose", action="store_true", help="log library messages at INFO")
    return parser.parse_args()


# ---------------------------------------------------------------------------------------------
# Inputs


def raw_messages(
    settings: Settings, config: SimulationConfig, n_frames: int
) -> list[tuple[str, int, int, bytes]]:
    """Return (topic, partition, offset, value) of every simulated event, encoded as boards do."""
    sequences: dict[str, int] = defaultdict(int)
    offsets: dict[tuple[str, int], int] = defaultdict(int)
    messages = []
    for event in Simulation(config, n_frames=n_frames).events():
        board_id = event.record["board_id"]
        seq = sequences[board_id]
        sequences[board_id] += 1
        value = codec.encode(event.record_name, {**event.record, "seq": seq})
        short = RAW_TOPICS[event.record_name]
        partition = zlib.crc32(board_id.encode()) % RAW_PARTITIONS[short]
        topic = settings.topic(short)
        offset = offsets[(topic, partition)]
        offsets[(topic, partition)] += 1
        messages.append((topic, partition, offset, value))
    return messages


def anon_messages(settings: Settings, outputs: Sequence[Any]) -> list[FakeMessage]:
    """Place the ingest stage's output messages on anon partitions by their key."""
    offsets: dict[tuple[str, int], int] = defaultdict(int)
    prefix = settings.kafka.topic_prefix
    messages = []
    for out in outputs:
        short = out.topic.removeprefix(prefix)
        partition = zlib.crc32(out.key) % ANON_PARTITIONS[short]
        offset = offsets[(out.topic, partition)]
        offsets[(out.topic, partition)] += 1
        messages.append(FakeMessage(out.topic, partition, offset, out.value))
    return messages


# ---------------------------------------------------------------------------------------------
# Stages


def run_ingest(settings: Settings, raw: Sequence[tuple[str, int, int, bytes]]) -> list[Any]:
    """Feed every raw message to a new pipeline; return the messages it produced."""
    pipeline = build_pipeline(settings)
    outputs = []
    for topic, partition, offset, value in raw:
        out = pipeline.process(topic, partition, offset, value)
        if out is not None:
            outputs.append(out)
    dead = sum(pipeline.counters.dead_lettered.values())
    if dead:
        raise RuntimeError(
            f"ingest stage dead-lettered {dead} of {len(raw)} messages: "
            f"{dict(pipeline.counters.reasons)}; expected none from the simulator"
        )
    return outputs


def run_sink(settings: Settings, messages: Sequence[FakeMessage]) -> dict[str, Any]:
    """Run the sink's poll loop over `messages` into a new lake; return its counters."""
    sink = LakeSink(settings)
    real_consumer = sink._consumer
    consumer = FakeConsumer(messages)
    sink._consumer = consumer  # type: ignore[assignment]
    try:
        assignment = [
            TopicPartition(settings.topic(short), partition)
            for short, count in ANON_PARTITIONS.items()
            for partition in range(count)
        ]
        sink._on_assign(consumer, assignment)  # type: ignore[arg-type]
        while not consumer.exhausted:
            sink.poll_once(timeout_s=0.0)
        sink.close()  # commits what is buffered
    finally:
        real_consumer.close()
    return sink.snapshot()


@dataclass(frozen=True)
class Timing:
    """Wall and CPU seconds of one call. CPU time counts every thread of this process."""

    wall_s: float
    cpu_s: float


def timed(call: Callable[[], Any]) -> tuple[Any, Timing]:
    """Return the result of `call` and its wall and CPU time."""
    started = time.perf_counter()
    cpu_started = time.process_time()
    result = call()
    return result, Timing(time.perf_counter() - started, time.process_time() - cpu_started)


def profiled(call: Callable[[], Any]) -> tuple[Any, pstats.Stats]:
    """Run `call` under cProfile and return its result and the statistics."""
    profile = cProfile.Profile()
    result = profile.runcall(call)
    return result, pstats.Stats(profile)


def summarize_profile(
    stats: pstats.Stats, top: int, steps: Sequence[str]
) -> dict[str, Any]:
    """Return the profiled total, the `top` functions by own time and the named steps.

    A step is ``path_suffix:function``, such as ``streams/validate.py:check``. Its figure is
    the cumulative time of every function of that name in a file with that path suffix.
    """
    entries = stats.stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in entries.values())
    rows = []
    cumulative = dict.fromkeys(steps, 0.0)
    for (path, line, function), entry in entries.items():
        calls, _, own_s, cumulative_s, _ = entry
        rows.append(
            {
                "function": f"{_short_path(path)}:{line}({function})",
                "calls": calls,
                "own_s": round(own_s, 3),
                "own_share": round(own_s / total, 4) if total else None,
                "cumulative_s": round(cumulative_s, 3),
            }
        )
        for step in steps:
            suffix, name = step.rsplit(":", 1)
            if function == name and path.endswith(suffix):
                cumulative[step] += cumulative_s
    rows.sort(key=lambda row: row["own_s"], reverse=True)
    return {
        "profiled_total_s": round(total, 3),
        "steps_cumulative_s": {
            step: {"s": round(seconds, 3), "share": round(seconds / total, 4) if total else None}
            for step, seconds in cumulative.items()
        },
        "top_by_own_time": rows[:top],
    }


def _short_path(path: str) -> str:
    # Libraries first, because the virtual environment lives inside the project.
    for root in ("/site-packages/", "/lib/python3.11/", str(PROJECT_ROOT) + "/"):
        if root in path:
            return path.split(root, 1)[1]
    return path


INGEST_STEPS = (
    "streams/ingest.py:process",
    "schemas/codec.py:decode",
    "streams/validate.py:check",
    "streams/anonymize.py:anonymize",
    "schemas/codec.py:encode",
    "schemas/codec.py:_check_record",
)
SINK_STEPS = (
    "streams/sink.py:_handle",
    "schemas/codec.py:decode",
    "streams/sink.py:_window",
    "streams/sink.py:commit",
    "streams/lake.py:bronze_table",
    "streams/lake.py:silver_table",
    "streams/lake.py:_check_forward",
    "streams/lake.py:committed_offset",
    "deltalake/writer/writer.py:write_deltalake",
)
WORKER_STEPS = (
    "streams/processor.py:validate_and_anonymize",
    "streams/ingest.py:process",
    "streams/processor.py:produce",
    "faust/transport/consumer.py:_drain_messages",
    "faust/transport/conductor.py:on_message",
)


# ---------------------------------------------------------------------------------------------
# Stage 3: the faust worker


def profile_worker(
    stack_settings: Settings, arguments: argparse.Namespace, top: int
) -> dict[str, Any]:
    """Preload frames, then profile one ingest worker until it has produced all of them.

    The worker runs under ``python -m cProfile``, which writes the profile when the worker
    exits after SIGTERM. It covers the whole process, start-up included.
    """
    settings = harness.run_settings(stack_settings, "worker")
    harness.provision_topics(settings)
    loaded = simulate_load(
        settings,
        boards=arguments.boards,
        rate_hz=20.0,
        duration_s=arguments.frames_per_board / 20.0,
        channels=arguments.channels,
    )
    output = settings.data_dir / "ingest-worker.prof"
    work_dir = settings.data_dir / "work-worker"
    work_dir.mkdir(parents=True, exist_ok=True)
    children = harness.Children(settings.data_dir / "logs" / "worker")
    sizes = harness.TopicSizes(settings.kafka.bootstrap)
    anon_topic = settings.topic("anon.spikes")
    try:
        started = time.monotonic()
        children.start(
            "ingest",
            ["-m", "cProfile", "-o", str(output), "-m", "streams.runner", "ingest"],
            harness.child_environment(settings),
            work_dir,
        )
        deadline = started + WORKER_TIMEOUT_S
        while sizes.messages(anon_topic) < loaded.frames:
            children.check_running()
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"profiled ingest worker did not anonymize {loaded.frames} frames within "
                    f"{WORKER_TIMEOUT_S:.0f} s"
                )
            time.sleep(0.25)
        elapsed_s = time.monotonic() - started
    finally:
        outcomes = children.stop()
        sizes.close()
    return {
        "frames": loaded.frames,
        "events": loaded.events,
        "elapsed_s_under_profile": round(elapsed_s, 1),
        "children": outcomes,
        "profile": summarize_profile(pstats.Stats(str(output)), top, WORKER_STEPS),
    }


# ---------------------------------------------------------------------------------------------
# Main


def main() -> None:
    """Build the inputs, time and profile the stages, and record the results."""
    arguments = parse_arguments()
    harness.configure_logging(arguments.verbose)
    harness.raise_on_sigterm()
    start = harness.RunStart.now()
    config = SimulationConfig(
        n_boards=arguments.boards, n_channels=arguments.channels, frame_rate_hz=20.0
    )

    # The pipeline uses the pseudonymization key file that stack.up creates.
    with harness.private_stack(NAME) as settings:
        raw, build = timed(lambda: raw_messages(settings, config, arguments.frames_per_board))
        frames = sum(1 for topic, *_ in raw if topic.endswith("raw.spikes"))
        logger.info(
            "built %d raw messages (%d spike frames) in %.1f s", len(raw), frames, build.wall_s
        )

        # 1. Ingest pipeline.
        outputs, ingest = timed(lambda: run_ingest(settings, raw))
        logger.info("ingest pipeline: %.0f frames/s", frames / ingest.wall_s)
        _, ingest_stats = profiled(lambda: run_ingest(settings, raw))

        # 2. Sink loop.
        anon = anon_messages(settings, outputs)
        with tempfile.TemporaryDirectory(prefix="bcratos-bench-lake-") as lakes:
            sink_counters, sink = timed(
                lambda: run_sink(_with_lake(settings, Path(lakes) / "plain"), anon)
            )
            logger.info("sink loop: %.0f frames/s", frames / sink.wall_s)
            _, sink_stats = profiled(
                lambda: run_sink(_with_lake(settings, Path(lakes) / "profiled"), anon)
            )

        # 3. Faust worker.
        worker = None
        if arguments.worker:
            worker = profile_worker(settings, arguments, arguments.top)
            logger.info("profiled faust worker in %.0f s", worker["elapsed_s_under_profile"])

    written = sink_counters["written"].get(SPIKE_FRAMES, 0)
    if written != frames:
        raise RuntimeError(
            f"sink wrote {written} rows to {SPIKE_FRAMES} for {frames} spike frames; "
            "expected one row per frame"
        )
    ingest_result = {
        **_rates(ingest, frames, len(raw)),
        "profile": summarize_profile(ingest_stats, arguments.top, INGEST_STEPS),
    }
    sink_result = {
        **_rates(sink, frames, len(anon)),
        "commits": sink_counters["commits"],
        "written": sink_counters["written"],
        "commit_latency_p50_s": sink_counters["commit_latency_p50_s"],
        "commit_latency_max_s": sink_counters["commit_latency_max_s"],
        "profile": summarize_profile(sink_stats, arguments.top, SINK_STEPS),
    }
    figures = {
        "parameters": {
            "boards": arguments.boards,
            "channels": arguments.channels,
            "frames_per_board": arguments.frames_per_board,
            "raw_messages": len(raw),
            "spike_frames": frames,
        },
        "ingest_pipeline": ingest_result,
        "sink_loop": sink_result,
        "faust_worker": worker,
    }
    summary = (
        f"{frames:,} frames, {arguments.boards} boards, one process: ingest pipeline "
        f"{ingest_result['frames_per_s']:,} frames/s, {ingest_result['cpu_us_per_message']:.0f} "
        f"µs CPU/message, top own time {_top_names(ingest_result['profile'])}; sink loop "
        f"{sink_result['frames_per_s']:,} frames/s, {sink_result['cpu_us_per_message']:.0f} "
        f"µs CPU/message ({sink_result['commits']} commits), top own time "
        f"{_top_names(sink_result['profile'])}"
    )
    if worker is not None:
        summary += f"; faust worker top own time {_top_names(worker['profile'])}"
    harness.record_result(NAME, start, figures=figures, summary=summary)
    print(summary)


def _rates(timing: Timing, frames: int, messages: int) -> dict[str, Any]:
    return {
        "elapsed_s": round(timing.wall_s, 3),
        "cpu_s": round(timing.cpu_s, 3),
        "frames_per_s": round(frames / timing.wall_s),
        "us_per_message": round(1e6 * timing.wall_s / messages, 1),
        "cpu_us_per_message": round(1e6 * timing.cpu_s / messages, 1),
    }


def _with_lake(settings: Settings, lake: Path) -> Settings:
    return settings.model_copy(
        update={"lake": settings.lake.model_copy(update={"uri": str(lake)})}
    )


def _top_names(profile: dict[str, Any], count: int = 3) -> str:
    rows = profile["top_by_own_time"][:count]
    return ", ".join(f"{row['function']} {row['own_share']:.0%}" for row in rows)


if __name__ == "__main__":
    main()
