"""One rank of the DDP test: trains a small GRU on synthetic windows with ``training.train``.

Run by ``test_train.py`` through ``python -m torch.distributed.run --nproc_per_node=2`` on CPU
(gloo backend). Every rank writes its final weights to ``<out>/rank<N>.safetensors``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from training.data import WindowDataset
from training.models import build_decoder, default_config
from training.train import TrainConfig, setup_runtime, train


def main(out: Path) -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 400)
    features = rng.normal(size=(400, 5)).astype(np.float32)
    features[np.arange(400), labels] += 2.0
    dataset = WindowDataset(features, labels, np.zeros(400, np.int32), np.arange(3, 400), 4)
    config = default_config("gru", channels={"s": 5}, window=4, classes=["a", "b", "c"])

    runtime = setup_runtime("cpu")
    result = train(
        build_decoder(config, seed=0),
        dataset,
        dataset,
        TrainConfig(epochs=2, batch_size=32, progress=False, checkpoint_dir=out / "checkpoints"),
        runtime=runtime,
    )
    state = {name: tensor.contiguous() for name, tensor in result.model.state_dict().items()}
    save_file(state, str(out / f"rank{runtime.rank}.safetensors"))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
