"""Ed25519 signing of exported decoder artifacts.

Signatures use Ed25519 from the `cryptography` package: an established, audited library that
signs offline (no transparency log or network service, unlike sigstore-based tools) with a key
kept in a file. The platform keeps the private key, by default
``<data_dir>/secrets/model-signing.key`` (PEM, PKCS#8, created once with mode 0600); boards hold
only the public key ``model-signing.pub`` next to it. ``models.signing_key_file`` and
``models.public_key_file`` in the settings name other paths.

`sign_artifact` writes ``signature.json`` beside ``model.safetensors`` and ``config.json``;
`verify_artifact` (from `schemas.artifacts`, which boards use too) checks it. The format of the
signed description is documented in `schemas.artifacts`.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from schemas.artifacts import (
    ARTIFACT_FILES,
    ARTIFACT_TYPE,
    SIGNATURE_FILE,
    ArtifactDescription,
    ArtifactError,
    ArtifactTampered,
    ArtifactTypeRejected,
    SignatureInvalid,
    SignatureMalformed,
    SignatureMissing,
    file_sha256,
    load_public_key,
    public_key_id,
    read_signature_file,
    verify_artifact,
)

if TYPE_CHECKING:
    from bcratos.config import Settings

__all__ = [
    "ArtifactError",
    "ArtifactTampered",
    "ArtifactTypeRejected",
    "SignatureInvalid",
    "SignatureMalformed",
    "SignatureMissing",
    "SignedArtifact",
    "SigningKeyError",
    "ensure_signing_key",
    "load_public_key",
    "load_signing_key",
    "public_key_id",
    "public_key_path",
    "read_signed_artifact",
    "sign_artifact",
    "signing_key_path",
    "verify_artifact",
]

logger = logging.getLogger(__name__)

SIGNING_KEY_NAME: Final = "model-signing.key"
PUBLIC_KEY_NAME: Final = "model-signing.pub"


class SigningKeyError(ArtifactError):
    """The private signing key is unreadable, not Ed25519, or cannot be created."""


@dataclass(frozen=True)
class SignedArtifact:
    """An artifact directory with its verified or freshly written signature."""

    directory: Path
    description: ArtifactDescription
    signature: bytes  # 64-byte Ed25519 signature of `description.message()`

    @property
    def key_id(self) -> str:
        """Id of the key that made the signature."""
        return self.description.key_id

    @property
    def weights_sha256(self) -> str:
        """SHA-256 of ``model.safetensors``."""
        return self.description.weights_sha256


def signing_key_path(settings: Settings) -> Path:
    """Return the private key path: ``models.signing_key_file`` or the one under data_dir."""
    configured = settings.models.signing_key_file
    if configured is not None:
        return configured
    return settings.data_dir / "secrets" / SIGNING_KEY_NAME


def public_key_path(settings: Settings) -> Path:
    """Return the public key path: ``models.public_key_file`` or the one under data_dir."""
    configured = settings.models.public_key_file
    if configured is not None:
        return configured
    return settings.data_dir / "secrets" / PUBLIC_KEY_NAME


def ensure_signing_key(settings: Settings) -> Ed25519PrivateKey:
    """Load the platform's signing key, creating it and its public key on first use.

    A new private key file gets mode 0600; the public key is (re)written when it is missing.
    """
    private_path = signing_key_path(settings)
    public_path = public_key_path(settings)
    if private_path.exists():
        key = load_signing_key(private_path)
    else:
        key = _create_signing_key(private_path)
    if not public_path.exists():
        write_public_key(key.public_key(), public_path)
        logger.info(
            "wrote model signing public key %s (key id %s); give this file to the boards",
            public_path,
            public_key_id(key.public_key()),
        )
    return key


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """Read an unencrypted Ed25519 private key in PEM format, raising `SigningKeyError`."""
    try:
        data = path.read_bytes()
        mode = path.stat().st_mode
    except OSError as exc:
        raise SigningKeyError(f"cannot read the model signing key {path}: {exc}") from exc
    if mode & 0o077:
        logger.warning(
            "model signing key %s is readable by group or others (mode %o); run chmod 600 on it",
            path,
            mode & 0o777,
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        # The message of `exc` describes the format only, never the key material.
        raise SigningKeyError(f"{path} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{path} contains a {type(key).__name__}, expected an Ed25519 key")
    return key


def write_public_key(public_key: Ed25519PublicKey, path: Path) -> None:
    """Write a public key in PEM format (SubjectPublicKeyInfo)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_atomically(path, pem)


def sign_artifact(
    directory: Path, *, target: str, model_version: str, key: Ed25519PrivateKey
) -> SignedArtifact:
    """Sign the decoder artifact in `directory` and write its ``signature.json``.

    The description lists the SHA-256 of ``model.safetensors`` and ``config.json``, so both
    must exist. An existing signature file is replaced. Raises `ArtifactTampered` naming a
    missing file and `ValueError` for an empty target or model version.
    """
    for name, value in (("target", target), ("model_version", model_version)):
        if not value:
            raise ValueError(f"cannot sign {directory}: {name} is empty")

    digests = {}
    for name in ARTIFACT_FILES:
        try:
            digests[name] = file_sha256(directory / name)
        except FileNotFoundError:
            raise ArtifactTampered(
                f"cannot sign {directory}: {name} is missing; export the model first",
                file=name,
                expected="",
                actual=None,
            ) from None

    description = ArtifactDescription(
        artifact_type=ARTIFACT_TYPE,
        model_version=model_version,
        target=target,
        files=digests,
        key_id=public_key_id(key.public_key()),
    )
    signature = key.sign(description.message())
    document = {
        "description": description.to_dict(),
        "signature": base64.b64encode(signature).decode("ascii"),
    }
    _write_atomically(directory / SIGNATURE_FILE, (json.dumps(document, indent=2) + "\n").encode())
    logger.info(
        "signed model %s for target %s in %s with key %s",
        model_version,
        target,
        directory,
        description.key_id,
    )
    return SignedArtifact(directory, description, signature)


def read_signed_artifact(directory: Path, public_key: Ed25519PublicKey) -> SignedArtifact:
    """Verify an artifact as `verify_artifact` does and return it with its signature bytes."""
    description = verify_artifact(directory, public_key)
    _, signature = read_signature_file(directory)
    return SignedArtifact(directory, description, signature)


def _create_signing_key(path: Path) -> Ed25519PrivateKey:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # O_EXCL: two processes creating the key at once must not overwrite each other's key.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load_signing_key(path)
    except OSError as exc:
        raise SigningKeyError(f"cannot create the model signing key {path}: {exc}") from exc
    with os.fdopen(descriptor, "wb") as stream:
        stream.write(pem)
        stream.flush()
        os.fsync(stream.fileno())
    logger.info("created model signing key %s (key id %s)", path, public_key_id(key.public_key()))
    return key


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    temporary.replace(path)
