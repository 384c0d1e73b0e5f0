"""Board publisher: Avro events to the raw topics, durable through link outages and restarts.

Every event gets the board's next sequence number, is encoded with Avro single-object encoding,
appended to the board's on-disk spool and handed to an idempotent confluent-kafka producer
(``acks=all``, key = board id). Kafka's delivery report moves the spool's acknowledged position.
When a delivery fails (broker unreachable until ``message_timeout_s``) or the producer's local
queue is full, the publisher stops handing new events to the producer. They stay in the spool,
and once the broker is reachable again the spool is sent from the first unacknowledged event,
in order.
A publisher restarted on the same folder resends what was not acknowledged before it stopped.

Redelivery after a failure can repeat an event Kafka had already stored, because its
acknowledgement was lost with the link. The stream processors drop such repeats by board id and
sequence number.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from boards.spool import Spool
from schemas import codec

logger = logging.getLogger(__name__)

RAW_TOPICS = {
    "SpikeFrame": "raw.spikes",
    "BehaviorEvent": "raw.behavior",
    "EskinFrame": "raw.eskin",
    "DecoderOutput": "raw.decoder",
}
SEQUENCE_BLOCK = 100_000
"""Sequence numbers reserved on disk at a time; a restart skips the unused rest of a block."""
DRAIN_BATCH = 5_000
"""Spooled events handed to the producer per call, so one publish() never stalls for long."""


class PublishError(RuntimeError):
    """An event cannot be published: wrong record type, wrong board, or a failed encode."""


@dataclass
class PublisherStats:
    """Counters of one publisher since it started."""

    published: int = 0
    delivered: int = 0
    delivery_failures: int = 0
    queue_full: int = 0
    resent: int = 0


class SequenceCounter:
    """Per-board sequence numbers that never repeat across restarts.

    Blocks of ``SEQUENCE_BLOCK`` numbers are reserved in a file before use, so a crash can only
    skip numbers, never reuse one (a reused number would be dropped downstream as a duplicate).
    """

    def __init__(self, path: Path, block: int = SEQUENCE_BLOCK) -> None:
        self._path = path
        self._block = block
        try:
            self._next = int(path.read_text().strip())
        except FileNotFoundError:
            self._next = 0
        self._reserved = self._next
        self._reserve()

    def take(self) -> int:
        """Return the next sequence number."""
        if self._next >= self._reserved:
            self._reserve()
        value = self._next
        self._next += 1
        return value

    def _reserve(self) -> None:
        self._reserved = self._next + self._block
        temporary = self._path.with_suffix(".tmp")
        temporary.write_text(f"{self._reserved}\n")
        temporary.replace(self._path)


class BoardPublisher:
    """Publish one board's events to Kafka through an on-disk spool.

    Args:
        bootstrap_servers: Kafka bootstrap servers.
        board_id: the board's identifier, used as the message key. None makes a gateway that
            publishes for any board named in the records, such as a rack computer serving
            several boards or the load simulator. Each board still gets its own sequence numbers.
        state_dir: the board's data folder; the spool and sequence file live here.
        topic_prefix: prefix of the raw topic names.
        message_timeout_s: how long the producer retries a message before reporting it failed
            and the publisher falls back to the spool.
        probe_interval_s: seconds between checks whether the broker answers again.
        producer_config: extra librdkafka settings, applied last.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        board_id: str | None,
        state_dir: Path,
        *,
        topic_prefix: str = "bcratos.",
        message_timeout_s: float = 10.0,
        probe_interval_s: float = 1.0,
        producer_config: Mapping[str, Any] | None = None,
    ) -> None:
        if board_id == "":
            raise PublishError("board_id is empty; expected the board's identifier or None")
        self.board_id = board_id
        self.stats = PublisherStats()
        self._topic_prefix = topic_prefix
        self._probe_interval_s = probe_interval_s
        state_dir.mkdir(parents=True, exist_ok=True)
        self._state_dir = state_dir
        self._spool = Spool(state_dir / "spool")
        self._sequences: dict[str, SequenceCounter] = {}
        self._config: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers,
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": "lz4",
            "linger.ms": 5,
            "message.timeout.ms": int(message_timeout_s * 1000),
            "queue.buffering.max.messages": 200_000,
            "logger": logging.getLogger(f"{__name__}.librdkafka"),
            **(producer_config or {}),
        }
        self._producer = Producer(self._config)
        # Entries below _next_to_send were handed to the producer. _done contains delivered
        # entries above the acknowledged position, because topics complete in different orders.
        self._next_to_send = self._spool.acked_index
        self._done: set[int] = set()
        self._sent_high = self._next_to_send
        self._failed = False
        self._next_probe = 0.0
        if len(self._spool):
            logger.info(
                "board publisher resumes %d spooled events from %s",
                len(self._spool),
                self._spool.directory,
            )

    @property
    def spooled(self) -> int:
        """Events not yet acknowledged by Kafka."""
        return len(self._spool)

    def publish(self, record_name: str, record: Mapping[str, Any]) -> int:
        """Publish one event and return its sequence number.

        The event is safe on disk when this returns; delivery to Kafka follows asynchronously.
        """
        topic = RAW_TOPICS.get(record_name)
        if topic is None:
            raise PublishError(
                f"record type {record_name!r} cannot be published by a board; "
                f"expected one of {sorted(RAW_TOPICS)}"
            )
        board_id = record.get("board_id", self.board_id)
        if not board_id:
            raise PublishError(
                f"{record_name} has no board_id and this publisher is a gateway; "
                "expected the board id in the record"
            )
        if self.board_id is not None and board_id != self.board_id:
            raise PublishError(
                f"{record_name} has board_id {board_id!r} but this publisher is board "
                f"{self.board_id!r}; use one publisher per board or a gateway (board_id=None)"
            )
        seq = self._sequence(board_id).take()
        value = codec.encode(record_name, {**record, "board_id": board_id, "seq": seq})
        full_topic = f"{self._topic_prefix}{topic}"
        key = board_id.encode()
        index = self._spool.append(full_topic, key, value)
        self.stats.published += 1

        if index == self._next_to_send and not self._failed:
            self._send(index, full_topic, key, value)
        self._pump()
        return seq

    def poll(self, timeout_s: float = 0.0) -> None:
        """Serve delivery reports and move spooled events on; call it regularly when idle."""
        self._producer.poll(timeout_s)
        self._pump()

    def flush(self, timeout_s: float = 30.0) -> int:
        """Deliver everything possible within ``timeout_s``; return the events still spooled."""
        deadline = time.monotonic() + timeout_s
        while len(self._spool) and time.monotonic() < deadline:
            self._producer.flush(min(0.5, max(0.0, deadline - time.monotonic())))
            self._pump()
            if self._failed or self._next_to_send < self._spool.next_index:
                time.sleep(0.05)
        self._spool.sync()
        return len(self._spool)

    def close(self, timeout_s: float = 10.0) -> int:
        """Flush, then close the spool; return the events left for the next start."""
        remaining = self.flush(timeout_s)
        self._spool.close()
        if remaining:
            logger.warning(
                "board publisher closed with %d events still spooled in %s; they are sent "
                "when a publisher starts on this folder again",
                remaining,
                self._spool.directory,
            )
        return remaining

    # Internal steps.

    def _sequence(self, board_id: str) -> SequenceCounter:
        counter = self._sequences.get(board_id)
        if counter is None:
            # The file name is a digest: board ids are identifying and stay out of paths.
            digest = hashlib.sha256(board_id.encode()).hexdigest()[:24]
            folder = self._state_dir / "sequences"
            folder.mkdir(exist_ok=True)
            counter = self._sequences[board_id] = SequenceCounter(folder / digest)
        return counter

    def _send(self, index: int, topic: str, key: bytes, value: bytes) -> bool:
        try:
            self._producer.produce(
                topic, key=key, value=value, on_delivery=self._delivery_callback(index)
            )
        except BufferError:
            self.stats.queue_full += 1
            return False
        self._next_to_send = index + 1
        self._sent_high = max(self._sent_high, self._next_to_send)
        return True

    def _delivery_callback(self, index: int):  # type: ignore[no-untyped-def]
        def on_delivery(error: KafkaError | None, _message: Message) -> None:
            if error is None:
                self.stats.delivered += 1
                self._done.add(index)
                return
            self.stats.delivery_failures += 1
            if not self._failed:
                logger.warning(
                    "delivery of spooled event %d failed (%s); keeping events in the spool "
                    "until the broker answers",
                    index,
                    error.str(),
                )
            self._failed = True

        return on_delivery

    def _pump(self) -> None:
        self._producer.poll(0)
        self._advance_acknowledged()
        if self._failed:
            if len(self._producer) > 0:
                return  # wait for every outstanding delivery report
            if not self._broker_answers():
                return
            # Resend from the first unacknowledged event, in order.
            self._failed = False
            self._next_to_send = self._spool.acked_index
            logger.info(
                "broker reachable again; resending %d spooled events", len(self._spool)
            )
        if self._next_to_send < self._spool.next_index:
            self._drain()

    def _drain(self) -> None:
        for entry in self._spool.pending(self._next_to_send, limit=DRAIN_BATCH):
            if entry.index in self._done:
                self._next_to_send = entry.index + 1
                continue
            if entry.index < self._sent_high:
                self.stats.resent += 1
            if not self._send(entry.index, entry.topic, entry.key, entry.value):
                return

    def _advance_acknowledged(self) -> None:
        cursor = self._spool.acked_index
        start = cursor
        while cursor in self._done:
            self._done.discard(cursor)
            cursor += 1
        if cursor != start:
            self._spool.ack(cursor)

    def _broker_answers(self) -> bool:
        now = time.monotonic()
        if now < self._next_probe:
            return False
        self._next_probe = now + self._probe_interval_s
        try:
            # Short, because publish() calls this while the link is down.
            metadata = self._producer.list_topics(timeout=0.25)
        except Exception:  # noqa: BLE001 - any failure means the broker does not answer yet
            return False
        return bool(metadata.brokers)
