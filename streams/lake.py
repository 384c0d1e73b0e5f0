"""The Delta lake layout and an exactly-once batch writer built on delta-rs (`deltalake`).

Tables, under the lake root, each partitioned by ``subject_pseudonym`` and ``session_day``:

=========================  ===============================================================
``bronze/spike_frames``    one row per anonymized spike frame, counts kept packed
``bronze/behavior_events`` one row per anonymized behaviour marker
``bronze/eskin_frames``    one row per anonymized e-skin frame
``bronze/decoder_outputs`` one row per anonymized decoder output
``silver/spike_steps``     one row per session and model step (`streams.window.SpikeStep`)
``silver/eskin_steps``     one row per session and model step (`streams.window.EskinStep`)
=========================  ===============================================================

Bronze rows carry the Kafka position of their source record (``ingest_partition``,
``ingest_offset``) and every table has ``ingested_at``, the UTC time the batch was built.
Metadata is a ``map<string, string>``, which Spark and delta-rs both read as a map.

`LakeWriter.append` writes a batch of rows and the Kafka offsets it covers in one Delta commit:
each offset is a Delta app transaction (``txn`` action) whose app id names the consumer group,
topic and partition (`offset_app_id`) and whose version is the next offset to read. A reader
sees both or neither, so after a crash the consumer seeks to `LakeWriter.committed_offset`
and neither loses nor duplicates rows.

>>> offset_app_id("bcratos-sink", "bcratos.anon.spikes", 3)
'bcratos-sink/bcratos.anon.spikes/3'
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, NamedTuple
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np
import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError

from streams.exceptions import (
    LakeCommitError,
    LakeError,
    LakeSchemaError,
    OffsetRegressionError,
    ResidencyError,
    UnknownTableError,
)

if TYPE_CHECKING:
    from bcratos.config import Settings

logger = logging.getLogger(__name__)

SPIKE_FRAMES: Final = "bronze/spike_frames"
BEHAVIOR_EVENTS: Final = "bronze/behavior_events"
ESKIN_FRAMES: Final = "bronze/eskin_frames"
DECODER_OUTPUTS: Final = "bronze/decoder_outputs"
SPIKE_STEPS: Final = "silver/spike_steps"
ESKIN_STEPS: Final = "silver/eskin_steps"

PARTITION_COLUMNS: Final = ("subject_pseudonym", "session_day")
DEFAULT_COMMIT_ATTEMPTS: Final = 3

# ---------------------------------------------------------------------------------------------
# Table schemas

_TIMESTAMP: Final = pa.timestamp("us", tz="UTC")  # Delta `timestamp`, read by Spark as UTC


def _required(name: str, type_: pa.DataType) -> pa.Field:
    return pa.field(name, type_, nullable=False)


def _optional(name: str, type_: pa.DataType) -> pa.Field:
    return pa.field(name, type_, nullable=True)


# Fields of every anonymized record, in the order of the anonymized Avro schemas.
_EVENT_FIELDS: Final = (
    _required("subject_pseudonym", pa.string()),
    _required("board_pseudonym", pa.string()),
    _required("session_pseudonym", pa.string()),
    _required("key_id", pa.string()),
    _required("seq", pa.int64()),
    _required("session_day", pa.int32()),
    _required("t_session_us", pa.int64()),
    _optional("schema_version", pa.int32()),  # null when the decoded record does not carry it
    _optional("metadata", pa.map_(pa.string(), pa.string())),
)

_INGEST_FIELDS: Final = (
    _required("ingest_partition", pa.int32()),
    _required("ingest_offset", pa.int64()),
    _required("ingested_at", _TIMESTAMP),
)


def _bronze_schema(*payload: pa.Field) -> pa.Schema:
    return pa.schema([*_EVENT_FIELDS, *payload, *_INGEST_FIELDS])


_SPIKE_FRAME_SCHEMA: Final = _bronze_schema(
    _required("bin_ms", pa.int32()),
    _required("n_bins", pa.int32()),
    _required("n_channels", pa.int32()),
    _required("dtype", pa.string()),
    _required("counts", pa.binary()),  # little-endian, row-major (n_bins, n_channels) of dtype
    _optional("channel_ids", pa.list_(pa.string())),
    _optional("threshold_rms", pa.float32()),
)

_BEHAVIOR_EVENT_SCHEMA: Final = _bronze_schema(
    _required("kind", pa.string()),
    _optional("trial_id", pa.int64()),
    _optional("label", pa.string()),
    _optional("value", pa.float64()),
)

_ESKIN_FRAME_SCHEMA: Final = _bronze_schema(
    _required("n_taxels", pa.int32()),
    _required("pressures", pa.list_(pa.float32())),
    _required("pressure_unit", pa.string()),
    _optional("contact_centroid", pa.list_(pa.float32())),
    _optional("total_force_n", pa.float32()),
    _optional("joint_positions", pa.list_(pa.float32())),
    _optional("label", pa.string()),
)

_DECODER_OUTPUT_SCHEMA: Final = _bronze_schema(
    _required("step_index", pa.int64()),
    _required("step_ms", pa.int32()),
    _required("classes", pa.list_(pa.string())),
    _required("probabilities", pa.list_(pa.float32())),
    _required("command", pa.string()),
    _optional("model_version", pa.string()),
)

_STEP_FIELDS: Final = (
    _required("subject_pseudonym", pa.string()),
    _required("session_pseudonym", pa.string()),
    _required("session_day", pa.int32()),
    _required("step_index", pa.int64()),
    _required("t_step_us", pa.int64()),
    _required("step_ms", pa.int32()),
)

_SPIKE_STEP_SCHEMA: Final = pa.schema(
    [
        *_STEP_FIELDS,
        _required("bin_ms", pa.int32()),
        _required("n_channels", pa.int32()),
        _required("counts", pa.list_(pa.int32())),  # (n_channels,)
        _required("bins_expected", pa.int32()),
        _required("bins_present", pa.int32()),
        _required("gap", pa.bool_()),
        _optional("first_seq", pa.int64()),
        _optional("last_seq", pa.int64()),
        _required("ingested_at", _TIMESTAMP),
    ]
)

_ESKIN_STEP_SCHEMA: Final = pa.schema(
    [
        *_STEP_FIELDS,
        _required("n_taxels", pa.int32()),
        _required("n_samples", pa.int32()),
        _required("pressure_mean", pa.list_(pa.float64())),  # (n_taxels,)
        _required("pressure_max", pa.list_(pa.float64())),  # (n_taxels,)
        _optional("pressure_unit", pa.string()),
        _optional("total_force_mean_n", pa.float64()),
        _required("gap", pa.bool_()),
        _optional("first_seq", pa.int64()),
        _optional("last_seq", pa.int64()),
        _required("ingested_at", _TIMESTAMP),
    ]
)


@dataclass(frozen=True)
class TableSpec:
    """A Delta table of the lake: its path under the lake root and its schema."""

    name: str  # path under the lake root, such as "bronze/spike_frames"
    schema: pa.Schema
    record_name: str | None  # anonymized record name of a bronze table, None for a silver table
    partition_by: tuple[str, ...] = PARTITION_COLUMNS


TABLES: Final[Mapping[str, TableSpec]] = {
    spec.name: spec
    for spec in (
        TableSpec(SPIKE_FRAMES, _SPIKE_FRAME_SCHEMA, "AnonSpikeFrame"),
        TableSpec(BEHAVIOR_EVENTS, _BEHAVIOR_EVENT_SCHEMA, "AnonBehaviorEvent"),
        TableSpec(ESKIN_FRAMES, _ESKIN_FRAME_SCHEMA, "AnonEskinFrame"),
        TableSpec(DECODER_OUTPUTS, _DECODER_OUTPUT_SCHEMA, "AnonDecoderOutput"),
        TableSpec(SPIKE_STEPS, _SPIKE_STEP_SCHEMA, None),
        TableSpec(ESKIN_STEPS, _ESKIN_STEP_SCHEMA, None),
    )
}

BRONZE_TABLES: Final[Mapping[str, str]] = {
    spec.record_name: spec.name for spec in TABLES.values() if spec.record_name is not None
}
"""Bronze table name of each anonymized record name."""


def table_spec(table_name: str) -> TableSpec:
    """Return the layout of `table_name`, raising `UnknownTableError` for other names."""
    try:
        return TABLES[table_name]
    except KeyError:
        raise UnknownTableError(
            f"unknown lake table {table_name!r}: expected one of {', '.join(TABLES)}"
        ) from None


# ---------------------------------------------------------------------------------------------
# Building row batches


def bronze_table(
    table_name: str,
    records: Sequence[Mapping[str, Any]],
    *,
    partitions: int | Sequence[int],
    offsets: Sequence[int],
    ingested_at: datetime | None = None,
) -> pa.Table:
    """Build the rows of a bronze table from anonymized records and their Kafka positions.

    `partitions` is one partition for all records or one per record, and `offsets` has one
    offset per record. `ingested_at` defaults to now. Raises `LakeSchemaError` for a record
    field that the table does not have, a missing required field or a value of the wrong type.
    """
    spec = table_spec(table_name)
    if spec.record_name is None:
        raise UnknownTableError(
            f"{table_name} is not a bronze table: expected one of "
            f"{', '.join(BRONZE_TABLES.values())}"
        )
    n_rows = len(records)
    if isinstance(partitions, int):
        partition_column = pa.repeat(pa.scalar(partitions, pa.int32()), n_rows)
    else:
        partition_column = pa.array(partitions, pa.int32())
    if len(partition_column) != n_rows or len(offsets) != n_rows:
        raise ValueError(
            f"{table_name}: expected one partition and one offset per record, received "
            f"{n_rows} records, {len(partition_column)} partitions and {len(offsets)} offsets"
        )
    extra = {
        "ingest_partition": partition_column,
        "ingest_offset": pa.array(offsets, pa.int64()),
    }
    return _build(spec, records, extra, ingested_at)


def silver_table(
    table_name: str, steps: Sequence[Mapping[str, Any]], *, ingested_at: datetime | None = None
) -> pa.Table:
    """Build the rows of a silver table from step rows of `streams.window`.

    Raises `LakeSchemaError` like `bronze_table`.
    """
    spec = table_spec(table_name)
    if spec.record_name is not None:
        raise UnknownTableError(
            f"{table_name} is not a silver table: expected {SPIKE_STEPS} or {ESKIN_STEPS}"
        )
    return _build(spec, steps, {}, ingested_at)


def _build(
    spec: TableSpec,
    rows: Sequence[Mapping[str, Any]],
    extra: Mapping[str, pa.Array],
    ingested_at: datetime | None,
) -> pa.Table:
    """Build a table of `spec` column by column from row mappings and the `extra` columns."""
    n_rows = len(rows)
    stamp = ingested_at if ingested_at is not None else datetime.now(UTC)
    columns = dict(extra)
    columns["ingested_at"] = pa.repeat(pa.scalar(stamp, _TIMESTAMP), n_rows)

    from_rows = [name for name in spec.schema.names if name not in columns]
    _check_keys(spec, rows, set(from_rows))
    for name in from_rows:
        field = spec.schema.field(name)
        values = [row.get(name) for row in rows]
        try:
            columns[name] = _column(values, field.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
            raise LakeSchemaError(
                f"{spec.name}: invalid values in column {name!r}: expected {field.type}; {exc}"
            ) from exc

    table = pa.Table.from_arrays([columns[name] for name in spec.schema.names], schema=spec.schema)
    _check_required(spec, table)
    return table


def _check_keys(spec: TableSpec, rows: Sequence[Mapping[str, Any]], allowed: set[str]) -> None:
    for keys in {tuple(row) for row in rows}:
        unknown = set(keys) - allowed
        if unknown:
            raise LakeSchemaError(
                f"{spec.name}: rows have fields that the table does not have: "
                f"{sorted(unknown)}; add them to the table schema in streams/lake.py first"
            )


def _column(values: list[Any], type_: pa.DataType) -> pa.Array:
    """Build one column. A list column of 1-D numpy arrays is built from one concatenated array."""
    if (
        pa.types.is_list(type_)
        and values
        and all(isinstance(value, np.ndarray) and value.ndim == 1 for value in values)
    ):
        lengths = np.fromiter((value.size for value in values), dtype=np.int64, count=len(values))
        offsets = np.zeros(len(values) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        flat = pa.array(np.concatenate(values), type=type_.value_type)
        return pa.ListArray.from_arrays(pa.array(offsets), flat, type=type_)
    return pa.array(values, type=type_)


def _check_required(spec: TableSpec, table: pa.Table) -> None:
    for field in spec.schema:
        if field.nullable:
            continue
        column = table.column(field.name)
        if column.null_count:
            first = column.is_null().to_pylist().index(True)
            raise LakeSchemaError(
                f"{spec.name}: column {field.name!r} is required but row {first} has no value"
            )


def conform(table_name: str, rows: pa.Table) -> pa.Table:
    """Return `rows` with the columns, order and types of `table_name`'s schema.

    Raises `LakeSchemaError` for missing or extra columns, values that do not cast, and nulls
    in required columns.
    """
    spec = table_spec(table_name)
    expected = spec.schema.names
    missing = [name for name in expected if name not in rows.column_names]
    extra = sorted(set(rows.column_names) - set(expected))
    if missing or extra:
        raise LakeSchemaError(
            f"{table_name}: rows do not match the table schema: missing columns {missing}, "
            f"extra columns {extra}; build them with bronze_table or silver_table"
        )
    try:
        conformed = rows.select(expected).cast(spec.schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise LakeSchemaError(f"{table_name}: rows do not cast to the table schema: {exc}") from exc
    _check_required(spec, conformed)
    return conformed


# ---------------------------------------------------------------------------------------------
# Residency

CLOUD_SCHEMES: Final = frozenset({"s3", "s3a", "gs", "gcs", "abfs", "abfss", "az", "adl", "azure"})
"""URI schemes of object stores. A lake URI with one of them needs an allowed region."""


class LakeLocation(NamedTuple):
    """A checked lake root: the URI to give delta-rs and its declared region."""

    uri: str  # without the `region` query parameter
    region: str | None  # None for a local path


def check_lake_uri(
    uri: str, allowed_regions: Sequence[str], *, region: str | None = None
) -> LakeLocation:
    """Check that a lake URI lies in an allowed region, and return it without its region query.

    A local path or ``file://`` URI is always accepted. An object-store URI (`CLOUD_SCHEMES`,
    such as ``s3://``, ``gs://`` or ``abfss://``) is accepted only when a region is declared,
    by a ``region`` query parameter (``s3://bucket/lake?region=eu-central-1``) or the `region`
    argument, and that region is in `allowed_regions` (compared without case). Any other
    scheme is rejected, because its region cannot be declared. Raises `ResidencyError`.

    The check trusts the declared region: it does not ask the object store where the bucket
    is. `LakeWriter` passes the region to delta-rs as ``AWS_REGION`` for S3 URIs, so requests
    go to that region.
    """
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    allowed = ", ".join(allowed_regions) or "none"
    schemes = ", ".join(f"{name}://" for name in sorted(CLOUD_SCHEMES))
    # A one-letter scheme is a Windows drive letter, as in C:\lake.
    if scheme in ("", "file") or len(scheme) == 1:
        return LakeLocation(uri, None)
    if scheme not in CLOUD_SCHEMES:
        raise ResidencyError(
            f"lake URI {uri!r} has scheme {scheme!r}, whose region cannot be checked: expected "
            f"a local path or an object-store URI ({schemes}) with a region in the allowed "
            f"regions ({allowed})"
        )

    query = parse_qsl(parts.query, keep_blank_values=True)
    declared = {value for key, value in query if key == "region"}
    if region is not None:
        declared.add(region)
    if len(declared) > 1:
        raise ResidencyError(
            f"lake URI {uri!r} has conflicting regions {sorted(declared)} in its query and "
            f"settings: expected one region"
        )
    chosen = declared.pop() if declared else ""
    if not chosen:
        raise ResidencyError(
            f"lake URI {uri!r} declares no region: add ?region=<region> to the URI; "
            f"allowed regions: {allowed}"
        )
    if chosen.lower() not in {name.lower() for name in allowed_regions}:
        raise ResidencyError(
            f"lake URI {uri!r} is in region {chosen!r}, outside the allowed regions ({allowed}); "
            f"use a bucket in an allowed region or add the region to lake.allowed_regions"
        )

    rest = urlencode([(key, value) for key, value in query if key != "region"])
    return LakeLocation(urlunsplit(parts._replace(query=rest)), chosen)


# ---------------------------------------------------------------------------------------------
# Exactly-once writer


def offset_app_id(consumer_group: str, topic: str, partition: int) -> str:
    """Return the Delta app id under which the offset of one topic partition is stored."""
    return f"{consumer_group}/{topic}/{partition}"


class LakeWriter:
    """Appends row batches to the lake's Delta tables, each with its Kafka offsets, exactly once.

    One writer should own each table's partitions of a topic, as one consumer of a consumer
    group does. A second writer that stores a lower offset for the same app id is rejected
    with `OffsetRegressionError`.
    """

    def __init__(
        self,
        lake_uri: str,
        *,
        allowed_regions: Sequence[str] = (),
        region: str | None = None,
        storage_options: Mapping[str, str] | None = None,
        max_commit_attempts: int = DEFAULT_COMMIT_ATTEMPTS,
    ) -> None:
        """Check the lake URI against `allowed_regions` (see `check_lake_uri`) and open nothing yet.

        `max_commit_attempts` bounds the attempts of one append when commits conflict.
        """
        if max_commit_attempts < 1:
            raise ValueError(
                f"invalid max_commit_attempts {max_commit_attempts}: expected at least 1"
            )
        location = check_lake_uri(lake_uri, allowed_regions, region=region)
        options = dict(storage_options or {})
        if location.region and urlsplit(location.uri).scheme.lower() in ("s3", "s3a"):
            options.setdefault("AWS_REGION", location.region)
        self.root = location.uri.rstrip("/")
        self.max_commit_attempts = max_commit_attempts
        self._storage_options = options or None
        self._tables: dict[str, DeltaTable] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> LakeWriter:
        """Create a writer for the lake of `settings` (``lake.uri``, ``lake.allowed_regions``)."""
        return cls(settings.lake_uri, allowed_regions=settings.lake.allowed_regions)

    def table_uri(self, table_name: str) -> str:
        """Return the URI of one table of the lake."""
        return f"{self.root}/{table_spec(table_name).name}"

    def append(
        self,
        table_name: str,
        rows: pa.Table,
        *,
        offsets: Mapping[str, int],
        marks: Mapping[str, int] | None = None,
    ) -> int:
        """Append `rows` and store `offsets` in one Delta commit; return the new table version.

        `offsets` maps app ids (`offset_app_id`) to the next Kafka offset to read. `marks` are
        further app transactions, such as the highest board sequence number written, which are
        stored in the same commit without the regression check. `rows` may be
        empty, to move offsets past records that produced no rows. Steps: 1. check the rows
        and offsets, 2. open or create the table, 3. reject offsets lower than the stored
        ones, 4. commit, and on a commit conflict reload the table and retry from step 3.

        Raises `LakeSchemaError` for rows that do not match the schema, `OffsetRegressionError`
        for an offset lower than the stored one, and `LakeCommitError` when the commit fails.
        """
        # 1. Rows and offsets. Marks are app transactions stored like offsets but not checked
        # for regressions: one lookup per mark costs milliseconds on a table with many of them.
        spec = table_spec(table_name)
        data = conform(table_name, rows)
        transactions = _transactions({**(marks or {}), **offsets})
        uri = self.table_uri(table_name)

        attempt = 1
        while True:
            # 2. Table, at its latest version.
            table = self._open(spec)

            # 3. Offsets only move forward.
            _check_forward(table, uri, offsets)

            # 4. One commit with the data files and the app transactions.
            try:
                write_deltalake(
                    table,
                    data,
                    mode="append",
                    commit_properties=CommitProperties(app_transactions=transactions),
                )
            except CommitFailedError as exc:
                if attempt >= self.max_commit_attempts:
                    raise LakeCommitError(
                        f"commit to Delta table {uri} failed after {attempt} attempts, the "
                        f"last one on table version {table.version()}, with offsets "
                        f"{dict(offsets)}: {exc}; nothing was committed, so append the batch "
                        f"again or restart from committed_offset"
                    ) from exc
                logger.warning(
                    "commit to Delta table %s conflicted on attempt %d of %d at table "
                    "version %d, retrying: %s",
                    uri,
                    attempt,
                    self.max_commit_attempts,
                    table.version(),
                    exc,
                )
                attempt += 1
                continue
            except (DeltaError, OSError) as exc:
                raise LakeCommitError(
                    f"write to Delta table {uri} at table version {table.version()} with "
                    f"offsets {dict(offsets)} failed: {exc}; the commit may or may not have "
                    f"landed, so read committed_offset before writing again"
                ) from exc

            version = table.version()
            logger.info(
                "committed version %d of Delta table %s: %d rows, offsets %s",
                version,
                uri,
                data.num_rows,
                dict(offsets),
            )
            return version

    def committed_offset(
        self, table_name: str, app_id: str, *, refresh: bool = True
    ) -> int | None:
        """Return the offset stored under `app_id` in the latest table version, or None.

        `refresh` False reads the version this writer last opened or committed, without
        reading the Delta log again: right for the table's only writer, and much cheaper.
        """
        spec = table_spec(table_name)
        uri = self.table_uri(table_name)
        cached = self._tables.get(spec.name)
        if cached is not None and not refresh:
            stored: int | None = cached.transaction_version(app_id)
            return stored
        if cached is None and not DeltaTable.is_deltatable(
            uri, storage_options=self._storage_options
        ):
            return None
        version: int | None = self._open(spec).transaction_version(app_id)
        return version

    def _open(self, spec: TableSpec) -> DeltaTable:
        """Return the table at its latest version, creating it with its layout if it is missing."""
        table = self._tables.get(spec.name)
        uri = self.table_uri(spec.name)
        try:
            if table is not None:
                table.update_incremental()
                return table
            table = self._open_or_create(spec, uri)
        except (DeltaError, OSError) as exc:
            raise LakeError(f"cannot open or create Delta table {uri}: {exc}") from exc

        _check_layout(spec, table, uri)
        self._tables[spec.name] = table
        return table

    def _open_or_create(self, spec: TableSpec, uri: str) -> DeltaTable:
        options = self._storage_options
        if DeltaTable.is_deltatable(uri, storage_options=options):
            return DeltaTable(uri, storage_options=options)
        try:
            table = DeltaTable.create(
                uri,
                schema=spec.schema,
                mode="ignore",
                partition_by=list(spec.partition_by),
                storage_options=options,
            )
        except DeltaError:
            # Another writer may have created the table first.
            if DeltaTable.is_deltatable(uri, storage_options=options):
                return DeltaTable(uri, storage_options=options)
            raise
        logger.info("created Delta table %s at version %d", uri, table.version())
        return table


def _transactions(offsets: Mapping[str, int]) -> list[Transaction]:
    transactions = []
    for app_id, version in offsets.items():
        if not isinstance(app_id, str) or not app_id:
            raise ValueError(f"invalid app id {app_id!r}: expected a non-empty string")
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise ValueError(
                f"invalid offset {version!r} for app id {app_id!r}: expected an int >= 0"
            )
        transactions.append(Transaction(app_id, version))
    return transactions


def _check_forward(table: DeltaTable, uri: str, offsets: Mapping[str, int]) -> None:
    for app_id, version in offsets.items():
        stored = table.transaction_version(app_id)
        if stored is not None and version < stored:
            raise OffsetRegressionError(
                f"offset of {app_id!r} in Delta table {uri} would move backwards: stored "
                f"{stored} at table version {table.version()}, received {version}; another "
                f"writer may own this partition, or the consumer did not seek to the "
                f"committed offset"
            )


def _check_layout(spec: TableSpec, table: DeltaTable, uri: str) -> None:
    """Raise `LakeSchemaError` when an existing table has other columns or partitions."""
    partitions = tuple(table.metadata().partition_columns)
    columns = [field.name for field in table.schema().fields]
    if partitions != spec.partition_by or columns != spec.schema.names:
        raise LakeSchemaError(
            f"Delta table {uri} at version {table.version()} does not match the layout of "
            f"{spec.name}: expected columns {spec.schema.names} partitioned by "
            f"{list(spec.partition_by)}, found columns {columns} partitioned by "
            f"{list(partitions)}"
        )
