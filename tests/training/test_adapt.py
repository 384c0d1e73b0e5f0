"""Label-free adaptation: per-day z-scoring and read-in moment matching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.adapt import ChannelStats, align_read_in, latent_moments
from training.models import Decoder, build_decoder, default_config

CHANNELS = 6


def _decoder(architecture: str = "gru") -> Decoder:
    config = default_config(
        architecture,  # type: ignore[arg-type]
        channels={"s": CHANNELS},
        window=3,
        classes=["rest", "a", "b"],
    )
    return build_decoder(config, seed=0).eval()


def _reference_steps(steps: int = 4000) -> np.ndarray:
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(CHANNELS, CHANNELS)) / 2 + np.eye(CHANNELS)
    return (rng.normal(size=(steps, CHANNELS)) @ mixing).astype(np.float32)


def _drifted(steps: np.ndarray) -> np.ndarray:
    """The same activity on a later day: channels rescaled, offset and partly swapped."""
    rng = np.random.default_rng(1)
    drift = np.eye(CHANNELS) * rng.uniform(0.5, 2.0, CHANNELS)
    drift[[0, 1]] = drift[[1, 0]]
    return (steps @ drift + rng.normal(size=CHANNELS) * 2).astype(np.float32)


def test_channel_stats_zscore() -> None:
    counts = np.array([[1, 5], [3, 5], [5, 5]])
    stats = ChannelStats.of(counts)
    features = stats.apply(counts)

    assert stats.mean.tolist() == [3.0, 5.0]
    assert stats.std[1] == 1.0  # a channel that never changed keeps its scale
    np.testing.assert_allclose(features.mean(axis=0), [0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(features[:, 0].std(), 1.0, rtol=1e-6)
    assert features.dtype == np.float32


def test_channel_stats_reject_empty() -> None:
    with pytest.raises(ValueError, match="steps > 0"):
        ChannelStats.of(np.zeros((0, 3)))


def test_read_in_alignment_matches_reference_moments() -> None:
    model = _decoder()
    reference_steps = _reference_steps()
    reference = latent_moments(model, reference_steps)
    new_day = _drifted(reference_steps)

    alignment = align_read_in(model, new_day, reference, ridge=0.0)
    after = latent_moments(alignment.model, new_day)

    assert alignment.mean_shift > 0.5
    np.testing.assert_allclose(after.mean, reference.mean, atol=1e-4)
    np.testing.assert_allclose(after.covariance, reference.covariance, atol=1e-3)


def test_diagonal_alignment_matches_variances() -> None:
    model = _decoder("tcn")
    reference_steps = _reference_steps()
    reference = latent_moments(model, reference_steps)
    new_day = _drifted(reference_steps)

    aligned = align_read_in(model, new_day, reference, diagonal=True, ridge=0.0).model
    after = latent_moments(aligned, new_day)

    np.testing.assert_allclose(after.mean, reference.mean, atol=1e-4)
    np.testing.assert_allclose(np.diag(after.covariance), np.diag(reference.covariance), rtol=1e-3)


def test_alignment_changes_only_the_read_in() -> None:
    model = _decoder()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    reference = latent_moments(model, _reference_steps())
    aligned = align_read_in(model, _drifted(_reference_steps()), reference).model

    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), f"{name} of the original changed"
    changed = [
        name
        for name, tensor in aligned.state_dict().items()
        if not torch.equal(tensor, before[name])
    ]
    assert sorted(changed) == ["read_in.maps.0.bias", "read_in.maps.0.weight"]


def test_identity_read_in_cannot_be_aligned() -> None:
    model = _decoder("linear")
    reference = latent_moments(model, _reference_steps())
    with pytest.raises(ValueError, match="identity"):
        align_read_in(model, _reference_steps(), reference)
