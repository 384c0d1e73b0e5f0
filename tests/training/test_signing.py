"""Signing and verification of decoder artifacts: each kind of tampering has its own error."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bcratos.config import load_settings
from schemas.artifacts import ArtifactDescription, canonical_json, file_sha256
from tests.support.model_artifacts import write_artifact
from training.signing import (
    ArtifactTampered,
    ArtifactTypeRejected,
    SignatureInvalid,
    SignatureMalformed,
    SignatureMissing,
    SigningKeyError,
    ensure_signing_key,
    load_public_key,
    load_signing_key,
    public_key_id,
    sign_artifact,
    verify_artifact,
)

TARGET = "p-3f9a0c"
VERSION = "2024-06-02-linear-a"


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def artifact(tmp_path: Path, key: Ed25519PrivateKey) -> Path:
    directory = write_artifact(tmp_path / VERSION)
    sign_artifact(directory, target=TARGET, model_version=VERSION, key=key)
    return directory


def test_valid_artifact_verifies(artifact: Path, key: Ed25519PrivateKey) -> None:
    description = verify_artifact(artifact, key.public_key())

    assert description.artifact_type == "decoder"
    assert description.target == TARGET
    assert description.model_version == VERSION
    assert description.key_id == public_key_id(key.public_key())
    assert description.files["model.safetensors"] == file_sha256(artifact / "model.safetensors")
    assert description.files["config.json"] == file_sha256(artifact / "config.json")


def test_signed_message_is_canonical_json(artifact: Path, key: Ed25519PrivateKey) -> None:
    document = json.loads((artifact / "signature.json").read_text())
    message = json.dumps(document["description"], sort_keys=True, separators=(",", ":"))
    signature = base64.b64decode(document["signature"])

    key.public_key().verify(signature, message.encode())  # raises when it differs


def test_flipped_weight_byte_is_tampered(artifact: Path, key: Ed25519PrivateKey) -> None:
    weights = artifact / "model.safetensors"
    signed_hash = file_sha256(weights)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))

    with pytest.raises(ArtifactTampered, match="model.safetensors") as caught:
        verify_artifact(artifact, key.public_key())
    assert caught.value.file == "model.safetensors"
    assert caught.value.expected == signed_hash
    assert caught.value.actual == file_sha256(weights)
    assert signed_hash in str(caught.value)
    assert file_sha256(weights) in str(caught.value)


def test_changed_config_is_tampered(artifact: Path, key: Ed25519PrivateKey) -> None:
    config_path = artifact / "config.json"
    config = json.loads(config_path.read_text())
    config["classes"] = ["rest", "grasp", "stimulate"]
    config_path.write_text(json.dumps(config))

    with pytest.raises(ArtifactTampered, match="config.json") as caught:
        verify_artifact(artifact, key.public_key())
    assert caught.value.file == "config.json"


def test_missing_weights_are_tampered(artifact: Path, key: Ed25519PrivateKey) -> None:
    (artifact / "model.safetensors").unlink()

    with pytest.raises(ArtifactTampered, match="missing") as caught:
        verify_artifact(artifact, key.public_key())
    assert caught.value.actual is None


def test_other_signing_key_is_invalid(artifact: Path, key: Ed25519PrivateKey) -> None:
    other = Ed25519PrivateKey.generate()
    sign_artifact(artifact, target=TARGET, model_version=VERSION, key=other)

    with pytest.raises(SignatureInvalid, match=public_key_id(other.public_key())):
        verify_artifact(artifact, key.public_key())


def test_forged_signature_with_trusted_key_id_is_invalid(
    artifact: Path, key: Ed25519PrivateKey
) -> None:
    # Another key signs a description that claims the trusted key's id.
    document = json.loads((artifact / "signature.json").read_text())
    forged = Ed25519PrivateKey.generate().sign(canonical_json(document["description"]))
    document["signature"] = base64.b64encode(forged).decode()
    (artifact / "signature.json").write_text(json.dumps(document))

    with pytest.raises(SignatureInvalid, match="does not verify"):
        verify_artifact(artifact, key.public_key())


def test_edited_description_is_invalid(artifact: Path, key: Ed25519PrivateKey) -> None:
    document = json.loads((artifact / "signature.json").read_text())
    document["description"]["target"] = "global"
    (artifact / "signature.json").write_text(json.dumps(document))

    with pytest.raises(SignatureInvalid):
        verify_artifact(artifact, key.public_key())


def test_missing_signature_file_is_rejected(artifact: Path, key: Ed25519PrivateKey) -> None:
    (artifact / "signature.json").unlink()

    with pytest.raises(SignatureMissing, match="signature.json"):
        verify_artifact(artifact, key.public_key())


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "[]",
        '{"description": {}, "signature": ""}',
        '{"description": {"artifact_type": "decoder"}}',
    ],
)
def test_malformed_signature_file_is_rejected(
    artifact: Path, key: Ed25519PrivateKey, content: str
) -> None:
    (artifact / "signature.json").write_text(content)

    with pytest.raises(SignatureMalformed):
        verify_artifact(artifact, key.public_key())


def test_unknown_artifact_type_is_rejected(artifact: Path, key: Ed25519PrivateKey) -> None:
    # A correctly signed artifact of another type, such as a stimulation protocol.
    description = ArtifactDescription(
        artifact_type="stimulation_protocol",
        model_version=VERSION,
        target=TARGET,
        files={name: file_sha256(artifact / name) for name in ("model.safetensors", "config.json")},
        key_id=public_key_id(key.public_key()),
    )
    document = {
        "description": description.to_dict(),
        "signature": base64.b64encode(key.sign(description.message())).decode(),
    }
    (artifact / "signature.json").write_text(json.dumps(document))

    with pytest.raises(ArtifactTypeRejected, match="stimulation_protocol"):
        verify_artifact(artifact, key.public_key())


def test_signing_without_weights_fails(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    directory = write_artifact(tmp_path / "model")
    (directory / "model.safetensors").unlink()

    with pytest.raises(ArtifactTampered, match="model.safetensors is missing"):
        sign_artifact(directory, target=TARGET, model_version=VERSION, key=key)


def test_signing_key_created_once_private(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)

    key = ensure_signing_key(settings)
    again = ensure_signing_key(settings)

    private_path = tmp_path / "secrets" / "model-signing.key"
    public_path = tmp_path / "secrets" / "model-signing.pub"
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    assert public_key_id(again.public_key()) == public_key_id(key.public_key())
    assert public_key_id(load_public_key(public_path)) == public_key_id(key.public_key())
    assert b"PRIVATE" not in public_path.read_bytes()


def test_configured_key_paths_are_used(tmp_path: Path) -> None:
    settings = load_settings(
        data_dir=tmp_path / "data",
        models={
            "signing_key_file": tmp_path / "keys" / "signing.pem",
            "public_key_file": tmp_path / "keys" / "signing.pub",
        },
    )

    key = ensure_signing_key(settings)

    assert public_key_id(load_signing_key(tmp_path / "keys" / "signing.pem").public_key()) == (
        public_key_id(key.public_key())
    )
    assert (tmp_path / "keys" / "signing.pub").is_file()
    assert not (tmp_path / "data" / "secrets").exists()


def test_invalid_signing_key_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "model-signing.key"
    path.write_text("not a key")

    with pytest.raises(SigningKeyError, match="not an unencrypted PEM private key"):
        load_signing_key(path)
