"""Work behind ``bcratos board replay`` and ``bcratos board simulate``, apart from parsing."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bcratos.config import Settings
from boards.decoding import DecodingSink
from boards.publisher import BoardPublisher
from boards.replay import ReplayResult, open_recording, replay
from boards.replay.runner import EventSink
from boards.runtime import DecoderRuntime
from boards.simulate import Simulation, SimulationConfig

logger = logging.getLogger(__name__)


def default_subject_id(path: Path) -> str:
    """Return the subject id a replay uses when none is given: the file name's first word.

    Lab files start with the subject's name (``Spike_07-18-12_WF_001.mat``,
    ``Jango_20141203_...``), which is what a board beside that subject would send.
    """
    match = re.match(r"[A-Za-z0-9]+", path.name)
    return match.group(0) if match else path.stem


def board_state_dir(settings: Settings, name: str) -> Path:
    """Return the folder of a board's spool and sequence numbers under the data directory."""
    return settings.data_dir / "boards" / re.sub(r"[^A-Za-z0-9._-]", "_", name)


def replay_files(
    settings: Settings,
    paths: Sequence[Path],
    *,
    board_id: str,
    subject_id: str | None = None,
    speed: float | None = None,
    bin_ms: int | None = None,
    runtime: DecoderRuntime | None = None,
) -> ReplayResult:
    """Replay recordings as one board publishing to the raw topics; sessions in path order.

    Each file is one session. Without ``subject_id`` each file's first word is its subject.
    With ``runtime``, the board also runs the runtime's active decoder on every step and
    publishes DecoderOutput events (`boards.decoding.DecodingSink`).
    """
    recordings = [
        open_recording(
            path,
            board_id=board_id,
            subject_id=subject_id or default_subject_id(path),
            bin_ms=bin_ms,
        )
        for path in paths
    ]
    publisher = BoardPublisher(
        settings.kafka.bootstrap,
        board_id,
        board_state_dir(settings, board_id),
        topic_prefix=settings.kafka.topic_prefix,
    )
    sink: EventSink = publisher if runtime is None else DecodingSink(publisher, runtime)
    try:
        result = replay(recordings, sink, speed=speed)
    finally:
        publisher.close()
    if isinstance(sink, DecodingSink):
        result.published["DecoderOutput"] += sink.decoded
        for reason, frames in sink.skipped.items():
            logger.info("board %s decoded no step of %d frames: %s", board_id, frames, reason)
    return result


@dataclass(frozen=True)
class SimulationResult:
    """Outcome of a load simulation."""

    frames: int
    events: int
    elapsed_s: float
    unflushed: int

    @property
    def frames_per_s(self) -> float:
        """Spike frames published per second of wall time, flush included."""
        return self.frames / self.elapsed_s if self.elapsed_s > 0 else 0.0


def simulate_load(
    settings: Settings,
    *,
    boards: int,
    rate_hz: float,
    duration_s: float,
    channels: int = 96,
    seed: int = 0,
    speed: float | None = None,
) -> SimulationResult:
    """Publish ``duration_s`` seconds of synthetic frames from ``boards`` boards.

    The boards share one gateway publisher (one producer and one spool), as a rack computer
    serving many boards would. ``speed`` None publishes as fast as possible.
    """
    config = SimulationConfig(
        n_boards=boards, n_channels=channels, frame_rate_hz=rate_hz, seed=seed
    )
    simulation = Simulation(config, n_frames=max(1, round(duration_s * rate_hz)))
    publisher = BoardPublisher(
        settings.kafka.bootstrap,
        None,
        board_state_dir(settings, f"simulator-seed{seed}"),
        topic_prefix=settings.kafka.topic_prefix,
    )
    frames = events = 0
    started = time.monotonic()
    try:
        for event in simulation.events():
            if speed is not None:
                due = started + (event.event_time - config.first_frame_time).total_seconds() / speed
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            publisher.publish(event.record_name, event.record)
            events += 1
            frames += event.record_name == "SpikeFrame"
        unflushed = publisher.flush(60.0)
    finally:
        publisher.close(timeout_s=0.0)
    return SimulationResult(frames, events, time.monotonic() - started, unflushed)
