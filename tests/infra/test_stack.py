"""The embedded stack against the real broker started by `make test`."""

from __future__ import annotations

import asyncio
import socket
import uuid
from pathlib import Path

import faust
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, ConfigResource

from bcratos.config import Settings, load_settings
from infra import broker, stack, topics
from infra.exceptions import PortInUseError

pytestmark = pytest.mark.integration


def test_produce_consume_roundtrip(bootstrap: str, fresh_topic: str) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    producer.produce(fresh_topic, key=b"board-1", value=b"frame-bytes")
    assert producer.flush(10) == 0

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": uuid.uuid4().hex,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([fresh_topic])
    try:
        message = None
        for _ in range(40):
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                break
        assert message is not None and message.error() is None
        assert message.key() == b"board-1"
        assert message.value() == b"frame-bytes"
    finally:
        consumer.close()


def test_faust_app_processes_event(bootstrap: str, fresh_topic: str, tmp_path: Path) -> None:
    received: list[bytes] = []
    app = faust.App(
        f"test-faust-{uuid.uuid4().hex[:8]}",
        broker=f"kafka://{bootstrap}",
        store="memory://",
        datadir=str(tmp_path),
        web_enabled=False,
        topic_replication_factor=1,
        topic_partitions=1,
        consumer_auto_offset_reset="earliest",
    )
    source = app.topic(fresh_topic, value_type=bytes, value_serializer="raw")

    @app.agent(source)
    async def collect(stream: faust.StreamT[bytes]) -> None:
        async for value in stream:
            received.append(value)

    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(fresh_topic, value=b"one-event")
    assert producer.flush(10) == 0

    async def run_until_received() -> None:
        await app.start()
        try:
            for _ in range(120):
                if received:
                    return
                await asyncio.sleep(0.25)
        finally:
            await app.stop()

    asyncio.run(run_until_received())
    assert received == [b"one-event"]


def test_status_healthy_with_topics(settings: Settings, bootstrap: str) -> None:
    status = stack.status(settings)
    assert status.broker_answers
    assert status.missing_topics == []
    assert status.healthy


def test_topic_apply_idempotent(settings: Settings, bootstrap: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    specs = stack.topic_specs(settings, admin)
    plan = topics.apply(admin, specs)
    assert plan.created == []
    assert plan.altered == {}
    assert sorted(plan.unchanged) == sorted(spec.name for spec in specs)


def test_changed_spec_applied_or_reported(bootstrap: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    prefix = f"test{uuid.uuid4().hex[:6]}."
    base = topics.TopicSpec(prefix + "t", 2, 1, 1, "delete", 60_000)
    assert topics.apply(admin, [base]).created == [base.name]

    changed = topics.TopicSpec(base.name, 3, 1, 1, "compact", 120_000)
    plan = topics.apply(admin, [changed])
    assert plan.extended == {base.name: 3}
    assert plan.altered[base.name] == {"cleanup.policy": "compact", "retention.ms": "120000"}
    resource = ConfigResource(ConfigResource.Type.TOPIC, base.name)
    described = admin.describe_configs([resource])[resource].result()
    assert described["cleanup.policy"].value == "compact"

    shrunk = topics.TopicSpec(base.name, 1, 1, 1, "compact", 120_000)
    plan = topics.apply(admin, [shrunk])
    assert any("cannot remove partitions" in problem for problem in plan.not_applied)
    admin.delete_topics([base.name])[base.name].result()


def test_occupied_port_fails_fast(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        settings = load_settings(
            data_dir=tmp_path, kafka={"port": port, "controller_port": port + 1}
        )
        with pytest.raises(PortInUseError, match=f"127.0.0.1:{port}"):
            broker.start(settings)
    assert not (tmp_path / "run" / "kafka.pid").exists()


def test_stop_ignores_foreign_pid(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    paths = broker.BrokerPaths.under(tmp_path)
    paths.pid_file.parent.mkdir(parents=True)
    paths.pid_file.write_text("1\n")  # pid 1 is not our broker: it must never be signalled
    assert broker.stop(settings) is False
