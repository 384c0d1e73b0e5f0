"""The faust application that validates and anonymizes raw board events.

One agent consumes the four raw topics in batches. Each message goes through `IngestPipeline`;
its output goes to an ``anon.*`` topic keyed by session pseudonym, or to the dead-letter topic.
The batch's output is flushed before faust acknowledges the batch, and faust commits only
acknowledged offsets, so a crash repeats events rather than losing them. The repeats carry
their original board sequence numbers, and the validator and the lake sink drop them.

Several workers share the raw partitions through the consumer group: start
``bcratos streams run`` several times, or once with ``--workers N``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import Any

import faust
from confluent_kafka import KafkaError, Message, Producer

from bcratos.config import Settings
from streams.anonymize import Anonymizer, MetadataPolicy, Pseudonymizer, load_key
from streams.exceptions import AnonymizationKeyError, StreamsError
from streams.ingest import IngestPipeline, OutMessage
from streams.validate import ValidationSettings, Validator

logger = logging.getLogger(__name__)

RAW_TOPICS = ("raw.spikes", "raw.behavior", "raw.eskin", "raw.decoder")


def resolve_key(settings: Settings) -> tuple[bytes, str]:
    """Load the pseudonymization key, falling back to the embedded stack's key file.

    Raises `AnonymizationKeyError` when neither the settings nor the data directory have one.
    """
    anonymization = settings.anonymization
    if anonymization.key is None and anonymization.key_file is None:
        fallback = settings.embedded_key_file
        if not fallback.is_file():
            raise AnonymizationKeyError(
                "no pseudonymization key: set BCRATOS_ANONYMIZATION__KEY_FILE (or "
                f"BCRATOS_ANONYMIZATION__KEY), or run `bcratos stack up`, which creates {fallback}"
            )
        logger.info("using the embedded stack's pseudonymization key file %s", fallback)
        anonymization = anonymization.model_copy(update={"key_file": fallback})
    return load_key(anonymization)


def build_pipeline(settings: Settings) -> IngestPipeline:
    """Create the validate-and-anonymize pipeline for ``settings``."""
    key, key_id = resolve_key(settings)
    streams = settings.streams
    validator = Validator(
        ValidationSettings(
            max_future_skew_s=streams.max_future_skew_s,
            max_past_skew_s=streams.max_past_skew_s,
        )
    )
    anonymizer = Anonymizer(Pseudonymizer(key, key_id), MetadataPolicy(streams.metadata_policy))
    return IngestPipeline(validator, anonymizer, topic_prefix=settings.kafka.topic_prefix)


def build_app(settings: Settings, pipeline: IngestPipeline) -> faust.App:
    """Create the faust application around ``pipeline``."""
    app = faust.App(
        settings.streams.ingest_group,
        broker=f"kafka://{settings.kafka.bootstrap}",
        store="memory://",
        datadir=str(settings.data_dir / "faust"),
        web_enabled=False,
        # One broker in the embedded stack: faust's own topics get one replica there.
        topic_replication_factor=1 if settings.kafka.embedded else 3,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_compression_type="lz4",
        stream_buffer_maxsize=65_536,
        broker_commit_every=10_000,
    )
    raw = app.topic(
        *(settings.topic(name) for name in RAW_TOPICS), value_type=bytes, value_serializer="raw"
    )
    metrics = MetricsFile(settings, pipeline)

    producer = BatchProducer(settings)

    @app.agent(raw)
    async def validate_and_anonymize(stream: faust.StreamT[bytes]) -> None:
        loop = asyncio.get_running_loop()
        batches = stream.take_events(BATCH_EVENTS, within=BATCH_WITHIN_S)  # type: ignore[attr-defined]
        async for events in batches:
            for event in events:
                message = event.message
                out = pipeline.process(
                    message.topic, message.partition, message.offset, event.value
                )
                if out is not None:
                    producer.produce(out)
            # Faust acknowledges the batch's offsets only after this body returns, so every
            # output is delivered before its input can be committed (at least once).
            await loop.run_in_executor(None, producer.flush_or_raise)
            metrics.maybe_write()

    @app.timer(interval=settings.streams.metrics_interval_s)  # type: ignore[untyped-decorator]
    async def report_metrics() -> None:
        metrics.write(log=True)

    return app


BATCH_EVENTS = 5_000
"""Raw events processed per batch; their outputs are flushed before faust acknowledges them."""
BATCH_WITHIN_S = 0.2
"""Maximum wait for a batch to fill, in seconds."""


class BatchProducer:
    """A confluent-kafka producer for the agent's output, flushed once per batch.

    Faust's own producer sends one message at a time from Python, which limited the stage to
    about 1,000-2,000 events/s on the development machine. librdkafka batches in C instead.
    """

    def __init__(self, settings: Settings) -> None:
        self._producer = Producer(
            {
                "bootstrap.servers": settings.kafka.bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "compression.type": "lz4",
                "linger.ms": 5,
                "queue.buffering.max.messages": 200_000,
                "logger": logging.getLogger(f"{__name__}.librdkafka"),
            }
        )
        self._failures: list[str] = []

    def produce(self, message: OutMessage) -> None:
        """Queue one message, serving delivery reports while the local queue is full."""
        while True:
            try:
                self._producer.produce(
                    message.topic,
                    key=message.key,
                    value=message.value,
                    headers=list(message.headers) or None,
                    on_delivery=self._on_delivery,
                )
                return
            except BufferError:
                self._producer.poll(0.1)

    def flush_or_raise(self, timeout_s: float = 60.0) -> None:
        """Deliver everything queued; raise when a message failed or the flush timed out."""
        remaining = self._producer.flush(timeout_s)
        if remaining or self._failures:
            failures, self._failures = self._failures[:3], []
            raise StreamsError(
                f"output of the ingest stage not delivered: {remaining} messages still queued "
                f"after {timeout_s:.0f} s, failures: {failures}; the worker stops so that its "
                "uncommitted input is processed again"
            )

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self._failures.append(f"{message.topic()}: {error.str()}")


class MetricsFile:
    """Counters of one worker, logged and written to ``<data_dir>/streams/`` as JSON."""

    def __init__(self, settings: Settings, pipeline: IngestPipeline) -> None:
        self._pipeline = pipeline
        self._interval_s = settings.streams.metrics_interval_s
        self._path = settings.data_dir / "streams" / f"ingest-{os.getpid()}.json"
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._next_write = 0.0
        self._started = time.time()

    def maybe_write(self) -> None:
        """Write the file when the interval has passed (cheap to call per event)."""
        if time.monotonic() >= self._next_write:
            self.write(log=False)

    def write(self, *, log: bool) -> None:
        """Write the counters now, and log them at INFO when ``log`` is set."""
        self._next_write = time.monotonic() + self._interval_s
        snapshot: dict[str, Any] = {
            "stage": "ingest",
            "pid": os.getpid(),
            "started_at": self._started,
            "updated_at": time.time(),
            **self._pipeline.counters.as_dict(),
        }
        temporary = self._path.with_suffix(".tmp")
        temporary.write_text(json.dumps(snapshot, indent=1))
        temporary.replace(self._path)
        if log:
            logger.info("ingest counters: %s", json.dumps(snapshot["topics"]))


def run_worker(settings: Settings) -> None:
    """Run one ingest worker until it is stopped (SIGINT or SIGTERM)."""
    pipeline = build_pipeline(settings)
    app = build_app(settings, pipeline)
    worker = faust.Worker(app, loglevel="WARNING", quiet=True)
    worker.execute_from_commandline()
