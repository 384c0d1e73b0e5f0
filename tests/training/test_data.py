"""Gold tables as arrays: sorting, the npy cache, windows cut by index and target selection."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from deltalake import write_deltalake

from training.data import (
    NO_OFFSET,
    StepArrays,
    WindowDataset,
    arrays_from_arrow,
    collate_windows,
    complete_windows,
    load_gold,
    open_arrays,
    save_arrays,
    select_targets,
)
from training.errors import DatasetError

CLASSES = ["rest", "target_1", "target_2"]
MANIFEST = {
    "classes": CLASSES,
    "content_hash": "sha256:abc",
    "parameters": {"step_ms": 50, "window": 3},
}

# (subject, session, day, split, steps, channels)
SESSIONS = [
    ("subj-a", "sess-1", 10, "train", 8, 3),
    ("subj-a", "sess-2", 11, "validation", 6, 3),
    ("subj-b", "sess-3", 10, "test", 5, 2),
]


def _gold_table(
    sessions: list[tuple[str, str, int, str, int, int]] = SESSIONS,
    *,
    gaps: dict[tuple[str, int], bool] | None = None,
    excluded: dict[tuple[str, int], bool] | None = None,
    skip_steps: dict[str, set[int]] | None = None,
) -> pa.Table:
    """Rows whose counts encode (row number, channel), so a test can tell rows apart."""
    columns: dict[str, list[Any]] = {name: [] for name in _COLUMN_TYPES}
    number = 0
    for subject, session, day, split, steps, channels in sessions:
        for step in range(steps):
            if step in (skip_steps or {}).get(session, set()):
                continue
            counts = [number * 10 + channel for channel in range(channels)]
            in_trial = 2 <= step < 5
            columns["subject_pseudonym"].append(subject)
            columns["session_pseudonym"].append(session)
            columns["session_day"].append(day)
            columns["split"].append(split)
            columns["step_index"].append(step)
            columns["t_step_us"].append(step * 50_000)
            columns["counts"].append(counts)
            columns["features"].append([float(value) for value in counts])
            columns["label"].append("target_1" if in_trial else "rest")
            columns["label_index"].append(1 if in_trial else 0)
            columns["trial_id"].append(7 if in_trial else None)
            columns["trial_outcome"].append("reward" if in_trial else None)
            columns["trial_class"].append("target_1" if in_trial else None)
            columns["steps_from_go"].append(step - 2 if in_trial else None)
            columns["excluded"].append((excluded or {}).get((session, step), False))
            columns["gap"].append((gaps or {}).get((session, step), False))
            number += 1
    return pa.table(
        {name: pa.array(values, _COLUMN_TYPES[name]) for name, values in columns.items()}
    )


_COLUMN_TYPES: dict[str, pa.DataType] = {
    "subject_pseudonym": pa.string(),
    "session_pseudonym": pa.string(),
    "session_day": pa.int32(),
    "split": pa.string(),
    "step_index": pa.int64(),
    "t_step_us": pa.int64(),
    "counts": pa.list_(pa.int32()),
    "features": pa.list_(pa.float32()),
    "label": pa.string(),
    "label_index": pa.int32(),
    "trial_id": pa.int64(),
    "trial_outcome": pa.string(),
    "trial_class": pa.string(),
    "steps_from_go": pa.int32(),
    "excluded": pa.bool_(),
    "gap": pa.bool_(),
}


def _arrays(table: pa.Table | None = None) -> StepArrays:
    return arrays_from_arrow(
        table if table is not None else _gold_table(), name="d1", manifest=MANIFEST
    )


def _write_lake(lake: Path, table: pa.Table, manifest: dict[str, Any] = MANIFEST) -> None:
    write_deltalake(
        str(lake / "gold" / "datasets" / "d1"), table, partition_by=["split"], mode="overwrite"
    )
    path = lake / "gold" / "manifests" / "d1.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest))


def test_rows_sorted_by_subject_day_session_step() -> None:
    table = _gold_table()
    shuffled = table.take(np.random.default_rng(0).permutation(table.num_rows))
    arrays = _arrays(shuffled)

    assert arrays.info.subjects == ["subj-a", "subj-b"]
    assert arrays.info.sessions == ["sess-1", "sess-2", "sess-3"]
    assert arrays.step_index[:8].tolist() == list(range(8))
    np.testing.assert_array_equal(arrays.counts[:, 0], np.arange(len(arrays)) * 10)


def test_codes_and_nulls() -> None:
    arrays = _arrays()
    assert arrays.split[:8].tolist() == [0] * 8  # train
    assert arrays.split[-1] == 2  # test
    assert arrays.trial_id[0] == -1
    assert arrays.steps_from_go[0] == NO_OFFSET
    assert arrays.steps_from_go[2] == 0
    assert arrays.trial_class[2] == CLASSES.index("target_1")
    assert arrays.trial_outcome[2] == 0  # reward
    assert arrays.info.trial_classes == ["target_1"]


def test_channels_padded_per_subject() -> None:
    arrays = _arrays()
    assert arrays.info.channels == {"subj-a": 3, "subj-b": 2}
    assert arrays.features.shape == (19, 3)
    assert arrays.features[-1].tolist() == [180.0, 181.0, 0.0]


def test_window_is_view_of_features() -> None:
    arrays = _arrays()
    selection = select_targets(arrays, 3, splits=["train"])
    dataset = WindowDataset.from_arrays(arrays, selection, 3)
    window, label, subject = dataset[0]
    row = int(selection.indexes[0])

    assert np.shares_memory(window, arrays.features)
    np.testing.assert_array_equal(window, arrays.features[row - 2 : row + 1])
    assert (label, subject) == (int(arrays.label_index[row]), 0)


def test_batch_gather_matches_items() -> None:
    arrays = _arrays()
    dataset = WindowDataset.from_arrays(
        arrays, select_targets(arrays, 3, splits=["train", "test"]), 3
    )
    positions = [0, 3, len(dataset) - 1]

    x, y, subject = collate_windows(dataset.__getitems__(positions))
    x_items, y_items, subject_items = collate_windows([dataset[i] for i in positions])

    assert x.shape == (3, 3, 3)
    assert x.equal(x_items)
    assert y.equal(y_items)
    assert subject.equal(subject_items)
    assert subject.tolist() == [0, 0, 1]


def test_windows_stay_inside_sessions() -> None:
    complete = complete_windows(_arrays(), 3)
    # sessions start at rows 0, 8 and 14: their first two rows have no full window
    assert np.flatnonzero(~complete).tolist() == [0, 1, 8, 9, 14, 15]


def test_window_with_gap_or_missing_step_incomplete() -> None:
    table = _gold_table(gaps={("sess-1", 4): True}, skip_steps={"sess-2": {3}})
    arrays = _arrays(table)
    complete = complete_windows(arrays, 3)

    assert complete[:8].tolist() == [False, False, True, True, False, False, False, True]
    # sess-2 lacks step 3, so windows over steps 2..4 and 3..5 are not contiguous
    assert arrays.step_index[8:13].tolist() == [0, 1, 2, 4, 5]
    assert complete[8:13].tolist() == [False, False, True, False, False]


def test_excluded_steps_dropped_and_counted() -> None:
    arrays = _arrays(_gold_table(excluded={("sess-1", 3): True, ("sess-1", 4): True}))
    selection = select_targets(arrays, 3, splits=["train"])
    with_excluded = select_targets(arrays, 3, splits=["train"], include_excluded=True)

    assert selection.candidates == 8
    assert selection.dropped_excluded == 2
    assert selection.dropped_incomplete_window == 2
    assert selection.indexes.tolist() == [2, 5, 6, 7]
    assert with_excluded.indexes.tolist() == [2, 3, 4, 5, 6, 7]
    assert "2 excluded" in selection.describe()


def test_selection_by_subject() -> None:
    arrays = _arrays()
    selection = select_targets(
        arrays, 3, splits=["train", "validation", "test"], subjects=["subj-b"]
    )
    assert selection.indexes.tolist() == [16, 17, 18]


def test_unknown_split_or_subject_rejected() -> None:
    arrays = _arrays()
    with pytest.raises(DatasetError, match="unknown split 'dev'"):
        select_targets(arrays, 3, splits=["dev"])
    with pytest.raises(DatasetError, match="subj-z"):
        select_targets(arrays, 3, splits=["train"], subjects=["subj-z"])


def test_window_dataset_rejects_row_without_history() -> None:
    arrays = _arrays()
    with pytest.raises(ValueError, match="fewer than 2 rows"):
        WindowDataset(arrays.features, arrays.label_index, arrays.subject, np.array([1]), 3)


def test_cache_round_trip_memory_mapped(tmp_path: Path) -> None:
    arrays = _arrays()
    save_arrays(arrays, tmp_path / "cache")
    opened = open_arrays(tmp_path / "cache")

    assert isinstance(opened.features, np.memmap)
    assert not opened.features.flags.writeable
    assert opened.info == arrays.info
    np.testing.assert_array_equal(opened.counts, arrays.counts)
    np.testing.assert_array_equal(opened.steps_from_go, arrays.steps_from_go)


def test_load_gold_builds_cache_once(tmp_path: Path) -> None:
    lake, cache = tmp_path / "lake", tmp_path / "cache"
    _write_lake(lake, _gold_table())

    first = load_gold(str(lake), "d1", cache)
    folders = list(cache.iterdir())
    (folders[0] / "features.npy").touch()
    stamp = (folders[0] / "features.npy").stat().st_mtime_ns
    second = load_gold(str(lake), "d1", cache)

    assert [folder.name for folder in folders] == ["d1-v0-abc"]
    assert (folders[0] / "features.npy").stat().st_mtime_ns == stamp
    assert len(first) == len(second) == 19
    assert second.info.table_version == 0


def test_new_table_version_gets_new_cache(tmp_path: Path) -> None:
    lake, cache = tmp_path / "lake", tmp_path / "cache"
    _write_lake(lake, _gold_table())
    load_gold(str(lake), "d1", cache)
    _write_lake(lake, _gold_table(SESSIONS[:1]))

    arrays = load_gold(str(lake), "d1", cache)

    assert len(arrays) == 8
    assert sorted(folder.name for folder in cache.iterdir()) == ["d1-v0-abc", "d1-v1-abc"]


def test_missing_manifest_names_prepare_command(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="bcratos jobs prepare"):
        load_gold(str(tmp_path), "d1", tmp_path / "cache")


def test_missing_column_named(tmp_path: Path) -> None:
    _write_lake(tmp_path, _gold_table().drop_columns(["steps_from_go"]))
    with pytest.raises(DatasetError, match="steps_from_go"):
        load_gold(str(tmp_path), "d1", tmp_path / "cache")


def test_trial_class_missing_from_manifest_rejected() -> None:
    manifest = {**MANIFEST, "classes": ["rest", "target_2"]}
    with pytest.raises(DatasetError, match="target_1"):
        arrays_from_arrow(_gold_table(), name="d1", manifest=manifest)
