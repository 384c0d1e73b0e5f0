"""Board model subscriber: receive, verify and install decoders from the compacted models topic.

The subscriber reads the ``models`` topic from its beginning, so a board that starts late
finds the current model of its target (compaction keeps the latest announcement per key).
`ModelSubscriber.catch_up` reads up to the end of the topic and installs only the latest
announcement of the most preferred target; `ModelSubscriber.poll` then handles new ones.

Installing one announcement:

1. check the announcement: key equals target, type ``decoder``, trusted key id, safe names;
2. copy the artifact from its ``file://`` URI into ``<data_dir>/models/<target>/`` (another
   scheme needs an ``https_fetcher``; this module fetches nothing over the network);
3. verify ``signature.json`` and every file hash with the public key, and check that the
   announcement's version, hash, signature and config match the signed artifact;
4. build the decoder from safetensors weights and run a trial step (`boards.runtime`);
5. swap it into the `DecoderRuntime`.

When any step fails the previous decoder stays active and the reason is logged at WARNING.

Targets are given in order of preference, such as ``(subject_pseudonym, "global")``: an
announcement for a less preferred target never replaces a decoder of a more preferred one.

Example::

    runtime = DecoderRuntime()
    subscriber = ModelSubscriber(
        "127.0.0.1:9092", targets=[pseudonym, "global"], subject=pseudonym,
        data_dir=Path("/var/lib/board"), public_key=Path("/etc/board/model-signing.pub"),
        runtime=runtime,
    )
    subscriber.catch_up()
    probabilities = runtime.decode(window)  # window: (steps, channels) spike counts
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from boards.runtime import DecoderLoadError, DecoderRuntime, InstalledDecoder, load_decoder
from schemas import codec
from schemas.artifacts import (
    ARTIFACT_TYPE,
    CONFIG_FILE,
    SIGNATURE_FILE,
    WEIGHTS_FILE,
    ArtifactDescription,
    ArtifactError,
    ArtifactTypeRejected,
    SignatureInvalid,
    load_public_key,
    public_key_id,
    verify_artifact,
    verify_signature,
)
from schemas.exceptions import SchemaError

__all__ = [
    "AnnouncementRejected",
    "ArtifactFetchError",
    "DecoderRuntime",
    "Fetcher",
    "InstallOutcome",
    "ModelInstallError",
    "ModelSubscriber",
    "ModelSubscriberError",
    "copy_file_artifact",
]

logger = logging.getLogger(__name__)

MODELS_TOPIC: Final = "models"
RECORD_NAME: Final = "ModelAnnouncement"
DEFAULT_MAX_ARTIFACT_BYTES: Final = 256 * 1024 * 1024
"""Largest artifact file a board copies, in bytes; decoders are far smaller."""
KEPT_VERSIONS: Final = 2
"""Model versions kept on disk per target: the active one and the one before it."""

_SAFE_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_ARTIFACT_FILES: Final = (WEIGHTS_FILE, CONFIG_FILE, SIGNATURE_FILE)

Fetcher = Callable[[str, Path], None]
"""Copies the artifact files at a URI into an empty local directory."""


class ModelInstallError(RuntimeError):
    """A model announcement cannot be installed; the previous decoder stays active."""


class AnnouncementRejected(ModelInstallError):
    """An announcement that is malformed or does not match the signed artifact."""


class ArtifactFetchError(ModelInstallError):
    """The artifact cannot be copied: unsupported URI scheme, missing folder or too large."""


class ModelSubscriberError(RuntimeError):
    """The models topic cannot be read."""


@dataclass(frozen=True)
class InstallOutcome:
    """Result of handling one announcement: installed, or rejected and why."""

    target: str | None  # None when the message did not decode
    model_version: str | None
    position: str  # topic[partition]@offset of the announcement
    installed: bool
    reason: str  # "installed", or why the announcement was rejected


def copy_file_artifact(
    uri: str, destination: Path, *, max_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES
) -> None:
    """Copy the artifact files of a ``file://`` URI into `destination`.

    A file missing at the source is left out, so that verification names it. Raises
    `ArtifactFetchError` for a remote host, a missing folder or a file over `max_bytes`.
    """
    parts = urlsplit(uri)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
        raise ArtifactFetchError(
            f"artifact URI {uri} is not a local file:// URI; expected file:///path/to/model"
        )
    source = Path(unquote(parts.path))
    if not source.is_dir():
        raise ArtifactFetchError(f"artifact folder {source} of {uri} does not exist")
    for name in _ARTIFACT_FILES:
        path = source / name
        if not path.is_file():
            continue
        size = path.stat().st_size
        if size > max_bytes:
            raise ArtifactFetchError(
                f"artifact file {path} has {size} bytes, more than the limit of {max_bytes}"
            )
        shutil.copyfile(path, destination / name)


class ModelSubscriber:
    """Consume model announcements and install the decoders of this board's targets.

    Args:
        bootstrap_servers: Kafka bootstrap servers.
        targets: the targets to install, most preferred first, such as the subject
            pseudonym and ``global``.
        data_dir: the board's data folder; artifacts are copied to ``models/`` inside it.
        public_key: the platform's model signing public key, or the path of its PEM file.
        runtime: the runtime whose decoder is swapped; a new one by default.
        subject: the board's subject pseudonym, which picks the read-in and normalization of
            a decoder that serves several subjects.
        topic_prefix: prefix of the models topic name.
        https_fetcher: copies artifacts of ``https://`` URIs; without it they are rejected.
        max_artifact_bytes: largest artifact file copied, in bytes.
        consumer_config: extra librdkafka settings, applied last.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        targets: Sequence[str],
        data_dir: Path,
        public_key: Ed25519PublicKey | Path,
        runtime: DecoderRuntime | None = None,
        subject: str | None = None,
        topic_prefix: str = "bcratos.",
        https_fetcher: Fetcher | None = None,
        max_artifact_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES,
        consumer_config: Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(targets, str) or not targets:
            raise ValueError(
                f"targets must be a non-empty sequence such as [pseudonym, 'global'], "
                f"received {targets!r}"
            )
        self.runtime = runtime if runtime is not None else DecoderRuntime()
        self.topic = f"{topic_prefix}{MODELS_TOPIC}"
        self._rank = {target: index for index, target in enumerate(targets)}
        self._subject = subject
        self._public_key = (
            load_public_key(public_key) if isinstance(public_key, Path) else public_key
        )
        self._key_id = public_key_id(self._public_key)
        self._models_dir = data_dir / "models"
        self._https_fetcher = https_fetcher
        self._max_artifact_bytes = max_artifact_bytes
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap_servers,
                # A group id of its own: every board reads the whole topic and commits nothing.
                "group.id": f"bcratos-board-models-{uuid.uuid4().hex[:12]}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": True,
                "logger": logging.getLogger(f"{__name__}.librdkafka"),
                **(consumer_config or {}),
            }
        )
        self._assigned = False

    def catch_up(self, timeout_s: float = 30.0) -> list[InstallOutcome]:
        """Read the topic to its end and install the latest model of the most preferred target.

        When the latest model of a target fails, the next target in preference order is tried.
        Raises `ModelSubscriberError` when the topic does not exist.
        """
        ends = self._assign(timeout_s)
        latest: dict[str, Message] = {}
        deadline = time.monotonic() + timeout_s
        while any(position < end for position, end in ends.values()):
            if time.monotonic() >= deadline:
                logger.warning(
                    "read %s for %.0f s without reaching its end; installing from what was read",
                    self.topic,
                    timeout_s,
                )
                break
            message = self._consumer.poll(0.5)
            if message is None:
                continue
            partition = message.partition() or 0
            error = message.error()
            if error is not None and error.code() == KafkaError._PARTITION_EOF:
                # The end, even when compaction removed the record before the high watermark.
                ends[partition] = (ends[partition][1], ends[partition][1])
                continue
            if not self._readable(message):
                continue
            ends[partition] = ((message.offset() or 0) + 1, ends[partition][1])
            key = (message.key() or b"").decode(errors="replace")
            if key in self._rank:
                latest[key] = message

        outcomes = []
        for target in sorted(latest, key=self._rank.__getitem__):
            outcome = self._handle(latest[target])
            if outcome is not None:
                outcomes.append(outcome)
                if outcome.installed:
                    break
        return outcomes

    def poll(self, timeout_s: float = 1.0) -> InstallOutcome | None:
        """Handle the next announcement, if one arrives within `timeout_s`.

        Returns None when no message arrived or the message was not for this board.
        """
        if not self._assigned:
            self._assign(timeout_s=max(timeout_s, 10.0))
        message = self._consumer.poll(timeout_s)
        if message is None or not self._readable(message):
            return None
        return self._handle(message)

    def run(self, stop: threading.Event, *, poll_s: float = 0.5) -> None:
        """Catch up unless already done, then handle announcements until `stop` is set.

        Raises `ModelSubscriberError` when the topic does not exist; every failure of one
        announcement is logged and leaves the active decoder in place.
        """
        if not self._assigned:
            self.catch_up()
        while not stop.is_set():
            self.poll(poll_s)

    def close(self) -> None:
        """Close the Kafka consumer; the installed decoder stays in the runtime."""
        self._consumer.close()

    # Steps of one announcement.

    def _handle(self, message: Message) -> InstallOutcome | None:
        position = f"{message.topic()}[{message.partition()}]@{message.offset()}"
        value = message.value()
        if value is None:
            logger.info("ignored tombstone at %s; keeping the installed decoder", position)
            return None
        try:
            decoded = codec.decode(
                value, topic=message.topic(), partition=message.partition(), offset=message.offset()
            )
        except SchemaError as exc:
            return self._reject(None, None, position, exc)
        if decoded.name != RECORD_NAME:
            error = AnnouncementRejected(
                f"{position}: expected a {RECORD_NAME} record, received a {decoded.name}"
            )
            return self._reject(None, None, position, error)
        return self.install(decoded.record, key=message.key(), position=position)

    def install(
        self, record: Mapping[str, Any], *, key: bytes | None, position: str
    ) -> InstallOutcome | None:
        """Install the decoder of one decoded ModelAnnouncement record, unless it is not needed.

        `key` is the Kafka message key and `position` names the message in logs. Returns None
        for another target, a less preferred target or the active model version. Otherwise it
        returns the outcome. A rejected announcement leaves the previous decoder active.
        """
        target, version = record["target"], record["model_version"]
        if target not in self._rank:
            return None
        active = self.runtime.active
        if active is not None:
            if self._rank[target] > self._rank.get(active.target, len(self._rank)):
                logger.info(
                    "ignored model %s for target %s at %s: decoder %s of the preferred "
                    "target %s stays active",
                    version,
                    target,
                    position,
                    active.model_version,
                    active.target,
                )
                return None
            if (active.target, active.model_version) == (target, version):
                return None

        try:
            decoder = self._prepare(record, key, position)
        except (ModelInstallError, ArtifactError, DecoderLoadError, OSError) as exc:
            return self._reject(target, version, position, exc)
        except Exception as exc:  # noqa: BLE001 - an unforeseen failure must not stop the board
            return self._reject(target, version, position, exc, unexpected=True)
        previous = self.runtime.install(decoder)
        logger.info(
            "installed model %s for target %s from %s (previous: %s)",
            version,
            target,
            position,
            previous.model_version if previous is not None else "none",
        )
        keep = {version}
        if previous is not None and previous.target == target:
            keep.add(previous.model_version)
        self._prune(target, keep)
        return InstallOutcome(target, version, position, installed=True, reason="installed")

    def _prepare(
        self, record: Mapping[str, Any], key: bytes | None, position: str
    ) -> InstalledDecoder:
        # 1. The announcement itself, before anything is copied.
        _check_announcement(record, key, position, self._key_id)
        target, version = record["target"], record["model_version"]

        # 2. A staging copy, moved into place only once everything passed.
        target_dir = self._models_dir / target
        target_dir.mkdir(parents=True, exist_ok=True)
        staging = target_dir / f".staging-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            self._fetch(record["artifact_uri"], staging)

            # 3. Signature, hashes, and the announcement against the signed description.
            description = verify_artifact(staging, self._public_key)
            _check_matches(record, description, staging, self._public_key, position)

            # 4. Module and a trial step.
            decoder = load_decoder(staging, description, subject=self._subject)

            final = target_dir / version
            if final.exists():
                shutil.rmtree(final)
            staging.rename(final)
        finally:
            if staging.exists():
                shutil.rmtree(staging)
        return decoder

    def _fetch(self, uri: str, staging: Path) -> None:
        scheme = urlsplit(uri).scheme
        if scheme == "file":
            copy_file_artifact(uri, staging, max_bytes=self._max_artifact_bytes)
        elif scheme == "https" and self._https_fetcher is not None:
            self._https_fetcher(uri, staging)
        else:
            raise ArtifactFetchError(
                f"artifact URI {uri} has scheme {scheme!r}; boards copy file:// artifacts, "
                f"and https:// ones only with an https_fetcher configured"
            )

    def _reject(
        self,
        target: str | None,
        version: str | None,
        position: str,
        error: Exception,
        *,
        unexpected: bool = False,
    ) -> InstallOutcome:
        reason = f"{type(error).__name__}: {error}" if unexpected else str(error)
        logger.warning(
            "rejected model %s for target %s at %s: %s; keeping decoder %s",
            version or "(unknown)",
            target or "(unknown)",
            position,
            reason,
            self.runtime.model_version or "(none installed)",
            exc_info=unexpected,
        )
        return InstallOutcome(target, version, position, installed=False, reason=reason)

    def _prune(self, target: str, keep: set[str]) -> None:
        """Delete model folders of `target` other than the active and the previous version."""
        for folder in (self._models_dir / target).iterdir():
            if folder.is_dir() and folder.name not in keep and not folder.name.startswith("."):
                shutil.rmtree(folder, ignore_errors=True)

    # Kafka.

    def _assign(self, timeout_s: float) -> dict[int, tuple[int, int]]:
        """Assign every partition from its beginning; return (next offset, end) per partition."""
        try:
            metadata = self._consumer.list_topics(self.topic, timeout=timeout_s)
        except KafkaException as exc:
            raise ModelSubscriberError(
                f"cannot read metadata of topic {self.topic}: {exc}"
            ) from exc
        described = metadata.topics.get(self.topic)
        if described is None or described.error is not None or not described.partitions:
            raise ModelSubscriberError(
                f"topic {self.topic} does not exist; the platform creates it with "
                f"`bcratos stack up`, check the topic prefix"
            )
        # NOTE: partitions added to the topic after this call are not read; the spec has one.
        ends = {}
        for partition in sorted(described.partitions):
            low, high = self._consumer.get_watermark_offsets(
                TopicPartition(self.topic, partition), timeout=timeout_s
            )
            ends[partition] = (low, high)
        self._consumer.assign(
            [TopicPartition(self.topic, partition, OFFSET_BEGINNING) for partition in ends]
        )
        self._assigned = True
        logger.info("reading %s from the beginning, %d partitions", self.topic, len(ends))
        return ends

    def _readable(self, message: Message) -> bool:
        error = message.error()
        if error is None:
            return True
        if error.code() != KafkaError._PARTITION_EOF:
            logger.warning("reading %s failed: %s", self.topic, error.str())
        return False


