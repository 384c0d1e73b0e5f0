"""Decoders: output shapes, per-subject read-ins, causality and rebuilding from a JSON config."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from training.errors import DecoderConfigError
from training.models import (
    ARCHITECTURES,
    CausalBlock,
    DecoderConfig,
    build_decoder,
    default_config,
)

CLASSES = ["rest", "target_1", "target_2"]


def _config(kind: str, **changes: Any) -> dict[str, Any]:
    config = default_config(
        kind,  # type: ignore[arg-type]
        channels={"subject-a": 6},
        window=5,
        classes=CLASSES,
    ).to_dict()
    config.update(changes)
    return config


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_logits_shape(architecture: str) -> None:
    decoder = build_decoder(_config(architecture))
    logits = decoder(torch.randn(4, 5, 6))  # (batch, time, channels)
    assert logits.shape == (4, len(CLASSES))


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_json_config_round_trip_gives_same_outputs(architecture: str) -> None:
    torch.manual_seed(0)
    decoder = build_decoder(_config(architecture))
    config = json.loads(json.dumps(decoder.config.to_dict()))
    rebuilt = build_decoder(config)
    rebuilt.load_state_dict(decoder.state_dict(), strict=True)
    x = torch.randn(3, 5, 6)

    assert rebuilt.config == decoder.config
    torch.testing.assert_close(rebuilt.eval()(x), decoder.eval()(x))


def test_artifact_keys_kept_apart() -> None:
    config = _config("linear", normalization={"mode": "subject"}, metrics={"accuracy": 0.5})
    decoder = build_decoder(config)
    assert decoder.config.extra == {
        "normalization": {"mode": "subject"},
        "metrics": {"accuracy": 0.5},
    }
    assert "metrics" not in decoder.config.to_dict()


def test_unknown_key_rejected() -> None:
    with pytest.raises(DecoderConfigError, match="hiden"):
        build_decoder(_config("gru", hiden=32))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"architecture": "lstm"}, "architecture 'lstm'"),
        ({"window": 0}, "window must be a positive integer"),
        ({"classes": ["rest"]}, "at least 2 distinct"),
        ({"channels": {}}, "at least one subject"),
        ({"channels": {"a": 6, "b": 4}, "latent": None}, "need a latent width"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ({"pooling": "mean"}, "pooling 'mean'"),
    ],
)
def test_invalid_config_names_value(change: dict[str, Any], message: str) -> None:
    with pytest.raises(DecoderConfigError, match=message):
        build_decoder(_config("linear", **change))


def test_missing_required_key_named() -> None:
    config = _config("gru")
    del config["classes"]
    with pytest.raises(DecoderConfigError, match="classes"):
        DecoderConfig.from_dict(config)


def test_linear_default_is_logistic_regression() -> None:
    decoder = build_decoder(_config("linear"))
    parameters = dict(decoder.named_parameters())
    assert decoder.read_in.identity
    assert set(parameters) == {"core.output.weight", "core.output.bias"}
    assert parameters["core.output.weight"].shape == (len(CLASSES), 5 * 6)


def test_summed_linear_reads_summed_counts() -> None:
    decoder = build_decoder(_config("linear", pooling="sum")).eval()
    x = torch.randn(2, 5, 6)
    shuffled = x[:, torch.randperm(5)]  # the order of steps does not change their sum
    torch.testing.assert_close(decoder(x), decoder(shuffled))


def test_read_in_per_subject_with_different_channels() -> None:
    config = _config("gru", channels={"subject-a": 6, "subject-b": 4}, latent=8)
    decoder = build_decoder(config).eval()
    x = torch.randn(4, 5, 6)
    x[2:, :, 4:] = 0.0  # subject b has 4 channels; the input is padded to 6
    subject = torch.tensor([0, 0, 1, 1])

    mixed = decoder(x, subject)
    alone_b = decoder(x[2:, :, :4].contiguous(), torch.tensor([1, 1]))

    assert decoder.read_in.maps[0].in_features == 6
    assert decoder.read_in.maps[1].in_features == 4
    torch.testing.assert_close(mixed[2:], alone_b)


def test_several_subjects_need_subject_index() -> None:
    decoder = build_decoder(_config("gru", channels={"a": 6, "b": 6}))
    with pytest.raises(ValueError, match="subject index per row"):
        decoder(torch.randn(2, 5, 6))


def test_wrong_window_length_rejected() -> None:
    decoder = build_decoder(_config("tcn"))
    with pytest.raises(ValueError, match=r"\(batch, 5, channels\)"):
        decoder(torch.randn(2, 7, 6))


def test_causal_block_ignores_later_steps() -> None:
    torch.manual_seed(0)
    block = CausalBlock(3, 4, kernel_size=3, dilation=2)
    x = torch.randn(1, 3, 10)  # (batch, channels, time)
    changed = x.clone()
    changed[:, :, 6:] += 5.0

    torch.testing.assert_close(block(x)[:, :, :6], block(changed)[:, :, :6])
    assert not torch.allclose(block(x)[:, :, 6:], block(changed)[:, :, 6:])
