"""Board publisher against real brokers: delivery, spooling through an outage, restarts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Consumer

from bcratos.config import Settings
from boards.publisher import BoardPublisher, PublishError
from infra import broker
from schemas import codec
from schemas.counts import pack_counts

pytestmark = pytest.mark.integration

START = datetime(2012, 7, 18, 10, 0, tzinfo=UTC)


def _spike_frame(number: int) -> dict[str, Any]:
    counts = np.full((1, 4), number % 7, dtype=np.uint8)
    return {
        "subject_id": "monkey-s",
        "session_id": "session-1",
        "event_time": START + timedelta(milliseconds=50 * number),
        "metadata": {"file_name": "Spike_07-18-12_WF_001.mat"},
        "bin_ms": 50,
        "channel_ids": None,
        **pack_counts(counts),
    }


def _behavior_event(number: int) -> dict[str, Any]:
    return {
        "subject_id": "monkey-s",
        "session_id": "session-1",
        "event_time": START + timedelta(milliseconds=50 * number),
        "metadata": {},
        "kind": "trial_start",
        "trial_id": number,
        "label": None,
        "value": None,
    }


def _publish(publisher: BoardPublisher, numbers: range) -> None:
    for number in numbers:
        if number % 5 == 0:
            publisher.publish("BehaviorEvent", _behavior_event(number))
        else:
            publisher.publish("SpikeFrame", _spike_frame(number))


def _consume_seqs(settings: Settings, board_id: str, expected: int) -> dict[str, list[int]]:
    """Return the sequence numbers of `board_id` per topic, in the order Kafka stores them."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap,
            "group.id": uuid.uuid4().hex,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([settings.topic("raw.spikes"), settings.topic("raw.behavior")])
    seqs: dict[str, list[int]] = defaultdict(list)
    deadline = time.monotonic() + 60
    try:
        while sum(map(len, seqs.values())) < expected and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error() is not None:
                continue
            decoded = codec.decode(
                message.value(),
                topic=message.topic(),
                partition=message.partition(),
                offset=message.offset(),
            )
            if decoded.record["board_id"] == board_id:
                seqs[message.topic()].append(decoded.record["seq"])
        # Anything beyond the expected count would be a duplicate: read a little longer.
        end = time.monotonic() + 2
        while time.monotonic() < end:
            message = consumer.poll(0.2)
            if message is not None and message.error() is None:
                decoded = codec.decode(message.value())
                if decoded.record["board_id"] == board_id:
                    seqs[message.topic()].append(decoded.record["seq"])
    finally:
        consumer.close()
    return seqs


def _assert_once_in_order(seqs: dict[str, list[int]], total: int) -> None:
    everything = sorted(seq for values in seqs.values() for seq in values)
    assert everything == list(range(total)), "every event exactly once"
    for topic, values in seqs.items():
        assert values == sorted(values), f"{topic} out of order"


def test_publish_delivers_with_sequence(private_stack: Settings, tmp_path: Path) -> None:
    publisher = BoardPublisher(private_stack.kafka.bootstrap, "board-a", tmp_path / "board-a")
    _publish(publisher, range(50))
    assert publisher.close() == 0
    assert publisher.stats.delivered == 50
    _assert_once_in_order(_consume_seqs(private_stack, "board-a", 50), 50)


def test_wrong_record_or_board_rejected(private_stack: Settings, tmp_path: Path) -> None:
    publisher = BoardPublisher(private_stack.kafka.bootstrap, "board-b", tmp_path / "board-b")
    with pytest.raises(PublishError, match="'ModelAnnouncement'"):
        publisher.publish("ModelAnnouncement", {})
    with pytest.raises(PublishError, match="'board-z'"):
        publisher.publish("SpikeFrame", {**_spike_frame(1), "board_id": "board-z"})
    publisher.close()


def test_outage_spools_then_delivers_in_order(private_stack: Settings, tmp_path: Path) -> None:
    publisher = BoardPublisher(
        private_stack.kafka.bootstrap,
        "board-c",
        tmp_path / "board-c",
        message_timeout_s=2.0,
        probe_interval_s=0.5,
    )
    _publish(publisher, range(100))
    assert publisher.flush(30) == 0

    broker.stop(private_stack)
    _publish(publisher, range(100, 400))
    deadline = time.monotonic() + 15
    while publisher.stats.delivery_failures == 0 and time.monotonic() < deadline:
        publisher.poll(0.2)
    assert publisher.stats.delivery_failures > 0
    assert publisher.spooled == 300

    broker.start(private_stack)
    assert publisher.flush(60) == 0
    publisher.close()
    _assert_once_in_order(_consume_seqs(private_stack, "board-c", 400), 400)


_CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from boards.publisher import BoardPublisher
    sys.path.insert(0, {tests!r})
    from test_publisher import _publish
    publisher = BoardPublisher({bootstrap!r}, "board-d", Path({state!r}), message_timeout_s=60)
    for start in range(0, 100_000, 100):
        _publish(publisher, range(start, start + 100))
        print(start + 100, flush=True)
    """
)


def test_killed_publisher_resumes_from_spool(private_stack: Settings, tmp_path: Path) -> None:
    state = tmp_path / "board-d"
    broker.stop(private_stack)
    script = _CHILD.format(
        tests=str(Path(__file__).parent), bootstrap=private_stack.kafka.bootstrap, state=str(state)
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    assert child.stdout is not None
    published = 0
    for line in child.stdout:
        published = int(line)
        if published >= 1500:
            break
    os.kill(child.pid, signal.SIGKILL)
    child.wait()

    broker.start(private_stack)
    publisher = BoardPublisher(private_stack.kafka.bootstrap, "board-d", state)
    assert publisher.spooled >= published
    assert publisher.flush(60) == 0
    publisher.close()

    seqs = _consume_seqs(private_stack, "board-d", publisher.stats.delivered)
    delivered = sorted(seq for values in seqs.values() for seq in values)
    assert delivered[:published] == list(range(published)), "every reported event arrived"
    assert len(delivered) == len(set(delivered)), "no event twice"
    for topic, values in seqs.items():
        assert values == sorted(values), f"{topic} out of order"
