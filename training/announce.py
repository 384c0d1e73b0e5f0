"""Announcement of signed decoders on the compacted ``models`` topic, and the release steps.

A ModelAnnouncement (Avro, `schemas/avro/ModelAnnouncement.v1.avsc`) is keyed by its target,
so compaction keeps the latest model of each target and a board that starts later still finds
it. Its ``sha256`` is the SHA-256 of ``model.safetensors`` and its ``signature`` is the Ed25519
signature of the artifact description in ``signature.json`` (see `schemas.artifacts`), which
covers the weights and the config. ``artifact_uri`` is the ``file://`` URI of the model
directory in the embedded single-machine setup.

`release` runs the whole path for one exported model: sign it (or verify its signature),
pass it through the validation gate, announce it, and record the decision in the registry.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from confluent_kafka import KafkaError, Message, Producer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas import codec
from schemas.artifacts import SIGNATURE_FILE, canonical_json
from training.errors import TrainingError
from training.gate import (
    GateDecision,
    Score,
    decide,
    export_time,
    read_decoder_config,
    record_decision,
)
from training.signing import SignedArtifact, ensure_signing_key, read_signed_artifact, sign_artifact

if TYPE_CHECKING:
    from bcratos.config import Settings

logger = logging.getLogger(__name__)

MODELS_TOPIC: Final = "models"
RECORD_NAME: Final = "ModelAnnouncement"


class AnnounceError(TrainingError):
    """An announcement was not delivered, or the artifact does not match the request."""


@dataclass(frozen=True)
class Delivery:
    """Position of a stored announcement: topic, partition and offset."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class ReleaseResult:
    """Outcome of `release`: the gate's decision and, when announced, where it was stored."""

    signed: SignedArtifact
    decision: GateDecision
    delivery: Delivery | None  # None when the gate rejected the candidate


def build_announcement(
    signed: SignedArtifact, *, created_at: datetime | None = None
) -> dict[str, Any]:
    """Build the ModelAnnouncement record of a signed artifact.

    ``config`` is ``config.json`` as canonical JSON, ``metrics`` its numeric metrics (nested
    objects of numbers flattened to ``name.key``), and ``created_at`` defaults to the config's
    ``trained_at`` or the weights' modification time.
    """
    config = read_decoder_config(signed.directory)
    return {
        "target": signed.description.target,
        "model_version": signed.description.model_version,
        "artifact_type": signed.description.artifact_type,
        "artifact_uri": signed.directory.resolve().as_uri(),
        "sha256": signed.weights_sha256,
        "signature": signed.signature,
        "key_id": signed.key_id,
        "created_at": created_at or export_time(config, signed.directory),
        "metrics": numeric_metrics(config.get("metrics")),
        "config": canonical_json(config).decode(),
    }


def numeric_metrics(metrics: object) -> dict[str, float]:
    """Return the numbers of an export's metrics, flattening nested objects to ``name.key``.

    >>> numeric_metrics({"balanced_accuracy": 0.8, "f1": {"rest": 0.9}, "confusion": [[1]]})
    {'balanced_accuracy': 0.8, 'f1.rest': 0.9}
    """
    flat: dict[str, float] = {}
    if not isinstance(metrics, Mapping):
        return flat
    for name, value in metrics.items():
        if _is_number(value):
            flat[str(name)] = float(value)
        elif isinstance(value, Mapping):
            for key, item in value.items():
                if _is_number(item):
                    flat[f"{name}.{key}"] = float(item)
    return flat


