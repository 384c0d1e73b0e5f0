"""Tests of the retrain monitors: trigger rules on their own, then the faust app on the broker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from bcratos.config import ConfigError, MonitorSettings, Settings, load_settings
from infra import topics
from infra.retrain_jobs import RetrainJob, record_job
from schemas import codec
from streams.monitor_registry import RegistryUpdate, RegistryWatch
from streams.status import render
from streams.triggers import ModelReference, RetrainTrigger, TriggerState
from training.registry import ModelEntry, record_model

REPO = Path(__file__).resolve().parents[2]


def _anonymized(subject: str) -> dict[str, Any]:
    """Return the fields that every anonymized record of one session shares."""
    return {
        "subject_pseudonym": subject,
        "board_pseudonym": "b" * 20,
        "session_pseudonym": "s" * 20,
        "key_id": "k1",
        "seq": 1,
        "session_day": 19000,
        "t_session_us": 0,
    }


def _behavior(subject: str, kind: str = "class_label") -> dict[str, Any]:
    return {
        **_anonymized(subject),
        "kind": kind,
        "label": "power",
    }


def _spikes(subject: str, rate_hz: list[float], n_bins: int = 100) -> dict[str, Any]:
    counts = np.tile(np.asarray(rate_hz) * 0.05, (n_bins, 1)).astype("<i4")  # (bins, channels)
    return {
        **_anonymized(subject),
        "schema_version": 1,
        "n_bins": n_bins,
        "n_channels": len(rate_hz),
        "bin_ms": 50,
        "dtype": "int32",
        "counts": counts.tobytes(),
    }


def _state(volume: dict[str, Any] | None = None, **monitors: Any) -> TriggerState:
    return TriggerState(MonitorSettings(**monitors), volume=volume)


def _model(
    target: str,
    *,
    version: str = "m1",
    decided_s: float = 0.0,
    rates: list[float] | None = None,
    subjects: dict[str, list[float]] | None = None,
    spreads: dict[str, list[float]] | None = None,
) -> ModelReference:
    return ModelReference(
        target=target,
        model_version=version,
        decided_s=decided_s,
        mean_rate_hz=None if rates is None else np.asarray(rates),
        subjects={name: np.asarray(values) for name, values in (subjects or {}).items()},
        subject_spreads={name: np.asarray(values) for name, values in (spreads or {}).items()},
    )


def _add_labels(state: TriggerState, subject: str, offsets: range, partition: int = 0) -> None:
    for offset in offsets:
        state.add_behavior(
            _behavior(subject), timestamp_s=100.0, partition=partition, offset=offset
        )


def _summary(requests: list[RetrainTrigger]) -> list[tuple[str, str, dict[str, float]]]:
    return sorted((request.target, request.reason, request.evidence) for request in requests)


# -- volume ----------------------------------------------------------------------------------


def test_volume_fires_at_threshold() -> None:
    state = _state(volume_threshold=3, volume_targets="both")
    _add_labels(state, "subj-a", range(2))
    state.add_behavior(_behavior("subj-a", "go_cue"), timestamp_s=100.0, partition=0, offset=2)
    assert state.due_requests(now_s=200.0) == []

    _add_labels(state, "subj-a", range(3, 4))
    requests = state.due_requests(now_s=200.0)

    assert _summary(requests) == [
        ("global", "volume", {"new_labelled_events": 3.0}),
        ("subj-a", "volume", {"new_labelled_events": 3.0}),
    ]
    assert state.due_requests(now_s=201.0) == []
    assert state.volume_count("global").count == 0


@pytest.mark.parametrize(
    ("mode", "targets"),
    [
        ("global", ["global"]),
        ("subjects", ["subj-a", "subj-b"]),
        ("both", ["global", "subj-a", "subj-b"]),
    ],
)
def test_volume_targets_setting(mode: str, targets: list[str]) -> None:
    state = _state(volume_threshold=2, volume_targets=mode)
    _add_labels(state, "subj-a", range(2), partition=0)
    _add_labels(state, "subj-b", range(2), partition=1)

    requests = state.due_requests(now_s=200.0)

    assert sorted(request.target for request in requests) == targets
    if mode == "global":
        assert requests[0].evidence == {"new_labelled_events": 4.0}


def test_volume_targets_rejects_unknown_value() -> None:
    with pytest.raises(ConfigError, match="monitors.volume_targets"):
        load_settings(monitors={"volume_targets": "boards"})


def test_volume_ignores_events_before_last_job() -> None:
    state = _state(volume_threshold=1, volume_targets="both")
    state.set_last_jobs({"subj-a": 500.0, "global": 500.0})

    state.add_behavior(_behavior("subj-a"), timestamp_s=400.0, partition=0, offset=0)

    assert state.due_requests(now_s=600.0) == []


def test_new_job_resets_volume_count() -> None:
    state = _state(volume_threshold=3)
    _add_labels(state, "subj-a", range(2))

    state.set_last_jobs({"global": 150.0})
    _add_labels(state, "subj-a", range(2, 4))

    assert state.volume_count("global").count == 0  # events at 100 s predate the job
    assert state.volume_count("global").since_s == 150.0


def test_volume_skips_offsets_counted_before_restart() -> None:
    table: dict[str, Any] = {}
    first = _state(table, volume_threshold=5)
    _add_labels(first, "subj-a", range(3), partition=2)

    restarted = _state(table, volume_threshold=5)  # recovered from the same changelog values
    _add_labels(restarted, "subj-a", range(5), partition=2)
    _add_labels(restarted, "subj-a", range(2), partition=3)

    assert restarted.volume_count("global").count == 7
    assert restarted.volume_count("global").offsets == {"2": 4, "3": 1}


def test_undelivered_request_survives_restart() -> None:
    table: dict[str, Any] = {}
    first = _state(table, volume_threshold=2)
    _add_labels(first, "subj-a", range(2))
    (request,) = first.due_requests(now_s=200.0)

    restarted = _state(table, volume_threshold=2)

    assert restarted.undelivered() == [request]
    assert restarted.due_requests(now_s=201.0) == []
    restarted.mark_delivered(request)
    assert restarted.undelivered() == []
    assert json.loads(json.dumps(table))["global"]["pending"] is None  # stays JSON for faust


# -- drift -----------------------------------------------------------------------------------


def test_drift_fires_above_threshold() -> None:
    state = _state(drift_threshold=0.5, drift_min_bins=150)
    state.set_references({name: _model(name, rates=[20.0, 40.0]) for name in ("subj-a", "subj-b")})
    state.add_spikes(_spikes("subj-a", [60.0, 100.0]), timestamp_s=10.0)
    state.add_spikes(_spikes("subj-b", [20.0, 40.0]), timestamp_s=10.0)
    assert state.due_requests(now_s=10.0) == []  # fewer bins than drift_min_bins

    state.add_spikes(_spikes("subj-a", [60.0, 100.0]), timestamp_s=10.0)
    state.add_spikes(_spikes("subj-b", [20.0, 40.0]), timestamp_s=10.0)
    requests = state.due_requests(now_s=10.0)

    assert len(requests) == 1
    assert (requests[0].target, requests[0].reason) == ("subj-a", "drift")
    assert requests[0].evidence == {
        "drift_score": pytest.approx((40 + 60) / 2),  # no spread known: 1 Hz
        "bins": 200.0,
        "channels": 2.0,
    }
    assert "subj-a" in requests[0].detail


def test_drift_windows_tumble() -> None:
    state = _state(drift_threshold=0.5, drift_min_bins=100, drift_cooldown_s=0)
    state.set_references({"subj-a": _model("subj-a", rates=[20.0, 40.0])})

    state.add_spikes(_spikes("subj-a", [20.0, 40.0]), timestamp_s=10.0)
    assert state.due_requests(now_s=10.0) == []  # full window without drift, closed

    state.add_spikes(_spikes("subj-a", [60.0, 100.0], n_bins=60), timestamp_s=11.0)
    assert state.due_requests(now_s=11.0) == []  # the new window has 60 bins only

    state.add_spikes(_spikes("subj-a", [60.0, 100.0], n_bins=40), timestamp_s=12.0)
    (request,) = state.due_requests(now_s=12.0)
    assert request.evidence["bins"] == 100.0
    assert request.evidence["drift_score"] == pytest.approx((40 + 60) / 2)

    state.add_spikes(_spikes("subj-a", [60.0, 100.0], n_bins=50), timestamp_s=13.0)
    assert state.due_requests(now_s=13.0) == []  # fired windows start again too


def test_drift_score_in_units_of_training_spread() -> None:
    # A channel whose one-minute mean varied by 9 Hz in the training data moves 40 Hz, which is
    # 4 units. One that varied by 59 Hz moves 60 Hz, which is 1 unit.
    state = _state(drift_threshold=2.6, drift_min_bins=100, drift_cooldown_s=0)
    state.set_references(
        {
            "global": _model(
                "global", subjects={"subj-a": [20.0, 40.0]}, spreads={"subj-a": [9.0, 59.0]}
            )
        }
    )

    state.add_spikes(_spikes("subj-a", [60.0, 100.0]), timestamp_s=10.0)
    assert state.due_requests(now_s=10.0) == []  # score (4 + 1) / 2 = 2.5

    state.add_spikes(_spikes("subj-a", [80.0, 100.0]), timestamp_s=11.0)
    (request,) = state.due_requests(now_s=11.0)
    assert request.evidence["drift_score"] == pytest.approx((6 + 1) / 2)


def test_drift_respects_cooldown() -> None:
    state = _state(drift_threshold=0.1, drift_min_bins=1, drift_cooldown_s=60)
    state.set_references({"subj-a": _model("subj-a", rates=[20.0])})
    state.add_spikes(_spikes("subj-a", [80.0]), timestamp_s=1000.0)
    assert len(state.due_requests(now_s=1000.0)) == 1

    state.add_spikes(_spikes("subj-a", [80.0]), timestamp_s=1030.0)
    assert state.due_requests(now_s=1030.0) == []
    state.add_spikes(_spikes("subj-a", [80.0]), timestamp_s=1061.0)
    assert len(state.due_requests(now_s=1061.0)) == 1


def test_reference_change_resets_window() -> None:
    state = _state(drift_threshold=0.2, drift_min_bins=100)
    state.set_references({"global": _model("global", subjects={"subj-a": [20.0, 40.0]})})
    state.add_spikes(_spikes("subj-a", [20.0, 40.0], n_bins=60), timestamp_s=10.0)

    new_model = _model("global", version="m2", decided_s=20.0, subjects={"subj-a": [60.0, 100.0]})
    state.set_references({"global": new_model})
    state.add_spikes(_spikes("subj-a", [60.0, 100.0], n_bins=60), timestamp_s=30.0)
    # Without the reset, the window would close here at 120 bins, half of them far from m2.
    assert state.due_requests(now_s=30.0) == []

    state.add_spikes(_spikes("subj-a", [20.0, 40.0], n_bins=100), timestamp_s=15.0)
    assert state.due_requests(now_s=31.0) == []  # frames older than m2 are not compared

    state.add_spikes(_spikes("subj-a", [60.0, 100.0], n_bins=40), timestamp_s=32.0)
    assert state.due_requests(now_s=32.0) == []  # a window of m2's rates only: no drift


def test_global_model_reference_per_subject() -> None:
    state = _state(drift_threshold=0.5, drift_min_bins=100)
    shared = _model(
        "global", version="g1", rates=[1.0] * 3, subjects={"subj-a": [20.0, 40.0], "subj-b": [20.0]}
    )
    state.set_references({"global": shared})

    state.add_spikes(_spikes("subj-a", [60.0, 100.0]), timestamp_s=10.0)
    state.add_spikes(_spikes("subj-b", [20.0]), timestamp_s=10.0)
    state.add_spikes(_spikes("subj-c", [60.0, 100.0, 1.0]), timestamp_s=10.0)  # not in g1
    (request,) = state.due_requests(now_s=10.0)

    assert (request.target, request.reason) == ("global", "drift")
    assert request.evidence["channels"] == 2.0
    assert "subject subj-a" in request.detail
    assert "model g1" in request.detail


def test_own_model_reference_before_global() -> None:
    state = _state(drift_threshold=0.5, drift_min_bins=100)
    state.set_references(
        {
            "global": _model("global", version="g1", subjects={"subj-a": [60.0, 100.0]}),
            "subj-a": _model("subj-a", version="a1", rates=[20.0, 40.0]),
        }
    )

    state.add_spikes(_spikes("subj-a", [60.0, 100.0]), timestamp_s=10.0)
    (request,) = state.due_requests(now_s=10.0)

    assert request.target == "subj-a"
    assert state.reference_for("subj-b") is None


def test_drift_channel_mismatch_skipped() -> None:
    state = _state(drift_threshold=0.1, drift_min_bins=1)
    state.set_references({"subj-a": _model("subj-a", rates=[20.0, 40.0])})

    state.add_spikes(_spikes("subj-a", [80.0, 80.0, 80.0]), timestamp_s=10.0)

    assert state.due_requests(now_s=10.0) == []


def test_schedule_fires_after_interval() -> None:
    state = _state(schedule_interval_s=60, schedule_targets=["global", "subj-a"])
    state.set_last_jobs({"subj-a": 30.0})

    assert [request.target for request in state.due_requests(now_s=70.0)] == ["global"]
    assert [request.target for request in state.due_requests(now_s=95.0)] == ["subj-a"]
    assert state.due_requests(now_s=100.0) == []


def test_status_renders_monitor_worker() -> None:
    worker = {
        "stage": "monitor",
        "pid": 7,
        "read": {"anon.behavior": 4},
        "skipped": {},
        "requests": {"volume": 2},
        "undelivered": 0,
    }

    text = render({"workers": [worker], "lag": {}})

    assert "monitor worker pid 7:" in text
    assert "read: anon.behavior 4" in text
    assert "requests: volume 2" in text


# -- registry tables -------------------------------------------------------------------------


def test_registry_watch_reads_changed_tables(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, lake={"uri": str(tmp_path / "lake")})
    watch = RegistryWatch(settings)
    assert watch.poll() == RegistryUpdate(references={}, last_jobs={})
    assert watch.poll() == RegistryUpdate()

    _announce_global_model(settings, tmp_path / "models" / "g-1")
    models = watch.poll()
    assert models.last_jobs is None
    assert models.references is not None
    shared = models.references["global"]
    assert (shared.model_version, list(shared.subjects)) == ("g-1", ["subj-a"])
    assert shared.subjects["subj-a"].tolist() == [20.0, 40.0]
    assert shared.subject_spreads["subj-a"].tolist() == [9.0, 59.0]

    created = datetime(2024, 6, 2, 12, 0, tzinfo=UTC)
    record_job(
        settings,
        RetrainJob(job_id="j1", target="global", dataset="d1", backend="local", created_at=created),
    )
    jobs = watch.poll()
    assert jobs.references is None
    assert jobs.last_jobs == {"global": created.timestamp()}


def test_invalid_reference_file_skipped(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, lake={"uri": str(tmp_path / "lake")})
    directory = tmp_path / "models" / "g-1"
    _announce_global_model(settings, directory)
    (directory / "reference.json").write_text('{"subjects": {"subj-a": {"mean_rate_hz": 3}}}')

    update = RegistryWatch(settings).poll()

    assert update.references == {}


# -- the faust app on the broker -------------------------------------------------------------


@dataclass
class MonitorApp:
    """The monitors as a child process (`python -m streams.runner monitor`) with own topics."""

    settings: Settings
    environment: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "streams.runner", "monitor"],
                env=self.environment,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def assert_running(self) -> None:
        assert self.process is not None
        code = self.process.poll()
        assert code is None, f"monitors exited with {code}:\n{self.log.read_text()[-4000:]}"

    def behavior_read(self) -> int:
        """Return the anon.behavior records the running process has read, from its metrics."""
        assert self.process is not None
        path = self.settings.data_dir / "streams" / f"monitor-{self.process.pid}.json"
        if not path.is_file():
            return 0
        return int(json.loads(path.read_text())["read"].get("anon.behavior", 0))


@pytest.fixture
def monitor_app(settings: Settings, bootstrap: str, tmp_path: Path) -> Iterator[MonitorApp]:
    prefix = f"test-mon-{uuid.uuid4().hex[:8]}."
    names = {f"{prefix}{name}" for name in ("anon.behavior", "anon.spikes", "retrain")}
    specs = [spec for spec in topics.load_spec(prefix, broker_count=1) if spec.name in names]
    topics.apply(AdminClient({"bootstrap.servers": bootstrap}), specs)
    monitors = {
        "group": f"{prefix}monitors",
        "volume_threshold": 3,
        "volume_targets": "both",
        "drift_threshold": 0.5,
        "drift_min_bins": 100,
        "check_interval_s": 0.5,
    }
    environment = {
        **os.environ,
        "BCRATOS_DATA_DIR": str(tmp_path),
        "BCRATOS_LAKE__URI": str(tmp_path / "lake"),
        "BCRATOS_KAFKA__PORT": str(settings.kafka.port),
        "BCRATOS_KAFKA__CONTROLLER_PORT": str(settings.kafka.controller_port),
        "BCRATOS_KAFKA__TOPIC_PREFIX": prefix,
        **{f"BCRATOS_MONITORS__{key.upper()}": str(value) for key, value in monitors.items()},
    }
    own = load_settings(
        data_dir=tmp_path,
        lake={"uri": str(tmp_path / "lake")},
        kafka={
            "port": settings.kafka.port,
            "controller_port": settings.kafka.controller_port,
            "topic_prefix": prefix,
        },
        monitors=monitors,
    )
    app = MonitorApp(own, environment, tmp_path / "monitor.log")
    yield app
    app.stop()


def _announce_global_model(settings: Settings, directory: Path) -> None:
    """Write a global model's reference.json and its `registry/models` row."""
    directory.mkdir(parents=True)
    reference = {
        "mean_rate_hz": [1.0, 1.0, 1.0],
        "steps": 400,
        "subjects": {
            "subj-a": {"mean_rate_hz": [20.0, 40.0], "window_sd_hz": [9.0, 59.0], "steps": 200}
        },
    }
    (directory / "reference.json").write_text(json.dumps(reference))
    decided = datetime.now(UTC) - timedelta(hours=1)
    record_model(
        settings,
        ModelEntry(
            target="global",
            model_version="g-1",
            created_at=decided - timedelta(minutes=5),
            decided_at=decided,
            artifact_uri=directory.as_uri(),
            weights_sha256="0" * 64,
            decision="announced",
            reason="test",
        ),
    )


