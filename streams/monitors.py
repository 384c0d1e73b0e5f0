"""Retrain triggers: volume, drift and schedule monitors that publish RetrainRequest events.

- **volume**: class_label events of ``anon.behavior`` per target (the subject pseudonym, and
  ``global`` for all subjects) newer than the target's last retrain job. At
  ``monitors.volume_threshold`` events a request is sent and the count starts again.
- **drift**: per-channel mean spike rates of ``anon.spikes`` per subject pseudonym, compared
  with ``reference.json`` (``{"mean_rate_hz": [...]}``) in the folder of the target's current
  model from the Delta table ``registry/models``. The score is the mean over channels of
  ``|rate - reference| / (reference + 1 Hz)``. Once ``monitors.drift_min_bins`` bins are in,
  a score at or above ``monitors.drift_threshold`` sends a request. ``bcratos train`` writes
  ``reference.json`` from the training split of the dataset.
- **schedule**: every ``monitors.schedule_interval_s`` seconds after the target's last retrain
  job, a request for each of ``monitors.schedule_targets``.

This is a plain confluent-kafka consumer rather than a faust app: the counters are rebuilt on
start from the topics and the job table instead of a changelog. It reads ``anon.behavior`` from
the beginning (events older than a target's last job are not counted, by Kafka timestamp) and
``anon.spikes`` from the end, since drift concerns current data only. It assigns every
partition to itself, so only one monitor process should run.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import numpy as np
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    Message,
    Producer,
    TopicPartition,
)
from deltalake import DeltaTable

from bcratos.config import Settings
from schemas import codec
from schemas.exceptions import SchemaError

logger = logging.getLogger(__name__)

GLOBAL_TARGET: Final = "global"
REFERENCE_FILE: Final = "reference.json"
_RATE_FLOOR_HZ: Final = 1.0  # keeps silent reference channels from dominating the score
_DTYPES: Final = {"uint8": "<u1", "uint16": "<u2", "int16": "<i2", "int32": "<i4"}


@dataclass
class _RateSum:
    counts: np.ndarray  # (channels,) spike counts summed over bins
    seconds: float = 0.0
    bins: int = 0


@dataclass
class TriggerState:
    """Counters of the three triggers; ``now_s`` values are Unix times in seconds."""

    settings: Settings
    last_job_s: dict[str, float] = field(default_factory=dict)
    """Creation time of each target's last retrain job that did not fail."""
    references: dict[str, np.ndarray] = field(default_factory=dict)
    """Reference mean rate in Hz per channel, by target."""
    labelled: dict[str, int] = field(default_factory=dict)
    rates: dict[str, _RateSum] = field(default_factory=dict)
    last_drift_request_s: dict[str, float] = field(default_factory=dict)
    started_s: float = field(default_factory=time.time)

    def add_behavior(self, record: Mapping[str, Any], timestamp_s: float) -> None:
        if record["kind"] != "class_label":
            return
        for target in (record["subject_pseudonym"], GLOBAL_TARGET):
            if timestamp_s > self.last_job_s.get(target, 0.0):
                self.labelled[target] = self.labelled.get(target, 0) + 1

    def add_spikes(self, record: Mapping[str, Any]) -> None:
        shape = (record["n_bins"], record["n_channels"])
        counts = np.frombuffer(record["counts"], dtype=_DTYPES[record["dtype"]]).reshape(shape)
        target = record["subject_pseudonym"]
        rate = self.rates.get(target)
        if rate is None or rate.counts.shape[0] != shape[1]:
            rate = self.rates[target] = _RateSum(np.zeros(shape[1]))
        rate.counts += counts.sum(axis=0)  # (channels,)
        rate.seconds += shape[0] * record["bin_ms"] / 1000.0
        rate.bins += shape[0]

    def due_requests(self, now_s: float) -> list[tuple[str, str, dict[str, float]]]:
        """Return ``(target, reason, evidence)`` of every trigger that fired, and reset them."""
        monitors = self.settings.monitors
        requests: list[tuple[str, str, dict[str, float]]] = []
        for target, count in list(self.labelled.items()):
            if count >= monitors.volume_threshold:
                requests.append((target, "volume", {"new_labelled_events": float(count)}))
                self._mark_requested(target, now_s)
        for target in list(self.rates):
            evidence = self._drift_evidence(target, now_s)
            if evidence is not None:
                requests.append((target, "drift", evidence))
                self.last_drift_request_s[target] = now_s
                del self.rates[target]
        if monitors.schedule_interval_s is not None:
            for target in monitors.schedule_targets:
                since_s = self.last_job_s.get(target, self.started_s)
                if now_s - since_s >= monitors.schedule_interval_s:
                    evidence = {"seconds_since_last_job": now_s - since_s}
                    requests.append((target, "schedule", evidence))
                    self._mark_requested(target, now_s)
        return requests

    def _mark_requested(self, target: str, now_s: float) -> None:
        # The orchestrator records a job for the request; counting starts again from now.
        self.last_job_s[target] = now_s
        self.labelled.pop(target, None)

    def _drift_evidence(self, target: str, now_s: float) -> dict[str, float] | None:
        monitors = self.settings.monitors
        rate = self.rates[target]
        reference = self.references.get(target)
        if reference is None or rate.bins < monitors.drift_min_bins or rate.seconds <= 0:
            return None
        if now_s - self.last_drift_request_s.get(target, -np.inf) < monitors.drift_cooldown_s:
            return None
        if reference.shape != rate.counts.shape:
            logger.warning(
                "drift of target %s not checked: %d channels, but its reference has %d",
                target, rate.counts.shape[0], reference.shape[0],
            )
            del self.rates[target]
            return None
        mean_rate_hz = rate.counts / rate.seconds
        score = float(np.mean(np.abs(mean_rate_hz - reference) / (reference + _RATE_FLOOR_HZ)))
        if score < monitors.drift_threshold:
            return None
        return {"drift_score": score, "bins": float(rate.bins), "channels": float(reference.size)}