def publish_announcement(
    bootstrap_servers: str,
    topic: str,
    announcement: Mapping[str, Any],
    *,
    timeout_s: float = 30.0,
    producer_config: Mapping[str, Any] | None = None,
) -> Delivery:
    """Publish one announcement keyed by its target and wait for Kafka to acknowledge it.

    The producer uses ``acks=all`` and idempotence. Raises `AnnounceError` when the delivery
    fails or is not confirmed within `timeout_s`.
    """
    value = codec.encode(RECORD_NAME, announcement)
    producer = Producer(
        {
            "bootstrap.servers": bootstrap_servers,
            "acks": "all",
            "enable.idempotence": True,
            "message.timeout.ms": int(timeout_s * 1000),
            "logger": logging.getLogger(f"{__name__}.librdkafka"),
            **(producer_config or {}),
        }
    )
    reports: list[tuple[KafkaError | None, Message]] = []
    producer.produce(
        topic,
        key=str(announcement["target"]).encode(),
        value=value,
        on_delivery=lambda error, message: reports.append((error, message)),
    )
    # message.timeout.ms bounds the delivery; the extra seconds let its report arrive.
    producer.flush(timeout_s + 5.0)

    what = f"announcement of model {announcement['model_version']} to {topic}"
    if not reports:
        raise AnnounceError(
            f"{what} was not confirmed within {timeout_s} s; check that a broker is reachable at "
            f"{bootstrap_servers}"
        )
    error, message = reports[0]
    if error is not None:
        raise AnnounceError(
            f"{what} failed: {error.str()}; check that the topic exists (`bcratos stack up` "
            f"creates it) and that the broker is reachable at {bootstrap_servers}"
        )
    delivery = Delivery(topic, message.partition() or 0, message.offset() or 0)
    logger.info(
        "announced model %s for target %s at %s[%d]@%d",
        announcement["model_version"],
        announcement["target"],
        delivery.topic,
        delivery.partition,
        delivery.offset,
    )
    return delivery


def announce(settings: Settings, signed: SignedArtifact, *, timeout_s: float = 30.0) -> Delivery:
    """Publish the announcement of a signed artifact to the settings' ``models`` topic."""
    return publish_announcement(
        settings.kafka.bootstrap,
        settings.topic(MODELS_TOPIC),
        build_announcement(signed),
        timeout_s=timeout_s,
    )


def sign_or_verify(
    directory: Path, *, target: str, model_version: str, key: Ed25519PrivateKey
) -> SignedArtifact:
    """Sign an unsigned artifact, or verify an existing signature against `key`.

    A signed artifact is never signed again: a file changed after signing raises
    `ArtifactTampered` instead of being covered by a new signature. Raises `AnnounceError`
    when the existing signature is for another target or model version.
    """
    if not (directory / SIGNATURE_FILE).exists():
        return sign_artifact(directory, target=target, model_version=model_version, key=key)

    signed = read_signed_artifact(directory, key.public_key())
    signed_for = (signed.description.target, signed.description.model_version)
    if signed_for != (target, model_version):
        raise AnnounceError(
            f"{directory / SIGNATURE_FILE} signs model {signed_for[1]} for target "
            f"{signed_for[0]}, but announcing model {model_version} for target {target} was "
            f"requested; pass the signed target and version, or export the model again"
        )
    return signed


def release(
    settings: Settings,
    directory: Path,
    *,
    target: str,
    model_version: str,
    score: Score | None,
    force: bool = False,
    key: Ed25519PrivateKey | None = None,
    timeout_s: float = 30.0,
) -> ReleaseResult:
    """Sign, gate, announce and record one exported model.

    Steps: 1. sign the artifact, or verify its signature, 2. score it against the target's
    current model (`training.gate.decide`; `force` announces it whatever the scores),
    3. announce it when it passed, 4. record the decision in ``registry/models``. The row is
    written after Kafka confirmed the announcement, so an announced row always has a message.
    `key` defaults to the platform's signing key (`training.signing.ensure_signing_key`).
    """
    # 1. Signature.
    signing_key = key if key is not None else ensure_signing_key(settings)
    signed = sign_or_verify(directory, target=target, model_version=model_version, key=signing_key)

    # 2. Gate.
    decision = decide(
        settings, directory, target=target, model_version=model_version, score=score, force=force
    )

    # 3. Announcement.
    delivery = announce(settings, signed, timeout_s=timeout_s) if decision.passed else None

    # 4. Registry.
    try:
        record_decision(settings, decision, directory, key_id=signed.key_id)
    except TrainingError as exc:
        if delivery is None:
            raise
        raise AnnounceError(
            f"model {model_version} for target {target} was announced at "
            f"{delivery.topic}[{delivery.partition}]@{delivery.offset}, but recording it in "
            f"the registry failed: {exc}; release it again with force to record it"
        ) from exc
    return ReleaseResult(signed, decision, delivery)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
