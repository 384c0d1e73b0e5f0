"""Text, JSON and CSV renderings of the lake commands' results.

Text is an aligned table for people: long cells are shortened and binary cells show their size.
JSON is an array with one object per line, binary values in base64 and times in ISO 8601, for
tools. CSV has the same values as JSON, with lists and maps as JSON text.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import io
import json
from collections.abc import Sequence
from decimal import Decimal
from enum import StrEnum
from typing import Any, Final

from jobs.catalog import Commit, TableInfo
from jobs.erasure import ErasureReport
from jobs.maintenance import CompactResult, VacuumResult

MAX_CELL_CHARS: Final = 60
"""Maximum characters of a cell in the text format. Longer values end in an ellipsis."""


class OutputFormat(StrEnum):
    """Output format of a lake command."""

    TABLE = "table"
    JSON = "json"
    CSV = "csv"


def render(
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    output: OutputFormat,
    *,
    wrap: bool = False,
) -> str:
    """Render rows in `output` format; `wrap` keeps long text cells whole in the table format."""
    if output is OutputFormat.JSON:
        lines = [json.dumps(dict(zip(columns, map(json_value, row), strict=True))) for row in rows]
        return "[\n" + ",\n".join(lines) + "\n]" if lines else "[]"
    if output is OutputFormat.CSV:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([_csv_cell(value) for value in row] for row in rows)
        return buffer.getvalue().rstrip("\n")
    return _text_table(columns, rows, wrap=wrap)


def render_tables(infos: Sequence[TableInfo], output: OutputFormat) -> str:
    """Render the figures of lake tables."""
    columns = ["table", "version", "rows", "files", "size_bytes", "partitioned_by", "last_commit"]
    rows: list[list[Any]] = []
    for info in infos:
        if info.error is not None:
            rows.append([info.name, None, None, None, None, None, f"unreadable: {info.error}"])
            continue
        partitions: Any = list(info.partition_columns)
        if output is OutputFormat.TABLE:
            partitions = ", ".join(info.partition_columns)
        rows.append(
            [
                info.name,
                info.version,
                info.rows,
                info.files,
                info.size_bytes,
                partitions,
                info.last_commit,
            ]
        )
    return render(columns, rows, output)


def render_history(commits: Sequence[Commit], output: OutputFormat) -> str:
    """Render the versions of a table, newest first."""
    columns = ["version", "timestamp", "operation", "parameters", "metrics", "user_metadata"]
    rows: list[list[Any]] = []
    for commit in commits:
        parameters: Any = dict(commit.parameters)
        metrics: Any = dict(commit.metrics)
        if output is OutputFormat.TABLE:
            parameters = _pairs(commit.parameters)
            metrics = _pairs(commit.metrics)
        rows.append(
            [
                commit.version,
                commit.timestamp,
                commit.operation,
                parameters,
                metrics,
                commit.user_metadata,
            ]
        )
    return render(columns, rows, output, wrap=True)


def _pairs(values: Any) -> str:
    return " ".join(f"{key}={_compact(value)}" for key, value in values.items())


def json_value(value: Any) -> Any:
    """Return `value` as a JSON-serializable value: binary as base64, times in ISO 8601."""
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, list | tuple):
        return [json_value(item) for item in value]
    if isinstance(value, dict):
        return {str(key): json_value(item) for key, item in value.items()}
    return value


def _compact(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(json_value(value), separators=(",", ":"))


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple | dict):
        return _compact(value)
    return str(json_value(value))


def _text_cell(value: Any, *, wrap: bool) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    if isinstance(value, dt.datetime):
        text = value.isoformat(timespec="seconds")
    else:
        text = _compact(value)
    if not wrap and len(text) > MAX_CELL_CHARS:
        return text[: MAX_CELL_CHARS - 1] + "…"
    return text


def _text_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], *, wrap: bool) -> str:
    cells = [[_text_cell(value, wrap=wrap) for value in row] for row in rows]
    widths = [len(name) for name in columns]
    for row in cells:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=True)]
    numeric = [
        all(isinstance(row[i], int | float) or row[i] is None for row in rows) and bool(rows)
        for i in range(len(columns))
    ]

    def line(values: Sequence[str]) -> str:
        padded = [
            value.rjust(width) if is_number else value.ljust(width)
            for value, width, is_number in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(padded).rstrip()

    lines = [line(columns), line(["-" * width for width in widths])]
    lines.extend(line(row) for row in cells)
    return "\n".join(lines)


def render_compaction(results: Sequence[CompactResult], output: OutputFormat) -> str:
    """Render the files of each table before and after compaction."""
    columns = ["table", "files_before", "files_after", "files_removed", "files_added", "version"]
    rows = [
        [r.table, r.files_before, r.files_after, r.files_removed, r.files_added, r.version]
        for r in results
    ]
    return render(columns, rows, output)


def render_vacuum(results: Sequence[VacuumResult], output: OutputFormat) -> str:
    """Render the files each vacuum deleted; JSON lists them, the other formats count them."""
    verb = "files_to_delete" if any(result.dry_run for result in results) else "files_deleted"
    columns = ["table", verb, "retention_hours"]
    rows: list[list[Any]] = []
    for result in results:
        files: Any = result.files if output is OutputFormat.JSON else len(result.files)
        retention: Any = result.retention_hours
        if retention is None and output is OutputFormat.TABLE:
            retention = "table default"
        rows.append([result.table, files, retention])
    return render(columns, rows, output)


def render_erasure(report: ErasureReport, output: OutputFormat) -> str:
    """Render the rows removed per table and the manifests updated by an erasure."""
    columns = ["table", "rows_found", "rows_deleted", "files_vacuumed", "version", "note"]
    rows = [
        [t.table, t.rows_found, t.rows_deleted, t.files_vacuumed, t.version, t.note]
        for t in report.tables
    ]
    if output is OutputFormat.JSON:
        document = {
            "subject_pseudonym": report.subject.pseudonym,
            "from_raw_id": report.subject.from_raw_id,
            "key_id": report.subject.key_id,
            "dry_run": report.dry_run,
            "rows": report.rows,
            "tables": [dict(zip(columns, row, strict=True)) for row in rows],
            "manifests": [
                {
                    "dataset": update.dataset,
                    "path": update.path,
                    "mentions_removed": update.mentions_removed,
                    "rows_removed": update.rows_removed,
                }
                for update in report.manifests
            ],
        }
        return json.dumps(document, indent=2)
    if output is OutputFormat.CSV:
        return render(columns, rows, output)

    lines = [_subject_line(report), "", render(columns, rows, output)]
    for update in report.manifests:
        action = "would update" if report.dry_run else "updated and flagged needs_rebuild:"
        lines.append(
            f"manifest {update.path}: {action} {update.mentions_removed} mentions of the "
            f"subject, {update.rows_removed} dataset rows removed"
        )
    tables = sum(1 for table in report.tables if table.rows_found)
    verb = "would erase" if report.dry_run else "erased"
    lines.append(f"{verb} {report.rows} rows of the subject from {tables} tables")
    return "\n".join(lines)


def _subject_line(report: ErasureReport) -> str:
    subject = report.subject
    if subject.from_raw_id:
        return f"subject {subject.pseudonym} (pseudonym of the raw id under key {subject.key_id})"
    return f"subject {subject.pseudonym} (given as a pseudonym)"
