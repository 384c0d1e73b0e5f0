"""The exactly-once lake sink: ``anon.*`` topics into bronze and silver Delta tables.

The sink is a confluent-kafka consumer rather than a faust agent, because exactly-once needs it
to choose where each partition starts. The Kafka offsets it has written are stored in the Delta
tables themselves, as app transactions committed together with the rows
(`streams.lake.LakeWriter`). Faust would seek to the consumer group's committed offsets
instead. The group offsets are still committed after each Delta commit, for lag monitoring only.

Offsets stored per table and partition:

- bronze: the offset after the last message written (or skipped) for that table;
- silver: the smallest offset of any frame still in an open step (`min_open_offset`), so that a
  restarted sink rebuilds its open steps by reading those frames again.

A partition restarts from the lower of the two. Messages below the bronze offset are not written
again; bins of steps already in the silver table are skipped (`resume`), with the last written
step of each session stored as an app transaction too. Repeats produced by the ingest stage after
its own restart carry sequence numbers already written and are dropped by the highest sequence
number per board, session and record type, also stored as app transactions.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from bcratos.config import Settings
from schemas.codec import Codec, default_codec
from schemas.exceptions import SchemaError
from streams.exceptions import WindowError
from streams.ingest import dead_letter
from streams.lake import (
    BEHAVIOR_EVENTS,
    DECODER_OUTPUTS,
    ESKIN_FRAMES,
    ESKIN_STEPS,
    SPIKE_FRAMES,
    SPIKE_STEPS,
    LakeWriter,
    bronze_table,
    offset_app_id,
    silver_table,
)
from streams.window import EskinWindower, SpikeWindower

logger = logging.getLogger(__name__)

STEP_VERSION_BASE: Final = 1 << 40
"""Added to step indexes stored as app transaction versions, which must not be negative."""


@dataclass(frozen=True)
class Route:
    """Destination tables of the messages of one anon topic."""

    bronze: str
    silver: str | None


ROUTES: Final[Mapping[str, Route]] = {
    "anon.spikes": Route(SPIKE_FRAMES, SPIKE_STEPS),
    "anon.behavior": Route(BEHAVIOR_EVENTS, None),
    "anon.eskin": Route(ESKIN_FRAMES, ESKIN_STEPS),
    "anon.decoder": Route(DECODER_OUTPUTS, None),
}


@dataclass
class _PartitionState:
    bronze_next: int | None  # offset after the last message covered by the bronze table
    silver_next: int | None  # offset from which the silver table needs messages again
    position: int = -1  # offset after the last message read in this run


@dataclass
class _Buffer:
    """Rows of one table waiting for a commit, and the app transactions to store with them."""

    records: list[Mapping[str, Any]] = field(default_factory=list)
    partitions: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    marks: dict[str, int] = field(default_factory=dict)  # sequence and step app transactions
    dirty: bool = False  # partition offsets moved since the last commit


@dataclass
class SinkCounters:
    """Counters of the sink, per topic and table."""

    read: Counter[str] = field(default_factory=Counter)
    written: Counter[str] = field(default_factory=Counter)
    duplicates: Counter[str] = field(default_factory=Counter)
    dead_lettered: Counter[str] = field(default_factory=Counter)
    commits: int = 0
    commit_seconds: list[float] = field(default_factory=list)  # recent commit latencies


class LakeSink:
    """Consume the anonymized topics and write the lake, exactly once.

    Args:
        settings: platform settings (Kafka, lake, streams sections).
        consumer_config: extra consumer settings, applied last.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        consumer_config: Mapping[str, Any] | None = None,
        codec: Codec | None = None,
    ) -> None:
        streams = settings.streams
        self.settings = settings
        self.group = streams.sink_group
        self.counters = SinkCounters()
        self._codec = codec or default_codec()
        self._writer = LakeWriter.from_settings(settings)
        self._topics = {settings.topic(short): route for short, route in ROUTES.items()}
        self._dlq = settings.topic("dlq")
        self._spikes = SpikeWindower(step_ms=streams.step_ms, grace_ms=streams.grace_ms)
        self._eskin = EskinWindower(step_ms=streams.step_ms, grace_ms=streams.grace_ms)
        self._partitions: dict[tuple[str, int], _PartitionState] = {}
        self._buffers: dict[str, _Buffer] = defaultdict(_Buffer)
        self._max_seq: dict[tuple[str, str, str, str], int] = {}
        self._known_sessions: set[tuple[str, str]] = set()
        self._last_data: dict[tuple[str, str], float] = {}  # (silver table, session) -> time
        self._oldest_pending: float | None = None
        self._last_commit = 0.0
        self._next_metrics = 0.0
        self._metrics_path = settings.data_dir / "streams" / f"sink-{os.getpid()}.json"
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka.bootstrap,
                "group.id": self.group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "partition.assignment.strategy": "cooperative-sticky",
                "fetch.max.bytes": 64 * 1024 * 1024,
                "logger": logging.getLogger(f"{__name__}.librdkafka"),
                **(consumer_config or {}),
            }
        )
        self._producer = Producer(
            {
                "bootstrap.servers": settings.kafka.bootstrap,
                "enable.idempotence": True,
                "logger": logging.getLogger(f"{__name__}.librdkafka"),
            }
        )

    # Lifecycle.

    def run(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Consume and write until ``should_stop`` returns True, then commit what is buffered."""
        self._consumer.subscribe(
            list(self._topics), on_assign=self._on_assign, on_revoke=self._on_revoke
        )
        logger.info("lake sink started, group %s, lake %s", self.group, self._writer.root)
        try:
            while not should_stop():
                self.poll_once()
        finally:
            self.close()

    def poll_once(self, timeout_s: float = 0.2) -> None:
        """Read one batch of messages, flush idle sessions and commit when a batch is due."""
        messages = self._consumer.consume(num_messages=5000, timeout=timeout_s)
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    logger.warning("consumer error: %s", error)
                continue
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            if topic is None or partition is None or offset is None:
                continue  # only error events lack them, and those were handled above
            self._handle(topic, partition, offset, message.value())
        self._flush_idle_sessions()
        if self._commit_due():
            self.commit()
        self._producer.poll(0)
        self._write_metrics()

    def close(self) -> None:
        """Commit buffered rows, then leave the consumer group."""
        try:
            self.commit()
        finally:
            self._producer.flush(10)
            self._consumer.close()
            logger.info("lake sink stopped")

    # Rebalances.

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        positions = []
        for assigned in partitions:
            route = self._topics[assigned.topic]
            app_id = offset_app_id(self.group, assigned.topic, assigned.partition)
            bronze = self._writer.committed_offset(route.bronze, app_id)
            silver = self._writer.committed_offset(route.silver, app_id) if route.silver else None
            state = _PartitionState(bronze, silver if route.silver else bronze)
            self._partitions[(assigned.topic, assigned.partition)] = state
            known = [o for o in (state.bronze_next, state.silver_next) if o is not None]
            start = min(known) if known else OFFSET_BEGINNING
            positions.append(TopicPartition(assigned.topic, assigned.partition, start))
            logger.info(
                "assigned %s[%d]: starting at offset %s (bronze %s, silver %s)",
                assigned.topic,
                assigned.partition,
                "beginning" if start == OFFSET_BEGINNING else start,
                state.bronze_next,
                state.silver_next,
            )
        consumer.incremental_assign(positions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.commit()
        for revoked in partitions:
            self._partitions.pop((revoked.topic, revoked.partition), None)
            silver = self._topics[revoked.topic].silver
            if silver is not None:
                self._forget_sessions(silver, revoked.partition)
        consumer.incremental_unassign(partitions)

    def _forget_sessions(self, table: str, partition: int) -> None:
        """Drop the window state of a revoked partition, which its new owner rebuilds."""
        windower = self._spikes if table == SPIKE_STEPS else self._eskin
        for session in windower.forget_partition(partition):
            self._last_data.pop((table, session), None)
            self._known_sessions.discard((table, session))

    # Messages.

    def _handle(self, topic: str, partition: int, offset: int, value: bytes | None) -> None:
        route = self._topics[topic]
        state = self._partitions.get((topic, partition))
        if state is None:
            return
        state.position = offset + 1
        self.counters.read[topic] += 1
        write_bronze = state.bronze_next is None or offset >= state.bronze_next
        write_silver = route.silver is not None and (
            state.silver_next is None or offset >= state.silver_next
        )
        self._buffers[route.bronze].dirty = True
        if route.silver:
            self._buffers[route.silver].dirty = True
        if not write_bronze and not write_silver:
            return
        # NOTE: a message read again only for the silver table is windowed without the
        # repeat check, so a repeat that the ingest stage produced before a sink restart can
        # count once more in an open step.

        try:
            decoded = self._codec.decode(value, topic=topic, partition=partition, offset=offset)
        except SchemaError as exc:
            if write_bronze:
                self._dead_letter(topic, partition, offset, value, exc.reason, str(exc))
            return
        record = decoded.record

        if write_bronze:
            if self._is_repeat(route.bronze, decoded.name, record):
                self.counters.duplicates[topic] += 1
                return
            self._buffer_bronze(route.bronze, decoded.name, record, partition, offset)
        if write_silver and route.silver is not None:
            self._window(route.silver, topic, partition, offset, value, record)

    def _is_repeat(self, table: str, record_name: str, record: Mapping[str, Any]) -> bool:
        key = (record_name, record["session_pseudonym"], record["board_pseudonym"], table)
        highest = self._max_seq.get(key)
        if highest is None:
            stored = self._writer.committed_offset(table, self._seq_app_id(key), refresh=False)
            highest = -1 if stored is None else stored
        if record["seq"] <= highest:
            self._max_seq[key] = highest
            return True
        self._max_seq[key] = record["seq"]
        return False

    def _seq_app_id(self, key: tuple[str, str, str, str]) -> str:
        record_name, session, board, _ = key
        return f"{self.group}/seq/{record_name}/{session}/{board}"

    def _buffer_bronze(
        self,
        table: str,
        record_name: str,
        record: Mapping[str, Any],
        partition: int,
        offset: int,
    ) -> None:
        buffer = self._buffers[table]
        buffer.records.append(record)
        buffer.partitions.append(partition)
        buffer.offsets.append(offset)
        key = (record_name, record["session_pseudonym"], record["board_pseudonym"], table)
        buffer.marks[self._seq_app_id(key)] = record["seq"]
        if self._oldest_pending is None:
            self._oldest_pending = time.monotonic()

    def _window(
        self,
        table: str,
        topic: str,
        partition: int,
        offset: int,
        value: bytes | None,
        record: Mapping[str, Any],
    ) -> None:
        windower = self._spikes if table == SPIKE_STEPS else self._eskin
        session = record["session_pseudonym"]
        if (table, session) not in self._known_sessions:
            self._known_sessions.add((table, session))
            stored = self._writer.committed_offset(
                table, self._step_app_id(session), refresh=False
            )
            if stored is not None:
                windower.resume(session, stored - STEP_VERSION_BASE)
        try:
            output = windower.add(record, partition=partition, offset=offset)
        except (WindowError, SchemaError) as exc:
            reason = getattr(exc, "reason", "window_error")
            self._dead_letter(topic, partition, offset, value, reason, str(exc))
            return
        self._last_data[(table, session)] = time.monotonic()
        for rejection in output.rejections:
            self._dead_letter(topic, partition, offset, value, rejection.code, rejection.reason)
        self._buffer_steps(table, output.steps)

    def _step_app_id(self, session: str) -> str:
        return f"{self.group}/step/{session}"

    def _buffer_steps(self, table: str, steps: list[Any]) -> None:
        if not steps:
            return
        buffer = self._buffers[table]
        buffer.records.extend(steps)
        for step in steps:
            app_id = self._step_app_id(step["session_pseudonym"])
            version = step["step_index"] + STEP_VERSION_BASE
            buffer.marks[app_id] = max(version, buffer.marks.get(app_id, 0))
        if self._oldest_pending is None:
            self._oldest_pending = time.monotonic()

    def _flush_idle_sessions(self) -> None:
        now = time.monotonic()
        idle_s = self.settings.streams.idle_flush_s
        for (table, session), last in list(self._last_data.items()):
            if now - last < idle_s:
                continue
            windower = self._spikes if table == SPIKE_STEPS else self._eskin
            self._buffer_steps(table, windower.flush(session))
            del self._last_data[(table, session)]

    def _dead_letter(
        self,
        topic: str,
        partition: int,
        offset: int,
        value: bytes | None,
        reason: str,
        detail: str,
    ) -> None:
        self.counters.dead_lettered[topic] += 1
        message = dead_letter(
            self._dlq,
            source_topic=topic,
            partition=partition,
            offset=offset,
            value=value,
            stage="sink",
            reason=reason,
            detail=detail,
        )
        self._producer.produce(
            message.topic, key=message.key, value=message.value, headers=list(message.headers)
        )

    # Commits.

    def _commit_due(self) -> bool:
        streams = self.settings.streams
        if any(len(buffer.records) >= streams.batch_rows for buffer in self._buffers.values()):
            return True
        if self._oldest_pending is not None:
            return time.monotonic() - self._oldest_pending >= streams.max_latency_s
        # Offsets moved without rows (repeats, dead letters): store them now and then.
        dirty = any(buffer.dirty for buffer in self._buffers.values())
        return dirty and time.monotonic() - self._last_commit >= 5 * streams.max_latency_s

    def commit(self) -> None:
        """Commit every table with buffered rows or moved offsets, then the group offsets."""
        started = time.monotonic()
        committed_any = False
        for topic, route in self._topics.items():
            for table in (route.bronze, route.silver):
                if table is None:
                    continue
                buffer = self._buffers.get(table)
                if buffer is None or not (buffer.records or buffer.dirty):
                    continue
                offsets = self._table_offsets(topic, table)
                if not offsets and not buffer.records and not buffer.marks:
                    continue
                rows = self._rows(table, buffer)
                self._writer.append(table, rows, offsets=offsets, marks=buffer.marks)
                self.counters.written[table] += rows.num_rows
                self._buffers[table] = _Buffer()
                committed_any = True
        self._oldest_pending = None
        self._last_commit = time.monotonic()
        if committed_any:
            self.counters.commits += 1
            self.counters.commit_seconds = [
                *self.counters.commit_seconds[-99:],
                self._last_commit - started,
            ]
            self._commit_group_offsets()

    def _table_offsets(self, topic: str, table: str) -> dict[str, int]:
        offsets = {}
        is_silver = table in (SPIKE_STEPS, ESKIN_STEPS)
        for (state_topic, partition), state in self._partitions.items():
            if state_topic != topic or state.position < 0:
                continue
            app_id = offset_app_id(self.group, topic, partition)
            if is_silver:
                windower = self._spikes if table == SPIKE_STEPS else self._eskin
                open_offset = windower.min_open_offset(partition)
                next_offset = state.position if open_offset is None else open_offset
                if state.silver_next is not None:
                    next_offset = max(next_offset, state.silver_next)
                state.silver_next = next_offset
            else:
                next_offset = max(state.position, state.bronze_next or 0)
                state.bronze_next = next_offset
            offsets[app_id] = next_offset
        return offsets

    def _rows(self, table: str, buffer: _Buffer) -> Any:
        if table in (SPIKE_STEPS, ESKIN_STEPS):
            return silver_table(table, buffer.records)
        return bronze_table(
            table, buffer.records, partitions=buffer.partitions, offsets=buffer.offsets
        )

    def _commit_group_offsets(self) -> None:
        positions = []
        for (topic, partition), state in self._partitions.items():
            known = [o for o in (state.bronze_next, state.silver_next) if o is not None]
            if known:
                positions.append(TopicPartition(topic, partition, min(known)))
        if positions:
            self._consumer.commit(offsets=positions, asynchronous=True)

    # Metrics.

    def snapshot(self) -> dict[str, Any]:
        """Counters as plain dicts, for logs, the metrics file and `bcratos streams status`."""
        latencies = sorted(self.counters.commit_seconds)
        return {
            "stage": "sink",
            "pid": os.getpid(),
            "updated_at": time.time(),
            "read": dict(self.counters.read),
            "written": dict(self.counters.written),
            "duplicates": dict(self.counters.duplicates),
            "dead_lettered": dict(self.counters.dead_lettered),
            "commits": self.counters.commits,
            "commit_latency_p50_s": latencies[len(latencies) // 2] if latencies else None,
            "commit_latency_max_s": latencies[-1] if latencies else None,
            "open_steps": self._spikes.open_steps() + self._eskin.open_steps(),
        }

    def _write_metrics(self) -> None:
        now = time.monotonic()
        if now < self._next_metrics:
            return
        interval = self.settings.streams.metrics_interval_s
        first = self._next_metrics == 0.0
        self._next_metrics = now + interval
        snapshot = self.snapshot()
        self._metrics_path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self._metrics_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(snapshot, indent=1))
        temporary.replace(self._metrics_path)
        if not first:
            logger.info(
                "sink counters: read %s, written %s, dead-lettered %s, commits %d",
                snapshot["read"],
                snapshot["written"],
                snapshot["dead_lettered"],
                snapshot["commits"],
            )
