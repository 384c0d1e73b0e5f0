"""Benchmark the board publisher: spike frames per second into a private broker.

Three measurements over the same synthetic events (1,000 boards at 20 Hz, 96 channels by
default, so 20,000 spike frames per simulated second):

1. The simulator alone generates the events, with no encoding and no Kafka.
2. The simulator runs with Avro single-object encoding of every event, as the publisher
   encodes it.
3. `boards.commands.simulate_load` publishes as fast as possible: one gateway
   `BoardPublisher` encodes, spools and produces every event, and the figure includes its
   final flush.

The difference between 1 and 3 is the publisher's share. The broker runs on the same machine
and takes part of its cores, so its CPU seconds during step 3 are in the result.

Run from the repository root (about 75 s with the defaults on the 2-core development
machine)::

    .venv/bin/python bench/publish_throughput.py
    .venv/bin/python bench/publish_throughput.py --boards 100 --duration-s 5
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from typing import Any

import harness

from bcratos.config import Settings
from boards.commands import simulate_load
from boards.simulate import Simulation, SimulationConfig
from schemas import codec

logger = logging.getLogger(__name__)

NAME = "publish_throughput"


@dataclass(frozen=True)
class Rate:
    """Events and spike frames handled in a span of wall time."""

    frames: int
    events: int
    elapsed_s: float

    @property
    def frames_per_s(self) -> float:
        """Spike frames per second of wall time."""
        return self.frames / self.elapsed_s

    def as_dict(self) -> dict[str, Any]:
        """Return the rate as plain values for the JSON result."""
        return {
            "frames": self.frames,
            "events": self.events,
            "elapsed_s": round(self.elapsed_s, 3),
            "frames_per_s": round(self.frames_per_s),
            "events_per_s": round(self.events / self.elapsed_s),
            "us_per_frame": round(1e6 * self.elapsed_s / self.frames, 2),
        }


def parse_arguments() -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--boards", type=int, default=1000, help="simulated boards")
    parser.add_argument("--channels", type=int, default=96, help="channels per spike frame")
    parser.add_argument(
        "--rate-hz", type=float, default=20.0, help="spike frames per second and board"
    )
    parser.add_argument(
        "--duration-s",
        type=float,
        default=30.0,
        help="simulated seconds to publish; frames = boards x rate x duration",
    )
    parser.add_argument("--seed", type=int, default=0, help="simulator seed")
    parser.add_argument("--verbose", action="store_true", help="log library messages at INFO")
    return parser.parse_args()


def simulation_config(arguments: argparse.Namespace) -> SimulationConfig:
    """Return the simulator configuration that `simulate_load` builds from the same options."""
    return SimulationConfig(
        n_boards=arguments.boards,
        n_channels=arguments.channels,
        frame_rate_hz=arguments.rate_hz,
        seed=arguments.seed,
    )


def frames_per_board(arguments: argparse.Namespace) -> int:
    """Return the frames per board that `simulate_load` publishes for the duration."""
    return max(1, round(arguments.duration_s * arguments.rate_hz))


def measure_simulator(
    config: SimulationConfig, n_frames: int, *, encode: bool
) -> tuple[Rate, dict[str, Any]]:
    """Generate every event, and Avro-encode each one when `encode` is set."""
    frames = events = 0
    machine = harness.MachineCpu()
    own_cpu_before = time.process_time()
    started = time.perf_counter()
    for event in Simulation(config, n_frames=n_frames).events():
        if encode:
            # The publisher adds the board's sequence number before encoding.
            codec.encode(event.record_name, {**event.record, "seq": events})
        events += 1
        frames += event.record_name == "SpikeFrame"
    rate = Rate(frames, events, time.perf_counter() - started)
    return rate, {"machine_cpu": machine.snapshot(time.process_time() - own_cpu_before)}


def measure_publisher(
    settings: Settings, arguments: argparse.Namespace
) -> tuple[Rate, dict[str, Any]]:
    """Publish with `simulate_load` as fast as possible, then check that every frame arrived."""
    broker_pid = harness.broker_pid(settings)
    broker_cpu_before = harness.process_cpu_seconds(broker_pid)
    own_cpu_before = time.process_time()
    machine = harness.MachineCpu()
    result = simulate_load(
        settings,
        boards=arguments.boards,
        rate_hz=arguments.rate_hz,
        duration_s=arguments.duration_s,
        channels=arguments.channels,
        seed=arguments.seed,
    )
    own_cpu_s = time.process_time() - own_cpu_before
    broker_cpu_after = harness.process_cpu_seconds(broker_pid)
    broker_cpu_s = (
        broker_cpu_after - broker_cpu_before
        if broker_cpu_after is not None and broker_cpu_before is not None
        else None
    )
    machine_cpu = machine.snapshot(own_cpu_s + broker_cpu_s if broker_cpu_s is not None else None)

    sizes = harness.TopicSizes(settings.kafka.bootstrap)
    try:
        in_topic = sizes.messages(settings.topic("raw.spikes"))
    finally:
        sizes.close()
    if result.unflushed or in_topic != result.frames:
        raise RuntimeError(
            f"publisher benchmark is invalid: {result.frames} spike frames published, "
            f"{in_topic} in {settings.topic('raw.spikes')}, {result.unflushed} events still "
            "spooled after the final flush; expected every frame in the topic"
        )

    details = {
        "unflushed": result.unflushed,
        "messages_in_raw_spikes": in_topic,
        "publisher_cpu_s": round(own_cpu_s, 2),
        "broker_cpu_s": round(broker_cpu_s, 2) if broker_cpu_s is not None else None,
        "machine_cpu": machine_cpu,
    }
    return Rate(result.frames, result.events, result.elapsed_s), details


def main() -> None:
    """Run the three measurements and record them."""
    arguments = parse_arguments()
    harness.configure_logging(arguments.verbose)
    harness.raise_on_sigterm()
    start = harness.RunStart.now()
    config = simulation_config(arguments)
    n_frames = frames_per_board(arguments)

    logger.info("simulator alone: %d boards x %d frames", arguments.boards, n_frames)
    simulator, simulator_details = measure_simulator(config, n_frames, encode=False)
    logger.info("simulator alone: %.0f frames/s", simulator.frames_per_s)
    encoded, encoded_details = measure_simulator(config, n_frames, encode=True)
    logger.info("simulator and Avro encoding: %.0f frames/s", encoded.frames_per_s)

    with harness.private_stack(NAME) as settings:
        publisher, details = measure_publisher(settings, arguments)
    logger.info("publisher: %.0f frames/s including the final flush", publisher.frames_per_s)

    publisher_share = 1 - simulator.elapsed_s / publisher.elapsed_s
    figures = {
        "parameters": {
            "boards": arguments.boards,
            "channels": arguments.channels,
            "rate_hz": arguments.rate_hz,
            "duration_s": arguments.duration_s,
            "frames_per_board": n_frames,
            "seed": arguments.seed,
        },
        "simulator_alone": {**simulator.as_dict(), **simulator_details},
        "simulator_and_encoding": {**encoded.as_dict(), **encoded_details},
        "publisher": {**publisher.as_dict(), **details},
        "publisher_share_of_wall_time": round(publisher_share, 3),
    }
    summary = (
        f"publish {publisher.frames_per_s:,.0f} frames/s with the final flush "
        f"({publisher.frames:,} frames, {arguments.boards} boards × {arguments.channels} ch); "
        f"simulator alone {simulator.frames_per_s:,.0f}, simulator + Avro encoding "
        f"{encoded.frames_per_s:,.0f} frames/s; publisher share of wall time "
        f"{publisher_share:.0%}"
    )
    harness.record_result(NAME, start, figures=figures, summary=summary)
    print(summary)


if __name__ == "__main__":
    main()
