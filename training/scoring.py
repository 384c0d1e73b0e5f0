"""Gate scores: balanced accuracy of an exported decoder on a gold dataset's test split.

`scorer_for_dataset` loads one gold dataset and returns a `training.gate.Score`, so the gate
measures the candidate and the current model on the same held-out steps. Only the rows of
subjects that the decoder has a read-in for are scored, and the decoder's classes must equal
the dataset's classes in the same order.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Final

import numpy as np
import numpy.typing as npt
from safetensors import SafetensorError
from safetensors.torch import load_file

from schemas.artifacts import WEIGHTS_FILE
from training.data import StepArrays, WindowDataset, load_gold, select_targets
from training.evaluate import balanced_accuracy, confusion_matrix, predict_logits
from training.gate import GateError, Score, read_decoder_config
from training.models import Decoder, build_decoder

if TYPE_CHECKING:
    from bcratos.config import Settings

logger = logging.getLogger(__name__)

TEST_SPLIT: Final = "test"


def load_exported_decoder(directory: Path) -> Decoder:
    """Build the decoder of an artifact from ``config.json`` and its safetensors weights."""
    decoder = build_decoder(read_decoder_config(directory))
    try:
        decoder.load_state_dict(load_file(directory / WEIGHTS_FILE, device="cpu"), strict=True)
    except (SafetensorError, RuntimeError, OSError) as exc:
        raise GateError(f"cannot load the weights of {directory}: {exc}") from exc
    return decoder.eval()


def score_test_split(directory: Path, arrays: StepArrays) -> float:
    """Return the balanced accuracy of the artifact in `directory` on the test split of `arrays`.

    Raises `GateError` when the decoder and the dataset do not fit: other classes, no shared
    subject, another channel count, or no test rows with a complete window.
    """
    decoder = load_exported_decoder(directory)
    config = decoder.config
    info = arrays.info
    if list(config.classes) != list(info.classes):
        raise GateError(
            f"decoder {directory} predicts classes {config.classes}, but dataset {info.name} "
            f"has {info.classes}; score it on a dataset with the same classes"
        )
    shared = [subject for subject in info.subjects if subject in config.channels]
    if not shared:
        raise GateError(
            f"decoder {directory} has no read-in for the {len(info.subjects)} subjects of "
            f"dataset {info.name}"
        )
    for subject in shared:
        if info.channels[subject] != config.channels[subject]:
            raise GateError(
                f"decoder {directory} expects {config.channels[subject]} channels for a "
                f"subject that has {info.channels[subject]} in dataset {info.name}"
            )

    selection = select_targets(arrays, config.window, splits=[TEST_SPLIT], subjects=shared)
    if selection.indexes.size == 0:
        raise GateError(
            f"dataset {info.name} has no test rows for decoder {directory}: {selection.describe()}"
        )
    read_in = list(config.channels)
    dataset = WindowDataset(
        _fit_width(arrays.features, config.max_channels),
        arrays.label_index,
        arrays.subject,
        selection.indexes,
        config.window,
        subject_index={info.subjects.index(name): read_in.index(name) for name in shared},
    )
    logits = predict_logits(decoder, dataset)  # (rows, classes)
    predicted = logits.argmax(axis=1)
    matrix = confusion_matrix(dataset.labels_of_targets(), predicted, len(info.classes))
    return balanced_accuracy(matrix)


def scorer_for_dataset(settings: Settings, dataset: str, *, cache_dir: Path | None = None) -> Score:
    """Load gold dataset `dataset` once and return a score function over its test split.

    `cache_dir` contains the dataset's numpy arrays; default ``<data_dir>/cache/datasets``.
    """
    arrays = load_gold(
        settings.lake_uri, dataset, cache_dir or settings.data_dir / "cache" / "datasets"
    )

    def score(directory: Path) -> float:
        value = score_test_split(directory, arrays)
        logger.info("model %s scores %.4f on the test split of %s", directory, value, dataset)
        return value

    return score


def _fit_width(features: npt.NDArray[np.float32], width: int) -> npt.NDArray[np.float32]:
    """Return features (steps, width): a view without the padding columns, or zero-padded."""
    if features.shape[1] >= width:
        return features[:, :width]
    padded = np.zeros((features.shape[0], width), dtype=np.float32)
    padded[:, : features.shape[1]] = features
    return padded


def dataset_of(directory: Path) -> str | None:
    """Return the name of the gold dataset an artifact was trained on, from its config.json."""
    dataset = read_decoder_config(directory).get("dataset")
    if isinstance(dataset, dict):
        dataset = dataset.get("name")
    return dataset if isinstance(dataset, str) and dataset else None
