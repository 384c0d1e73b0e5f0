"""Sources of `bcratos report` in a temporary data directory, for the report tests.

The lake tables come from `synthetic_lake.write_lake` (real Delta tables written by
`LakeWriter`). The files that other stages write (manifest, model config, next-day result,
metrics file) are built with those stages' own functions where they exist, so a change of
their format shows up here.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Final

import numpy as np
from synthetic_lake import SyntheticSession, trial, write_lake

from training.evaluate import accuracy_by_days_since_training, classification_metrics
from training.nextday import DayResult, NextDayResult
from training.train import EpochRecord

SUBJECT_A: Final = "aaaa1111bbbb2222cccc"  # three session days
SUBJECT_B: Final = "dddd3333eeee4444ffff"  # one session day
DAYS_A: Final = (100, 101, 103)
CLASSES: Final = ["pre_movement", "rest", "target_1", "target_2"]
MODEL_VERSION: Final = "demo-linear-20260101T000000Z"


def sessions() -> list[SyntheticSession]:
    """Return three days of subject A, each with two trials, and one day of subject B."""
    result = []
    for day in DAYS_A:
        events = trial(1, start_s=2.0, end_s=4.0, label="target_1", go_s=2.5)
        events += trial(2, start_s=5.0, end_s=7.0, label="target_2", go_s=5.5, outcome="fail")
        result.append(
            SyntheticSession(SUBJECT_A, day, f"session-a-{day}", gap_steps=(30,), events=events)
        )
    result.append(SyntheticSession(SUBJECT_B, 200, "session-b-200", n_channels=3))
    return result


def write_lake_tables(data_dir: Path) -> list[SyntheticSession]:
    """Write silver.spike_steps and bronze.behavior_events under ``data_dir/lake``."""
    written = sessions()
    write_lake(data_dir / "lake", written)
    return written


def manifest() -> dict[str, Any]:
    """Return a gold manifest with the fields the report reads."""
    return {
        "name": "demo",
        "created_at": "2026-01-01T00:00:00+00:00",
        "classes": CLASSES,
        "rows": {
            "total": 420,
            "by_split": {"test": 100, "train": 300, "validation": 20},
            "by_split_and_class": {
                "validation": {"rest": 20},
                "test": {"pre_movement": 10, "rest": 70, "target_1": 10, "target_2": 10},
                "train": {"pre_movement": 30, "rest": 210, "target_1": 30, "target_2": 30},
            },
            "excluded_by_split": {"train": 12, "test": 3},
        },
    }


def write_manifest(data_dir: Path) -> Path:
    """Write the manifest of dataset ``demo``."""
    path = data_dir / "lake" / "gold" / "manifests" / "demo.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest()))
    return path


def model_config(
    version: str = MODEL_VERSION, trained_at: str = "2026-01-01T00:00:00+00:00"
) -> dict[str, Any]:
    """Return a model config.json whose metrics come from the training and evaluation code."""
    y_true = np.array([0, 1, 1, 2, 3, 3])
    y_pred = np.array([0, 1, 0, 2, 3, 2])
    metrics = classification_metrics(y_true, y_pred, CLASSES)
    metrics.pop("classes")
    days = np.array([102, 102, 104, 104, 104, 104])
    correct = y_true == y_pred
    metrics["by_days_since_training"] = {
        "steps": accuracy_by_days_since_training(days, correct, 101),
        "trials": accuracy_by_days_since_training(days, correct, 101),
    }
    metrics["trial_accuracy"] = 0.5
    metrics["history"] = [
        asdict(
            EpochRecord(
                epoch, 1.0 / epoch, 1.2 / epoch, 0.4 + 0.1 * epoch, 0.3 + 0.1 * epoch, 0.5, 1000.0
            )
        )
        for epoch in (1, 2, 3)
    ]
    return {
        "architecture": "linear",
        "classes": CLASSES,
        "model_version": version,
        "dataset": "demo",
        "target": "global",
        "trained_at": trained_at,
        "metrics": metrics,
    }


def write_model(data_dir: Path, config: dict[str, Any] | None = None) -> Path:
    """Write ``models/<version>/config.json`` the way the exporter does (JSON, string keys)."""
    config = config or model_config()
    folder = data_dir / "models" / str(config["model_version"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def next_day_result() -> NextDayResult:
    """Return a next-day result of two test days with every setting."""
    days = [
        DayResult(
            day=3,
            name="day 103",
            days_since_training=2,
            trials=40,
            accuracy={"lda": {"supervised": 0.8, "pooled": 0.5, "zscore": 0.7}},
        ),
        DayResult(
            day=4,
            name="day 104",
            days_since_training=1,
            trials=35,
            accuracy={"lda": {"supervised": 0.75, "pooled": 0.45, "zscore": 0.65}},
        ),
    ]
    return NextDayResult("dataset demo", ["lda"], days, ["target_1", "target_2"])


def write_evaluation(data_dir: Path) -> Path:
    """Write the next-day result where `bcratos evaluate --protocol next-day` puts it."""
    path = data_dir / "evaluations" / "next-day.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(next_day_result().as_dict()))
    return path


def write_metrics_files(data_dir: Path) -> None:
    """Write an ingest and a sink metrics file, as the stream processors do."""
    folder = data_dir / "streams"
    folder.mkdir(parents=True, exist_ok=True)
    ingest = {
        "stage": "ingest",
        "pid": 101,
        "updated_at": 1_800_000_000.0,
        "topics": {"bcratos.raw.spikes": {"received": 50, "anonymized": 47}},
        "dead_letter_reasons": {"counts_negative": 2, "late": 1},
    }
    sink = {
        "stage": "sink",
        "pid": 102,
        "updated_at": 1_800_000_001.0,
        "read": {"bcratos.anon.spikes": 47},
        "written": {"bronze/spike_frames": 47},
        "dead_lettered": {"bcratos.anon.spikes": 4},
        "commits": 3,
        "commit_latency_p50_s": 0.2,
        "commit_latency_max_s": 0.5,
        "open_steps": 0,
    }
    (folder / "ingest-101.json").write_text(json.dumps(ingest))
    (folder / "sink-102.json").write_text(json.dumps(sink))


def write_all(data_dir: Path) -> list[SyntheticSession]:
    """Write every source of the report."""
    written = write_lake_tables(data_dir)
    write_manifest(data_dir)
    write_model(data_dir)
    write_evaluation(data_dir)
    write_metrics_files(data_dir)
    return written
