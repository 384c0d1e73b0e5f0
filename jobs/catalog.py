"""The lake's Delta tables by name, their figures and history, and Spark sessions that see them.

Tables are named ``<layer>.<table>`` after their folder under the lake root:

==========================  ===========================================
``bronze.spike_frames``     ``<lake>/bronze/spike_frames``
``silver.spike_steps``      ``<lake>/silver/spike_steps``
``gold.<name>``             ``<lake>/gold/datasets/<name>``
``registry.models``         ``<lake>/registry/models``
==========================  ===========================================

Figures and history come from the Delta log through delta-rs (`deltalake`), so listing tables
needs no Spark. `lake_session` returns a Spark session whose catalog has the databases
``bronze``, ``silver``, ``gold`` and ``registry`` with every table registered by that name.

Every entry point checks the lake URI against ``lake.allowed_regions`` with
`streams.lake.check_lake_uri` before it reads or writes anything.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError

from bcratos.config import Settings, load_settings
from jobs.exceptions import TableNotFoundError
from streams.lake import check_lake_uri

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

logger = logging.getLogger(__name__)

LAYER_FOLDERS: Final[Mapping[str, str]] = {
    "bronze": "bronze",
    "silver": "silver",
    "gold": "gold/datasets",
    "registry": "registry",
}
"""Folder under the lake root of each layer's tables, in the order tables are listed."""

GOLD_MANIFESTS: Final = "gold/manifests"
"""Folder of the gold datasets' manifests, ``<name>.json`` each."""

_TABLE_NAME: Final = re.compile(r"(bronze|silver|gold|registry)[./]([A-Za-z0-9_][A-Za-z0-9_-]*)")


