"""The record of retrain jobs: the Delta table ``registry/retrain_jobs`` under the lake root.

One row per job, replaced by a Delta merge on ``job_id`` at every change of state or step. The
row is the orchestrator's whole memory of a job: after a restart it reads the unfinished rows
and follows their backend jobs again, and the ``request_ids`` of every row tell it which retrain
requests it has already recorded.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Literal

import pyarrow as pa
from deltalake import DeltaTable
from deltalake.exceptions import CommitFailedError, DeltaError

from infra.exceptions import OrchestratorError

if TYPE_CHECKING:
    from bcratos.config import Settings

logger = logging.getLogger(__name__)

RETRAIN_JOBS_TABLE: Final = "registry/retrain_jobs"
COMMIT_ATTEMPTS: Final = 3
"""Attempts of one merge when concurrent commits conflict."""

JobState = Literal["submitted", "running", "succeeded", "failed"]
FINISHED_STATES: Final = frozenset({"succeeded", "failed"})

Step = Literal["prepare", "train", "announce"]
STEPS: Final[tuple[Step, ...]] = ("prepare", "train", "announce")
"""Pipeline of a retrain job, in order; each step is a job of the template of the same name."""

_TIMESTAMP: Final = pa.timestamp("us", tz="UTC")

SCHEMA: Final = pa.schema(
    [
        pa.field("job_id", pa.string(), nullable=False),
        pa.field("target", pa.string(), nullable=False),
        pa.field("reasons", pa.string(), nullable=False),  # JSON list, one entry per request
        pa.field("request_ids", pa.string(), nullable=False),  # JSON list
        pa.field("evidence", pa.string(), nullable=False),  # JSON object: request id to request
        pa.field("state", pa.string(), nullable=False),
        pa.field("step", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("backend", pa.string(), nullable=False),
        pa.field("backend_job_ids", pa.string(), nullable=False),  # JSON object: step to job id
        pa.field("created_at", _TIMESTAMP, nullable=False),
        pa.field("updated_at", _TIMESTAMP, nullable=False),
        pa.field("message", pa.string(), nullable=False),
    ]
)


@dataclass(frozen=True)
class RetrainJob:
    """One retrain job: a pipeline of backend jobs for one target."""

    job_id: str
    target: str
    dataset: str
    """Name of the gold dataset that the prepare step writes and the later steps read."""
    backend: str
    reasons: tuple[str, ...] = ()
    request_ids: tuple[str, ...] = ()
    evidence: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Each request by its id: reason, evidence values, detail, sender and request time."""
    state: JobState = "submitted"
    step: Step = "prepare"
    backend_job_ids: Mapping[str, str] = field(default_factory=dict)
    """Backend job id of each step that was submitted, by step."""
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    updated_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    message: str = ""

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES

    @property
    def step_job_id(self) -> str | None:
        """Backend job id of the current step; None until the step was submitted."""
        return self.backend_job_ids.get(self.step)

    def changed(self, **changes: Any) -> RetrainJob:
        """Return a copy with ``changes`` applied and ``updated_at`` set to now."""
        return replace(self, updated_at=datetime.now(UTC), **changes)

    def to_row(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "target": self.target,
            "reasons": json.dumps(list(self.reasons)),
            "request_ids": json.dumps(list(self.request_ids)),
            "evidence": json.dumps({key: dict(value) for key, value in self.evidence.items()}),
            "state": self.state,
            "step": self.step,
            "dataset": self.dataset,
            "backend": self.backend,
            "backend_job_ids": json.dumps(dict(self.backend_job_ids)),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "message": self.message,
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> RetrainJob:
        return cls(
            job_id=row["job_id"],
            target=row["target"],
            dataset=row["dataset"],
            backend=row["backend"],
            reasons=tuple(json.loads(row["reasons"])),
            request_ids=tuple(json.loads(row["request_ids"])),
            evidence=json.loads(row["evidence"]),
            state=row["state"],
            step=row["step"],
            backend_job_ids=json.loads(row["backend_job_ids"]),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            message=row["message"],
        )


def table_uri(settings: Settings) -> str:
    return f"{settings.lake_uri.rstrip('/')}/{RETRAIN_JOBS_TABLE}"


def list_jobs(settings: Settings) -> list[RetrainJob]:
    """Return every recorded job, oldest first; an empty list when the table does not exist."""
    uri = table_uri(settings)
    try:
        if not DeltaTable.is_deltatable(uri):
            return []
        rows = DeltaTable(uri).to_pyarrow_table().to_pylist()
    except (DeltaError, OSError) as exc:
        raise OrchestratorError(f"reading Delta table {uri} failed: {exc}") from exc
    jobs = [RetrainJob.from_row(row) for row in rows]
    return sorted(jobs, key=lambda job: job.created_at)


def record_job(settings: Settings, job: RetrainJob) -> int:
    """Insert ``job``, or replace the row with its job id; return the new table version.

    Raises ``OrchestratorError`` when the commit fails.
    """
    uri = table_uri(settings)
    source = pa.Table.from_pylist([job.to_row()], schema=SCHEMA)
    attempt = 1
    while True:
        try:
            table = _open_or_create(uri)
            (
                table.merge(
                    source, predicate="t.job_id = s.job_id", source_alias="s", target_alias="t"
                )
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .execute()
            )
        except CommitFailedError as exc:
            if attempt == COMMIT_ATTEMPTS:
                raise OrchestratorError(
                    f"recording retrain job {job.job_id} in Delta table {uri} failed after "
                    f"{attempt} conflicting commits: {exc}"
                ) from exc
            logger.warning(
                "commit to Delta table %s conflicted on attempt %d of %d, retrying: %s",
                uri, attempt, COMMIT_ATTEMPTS, exc,
            )
            attempt += 1
            continue
        except (DeltaError, OSError) as exc:
            raise OrchestratorError(
                f"recording retrain job {job.job_id} in Delta table {uri} failed: {exc}"
            ) from exc
        return table.version()


def _open_or_create(uri: str) -> DeltaTable:
    if DeltaTable.is_deltatable(uri):
        return DeltaTable(uri)
    return DeltaTable.create(uri, schema=SCHEMA, mode="ignore", name="retrain_jobs")
