"""Metrics on known confusion matrices, trial-level decisions and accuracy by day distance."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.data import NO_OFFSET, OUTCOMES, DatasetInfo, StepArrays
from training.evaluate import (
    accuracy_by_days_since_training,
    balanced_accuracy,
    classification_metrics,
    confusion_matrix,
    f1_per_class,
    trial_predictions,
)


def test_confusion_matrix_counts_pairs() -> None:
    matrix = confusion_matrix(np.array([0, 1, 2, 2, 2]), np.array([0, 2, 2, 2, 1]), 3)
    assert matrix.tolist() == [[1, 0, 0], [0, 0, 1], [0, 1, 2]]


def test_confusion_matrix_rejects_label_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"outside 0..1"):
        confusion_matrix(np.array([0, 2]), np.array([0, 1]), 2)


def test_balanced_accuracy_of_majority_guess_is_chance() -> None:
    # 90 rest steps and 10 movement steps, all predicted rest
    matrix = np.array([[90, 0], [10, 0]])
    assert balanced_accuracy(matrix) == 0.5


def test_balanced_accuracy_ignores_absent_class() -> None:
    matrix = np.array([[3, 1, 0], [0, 0, 0], [1, 0, 1]])
    assert balanced_accuracy(matrix) == pytest.approx((3 / 4 + 1 / 2) / 2)


def test_f1_per_class_known_values() -> None:
    # class 0: TP 3, FP 1, FN 1 -> 0.75; class 1: TP 0, FP 1, FN 0 -> 0; class 2 absent
    matrix = np.array([[3, 1, 0], [0, 0, 0], [1, 0, 0]])
    f1 = f1_per_class(matrix)
    assert f1[0] == pytest.approx(6 / 8)
    assert f1[1] == 0.0
    assert f1[2] == 0.0  # FN 1, so the class counts and scores 0


def test_f1_nan_for_class_never_seen() -> None:
    f1 = f1_per_class(np.array([[2, 0], [0, 0]]))
    assert f1[0] == 1.0
    assert math.isnan(f1[1])


def test_classification_metrics_report() -> None:
    metrics = classification_metrics(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), ["rest", "go"])
    assert metrics["accuracy"] == 0.75
    assert metrics["balanced_accuracy"] == 0.75
    assert metrics["f1"] == {"rest": pytest.approx(2 / 3), "go": pytest.approx(0.8)}
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert metrics["confusion_matrix"] == [[1, 1], [0, 2]]


def _trial_arrays() -> StepArrays:
    """One session: rest, then trial 1 (target_a, rewarded), trial 2 (target_b, aborted)."""
    classes = ["rest", "target_a", "target_b"]
    steps = 12
    trial_id = np.array([-1, 1, 1, 1, 1, -1, 2, 2, 2, 2, -1, -1])
    offsets = np.array([NO_OFFSET, 0, 1, 2, 3, NO_OFFSET, 0, 1, 2, 3, NO_OFFSET, NO_OFFSET])
    trial_class = np.where(trial_id == 1, 1, np.where(trial_id == 2, 2, -1))
    outcome = np.where(
        trial_id == 1,
        OUTCOMES.index("reward"),
        np.where(trial_id == 2, OUTCOMES.index("abort"), -1),
    )
    info = DatasetInfo(
        name="t",
        classes=classes,
        subjects=["s"],
        sessions=["sess"],
        channels={"s": 1},
        step_ms=50,
        window=1,
        trial_classes=["target_a", "target_b"],
        content_hash="sha256:0",
        table_version=0,
    )
    return StepArrays(
        info=info,
        features=np.zeros((steps, 1), np.float32),
        counts=np.zeros((steps, 1), np.int32),
        label_index=np.maximum(trial_class, 0).astype(np.int64),
        split=np.full(steps, 2, np.int8),
        subject=np.zeros(steps, np.int32),
        session=np.zeros(steps, np.int32),
        session_day=np.full(steps, 1005, np.int32),
        step_index=np.arange(steps, dtype=np.int64),
        trial_id=trial_id.astype(np.int64),
        trial_outcome=outcome.astype(np.int8),
        trial_class=trial_class.astype(np.int32),
        steps_from_go=offsets.astype(np.int32),
        excluded=(trial_id == 2),
        gap=np.zeros(steps, bool),
    )


def test_trial_decision_sums_logits_over_trial_classes() -> None:
    arrays = _trial_arrays()
    rows = np.arange(len(arrays))
    logits = np.zeros((len(arrays), 3), np.float32)
    logits[:, 0] = 100.0  # rest always wins a step, but never a trial
    logits[1, 2] = 5.0  # one step favours target_b ...
    logits[2:4, 1] = 3.0  # ... two steps favour target_a more in sum

    result = trial_predictions(arrays, rows, logits, steps=3)

    assert result.trials == 1  # the aborted trial is excluded
    assert result.true_class.tolist() == [1]
    assert result.predicted_class.tolist() == [1]
    assert result.accuracy == 1.0


def test_trial_without_all_steps_skipped() -> None:
    arrays = _trial_arrays()
    rows = np.array([1, 2])  # steps 0 and 1 of trial 1 only
    result = trial_predictions(arrays, rows, np.zeros((2, 3), np.float32), steps=3)
    assert result.trials == 0
    assert result.skipped_short == 1
    assert math.isnan(result.accuracy)


def test_accuracy_by_days_since_training() -> None:
    days = np.array([11, 11, 12, 15, 15, 15])
    correct = np.array([True, False, True, False, False, True])
    table = accuracy_by_days_since_training(days, correct, last_training_day=10)
    assert table == {
        1: {"samples": 2, "accuracy": 0.5},
        2: {"samples": 1, "accuracy": 1.0},
        5: {"samples": 3, "accuracy": pytest.approx(1 / 3)},
    }


def test_accuracy_by_days_since_each_subjects_training() -> None:
    # Two subjects whose shifted days are far apart: each counts from its own last day.
    days = np.array([11, 12, 5003, 5003])
    correct = np.array([True, False, True, True])
    last = np.array([10, 10, 5000, 5000])

    table = accuracy_by_days_since_training(days, correct, last_training_day=last)

    assert table == {
        1: {"samples": 1, "accuracy": 1.0},
        2: {"samples": 1, "accuracy": 0.0},
        3: {"samples": 2, "accuracy": 1.0},
    }


def test_docstring_examples_run() -> None:
    import doctest

    import training.evaluate

    assert doctest.testmod(training.evaluate).failed == 0


def test_empty_split_gives_nan_metrics() -> None:
    from training.data import WindowDataset
    from training.evaluate import evaluate_split
    from training.models import build_decoder, default_config

    arrays = _trial_arrays()
    config = default_config("linear", channels={"s": 1}, window=1, classes=arrays.info.classes)
    empty = WindowDataset(
        arrays.features, arrays.label_index, arrays.subject, np.zeros(0, np.int64), 1
    )

    metrics = evaluate_split(build_decoder(config), arrays, empty)

    assert metrics["samples"] == 0
    assert math.isnan(metrics["balanced_accuracy"])
    assert metrics["trials"] == 0
