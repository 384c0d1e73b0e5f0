"""Synthetic boards: reproducibility, class tuning, drift and record layout."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from boards.replay import BoardEvent
from boards.simulate import SIMULATION_EPOCH, Simulation, SimulationConfig, rate_table_hz, simulate


def _events(config: SimulationConfig, n_frames: int) -> list[BoardEvent]:
    return list(simulate(config, n_frames=n_frames))


def _frames(events: list[BoardEvent], board_id: str | None = None) -> list[dict[str, Any]]:
    return [
        event.record
        for event in events
        if event.record_name == "SpikeFrame" and board_id in (None, event.record["board_id"])
    ]


def _counts(record: dict[str, Any]) -> np.ndarray:
    counts = np.frombuffer(record["counts"], dtype=np.dtype(str(record["dtype"])).newbyteorder("<"))
    return counts.reshape(int(record["n_bins"]), int(record["n_channels"]))


def _fingerprint(events: list[BoardEvent]) -> list[tuple[object, ...]]:
    return [
        (event.record_name, event.event_time, event.record.get("counts"), event.record.get("label"))
        for event in events
    ]


def test_same_seed_gives_same_events() -> None:
    config = SimulationConfig(n_boards=3, n_channels=16, seed=11)
    simulation = Simulation(config, n_frames=700)  # more than one block of frames

    assert _fingerprint(list(simulation.events())) == _fingerprint(list(simulation.events()))
    assert _fingerprint(_events(config, 700)) == _fingerprint(
        _events(SimulationConfig(n_boards=3, n_channels=16, seed=11), 700)
    )


def test_different_seeds_give_different_events() -> None:
    first = _events(SimulationConfig(n_boards=2, n_channels=16, seed=1), 50)
    second = _events(SimulationConfig(n_boards=2, n_channels=16, seed=2), 50)

    assert [record["counts"] for record in _frames(first)] != [
        record["counts"] for record in _frames(second)
    ]
    assert not np.allclose(
        rate_table_hz(SimulationConfig(seed=1), 0), rate_table_hz(SimulationConfig(seed=2), 0)
    )


def test_frames_per_board_are_evenly_spaced() -> None:
    config = SimulationConfig(n_boards=4, n_channels=8, seed=3)
    events = _events(config, 30)
    board_times = [record["event_time"] for record in _frames(events, "sim-board-0002")]
    times = [event.event_time for event in events]

    assert len(_frames(events)) == 4 * 30
    assert times == sorted(times)
    assert board_times[0] == SIMULATION_EPOCH + timedelta(microseconds=2 * 50_000 // 4)
    assert {
        later - earlier for earlier, later in zip(board_times, board_times[1:], strict=False)
    } == {timedelta(milliseconds=50)}


def test_frame_record_layout() -> None:
    config = SimulationConfig(n_boards=1, n_channels=32, frame_rate_hz=10, bins_per_frame=2)
    record = _frames(_events(config, 3))[0]

    assert record["bin_ms"] == 50
    assert record["n_bins"] == 2
    assert record["n_channels"] == 32
    assert record["dtype"] == "uint8"
    assert len(record["counts"]) == 2 * 32
    assert record["subject_id"] == "sim-subject-0000"
    assert "seq" not in record
    assert "schema_version" not in record


def test_class_changes_are_announced_before_their_frame() -> None:
    config = SimulationConfig(n_boards=2, n_channels=8, seed=4, mean_class_duration_s=0.5)
    events = _events(config, 400)
    board = [event for event in events if event.record["board_id"] == "sim-board-0001"]
    labels = [event for event in board if event.record_name == "BehaviorEvent"]

    assert board[0].record_name == "BehaviorEvent"
    assert len(labels) > 10
    assert [event.record["trial_id"] for event in labels] == list(range(1, len(labels) + 1))
    for label in labels:
        position = board.index(label)
        assert board[position + 1].record_name == "SpikeFrame"
        assert board[position + 1].event_time == label.event_time
    for earlier, later in zip(labels, labels[1:], strict=False):
        assert earlier.record["label"] != later.record["label"]


def test_counts_follow_class_rates() -> None:
    config = SimulationConfig(n_boards=1, n_channels=24, seed=9, mean_class_duration_s=0.5)
    events = _events(config, 6_000)
    expected = rate_table_hz(config, 0) * 0.05  # (classes, channels) counts per bin
    by_class: dict[str, list[np.ndarray]] = {label: [] for label in config.class_labels}
    label = ""
    for event in events:
        if event.record_name == "BehaviorEvent":
            label = str(event.record["label"])
        else:
            by_class[label].append(_counts(event.record)[0])

    for index, name in enumerate(config.class_labels):
        observed = np.mean(by_class[name], axis=0)
        assert len(by_class[name]) > 500
        np.testing.assert_allclose(observed, expected[index], rtol=0.25, atol=0.05)


def test_rate_table_class_tuning() -> None:
    rates = rate_table_hz(SimulationConfig(n_channels=64, seed=2), 0)

    assert rates.shape == (4, 64)
    assert np.median(rates[0]) == pytest.approx(8.0, rel=0.35)
    assert not np.allclose(rates[0], rates[1])


def test_tuning_drifts_slowly_across_days() -> None:
    day = {d: rate_table_hz(SimulationConfig(seed=5, day=d), 0) for d in (0, 1, 30)}
    change_1 = np.mean(np.abs(np.log(day[1]) - np.log(day[0])))
    change_30 = np.mean(np.abs(np.log(day[30]) - np.log(day[0])))

    assert 0 < change_1 < 0.2
    assert change_30 > 2 * change_1
    np.testing.assert_array_equal(day[30], rate_table_hz(SimulationConfig(seed=5, day=30), 0))


def test_day_sets_start_and_session() -> None:
    events = _events(SimulationConfig(n_boards=1, n_channels=4, day=3, seed=8), 1)

    assert events[0].event_time == datetime(2024, 1, 4, tzinfo=UTC)
    assert events[0].record["session_id"] == "sim-seed8-day0003-board0000"
    assert events[0].record["metadata"]["simulated_day"] == "3"


def test_board_count_and_labels() -> None:
    events = _events(SimulationConfig(n_boards=5, n_channels=4, seed=6), 10)
    boards = Counter(record["board_id"] for record in _frames(events))

    assert boards == {f"sim-board-{index:04d}": 10 for index in range(5)}
    assert {event.record["kind"] for event in events if event.record_name == "BehaviorEvent"} == {
        "class_label"
    }


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"frame_rate_hz": 30.0}, "whole-millisecond bins"),
        ({"n_boards": 0}, "n_boards must be at least 1, got 0"),
        ({"class_labels": ("rest",)}, "at least 2 classes"),
        ({"baseline_rate_hz": 0.0}, "baseline_rate_hz must be a positive number, got 0.0"),
        ({"start_time": datetime(2024, 1, 1)}, "start_time must be timezone-aware"),
    ],
)
def test_invalid_config_raises(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SimulationConfig(**changes)
