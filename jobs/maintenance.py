"""Compaction and vacuum of the lake's Delta tables, with delta-rs.

The sink commits small batches, so its tables gather many small files. `compact_tables` rewrites
them into fewer, larger files (Delta ``OPTIMIZE``). The replaced files stay on disk for readers
of older versions until `vacuum_tables` deletes the files that no version within the retention
period needs.

NOTE: both commit like any other writer and rely on delta-rs's conflict checks to run while the
sink appends. No test runs them concurrently with the sink.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from deltalake.exceptions import DeltaError

from jobs.catalog import Lake, LakeTable, find_tables, resolve_table
from jobs.exceptions import MaintenanceError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompactResult:
    """Files of one table before and after compaction."""

    table: str
    files_before: int
    files_after: int
    files_removed: int
    files_added: int
    version: int  # the table's version afterwards; unchanged when nothing needed compacting


@dataclass(frozen=True)
class VacuumResult:
    """Files that a vacuum deleted, or would delete in a dry run, from one table."""

    table: str
    files: list[str]
    retention_hours: int | None  # None: the table's ``delta.deletedFileRetentionDuration``
    dry_run: bool


def select_tables(lake: Lake, name: str | None) -> list[LakeTable]:
    """Return the table named or found at `name`, or every table of the lake when it is None."""
    return find_tables(lake) if name is None else [resolve_table(lake, name)]


def compact_tables(lake: Lake, tables: Sequence[LakeTable]) -> list[CompactResult]:
    """Compact each table's small files into larger ones; raises `MaintenanceError`."""
    results = []
    for table in tables:
        try:
            delta = lake.open(table)
            files_before = len(delta.file_uris())
            metrics = delta.optimize.compact()
            delta.update_incremental()
            files_after = len(delta.file_uris())
        except (DeltaError, OSError) as exc:
            raise MaintenanceError(
                f"compaction of {table.name} ({table.uri}) failed: {exc}; tables before it in "
                f"the list are compacted, and running it again is safe"
            ) from exc
        result = CompactResult(
            table=table.name,
            files_before=files_before,
            files_after=files_after,
            files_removed=int(metrics.get("numFilesRemoved", 0)),
            files_added=int(metrics.get("numFilesAdded", 0)),
            version=delta.version(),
        )
        logger.info(
            "compacted Delta table %s to version %d: %d files before, %d after",
            table.uri,
            result.version,
            files_before,
            files_after,
        )
        results.append(result)
    return results


def vacuum_tables(
    lake: Lake,
    tables: Sequence[LakeTable],
    *,
    retention_hours: int | None = None,
    force: bool = False,
    dry_run: bool = False,
) -> list[VacuumResult]:
    """Delete the files that no table version within the retention period needs.

    `retention_hours` None uses each table's ``delta.deletedFileRetentionDuration`` (7 days by
    default). A shorter retention than the table's is rejected unless `force` is true, because
    it may delete files that a running reader still reads or that a writer has written but not
    committed yet. The vacuum is "full": files that no version mentions, such as those of a
    write that crashed before its commit, are deleted too once older than the retention.
    Raises `MaintenanceError`.
    """
    if retention_hours == 0 and not force:
        raise MaintenanceError(
            "a vacuum with a retention of 0 hours deletes files that running readers and "
            "uncommitted writes still need: stop the writers and pass --force to do it anyway"
        )
    if retention_hours is not None and retention_hours < 0:
        raise MaintenanceError(
            f"invalid retention of {retention_hours} hours: expected 0 or more hours"
        )

    results = []
    for table in tables:
        try:
            files = lake.open(table).vacuum(
                retention_hours=retention_hours,
                dry_run=dry_run,
                enforce_retention_duration=not force,
                full=True,
            )
        except (DeltaError, OSError) as exc:
            raise MaintenanceError(
                f"vacuum of {table.name} ({table.uri}) failed: {exc}; a retention below the "
                f"table's needs --force"
            ) from exc
        if not dry_run:
            logger.info(
                "vacuumed Delta table %s: %d files deleted, retention %s hours",
                table.uri,
                len(files),
                "default" if retention_hours is None else retention_hours,
            )
        results.append(VacuumResult(table.name, sorted(files), retention_hours, dry_run))
    return results
