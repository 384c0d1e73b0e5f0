"""The board's decoder runtime: the installed decoder, and loading one from a verified artifact.

`load_decoder` rebuilds the module with `training.models.build_decoder` from ``config.json``
and reads the weights with `safetensors` only (never pickle or ``torch.load``). It is the only
use of `training` on the board: the architectures live there, and a board needs them to turn
a config into a module.

`DecoderRuntime.decode` reads the active decoder's reference under a lock and runs it outside
the lock; `DecoderRuntime.install` replaces that reference. A decode that started before a swap
finishes on the old decoder, and the next step uses the new one.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from schemas.artifacts import CONFIG_FILE, WEIGHTS_FILE, ArtifactDescription
from training.models import build_decoder

logger = logging.getLogger(__name__)


class DecoderLoadError(RuntimeError):
    """A verified artifact cannot be turned into a working decoder."""


class NoDecoderInstalled(RuntimeError):
    """`DecoderRuntime.decode` was called before any decoder was installed."""


@dataclass(frozen=True, eq=False)
class InstalledDecoder:
    """A decoder ready to run: its module, input layout and normalization."""

    model_version: str
    target: str
    classes: tuple[str, ...]
    window: int  # steps per input window, newest last
    channels: int  # channels of this board's subject
    step_ms: int
    module: nn.Module
    subject_index: int | None  # read-in index of the board's subject; None for one subject
    mean: npt.NDArray[np.float32]  # (channels,) training mean of the counts
    divisor: npt.NDArray[np.float32]  # (channels,) training std, 1.0 where it is 0

    def probabilities(self, window: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Return the class probabilities (classes,) of one window (window, channels) of counts."""
        counts = np.asarray(window, dtype=np.float32)
        if counts.shape != (self.window, self.channels):
            raise ValueError(
                f"decoder {self.model_version} expects a window of shape "
                f"({self.window}, {self.channels}) (steps, channels), received {counts.shape}"
            )
        features = (counts - self.mean) / self.divisor  # (window, channels)
        inputs = torch.from_numpy(features).unsqueeze(0)  # (1, window, channels)
        subject = (
            None
            if self.subject_index is None
            else torch.tensor([self.subject_index], dtype=torch.long)
        )
        with torch.inference_mode():
            logits = self.module(inputs, subject)  # (1, classes)
            probabilities = torch.softmax(logits, dim=-1)[0]  # (classes,)
        result: npt.NDArray[np.float32] = probabilities.numpy()
        return result


class DecoderRuntime:
    """The active decoder of a board, swapped between steps when a new model is installed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: InstalledDecoder | None = None

    @property
    def active(self) -> InstalledDecoder | None:
        """The decoder that the next step uses, or None before the first install."""
        with self._lock:
            return self._active

    @property
    def model_version(self) -> str | None:
        """Model version of the active decoder, or None."""
        active = self.active
        return active.model_version if active is not None else None

    def install(self, decoder: InstalledDecoder) -> InstalledDecoder | None:
        """Make `decoder` the active one and return the previous decoder."""
        with self._lock:
            previous, self._active = self._active, decoder
        return previous

    def decode(self, window: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Return the class probabilities (classes,) of one window (window, channels).

        Raises `NoDecoderInstalled` before the first install and `ValueError` for a window of
        another shape.
        """
        with self._lock:
            active = self._active
        if active is None:
            raise NoDecoderInstalled(
                "no decoder is installed yet; start the model subscriber and wait for an "
                "announcement of this board's target"
            )
        return active.probabilities(window)


