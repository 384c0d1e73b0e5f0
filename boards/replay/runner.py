"""Publishing board events to a sink, as fast as possible or paced by event time."""

from __future__ import annotations

import heapq
import logging
import math
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from boards.replay.events import BoardEvent, ReplayReport

logger = logging.getLogger(__name__)

DEFAULT_FLUSH_TIMEOUT_S = 30.0


class EventSink(Protocol):
    """Destination of board records, such as the Kafka publisher of the board SDK."""

    def publish(self, record_name: str, record: dict[str, Any]) -> object:
        """Queue one record of Avro record type ``record_name`` for delivery.

        The return value is ignored, so a publisher may return a sequence number.
        """

    def flush(self, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` for queued records and return how many are still queued."""


class EventSource(Protocol):
    """Anything that yields board events in event-time order and reports what it read."""

    report: ReplayReport

    def events(self) -> Iterator[BoardEvent]: ...


@dataclass
class ReplayResult:
    """Outcome of one replay: records published per record name, reports and timing."""

    published: Counter[str]
    reports: list[ReplayReport]
    elapsed_s: float
    unflushed: int

    @property
    def total(self) -> int:
        """Number of records published."""
        return sum(self.published.values())


@dataclass
class MemorySink:
    """Sink that keeps every record in memory, for dry runs and tests."""

    records: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def publish(self, record_name: str, record: dict[str, Any]) -> None:
        self.records.append((record_name, record))

    def flush(self, timeout_s: float) -> int:
        return 0


@dataclass
class BoardRoutingSink:
    """Sink that forwards each record to the sink of its ``board_id``.

    Use it to replay several boards at once when each board has its own publisher.
    """

    sinks: Mapping[str, EventSink]

    def publish(self, record_name: str, record: dict[str, Any]) -> None:
        board_id = record["board_id"]
        sink = self.sinks.get(board_id)
        if sink is None:
            raise KeyError(
                f"no sink for board {board_id!r} of a {record_name}; "
                f"known boards: {sorted(self.sinks)}"
            )
        sink.publish(record_name, record)

    def flush(self, timeout_s: float) -> int:
        """Flush every board's sink within one shared ``timeout_s`` and sum what is left."""
        deadline = time.monotonic() + timeout_s
        left = 0
        for sink in self.sinks.values():
            left += sink.flush(max(0.0, deadline - time.monotonic()))
        return left


def replay(
    recordings: Sequence[EventSource],
    sink: EventSink,
    *,
    speed: float | None,
    flush_timeout_s: float = DEFAULT_FLUSH_TIMEOUT_S,
) -> ReplayResult:
    """Publish the events of all recordings to ``sink`` in event-time order, then flush.

    ``speed`` None publishes as fast as the sink accepts. A number paces publishing so that
    event time advances ``speed`` times as fast as the monotonic clock (1.0 is real time),
    counted from the first event. Recordings on different days are replayed with their real
    gap between them, so give them a common ``start_time`` to replay boards side by side.
    Records still queued after ``flush_timeout_s`` are counted in ``unflushed`` and logged.
    """
    if speed is not None and (not math.isfinite(speed) or speed <= 0):
        raise ValueError(f"speed must be a positive number or None, got {speed!r}")

    published: Counter[str] = Counter()
    merged = heapq.merge(*(recording.events() for recording in recordings), key=_event_time)
    started = time.monotonic()
    first_event_time = None
    for event in merged:
        if speed is not None:
            if first_event_time is None:
                first_event_time = event.event_time
            due_s = (event.event_time - first_event_time).total_seconds() / speed
            delay_s = started + due_s - time.monotonic()
            if delay_s > 0:
                time.sleep(delay_s)
        sink.publish(event.record_name, event.record)
        published[event.record_name] += 1

    unflushed = sink.flush(flush_timeout_s)
    elapsed_s = time.monotonic() - started
    if unflushed:
        logger.warning(
            "replay flush timed out after %.1f s with %d records still queued",
            flush_timeout_s,
            unflushed,
        )
    logger.info("replayed %d records in %.3f s", sum(published.values()), elapsed_s)
    return ReplayResult(
        published=published,
        reports=[recording.report for recording in recordings],
        elapsed_s=elapsed_s,
        unflushed=unflushed,
    )


def _event_time(event: BoardEvent) -> Any:
    return event.event_time
