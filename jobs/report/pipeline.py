"""Pipeline figures for the report: table sizes, registry rows, commits and processor counters.

Commit figures come from the JSON commit files of each bronze table's Delta log (``add``
actions with their ``numRecords`` and ``ingested_at`` statistics, and the ``commitInfo``
timestamp), so they need no data file. Processor counters come from the metrics files that
the stream processors write under ``<data_dir>/streams/``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import pyarrow.fs as pafs

from jobs.catalog import Lake, LakeTable, TableInfo, find_tables, table_info
from jobs.report.sections import Missing

logger = logging.getLogger(__name__)

BRONZE_TABLES: Final = ("spike_frames", "behavior_events", "eskin_frames", "decoder_outputs")
COMMIT_LIMIT: Final = 2000  # newest commit files read per table, which bounds the work
_COMMIT_FILE: Final = re.compile(r"^(\d{20})\.json$")
ROW_ADDING_OPERATIONS: Final = frozenset({"WRITE", "STREAMING UPDATE", "CREATE TABLE AS SELECT"})
"""Delta operations whose added files are new rows; OPTIMIZE and DELETE rewrite old rows."""


@dataclass(frozen=True)
class Commit:
    """One Delta commit that added rows to a bronze table."""

    version: int
    committed_at: datetime  # commitInfo timestamp, UTC
    rows: int
    oldest_ingested_at: datetime | None  # earliest ingested_at of the added rows


@dataclass(frozen=True)
class WorkerMetrics:
    """The last snapshot of one stream worker's metrics file."""

    stage: str  # "ingest" or "sink"
    pid: int
    updated_at: datetime | None
    values: Mapping[str, Any]  # the file's JSON object


@dataclass(frozen=True)
class Registry:
    """Rows of ``registry.models`` and ``registry.retrain_jobs``; None when a table is missing."""

    models: list[dict[str, Any]] | None
    retrain_jobs: list[dict[str, Any]] | None


# ---------------------------------------------------------------------------------------------
# Tables and registry


def table_infos(lake: Lake) -> list[TableInfo]:
    """Return version, rows and size of every table of the lake, from the Delta logs."""
    return [table_info(lake, table) for table in find_tables(lake)]


def load_registry(lake: Lake) -> Registry:
    """Read the gate decisions and the retrain jobs, newest first."""
    models = _read_rows(
        lake,
        lake.table("registry", "models"),
        [
            "target",
            "model_version",
            "architecture",
            "dataset",
            "decision",
            "candidate_score",
            "current_score",
            "decided_at",
        ],
        "decided_at",
    )
    jobs = _read_rows(
        lake,
        lake.table("registry", "retrain_jobs"),
        ["job_id", "target", "state", "step", "dataset", "backend", "updated_at"],
        "updated_at",
    )
    return Registry(models, jobs)


def _read_rows(
    lake: Lake, table: LakeTable, columns: list[str], newest_by: str
) -> list[dict[str, Any]] | None:
    if not lake.is_table(table.uri):
        return None
    rows = lake.open(table).to_pyarrow_table(columns=columns).to_pylist()
    epoch = datetime.min.replace(tzinfo=UTC)
    return sorted(rows, key=lambda row: row[newest_by] or epoch, reverse=True)


# ---------------------------------------------------------------------------------------------
# Commits


def load_commits(lake: Lake, *, limit: int = COMMIT_LIMIT) -> dict[str, list[Commit]] | Missing:
    """Return the row-adding commits of each bronze table among its newest `limit` commits."""
    result: dict[str, list[Commit]] = {}
    for name in BRONZE_TABLES:
        table = lake.table("bronze", name)
        if lake.is_table(table.uri):
            commits = read_commits(lake, table, limit=limit)
            if commits:
                result[table.name] = commits
    if not result:
        return Missing("no bronze table has commits that added rows", "make run")
    return result


def read_commits(lake: Lake, table: LakeTable, *, limit: int = COMMIT_LIMIT) -> list[Commit]:
    """Read the newest `limit` JSON commit files of a table's Delta log.

    Versions whose commit files were removed by log cleanup (``delta.logRetentionDuration``)
    are missing from the result.
    """
    fs, root = lake.filesystem(table.uri)
    log_dir = f"{root.rstrip('/')}/_delta_log"
    selector = pafs.FileSelector(log_dir, allow_not_found=True)
    names = sorted(
        info.base_name for info in fs.get_file_info(selector) if _COMMIT_FILE.match(info.base_name)
    )
    commits = []
    for name in names[-limit:]:
        with fs.open_input_stream(f"{log_dir}/{name}") as stream:
            text = stream.read().decode("utf-8")
        commit = parse_commit(int(name[:20]), text)
        if commit is not None:
            commits.append(commit)
    return commits


def parse_commit(version: int, text: str) -> Commit | None:
    """Parse one JSON commit file; return None unless it added new rows."""
    committed_ms: int | None = None
    operation = ""
    rows = 0
    oldest: datetime | None = None
    for line in text.splitlines():
        if not line.strip():
            continue
        action = json.loads(line)
        if "commitInfo" in action:
            committed_ms = action["commitInfo"].get("timestamp")
            operation = action["commitInfo"].get("operation", "")
        elif "add" in action:
            stats = json.loads(action["add"].get("stats") or "{}")
            rows += int(stats.get("numRecords", 0))
            stamp = _stat_time(stats.get("minValues", {}).get("ingested_at"))
            if stamp is not None and (oldest is None or stamp < oldest):
                oldest = stamp
    if committed_ms is None or rows == 0 or operation not in ROW_ADDING_OPERATIONS:
        return None
    committed_at = datetime.fromtimestamp(committed_ms / 1000, tz=UTC)
    return Commit(version, committed_at, rows, oldest)


def _stat_time(value: Any) -> datetime | None:
    """Parse a timestamp statistic of the Delta log, such as ``2026-12-04T22:13:32.928Z``."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


# ---------------------------------------------------------------------------------------------
# Metrics files


def load_worker_metrics(streams_dir: Path) -> list[WorkerMetrics]:
    """Read every metrics file under `streams_dir`, skipping unreadable ones with a warning."""
    workers = []
    for path in sorted(streams_dir.glob("*.json")):
        try:
            values = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            logger.warning("skipped metrics file %s: %s", path, exc)
            continue
        if not isinstance(values, dict):
            logger.warning("skipped metrics file %s: expected a JSON object", path)
            continue
        updated = values.get("updated_at")
        workers.append(
            WorkerMetrics(
                stage=str(values.get("stage", "unknown")),
                pid=int(values.get("pid", 0)),
                updated_at=(
                    datetime.fromtimestamp(updated, tz=UTC)
                    if isinstance(updated, int | float)
                    else None
                ),
                values=values,
            )
        )
    return workers


def dead_letters(workers: list[WorkerMetrics]) -> int | None:
    """Return the events that the workers sent to the dead-letter topic, None without files.

    The ingest stage counts them by reason and the sink by source topic. Workers that ran
    one after the other each count their own events, so the sum covers all of their runs.
    """
    if not workers:
        return None
    total = 0
    for worker in workers:
        for key in ("dead_letter_reasons", "dead_lettered"):
            counts = worker.values.get(key) or {}
            total += sum(int(value) for value in counts.values())
    return total
