"""Label-free adaptation of a decoder to a new day, from that day's unlabelled steps only.

Two methods, which can be combined:

- **Per-day z-scoring** (``ChannelStats``): each channel's counts are centred and scaled with
  the mean and standard deviation of that day's own steps. It aligns the inputs, so it only
  works when the decoder was trained on features made the same way, each training day with
  its own statistics. It shifts no weights.
- **Read-in alignment** (``align_read_in``): the new day's latent, the read-in output over its
  unlabelled steps, is given the mean and covariance of the latent over the training days
  (``LatentMoments``). The subject's read-in ``z = W x + b`` becomes
  ``z' = M (W x + b - mean_new) + mean_ref`` with ``M = C_ref^(1/2) C_new^(-1/2)``, a
  closed-form moment matching (CORAL) folded into the read-in weights. The shared core is not
  touched, and no label is used. With ``diagonal=True`` only the variance of each latent unit
  is matched, which is more robust when the new day has few steps.

``training.nextday`` measures both against supervised recalibration on real sessions, and
``bench/next_day_accuracy.py`` records its figures in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from training.models import Decoder


@dataclass(frozen=True)
class ChannelStats:
    """Per-channel mean and standard deviation of spike counts over a set of steps."""

    mean: npt.NDArray[np.float64]  # (channels,)
    std: npt.NDArray[np.float64]  # (channels,); 1.0 where a channel never changed
    steps: int

    @classmethod
    def of(cls, counts: npt.NDArray[Any]) -> ChannelStats:
        """Return the statistics of ``counts`` (steps, channels)."""
        if counts.ndim != 2 or counts.shape[0] == 0:
            raise ValueError(
                f"counts must have shape (steps, channels) with steps > 0, got {counts.shape}"
            )
        values = np.asarray(counts, dtype=np.float64)
        std = values.std(axis=0)
        return cls(values.mean(axis=0), np.where(std > 0, std, 1.0), int(values.shape[0]))

    def apply(self, counts: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        """Return z-scored features of counts shaped (..., channels)."""
        return ((np.asarray(counts, dtype=np.float64) - self.mean) / self.std).astype(np.float32)


@dataclass(frozen=True)
class LatentMoments:
    """Mean and covariance of a read-in's output over a set of steps."""

    mean: npt.NDArray[np.float64]  # (latent,)
    covariance: npt.NDArray[np.float64]  # (latent, latent)
    steps: int


@torch.no_grad()
def latent_moments(
    model: Decoder, features: npt.NDArray[np.float32], subject_index: int = 0
) -> LatentMoments:
    """Return the moments of the read-in output over ``features`` (steps, channels)."""
    latent = _read_in_output(model, features, subject_index)  # (steps, latent)
    return LatentMoments(
        mean=latent.mean(axis=0),
        covariance=np.cov(latent, rowvar=False).reshape(latent.shape[1], latent.shape[1]),
        steps=int(latent.shape[0]),
    )


def _read_in_output(
    model: Decoder, features: npt.NDArray[np.float32], subject_index: int
) -> npt.NDArray[np.float64]:
    device = next(model.parameters()).device
    x = torch.as_tensor(np.asarray(features, dtype=np.float32), device=device)[:, None, :]
    subject = torch.full((x.shape[0],), subject_index, dtype=torch.long, device=device)
    latent = model.read_in(x, subject)  # (steps, 1, latent)
    return latent[:, 0].double().cpu().numpy()  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Alignment:
    """The adapted decoder and how far the new day's latent was from the reference."""

    model: Decoder
    mean_shift: float
    """Euclidean distance between the new day's latent mean and the reference mean."""
    covariance_gap: float
    """Frobenius norm of the covariance difference, relative to the reference's norm."""


@torch.no_grad()
def align_read_in(
    model: Decoder,
    features: npt.NDArray[np.float32],
    reference: LatentMoments,
    *,
    subject_index: int = 0,
    diagonal: bool = False,
    ridge: float = 1e-3,
) -> Alignment:
    """Return a copy of ``model`` whose read-in maps the new day's steps onto the reference moments.

    ``features`` (steps, channels) are the new day's unlabelled steps, prepared as the
    decoder's inputs are. ``ridge`` is added to the new day's covariance, as a fraction of
    its mean variance, so a latent unit that never varies does not blow up the map. Raises
    ValueError for a decoder whose read-in is the identity (``latent`` unset).
    """
    if model.read_in.identity:
        raise ValueError(
            "the decoder's read-in is the identity (latent unset), so there is no read-in "
            "to align; build it with a latent width or adapt by per-day z-scoring"
        )
    new = latent_moments(model, features, subject_index)
    scale = _transfer_matrix(new.covariance, reference.covariance, diagonal=diagonal, ridge=ridge)

    adapted = copy.deepcopy(model)
    layer: nn.Linear = adapted.read_in.maps[subject_index]  # type: ignore[assignment]
    weight = layer.weight.double().cpu().numpy()  # (latent, channels)
    bias = layer.bias.double().cpu().numpy()  # (latent,)
    new_weight = scale @ weight
    new_bias = scale @ (bias - new.mean) + reference.mean
    layer.weight.copy_(torch.as_tensor(new_weight, dtype=layer.weight.dtype))
    layer.bias.copy_(torch.as_tensor(new_bias, dtype=layer.bias.dtype))

    reference_norm = float(np.linalg.norm(reference.covariance)) or 1.0
    return Alignment(
        model=adapted,
        mean_shift=float(np.linalg.norm(new.mean - reference.mean)),
        covariance_gap=float(np.linalg.norm(new.covariance - reference.covariance))
        / reference_norm,
    )


def _transfer_matrix(
    new: npt.NDArray[np.float64],
    reference: npt.NDArray[np.float64],
    *,
    diagonal: bool,
    ridge: float,
) -> npt.NDArray[np.float64]:
    """Return M with M new M^T = reference: C_ref^(1/2) C_new^(-1/2) (or its diagonal form)."""
    width = new.shape[0]
    loading = ridge * float(np.trace(new)) / width
    if diagonal:
        ratio = np.diag(reference) / (np.diag(new) + loading)
        return np.diag(np.sqrt(np.maximum(ratio, 0.0)))
    return _matrix_power(reference, 0.5) @ _matrix_power(new + loading * np.eye(width), -0.5)


def _matrix_power(matrix: npt.NDArray[np.float64], power: float) -> npt.NDArray[np.float64]:
    """Return a power of a symmetric positive semi-definite matrix through its eigenvectors."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    values = np.clip(values, 1e-12, None)
    return (vectors * values**power) @ vectors.T  # type: ignore[no-any-return]
