"""The validate-and-anonymize stage as a pure function of one Kafka message.

`IngestPipeline.process` turns one raw message into the messages to produce: its anonymized
counterpart for an ``anon.*`` topic, or a dead-letter message that keeps the original bytes and
states the reason. A duplicate produces nothing and is counted. The faust application in
`streams.processor` feeds it and produces its output; keeping the stage free of Kafka makes it
testable and lets a benchmark measure it alone.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from schemas.codec import Codec, default_codec
from schemas.exceptions import SchemaError
from streams.anonymize import Anonymizer
from streams.exceptions import AnonymizationError
from streams.validate import Validator

logger = logging.getLogger(__name__)

ANON_TOPICS: Final[Mapping[str, str]] = {
    "AnonSpikeFrame": "anon.spikes",
    "AnonBehaviorEvent": "anon.behavior",
    "AnonEskinFrame": "anon.eskin",
    "AnonDecoderOutput": "anon.decoder",
}
"""Short topic name of each anonymized record."""

# Dead-letter headers; every value is UTF-8 text.
HEADER_SOURCE_TOPIC: Final = "bcratos.source.topic"
HEADER_SOURCE_PARTITION: Final = "bcratos.source.partition"
HEADER_SOURCE_OFFSET: Final = "bcratos.source.offset"
HEADER_STAGE: Final = "bcratos.stage"
HEADER_REASON: Final = "bcratos.reason"
HEADER_DETAIL: Final = "bcratos.detail"


@dataclass(frozen=True, slots=True)
class OutMessage:
    """One message to produce: full topic name, key, value and headers."""

    topic: str
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass
class StageCounters:
    """Events per source topic by what happened to them."""

    received: Counter[str] = field(default_factory=Counter)
    anonymized: Counter[str] = field(default_factory=Counter)
    dead_lettered: Counter[str] = field(default_factory=Counter)
    duplicates: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)  # dead-letter reason codes
    warnings: Counter[str] = field(default_factory=Counter)  # observations, e.g. sequence_gap

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """Counters as plain nested dicts, for logs and the metrics file."""
        per_topic: dict[str, dict[str, int]] = defaultdict(dict)
        for name in ("received", "anonymized", "dead_lettered", "duplicates"):
            for topic, value in getattr(self, name).items():
                per_topic[topic][name] = value
        return {
            "topics": dict(per_topic),
            "dead_letter_reasons": dict(self.reasons),
            "warnings": dict(self.warnings),
        }


def dead_letter(
    dlq_topic: str,
    *,
    source_topic: str,
    partition: int,
    offset: int,
    value: bytes | None,
    stage: str,
    reason: str,
    detail: str,
) -> OutMessage:
    """Build the dead-letter message of one rejected event, keeping its original bytes."""
    headers = (
        (HEADER_SOURCE_TOPIC, source_topic.encode()),
        (HEADER_SOURCE_PARTITION, str(partition).encode()),
        (HEADER_SOURCE_OFFSET, str(offset).encode()),
        (HEADER_STAGE, stage.encode()),
        (HEADER_REASON, reason.encode()),
        (HEADER_DETAIL, detail.encode()),
    )
    return OutMessage(dlq_topic, source_topic.encode(), value or b"", headers)


class IngestPipeline:
    """Decode, validate and anonymize raw events.

    Args:
        validator: the semantic checks and their per-board state.
        anonymizer: pseudonyms, session times and the metadata policy.
        topic_prefix: prefix of every platform topic name.
        codec: Avro codec; the bundled schemas by default.
    """

    def __init__(
        self,
        validator: Validator,
        anonymizer: Anonymizer,
        *,
        topic_prefix: str = "bcratos.",
        codec: Codec | None = None,
    ) -> None:
        self.validator = validator
        self.anonymizer = anonymizer
        self.counters = StageCounters()
        self._codec = codec or default_codec()
        self._dlq = f"{topic_prefix}dlq"
        self._anon_topics = {name: topic_prefix + short for name, short in ANON_TOPICS.items()}

    def process(
        self, topic: str, partition: int, offset: int, value: bytes | None
    ) -> OutMessage | None:
        """Return the message to produce for one raw message, or None for a duplicate.

        Steps: 1. decode, 2. validate, 3. anonymize, 4. encode the anonymized record.
        """
        self.counters.received[topic] += 1

        # 1. Decode.
        try:
            decoded = self._codec.decode(value, topic=topic, partition=partition, offset=offset)
        except SchemaError as exc:
            return self._reject(topic, partition, offset, value, "decode", exc.reason, str(exc))

        # 2. Validate.
        verdict = self.validator.check(decoded.name, decoded.record)
        for warning in verdict.warnings:
            self.counters.warnings[str(warning.check)] += 1
        if verdict.outcome == "duplicate":
            self.counters.duplicates[topic] += 1
            return None
        if verdict.finding is not None:
            finding = verdict.finding
            return self._reject(
                topic, partition, offset, value, "validate", str(finding.check), finding.reason
            )

        # 3. Anonymize.
        try:
            anon_name, anon_record = self.anonymizer.anonymize(decoded.name, decoded.record)
        except AnonymizationError as exc:
            return self._reject(
                topic, partition, offset, value, "anonymize", "anonymization_failed", str(exc)
            )

        # 4. Encode.
        try:
            anon_value = self._codec.encode(anon_name, anon_record)
        except SchemaError as exc:
            return self._reject(topic, partition, offset, value, "anonymize", exc.reason, str(exc))
        self.counters.anonymized[topic] += 1
        return OutMessage(
            self._anon_topics[anon_name], anon_record["session_pseudonym"].encode(), anon_value
        )

    def _reject(
        self,
        topic: str,
        partition: int,
        offset: int,
        value: bytes | None,
        stage: str,
        reason: str,
        detail: str,
    ) -> OutMessage:
        self.counters.dead_lettered[topic] += 1
        self.counters.reasons[reason] += 1
        return dead_letter(
            self._dlq,
            source_topic=topic,
            partition=partition,
            offset=offset,
            value=value,
            stage=stage,
            reason=reason,
            detail=detail,
        )
