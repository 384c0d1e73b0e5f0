"""The work of ``bcratos train`` and ``bcratos evaluate``, apart from argument parsing."""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch.distributed as dist

from bcratos.config import Settings
from training.data import SPLITS, StepArrays, WindowDataset, load_gold, select_targets
from training.errors import DatasetError
from training.evaluate import evaluate_split
from training.export import export_model
from training.models import Architecture, build_decoder, default_config
from training.nextday import (
    NextDayResult,
    TrialDays,
    days_from_arrays,
    days_from_recordings,
    run_next_day,
)
from training.train import Runtime, TrainConfig, setup_runtime, train

logger = logging.getLogger(__name__)

GLOBAL_TARGET: Final = "global"
DEFAULT_WINDOW: Final = 10  # steps per window when the manifest names none (500 ms at 50 ms)


@dataclass(frozen=True)
class TrainOutcome:
    """Model version, export folder and test metrics; ``directory`` is None on ranks above 0."""

    model_version: str
    directory: Path | None
    metrics: dict[str, Any]


def train_dataset(
    settings: Settings,
    dataset: str,
    *,
    architecture: Architecture = "gru",
    device: str = "cpu",
    target: str = GLOBAL_TARGET,
    epochs: int = 20,
    seed: int = 0,
    threads: int | None = None,
    progress: bool = True,
) -> TrainOutcome:
    """Train a decoder on a gold dataset, test it on the test split and export it (rank 0).

    ``target`` is a subject pseudonym (train on that subject's rows only) or ``global`` (all
    subjects, one read-in each). The checkpoint folder is keyed by dataset, content hash,
    target, architecture and seed, so rerunning an interrupted command resumes it. A
    successful export deletes it.
    """
    runtime = setup_runtime(device)
    arrays = _load_on_rank_zero_first(settings, dataset, runtime)
    subjects = _target_subjects(arrays, target)
    window = arrays.info.window or DEFAULT_WINDOW
    subject_index = {arrays.info.subjects.index(name): i for i, name in enumerate(subjects)}

    def windows(split: str) -> WindowDataset:
        selection = select_targets(arrays, window, splits=[split], subjects=subjects)
        return WindowDataset.from_arrays(arrays, selection, window, subject_index=subject_index)

    train_set, validation_set, test_set = windows("train"), windows("validation"), windows("test")
    decoder_config = default_config(
        architecture,
        channels={name: arrays.info.channels[name] for name in subjects},
        window=window,
        classes=arrays.info.classes,
        step_ms=arrays.info.step_ms,
    )
    run_key = _safe_name(
        f"{dataset}-{arrays.info.content_hash.split(':')[-1][:12]}-{target}-{architecture}-s{seed}"
    )
    checkpoint_dir = settings.data_dir / "checkpoints" / run_key
    train_config = TrainConfig(
        epochs=epochs,
        seed=seed,
        device=device,
        checkpoint_dir=checkpoint_dir,
        progress=progress,
        threads=threads,
    )
    result = train(
        build_decoder(decoder_config, seed=seed),
        train_set,
        validation_set,
        train_config,
        runtime=runtime,
    )

    # Shifted days differ per subject, so days since training count per subject.
    training_subjects = np.asarray(arrays.subject)[train_set.indexes]
    training_days = np.asarray(arrays.session_day)[train_set.indexes]
    last_training_day = {
        int(code): int(training_days[training_subjects == code].max())
        for code in np.unique(training_subjects)
    }
    test_metrics = evaluate_split(
        result.model, arrays, test_set, device=runtime.device, last_training_day=last_training_day
    )
    model_version = f"{_safe_name(dataset)}-{architecture}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    metrics = {
        **{key: value for key, value in test_metrics.items() if key != "classes"},
        "split": "test",
        "training": result.metrics,
        "history": [asdict(record) for record in result.history],
    }
    directory = None
    if runtime.is_main:
        config = {
            **decoder_config.to_dict(),
            "format_version": 1,
            "model_version": model_version,
            "dataset": dataset,
            "target": target,
            "normalization": _normalization(arrays, subjects),
            "manifest_hash": arrays.info.content_hash,
            "source_versions": arrays.info.manifest.get(
                "sources", arrays.info.manifest.get("source_versions", {})
            ),
            "metrics": metrics,
            "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "training": {**asdict(train_config), "checkpoint_dir": None},
        }
        directory = _export(result.model, config, settings.data_dir / "models" / model_version)
        write_drift_reference(arrays, subjects, directory)
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    if runtime.distributed:
        dist.barrier()  # the other ranks end only after rank 0 has exported
        dist.destroy_process_group()
    return TrainOutcome(model_version, directory, metrics)


