"""The signed model artifact: its files, its signed description and how a reader verifies it.

An artifact is a directory with the decoder weights (``model.safetensors``), the decoder
configuration (``config.json``) and ``signature.json``. The signature file contains the
artifact description and an Ed25519 signature of it::

    {"description": {"artifact_type": "decoder", "files": {"config.json": "<sha256>",
                     "model.safetensors": "<sha256>"}, "key_id": "ed25519:<16 hex>",
                     "model_version": "...", "target": "..."},
     "signature": "<base64 of 64 bytes>"}

The signed message is the description as canonical JSON: keys sorted, no whitespace, UTF-8.
The training side signs (`training.signing`) and boards verify, so this contract lives here,
in the package that both sides share, and the board SDK needs nothing of `training` to check
a model. Only the public key is needed to verify.

>>> canonical_json({"b": 1, "a": [1, 2]})
b'{"a":[1,2],"b":1}'
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

ARTIFACT_TYPE: Final = "decoder"
"""The only artifact type that the platform signs and boards install."""
WEIGHTS_FILE: Final = "model.safetensors"
CONFIG_FILE: Final = "config.json"
SIGNATURE_FILE: Final = "signature.json"
ARTIFACT_FILES: Final = (WEIGHTS_FILE, CONFIG_FILE)
"""Files whose SHA-256 digests the description lists, in the order they are checked."""

_HASH_CHUNK_BYTES: Final = 1 << 20
_DESCRIPTION_KEYS: Final = frozenset(
    {"artifact_type", "model_version", "target", "files", "key_id"}
)


class ArtifactError(Exception):
    """Base class of every error raised while reading or verifying a model artifact."""


class SignatureMissing(ArtifactError):
    """The artifact directory has no ``signature.json``, so the artifact is unsigned."""


class SignatureMalformed(ArtifactError):
    """``signature.json`` is not valid JSON or lacks a field of the description."""


class SignatureInvalid(ArtifactError):
    """The signature does not verify with the public key, or another key made it."""


class ArtifactTypeRejected(ArtifactError):
    """A signed artifact of a type other than ``decoder``."""


class ArtifactTampered(ArtifactError):
    """A file of the artifact is missing or its SHA-256 digest differs from the signed one."""

    def __init__(self, message: str, *, file: str, expected: str, actual: str | None) -> None:
        super().__init__(message)
        self.file = file
        self.expected = expected
        self.actual = actual  # None when the file is missing


class PublicKeyError(ArtifactError):
    """The public key file is missing or is not an Ed25519 public key in PEM format."""


@dataclass(frozen=True)
class ArtifactDescription:
    """Signed description of an artifact: its type, model version, target and file digests."""

    artifact_type: str
    model_version: str
    target: str  # subject pseudonym or "global"
    files: Mapping[str, str]  # file name -> SHA-256 as 64 lowercase hexadecimal characters
    key_id: str  # id of the key that signs it, see `public_key_id`

    @property
    def weights_sha256(self) -> str:
        """SHA-256 of ``model.safetensors``."""
        return self.files[WEIGHTS_FILE]

    def to_dict(self) -> dict[str, Any]:
        """Return the description as a JSON-ready dict."""
        return {
            "artifact_type": self.artifact_type,
            "model_version": self.model_version,
            "target": self.target,
            "files": dict(self.files),
            "key_id": self.key_id,
        }

    def message(self) -> bytes:
        """Return the signed message: the description as canonical JSON."""
        return canonical_json(self.to_dict())

    @classmethod
    def from_dict(cls, value: object, *, source: str) -> ArtifactDescription:
        """Parse a description, raising `SignatureMalformed` that names `source` when invalid."""
        if not isinstance(value, dict):
            raise SignatureMalformed(
                f"{source}: expected the description to be a JSON object, received "
                f"{type(value).__name__}"
            )
        keys = set(value)
        if keys != _DESCRIPTION_KEYS:
            raise SignatureMalformed(
                f"{source}: expected description fields {sorted(_DESCRIPTION_KEYS)}, received "
                f"{sorted(keys)}"
            )
        for name in _DESCRIPTION_KEYS - {"files"}:
            if not isinstance(value[name], str) or not value[name]:
                raise SignatureMalformed(
                    f"{source}: description field {name!r} must be a non-empty string, "
                    f"received {value[name]!r}"
                )
        files = value["files"]
        if not isinstance(files, dict) or sorted(files) != sorted(ARTIFACT_FILES):
            listed = sorted(files) if isinstance(files, dict) else files
            raise SignatureMalformed(
                f"{source}: expected digests of exactly {sorted(ARTIFACT_FILES)}, received "
                f"{listed!r}"
            )
        for name, digest in files.items():
            if not _is_sha256_hex(digest):
                raise SignatureMalformed(
                    f"{source}: digest of {name} must be 64 lowercase hexadecimal characters, "
                    f"received {digest!r}"
                )
        return cls(
            artifact_type=value["artifact_type"],
            model_version=value["model_version"],
            target=value["target"],
            files=dict(files),
            key_id=value["key_id"],
        )


def canonical_json(value: Any) -> bytes:
    """Serialize `value` as canonical JSON: sorted keys, no whitespace, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def file_sha256(path: Path) -> str:
    """Return the SHA-256 of a file's contents as 64 lowercase hexadecimal characters."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def public_key_id(public_key: Ed25519PublicKey) -> str:
    """Return the key id ``ed25519:`` plus the first 16 hex digits of the raw key's SHA-256."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"ed25519:{hashlib.sha256(raw).hexdigest()[:16]}"


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Read an Ed25519 public key from a PEM file (SubjectPublicKeyInfo).

    Raises `PublicKeyError` when the file is missing or contains anything else.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PublicKeyError(
            f"cannot read the model signing public key {path}: {exc}; pass the path of the "
            f"platform's model-signing.pub, which the first `bcratos models announce` writes "
            f"next to the signing key"
        ) from exc
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise PublicKeyError(
            f"{path} is not a PEM public key: {exc}; expected the platform's model-signing.pub"
        ) from exc
    if not isinstance(key, Ed25519PublicKey):
        raise PublicKeyError(
            f"{path} contains a {type(key).__name__}, expected an Ed25519 public key"
        )
    return key


