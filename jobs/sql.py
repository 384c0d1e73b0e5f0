"""Read-only Spark SQL over the lake's tables by name, with time travel.

Every table of the lake is registered as ``<layer>.<table>`` (`jobs.catalog.register_tables`),
so a query reads ``SELECT count(*) FROM silver.spike_steps``. Delta's own syntax works too:
``SELECT ... FROM bronze.spike_frames VERSION AS OF 3`` and ``DESCRIBE HISTORY
bronze.spike_frames``.

``--as-of`` (`AsOf`) pins tables to a version for the whole query, without editing it:

- ``--as-of bronze.spike_frames=3`` pins one table; repeat the option for more tables.
- ``--as-of 3`` pins every lake table that the query names to version 3. Each table has its
  own version numbers, so this is meant for queries over one table, or over tables whose
  versions are known to line up. A named table without version 3 is an error: it is never
  read at its latest version instead.

A pinned table is registered as a view of that version, so ``VERSION AS OF`` and ``DESCRIBE
HISTORY`` on it are rejected; leave it unpinned for those.

Spark's errors become `LakeQueryError`: the key part of Spark's message on one line and a
hint, without Spark's plan or Java stack trace.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from bcratos.config import Settings
from jobs.catalog import Lake, LakeTable, find_tables, lake_spark, register_tables
from jobs.exceptions import AsOfError, LakeQueryError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

logger = logging.getLogger(__name__)

DEFAULT_LIMIT: Final = 1000
"""Default maximum number of rows a query returns."""

# Statements that change a table, the catalog or the session. Such a statement is rejected
# before it reaches Spark: the lake is written by the sink, and subjects are erased with
# `jobs.erasure`. Words that start no Spark statement are left to Spark's parser to reject.
_WRITE_STATEMENTS: Final = frozenset(
    {
        "ADD", "ALTER", "ANALYZE", "BEGIN", "CACHE", "CALL", "CLEAR", "CLONE", "CONVERT",
        "COPY", "CREATE", "DECLARE", "DELETE", "DROP", "EXECUTE", "FSCK", "GENERATE", "INSERT",
        "LOAD", "MERGE", "MSCK", "OPTIMIZE", "REFRESH", "REORG", "REPAIR", "REPLACE", "RESET",
        "RESTORE", "SET", "TRUNCATE", "UNCACHE", "UPDATE", "USE", "VACUUM",
    }
)  # fmt: skip
# A WITH clause may lead into one of these.
_WRITE_AFTER_WITH: Final = re.compile(r"\b(INSERT|DELETE|UPDATE|MERGE)\b", re.IGNORECASE)
_COMMENTS: Final = re.compile(r"--[^\n]*|/\*.*?\*/", re.DOTALL)
_NAMED_TABLE: Final = re.compile(
    r"`?\b(bronze|silver|gold|registry)`?\s*\.\s*(?:`([^`]+)`|(\w+))", re.IGNORECASE
)
_AS_OF_TABLE: Final = re.compile(r"((?:bronze|silver|gold|registry)\.[A-Za-z0-9_-]+)=(\d+)")
_POSITION: Final = re.compile(r"line (\d+),? pos(?:ition)? (\d+)")


@dataclass(frozen=True)
class AsOf:
    """Table versions that a query reads instead of the latest ones."""

    version: int | None = None  # for every lake table that the query names
    tables: Mapping[str, int] = field(default_factory=dict)  # per table; wins over `version`

    @classmethod
    def parse(cls, values: Sequence[str]) -> AsOf:
        """Parse ``--as-of`` values: ``VERSION`` (at most once) or ``layer.table=VERSION``.

        Raises `AsOfError` for anything else.
        """
        version: int | None = None
        tables: dict[str, int] = {}
        for value in values:
            text = value.strip()
            per_table = _AS_OF_TABLE.fullmatch(text)
            if per_table:
                tables[per_table.group(1).lower()] = int(per_table.group(2))
            elif text.isdigit() and version is None:
                version = int(text)
            elif text.isdigit():
                raise AsOfError(
                    f"--as-of {version} and --as-of {text} both pin every named table: give one "
                    f"version, or pin tables one by one with --as-of layer.table=VERSION"
                )
            else:
                raise AsOfError(
                    f"invalid --as-of {value!r}: expected a table version such as 3, or "
                    f"layer.table=VERSION such as bronze.spike_frames=3"
                )
        return cls(version, tables)

    def __bool__(self) -> bool:
        return self.version is not None or bool(self.tables)


@dataclass(frozen=True)
class QueryResult:
    """Rows of a query, as plain Python values, and the versions that were pinned."""

    columns: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool  # True when the query has more rows than the limit
    pinned: Mapping[str, int]


def run_query(
    settings: Settings, query: str, *, as_of: AsOf | None = None, limit: int | None = DEFAULT_LIMIT
) -> QueryResult:
    """Run one read-only SQL statement over the lake and return at most `limit` rows.

    Steps: 1. check the lake URI and the statement, 2. resolve ``--as-of`` to table versions,
    3. register the tables in a Spark session, 4. run the query. `limit` None returns every
    row. Raises `LakeQueryError` for a statement that Spark rejects or that writes, `AsOfError`
    for versions a table does not have, and `ResidencyError` for a lake outside the allowed
    regions.
    """
    # 1. Lake and statement.
    lake = Lake.from_settings(settings)
    check_read_only(query)

    # 2. Pinned versions.
    tables = find_tables(lake)
    pinned = pinned_versions(lake, tables, query, as_of or AsOf())

    # 3. Session and catalog: the tables the query names, or all when it names none (SHOW).
    named = set(tables_named_in(query, {table.name: table for table in tables}))
    spark = lake_spark(settings, app_name="bcratos-lake-sql", progress=False)
    register_tables(
        spark, [table for table in tables if table.name in named] or tables, pinned=pinned
    )

    # 4. Query.
    columns, rows, truncated = execute(spark, query, limit=limit, tables=tables)
    return QueryResult(columns, rows, truncated, pinned)


def check_read_only(query: str) -> None:
    """Raise `LakeQueryError` for a statement that changes a table, the catalog or the session.

    NOTE: this is a guard against mistakes, checked on the text of the statement, and not a
    security boundary, because a user who can run it can also write the lake's files directly.
    """
    text = _COMMENTS.sub(" ", query).strip()
    first = text.split(None, 1)[0].upper().lstrip("(") if text else ""
    after_with = _WRITE_AFTER_WITH.search(text) if first == "WITH" else None
    statement = after_with.group(1).upper() if after_with else first
    if statement in _WRITE_STATEMENTS:
        raise LakeQueryError(
            f"lake sql runs read-only statements, and this one is a {statement} statement",
            "use SELECT, WITH, SHOW, DESCRIBE or EXPLAIN; maintain tables with `bcratos lake "
            "compact`, `vacuum` and `erase`",
        )


def pinned_versions(
    lake: Lake, tables: Sequence[LakeTable], query: str, as_of: AsOf
) -> dict[str, int]:
    """Return the version of each table that `as_of` pins for `query`.

    Raises `AsOfError` for an unknown table, a bare version with a query that names no lake
    table, and a version newer than the table's latest.
    """
    known = {table.name: table for table in tables}
    pinned: dict[str, int] = {}
    for name, version in as_of.tables.items():
        if name not in known:
            raise AsOfError(
                f"--as-of {name}={version} names no table of the lake: expected one of "
                f"{', '.join(known) or 'none, because the lake has no tables yet'}"
            )
        pinned[name] = version

    if as_of.version is not None:
        named = tables_named_in(query, known)
        if not named:
            raise AsOfError(
                f"--as-of {as_of.version} pins the lake tables that the query names, but it "
                f"names none: refer to tables as layer.table, such as bronze.spike_frames"
            )
        for name in named:
            pinned.setdefault(name, as_of.version)

    for name, version in pinned.items():
        latest = lake.open(known[name]).version()
        if version > latest:
            raise AsOfError(
                f"{name} has no version {version}: its latest version is {latest}; "
                f"`bcratos lake history {name}` lists its versions"
            )
    return pinned


def tables_named_in(query: str, known: Mapping[str, LakeTable]) -> list[str]:
    """Return the lake tables that `query` names as ``layer.table``, in order of appearance."""
    lowered = {name.lower(): name for name in known}
    named: list[str] = []
    for match in _NAMED_TABLE.finditer(_COMMENTS.sub(" ", query)):
        name = f"{match.group(1)}.{match.group(2) or match.group(3)}".lower()
        if name in lowered and lowered[name] not in named:
            named.append(lowered[name])
    return named


def execute(
    spark: SparkSession,
    query: str,
    *,
    limit: int | None = DEFAULT_LIMIT,
    tables: Sequence[LakeTable] = (),
) -> tuple[list[str], list[tuple[Any, ...]], bool]:
    """Run `query` and return its columns, at most `limit` rows and whether more rows exist.

    Raises `LakeQueryError`; `tables` are the names a hint for an unknown table lists.
    """
    from py4j.protocol import Py4JJavaError
    from pyspark.errors.exceptions.captured import CapturedException

    _quiet_pyspark_error_loggers()
    try:
        frame = spark.sql(query)
        collected = frame.limit(limit + 1).collect() if limit else frame.collect()
    except CapturedException as exc:
        raise _query_error(exc, tables) from exc
    except Py4JJavaError as exc:
        raise LakeQueryError(
            f"Spark failed to run the query: {exc.java_exception.toString()}",
            "check the query; run with -v for Spark's log",
        ) from exc

    truncated = limit is not None and limit > 0 and len(collected) > limit
    rows = [tuple(_plain(value) for value in row) for row in collected[: limit or None]]
    return list(frame.columns), rows, truncated


def _quiet_pyspark_error_loggers() -> None:
    """Stop pyspark from logging each SQL error with its Java stack trace before raising it.

    The caller reports the error once, as `LakeQueryError`.
    """
    from pyspark.logger import PySparkLogger

    for name in ("SQLQueryContextLogger", "DataFrameQueryContextLogger"):
        PySparkLogger.getLogger(name).disabled = True


def _query_error(exc: Exception, tables: Sequence[LakeTable]) -> LakeQueryError:
    from pyspark.errors import PySparkException

    condition = exc.getCondition() if isinstance(exc, PySparkException) else None
    text = str(exc)
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    message = re.sub(r"\s*SQLSTATE: \w+.*$", "", first)
    position = _POSITION.search(text)
    if position:
        message += f" (line {position.group(1)}, position {position.group(2)})"
    return LakeQueryError(message, _hint(condition or "", tables), condition)


def _hint(condition: str, tables: Sequence[LakeTable]) -> str:
    names = ", ".join(table.name for table in tables) or "none, because the lake has no tables"
    if condition.startswith("PARSE_"):
        return (
            "check the SQL at that position; in a shell, put the query in double quotes and "
            "string literals in single quotes"
        )
    if condition in ("TABLE_OR_VIEW_NOT_FOUND", "SCHEMA_NOT_FOUND"):
        return f"lake tables are named layer.table: {names}; `bcratos lake tables` lists them"
    if condition.startswith("UNRESOLVED_COLUMN"):
        return '`bcratos lake sql "DESCRIBE layer.table"` lists the columns of a table'
    if condition == "UNSUPPORTED_FEATURE.TIME_TRAVEL" or condition.startswith(
        "EXPECT_TABLE_NOT_VIEW"
    ):
        return (
            "a table pinned with --as-of is a view of that version: use VERSION AS OF or "
            "DESCRIBE HISTORY on it without --as-of"
        )
    if condition.startswith("DELTA_VERSION") or "TIME_TRAVEL" in condition:
        return "`bcratos lake history layer.table` lists the versions a table has"
    return "fix the query as the message says; `DESCRIBE layer.table` lists a table's columns"


def _plain(value: Any) -> Any:
    """Return a Spark value as plain Python: structs as dicts, binary as bytes."""
    from pyspark.sql import Row

    if isinstance(value, Row):
        return {key: _plain(item) for key, item in value.asDict().items()}
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value
