"""Read events of a topic and render them as JSON lines, for ``bcratos topic tail``."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any, Literal

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from schemas import codec
from schemas.counts import unpack_counts
from schemas.exceptions import SchemaError

Start = Literal["earliest", "latest"]


class TailError(RuntimeError):
    """The topic does not exist or cannot be read."""


def tail(
    bootstrap_servers: str,
    topic: str,
    *,
    count: int,
    start: Start = "earliest",
    timeout_s: float = 10.0,
) -> Iterator[dict[str, Any]]:
    """Yield up to ``count`` events of ``topic`` as JSON-ready dicts.

    ``earliest`` reads from the start of every partition; ``latest`` reads the last ``count``
    events of every partition. Iteration ends after ``count`` events or when no event arrives for
    ``timeout_s``. An event that does not decode is yielded with its error instead of its record.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": f"bcratos-tail-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )
    try:
        consumer.assign(_assignment(consumer, topic, count, start, timeout_s))
        produced = 0
        while produced < count:
            message = consumer.poll(timeout_s)
            if message is None:
                return
            if message.error() is not None:
                raise TailError(f"reading {topic} failed: {message.error()}")
            partition, offset = message.partition(), message.offset()
            yield _render(topic, partition or 0, offset or 0, message.value())
            produced += 1
    finally:
        consumer.close()


def _assignment(
    consumer: Consumer, topic: str, count: int, start: Start, timeout_s: float
) -> list[TopicPartition]:
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s)
    except KafkaException as exc:
        raise TailError(f"cannot read metadata of topic {topic}: {exc}") from exc
    described = metadata.topics.get(topic)
    if described is None or described.error is not None:
        raise TailError(f"topic {topic} does not exist; list topics with `bcratos stack status`")
    partitions = []
    for partition in sorted(described.partitions):
        if start == "earliest":
            partitions.append(TopicPartition(topic, partition, OFFSET_BEGINNING))
            continue
        low, high = consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=timeout_s
        )
        partitions.append(TopicPartition(topic, partition, max(low, high - count)))
    return partitions


def _render(topic: str, partition: int, offset: int, value: bytes | None) -> dict[str, Any]:
    event: dict[str, Any] = {"topic": topic, "partition": partition, "offset": offset}
    if value is None:
        event["error"] = "empty value (tombstone)"
        return event
    try:
        decoded = codec.decode(value, topic=topic, partition=partition, offset=offset)
    except SchemaError as exc:
        event["error"] = str(exc)
        return event
    event["schema"] = decoded.name
    event["version"] = decoded.version
    event["record"] = to_json_ready(decoded.record)
    if "counts" in decoded.record and "n_channels" in decoded.record:
        event["record"]["counts"] = unpack_counts(decoded.record).tolist()
    return event


def to_json_ready(value: Any) -> Any:
    """Convert datetimes to ISO strings and bytes to base64 so ``json.dumps`` accepts them."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, Mapping):
        return {key: to_json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_json_ready(item) for item in value]
    return value


def json_line(event: Mapping[str, Any]) -> str:
    """Render one event as a compact JSON line."""
    return json.dumps(event, separators=(",", ":"), sort_keys=False)
