"""Tests of the retrain monitors: trigger rules on their own, then one run against the broker."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from bcratos.config import Settings, load_settings
from infra import topics
from schemas import codec
from streams.monitors import TriggerState, run_monitors


def _behavior(subject: str, kind: str = "class_label") -> dict[str, Any]:
    return {
        "subject_pseudonym": subject, "board_pseudonym": "b" * 20, "session_pseudonym": "s" * 20,
        "key_id": "k1", "seq": 1, "session_day": 19000, "t_session_us": 0, "kind": kind,
        "label": "power",
    }


def _spikes(subject: str, rate_hz: list[float], n_bins: int = 100) -> dict[str, Any]:
    counts = np.tile(np.asarray(rate_hz) * 0.05, (n_bins, 1)).astype("<i4")  # (bins, channels)
    return {
        "subject_pseudonym": subject, "n_bins": n_bins, "n_channels": len(rate_hz),
        "bin_ms": 50, "dtype": "int32", "counts": counts.tobytes(),
    }


def _state(**monitors: Any) -> TriggerState:
    return TriggerState(load_settings(monitors=monitors))


def test_volume_fires_at_threshold() -> None:
    state = _state(volume_threshold=3)
    for _ in range(2):
        state.add_behavior(_behavior("subj-a"), timestamp_s=100.0)
    state.add_behavior(_behavior("subj-a", kind="go_cue"), timestamp_s=100.0)
    assert state.due_requests(now_s=200.0) == []

    state.add_behavior(_behavior("subj-a"), timestamp_s=100.0)
    requests = state.due_requests(now_s=200.0)

    assert ("subj-a", "volume", {"new_labelled_events": 3.0}) in requests
    assert ("global", "volume", {"new_labelled_events": 3.0}) in requests
    assert state.due_requests(now_s=201.0) == []


def test_volume_ignores_events_before_last_job() -> None:
    state = _state(volume_threshold=1)
    state.last_job_s = {"subj-a": 500.0, "global": 500.0}

    state.add_behavior(_behavior("subj-a"), timestamp_s=400.0)

    assert state.due_requests(now_s=600.0) == []


def test_drift_fires_above_threshold() -> None:
    state = _state(drift_threshold=0.5, drift_min_bins=150)
    state.references = {"subj-a": np.array([20.0, 40.0]), "subj-b": np.array([20.0, 40.0])}
    state.add_spikes(_spikes("subj-a", [60.0, 100.0]))
    state.add_spikes(_spikes("subj-b", [20.0, 40.0]))
    assert state.due_requests(now_s=10.0) == []  # fewer bins than drift_min_bins

    state.add_spikes(_spikes("subj-a", [60.0, 100.0]))
    state.add_spikes(_spikes("subj-b", [20.0, 40.0]))
    requests = state.due_requests(now_s=10.0)

    assert len(requests) == 1
    target, reason, evidence = requests[0]
    assert (target, reason) == ("subj-a", "drift")
    assert evidence["drift_score"] == pytest.approx((40 / 21 + 60 / 41) / 2)
    assert evidence["bins"] == 200.0


def test_drift_respects_cooldown() -> None:
    state = _state(drift_threshold=0.1, drift_min_bins=1, drift_cooldown_s=60)
    state.references = {"subj-a": np.array([20.0])}
    state.add_spikes(_spikes("subj-a", [80.0]))
    assert len(state.due_requests(now_s=1000.0)) == 1

    state.add_spikes(_spikes("subj-a", [80.0]))
    assert state.due_requests(now_s=1030.0) == []
    assert len(state.due_requests(now_s=1061.0)) == 1


def test_schedule_fires_after_interval() -> None:
    state = _state(schedule_interval_s=60, schedule_targets=["global", "subj-a"])
    state.started_s = 0.0
    state.last_job_s = {"subj-a": 30.0}

    assert [request[0] for request in state.due_requests(now_s=70.0)] == ["global"]
    assert [request[0] for request in state.due_requests(now_s=95.0)] == ["subj-a"]
    assert state.due_requests(now_s=100.0) == []


@pytest.mark.integration
def test_monitors_publish_volume_request(
    bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = f"test-mon-{uuid.uuid4().hex[:8]}."
    names = {f"{prefix}{name}" for name in ("anon.behavior", "anon.spikes", "retrain")}
    specs = [spec for spec in topics.load_spec(prefix, broker_count=1) if spec.name in names]
    topics.apply(AdminClient({"bootstrap.servers": bootstrap}), specs)
    monkeypatch.setenv("BCRATOS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BCRATOS_KAFKA__TOPIC_PREFIX", prefix)
    settings: Settings = load_settings(monitors={"volume_threshold": 3, "check_interval_s": 0.3})

    producer = Producer({"bootstrap.servers": bootstrap})
    for _ in range(3):
        value = codec.encode("AnonBehaviorEvent", _behavior("subj-a"))
        producer.produce(settings.topic("anon.behavior"), key=b"s", value=value)
    producer.flush(10)
    stop = threading.Event()
    thread = threading.Thread(target=run_monitors, args=(settings, stop), daemon=True)
    thread.start()
    try:
        requests = _read_requests(settings, count=2)
    finally:
        stop.set()
        thread.join(timeout=15)

    assert sorted(request["target"] for request in requests) == ["global", "subj-a"]
    assert {request["reason"] for request in requests} == {"volume"}
    assert requests[0]["evidence"] == {"new_labelled_events": 3.0}


def _read_requests(settings: Settings, count: int) -> list[dict[str, Any]]:
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap,
            "group.id": f"test-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([settings.topic("retrain")])
    requests: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while len(requests) < count and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and message.error() is None:
            requests.append(codec.decode(message.value()).record)
    consumer.close()
    return requests
