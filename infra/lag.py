"""Consumer lag of the platform's consumer groups, read from the broker.

The lag of a group on a topic is the sum over partitions of the high watermark minus the
group's committed offset (minus the low watermark where the group has committed nothing).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from bcratos.config import Settings

INGEST_TOPICS = ("raw.spikes", "raw.behavior", "raw.eskin", "raw.decoder")
"""Topics that the ingest group reads."""
SINK_TOPICS = ("anon.spikes", "anon.behavior", "anon.eskin", "anon.decoder")
"""Topics that the lake sink group reads."""


def group_lag(
    settings: Settings, group: str, short_topics: Iterable[str], *, timeout_s: float = 5.0
) -> dict[str, dict[str, Any]]:
    """Return ``{short topic: {"end_offsets": n, "lag": n}}`` for ``group``, or
    ``{"error": message}`` for a topic whose offsets could not be read."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
        }
    )
    result: dict[str, dict[str, Any]] = {}
    try:
        for short in short_topics:
            topic = settings.topic(short)
            try:
                metadata = consumer.list_topics(topic, timeout=timeout_s)
                partitions = [
                    TopicPartition(topic, partition)
                    for partition in metadata.topics[topic].partitions
                ]
                committed = consumer.committed(partitions, timeout=timeout_s)
                lag = end = 0
                for position in committed:
                    low, high = consumer.get_watermark_offsets(position, timeout=timeout_s)
                    end += high
                    start = position.offset if position.offset >= 0 else low
                    lag += max(0, high - start)
            except (KafkaException, KeyError) as exc:
                result[short] = {"error": str(exc)}
                continue
            result[short] = {"end_offsets": end, "lag": lag}
    finally:
        consumer.close()
    return result


def pipeline_lag(settings: Settings) -> int | None:
    """Return the messages that ingest and the lake sink have not yet processed, together, or
    None when an offset could not be read."""
    total = 0
    for group, topics in (
        (settings.streams.ingest_group, INGEST_TOPICS),
        (settings.streams.sink_group, SINK_TOPICS),
    ):
        for figures in group_lag(settings, group, topics).values():
            if "error" in figures:
                return None
            total += int(figures["lag"])
    return total


def topic_messages(settings: Settings, short_topic: str, *, timeout_s: float = 10.0) -> int:
    """Return the messages that ``short_topic`` keeps: high minus low watermark, summed over
    its partitions; 0 when the topic does not exist."""
    topic = settings.topic(short_topic)
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka.bootstrap, "group.id": "bcratos-watermarks"}
    )
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return 0
        total = 0
        for partition in metadata.partitions:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=timeout_s
            )
            total += high - low
        return total
    finally:
        consumer.close()