def read_signature_file(directory: Path) -> tuple[ArtifactDescription, bytes]:
    """Read ``signature.json`` of an artifact and return its description and signature.

    Raises `SignatureMissing` when the file does not exist and `SignatureMalformed` when it
    cannot be parsed. Nothing is verified here.
    """
    path = directory / SIGNATURE_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SignatureMissing(
            f"artifact {directory} is unsigned: {SIGNATURE_FILE} not found; sign it with "
            f"`bcratos models announce` before installing it"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SignatureMalformed(f"cannot read {path}: {exc}") from exc
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SignatureMalformed(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(document, dict) or set(document) != {"description", "signature"}:
        found = sorted(document) if isinstance(document, dict) else type(document).__name__
        raise SignatureMalformed(
            f"{path}: expected a JSON object with fields description and signature, "
            f"received {found}"
        )

    description = ArtifactDescription.from_dict(document["description"], source=str(path))
    encoded = document["signature"]
    try:
        signature = base64.b64decode(encoded, validate=True) if isinstance(encoded, str) else b""
    except binascii.Error:
        signature = b""
    if len(signature) != 64:
        raise SignatureMalformed(
            f"{path}: expected the signature as base64 of 64 bytes, received {encoded!r:.100}"
        )
    return description, signature


def verify_signature(
    description: ArtifactDescription, signature: bytes, public_key: Ed25519PublicKey, *, source: str
) -> None:
    """Check that `public_key` made `signature` over `description`.

    Raises `SignatureInvalid` when the description names another key id or the signature
    does not verify.
    """
    expected_key_id = public_key_id(public_key)
    if description.key_id != expected_key_id:
        raise SignatureInvalid(
            f"{source}: signed with key {description.key_id}, but the trusted public key is "
            f"{expected_key_id}; the artifact comes from another signer, or this board has an "
            f"outdated public key"
        )
    try:
        public_key.verify(signature, description.message())
    except InvalidSignature:
        raise SignatureInvalid(
            f"{source}: the signature does not verify with key {expected_key_id}, so the "
            f"description was changed after signing or signed by another key"
        ) from None


def check_files(directory: Path, description: ArtifactDescription) -> None:
    """Check every file digest that `description` lists, raising `ArtifactTampered`."""
    for name in ARTIFACT_FILES:
        expected = description.files[name]
        path = directory / name
        try:
            actual = file_sha256(path)
        except FileNotFoundError:
            raise ArtifactTampered(
                f"artifact {directory}: {name} is missing; expected a file with SHA-256 {expected}",
                file=name,
                expected=expected,
                actual=None,
            ) from None
        if actual != expected:
            raise ArtifactTampered(
                f"artifact {directory}: {name} was changed after signing: expected SHA-256 "
                f"{expected}, found {actual}",
                file=name,
                expected=expected,
                actual=actual,
            )


def verify_artifact(directory: Path, public_key: Ed25519PublicKey) -> ArtifactDescription:
    """Verify an artifact directory and return its signed description.

    Steps: 1. read ``signature.json``, 2. check the key id and the signature, 3. accept only
    the ``decoder`` type, 4. check the SHA-256 of every file. Raises `SignatureMissing`,
    `SignatureMalformed`, `SignatureInvalid`, `ArtifactTypeRejected` or `ArtifactTampered`.
    """
    # 1. The signed description.
    description, signature = read_signature_file(directory)
    source = f"artifact {directory}"

    # 2. Signature by the trusted key.
    verify_signature(description, signature, public_key, source=source)

    # 3. Decoders only: stimulation protocols and any other type are never installed.
    if description.artifact_type != ARTIFACT_TYPE:
        raise ArtifactTypeRejected(
            f"{source}: artifact type {description.artifact_type!r} is rejected; boards "
            f"install only {ARTIFACT_TYPE!r} artifacts"
        )

    # 4. Files as signed.
    check_files(directory, description)
    return description


def _is_sha256_hex(value: object) -> bool:
    return (
        isinstance(value, str)
        and len(value) == 64
        and all(character in "0123456789abcdef" for character in value)
    )
