"""Model artifacts: safetensors weights and a JSON config, never pickle.

``export_model`` writes ``model.safetensors`` and ``config.json`` into a directory; signing and
announcement (``training.signing``, ``training.announce``) work on that directory.
``load_model`` rebuilds the decoder from ``config.json`` with ``build_decoder`` and loads the
weights, which is what a board does after verifying the signature.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import nn

from schemas.artifacts import CONFIG_FILE, WEIGHTS_FILE
from training.models import Decoder, build_decoder


def export_model(model: nn.Module, config: Mapping[str, Any], directory: Path) -> Path:
    """Write the model's weights and ``config`` into ``directory`` (created) and return it.

    ``config`` must be JSON-able and hold the decoder keys that ``build_decoder`` reads. NaN
    and infinite numbers become null, because JSON has no such values.
    """
    directory.mkdir(parents=True, exist_ok=True)
    weights = {
        name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()
    }
    save_file(weights, str(directory / WEIGHTS_FILE))
    text = json.dumps(_finite(config), indent=2, allow_nan=False)
    (directory / CONFIG_FILE).write_text(text + "\n", encoding="utf-8")
    return directory


def load_model(directory: Path) -> tuple[Decoder, dict[str, Any]]:
    """Rebuild an exported decoder and return it (in eval mode) with its config."""
    config = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    model = build_decoder(config)
    model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)), strict=True)
    return model.eval(), config


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(key): _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value
