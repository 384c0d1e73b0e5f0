"""The retrain monitors: a faust app that publishes RetrainRequest events on ``retrain``.

Two agents feed the trigger rules of `streams.triggers`: one counts the class_label events of
``anon.behavior`` and one adds the frames of ``anon.spikes`` to per-subject drift windows. A
timer runs every ``monitors.check_interval_s`` seconds. It reads ``registry/models`` and
``registry/retrain_jobs`` again when their Delta version changed, sends volume requests that a
previous attempt did not deliver, and publishes the requests of every trigger that fired, keyed
by target.

Restarts. The volume counts are the faust table ``volume``, with changelog topic
``<monitors.group>-volume-changelog``. Faust delivers changelog records before it commits the
offsets of the events behind them, so a crash loses no count. A restarted app may read events
again, but each count stores the last offset it counted per partition and skips events at or
below it.
A volume request is written into its count, and that changelog record is delivered before the
request is sent. If the app stops in between, the restarted app sends the request again with
the same request id, which the orchestrator recognises. The drift windows live in memory: after
a restart every subject's window starts empty at the committed ``anon.spikes`` offset.

NOTE: run one monitor process per consumer group. The table has one changelog partition,
chosen by key rather than by source partition so that the timer can reset counts. A second
worker would not get that partition, so its table would stay empty.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

import faust
from aiokafka.errors import KafkaError
from deltalake.exceptions import DeltaError
from faust.exceptions import ProducerSendError
from faust.types import Message

from bcratos.config import Settings
from schemas import codec
from schemas.exceptions import SchemaError
from streams.monitor_registry import RegistryUpdate, RegistryWatch
from streams.triggers import RetrainTrigger, TriggerState

logger = logging.getLogger(__name__)

REQUESTED_BY: Final = "bcratos-monitors"
VOLUME_TABLE: Final = "volume"
_RECORD_NAMES: Final = {"anon.behavior": "AnonBehaviorEvent", "anon.spikes": "AnonSpikeFrame"}


class MonitorMetrics:
    """Counters of the monitor process, written to ``<data_dir>/streams/`` as JSON."""

    def __init__(self, settings: Settings) -> None:
        self._path = settings.data_dir / "streams" / f"monitor-{os.getpid()}.json"
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._started_s = time.time()
        self.read: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        self.undelivered = 0

    def write(self) -> None:
        snapshot = {
            "stage": "monitor",
            "pid": os.getpid(),
            "started_at": self._started_s,
            "updated_at": time.time(),
            "read": dict(self.read),
            "skipped": dict(self.skipped),
            "requests": dict(self.requests),
            "undelivered": self.undelivered,
        }
        temporary = self._path.with_suffix(".tmp")
        temporary.write_text(json.dumps(snapshot, indent=1))
        temporary.replace(self._path)


def build_app(settings: Settings) -> faust.App:
    """Create the monitors' faust app, reading the registry tables once.

    Raises ``deltalake.exceptions.DeltaError`` or ``OSError`` when they cannot be read.
    """
    monitors = settings.monitors
    datadir = settings.data_dir / "faust" / monitors.group
    datadir.parent.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        monitors.group,
        broker=f"kafka://{settings.kafka.bootstrap}",
        store="memory://",
        datadir=str(datadir),
        web_enabled=False,
        # One broker in the embedded stack: the changelog topic gets one replica there.
        topic_replication_factor=1 if settings.kafka.embedded else 3,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
    )
    volume = app.Table(
        VOLUME_TABLE,
        partitions=1,
        use_partitioner=True,
        help="Labelled behaviour events per target since its last retrain job (JSON values).",
    )
    state = TriggerState(monitors, volume=volume, started_s=time.time())
    watch = RegistryWatch(settings)
    _apply_update(state, watch.poll())
    metrics = MonitorMetrics(settings)
    behavior_topic = settings.topic("anon.behavior")
    spikes_topic = settings.topic("anon.spikes")
    retrain = app.topic(settings.topic("retrain"), key_serializer="raw", value_serializer="raw")

    def add_behavior(record: dict[str, Any], message: Message) -> None:
        state.add_behavior(
            record,
            timestamp_s=message.timestamp,
            partition=message.partition,
            offset=message.offset,
        )

    def add_spikes(record: dict[str, Any], message: Message) -> None:
        state.add_spikes(record, timestamp_s=message.timestamp)

    @app.agent(_raw_topic(app, behavior_topic), name="count-labelled-events")
    async def count_labelled_events(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            _apply(event.message, "anon.behavior", metrics, add_behavior)

    @app.agent(_raw_topic(app, spikes_topic), name="add-spike-rates")
    async def add_spike_rates(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            if state.models:  # without a reference, decoding the frame would be wasted work
                _apply(event.message, "anon.spikes", metrics, add_spikes)

    recovered = asyncio.Event()

    @volume.on_recover
    async def volume_recovered() -> None:
        recovered.set()

    @app.timer(interval=monitors.check_interval_s)  # type: ignore[untyped-decorator]
    async def check_triggers() -> None:
        if app.rebalancing or app.in_recovery or not recovered.is_set():
            return  # the volume table is incomplete until its recovery has ended
        await _refresh_registry(watch, state)
        retries = state.undelivered()
        new = state.due_requests(time.time())
        if any(trigger.reason == "volume" for trigger in new):
            await app.producer.flush()  # the pending requests reach the changelog first
        for trigger in [*retries, *new]:
            if await _publish(retrain, trigger):
                state.mark_delivered(trigger)
                metrics.requests[trigger.reason] += 1
        if retries or new:
            await app.producer.flush()  # the delivered marks reach the changelog
        metrics.undelivered = len(state.undelivered())
        metrics.write()

    @app.task  # type: ignore[untyped-decorator]
    async def log_start() -> None:
        logger.info(
            "retrain monitors started: group %s, topics %s and %s, volume targets %s",
            monitors.group, behavior_topic, spikes_topic, monitors.volume_targets,
        )

    @app.on_before_shutdown.connect
    def log_stop(_sender: Any, /, *_args: Any, signal: Any, **_kwargs: Any) -> None:
        logger.info(
            "retrain monitors stopping: %d undelivered volume requests stay in the changelog",
            len(state.undelivered()),
        )

    return app


def _raw_topic(app: faust.App, name: str) -> faust.TopicT:
    return app.topic(name, value_type=bytes, value_serializer="raw")


def _apply(
    message: Message,
    short_topic: str,
    metrics: MonitorMetrics,
    add: Callable[[dict[str, Any], Message], None],
) -> None:
    """Decode one message and pass its record to ``add``, or log and skip an unusable one.

    Ingest validated these records already, so a bad one is rare, and the monitors skip it
    rather than stop.
    """
    metrics.read[short_topic] += 1
    where = f"{message.topic}[{message.partition}]@{message.offset}"
    expected = _RECORD_NAMES[short_topic]
    try:
        decoded = codec.decode(
            message.value, topic=message.topic, partition=message.partition, offset=message.offset
        )
    except SchemaError as exc:
        metrics.skipped[short_topic] += 1
        logger.warning("skipping an undecodable record: %s", exc)  # exc names the offset
        return
    try:
        if decoded.name != expected:
            raise TypeError(f"it is a {decoded.name} record, expected {expected}")
        add(decoded.record, message)
    except (KeyError, ValueError, TypeError) as exc:
        metrics.skipped[short_topic] += 1
        logger.warning("skipping the %s record at %s: %s", decoded.name, where, exc)


async def _refresh_registry(watch: RegistryWatch, state: TriggerState) -> None:
    loop = asyncio.get_running_loop()
    try:
        update = await loop.run_in_executor(None, watch.poll)
    except (DeltaError, OSError) as exc:
        logger.warning(
            "failed to read the registry tables, so the monitors keep their references and "
            "job times and read the tables again at the next check: %s", exc,
        )
        return
    _apply_update(state, update)


def _apply_update(state: TriggerState, update: RegistryUpdate) -> None:
    if update.references is not None:
        state.set_references(update.references)
        logger.info(
            "drift references loaded: %s",
            ", ".join(f"{ref.target}={ref.model_version}" for ref in update.references.values())
            or "none",
        )
    if update.last_jobs is not None:
        state.set_last_jobs(update.last_jobs)


async def _publish(retrain: faust.TopicT, trigger: RetrainTrigger) -> bool:
    """Send ``trigger`` as a RetrainRequest, wait for the broker and return whether it
    acknowledged the request."""
    request = {
        "request_id": trigger.request_id,
        "target": trigger.target,
        "reason": trigger.reason,
        "evidence": trigger.evidence,
        "detail": trigger.detail,
        "requested_at": datetime.fromtimestamp(trigger.requested_s, UTC),
        "requested_by": REQUESTED_BY,
    }
    value = codec.encode("RetrainRequest", request)
    try:
        sent = await retrain.send(key=trigger.target.encode(), value=value)
        await sent
    except (TimeoutError, KafkaError, ProducerSendError) as exc:
        logger.warning(
            "retrain request %s for target %s (%s) was not delivered to %s: %s; %s",
            trigger.request_id, trigger.target, trigger.reason, retrain.get_topic_name(), exc,
            "it is sent again at the next check" if trigger.reason == "volume" else "dropped",
        )
        return False
    logger.info(
        "requested retraining of target %s (%s, request %s): %s; %s",
        trigger.target, trigger.reason, trigger.request_id, trigger.evidence, trigger.detail,
    )
    return True


def run_worker(settings: Settings) -> None:
    """Run the monitors until SIGINT or SIGTERM.

    Raises ``deltalake.exceptions.DeltaError`` or ``OSError`` when the registry tables cannot
    be read on start.
    """
    app = build_app(settings)
    worker = faust.Worker(
        app,
        loglevel="INFO",
        quiet=True,
        # faust logs at WARNING and above; the monitors' own lifecycle messages at INFO.
        logging_config={
            "merge": True,
            "root": {"level": "WARNING"},
            "loggers": {"streams": {"level": "INFO"}},
        },
    )
    worker.execute_from_commandline()
