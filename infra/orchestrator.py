"""The retrain orchestrator: turns retrain requests into one pipeline of HPC jobs per target.

It reads RetrainRequest events from ``<prefix>retrain`` (consumer group ``orchestrator.group``)
and, for each target:

1. collects the requests of ``orchestrator.debounce_s`` seconds, counted from the first one,
   into one job, which starts once the stream processors have caught up with the topics
   (``orchestrator.max_pipeline_lag``, for at most ``orchestrator.lake_wait_s``);
2. records the job in the Delta table ``registry/retrain_jobs`` and only then commits the
   requests' Kafka offsets, so a request is either recorded or read again after a restart;
3. runs the steps prepare, train and announce one after the other, each as a job of the template
   of the same name on the configured HPC backend, polling every ``orchestrator.poll_interval_s``;
4. publishes a JobStatus event keyed by job id to ``<prefix>jobs`` at every change of state
   or step.

A target has at most one unfinished job. A request for a target whose job is unfinished is
added to that job's row instead of starting another one. After a restart the orchestrator
reads the unfinished rows and polls their backend jobs again. A step that it was submitting
when it stopped is not submitted twice. Instead, the job is marked failed with a message that
explains why.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from bcratos.config import Settings
from infra.exceptions import OrchestratorError
from infra.hpc import (
    Backend,
    HpcError,
    JobNotFoundError,
    JobSpec,
    JobState,
    create_backend,
)
from infra.lag import pipeline_lag
from infra.processes import Service
from infra.retrain_jobs import STEPS, RetrainJob, list_jobs, record_job
from schemas import codec
from schemas.exceptions import SchemaError

logger = logging.getLogger(__name__)

RETRAIN_TOPIC: Final = "retrain"
JOBS_TOPIC: Final = "jobs"
REASONS: Final = ("volume", "drift", "schedule", "manual")
_DATASET_MAX_CHARS: Final = 64  # the dataset pattern of the default templates
_LOG_TAIL_CHARS: Final = 500
_PUBLISH_TIMEOUT_S: Final = 10.0

SERVICE: Final = Service(
    "orchestrator", (sys.executable, "-m", "bcratos.cli", "orchestrator", "run"), b"orchestrator"
)
"""``bcratos orchestrator start`` runs this in the background (``infra.processes``)."""


@dataclass(frozen=True)
class _Request:
    """A retrain request read from Kafka and not yet recorded in a job row."""

    request_id: str
    target: str
    summary: Mapping[str, Any]
    partition: int
    offset: int


@dataclass
class _Batch:
    first_seen_s: float  # monotonic clock
    requests: list[_Request] = field(default_factory=list)
    waiting_logged: bool = False  # the wait for the stream processors was logged


class Orchestrator:
    """Consumes retrain requests and drives one job per target through its steps."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
        lag_reader: Callable[[Settings], int | None] = pipeline_lag,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._lag_reader = lag_reader
        self._last_lag: int | None = None
        self._next_lag_check_s = 0.0
        self._topic = settings.topic(RETRAIN_TOPIC)
        self._backends: dict[str, Backend] = {}
        self._jobs: dict[str, RetrainJob] = {}  # unfinished jobs by target
        self._known_requests: set[str] = set()
        self._batches: dict[str, _Batch] = {}  # debouncing requests by target
        self._uncommitted: dict[int, set[int]] = {}  # partition: offsets not yet recorded
        self._next_offset: dict[int, int] = {}  # partition: offset after the last one read
        self._committed: dict[int, int] = {}  # partition: last committed offset
        self._producer = Producer(
            {
                "bootstrap.servers": settings.kafka.bootstrap,
                "acks": "all",
                "enable.idempotence": True,
                "logger": logging.getLogger(f"{__name__}.librdkafka"),
            }
        )

    # -----------------------------------------------------------------------------------------
    # Main loop

    def run(self, stop: threading.Event) -> None:
        """Consume requests and poll jobs until ``stop`` is set.

        Raises ``OrchestratorError`` when the job table cannot be read or written. The offsets
        of requests not yet recorded stay uncommitted, so a restart reads them again.
        """
        consumer = Consumer(
            {
                "bootstrap.servers": self.settings.kafka.bootstrap,
                "group.id": self.settings.orchestrator.group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "logger": logging.getLogger(f"{__name__}.librdkafka"),
            }
        )
        consumer.subscribe([self._topic], on_revoke=self._on_revoke)
        logger.info(
            "orchestrator started: topic %s, consumer group %s, backend %s",
            self._topic, self.settings.orchestrator.group, self.settings.hpc.backend,
        )
        poll_interval_s = self.settings.orchestrator.poll_interval_s
        next_poll_s = self._clock() + poll_interval_s
        try:
            self.resume()
            while not stop.is_set():
                message = consumer.poll(min(0.5, poll_interval_s))
                if message is not None:
                    self._receive(message)
                self.start_due_jobs()
                self._commit(consumer)
                if self._clock() >= next_poll_s:
                    self.poll_jobs()
                    next_poll_s = self._clock() + poll_interval_s
        finally:
            consumer.close()
            self._producer.flush(10.0)
            logger.info("orchestrator stopped with %d unfinished jobs", len(self._jobs))

    def resume(self) -> None:
        """Load the recorded jobs and poll the unfinished ones again."""
        for job in list_jobs(self.settings):
            self._known_requests.update(job.request_ids)
            if job.finished:
                continue
            previous = self._jobs.get(job.target)
            if previous is not None:
                self._finish(
                    previous, "failed",
                    f"job {job.job_id} for the same target is also unfinished; keeping the newer",
                )
            self._jobs[job.target] = job
            logger.info(
                "resuming retrain job %s for target %s at step %s",
                job.job_id, job.target, job.step,
            )
        self.poll_jobs()

    # -----------------------------------------------------------------------------------------
    # Requests

    def _receive(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                logger.warning("consumer error on topic %s: %s", self._topic, error.str())
            return
        partition = message.partition() or 0
        offset = message.offset() or 0
        self._next_offset[partition] = offset + 1
        where = f"{self._topic}[{partition}]@{offset}"
        try:
            decoded = codec.decode(
                message.value(), topic=self._topic, partition=partition, offset=offset
            )
        except SchemaError as exc:
            logger.warning("skipping an invalid retrain request at %s: %s", where, exc)
            return
        if decoded.name != "RetrainRequest":
            logger.warning(
                "skipping a %s record at %s: expected RetrainRequest", decoded.name, where
            )
            return

        record = decoded.record
        request = _Request(
            request_id=record["request_id"],
            target=record["target"],
            summary={
                "reason": record["reason"],
                "evidence": dict(record["evidence"]),
                "detail": record["detail"],
                "requested_by": record["requested_by"],
                "requested_at": record["requested_at"].isoformat(),
            },
            partition=partition,
            offset=offset,
        )
        waiting = self._batches.get(request.target)
        waiting_ids = {r.request_id for r in waiting.requests} if waiting else set()
        if request.request_id in self._known_requests | waiting_ids:
            logger.info("retrain request %s at %s was already read", request.request_id, where)
            return
        job = self._jobs.get(request.target)
        if job is not None:
            self._add_to_job(job, request)
            return
        batch = self._batches.setdefault(request.target, _Batch(self._clock()))
        batch.requests.append(request)
        self._uncommitted.setdefault(partition, set()).add(offset)
        logger.info(
            "retrain request %s for target %s (%s) at %s is waiting for more requests",
            request.request_id, request.target, record["reason"], where,
        )

    def _add_to_job(self, job: RetrainJob, request: _Request) -> None:
        # NOTE: the request joins the unfinished job even when that job's dataset was prepared
        # before the request arrived, so data that arrived since then waits for the next request.
        job = job.changed(
            reasons=(*job.reasons, request.summary["reason"]),
            request_ids=(*job.request_ids, request.request_id),
            evidence={**job.evidence, request.request_id: request.summary},
        )
        self._save(job)
        self._known_requests.add(request.request_id)
        logger.info(
            "retrain request %s joined the unfinished job %s of target %s",
            request.request_id, job.job_id, job.target,
        )

    def start_due_jobs(self) -> None:
        """Start a job for every target whose debounce window has passed and that has none,
        once the stream processors have caught up (see `_lake_caught_up`)."""
        now_s = self._clock()
        for target, batch in list(self._batches.items()):
            if now_s - batch.first_seen_s < self.settings.orchestrator.debounce_s:
                continue
            if target in self._jobs:
                continue
            if not self._lake_caught_up(target, batch, now_s):
                continue
            del self._batches[target]
            self._start_job(target, batch.requests)

    def _lake_caught_up(self, target: str, batch: _Batch, now_s: float) -> bool:
        """Return True when ingest and the lake sink lag by at most ``max_pipeline_lag``
        messages, when their lag cannot be read, or when the batch has waited ``lake_wait_s``
        after its debounce."""
        limit = self.settings.orchestrator.max_pipeline_lag
        if limit is None:
            return True
        waited_s = now_s - batch.first_seen_s - self.settings.orchestrator.debounce_s
        if waited_s >= self.settings.orchestrator.lake_wait_s:
            logger.warning(
                "starting the retrain job of target %s although the stream processors have not "
                "caught up after %.0f s (lag %s); its dataset may miss recent data",
                target, waited_s, self._last_lag,
            )
            return True
        if self._clock() >= self._next_lag_check_s:
            self._last_lag = self._lag_reader(self.settings)
            interval_s = min(2.0, self.settings.orchestrator.poll_interval_s)
            self._next_lag_check_s = self._clock() + interval_s
            if self._last_lag is not None and self._last_lag > limit and not batch.waiting_logged:
                batch.waiting_logged = True
                logger.info(
                    "retrain job of target %s waits until the stream processors catch up: "
                    "%d messages to go",
                    target, self._last_lag,
                )
        if self._last_lag is None:
            if not batch.waiting_logged:
                batch.waiting_logged = True
                logger.warning(
                    "the lag of the stream processors could not be read; starting the retrain "
                    "job of target %s without waiting for them",
                    target,
                )
            return True
        return self._last_lag <= limit

    def _start_job(self, target: str, requests: list[_Request]) -> None:
        now = datetime.now(UTC)
        job_id = f"retrain-{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
        job = RetrainJob(
            job_id=job_id,
            target=target,
            dataset=dataset_name(target, job_id),
            backend=self.settings.hpc.backend,
            reasons=tuple(request.summary["reason"] for request in requests),
            request_ids=tuple(request.request_id for request in requests),
            evidence={request.request_id: request.summary for request in requests},
            created_at=now,
            updated_at=now,
        )
        # The row is written before the offsets are committed and before anything runs.
        self._save(job)
        for request in requests:
            self._known_requests.add(request.request_id)
            self._uncommitted.get(request.partition, set()).discard(request.offset)
        self._jobs[target] = job
        logger.info(
            "retrain job %s for target %s created from %d requests (%s)",
            job_id, target, len(requests), ", ".join(job.reasons),
        )
        self._publish(job)
        self._submit_step(job)

    def _commit(self, consumer: Consumer) -> None:
        offsets = []
        for partition, next_offset in self._next_offset.items():
            waiting = self._uncommitted.get(partition)
            position = min(waiting) if waiting else next_offset
            if self._committed.get(partition) != position:
                offsets.append(TopicPartition(self._topic, partition, position))
        if not offsets:
            return
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            logger.warning(
                "committing offsets %s of topic %s failed, retrying: %s",
                {entry.partition: entry.offset for entry in offsets}, self._topic, exc,
            )
            return
        for entry in offsets:
            self._committed[entry.partition] = entry.offset

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Requests of a revoked partition are read again by its next owner from the committed
        # offset, so they are dropped here.
        revoked = {entry.partition for entry in partitions}
        for target, batch in list(self._batches.items()):
            batch.requests = [r for r in batch.requests if r.partition not in revoked]
            if not batch.requests:
                del self._batches[target]
        for partition in revoked:
            self._uncommitted.pop(partition, None)
            self._next_offset.pop(partition, None)
            self._committed.pop(partition, None)

    # -----------------------------------------------------------------------------------------
    # Steps

    def poll_jobs(self) -> None:
        """Query the backend job of every unfinished job's step and advance the job."""
        for job in list(self._jobs.values()):
            self._poll(job)

    def _poll(self, job: RetrainJob) -> None:
        step_job_id = job.step_job_id
        if step_job_id is None:
            self._finish(
                job, "failed",
                f"the orchestrator stopped while submitting step {job.step}, so the step may or "
                f"may not have started; it is not submitted again, to avoid running it twice. "
                f"Check {self.settings.data_dir / 'jobs'} and request a retrain again",
            )
            return
        try:
            status = self._backend(job.backend).status(step_job_id)
        except JobNotFoundError as exc:
            message = f"step {job.step}: backend job {step_job_id} is lost: {exc}"
            self._finish(job, "failed", message)
            return
        except HpcError as exc:
            logger.warning(
                "status of backend job %s of retrain job %s failed, retrying at the next poll: %s",
                step_job_id, job.job_id, exc,
            )
            return

        if status.state is JobState.RUNNING and job.state == "submitted":
            job = job.changed(state="running")
            self._save(job)
            self._publish(job)
        elif status.state is JobState.SUCCEEDED:
            self._next_step(job)
        elif status.state in (JobState.FAILED, JobState.CANCELLED):
            exit_code = "unknown" if status.exit_code is None else str(status.exit_code)
            message = (
                f"step {job.step} (backend job {step_job_id}) {status.state} with exit code "
                f"{exit_code}: {status.detail or 'no detail'}"
            )
            tail = self._log_tail(job.backend, step_job_id)
            self._finish(job, "failed", f"{message}; log tail: {tail}" if tail else message)

    def _next_step(self, job: RetrainJob) -> None:
        index = STEPS.index(job.step)
        if index + 1 == len(STEPS):
            self._finish(job, "succeeded", f"steps {', '.join(STEPS)} succeeded")
            return
        job = job.changed(step=STEPS[index + 1], state="running")
        self._save(job)
        self._publish(job)
        self._submit_step(job)

    def _submit_step(self, job: RetrainJob) -> None:
        try:
            parameters = self._parameters(job)
            step_job_id = self._backend(job.backend).submit(JobSpec(job.step, parameters))
        except (HpcError, OrchestratorError) as exc:
            self._finish(job, "failed", f"submitting step {job.step} failed: {exc}")
            return
        job = job.changed(backend_job_ids={**job.backend_job_ids, job.step: step_job_id})
        self._save(job)
        logger.info(
            "retrain job %s: step %s submitted as backend job %s",
            job.job_id, job.step, step_job_id,
        )

    def _parameters(self, job: RetrainJob) -> dict[str, str]:
        if job.step == "prepare":
            return {"dataset": job.dataset}
        if job.step == "train":
            return {
                "dataset": job.dataset,
                "model": self.settings.orchestrator.model,
                "device": self.settings.orchestrator.device,
                "target": job.target,
            }
        model_dir = exported_model(self.settings, job.dataset)
        return {"model_dir": str(model_dir), "target": job.target, "dataset": job.dataset}

    def _finish(self, job: RetrainJob, state: str, message: str) -> None:
        job = job.changed(state=state, message=message)
        self._save(job)
        self._jobs.pop(job.target, None)
        self._publish(job)
        level = logging.INFO if state == "succeeded" else logging.WARNING
        logger.log(
            level, "retrain job %s for target %s %s: %s", job.job_id, job.target, state, message
        )

    # -----------------------------------------------------------------------------------------
    # Helpers

    def _save(self, job: RetrainJob) -> None:
        record_job(self.settings, job)
        if not job.finished:
            self._jobs[job.target] = job

    def _backend(self, name: str) -> Backend:
        if name not in self._backends:
            self._backends[name] = create_backend(self.settings, name)
        return self._backends[name]

    def _log_tail(self, backend: str, step_job_id: str) -> str:
        try:
            text = self._backend(backend).logs(step_job_id)
        except HpcError as exc:
            logger.warning("reading the logs of backend job %s failed: %s", step_job_id, exc)
            return ""
        return " ".join(text[-_LOG_TAIL_CHARS:].split())

    def _publish(self, job: RetrainJob) -> None:
        topic = self.settings.topic(JOBS_TOPIC)
        event = {
            "job_id": job.job_id,
            "target": job.target,
            "state": job.state,
            "stage": job.step,
            "backend": job.backend,
            "backend_job_id": job.step_job_id,
            "message": job.message,
            "time": job.updated_at,
        }

        def report(error: KafkaError | None, _message: Message) -> None:
            if error is not None:
                logger.warning(
                    "publishing status %s of retrain job %s to %s failed: %s",
                    job.state, job.job_id, topic, error.str(),
                )

        self._producer.produce(
            topic,
            key=job.job_id.encode(),
            value=codec.encode("JobStatus", event),
            on_delivery=report,
        )
        # Status changes are rare, so each one is delivered before the loop goes on.
        if self._producer.flush(_PUBLISH_TIMEOUT_S) > 0:
            logger.warning(
                "status %s of retrain job %s was not delivered to %s within %.0f s",
                job.state, job.job_id, topic, _PUBLISH_TIMEOUT_S,
            )


def dataset_name(target: str, job_id: str) -> str:
    """Return the gold dataset name of a job: ``<target>-<job id>``, the target shortened and
    with characters outside ``[A-Za-z0-9._-]`` replaced so that the name fits the pattern of
    the default templates."""
    room = _DATASET_MAX_CHARS - len(job_id) - 1
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", target)[:room].lstrip("._-")
    return f"{safe}-{job_id}" if safe else job_id


def exported_model(settings: Settings, dataset: str) -> Path:
    """Return the newest exported model folder whose ``config.json`` names ``dataset``.

    Raises ``OrchestratorError`` when there is none.
    """
    models_dir = settings.data_dir / "models"
    found: list[Path] = []
    for config_file in models_dir.glob("*/config.json"):
        try:
            config = json.loads(config_file.read_text())
        except (OSError, ValueError) as exc:
            logger.warning("skipping model config %s: %s", config_file, exc)
            continue
        if isinstance(config, dict) and config.get("dataset") == dataset:
            found.append(config_file.parent)
    if not found:
        raise OrchestratorError(
            f"no exported model in {models_dir} names dataset {dataset!r} in its config.json; "
            "check the logs of the train step"
        )
    return max(found, key=lambda folder: folder.stat().st_mtime)


def publish_request(
    settings: Settings,
    target: str,
    *,
    reason: str = "manual",
    evidence: Mapping[str, float] | None = None,
    detail: str = "",
    requested_by: str = "bcratos-cli",
    timeout_s: float = 30.0,
) -> str:
    """Publish one RetrainRequest keyed by ``target``, wait for its acknowledgement and return
    its request id. Raises ``OrchestratorError`` when the delivery fails or times out."""
    if reason not in REASONS:
        raise OrchestratorError(f"retrain reason {reason!r} is invalid; expected one of {REASONS}")

    request_id = uuid.uuid4().hex
    topic = settings.topic(RETRAIN_TOPIC)
    value = codec.encode(
        "RetrainRequest",
        {
            "request_id": request_id,
            "target": target,
            "reason": reason,
            "evidence": dict(evidence or {}),
            "detail": detail,
            "requested_at": datetime.now(UTC),
            "requested_by": requested_by,
        },
    )

    producer = Producer(
        {
            "bootstrap.servers": settings.kafka.bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "message.timeout.ms": int(timeout_s * 1000),
            "logger": logging.getLogger(f"{__name__}.librdkafka"),
        }
    )
    errors: list[KafkaError | None] = []
    producer.produce(
        topic, key=target.encode(), value=value,
        on_delivery=lambda error, _message: errors.append(error),
    )
    producer.flush(timeout_s + 5.0)

    if not errors:
        raise OrchestratorError(
            f"retrain request for target {target} to {topic} was not acknowledged within "
            f"{timeout_s} s; check that a broker answers at {settings.kafka.bootstrap}"
        )
    if errors[0] is not None:
        raise OrchestratorError(
            f"retrain request for target {target} to {topic} failed: {errors[0].str()}"
        )
    return request_id
