"""Releasing models on the real broker: what the announcement holds, and what is not published."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from bcratos.cli import app
from bcratos.config import Settings
from schemas import codec
from schemas.artifacts import file_sha256
from tests.support.model_artifacts import (
    SUBJECT,
    delete_models_topic,
    models_settings,
    write_artifact,
    write_gold_dataset,
    write_reader_artifact,
)
from training.announce import (
    AnnounceError,
    build_announcement,
    publish_announcement,
    release,
)
from training.registry import current_model, list_models
from training.signing import ArtifactTampered, read_signed_artifact, sign_artifact

pytestmark = pytest.mark.integration


@pytest.fixture
def env(bootstrap: str, tmp_path: Path) -> Iterator[Settings]:
    settings = models_settings(bootstrap, tmp_path)
    yield settings
    delete_models_topic(settings)


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def recorded_score(directory: Path) -> float:
    """Score a model by the balanced accuracy its export recorded."""
    config = json.loads((directory / "config.json").read_text())
    return float(config["metrics"]["balanced_accuracy"])


def _read_models_topic(settings: Settings, expected: int) -> list[tuple[bytes, dict[str, Any]]]:
    """Return (key, record) of every announcement, waiting up to 20 s for `expected` of them."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap,
            "group.id": uuid.uuid4().hex,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([settings.topic("models")])
    messages: list[tuple[bytes, dict[str, Any]]] = []
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error() is not None:
                if len(messages) >= expected:
                    break
                continue
            messages.append((message.key() or b"", codec.decode(message.value()).record))
    finally:
        consumer.close()
    return messages


def test_release_announces_signed_model(
    env: Settings, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    directory = write_artifact(tmp_path / "models" / "v1", balanced_accuracy=0.8)

    result = release(
        env, directory, target=SUBJECT, model_version="v1", score=recorded_score, key=key
    )

    assert result.decision.passed
    assert result.delivery is not None
    [(message_key, record)] = _read_models_topic(env, expected=1)
    assert message_key == SUBJECT.encode()
    assert record["target"] == SUBJECT
    assert record["model_version"] == "v1"
    assert record["artifact_type"] == "decoder"
    assert record["artifact_uri"] == directory.resolve().as_uri()
    assert record["sha256"] == file_sha256(directory / "model.safetensors")
    assert record["signature"] == read_signed_artifact(directory, key.public_key()).signature
    assert record["key_id"] == result.signed.key_id
    assert record["metrics"]["balanced_accuracy"] == pytest.approx(0.8)
    assert record["metrics"]["f1.grasp"] == pytest.approx(0.8)
    assert json.loads(record["config"]) == json.loads((directory / "config.json").read_text())
    entry = current_model(env, SUBJECT)
    assert entry is not None
    assert entry.model_version == "v1"
    assert entry.key_id == result.signed.key_id


def test_rejected_candidate_is_not_announced(
    env: Settings, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    first = write_artifact(tmp_path / "models" / "v1", balanced_accuracy=0.8)
    worse = write_artifact(tmp_path / "models" / "v2", balanced_accuracy=0.7)
    release(env, first, target=SUBJECT, model_version="v1", score=recorded_score, key=key)

    result = release(env, worse, target=SUBJECT, model_version="v2", score=recorded_score, key=key)

    assert not result.decision.passed
    assert result.delivery is None
    assert [record["model_version"] for _, record in _read_models_topic(env, expected=2)] == ["v1"]
    assert [(entry.model_version, entry.decision) for entry in list_models(env, SUBJECT)] == [
        ("v1", "announced"),
        ("v2", "rejected"),
    ]


def test_release_rejects_tampered_signed_artifact(
    env: Settings, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    directory = write_artifact(tmp_path / "models" / "v1")
    sign_artifact(directory, target=SUBJECT, model_version="v1", key=key)
    weights = directory / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))

    with pytest.raises(ArtifactTampered, match="model.safetensors"):
        release(env, directory, target=SUBJECT, model_version="v1", score=recorded_score, key=key)

    assert _read_models_topic(env, expected=0) == []
    assert list_models(env) == []


def test_release_rejects_signature_for_other_target(
    env: Settings, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    directory = write_artifact(tmp_path / "models" / "v1")
    sign_artifact(directory, target="global", model_version="v1", key=key)

    with pytest.raises(AnnounceError, match="for target global"):
        release(env, directory, target=SUBJECT, model_version="v1", score=recorded_score, key=key)


def test_publish_to_missing_topic_fails(
    env: Settings, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    directory = write_artifact(tmp_path / "models" / "v1")
    signed = sign_artifact(directory, target=SUBJECT, model_version="v1", key=key)

    with pytest.raises(AnnounceError, match="failed"):
        publish_announcement(
            env.kafka.bootstrap,
            f"{env.kafka.topic_prefix}missing-models",
            build_announcement(signed),
            timeout_s=3.0,
        )


def test_cli_announce_gates_on_dataset_test_split(
    env: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_gold_dataset(env.lake_uri, "grasp-2024-06")
    monkeypatch.setenv("BCRATOS_DATA_DIR", str(env.data_dir))
    monkeypatch.setenv("BCRATOS_LAKE__URI", env.lake_uri)
    monkeypatch.setenv("BCRATOS_KAFKA__BOOTSTRAP_SERVERS", env.kafka.bootstrap)
    monkeypatch.setenv("BCRATOS_KAFKA__TOPIC_PREFIX", env.kafka.topic_prefix)
    reader = write_reader_artifact(tmp_path / "models" / "v1")  # balanced accuracy 1.0
    constant = write_artifact(tmp_path / "models" / "v2")  # always grasp: 0.5
    runner = CliRunner()

    first = runner.invoke(app, ["models", "announce", str(reader), "--target", SUBJECT])
    worse = runner.invoke(app, ["models", "announce", str(constant), "--target", SUBJECT])
    forced = runner.invoke(
        app, ["models", "announce", str(constant), "--target", SUBJECT, "--force"]
    )

    assert first.exit_code == 0, first.output
    assert "announced model v1" in first.output
    assert worse.exit_code == 1, worse.output
    assert "the gate rejected model v2" in worse.output
    assert "candidate scores 0.5000, current model v1 scores 1.0000" in worse.output
    assert forced.exit_code == 0, forced.output
    assert "forced by the operator" in forced.output
    versions = [record["model_version"] for _, record in _read_models_topic(env, expected=2)]
    assert versions == ["v1", "v2"]
    entries = {entry.model_version: entry for entry in list_models(env, SUBJECT)}
    assert entries["v2"].decision == "announced"
    assert entries["v2"].candidate_score == pytest.approx(0.5)
    assert entries["v2"].current_score == pytest.approx(1.0)
