"""The `bcratos models` commands that need no broker: verify, list, and announce's checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bcratos.cli import app
from bcratos.config import Settings, load_settings
from tests.support.model_artifacts import SUBJECT, write_artifact
from training.gate import run_gate
from training.signing import ensure_signing_key, sign_artifact, write_public_key

runner = CliRunner()


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("BCRATOS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BCRATOS_LAKE__URI", str(tmp_path / "lake"))
    return load_settings()


@pytest.fixture
def signed_model(settings: Settings, tmp_path: Path) -> Path:
    directory = write_artifact(tmp_path / "models" / "v1")
    sign_artifact(directory, target=SUBJECT, model_version="v1", key=ensure_signing_key(settings))
    return directory


def test_verify_prints_description(signed_model: Path) -> None:
    result = runner.invoke(app, ["models", "verify", str(signed_model)])

    assert result.exit_code == 0, result.output
    description = json.loads(result.stdout)
    assert description["model_version"] == "v1"
    assert description["target"] == SUBJECT
    assert description["artifact_type"] == "decoder"


def test_verify_names_tampered_file(signed_model: Path) -> None:
    config_path = signed_model / "config.json"
    config_path.write_text(config_path.read_text().replace('"linear"', '"gru"'))

    result = runner.invoke(app, ["models", "verify", str(signed_model)])

    assert result.exit_code == 1
    assert "ArtifactTampered" in result.output
    assert "config.json" in result.output


def test_verify_rejects_unsigned_model(settings: Settings, tmp_path: Path) -> None:
    ensure_signing_key(settings)
    directory = write_artifact(tmp_path / "models" / "unsigned")

    result = runner.invoke(app, ["models", "verify", str(directory)])

    assert result.exit_code == 1
    assert "SignatureMissing" in result.output


def test_verify_with_other_public_key_fails(signed_model: Path, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    other = tmp_path / "other.pub"
    write_public_key(Ed25519PrivateKey.generate().public_key(), other)

    result = runner.invoke(
        app, ["models", "verify", str(signed_model), "--public-key", str(other)]
    )

    assert result.exit_code == 1
    assert "SignatureInvalid" in result.output


def test_verify_without_public_key_fails(tmp_path: Path, settings: Settings) -> None:
    directory = write_artifact(tmp_path / "models" / "v1")

    result = runner.invoke(app, ["models", "verify", str(directory)])

    assert result.exit_code == 1
    assert "PublicKeyError" in result.output
    assert "model-signing.pub" in result.output


def test_list_prints_registry_rows(settings: Settings, tmp_path: Path) -> None:
    directory = write_artifact(tmp_path / "models" / "v1")
    run_gate(settings, directory, target=SUBJECT, model_version="v1", score=lambda _: 0.75)

    result = runner.invoke(app, ["models", "list", "--format", "json"])

    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)
    assert row["model_version"] == "v1"
    assert row["decision"] == "announced"
    assert row["candidate_score"] == 0.75


def test_announce_without_dataset_needs_force(settings: Settings, tmp_path: Path) -> None:
    directory = write_artifact(tmp_path / "models" / "v1")
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    del config["dataset"]
    config_path.write_text(json.dumps(config))

    result = runner.invoke(app, ["models", "announce", str(directory), "--target", SUBJECT])

    assert result.exit_code == 2
    assert "--dataset" in result.output
    assert not (directory / "signature.json").exists()
