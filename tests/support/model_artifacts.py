"""Small decoder artifacts for the signing, gate, announcement and subscriber tests.

Imported by tests as `tests.support.model_artifacts`. `write_artifact` exports a linear decoder
whose logits ignore the input and favour one class, so a test can tell which model a board
runs from the class with the highest probability. `write_gold_dataset` writes a small gold
dataset that `write_reader_artifact`'s decoder classifies perfectly. `models_settings` gives an
integration test its own models topic on the test broker.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import torch
from confluent_kafka.admin import AdminClient
from deltalake import write_deltalake
from safetensors.torch import save_file

from bcratos.config import Settings, load_settings
from infra import topics
from training.data import dataset_uri, manifest_uri
from training.models import build_decoder

SUBJECT: Final = "p-3f9a0c"
CLASSES: Final = ("rest", "grasp", "release")
CHANNELS: Final = 4
WINDOW: Final = 5


def decoder_config(balanced_accuracy: float, dataset: str = "grasp-2024-06") -> dict[str, Any]:
    """Return the config.json of a one-subject linear decoder with its export metrics."""
    return {
        "architecture": "linear",
        "channels": {SUBJECT: CHANNELS},
        "window": WINDOW,
        "classes": list(CLASSES),
        "step_ms": 50,
        "normalization": {
            "mode": "subject",
            "subjects": {
                SUBJECT: {"steps": 100, "mean": [1.0] * CHANNELS, "std": [2.0] * CHANNELS}
            },
        },
        "dataset": dataset,
        "manifest_hash": "sha256:" + "ab" * 32,
        "trained_at": "2024-06-02T10:00:00+00:00",
        "metrics": {
            "balanced_accuracy": balanced_accuracy,
            "f1": dict.fromkeys(CLASSES, balanced_accuracy),
        },
    }


def write_artifact(
    directory: Path,
    *,
    favoured: str = "grasp",
    balanced_accuracy: float = 0.8,
    dataset: str = "grasp-2024-06",
) -> Path:
    """Write model.safetensors and config.json of a decoder that always favours `favoured`."""
    state = _zero_state(dataset, balanced_accuracy)
    state["core.output.bias"][CLASSES.index(favoured)] = 10.0
    return _save(directory, state, decoder_config(balanced_accuracy, dataset))


def write_reader_artifact(directory: Path, *, dataset: str = "grasp-2024-06") -> Path:
    """Write a decoder that predicts grasp when channel 0 of the newest step is high, else rest.

    It classifies the steps of `gold_table` perfectly.
    """
    state = _zero_state(dataset, 1.0)
    state["core.output.weight"][CLASSES.index("grasp"), (WINDOW - 1) * CHANNELS] = 10.0
    state["core.output.bias"][CLASSES.index("rest")] = 5.0
    return _save(directory, state, decoder_config(1.0, dataset))


def _zero_state(dataset: str, balanced_accuracy: float) -> dict[str, torch.Tensor]:
    decoder = build_decoder(decoder_config(balanced_accuracy, dataset))
    return {name: torch.zeros_like(tensor) for name, tensor in decoder.state_dict().items()}


def _save(directory: Path, state: dict[str, torch.Tensor], config: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    save_file(state, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return directory


def favoured_class(probabilities: Any) -> str:
    """Return the class with the highest probability."""
    return CLASSES[int(max(range(len(CLASSES)), key=lambda index: probabilities[index]))]


def models_settings(bootstrap: str, data_dir: Path) -> Settings:
    """Return settings with a fresh topic prefix whose compacted models topic now exists.

    The lake and the signing keys live under `data_dir`. Delete the topic with
    `delete_models_topic` when the test ends.
    """
    prefix = f"t{uuid.uuid4().hex[:8]}."
    settings = load_settings(
        data_dir=data_dir,
        lake={"uri": str(data_dir / "lake")},
        kafka={"bootstrap_servers": bootstrap, "topic_prefix": prefix},
    )
    specs = [
        spec for spec in topics.load_spec(prefix, broker_count=1) if spec.name.endswith("models")
    ]
    topics.apply(AdminClient({"bootstrap.servers": bootstrap}), specs)
    return settings


def delete_models_topic(settings: Settings) -> None:
    """Delete the models topic that `models_settings` created."""
    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap})
    name = settings.topic("models")
    admin.delete_topics([name])[name].result()


GOLD_STEPS_PER_SESSION: Final = 40
GOLD_SCHEMA: Final = pa.schema(
    [
        ("subject_pseudonym", pa.string()),
        ("session_pseudonym", pa.string()),
        ("session_day", pa.int32()),
        ("step_index", pa.int64()),
        ("counts", pa.list_(pa.int32())),
        ("features", pa.list_(pa.float32())),
        ("label_index", pa.int64()),
        ("trial_id", pa.int64()),
        ("trial_outcome", pa.string()),
        ("trial_class", pa.string()),
        ("steps_from_go", pa.int32()),
        ("excluded", pa.bool_()),
        ("gap", pa.bool_()),
        ("split", pa.string()),
    ]
)
GOLD_MANIFEST: Final = {"classes": list(CLASSES), "content_hash": "sha256:" + "cd" * 32}


def gold_table() -> pa.Table:
    """Return gold rows of a train and a test session: channel 0 is 1.0 exactly in grasp steps."""
    rows = []
    for session, split, day in (("s-train", "train", 0), ("s-test", "test", 3)):
        for step in range(GOLD_STEPS_PER_SESSION):
            grasp = (step // 5) % 2 == 1
            features = [1.0 if grasp else 0.0] + [0.0] * (CHANNELS - 1)
            rows.append(
                {
                    "subject_pseudonym": SUBJECT,
                    "session_pseudonym": session,
                    "session_day": day,
                    "step_index": step,
                    "counts": [int(value) for value in features],
                    "features": features,
                    "label_index": CLASSES.index("grasp" if grasp else "rest"),
                    "trial_id": None,
                    "trial_outcome": None,
                    "trial_class": None,
                    "steps_from_go": None,
                    "excluded": False,
                    "gap": False,
                    "split": split,
                }
            )
    return pa.Table.from_pylist(rows, schema=GOLD_SCHEMA)


def write_gold_dataset(lake_uri: str, name: str) -> None:
    """Write `gold_table` and its manifest where `training.data.load_gold` reads dataset `name`."""
    write_deltalake(dataset_uri(lake_uri, name), gold_table())
    manifest = Path(manifest_uri(lake_uri, name))
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps(GOLD_MANIFEST))
