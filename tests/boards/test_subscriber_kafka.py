"""Board model subscriber on the real broker: install, reject tampering, catch up, swap live."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bcratos.config import Settings
from boards.subscriber import InstallOutcome, ModelSubscriber
from tests.support.model_artifacts import (
    CHANNELS,
    SUBJECT,
    WINDOW,
    delete_models_topic,
    favoured_class,
    models_settings,
    write_artifact,
)
from training.announce import announce, release
from training.signing import sign_artifact

pytestmark = pytest.mark.integration

WINDOW_COUNTS = np.ones((WINDOW, CHANNELS))


@pytest.fixture
def env(bootstrap: str, tmp_path: Path) -> Iterator[Settings]:
    settings = models_settings(bootstrap, tmp_path / "platform")
    yield settings
    delete_models_topic(settings)


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def new_subscriber(
    env: Settings, key: Ed25519PrivateKey, tmp_path: Path
) -> Iterator[Callable[[], ModelSubscriber]]:
    """Return a factory of subscribers of this test's models topic, closed after the test."""
    made: list[ModelSubscriber] = []

    def make() -> ModelSubscriber:
        subscriber = ModelSubscriber(
            env.kafka.bootstrap,
            targets=[SUBJECT, "global"],
            subject=SUBJECT,
            data_dir=tmp_path / f"board-{len(made)}",
            public_key=key.public_key(),
            topic_prefix=env.kafka.topic_prefix,
        )
        made.append(subscriber)
        return subscriber

    yield make
    for subscriber in made:
        subscriber.close()


def _release(
    env: Settings, key: Ed25519PrivateKey, version: str, *, favoured: str, accuracy: float
) -> None:
    directory = write_artifact(
        env.data_dir / "models" / version, favoured=favoured, balanced_accuracy=accuracy
    )
    result = release(
        env,
        directory,
        target=SUBJECT,
        model_version=version,
        score=lambda _: accuracy,
        key=key,
    )
    assert result.delivery is not None, result.decision.reason


def _next_outcome(subscriber: ModelSubscriber, timeout_s: float = 20.0) -> InstallOutcome:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        outcome = subscriber.poll(0.5)
        if outcome is not None:
            return outcome
    raise AssertionError(f"no announcement handled within {timeout_s} s")


def test_subscriber_installs_announced_model(
    env: Settings, key: Ed25519PrivateKey, new_subscriber: Callable[[], ModelSubscriber]
) -> None:
    _release(env, key, "v1", favoured="grasp", accuracy=0.7)
    subscriber = new_subscriber()

    outcomes = subscriber.catch_up()

    assert [(outcome.model_version, outcome.installed) for outcome in outcomes] == [("v1", True)]
    assert favoured_class(subscriber.runtime.decode(WINDOW_COUNTS)) == "grasp"


def test_tampered_announcement_keeps_previous_model(
    env: Settings, key: Ed25519PrivateKey, new_subscriber: Callable[[], ModelSubscriber]
) -> None:
    _release(env, key, "v1", favoured="grasp", accuracy=0.7)
    subscriber = new_subscriber()
    subscriber.catch_up()
    # A signed v2 whose weights change after signing, announced past the release checks.
    directory = write_artifact(env.data_dir / "models" / "v2", favoured="release")
    signed = sign_artifact(directory, target=SUBJECT, model_version="v2", key=key)
    weights = directory / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    announce(env, signed)

    outcome = _next_outcome(subscriber)

    assert outcome.model_version == "v2"
    assert not outcome.installed
    assert "model.safetensors was changed after signing" in outcome.reason
    assert subscriber.runtime.model_version == "v1"
    assert favoured_class(subscriber.runtime.decode(WINDOW_COUNTS)) == "grasp"


def test_announcement_from_other_key_keeps_previous_model(
    env: Settings, key: Ed25519PrivateKey, new_subscriber: Callable[[], ModelSubscriber]
) -> None:
    _release(env, key, "v1", favoured="grasp", accuracy=0.7)
    subscriber = new_subscriber()
    subscriber.catch_up()
    directory = write_artifact(env.data_dir / "models" / "v2", favoured="release")
    intruder = Ed25519PrivateKey.generate()
    announce(env, sign_artifact(directory, target=SUBJECT, model_version="v2", key=intruder))

    outcome = _next_outcome(subscriber)

    assert not outcome.installed
    assert "this board trusts" in outcome.reason
    assert subscriber.runtime.model_version == "v1"


def test_new_subscriber_gets_latest_model(
    env: Settings, key: Ed25519PrivateKey, new_subscriber: Callable[[], ModelSubscriber]
) -> None:
    _release(env, key, "v1", favoured="grasp", accuracy=0.7)
    _release(env, key, "v2", favoured="release", accuracy=0.8)
    subscriber = new_subscriber()

    outcomes = subscriber.catch_up()

    # Only the latest announcement is installed; the older one is skipped, not installed first.
    assert [(outcome.model_version, outcome.installed) for outcome in outcomes] == [("v2", True)]
    assert favoured_class(subscriber.runtime.decode(WINDOW_COUNTS)) == "release"


def test_running_subscriber_swaps_between_steps(
    env: Settings, key: Ed25519PrivateKey, new_subscriber: Callable[[], ModelSubscriber]
) -> None:
    _release(env, key, "v1", favoured="grasp", accuracy=0.7)
    subscriber = new_subscriber()
    subscriber.catch_up()
    stop = threading.Event()
    worker = threading.Thread(target=subscriber.run, args=(stop,), kwargs={"poll_s": 0.2})
    worker.start()
    try:
        _release(env, key, "v2", favoured="release", accuracy=0.8)
        decoded: list[str] = []
        deadline = time.monotonic() + 20
        while subscriber.runtime.model_version != "v2" and time.monotonic() < deadline:
            decoded.append(favoured_class(subscriber.runtime.decode(WINDOW_COUNTS)))
            time.sleep(0.005)
        decoded.append(favoured_class(subscriber.runtime.decode(WINDOW_COUNTS)))
    finally:
        stop.set()
        worker.join(timeout=10)

    assert subscriber.runtime.model_version == "v2"
    # Every step ran on one whole model: the old one until the swap, then the new one.
    switch = decoded.index("release")
    assert set(decoded[:switch]) <= {"grasp"}
    assert set(decoded[switch:]) == {"release"}
