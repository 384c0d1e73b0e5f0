"""The training loop on small synthetic windows: learning, seeds, checkpoints, export."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from training.data import WindowDataset
from training.errors import CheckpointError
from training.export import export_model, load_model
from training.models import Decoder, build_decoder, default_config
from training.train import CHECKPOINT_FILE, EpochRecord, TrainConfig, train

WINDOW = 4
CHANNELS = 5
CLASSES = ["rest", "left", "right"]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Small models train faster on one thread, and other tests share the cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _dataset(seed: int, steps: int = 600) -> WindowDataset:
    """Steps whose label shifts the mean of one channel; every step past the first is a target."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), steps)
    features = rng.normal(size=(steps, CHANNELS)).astype(np.float32)
    features[np.arange(steps), labels] += 2.0  # (steps, channels)
    indexes = np.arange(WINDOW - 1, steps, dtype=np.int64)
    return WindowDataset(features, labels, np.zeros(steps, np.int32), indexes, WINDOW)


def _decoder(architecture: str = "gru", seed: int = 0) -> Decoder:
    config = default_config(
        architecture,  # type: ignore[arg-type]
        channels={"s": CHANNELS},
        window=WINDOW,
        classes=CLASSES,
    )
    return build_decoder(config, seed=seed)


def _config(**changes: object) -> TrainConfig:
    values: dict[str, object] = {"epochs": 4, "batch_size": 64, "progress": False, "patience": 0}
    values.update(changes)
    return TrainConfig(**values)  # type: ignore[arg-type]


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def test_training_learns_synthetic_classes() -> None:
    result = train(_decoder(), _dataset(0), _dataset(1), _config(epochs=6))
    last = result.history[-1]
    assert last.val_balanced_accuracy is not None
    assert last.val_balanced_accuracy > 0.8
    assert result.history[0].train_loss > last.train_loss
    assert result.metrics["epochs_run"] == 6


def test_same_seed_same_weights() -> None:
    first = train(_decoder(seed=3), _dataset(0), None, _config(seed=3)).model
    torch.manual_seed(99)  # the global generator does not matter
    second = train(_decoder(seed=3), _dataset(0), None, _config(seed=3)).model
    other = train(_decoder(seed=3), _dataset(0), None, _config(seed=4)).model

    for name, tensor in _weights(first).items():
        assert torch.equal(tensor, _weights(second)[name]), name
    assert any(not torch.equal(t, _weights(other)[n]) for n, t in _weights(first).items())


def test_early_stopping_keeps_best_epoch() -> None:
    # Random labels: validation loss stops improving after the first epochs.
    noise = _dataset(0)
    noise.labels = np.random.default_rng(9).integers(0, 3, noise.labels.size)
    result = train(
        _decoder(), noise, _dataset(1), _config(epochs=30, patience=2, learning_rate=0.05)
    )

    losses = [record.val_loss for record in result.history]
    best = result.metrics["best_epoch"]
    assert result.metrics["stopped_early"]
    assert len(losses) == best + 2
    assert losses[best - 1] == min(loss for loss in losses if loss is not None)


class _Interrupt(Exception):
    pass


def _stop_after(epoch: int) -> object:
    def callback(record: EpochRecord) -> None:
        if record.epoch == epoch:
            raise _Interrupt

    return callback


def test_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    whole = train(_decoder(), _dataset(0), _dataset(1), _config(epochs=5))

    checkpoint_dir = tmp_path / "run"
    with pytest.raises(_Interrupt):
        train(
            _decoder(),
            _dataset(0),
            _dataset(1),
            _config(epochs=5, checkpoint_dir=checkpoint_dir),
            on_epoch_end=_stop_after(2),  # type: ignore[arg-type]
        )
    assert (checkpoint_dir / CHECKPOINT_FILE).exists()
    torch.manual_seed(123)  # a resumed process starts from other random state
    resumed = train(
        _decoder(seed=5), _dataset(0), _dataset(1), _config(epochs=5, checkpoint_dir=checkpoint_dir)
    )

    assert [r.epoch for r in resumed.history] == [1, 2, 3, 4, 5]
    assert [r.train_loss for r in resumed.history] == [r.train_loss for r in whole.history]
    for name, tensor in _weights(whole.model).items():
        assert torch.equal(tensor, _weights(resumed.model)[name]), name


def test_checkpoint_of_other_run_rejected(tmp_path: Path) -> None:
    train(_decoder(), _dataset(0), None, _config(epochs=1, checkpoint_dir=tmp_path))
    with pytest.raises(CheckpointError, match="other options"):
        train(_decoder(), _dataset(0), None, _config(epochs=2, seed=7, checkpoint_dir=tmp_path))
    with pytest.raises(CheckpointError, match="another decoder"):
        train(_decoder("tcn"), _dataset(0), None, _config(epochs=2, checkpoint_dir=tmp_path))


def test_checkpoint_loads_without_pickle(tmp_path: Path) -> None:
    train(_decoder(), _dataset(0), None, _config(epochs=1, checkpoint_dir=tmp_path))
    state = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    assert state["epoch"] == 1
    assert set(state["rng"]) == {"torch", "cuda", "numpy", "python"}


def test_empty_training_set_rejected() -> None:
    empty = _dataset(0)
    empty.indexes = empty.indexes[:0]
    with pytest.raises(ValueError, match="no windows"):
        train(_decoder(), empty, None, _config())


def test_export_round_trip(tmp_path: Path) -> None:
    model = train(_decoder("tcn"), _dataset(0), None, _config(epochs=1)).model
    config = {**model.config.to_dict(), "metrics": {"accuracy": float("nan")}, "dataset": "d1"}

    directory = export_model(model, config, tmp_path / "v1")
    loaded, loaded_config = load_model(directory)
    x = torch.randn(2, WINDOW, CHANNELS)

    assert sorted(path.name for path in directory.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((directory / "config.json").read_text())["metrics"] == {"accuracy": None}
    assert loaded_config["dataset"] == "d1"
    torch.testing.assert_close(loaded(x), model.eval()(x))


def test_ddp_ranks_end_with_same_weights(tmp_path: Path) -> None:
    """Two CPU ranks under torchrun (gloo, loopback rendezvous) share one model."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    worker = Path(__file__).with_name("ddp_worker.py")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(worker),
        str(tmp_path),
    ]
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)

    assert finished.returncode == 0, finished.stderr[-3000:]
    rank0 = load_file(str(tmp_path / "rank0.safetensors"))
    rank1 = load_file(str(tmp_path / "rank1.safetensors"))
    for name, tensor in rank0.items():
        assert torch.equal(tensor, rank1[name]), name
    assert (tmp_path / "checkpoints" / CHECKPOINT_FILE).exists()
