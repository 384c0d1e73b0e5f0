"""Gold datasets for the training tests, built from real limblab recordings without Spark.

Test-only replacement for the dataset job: it writes ``<lake>/gold/datasets/<name>`` and
``<lake>/gold/manifests/<name>.json`` in the gold layout. Steps are labelled by the dataset
job's rules for limblab trials: rest outside trials, ``pre_movement`` from trial start to the
go cue, and the trial's target class from the go cue to the trial end. Steps of trials that
were not rewarded are excluded. Each recording is cut into consecutive blocks that become sessions
of the same day, so a test can hold out whole sessions of the days it trains on.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa
from deltalake import write_deltalake

from boards.replay import Recording, open_recording

SPIKE_DIR: Final = (
    Path(__file__).resolve().parents[2].parent / "shared" / "data" / "limblab-spike-wf"
)
SPIKE_FILES: Final = sorted(SPIKE_DIR.glob("Spike_*.mat"))
SUBJECT: Final = "subj-spike"
DAY_SHIFT: Final = 1000  # replaces the secret per-subject day offset of anonymization
REST: Final = "rest"
PRE_MOVEMENT: Final = "pre_movement"


@dataclass(frozen=True)
class Block:
    """A part of each recording that becomes one session, from ``start`` to ``end`` (0..1)."""

    start: float
    end: float
    split: str


THREE_BLOCKS: Final = (
    Block(0.0, 0.6, "train"),
    Block(0.6, 0.8, "validation"),
    Block(0.8, 1.0, "test"),
)


@dataclass
class _Steps:
    """Per-step columns of one recording, before it is cut into sessions."""

    counts: npt.NDArray[np.int32]  # (steps, channels)
    t_step_us: npt.NDArray[np.int64]
    label: npt.NDArray[np.object_]
    trial_id: npt.NDArray[np.float64]  # NaN outside trials
    trial_class: npt.NDArray[np.object_]
    trial_outcome: npt.NDArray[np.object_]
    steps_from_go: npt.NDArray[np.float64]  # NaN outside trials
    excluded: npt.NDArray[np.bool_]
    source: npt.NDArray[np.object_]


def label_recording(recording: Recording) -> _Steps:
    """Label every step of a limblab recording by its trial markers."""
    segment = recording.segments[0]
    assert recording.bin_ms is not None
    bin_us = recording.bin_ms * 1000
    n_steps = segment.counts.shape[0]
    t_step_us = segment.offset_us + np.arange(n_steps, dtype=np.int64) * bin_us
    steps = _Steps(
        counts=segment.counts.astype(np.int32),
        t_step_us=t_step_us,
        label=np.full(n_steps, REST, dtype=object),
        trial_id=np.full(n_steps, np.nan),
        trial_class=np.full(n_steps, None, dtype=object),
        trial_outcome=np.full(n_steps, None, dtype=object),
        steps_from_go=np.full(n_steps, np.nan),
        excluded=np.zeros(n_steps, dtype=bool),
        source=np.full(n_steps, None, dtype=object),
    )

    trials: dict[int, dict[str, Any]] = {}
    for marker in recording.markers:
        if marker.trial_id is not None:
            trials.setdefault(marker.trial_id, {})[marker.kind] = marker
    for trial_id, markers in trials.items():
        if "trial_start" not in markers or "trial_end" not in markers:
            continue
        movement = markers.get("go_cue") or markers.get("target_on") or markers["trial_start"]
        source = (
            "go_cue"
            if "go_cue" in markers
            else "target_on"
            if "target_on" in markers
            else "trial_start"
        )
        first = _first_step_at(t_step_us, markers["trial_start"].offset_us)
        go = _first_step_at(t_step_us, movement.offset_us)
        end = _first_step_at(t_step_us, markers["trial_end"].offset_us)
        label = markers["class_label"].label if "class_label" in markers else "unknown_class"
        outcome = markers["outcome"].label if "outcome" in markers else None

        steps.label[first:go] = PRE_MOVEMENT
        steps.label[go:end] = label
        steps.trial_id[first:end] = trial_id
        steps.trial_class[first:end] = label
        steps.trial_outcome[first:end] = outcome
        steps.steps_from_go[first:end] = np.arange(first, end) - go
        steps.excluded[first:end] = outcome != "reward"
        steps.source[first:end] = source
    return steps


def _first_step_at(t_step_us: npt.NDArray[np.int64], time_us: int) -> int:
    """Return the first step that starts at or after ``time_us``."""
    return int(np.searchsorted(t_step_us, time_us, side="left"))


def write_gold(
    lake: Path,
    name: str,
    paths: Sequence[Path],
    *,
    blocks: Sequence[Block] = THREE_BLOCKS,
    window: int = 10,
) -> dict[str, Any]:
    """Write gold dataset ``name`` from limblab files (one per day) and return its manifest."""
    recordings = [open_recording(path, board_id="test-board", subject_id="Spike") for path in paths]
    first_date = min(recording.start_time.date() for recording in recordings)
    sessions: list[dict[str, Any]] = []
    for recording in recordings:
        steps = label_recording(recording)
        day = DAY_SHIFT + _days_between(first_date, recording.start_time.date())
        sessions.extend(_cut_sessions(steps, day, blocks, window))

    classes = sorted({str(label) for session in sessions for label in session["label"]})
    mean, std = _training_statistics(sessions)
    table = pa.concat_tables(
        [_session_table(session, classes, mean, std, window) for session in sessions]
    )
    uri = lake / "gold" / "datasets" / name
    write_deltalake(str(uri), table, partition_by=["split"], mode="overwrite")

    manifest = {
        "format_version": 1,
        "name": name,
        "sources": {"silver/spike_steps": {"version": 0}, "bronze/behavior_events": {"version": 0}},
        "parameters": {"name": name, "step_ms": 50, "window": window, "normalization": "subject"},
        "classes": classes,
        "normalization": {
            "mode": "subject",
            "statistic": "per-channel mean and population std of counts over training steps",
            "subjects": {
                SUBJECT: {"steps": int(mean.size), "mean": mean.tolist(), "std": std.tolist()}
            },
            "sessions": {},
        },
        "content_hash": _content_hash(table),
    }
    manifest_path = lake / "gold" / "manifests" / f"{name}.json"
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _days_between(first: date, day: date) -> int:
    return (day - first).days


def _cut_sessions(
    steps: _Steps, day: int, blocks: Sequence[Block], window: int
) -> list[dict[str, Any]]:
    n_steps = steps.counts.shape[0]
    sessions = []
    for number, block in enumerate(blocks):
        start, end = math.floor(block.start * n_steps), math.floor(block.end * n_steps)
        part = slice(start, end)
        sessions.append(
            {
                "session": f"sess-{day}-{number}",
                "day": day,
                "split": block.split,
                "counts": steps.counts[part],
                "t_step_us": steps.t_step_us[part] - steps.t_step_us[start],
                "label": steps.label[part],
                "trial_id": steps.trial_id[part],
                "trial_class": steps.trial_class[part],
                "trial_outcome": steps.trial_outcome[part],
                "steps_from_go": steps.steps_from_go[part],
                "excluded": steps.excluded[part],
                "source": steps.source[part],
            }
        )
    return sessions


def _training_statistics(
    sessions: Sequence[dict[str, Any]],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    counts = np.concatenate([s["counts"] for s in sessions if s["split"] == "train"])
    return counts.mean(axis=0), counts.std(axis=0)


def _session_table(
    session: dict[str, Any],
    classes: list[str],
    mean: npt.NDArray[np.float64],
    std: npt.NDArray[np.float64],
    window: int,
) -> pa.Table:
    counts = session["counts"]  # (steps, channels)
    n_steps, n_channels = counts.shape
    features = ((counts - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)
    label_index = np.array([classes.index(label) for label in session["label"]], dtype=np.int32)
    step_index = np.arange(n_steps, dtype=np.int64)
    return pa.table(
        {
            "subject_pseudonym": pa.array([SUBJECT] * n_steps, pa.string()),
            "session_pseudonym": pa.array([session["session"]] * n_steps, pa.string()),
            "session_day": pa.array(np.full(n_steps, session["day"], dtype=np.int32)),
            "split": pa.array([session["split"]] * n_steps, pa.string()),
            "step_index": pa.array(step_index),
            "t_step_us": pa.array(session["t_step_us"].astype(np.int64)),
            "step_ms": pa.array(np.full(n_steps, 50, dtype=np.int32)),
            "n_channels": pa.array(np.full(n_steps, n_channels, dtype=np.int32)),
            "counts": _list_column(counts.astype(np.int32), pa.int32()),
            "features": _list_column(features, pa.float32()),
            "gap": pa.array(np.zeros(n_steps, dtype=bool)),
            "window_complete": pa.array(step_index >= window - 1),
            "label": pa.array(session["label"].tolist(), pa.string()),
            "label_index": pa.array(label_index),
            "trial_id": pa.array(_nullable(session["trial_id"]), pa.int64()),
            "trial_class": pa.array(session["trial_class"].tolist(), pa.string()),
            "trial_outcome": pa.array(session["trial_outcome"].tolist(), pa.string()),
            "excluded": pa.array(session["excluded"]),
            "exclusion_reason": pa.array(
                [
                    ("outcome " + str(o)) if e else None
                    for o, e in zip(session["trial_outcome"], session["excluded"], strict=True)
                ],
                pa.string(),
            ),
            "movement_start_source": pa.array(session["source"].tolist(), pa.string()),
            "steps_from_go": pa.array(_nullable(session["steps_from_go"]), pa.int32()),
        }
    )


def _list_column(matrix: npt.NDArray[Any], value_type: pa.DataType) -> pa.ListArray:
    rows, width = matrix.shape
    offsets = pa.array(np.arange(0, (rows + 1) * width, width, dtype=np.int32))
    values = pa.array(matrix.reshape(-1), type=value_type)
    return pa.ListArray.from_arrays(offsets, values)


def _nullable(values: npt.NDArray[np.float64]) -> list[int | None]:
    return [None if np.isnan(value) else int(value) for value in values]


def _content_hash(table: pa.Table) -> str:
    digest = hashlib.sha256()
    digest.update(str(table.schema).encode())
    for column in ("session_pseudonym", "label", "counts"):
        digest.update(str(table[column].to_pylist()[:: max(1, table.num_rows // 1000)]).encode())
    digest.update(str(table.num_rows).encode())
    return f"sha256:{digest.hexdigest()}"
