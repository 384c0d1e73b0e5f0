"""Shared fixtures. Integration tests need the embedded stack that `make test` starts.

A test marked ``integration`` fails, never skips, when no broker is reachable, so a CI run
without the stack is red rather than silently green.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from bcratos.config import Settings, load_settings
from infra import broker, stack


@pytest.fixture(scope="session")
def settings() -> Settings:
    """Settings of the running test stack (from BCRATOS_* variables set by `make test`)."""
    return load_settings()


@pytest.fixture(scope="session")
def bootstrap(settings: Settings) -> str:
    """Bootstrap servers of a reachable broker; the test fails when there is none."""
    servers = settings.kafka.bootstrap
    if not broker.broker_answers(servers, timeout_s=10.0):
        pytest.fail(
            f"no Kafka broker answers at {servers}; run the tests with `make test`, "
            "which starts the embedded stack"
        )
    return servers


@pytest.fixture
def fresh_topic(bootstrap: str) -> Iterator[str]:
    """A new single-partition topic, deleted after the test."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    name = f"test.{uuid.uuid4().hex[:12]}"
    admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])[name].result()
    yield name
    admin.delete_topics([name])[name].result()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def private_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A broker of this test's own, on free ports, that the test may stop and restart."""
    data_dir = tmp_path_factory.mktemp("private-stack")
    own = load_settings(
        data_dir=data_dir,
        kafka={"port": _free_port(), "controller_port": _free_port(), "heap": "512m"},
    )
    stack.up(own)
    yield own
    stack.down(own)
