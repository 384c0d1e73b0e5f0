"""The drift reference that `bcratos train` writes beside a model, per subject."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from tests.support.model_artifacts import GOLD_SCHEMA
from training.commands import write_drift_reference
from training.data import StepArrays, arrays_from_arrow

MANIFEST = {
    "classes": ["rest", "grasp"],
    "content_hash": "sha256:ef",
    "parameters": {"step_ms": 50},
}

# (subject, split, counts of every step, steps, gap)
SESSIONS = [
    ("subj-a", "train", [1, 2, 3], 4, False),
    ("subj-a", "train", [9, 9, 9], 2, True),  # gap steps do not count
    ("subj-a", "test", [5, 5, 5], 3, False),  # neither do test steps
    ("subj-b", "train", [4, 0], 6, False),
]


def _arrays(sessions: list[tuple[str, str, list[int], int, bool]] = SESSIONS) -> StepArrays:
    rows: list[dict[str, Any]] = []
    for number, (subject, split, counts, steps, gap) in enumerate(sessions):
        for step in range(steps):
            rows.append(
                {
                    "subject_pseudonym": subject,
                    "session_pseudonym": f"{subject}-{number}",
                    "session_day": number,
                    "step_index": step,
                    "counts": counts,
                    "features": [float(value) for value in counts],
                    "label_index": 0,
                    "trial_id": None,
                    "trial_outcome": None,
                    "trial_class": None,
                    "steps_from_go": None,
                    "excluded": False,
                    "gap": gap,
                    "split": split,
                }
            )
    table = pa.Table.from_pylist(rows, schema=GOLD_SCHEMA)
    return arrays_from_arrow(table, name="drift", manifest=MANIFEST)


def test_reference_per_subject_unpadded(tmp_path: Path) -> None:
    path = write_drift_reference(_arrays(), ["subj-a", "subj-b"], tmp_path)

    reference = json.loads(path.read_text())

    # Fewer steps than two one-minute windows: no spread is known.
    assert reference["subjects"]["subj-a"] == {
        "mean_rate_hz": [20.0, 40.0, 60.0],
        "window_sd_hz": [0.0, 0.0, 0.0],
        "steps": 4,
    }
    assert reference["subjects"]["subj-b"] == {
        "mean_rate_hz": [80.0, 0.0],
        "window_sd_hz": [0.0, 0.0],
        "steps": 6,
    }
    assert reference["steps"] == 10
    padded = [(4 * 20 + 6 * 80) / 10, 4 * 40 / 10, 4 * 60 / 10]  # subj-b's third channel is 0
    assert reference["mean_rate_hz"] == pytest.approx(padded)


def test_reference_of_one_subject_model(tmp_path: Path) -> None:
    path = write_drift_reference(_arrays(), ["subj-b"], tmp_path)

    reference = json.loads(path.read_text())

    assert reference["mean_rate_hz"] == [80.0, 0.0]  # without subj-a's third channel
    assert reference["steps"] == 6
    assert list(reference["subjects"]) == ["subj-b"]


def test_window_spread_across_sessions(tmp_path: Path) -> None:
    # 1200 steps of 50 ms are one minute: one window per session, mean rates 20 and 60 Hz.
    arrays = _arrays(
        [
            ("subj-a", "train", [1, 0], 1200, False),
            ("subj-a", "train", [3, 0], 1200, False),
            ("subj-b", "test", [2, 2], 1200, False),
        ]
    )

    reference = json.loads(
        write_drift_reference(arrays, ["subj-a", "subj-b"], tmp_path).read_text()
    )

    entry = reference["subjects"]["subj-a"]
    assert entry["mean_rate_hz"] == [40.0, 0.0]
    assert entry["window_sd_hz"] == pytest.approx([2**0.5 * 20, 0.0])
    assert list(reference["subjects"]) == ["subj-a"]  # subj-b has test steps only
