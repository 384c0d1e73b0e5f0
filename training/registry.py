"""The model registry: the Delta table ``registry/models`` under the lake root.

One row per target and model version, partitioned by ``target``, written by the validation
gate (`training.gate`) whether it announced the model or rejected it. Writing the same model
version again (a rejected candidate announced later with ``--force``) replaces its row, by a
Delta merge on ``(target, model_version)``.

The current model of a target is its most recently decided row with decision ``announced``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, Literal

import pyarrow as pa
from deltalake import DeltaTable
from deltalake.exceptions import CommitFailedError, DeltaError

from training.errors import TrainingError

if TYPE_CHECKING:
    from bcratos.config import Settings

logger = logging.getLogger(__name__)

MODELS_TABLE: Final = "registry/models"
PARTITION_COLUMNS: Final = ("target",)
COMMIT_ATTEMPTS: Final = 3
"""Attempts of one merge when concurrent commits conflict."""

Decision = Literal["announced", "rejected"]
DECISIONS: Final = ("announced", "rejected")

_TIMESTAMP: Final = pa.timestamp("us", tz="UTC")

SCHEMA: Final = pa.schema(
    [
        pa.field("target", pa.string(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("created_at", _TIMESTAMP, nullable=False),  # when the model was exported
        pa.field("decided_at", _TIMESTAMP, nullable=False),  # when the gate decided
        pa.field("dataset", pa.string()),  # name of the gold dataset it was trained on
        pa.field("manifest_hash", pa.string()),  # SHA-256 of that dataset's manifest
        pa.field("architecture", pa.string()),
        pa.field("artifact_uri", pa.string(), nullable=False),
        pa.field("weights_sha256", pa.string(), nullable=False),
        pa.field("key_id", pa.string()),  # signing key id; null when it was not signed
        pa.field("candidate_score", pa.float64()),  # null when the gate was skipped unscored
        pa.field("current_model_version", pa.string()),  # model compared with, null if none
        pa.field("current_score", pa.float64()),  # its score on the same data
        pa.field("decision", pa.string(), nullable=False),  # "announced" or "rejected"
        pa.field("reason", pa.string(), nullable=False),
        pa.field("metrics", pa.string(), nullable=False),  # JSON object of the export metrics
    ]
)


class RegistryError(TrainingError):
    """The registry table cannot be read or written, or has another layout."""


@dataclass(frozen=True)
class ModelEntry:
    """One row of ``registry/models``."""

    target: str  # subject pseudonym or "global"
    model_version: str
    created_at: datetime  # aware, UTC
    decided_at: datetime  # aware, UTC
    artifact_uri: str
    weights_sha256: str
    decision: Decision
    reason: str
    dataset: str | None = None
    manifest_hash: str | None = None
    architecture: str | None = None
    key_id: str | None = None
    candidate_score: float | None = None
    current_model_version: str | None = None
    current_score: float | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.decision not in DECISIONS:
            raise ValueError(
                f"invalid decision {self.decision!r} for model {self.model_version}: "
                f"expected one of {DECISIONS}"
            )
        for name in ("created_at", "decided_at"):
            value = getattr(self, name)
            if value.tzinfo is None:
                raise ValueError(f"{name} of model {self.model_version} must be timezone-aware")

    def to_row(self) -> dict[str, Any]:
        """Return the entry as a table row, with `metrics` as a JSON string."""
        row = asdict(self)
        row["metrics"] = json.dumps(dict(self.metrics), sort_keys=True)
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ModelEntry:
        """Build an entry from a row read from the table."""
        values = dict(row)
        values["metrics"] = json.loads(values["metrics"] or "{}")
        return cls(**values)


def table_uri(settings: Settings) -> str:
    """Return the URI of ``registry/models`` under the lake root."""
    # NOTE: the lake's residency check (`streams.lake.check_lake_uri`) is not applied here,
    # because training does not import stream internals; the registry contains no event data.
    return f"{settings.lake_uri.rstrip('/')}/{MODELS_TABLE}"


def record_model(settings: Settings, entry: ModelEntry) -> int:
    """Insert `entry`, or replace the row of the same target and model version.

    Returns the new table version. Raises `RegistryError` when the commit fails.
    """
    uri = table_uri(settings)
    source = pa.Table.from_pylist([entry.to_row()], schema=SCHEMA)
    attempt = 1
    while True:
        table = _open_or_create(uri)
        try:
            (
                table.merge(
                    source,
                    predicate="t.target = s.target AND t.model_version = s.model_version",
                    source_alias="s",
                    target_alias="t",
                )
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .execute()
            )
        except CommitFailedError as exc:
            if attempt == COMMIT_ATTEMPTS:
                raise RegistryError(
                    f"recording model {entry.model_version} for target {entry.target} in "
                    f"Delta table {uri} failed after {attempt} conflicting commits: {exc}"
                ) from exc
            logger.warning(
                "commit to Delta table %s conflicted on attempt %d of %d, retrying: %s",
                uri,
                attempt,
                COMMIT_ATTEMPTS,
                exc,
            )
            attempt += 1
            continue
        except (DeltaError, OSError) as exc:
            raise RegistryError(
                f"recording model {entry.model_version} for target {entry.target} in Delta "
                f"table {uri} failed: {exc}"
            ) from exc
        version = table.version()
        logger.info(
            "recorded model %s for target %s as %s in Delta table %s at version %d",
            entry.model_version,
            entry.target,
            entry.decision,
            uri,
            version,
        )
        return version


def list_models(settings: Settings, target: str | None = None) -> list[ModelEntry]:
    """Return the registry rows, of one target or of all, oldest decision first."""
    uri = table_uri(settings)
    try:
        if not DeltaTable.is_deltatable(uri):
            return []
        table = DeltaTable(uri)
        _check_layout(table, uri)
        filters = [("target", "=", target)] if target is not None else None
        rows = table.to_pyarrow_table(filters=filters).to_pylist()
    except (DeltaError, OSError) as exc:
        raise RegistryError(f"cannot read Delta table {uri}: {exc}") from exc
    entries = [ModelEntry.from_row(row) for row in rows]
    entries.sort(key=lambda entry: (entry.decided_at, entry.target, entry.model_version))
    return entries


def current_model(settings: Settings, target: str) -> ModelEntry | None:
    """Return the model most recently announced for `target`, or None when there is none."""
    announced = [entry for entry in list_models(settings, target) if entry.decision == "announced"]
    return announced[-1] if announced else None


def _open_or_create(uri: str) -> DeltaTable:
    try:
        if DeltaTable.is_deltatable(uri):
            table = DeltaTable(uri)
        else:
            table = DeltaTable.create(
                uri, schema=SCHEMA, mode="ignore", partition_by=list(PARTITION_COLUMNS)
            )
            logger.info("created Delta table %s at version %d", uri, table.version())
    except (DeltaError, OSError) as exc:
        raise RegistryError(f"cannot open or create Delta table {uri}: {exc}") from exc
    _check_layout(table, uri)
    return table


def _check_layout(table: DeltaTable, uri: str) -> None:
    partitions = tuple(table.metadata().partition_columns)
    columns = [column.name for column in table.schema().fields]
    if partitions != PARTITION_COLUMNS or columns != SCHEMA.names:
        raise RegistryError(
            f"Delta table {uri} at version {table.version()} does not match the layout of "
            f"{MODELS_TABLE}: expected columns {SCHEMA.names} partitioned by "
            f"{list(PARTITION_COLUMNS)}, found columns {columns} partitioned by "
            f"{list(partitions)}"
        )