@dataclass(frozen=True)
class Lake:
    """A lake root that passed the residency check, and the options delta-rs needs for it."""

    uri: str  # without a trailing slash or the ``region`` query parameter
    region: str | None
    allowed_regions: tuple[str, ...] = ()
    storage_options: Mapping[str, str] | None = field(default=None, compare=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Lake:
        """Check ``lake.uri`` against ``lake.allowed_regions``; raises `ResidencyError`."""
        return cls.from_uri(settings.lake_uri, settings.lake.allowed_regions)

    @classmethod
    def from_uri(cls, uri: str, allowed_regions: Sequence[str] = ()) -> Lake:
        """Check `uri` against `allowed_regions` (see `check_lake_uri`) and open nothing yet."""
        location = check_lake_uri(uri, allowed_regions)
        root = location.uri
        if _is_local(root):
            root = str(_local_path(root).resolve())
        options: dict[str, str] = {}
        if location.region and urlsplit(root).scheme.lower() in ("s3", "s3a"):
            options["AWS_REGION"] = location.region
        return cls(root.rstrip("/"), location.region, tuple(allowed_regions), options or None)

    @property
    def is_local(self) -> bool:
        """True when the lake is a directory of this machine's file system."""
        return _is_local(self.uri)

    def table(self, layer: str, name: str) -> LakeTable:
        """Return the table `name` of `layer`, whether or not it exists yet."""
        return LakeTable(f"{layer}.{name}", f"{self.uri}/{LAYER_FOLDERS[layer]}/{name}", layer)

    def open(self, table: LakeTable, version: int | None = None) -> DeltaTable:
        """Open a table at its latest version or at `version`; raises `DeltaError`."""
        return DeltaTable(table.uri, version=version, storage_options=self._options())

    def is_table(self, uri: str) -> bool:
        """True when `uri` is a Delta table."""
        return DeltaTable.is_deltatable(uri, storage_options=self._options())

    def filesystem(self, uri: str | None = None) -> tuple[pafs.FileSystem, str]:
        """Return a pyarrow file system and the path in it of `uri` (default: the lake root)."""
        target = uri or self.uri
        if _is_local(target):
            return pafs.LocalFileSystem(), str(_local_path(target))
        fs, path = pafs.FileSystem.from_uri(target)
        return fs, str(path)

    def _options(self) -> dict[str, str] | None:
        return dict(self.storage_options) if self.storage_options else None


@dataclass(frozen=True)
class LakeTable:
    """A Delta table of the lake, or one given by path."""

    name: str  # "bronze.spike_frames", or the URI of a table outside the lake layout
    uri: str
    layer: str | None  # None for a table outside the lake layout

    @property
    def sql_name(self) -> str:
        """The name quoted for Spark SQL, such as ```bronze`.`spike_frames```."""
        if self.layer is None:
            return f"delta.`{self.uri.replace('`', '``')}`"
        database, table = self.name.split(".", 1)
        return f"`{database}`.`{table}`"


@dataclass(frozen=True)
class TableInfo:
    """Figures of one Delta table at its latest version, from its Delta log."""

    name: str
    uri: str
    version: int | None
    rows: int | None
    size_bytes: int | None
    files: int | None
    partition_columns: tuple[str, ...]
    last_commit: datetime | None
    error: str | None = None  # why the table could not be read; the figures are None then


@dataclass(frozen=True)
class Commit:
    """One version of a Delta table as its commit info records it."""

    version: int
    timestamp: datetime | None
    operation: str
    parameters: Mapping[str, Any]
    metrics: Mapping[str, Any]
    user_metadata: str | None


# ---------------------------------------------------------------------------------------------
# Finding tables


def find_tables(lake: Lake) -> list[LakeTable]:
    """Return every Delta table in the layer folders of the lake, in layer and name order."""
    fs, root = lake.filesystem()
    tables = []
    for layer, folder in LAYER_FOLDERS.items():
        selector = pafs.FileSelector(f"{root}/{folder}", allow_not_found=True)
        children = sorted(
            info.base_name
            for info in fs.get_file_info(selector)
            if info.type == pafs.FileType.Directory
        )
        for name in children:
            table = lake.table(layer, name)
            if lake.is_table(table.uri):
                tables.append(table)
    return tables


def resolve_table(lake: Lake, name_or_path: str) -> LakeTable:
    """Return the table named ``layer.table`` (or ``layer/table``) or found at a path or URI.

    A path is checked against the lake's allowed regions like the lake root. Raises
    `TableNotFoundError` when no Delta table is there, and `ResidencyError` for a path outside
    the allowed regions.
    """
    match = _TABLE_NAME.fullmatch(name_or_path)
    if match:
        table = lake.table(match.group(1), match.group(2))
        if not lake.is_table(table.uri):
            raise TableNotFoundError(
                f"no Delta table {table.name} at {table.uri}: expected one of "
                f"{_names(find_tables(lake))}"
            )
        return table

    location = check_lake_uri(name_or_path, lake.allowed_regions)
    uri = location.uri
    if _is_local(uri):
        uri = str(_local_path(uri).resolve())
    if not lake.is_table(uri):
        raise TableNotFoundError(
            f"{name_or_path!r} is not a table name or the path of a Delta table: expected a name "
            f"such as bronze.spike_frames ({_names(find_tables(lake))}) or a Delta table's path"
        )
    return _name_in_layout(lake, uri) or LakeTable(uri, uri, None)


def _name_in_layout(lake: Lake, uri: str) -> LakeTable | None:
    """Return the named table when `uri` is a table folder of the lake layout."""
    for layer, folder in LAYER_FOLDERS.items():
        prefix = f"{lake.uri}/{folder}/"
        name = uri.rstrip("/").removeprefix(prefix)
        if uri.startswith(prefix) and "/" not in name:
            return lake.table(layer, name)
    return None


def _names(tables: Sequence[LakeTable]) -> str:
    return ", ".join(table.name for table in tables) or "none, because the lake has no tables yet"


# ---------------------------------------------------------------------------------------------
# Figures and history


def table_info(lake: Lake, table: LakeTable) -> TableInfo:
    """Return the version, rows, size, files and partition columns of a table.

    Rows are the sum of ``numRecords`` in the add actions' statistics, or a count of the data
    files' rows when a file has no statistics. A table that delta-rs cannot read is returned
    with its `TableInfo.error` and no figures.
    """
    try:
        delta = lake.open(table)
        actions = pa.table(delta.get_add_actions(flatten=True))
        history = delta.history(limit=1)
        # NOTE: neither count subtracts rows hidden by deletion vectors, which delta-rs and
        # the sink do not write but Spark can.
        records = actions.column("num_records") if actions.num_rows else None
        if records is not None and records.null_count == 0:
            rows = int(pc.sum(records).as_py())
        else:
            rows = delta.to_pyarrow_dataset().count_rows()
    except (DeltaError, OSError) as exc:
        return TableInfo(table.name, table.uri, None, None, None, None, (), None, str(exc))

    size_bytes = int(pc.sum(actions.column("size_bytes")).as_py() or 0)
    return TableInfo(
        name=table.name,
        uri=table.uri,
        version=delta.version(),
        rows=rows,
        size_bytes=size_bytes,
        files=actions.num_rows,
        partition_columns=tuple(delta.metadata().partition_columns),
        last_commit=_commit_time(history[0]) if history else None,
    )


def table_history(lake: Lake, table: LakeTable, *, limit: int | None = None) -> list[Commit]:
    """Return the table's versions, newest first, at most `limit` of them.

    Raises `TableNotFoundError` when delta-rs cannot read the table's log.
    """
    try:
        entries = lake.open(table).history(limit=limit)
    except (DeltaError, OSError) as exc:
        raise TableNotFoundError(f"cannot read the Delta log of {table.name}: {exc}") from exc
    return [
        Commit(
            version=int(entry["version"]),
            timestamp=_commit_time(entry),
            operation=str(entry.get("operation", "")),
            parameters=entry.get("operationParameters") or {},
            metrics=entry.get("operationMetrics") or {},
            user_metadata=entry.get("userMetadata"),
        )
        for entry in entries
    ]


def _commit_time(entry: Mapping[str, Any]) -> datetime | None:
    millis = entry.get("timestamp")
    return None if millis is None else datetime.fromtimestamp(millis / 1000, UTC)


# ---------------------------------------------------------------------------------------------
# Spark

# Settings of sessions that query the lake; ``spark.conf`` of the settings overrides them.
_LAKE_SPARK_CONF: Final[Mapping[str, str]] = {
    # Table registrations live as long as the session, so they never point at another lake.
    "spark.sql.catalogImplementation": "in-memory",
    # Delta replays a table's log in this many tasks (Delta's default, 50, suits clusters).
    "spark.databricks.delta.snapshotPartitions": "2",
}


def lake_spark(
    settings: Settings, *, app_name: str = "bcratos-lake", progress: bool = True
) -> SparkSession:
    """Return a Spark session with Delta and an in-memory catalog, without registering tables.

    `progress` false hides Spark's console progress bars, for command-line output.
    """
    from infra.spark import spark_session

    conf = dict(_LAKE_SPARK_CONF)
    if not progress:
        conf["spark.ui.showConsoleProgress"] = "false"
    conf.update(settings.spark.conf)
    lake_settings = settings.model_copy(
        update={"spark": settings.spark.model_copy(update={"conf": conf})}
    )
    spark = spark_session(lake_settings, app_name=app_name)
    catalog = spark.conf.get("spark.sql.catalogImplementation")
    if catalog != "in-memory":
        # getOrCreate returned a session started elsewhere, whose catalog may be persistent.
        logger.warning(
            "the active Spark session uses the %s catalog, so lake tables registered in it "
            "outlive the session; stop it first for an in-memory catalog",
            catalog,
        )
    return spark


def register_tables(
    spark: SparkSession,
    tables: Sequence[LakeTable],
    *,
    pinned: Mapping[str, int] | None = None,
) -> None:
    """Create the layer databases and register each table under its name.

    A table is registered as an external Delta table over its folder, so ``VERSION AS OF`` and
    ``DESCRIBE HISTORY`` work on it. A table in `pinned` (name to version) is registered as a
    view of that version instead. Registering again replaces earlier registrations that differ;
    dropping an external table's registration never deletes its data.
    """
    pinned = pinned or {}
    for layer in LAYER_FOLDERS:
        spark.sql(f"CREATE DATABASE IF NOT EXISTS `{layer}`")
    for table in tables:
        if table.layer is None:
            continue
        version = pinned.get(table.name)
        if version is None:
            _register_table(spark, table)
        else:
            _register_view(spark, table, version)
    logger.info("registered %d lake tables in the Spark catalog", len(tables))


def _register_table(spark: SparkSession, table: LakeTable) -> None:
    existing = _registered_type(spark, table)
    if existing == "VIEW":
        spark.sql(f"DROP VIEW {table.sql_name}")
    elif existing is not None:
        if _registered_location(spark, table) == _spark_location(table.uri):
            return
        spark.sql(f"DROP TABLE {table.sql_name}")
    spark.sql(
        f"CREATE TABLE IF NOT EXISTS {table.sql_name} USING DELTA LOCATION {_sql_string(table.uri)}"
    )


def _register_view(spark: SparkSession, table: LakeTable, version: int) -> None:
    existing = _registered_type(spark, table)
    if existing is not None and existing != "VIEW":
        spark.sql(f"DROP TABLE {table.sql_name}")
    path = table.uri.replace("`", "``")
    spark.sql(
        f"CREATE OR REPLACE VIEW {table.sql_name} AS "
        f"SELECT * FROM delta.`{path}` VERSION AS OF {int(version)}"
    )


def _registered_type(spark: SparkSession, table: LakeTable) -> str | None:
    """Return ``EXTERNAL``, ``VIEW`` and so on for a registered table, or None."""
    database, name = table.name.split(".", 1)
    for registered in spark.catalog.listTables(database):
        if registered.name.lower() == name.lower():
            return str(registered.tableType)
    return None


def _registered_location(spark: SparkSession, table: LakeTable) -> str | None:
    for row in spark.sql(f"DESCRIBE TABLE EXTENDED {table.sql_name}").collect():
        if row["col_name"] == "Location":
            return str(row["data_type"]).rstrip("/")
    return None


def _spark_location(uri: str) -> str:
    return f"file:{uri}" if _is_local(uri) and not uri.startswith("file:") else uri


def _sql_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def lake_session(
    settings: Settings | None = None, *, app_name: str = "bcratos-lake"
) -> SparkSession:
    """Start or reuse a Spark session and register every lake table in it by name.

    For notebooks and scripts. Settings default to `load_settings` (environment and
    ``bcratos.toml``). The session runs on ``spark.master`` of the settings, ``local[2]`` by
    default. Calling it again registers tables created since the last call.

    Example::

        from jobs.catalog import lake_session

        spark = lake_session()
        spark.sql("SELECT subject_pseudonym, count(*) FROM silver.spike_steps "
                  "GROUP BY subject_pseudonym").show()
        spark.sql("SELECT count(*) FROM bronze.spike_frames VERSION AS OF 3").show()
        spark.sql("DESCRIBE HISTORY bronze.spike_frames").show()

    Raises `ResidencyError` for a lake URI outside the allowed regions.
    """
    settings = settings if settings is not None else load_settings()
    lake = Lake.from_settings(settings)
    spark = lake_spark(settings, app_name=app_name)
    register_tables(spark, find_tables(lake))
    return spark


# ---------------------------------------------------------------------------------------------
# Local paths


def _is_local(uri: str) -> bool:
    scheme = urlsplit(uri).scheme.lower()
    return scheme in ("", "file") or len(scheme) == 1


def _local_path(uri: str) -> Path:
    if uri.startswith("file://"):
        return Path(urlsplit(uri).path)
    if uri.startswith("file:"):
        return Path(uri.removeprefix("file:"))
    return Path(uri)
