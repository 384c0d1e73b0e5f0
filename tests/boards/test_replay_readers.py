"""Readers of the real recordings: measured facts of each file, sentinels and reports.

The recordings live outside the repository, in ``../shared/data`` relative to the project root
(override with BCRATOS_SHARED_DATA). Each file is read once per module through a fixture.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import scipy.io

from boards.replay import BoardEvent, Recording, detect_kind, open_recording
from boards.replay.brochier import open_brochier
from boards.replay.events import ReplayOptions
from boards.replay.icub import open_icub
from boards.replay.limblab import UNLABELLED_COLUMNS, columns_from_labels

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("BCRATOS_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))

SPIKE_0718 = DATA / "limblab-spike-wf" / "Spike_07-18-12_WF_001.mat"
SPIKE_0807 = DATA / "limblab-spike-wf" / "Spike_08-07-12_WF_001.mat"
SPIKE_0824 = DATA / "limblab-spike-wf" / "Spike_08-24-12_WF_001.mat"
JANGO = DATA / "limblab-jango" / "Jango_20141203_default_offline_data.mat"
BROCHIER = DATA / "brochier-grasp" / "Dataset2_old_b121bf7.mat"
ICUB = DATA / "icub-grasp"
NEV = DATA / "blackrock" / "Han_20170516.nev"


def _open(path: Path, **options: Any) -> tuple[Recording, list[BoardEvent]]:
    recording = open_recording(path, board_id="board-1", subject_id="subject-1", **options)
    return recording, list(recording.events())


def _of(events: list[BoardEvent], record_name: str) -> list[dict[str, Any]]:
    return [event.record for event in events if event.record_name == record_name]


def _behavior(events: list[BoardEvent], kind: str) -> list[dict[str, Any]]:
    return [record for record in _of(events, "BehaviorEvent") if record["kind"] == kind]


def _frame_counts(record: dict[str, Any]) -> np.ndarray:
    counts = np.frombuffer(record["counts"], dtype=np.dtype(str(record["dtype"])).newbyteorder("<"))
    return counts.reshape(int(record["n_bins"]), int(record["n_channels"]))


def _total_published(events: list[BoardEvent]) -> int:
    return sum(int(_frame_counts(record).sum()) for record in _of(events, "SpikeFrame"))


def _source_counts(path: Path, struct: str) -> np.ndarray:
    data = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)[struct]
    return np.rint(np.asarray(data.spikeratedata, dtype=np.float64) * 0.05).astype(np.int64)


@pytest.fixture(scope="module")
def spike_0718() -> tuple[Recording, list[BoardEvent]]:
    return _open(SPIKE_0718)


@pytest.fixture(scope="module")
def spike_0824() -> tuple[Recording, list[BoardEvent]]:
    return _open(SPIKE_0824)


@pytest.fixture(scope="module")
def jango() -> tuple[Recording, list[BoardEvent]]:
    return _open(JANGO)


@pytest.fixture(scope="module")
def brochier() -> tuple[Recording, list[BoardEvent]]:
    return _open(BROCHIER)


@pytest.fixture(scope="module")
def icub() -> tuple[Recording, list[BoardEvent]]:
    return _open(ICUB)


@pytest.fixture(scope="module")
def nev() -> tuple[Recording, list[BoardEvent]]:
    return _open(NEV)


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        (SPIKE_0718, "limblab_binned"),
        (JANGO, "limblab_binned"),
        (BROCHIER, "brochier_grasp"),
        (ICUB, "icub_grasp"),
        (ICUB / "iCubGraspDataset" / "book_3.txt", "icub_grasp"),
        (NEV, "blackrock_nev"),
    ],
)
def test_detect_kind_of_each_dataset(path: Path, kind: str) -> None:
    assert detect_kind(path) == kind


# Spike, 2012-07-18: 96 channels, 24,000 bins of 50 ms, 217 trials. Trial 120 stores -1 as
# its outer target and go cue times.


def test_spike_session_shape(spike_0718: tuple[Recording, list[BoardEvent]]) -> None:
    recording, events = spike_0718
    frames = _of(events, "SpikeFrame")

    assert recording.n_channels == 96
    assert recording.bin_ms == 50
    assert recording.n_trials == 217
    assert len(frames) == 24_000
    assert {frame["bin_ms"] for frame in frames} == {50}
    assert {frame["dtype"] for frame in frames} == {"uint8"}
    assert frames[0]["channel_ids"][:2] == ["ee01u0", "ee02u0"]


def test_spike_session_counts_equal_source(spike_0718: tuple[Recording, list[BoardEvent]]) -> None:
    _, events = spike_0718
    source = _source_counts(SPIKE_0718, "binnedData")

    assert _total_published(events) == int(source.sum()) == 1_450_592
    first_frames = np.concatenate(
        [_frame_counts(record) for record in _of(events, "SpikeFrame")[:10]]
    )
    np.testing.assert_array_equal(first_frames, source[:10])


def test_spike_session_labels_and_outcomes(spike_0718: tuple[Recording, list[BoardEvent]]) -> None:
    _, events = spike_0718
    labels = Counter(record["label"] for record in _behavior(events, "class_label"))
    outcomes = Counter(record["label"] for record in _behavior(events, "outcome"))

    assert set(labels) == {f"target_{target}" for target in range(1, 9)}
    assert sum(labels.values()) == 217
    assert outcomes == {"reward": 193, "fail": 24}
    assert len(_behavior(events, "trial_start")) == 217
    assert len(_behavior(events, "trial_end")) == 217


def test_spike_session_times_are_absolute_utc(
    spike_0718: tuple[Recording, list[BoardEvent]],
) -> None:
    recording, events = spike_0718
    frames = _of(events, "SpikeFrame")

    assert recording.start_time == datetime(2012, 7, 18, 14, 0, 46, 750_000, tzinfo=UTC)
    assert frames[0]["event_time"] == recording.start_time
    assert frames[1]["event_time"] - frames[0]["event_time"] == timedelta(milliseconds=50)
    assert frames[-1]["event_time"] == recording.start_time + timedelta(seconds=1199.95)


def test_spike_session_events_in_time_order(spike_0718: tuple[Recording, list[BoardEvent]]) -> None:
    _, events = spike_0718
    times = [event.event_time for event in events]

    assert times == sorted(times)
    assert all(event.record["event_time"] == event.event_time for event in events)
    # Behaviour events are interleaved with frames, not appended after them.
    assert events[-1].record_name == "SpikeFrame"
    assert any(event.record_name == "BehaviorEvent" for event in events[: len(events) // 2])


def test_spike_sentinel_times_produce_no_event(
    spike_0718: tuple[Recording, list[BoardEvent]],
) -> None:
    recording, events = spike_0718
    trial_120 = [record for record in _of(events, "BehaviorEvent") if record["trial_id"] == 120]
    kinds = [record["kind"] for record in trial_120]

    assert kinds == ["trial_start", "class_label", "trial_end", "outcome"]
    assert trial_120[1]["event_time"] == trial_120[0]["event_time"]  # label falls back to the start
    assert len(_behavior(events, "go_cue")) == 216
    assert len(_behavior(events, "target_on")) == 216
    assert recording.report.skipped == {"go cue time missing": 1, "outer target time missing": 1}
    assert (
        "trial 120: go cue time missing (-1), go_cue event omitted" in recording.report.skip_details
    )


def test_spike_session_without_go_cues(spike_0824: tuple[Recording, list[BoardEvent]]) -> None:
    recording, events = spike_0824

    assert recording.n_trials == 225
    assert _behavior(events, "go_cue") == []
    assert recording.report.skipped["go cue time missing"] == 225
    assert len(_behavior(events, "class_label")) == 225


def test_metadata_identifies_the_source(spike_0718: tuple[Recording, list[BoardEvent]]) -> None:
    _, events = spike_0718
    metadata = events[0].record["metadata"]

    assert metadata["source_file"] == "Spike_07-18-12_WF_001.mat"
    assert metadata["meta.datetime"] == "7/18/2012 14:0:46.750"
    assert metadata["meta.filename"].endswith("Spike_07-18-12_WF_001.nev")
    assert all(isinstance(value, str) for value in metadata.values())


def test_records_leave_out_seq_and_schema_version(
    spike_0718: tuple[Recording, list[BoardEvent]], icub: tuple[Recording, list[BoardEvent]]
) -> None:
    for event in spike_0718[1][:50] + icub[1][:50]:
        assert "seq" not in event.record
        assert "schema_version" not in event.record


def test_derived_session_id() -> None:
    options = ReplayOptions(board_id="board-1", subject_id="subject-1")

    assert options.session_for(SPIKE_0718) == options.session_for(SPIKE_0718)
    assert options.session_for(SPIKE_0718) != options.session_for(SPIKE_0824)
    assert "Spike" not in options.session_for(SPIKE_0718)


def test_rebinning_drops_and_reports_trailing_bins() -> None:
    recording, events = _open(SPIKE_0807, bin_ms=150)
    source = _source_counts(SPIKE_0807, "binnedData")  # 20,740 bins of 50 ms

    assert source.shape == (20_740, 96)
    assert recording.bin_ms == 150
    assert len(_of(events, "SpikeFrame")) == 6_913
    assert _total_published(events) == int(source[: 6_913 * 3].sum())
    assert recording.report.skipped == {"trailing source bins shorter than one bin": 1}


def test_bins_per_frame_groups_bins() -> None:
    recording, events = _open(SPIKE_0807, bins_per_frame=8)
    frames = _of(events, "SpikeFrame")

    assert len(frames) == math.ceil(20_740 / 8)
    assert frames[0]["n_bins"] == 8
    assert frames[-1]["n_bins"] == 20_740 % 8
    assert len(frames[0]["counts"]) == 8 * 96
    assert frames[1]["event_time"] - frames[0]["event_time"] == timedelta(milliseconds=400)
    assert _total_published(events) == recording.spike_count == 1_237_182


# Jango, 2014-12-03: 96 channels, 300 trials, 12 labelled trial-table columns.


def test_jango_columns_follow_labels() -> None:
    data = scipy.io.loadmat(JANGO, squeeze_me=True, struct_as_record=False)["train_data"]
    columns = columns_from_labels(JANGO, [str(label) for label in data.trialtablelabels])

    assert (columns.start, columns.target_on, columns.go_cue, columns.end) == (0, 5, 6, 7)
    assert (columns.result, columns.target_id, columns.catch) == (8, 9, 10)
    assert UNLABELLED_COLUMNS.target_id == columns.target_id


def test_jango_session(jango: tuple[Recording, list[BoardEvent]]) -> None:
    recording, events = jango
    labels = Counter(record["label"] for record in _behavior(events, "class_label"))
    outcomes = Counter(record["label"] for record in _behavior(events, "outcome"))

    assert recording.n_channels == 96
    assert recording.bin_ms == 50
    assert recording.n_trials == 300
    assert len(labels) == 8
    assert outcomes == {"reward": 299, "abort": 1}
    assert recording.start_time == datetime(2014, 12, 3, 16, 30, 47, 931_000, tzinfo=UTC)
    assert _total_published(events) == int(_source_counts(JANGO, "train_data").sum()) == 1_742_330
    assert (
        "trial 35: go cue time missing (-1), go_cue event omitted" in recording.report.skip_details
    )


# Brochier grasp: 134 trials of 1500 ms, 93 neurons, 70 side and 64 precision grips.


def test_brochier_shape_and_labels(brochier: tuple[Recording, list[BoardEvent]]) -> None:
    recording, events = brochier
    labels = Counter(record["label"] for record in _behavior(events, "class_label"))

    assert recording.n_channels == 93
    assert recording.bin_ms == 50
    assert recording.n_trials == 134
    assert len(_of(events, "SpikeFrame")) == 134 * 30
    assert labels == {"side_grip": 70, "precision_grip": 64}
    assert recording.report.read["spikes"] == 266_101


def test_brochier_counts_equal_source(brochier: tuple[Recording, list[BoardEvent]]) -> None:
    _, events = brochier
    with h5py.File(BROCHIER, "r") as file:
        first_trial = np.asarray(file["D"][0])  # (neurons, ms)

    assert _total_published(events) == 266_101
    expected = first_trial.reshape(93, 30, 50).sum(axis=2).T  # (bins, neurons)
    published = np.concatenate([_frame_counts(record) for record in _of(events, "SpikeFrame")[:30]])
    np.testing.assert_array_equal(published, expected)


def test_brochier_trials_follow_each_other_with_gap(
    brochier: tuple[Recording, list[BoardEvent]],
) -> None:
    recording, events = brochier
    starts = [record["event_time"] for record in _behavior(events, "trial_start")]
    ends = [record["event_time"] for record in _behavior(events, "trial_end")]

    assert starts[0] == recording.start_time
    assert ends[0] - starts[0] == timedelta(milliseconds=1500)
    assert starts[1] - ends[0] == timedelta(milliseconds=500)
    assert any("no recording date" in note for note in recording.report.notes)


def test_brochier_rejects_bin_not_dividing_window() -> None:
    options = ReplayOptions(board_id="board-1", subject_id="subject-1", bin_ms=40)

    with pytest.raises(ValueError, match=r"Dataset2_old_b121bf7\.mat.*divide the 1500 ms"):
        open_brochier(BROCHIER, options)


# iCub grasps: 230 files of 11 objects; full_coke (27 grasps) is skipped by default.


def test_icub_folder_session(icub: tuple[Recording, list[BoardEvent]]) -> None:
    recording, events = icub
    frames = _of(events, "EskinFrame")
    labels = Counter(record["label"] for record in _behavior(events, "class_label"))

    assert recording.n_trials == 203
    assert len(labels) == 10
    assert labels["no_object"] == 22
    assert labels["empty_coke"] == 21
    assert "full_coke" not in labels
    assert len(frames) == 2_520
    assert {frame["n_taxels"] for frame in frames} == {60}
    assert {frame["pressure_unit"] for frame in frames} == {"raw_capacitance"}
    assert recording.report.skipped == {"object marked unreliable by the dataset": 27}


def test_icub_frame_matches_file(icub: tuple[Recording, list[BoardEvent]]) -> None:
    _, events = icub
    first = _of(events, "EskinFrame")[0]
    lines = (ICUB / "iCubGraspDataset" / "blue_bear_1.txt").read_text().splitlines()

    assert first["label"] == "blue_bear"
    assert first["pressures"][:12] == [float(token) for token in lines[3].split()]
    assert first["joint_positions"][0] == pytest.approx(math.radians(20.7273))
    assert first["metadata"]["source_file"] == "blue_bear_1.txt"
    assert "Copyright 2012 Harold Soh" in first["metadata"]["copyright"]


def test_icub_no_object_frames_have_no_label(icub: tuple[Recording, list[BoardEvent]]) -> None:
    _, events = icub
    baseline = [
        frame
        for frame in _of(events, "EskinFrame")
        if frame["metadata"]["source_file"].startswith("none_")
    ]

    assert baseline
    assert {frame["label"] for frame in baseline} == {None}


def test_icub_unreliable_object_on_request() -> None:
    options = ReplayOptions(board_id="board-1", subject_id="subject-1")
    recording = open_icub(ICUB, options, include_unreliable=True, objects={"full_coke"})

    assert recording.n_trials == 27
    assert not recording.report.skipped


def test_icub_single_file_session() -> None:
    recording, events = _open(ICUB / "iCubGraspDataset" / "blue_bear_1.txt")

    assert recording.n_trials == 1
    assert len(_of(events, "EskinFrame")) == 12  # 85 lines: a start line and 12 slices of 7
    assert [event.record_name for event in events][:2] == ["BehaviorEvent", "BehaviorEvent"]
    assert events[-1].record["kind"] == "trial_end"


# Blackrock NEV 2.3: 96 channels, 20,163 threshold crossings, all within about 2 s.


def test_nev_channels_and_counts(nev: tuple[Recording, list[BoardEvent]]) -> None:
    recording, events = nev
    frames = _of(events, "SpikeFrame")

    assert recording.n_channels == 96
    assert recording.channel_ids == [str(channel) for channel in range(1, 97)]
    assert recording.bin_ms == 50
    assert len(frames) == 40
    assert _total_published(events) == recording.report.read["spikes"] == 20_163


def test_nev_metadata_and_start_time(nev: tuple[Recording, list[BoardEvent]]) -> None:
    recording, events = nev
    metadata = events[0].record["metadata"]

    assert metadata["nev.spec"] == "2.3"
    assert metadata["nev.application"] == "writeNev.m"
    assert metadata["source_file"] == "Han_20170516.nev"
    assert recording.start_time == datetime(2017, 6, 16, 13, 51, 9, tzinfo=UTC)
    assert any("differs from the NEV time origin" in note for note in recording.report.notes)


def test_nev_custom_bin_width() -> None:
    recording, events = _open(NEV, bin_ms=10)

    assert recording.bin_ms == 10
    assert len(_of(events, "SpikeFrame")) == 200
    assert _total_published(events) == 20_163


def test_start_time_option_replaces_file_date() -> None:
    start = datetime(2030, 5, 1, 8, 0, tzinfo=UTC)
    recording, events = _open(NEV, start_time=start)

    assert recording.start_time == start
    assert events[0].event_time == start
