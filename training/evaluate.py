"""Decoder metrics: confusion matrix, balanced accuracy, per-class F1, trial-level accuracy.

Metrics are computed with numpy from a confusion matrix whose rows are true classes and
whose columns are predicted classes. Balanced accuracy is the mean recall over the classes
that occur in the true labels, so a decoder that always predicts the majority class (rest)
scores 1 / classes. F1 of a class that neither occurs nor is predicted is reported as NaN
and left out of the macro mean.

Trial-level accuracy classifies each rewarded trial once: the logits of its first ``steps``
steps from the movement start (go cue) are summed, restricted to the trial classes, and the
largest wins.

>>> matrix = confusion_matrix(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), 2)
>>> matrix.tolist()
[[1, 1], [0, 2]]
>>> float(balanced_accuracy(matrix))
0.75
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.utils.data import DataLoader

from training.data import NO_OFFSET, OUTCOMES, StepArrays, WindowDataset, collate_windows


def confusion_matrix(
    y_true: npt.NDArray[np.integer[Any]], y_pred: npt.NDArray[np.integer[Any]], n_classes: int
) -> npt.NDArray[np.int64]:
    """Return counts (true class, predicted class) as an (n_classes, n_classes) matrix."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in shape")
    outside = (y_true < 0) | (y_true >= n_classes) | (y_pred < 0) | (y_pred >= n_classes)
    if outside.any():
        raise ValueError(f"{int(outside.sum())} labels lie outside 0..{n_classes - 1}")
    flat = np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes)


def recall_per_class(matrix: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """Return each class's recall; NaN for a class without true samples."""
    support = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(matrix) / support, np.nan)


def balanced_accuracy(matrix: npt.NDArray[np.int64]) -> float:
    """Return the mean recall over classes with true samples (NaN when there are none)."""
    recall = recall_per_class(matrix)
    present = ~np.isnan(recall)
    return float(recall[present].mean()) if present.any() else float("nan")


def f1_per_class(matrix: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """Return each class's F1 score: 2 TP / (2 TP + FP + FN); NaN if the class never occurs."""
    true_positive = np.diag(matrix).astype(np.float64)
    denominator = matrix.sum(axis=0) + matrix.sum(axis=1)  # 2 TP + FP + FN
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, 2 * true_positive / denominator, np.nan)


def classification_metrics(
    y_true: npt.NDArray[np.integer[Any]],
    y_pred: npt.NDArray[np.integer[Any]],
    classes: Sequence[str],
) -> dict[str, Any]:
    """Return accuracy, balanced accuracy, macro F1, per-class F1 and the confusion matrix."""
    matrix = confusion_matrix(y_true, y_pred, len(classes))
    f1 = f1_per_class(matrix)
    total = int(matrix.sum())
    return {
        "samples": total,
        "accuracy": float(np.trace(matrix) / total) if total else float("nan"),
        "balanced_accuracy": balanced_accuracy(matrix),
        "macro_f1": float(np.nanmean(f1)) if np.any(~np.isnan(f1)) else float("nan"),
        "f1": {name: _json_float(value) for name, value in zip(classes, f1, strict=True)},
        "confusion_matrix": matrix.tolist(),
        "classes": list(classes),
    }