DRIFT_REFERENCE_FILE = "reference.json"
"""Per-channel mean spike rates of the training data, which the drift monitor compares with."""


DRIFT_WINDOW_S = 60.0
"""Length of the windows whose spread of mean rates ``reference.json`` records."""


def write_drift_reference(arrays: StepArrays, subjects: list[str], directory: Path) -> Path:
    """Write the training split's spike-rate statistics per channel, in Hz, next to the model.

    The file is ``{"mean_rate_hz": [...], "window_sd_hz": [...], "steps": n, "subjects":
    {pseudonym: {...the same fields}}}``. ``window_sd_hz`` is the standard deviation of the mean
    rate over one-minute windows of the training sessions, so it contains both the noise of a
    one-minute estimate and the day-to-day changes that the model was trained across. Each
    subject's entry has that subject's own channel count, without the padding of ``arrays``; a
    subject without training steps has no entry. The top level is the subject's entry for a
    one-subject model, and the statistics over all subjects' steps at the padded width
    otherwise. The drift monitor compares a subject with its entry in the model it runs. The
    file is not part of the signed artifact, so a board never needs it.
    """
    step_s = arrays.info.step_ms / 1000.0
    training = (arrays.split == SPLITS.index("train")) & ~arrays.gap  # (steps,)
    per_subject = {}
    for name in subjects:
        rows = training & (arrays.subject == arrays.info.subjects.index(name))
        if not rows.any():
            logger.info("no drift reference for subject %s: it has no training steps", name)
            continue
        channels = arrays.info.channels[name]
        per_subject[name] = _rate_statistics(arrays, rows, channels, step_s)
    if len(subjects) == 1:
        rows = training & (arrays.subject == arrays.info.subjects.index(subjects[0]))
        channels = arrays.info.channels[subjects[0]]
    else:
        rows = training & np.isin(arrays.subject, [arrays.info.subjects.index(n) for n in subjects])
        channels = arrays.n_channels
    top_level = _rate_statistics(arrays, rows, channels, step_s)
    path = directory / DRIFT_REFERENCE_FILE
    path.write_text(json.dumps({**top_level, "subjects": per_subject}))
    return path


def _rate_statistics(
    arrays: StepArrays, rows: np.ndarray, channels: int, step_s: float
) -> dict[str, Any]:
    """Return the mean rate and the spread of one-minute mean rates per channel in Hz of the
    ``rows`` (a boolean mask over steps), and their number of steps."""
    counts = np.asarray(arrays.counts[rows, :channels], dtype=np.float64)  # (steps, channels)
    if counts.shape[0] == 0:
        zeros = np.zeros(channels).tolist()
        return {"mean_rate_hz": zeros, "window_sd_hz": zeros, "steps": 0}
    window = max(1, round(DRIFT_WINDOW_S / step_s))
    sessions = np.asarray(arrays.session)[rows]  # rows are sorted by session within a subject
    window_means = []
    for session in np.unique(sessions):
        session_counts = counts[sessions == session]
        for start in range(0, session_counts.shape[0] - window + 1, window):
            window_means.append(session_counts[start : start + window].mean(axis=0))
    spread = (
        np.std(window_means, axis=0, ddof=1) / step_s
        if len(window_means) >= 2
        else np.zeros(channels)
    )
    return {
        "mean_rate_hz": (counts.mean(axis=0) / step_s).round(6).tolist(),
        "window_sd_hz": np.asarray(spread).round(6).tolist(),
        "steps": int(counts.shape[0]),
    }


def _export(model: Any, config: dict[str, Any], directory: Path) -> Path:
    export_model(model, config, directory)
    logger.info(
        "exported model %s to %s: test balanced accuracy %.3f, trial accuracy %.3f",
        config["model_version"],
        directory,
        config["metrics"]["balanced_accuracy"],
        config["metrics"]["trial_accuracy"],
    )
    return directory


