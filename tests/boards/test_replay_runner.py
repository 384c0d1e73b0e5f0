"""Replay to a sink: ordering across recordings, pacing by event time, and the Avro contract."""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from boards.replay import BoardRoutingSink, MemorySink, Recording, open_recording, replay
from boards.simulate import Simulation, SimulationConfig
from schemas.codec import decode, encode

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("BCRATOS_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))

BRIEF_SOURCES = {
    "limblab": DATA / "limblab-spike-wf" / "Spike_07-19-12_WF_001.mat",
    "jango": DATA / "limblab-jango" / "Jango_20141203_default_offline_data.mat",
    "brochier": DATA / "brochier-grasp" / "Dataset2_old_b121bf7.mat",
    "icub": DATA / "icub-grasp" / "iCubGraspDataset" / "lotion_4.txt",
    "nev": DATA / "blackrock" / "Han_20170516.nev",
}


@dataclass
class SlowFlushSink:
    """Sink whose flush leaves ``left`` records queued, like a producer that timed out."""

    left: int
    published: list[str] = field(default_factory=list)
    flush_timeouts: list[float] = field(default_factory=list)

    def publish(self, record_name: str, record: dict[str, Any]) -> None:
        self.published.append(record_name)

    def flush(self, timeout_s: float) -> int:
        self.flush_timeouts.append(timeout_s)
        return self.left


@pytest.fixture(scope="module")
def recordings() -> dict[str, Recording]:
    return {
        name: open_recording(path, board_id=f"board-{name}", subject_id=f"subject-{name}")
        for name, path in BRIEF_SOURCES.items()
    }


def test_replay_publishes_every_event(recordings: dict[str, Recording]) -> None:
    sink = MemorySink()
    recording = recordings["brochier"]
    result = replay([recording], sink, speed=None)

    assert result.published == {"SpikeFrame": 4_020, "BehaviorEvent": 402}
    assert result.total == len(sink.records) == 4_422
    assert result.reports == [recording.report]
    assert result.unflushed == 0


def test_replay_interleaves_recordings_by_time() -> None:
    start = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
    first = open_recording(
        BRIEF_SOURCES["nev"], board_id="board-a", subject_id="subject-a", start_time=start
    )
    second = open_recording(
        BRIEF_SOURCES["icub"], board_id="board-b", subject_id="subject-b", start_time=start
    )
    sink = MemorySink()
    replay([first, second], sink, speed=None)
    times = [record["event_time"] for _, record in sink.records]
    boards = [record["board_id"] for _, record in sink.records[:5]]

    assert times == sorted(times)
    assert set(boards) == {"board-a", "board-b"}


def test_replay_at_speed_ten_takes_a_tenth() -> None:
    # One board, 41 frames at 20 Hz: the last frame is 2.0 s after the first.
    simulation = Simulation(SimulationConfig(n_boards=1, n_channels=8, seed=1), n_frames=41)
    started = time.monotonic()
    result = replay([simulation], MemorySink(), speed=10.0)
    elapsed_s = time.monotonic() - started

    assert result.published["SpikeFrame"] == 41
    assert elapsed_s >= 0.19
    assert elapsed_s < 0.6


def test_replay_without_speed_does_not_wait() -> None:
    simulation = Simulation(SimulationConfig(n_boards=1, n_channels=8, seed=1), n_frames=200)
    result = replay([simulation], MemorySink(), speed=None)

    assert result.published["SpikeFrame"] == 200  # 10 s of event time
    assert result.elapsed_s < 1.0


@pytest.mark.parametrize("speed", [0.0, -1.0, float("nan"), float("inf")])
def test_replay_rejects_invalid_speed(speed: float) -> None:
    with pytest.raises(ValueError, match="speed must be a positive number or None"):
        replay([], MemorySink(), speed=speed)


def test_replay_reports_unflushed_records(caplog: pytest.LogCaptureFixture) -> None:
    sink = SlowFlushSink(left=3)
    simulation = Simulation(SimulationConfig(n_boards=2, n_channels=4), n_frames=5)
    result = replay([simulation], sink, speed=None, flush_timeout_s=2.5)

    assert result.unflushed == 3
    assert sink.flush_timeouts == [2.5]
    assert "3 records still queued" in caplog.text


def test_routing_sink_sends_each_board_to_its_sink() -> None:
    sinks = {f"sim-board-{index:04d}": MemorySink() for index in range(3)}
    simulation = Simulation(SimulationConfig(n_boards=3, n_channels=4, seed=2), n_frames=10)
    result = replay([simulation], BoardRoutingSink(sinks), speed=None)

    assert result.unflushed == 0
    for board_id, sink in sinks.items():
        assert len(sink.records) >= 10
        assert {record["board_id"] for _, record in sink.records} == {board_id}


def test_routing_sink_rejects_unknown_board() -> None:
    sink = BoardRoutingSink({"board-a": MemorySink()})

    with pytest.raises(KeyError, match="no sink for board 'board-b' of a SpikeFrame"):
        sink.publish("SpikeFrame", {"board_id": "board-b"})


def test_replay_logs_no_subject_id(
    recordings: dict[str, Recording], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    open_recording(BRIEF_SOURCES["icub"], board_id="board-x", subject_id="subject-secret-7")
    replay([recordings["nev"]], MemorySink(), speed=None)

    assert "subject-secret-7" not in caplog.text
    assert "subject-nev" not in caplog.text


@pytest.mark.parametrize("name", sorted(BRIEF_SOURCES))
def test_records_encode_with_avro_schemas(recordings: dict[str, Recording], name: str) -> None:
    samples: dict[str, dict[str, Any]] = {}
    for event in recordings[name].events():
        samples.setdefault(event.record_name, event.record)
        if len(samples) == 3:
            break

    assert samples
    for sequence, (record_name, record) in enumerate(sorted(samples.items())):
        message = decode(encode(record_name, {**record, "seq": sequence}))

        assert message.name == record_name
        assert message.record["event_time"] == record["event_time"]
        assert message.record["metadata"] == record["metadata"]


def test_simulated_records_encode_with_avro_schemas() -> None:
    events = list(Simulation(SimulationConfig(n_boards=2, seed=5), n_frames=3).events())
    names = Counter(event.record_name for event in events)

    assert names == {"SpikeFrame": 6, "BehaviorEvent": 2}
    for sequence, event in enumerate(events):
        message = decode(encode(event.record_name, {**event.record, "seq": sequence}))

        assert message.record["board_id"] == event.record["board_id"]
