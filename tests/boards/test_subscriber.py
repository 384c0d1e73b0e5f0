"""Board model subscriber without a broker: installing, rejecting and keeping decoders."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from boards.runtime import DecoderRuntime, NoDecoderInstalled
from boards.subscriber import InstallOutcome, ModelSubscriber
from tests.support.model_artifacts import CHANNELS, SUBJECT, WINDOW, favoured_class, write_artifact
from training.announce import build_announcement
from training.signing import sign_artifact

# Nothing listens here: these tests never poll, and the consumer only needs an address.
UNUSED_BROKER = "127.0.0.1:9"
WINDOW_COUNTS = np.ones((WINDOW, CHANNELS))


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def subscriber(tmp_path: Path, key: Ed25519PrivateKey) -> Iterator[ModelSubscriber]:
    subscriber = ModelSubscriber(
        UNUSED_BROKER,
        targets=[SUBJECT, "global"],
        subject=SUBJECT,
        data_dir=tmp_path / "board",
        public_key=key.public_key(),
    )
    yield subscriber
    subscriber.close()


def _announcement(
    root: Path,
    key: Ed25519PrivateKey,
    version: str,
    *,
    favoured: str = "grasp",
    target: str = SUBJECT,
) -> dict[str, Any]:
    directory = write_artifact(root / "platform" / version, favoured=favoured)
    signed = sign_artifact(directory, target=target, model_version=version, key=key)
    return build_announcement(signed)


def _install(
    subscriber: ModelSubscriber, record: dict[str, Any], *, key: bytes | None = None
) -> InstallOutcome:
    key = record["target"].encode() if key is None else key
    outcome = subscriber.install(record, key=key, position="test[0]@0")
    assert outcome is not None
    return outcome


def _weights_path(record: dict[str, Any]) -> Path:
    return Path(record["artifact_uri"].removeprefix("file://")) / "model.safetensors"


def test_valid_announcement_installs(
    subscriber: ModelSubscriber, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    record = _announcement(tmp_path, key, "v1")

    outcome = _install(subscriber, record)

    assert outcome.installed, outcome.reason
    assert subscriber.runtime.model_version == "v1"
    assert favoured_class(subscriber.runtime.decode(WINDOW_COUNTS)) == "grasp"
    installed = tmp_path / "board" / "models" / SUBJECT / "v1"
    assert sorted(path.name for path in installed.iterdir()) == [
        "config.json",
        "model.safetensors",
        "signature.json",
    ]
    assert [path.name for path in installed.parent.iterdir()] == ["v1"]


def test_probabilities_sum_to_one(
    subscriber: ModelSubscriber, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    _install(subscriber, _announcement(tmp_path, key, "v1"))

    probabilities = subscriber.runtime.decode(WINDOW_COUNTS)

    assert probabilities.shape == (3,)
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-6)


def test_normalization_comes_from_subject_stats(
    subscriber: ModelSubscriber, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    _install(subscriber, _announcement(tmp_path, key, "v1"))

    active = subscriber.runtime.active
    assert active is not None
    assert active.mean.tolist() == [1.0] * CHANNELS
    assert active.divisor.tolist() == [2.0] * CHANNELS


def test_newer_model_replaces_active(
    subscriber: ModelSubscriber, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    _install(subscriber, _announcement(tmp_path, key, "v1", favoured="grasp"))

    outcome = _install(subscriber, _announcement(tmp_path, key, "v2", favoured="release"))

    assert outcome.installed, outcome.reason
    assert favoured_class(subscriber.runtime.decode(WINDOW_COUNTS)) == "release"


def test_old_versions_are_pruned(
    subscriber: ModelSubscriber, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    for version in ("v1", "v2", "v3"):
        _install(subscriber, _announcement(tmp_path, key, version))

    folders = sorted(path.name for path in (tmp_path / "board" / "models" / SUBJECT).iterdir())
    assert folders == ["v2", "v3"]


def _assert_rejected_keeps_v1(
    subscriber: ModelSubscriber, outcome: InstallOutcome, reason: str
) -> None:
    assert not outcome.installed
    assert reason in outcome.reason
    assert subscriber.runtime.model_version == "v1"
    assert favoured_class(subscriber.runtime.decode(WINDOW_COUNTS)) == "grasp"


def test_tampered_weights_keep_previous(
    subscriber: ModelSubscriber, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    _install(subscriber, _announcement(tmp_path, key, "v1"))
    record = _announcement(tmp_path, key, "v2", favoured="release")
    weights = _weights_path(record)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))

    outcome = _install(subscriber, record)

    _assert_rejected_keeps_v1(subscriber, outcome, "model.safetensors was changed after signing")
    leftovers = sorted(path.name for path in (tmp_path / "board" / "models" / SUBJECT).iterdir())
    assert leftovers == ["v1"]


def test_other_signing_key_keeps_previous(
    subscriber: ModelSubscriber, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    _install(subscriber, _announcement(tmp_path, key, "v1"))
    record = _announcement(tmp_path, Ed25519PrivateKey.generate(), "v2", favoured="release")

    outcome = _install(subscriber, record)

    _assert_rejected_keeps_v1(subscriber, outcome, "this board trusts")


def test_replaced_signature_keeps_previous(
    subscriber: ModelSubscriber, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    _install(subscriber, _announcement(tmp_path, key, "v1"))
    record = _announcement(tmp_path, key, "v2", favoured="release")
    record["signature"] = Ed25519PrivateKey.generate().sign(b"something else")

    outcome = _install(subscriber, record)

    _assert_rejected_keeps_v1(subscriber, outcome, "does not verify")


def test_announced_hash_mismatch_keeps_previous(
    subscriber: ModelSubscriber, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    _install(subscriber, _announcement(tmp_path, key, "v1"))
    record = _announcement(tmp_path, key, "v2", favoured="release")
    record["sha256"] = "0" * 64

    outcome = _install(subscriber, record)

    _assert_rejected_keeps_v1(subscriber, outcome, "announced sha256 of the weights")


def test_announced_config_mismatch_keeps_previous(
    subscriber: ModelSubscriber, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    _install(subscriber, _announcement(tmp_path, key, "v1"))
    record = _announcement(tmp_path, key, "v2", favoured="release")
    config = json.loads(record["config"])
    config["window"] = 50
    record["config"] = json.dumps(config)

    outcome = _install(subscriber, record)

    _assert_rejected_keeps_v1(subscriber, outcome, "differs from the signed config.json")


def test_unsigned_artifact_keeps_previous(
    subscriber: ModelSubscriber, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    _install(subscriber, _announcement(tmp_path, key, "v1"))
    record = _announcement(tmp_path, key, "v2", favoured="release")
    (_weights_path(record).parent / "signature.json").unlink()

    outcome = _install(subscriber, record)

    _assert_rejected_keeps_v1(subscriber, outcome, "is unsigned")


def test_other_artifact_type_keeps_previous(
    subscriber: ModelSubscriber, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    _install(subscriber, _announcement(tmp_path, key, "v1"))
    record = _announcement(tmp_path, key, "v2", favoured="release")
    record["artifact_type"] = "stimulation_protocol"

    outcome = _install(subscriber, record)

    _assert_rejected_keeps_v1(subscriber, outcome, "artifact type 'stimulation_protocol'")


def test_weights_not_fitting_config_keep_previous(
    subscriber: ModelSubscriber, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    _install(subscriber, _announcement(tmp_path, key, "v1"))
    directory = write_artifact(tmp_path / "platform" / "v2", favoured="release")
    config = json.loads((directory / "config.json").read_text())
    config["window"] = WINDOW + 1  # the saved linear weights expect WINDOW steps
    (directory / "config.json").write_text(json.dumps(config))
    record = build_announcement(
        sign_artifact(directory, target=SUBJECT, model_version="v2", key=key)
    )

    outcome = _install(subscriber, record)

    _assert_rejected_keeps_v1(subscriber, outcome, "weights do not fit the decoder config")


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("model_version", "../escape", "is not a safe folder name"),
        ("artifact_uri", "s3://bucket/models/v2", "scheme 's3'"),
        ("artifact_uri", "https://models.example/v2", "https_fetcher"),
        ("artifact_uri", "file://models-host/srv/v2", "not a local file:// URI"),
    ],
)
def test_bad_announcement_field_keeps_previous(
    subscriber: ModelSubscriber,
    key: Ed25519PrivateKey,
    tmp_path: Path,
    field: str,
    value: str,
    reason: str,
) -> None:
    _install(subscriber, _announcement(tmp_path, key, "v1"))
    record = _announcement(tmp_path, key, "v2", favoured="release")
    record[field] = value

    outcome = _install(subscriber, record)

    _assert_rejected_keeps_v1(subscriber, outcome, reason)


def test_key_other_than_target_keeps_previous(
    subscriber: ModelSubscriber, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    _install(subscriber, _announcement(tmp_path, key, "v1"))
    record = _announcement(tmp_path, key, "v2", favoured="release")

    outcome = _install(subscriber, record, key=b"global")

    _assert_rejected_keeps_v1(subscriber, outcome, "differs from the announced target")


def test_configured_https_fetcher_is_used(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    record = _announcement(tmp_path, key, "v1")
    source = _weights_path(record).parent
    record["artifact_uri"] = "https://models.invalid/v1"
    fetched: list[str] = []

    def fetch(uri: str, destination: Path) -> None:
        # Stands in for a download: copies the platform's local folder.
        fetched.append(uri)
        for path in source.iterdir():
            shutil.copyfile(path, destination / path.name)

    subscriber = ModelSubscriber(
        UNUSED_BROKER,
        targets=[SUBJECT],
        data_dir=tmp_path / "board",
        public_key=key.public_key(),
        https_fetcher=fetch,
    )
    try:
        outcome = _install(subscriber, record)
    finally:
        subscriber.close()

    assert outcome.installed, outcome.reason
    assert fetched == ["https://models.invalid/v1"]


def test_global_model_does_not_replace_subject_model(
    subscriber: ModelSubscriber, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    _install(subscriber, _announcement(tmp_path, key, "v1"))
    record = _announcement(tmp_path, key, "g1", favoured="release", target="global")

    assert subscriber.install(record, key=b"global", position="test[0]@1") is None
    assert subscriber.runtime.model_version == "v1"


def test_subject_model_replaces_global_model(
    subscriber: ModelSubscriber, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    _install(subscriber, _announcement(tmp_path, key, "g1", target="global"))

    outcome = _install(subscriber, _announcement(tmp_path, key, "v1", favoured="release"))

    assert outcome.installed, outcome.reason
    active = subscriber.runtime.active
    assert active is not None
    assert (active.target, active.model_version) == (SUBJECT, "v1")


def test_other_target_is_ignored(
    subscriber: ModelSubscriber, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    record = _announcement(tmp_path, key, "v1", target="p-other")

    assert subscriber.install(record, key=b"p-other", position="test[0]@0") is None
    assert subscriber.runtime.model_version is None


def test_runtime_without_decoder_raises() -> None:
    with pytest.raises(NoDecoderInstalled):
        DecoderRuntime().decode(WINDOW_COUNTS)


def test_runtime_rejects_wrong_window_shape(
    subscriber: ModelSubscriber, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    _install(subscriber, _announcement(tmp_path, key, "v1"))

    with pytest.raises(ValueError, match=r"expects a window of shape \(5, 4\)"):
        subscriber.runtime.decode(np.ones((WINDOW, CHANNELS + 1)))