def _load_on_rank_zero_first(settings: Settings, dataset: str, runtime: Runtime) -> StepArrays:
    """Build the array cache on rank 0 while the other ranks wait, then open it everywhere."""
    cache_dir = settings.data_dir / "cache" / "datasets"
    if runtime.distributed and not runtime.is_main:
        dist.barrier()
    arrays = load_gold(settings.lake_uri, dataset, cache_dir)
    if runtime.distributed and runtime.is_main:
        dist.barrier()
    return arrays


def _target_subjects(arrays: StepArrays, target: str) -> list[str]:
    if target == GLOBAL_TARGET:
        return list(arrays.info.subjects)
    if target not in arrays.info.subjects:
        raise DatasetError(
            f"target {target!r} is neither 'global' nor a subject of dataset "
            f"{arrays.info.name}; its subjects are {arrays.info.subjects}"
        )
    return [target]


def _normalization(arrays: StepArrays, subjects: Sequence[str]) -> dict[str, Any]:
    """Return the manifest's normalization for the model's subjects, as boards read it."""
    manifest = arrays.info.manifest.get("normalization") or {}
    per_subject = manifest.get("subjects", {})
    missing = [name for name in subjects if name not in per_subject]
    if missing:
        raise DatasetError(
            f"the manifest of dataset {arrays.info.name} has no normalization statistics for "
            f"subjects {missing}; a board could not reproduce the features"
        )
    return {
        "mode": manifest.get("mode"),
        "statistic": manifest.get("statistic"),
        "subjects": {name: per_subject[name] for name in subjects},
    }


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def evaluate_model(settings: Settings, directory: Path, dataset: str) -> dict[str, Any]:
    """Return the test-split metrics of an exported model on a gold dataset.

    Only the rows of subjects that the model has a read-in for are scored. Raises
    DatasetError when the model and the dataset disagree on classes or channel counts.
    """
    from training.export import load_model

    model, config = load_model(directory)
    arrays = load_gold(settings.lake_uri, dataset, settings.data_dir / "cache" / "datasets")
    decoder = model.config
    if decoder.classes != arrays.info.classes:
        raise DatasetError(
            f"model {directory} predicts classes {decoder.classes}, but dataset {dataset} has "
            f"{arrays.info.classes}"
        )
    subjects = [name for name in decoder.channels if name in arrays.info.subjects]
    if not subjects:
        raise DatasetError(
            f"model {directory} has no read-in for the subjects of dataset {dataset}"
        )
    for name in subjects:
        if arrays.info.channels[name] != decoder.channels[name]:
            raise DatasetError(
                f"model {directory} expects {decoder.channels[name]} channels for subject "
                f"{name}, dataset {dataset} has {arrays.info.channels[name]}"
            )
    selection = select_targets(arrays, decoder.window, splits=["test"], subjects=subjects)
    test_set = WindowDataset(
        arrays.features[:, : decoder.max_channels],
        arrays.label_index,
        arrays.subject,
        selection.indexes,
        decoder.window,
        subject_index={
            arrays.info.subjects.index(name): decoder.subject_index(name) for name in subjects
        },
    )
    metrics = evaluate_split(model, arrays, test_set)
    return {"model_version": config.get("model_version"), "dataset": dataset, **metrics}


def next_day_protocol(
    settings: Settings,
    *,
    dataset: str | None = None,
    recordings: Sequence[Path] = (),
    subject: str | None = None,
    decoders: Sequence[str] = ("lda", "linear", "gru"),
    epochs: int = 30,
    seed: int = 0,
) -> NextDayResult:
    """Run the next-day protocol on a gold dataset or directly on limblab recording files.

    Folders among ``recordings`` stand for the ``.mat`` files inside them.
    """
    if (dataset is None) == (not recordings):
        raise ValueError("give either a dataset name or recording files, not both or neither")
    trial_days: TrialDays
    if dataset is not None:
        arrays = load_gold(settings.lake_uri, dataset, settings.data_dir / "cache" / "datasets")
        trial_days = days_from_arrays(arrays, subject=subject)
    else:
        trial_days = days_from_recordings(_expand(recordings))
    return run_next_day(trial_days, decoders, epochs=epochs, seed=seed)


def _expand(paths: Sequence[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(path.glob("*.mat"))
            if not found:
                raise FileNotFoundError(f"folder {path} contains no .mat recording files")
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            raise FileNotFoundError(f"recording {path} not found")
    return files