def _json_float(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    dataset: WindowDataset,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 1024,
) -> npt.NDArray[np.float32]:
    """Return the model's logits (samples, classes) for every window of ``dataset``, in order."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_windows)
    outputs = []
    for x, _, subject in loader:
        logits = model(x.to(device), subject.to(device))  # (batch, classes)
        outputs.append(logits.float().cpu().numpy())
    if not outputs:
        config = getattr(model, "config", None)
        return np.zeros((0, len(config.classes) if config else 0), dtype=np.float32)
    return np.concatenate(outputs)


@dataclass(frozen=True)
class TrialResult:
    """Trial-level predictions of one set of trials."""

    accuracy: float
    trials: int
    true_class: npt.NDArray[np.int64]
    """Class index (into the dataset's classes) of each trial."""
    predicted_class: npt.NDArray[np.int64]
    session_day: npt.NDArray[np.int32]
    skipped_short: int
    subject: npt.NDArray[np.int32] = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    """Subject code of each trial."""
    """Rewarded trials left out because fewer than ``steps`` of their steps had a logit."""


def trial_predictions(
    arrays: StepArrays,
    rows: npt.NDArray[np.int64],
    logits: npt.NDArray[np.float32],
    *,
    steps: int = 10,
) -> TrialResult:
    """Classify each rewarded, non-excluded trial from the summed logits of its first steps.

    ``rows`` are the dataset rows that ``logits`` (rows, classes) belong to. A trial counts
    when all of its steps 0..steps-1 from the movement start are among ``rows``. The decision
    is taken among the dataset's trial classes only, so rest and pre_movement never win.
    """
    classes = arrays.info.classes
    candidates = np.array([classes.index(name) for name in arrays.info.trial_classes])
    offsets = np.asarray(arrays.steps_from_go)[rows]
    reward = OUTCOMES.index("reward")
    in_window = (
        (offsets != NO_OFFSET)
        & (offsets >= 0)
        & (offsets < steps)
        & (np.asarray(arrays.trial_outcome)[rows] == reward)
        & ~np.asarray(arrays.excluded)[rows]
    )
    picked = rows[in_window]  # (picked,)
    sessions = np.asarray(arrays.session)[picked].astype(np.int64)
    trials = np.asarray(arrays.trial_id)[picked]
    keys = sessions * (1 << 32) + trials
    unique, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)

    summed = np.zeros((unique.size, len(classes)), dtype=np.float64)
    np.add.at(summed, inverse, logits[in_window])  # (trials, classes)
    first_row = np.zeros(unique.size, dtype=np.int64)
    first_row[inverse] = picked  # any row of the trial: they share its class and day
    complete = counts == steps

    true_class = np.asarray(arrays.trial_class)[first_row].astype(np.int64)[complete]
    predicted = candidates[np.argmax(summed[complete][:, candidates], axis=1)]
    accuracy = float(np.mean(predicted == true_class)) if true_class.size else float("nan")
    return TrialResult(
        accuracy=accuracy,
        trials=int(true_class.size),
        true_class=true_class,
        predicted_class=predicted.astype(np.int64),
        session_day=np.asarray(arrays.session_day)[first_row][complete],
        skipped_short=int((~complete).sum()),
        subject=np.asarray(arrays.subject)[first_row][complete],
    )


def accuracy_by_days_since_training(
    session_day: npt.NDArray[np.integer[Any]],
    correct: npt.NDArray[np.bool_],
    last_training_day: int | npt.NDArray[np.integer[Any]],
) -> dict[int, dict[str, float | int]]:
    """Return accuracy and sample count per day distance from the last training day.

    ``correct`` contains one flag per sample (step or trial) and ``session_day`` its day.
    ``last_training_day`` is one day for all samples, or one per sample: each subject has its
    own shifted days, so a model of several subjects is measured from each subject's last
    training day.
    """
    days_since = np.asarray(session_day, dtype=np.int64) - np.asarray(
        last_training_day, dtype=np.int64
    )
    table: dict[int, dict[str, float | int]] = {}
    for distance in np.unique(days_since):
        mask = days_since == distance
        table[int(distance)] = {
            "samples": int(mask.sum()),
            "accuracy": float(np.mean(np.asarray(correct)[mask])),
        }
    return table


def evaluate_split(
    model: nn.Module,
    arrays: StepArrays,
    dataset: WindowDataset,
    *,
    device: torch.device | str = "cpu",
    last_training_day: int | Mapping[int, int] | None = None,
    trial_steps: int = 10,
) -> dict[str, Any]:
    """Return step-level metrics, trial-level accuracy and accuracy by days since training.

    ``last_training_day`` is one day, or the last training day of each subject code. Samples
    of a subject without training steps are left out of the table by days.
    """
    logits = predict_logits(model, dataset, device=device)
    y_true = dataset.labels_of_targets()
    y_pred = logits.argmax(axis=1) if logits.size else np.zeros(0, dtype=np.int64)
    metrics = classification_metrics(y_true, y_pred, arrays.info.classes)

    trials = trial_predictions(arrays, dataset.indexes, logits, steps=trial_steps)
    metrics["trial_accuracy"] = trials.accuracy
    metrics["trials"] = trials.trials
    metrics["trials_skipped_short"] = trials.skipped_short
    if last_training_day is not None:
        step_subjects = np.asarray(arrays.subject)[dataset.indexes]
        by_days = {}
        for unit, days, correct, subjects in (
            ("steps", np.asarray(arrays.session_day)[dataset.indexes], y_pred == y_true,
             step_subjects),
            ("trials", trials.session_day, trials.predicted_class == trials.true_class,
             trials.subject),
        ):  # fmt: skip
            if isinstance(last_training_day, int):
                by_days[unit] = accuracy_by_days_since_training(days, correct, last_training_day)
                continue
            known = np.isin(subjects, list(last_training_day))
            last = np.array([last_training_day.get(int(code), 0) for code in subjects[known]])
            by_days[unit] = accuracy_by_days_since_training(days[known], correct[known], last)
        metrics["by_days_since_training"] = by_days
    return metrics