def _check_announcement(
    record: Mapping[str, Any], key: bytes | None, position: str, trusted_key_id: str
) -> None:
    target, version = record["target"], record["model_version"]
    if record["artifact_type"] != ARTIFACT_TYPE:
        raise ArtifactTypeRejected(
            f"{position}: artifact type {record['artifact_type']!r} is rejected; boards "
            f"install only {ARTIFACT_TYPE!r} artifacts"
        )
    for name, value in (("target", target), ("model_version", version)):
        if not _SAFE_NAME.fullmatch(value):
            raise AnnouncementRejected(
                f"{position}: {name} {value!r} is not a safe folder name; expected letters, "
                f"digits, '.', '_' or '-' (at most 128, not starting with '.')"
            )
    if key is None or key.decode(errors="replace") != target:
        raise AnnouncementRejected(
            f"{position}: message key {key!r} differs from the announced target {target!r}"
        )
    if record["key_id"] != trusted_key_id:
        raise SignatureInvalid(
            f"{position}: signed with key {record['key_id']}, but this board trusts "
            f"{trusted_key_id}"
        )


def _check_matches(
    record: Mapping[str, Any],
    description: ArtifactDescription,
    directory: Path,
    public_key: Ed25519PublicKey,
    position: str,
) -> None:
    """Check that the announcement describes the signed artifact it points to."""
    announced = {
        "target": record["target"],
        "model_version": record["model_version"],
        "sha256 of the weights": record["sha256"],
    }
    signed = {
        "target": description.target,
        "model_version": description.model_version,
        "sha256 of the weights": description.weights_sha256,
    }
    for name, value in announced.items():
        if value != signed[name]:
            raise AnnouncementRejected(
                f"{position}: announced {name} {value!r}, but the artifact at "
                f"{record['artifact_uri']} is signed with {signed[name]!r}"
            )
    verify_signature(description, record["signature"], public_key, source=position)
    if record["config"]:
        try:
            announced_config = json.loads(record["config"])
        except ValueError as exc:
            raise AnnouncementRejected(f"{position}: config is not valid JSON: {exc}") from exc
        try:
            signed_config = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
        except ValueError as exc:
            raise AnnouncementRejected(
                f"{position}: {CONFIG_FILE} is not valid JSON: {exc}"
            ) from exc
        if announced_config != signed_config:
            raise AnnouncementRejected(
                f"{position}: the announced config differs from the signed {CONFIG_FILE}"
            )