def load_last_jobs(settings: Settings) -> dict[str, float]:
    """Return the creation time (Unix seconds) of each target's newest retrain job that did not
    fail, from the Delta table ``registry/retrain_jobs``."""
    uri = f"{settings.lake_uri.rstrip('/')}/registry/retrain_jobs"
    if not DeltaTable.is_deltatable(uri):
        return {}
    rows = DeltaTable(uri).to_pyarrow_table(columns=["target", "state", "created_at"]).to_pylist()
    last: dict[str, float] = {}
    for row in rows:
        if row["state"] != "failed":
            created_s = row["created_at"].timestamp()
            last[row["target"]] = max(created_s, last.get(row["target"], 0.0))
    return last


def load_references(settings: Settings) -> dict[str, np.ndarray]:
    """Return the reference mean rates of each target's current model, for the models whose
    folder has a ``reference.json``."""
    uri = f"{settings.lake_uri.rstrip('/')}/registry/models"
    if not DeltaTable.is_deltatable(uri):
        return {}
    columns = ["target", "decided_at", "decision", "artifact_uri"]
    rows = DeltaTable(uri).to_pyarrow_table(columns=columns).to_pylist()
    current: dict[str, Mapping[str, Any]] = {}
    for row in sorted(rows, key=lambda row: row["decided_at"]):
        if row["decision"] == "announced":
            current[row["target"]] = row
    references: dict[str, np.ndarray] = {}
    for target, row in current.items():
        parts = urlsplit(row["artifact_uri"])
        path = Path(unquote(parts.path)) / REFERENCE_FILE
        if parts.scheme != "file" or not path.is_file():
            logger.info("no drift reference for target %s: %s not found", target, path)
            continue
        try:
            rates = json.loads(path.read_text())["mean_rate_hz"]
            references[target] = np.asarray(rates, dtype=np.float64)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning(
                "skipping invalid drift reference %s of target %s: %s", path, target, exc
            )
    return references


def run_monitors(settings: Settings, stop: threading.Event) -> None:
    """Consume behaviour and spike events and publish retrain requests until ``stop`` is set.

    Raises ``deltalake.exceptions.DeltaError`` or ``OSError`` when the job or model table
    cannot be read on start.
    """
    state = TriggerState(
        settings, last_job_s=load_last_jobs(settings), references=load_references(settings)
    )
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap,
            "group.id": "bcratos-monitors",
            "enable.auto.commit": False,
            "logger": logging.getLogger(f"{__name__}.librdkafka"),
        }
    )
    behavior_topic = settings.topic("anon.behavior")
    spikes_topic = settings.topic("anon.spikes")
    consumer.assign(
        _partitions(consumer, behavior_topic, OFFSET_BEGINNING)
        + _partitions(consumer, spikes_topic, OFFSET_END)
    )
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap, "acks": "all"})
    logger.info("retrain monitors started on %s and %s", behavior_topic, spikes_topic)
    next_check_s = time.monotonic() + settings.monitors.check_interval_s
    try:
        while not stop.is_set():
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                _add(state, message, behavior_topic)
            if time.monotonic() >= next_check_s:
                for target, reason, evidence in state.due_requests(time.time()):
                    _publish(settings, producer, target, reason, evidence)
                next_check_s = time.monotonic() + settings.monitors.check_interval_s
    finally:
        consumer.close()
        producer.flush(10.0)
        logger.info("retrain monitors stopped")


def _partitions(consumer: Consumer, topic: str, offset: int) -> list[TopicPartition]:
    metadata = consumer.list_topics(topic, timeout=10.0).topics[topic]
    return [TopicPartition(topic, partition, offset) for partition in metadata.partitions]


def _add(state: TriggerState, message: Message, behavior_topic: str) -> None:
    topic = message.topic()
    try:
        decoded = codec.decode(
            message.value(), topic=topic, partition=message.partition(), offset=message.offset()
        )
    except SchemaError as exc:
        logger.warning("skipping an invalid record: %s", exc)
        return
    if topic == behavior_topic:
        _kind, timestamp_ms = message.timestamp()
        state.add_behavior(decoded.record, timestamp_ms / 1000.0)
    else:
        state.add_spikes(decoded.record)


def _publish(
    settings: Settings, producer: Producer, target: str, reason: str, evidence: dict[str, float]
) -> None:
    request = {
        "request_id": uuid.uuid4().hex,
        "target": target,
        "reason": reason,
        "evidence": evidence,
        "detail": f"{reason} trigger of the retrain monitors",
        "requested_at": datetime.now(UTC),
        "requested_by": "bcratos-monitors",
    }
    topic = settings.topic("retrain")
    producer.produce(topic, key=target.encode(), value=codec.encode("RetrainRequest", request))
    if producer.flush(10.0) > 0:
        logger.warning(
            "retrain request for target %s (%s) was not delivered to %s", target, reason, topic
        )
        return
    logger.info("requested retraining of target %s (%s): %s", target, reason, evidence)