def _produce(settings: Settings, short_topic: str, values: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap})
    for value in values:
        producer.produce(settings.topic(short_topic), key=b"s" * 20, value=value)
    assert producer.flush(10) == 0


def _labels(count: int) -> list[bytes]:
    return [codec.encode("AnonBehaviorEvent", _behavior("subj-a")) for _ in range(count)]


def _read_requests(
    settings: Settings, consumer: Consumer, count: int, timeout_s: float = 120
) -> list[dict[str, Any]]:
    """Read up to ``count`` requests from the retrain topic within ``timeout_s``."""
    requests: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while len(requests) < count and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and message.error() is None:
            requests.append(codec.decode(message.value()).record)
    return requests


def _rewind_group(settings: Settings, topic: str) -> None:
    """Set the monitors' committed offsets of ``topic`` back to 0, as if never committed."""
    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap})
    partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions
    request = ConsumerGroupTopicPartitions(
        settings.monitors.group, [TopicPartition(topic, partition, 0) for partition in partitions]
    )
    admin.alter_consumer_group_offsets([request])[settings.monitors.group].result(timeout=30)


@pytest.mark.integration
def test_monitor_app_publishes_requests(monitor_app: MonitorApp, tmp_path: Path) -> None:
    settings = monitor_app.settings
    _announce_global_model(settings, tmp_path / "models" / "g-1")
    retrain = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap,
            "group.id": f"test-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
        }
    )
    retrain.subscribe([settings.topic("retrain")])
    go_cue = codec.encode("AnonBehaviorEvent", _behavior("subj-a", "go_cue"))
    _produce(settings, "anon.behavior", [*_labels(3), go_cue, b"not an avro record"])
    spikes = _spikes("subj-a", [60.0, 100.0])
    _produce(settings, "anon.spikes", [codec.encode("AnonSpikeFrame", spikes)])

    monitor_app.start()
    first = _read_requests(settings, retrain, count=3)
    monitor_app.assert_running()

    by_reason = {(request["reason"], request["target"]): request for request in first}
    assert sorted(by_reason) == [("drift", "global"), ("volume", "global"), ("volume", "subj-a")]
    assert by_reason["volume", "global"]["evidence"] == {"new_labelled_events": 3.0}
    drift = by_reason["drift", "global"]
    assert drift["evidence"] == {
        "drift_score": pytest.approx((40 / 10 + 60 / 60) / 2),  # spread 9 and 59 Hz
        "bins": 100.0,
        "channels": 2.0,
    }
    assert "subject subj-a" in drift["detail"]
    assert "model g-1" in drift["detail"]
    assert {request["requested_by"] for request in first} == {"bcratos-monitors"}
    assert "skipping an undecodable record" in monitor_app.log.read_text()

    # A restart that reads every behaviour event again must not count them twice.
    monitor_app.stop()
    _rewind_group(settings, settings.topic("anon.behavior"))
    monitor_app.start()
    deadline = time.monotonic() + 120
    while monitor_app.behavior_read() < 5 and time.monotonic() < deadline:
        monitor_app.assert_running()
        time.sleep(0.5)
    assert monitor_app.behavior_read() >= 5, monitor_app.log.read_text()[-4000:]
    assert _read_requests(settings, retrain, count=1, timeout_s=3) == []

    _produce(settings, "anon.behavior", _labels(3))
    second = _read_requests(settings, retrain, count=2)
    retrain.close()

    assert sorted((request["reason"], request["target"]) for request in second) == [
        ("volume", "global"),
        ("volume", "subj-a"),
    ]
    assert [request["evidence"] for request in second] == [{"new_labelled_events": 3.0}] * 2
    assert not {request["request_id"] for request in second} & {r["request_id"] for r in first}