def load_decoder(
    directory: Path, description: ArtifactDescription, *, subject: str | None = None
) -> InstalledDecoder:
    """Build the decoder of a verified artifact and check that it runs.

    `subject` is the board's subject pseudonym; it picks the read-in and the normalization of
    a decoder that serves several subjects. Raises `DecoderLoadError` naming what failed.
    """
    where = f"model {description.model_version} in {directory}"
    config = _read_config(directory / CONFIG_FILE, where)

    # Module and weights: a safetensors file contains only tensors, so loading runs no code.
    try:
        module = build_decoder(config)
    except ValueError as exc:
        raise DecoderLoadError(f"{where}: invalid decoder config: {exc}") from exc
    try:
        state = load_file(directory / WEIGHTS_FILE, device="cpu")
        module.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError, OSError) as exc:
        raise DecoderLoadError(f"{where}: weights do not fit the decoder config: {exc}") from exc
    module.eval()

    # Input layout of this board's subject.
    channel_counts: dict[str, int] = dict(config["channels"])
    name = _subject_name(channel_counts, subject, where)
    subject_index = list(channel_counts).index(name) if len(channel_counts) > 1 else None
    channels = channel_counts[name]
    mean, divisor = _normalization(config.get("normalization"), name, channels, where)

    decoder = InstalledDecoder(
        model_version=description.model_version,
        target=description.target,
        classes=tuple(config["classes"]),
        window=int(config["window"]),
        channels=channels,
        step_ms=int(config.get("step_ms", 50)),
        module=module,
        subject_index=subject_index,
        mean=mean,
        divisor=divisor,
    )

    # A trial step on an empty window catches a module that does not match its config.
    try:
        trial = decoder.probabilities(np.zeros((decoder.window, decoder.channels)))
    except (RuntimeError, ValueError) as exc:
        raise DecoderLoadError(f"{where}: a trial step failed: {exc}") from exc
    if trial.shape != (len(decoder.classes),) or not np.all(np.isfinite(trial)):
        raise DecoderLoadError(
            f"{where}: a trial step returned {trial!r}, expected {len(decoder.classes)} "
            f"finite probabilities"
        )
    return decoder


def _read_config(path: Path, where: str) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DecoderLoadError(f"{where}: cannot read {path.name}: {exc}") from exc
    if not isinstance(config, dict) or not isinstance(config.get("channels"), dict):
        raise DecoderLoadError(f"{where}: {path.name} must be a JSON object with a channels object")
    return config


def _subject_name(channel_counts: Mapping[str, int], subject: str | None, where: str) -> str:
    if subject is not None and subject in channel_counts:
        return subject
    if len(channel_counts) == 1:
        return next(iter(channel_counts))
    if subject is None:
        raise DecoderLoadError(
            f"{where}: the decoder serves {len(channel_counts)} subjects, so the board must "
            f"name its subject pseudonym"
        )
    raise DecoderLoadError(
        f"{where}: the decoder has no read-in for this board's subject; it serves "
        f"{len(channel_counts)} other subjects"
    )


def _normalization(
    normalization: object, subject: str, channels: int, where: str
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Return the mean and divisor that turn counts into the features the decoder learned on.

    Accepted forms: none (counts used as they are), ``{"mean": [...], "std": [...]}``, or the
    dataset manifest's ``{"subjects": {pseudonym: {"mean": [...], "std": [...]}}}``.
    """
    if normalization is None:
        return np.zeros(channels, np.float32), np.ones(channels, np.float32)
    stats = normalization
    if isinstance(stats, Mapping) and isinstance(stats.get("subjects"), Mapping):
        subjects = stats["subjects"]
        if subject not in subjects:
            raise DecoderLoadError(
                f"{where}: the normalization has no statistics for this board's subject"
            )
        stats = subjects[subject]
    if not isinstance(stats, Mapping) or "mean" not in stats or "std" not in stats:
        raise DecoderLoadError(
            f"{where}: unknown normalization format; expected mean and std per channel"
        )
    mean = np.asarray(stats["mean"], dtype=np.float32)
    std = np.asarray(stats["std"], dtype=np.float32)
    if mean.shape != (channels,) or std.shape != (channels,):
        raise DecoderLoadError(
            f"{where}: normalization has {mean.shape} means and {std.shape} stds, expected "
            f"({channels},) each"
        )
    # A channel that never changed in training has std 0; dataset preparation divides by 1.
    divisor = np.where(std > 0, std, np.float32(1.0)).astype(np.float32)
    return mean, divisor
