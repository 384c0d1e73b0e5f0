"""Sentinels, gaps and bad input, on small files written by each test."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import scipy.io

from boards.replay import BoardEvent, RecordingFormatError, detect_kind, open_recording

N_BINS = 40
N_CHANNELS = 3


def _trial(
    start: float, outer: float, go: float, end: float, result: str, target: float
) -> list[float]:
    return [start, -1.0, 1.0, 1.0, -1.0, outer, go, end, float(ord(result)), target]


def _write_limblab(path: Path, trialtable: Any, **fields: Any) -> Path:
    """Write a small binnedData file: 40 bins of 50 ms, 3 channels at 20 Hz (1 spike per bin)."""
    struct: dict[str, Any] = {
        "timeframe": np.arange(N_BINS) * 0.05,
        "spikeratedata": np.full((N_BINS, N_CHANNELS), 20.0),
        "spikeguide": np.array(["ee01u0", "ee02u0", "ee03u0"], dtype=object),
        "trialtable": trialtable,
        "meta": {
            "filename": "C:\\operator\\Test_01-02-13_WF_001.nev",
            "datetime": "1/2/2013 9:5:7.250",
        },
    }
    struct.update(fields)
    scipy.io.savemat(path, {"binnedData": struct})
    return path


def _open(path: Path, **options: Any) -> tuple[Any, list[BoardEvent]]:
    recording = open_recording(path, board_id="board-1", subject_id="subject-1", **options)
    return recording, list(recording.events())


def _kinds(events: list[BoardEvent], trial_id: int) -> list[str]:
    return [
        event.record["kind"]
        for event in events
        if event.record_name == "BehaviorEvent" and event.record["trial_id"] == trial_id
    ]


def test_nan_and_negative_times_make_no_events(tmp_path: Path) -> None:
    table = np.array(
        [
            _trial(0.1, 0.2, 0.3, 0.9, "R", 2),
            _trial(1.0, np.nan, -1.0, np.nan, "F", 3),
            _trial(np.nan, 1.2, 1.3, 1.5, "R", 4),
        ]
    )
    recording, events = _open(_write_limblab(tmp_path / "Test_01-02-13_WF_001.mat", table))

    assert _kinds(events, 1) == [
        "trial_start",
        "target_on",
        "go_cue",
        "class_label",
        "trial_end",
        "outcome",
    ]
    assert _kinds(events, 2) == ["trial_start", "class_label"]
    assert _kinds(events, 3) == []
    assert recording.report.skipped == {
        "outer target time missing": 1,
        "go cue time missing": 1,
        "trial end time missing": 1,
        "trial start time missing": 1,
    }
    assert "trial 2: outer target time missing (nan), target_on event omitted" in (
        recording.report.skip_details
    )
    assert "trial 3: trial start time missing (nan), all events of the trial omitted" in (
        recording.report.skip_details
    )


def test_unknown_result_code_omits_outcome(tmp_path: Path) -> None:
    table = np.array([_trial(0.1, 0.2, 0.3, 0.9, "N", 2)])
    recording, events = _open(_write_limblab(tmp_path / "Test_01-02-13_WF_001.mat", table))

    assert "outcome" not in _kinds(events, 1)
    assert "trial_end" in _kinds(events, 1)
    assert recording.report.skip_details == [
        "trial 1: result code 'N' is not R, A, F or I, outcome event omitted"
    ]


def test_missing_target_id_omits_class_label(tmp_path: Path) -> None:
    table = np.array([_trial(0.1, 0.2, 0.3, 0.9, "R", -1)])
    recording, events = _open(_write_limblab(tmp_path / "Test_01-02-13_WF_001.mat", table))

    assert "class_label" not in _kinds(events, 1)
    assert recording.report.skipped == {"target id missing": 1}


def test_single_trial_table_is_one_row(tmp_path: Path) -> None:
    table = np.array([_trial(0.1, 0.2, 0.3, 0.9, "A", 5)])
    recording, events = _open(_write_limblab(tmp_path / "Test_01-02-13_WF_001.mat", table))
    outcome = [event.record for event in events if event.record.get("kind") == "outcome"]

    assert recording.n_trials == 1
    assert [record["label"] for record in outcome] == ["abort"]


def test_empty_trial_table_gives_frames_only(tmp_path: Path) -> None:
    recording, events = _open(
        _write_limblab(tmp_path / "Test_01-02-13_WF_001.mat", np.zeros((0, 10)))
    )

    assert recording.n_trials == 0
    assert {event.record_name for event in events} == {"SpikeFrame"}
    assert len(events) == N_BINS
    assert any("trial table is empty" in note for note in recording.report.notes)


def test_catch_trial_omits_go_cue(tmp_path: Path) -> None:
    table = np.array(
        [_trial(0.1, 0.2, 0.3, 0.9, "R", 2) + [1.0], _trial(1.0, 1.1, 1.2, 1.5, "R", 3) + [0.0]]
    )
    labels = np.array(
        [
            "trial start time",
            "tgt ULx",
            "tgt ULy",
            "tgt LRx",
            "tgt LRy",
            "outer target time",
            "go/catch",
            "trial end time",
            "Result(R,A,I,orN)",
            "tgt_id",
            "catch",
        ],
        dtype=object,
    )
    path = _write_limblab(tmp_path / "Test_01-02-13_WF_001.mat", table, trialtablelabels=labels)
    recording, events = _open(path)

    assert "go_cue" not in _kinds(events, 1)
    assert "go_cue" in _kinds(events, 2)
    assert recording.report.skipped == {"catch trial": 1}


def test_start_time_from_meta_datetime(tmp_path: Path) -> None:
    recording, events = _open(
        _write_limblab(tmp_path / "Test_01-02-13_WF_001.mat", np.zeros((0, 10)))
    )

    assert recording.start_time.isoformat() == "2013-01-02T09:05:07.250000+00:00"
    assert events[0].record["metadata"]["meta.filename"] == "C:\\operator\\Test_01-02-13_WF_001.nev"


def test_file_name_date_when_meta_missing(tmp_path: Path) -> None:
    path = tmp_path / "Test_03-04-13_WF_001.mat"
    scipy.io.savemat(
        path,
        {
            "binnedData": {
                "timeframe": np.arange(N_BINS) * 0.05,
                "spikeratedata": np.zeros((N_BINS, N_CHANNELS)),
                "trialtable": np.zeros((0, 10)),
            }
        },
    )
    recording, _ = _open(path)

    assert recording.start_time.isoformat() == "2013-03-04T00:00:00+00:00"
    assert recording.channel_ids is None


def test_labels_without_required_column_raise(tmp_path: Path) -> None:
    labels = np.array(
        ["trial start time", "go", "trial end time", "result", "tgt_id"], dtype=object
    )
    path = _write_limblab(
        tmp_path / "Test_01-02-13_WF_001.mat", np.zeros((0, 5)), trialtablelabels=labels
    )

    with pytest.raises(RecordingFormatError, match=r"Test_01-02-13_WF_001\.mat.*\['target_on'\]"):
        open_recording(path, board_id="board-1", subject_id="subject-1")


def test_missing_struct_names_file(tmp_path: Path) -> None:
    path = tmp_path / "other.mat"
    scipy.io.savemat(path, {"someStruct": {"x": 1}})

    with pytest.raises(
        RecordingFormatError, match=r"other\.mat: MAT file without a struct binnedData"
    ):
        detect_kind(path)


def test_wrong_rate_shape_names_file(tmp_path: Path) -> None:
    path = _write_limblab(tmp_path / "bad.mat", np.zeros((0, 10)), spikeratedata=np.zeros((7, 3)))

    with pytest.raises(
        RecordingFormatError, match=r"bad\.mat: spikeratedata must have shape \(40, channels\)"
    ):
        open_recording(path, board_id="board-1", subject_id="subject-1")


def test_nan_rates_are_rejected(tmp_path: Path) -> None:
    rates = np.full((N_BINS, N_CHANNELS), 20.0)
    rates[3, 1] = np.nan
    path = _write_limblab(tmp_path / "nan.mat", np.zeros((0, 10)), spikeratedata=rates)

    with pytest.raises(RecordingFormatError, match=r"nan\.mat: spikeratedata has 1 NaN"):
        open_recording(path, board_id="board-1", subject_id="subject-1")


def test_bin_not_multiple_of_source_raises(tmp_path: Path) -> None:
    path = _write_limblab(tmp_path / "Test_01-02-13_WF_001.mat", np.zeros((0, 10)))

    with pytest.raises(ValueError, match=r"multiple of the file's 50 ms bins, got 75"):
        open_recording(path, board_id="board-1", subject_id="subject-1", bin_ms=75)


def test_unknown_file_kind_names_file(tmp_path: Path) -> None:
    path = tmp_path / "noise.bin"
    path.write_bytes(b"\x00\x01not a recording")

    with pytest.raises(RecordingFormatError, match=r"noise\.bin: unknown recording kind"):
        open_recording(path, board_id="board-1", subject_id="subject-1")


def test_missing_file_raises_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"absent\.mat"):
        open_recording(tmp_path / "absent.mat", board_id="board-1", subject_id="subject-1")


def test_hdf5_without_grasp_datasets(tmp_path: Path) -> None:
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as file:
        file["X"] = np.zeros(3)

    with pytest.raises(
        RecordingFormatError, match=r"other\.h5: HDF5 file without the Brochier datasets"
    ):
        detect_kind(path)


def test_brochier_mismatched_shapes(tmp_path: Path) -> None:
    path = tmp_path / "grasp.mat"
    with h5py.File(path, "w") as file:
        file["D"] = np.zeros((4, 2, 100))
        file["GRIP"] = np.ones((1, 3))
        file["ID"] = np.array([[101.0, 102.0]])

    with pytest.raises(RecordingFormatError, match=r"grasp\.mat: GRIP must list 4 trials"):
        open_recording(path, board_id="board-1", subject_id="subject-1")


def test_brochier_unknown_grip_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "grasp.mat"
    spikes = np.zeros((3, 2, 100))
    spikes[:, 0, ::10] = 1
    with h5py.File(path, "w") as file:
        file["D"] = spikes
        file["GRIP"] = np.array([[1.0, np.nan, 2.0]])
        file["ID"] = np.array([[101.0, 102.0]])
    recording, events = _open(path)
    labels = [
        event.record["label"] for event in events if event.record.get("kind") == "class_label"
    ]

    assert labels == ["side_grip", "precision_grip"]
    assert recording.report.skipped == {"grip type unknown": 1}
    assert recording.spike_count == 30


def test_icub_malformed_slice_names_file_and_line(tmp_path: Path) -> None:
    folder = tmp_path / "grasps"
    folder.mkdir()
    taxels = " ".join(["250.0"] * 12)
    lines = (
        ["-10000", " ".join(["1.0"] * 9), " ".join(["0.0"] * 5)] + [taxels] * 4 + ["250.0 250.0"]
    )
    (folder / "cup_1.txt").write_text("\r\n".join(lines) + "\r\n")

    with pytest.raises(
        RecordingFormatError, match=r"cup_1\.txt: data line 7: expected 12 numbers, got 2"
    ):
        open_recording(folder, board_id="board-1", subject_id="subject-1")


def test_icub_folder_without_grasps(tmp_path: Path) -> None:
    with pytest.raises(RecordingFormatError, match=r"no grasp files"):
        open_recording(tmp_path, board_id="board-1", subject_id="subject-1")


def test_nev_with_bad_header_names_file(tmp_path: Path) -> None:
    path = tmp_path / "short.nev"
    path.write_bytes(b"NEURALEV" + b"\x00" * 20)

    with pytest.raises(RecordingFormatError, match=r"short\.nev: not a NEV file"):
        open_recording(path, board_id="board-1", subject_id="subject-1")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"board_id": ""}, "board_id must be a non-empty string"),
        ({"bin_ms": 0}, "bin_ms must be a positive number of milliseconds, got 0"),
        ({"bins_per_frame": 0}, "bins_per_frame must be at least 1, got 0"),
        ({"start_time": datetime(2020, 1, 1)}, "start_time must be timezone-aware"),
    ],
)
def test_invalid_options_raise(tmp_path: Path, options: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {"board_id": "board-1", "subject_id": "subject-1"} | options
    path = _write_limblab(tmp_path / "Test_01-02-13_WF_001.mat", np.zeros((0, 10)))

    with pytest.raises(ValueError, match=message):
        open_recording(path, **arguments)
