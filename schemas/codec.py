"""Avro single-object encoding of bcratos records.

A message is the two-byte marker C3 01, the 8-byte CRC-64-AVRO fingerprint of the writer
schema (little-endian), and the Avro binary body. A reader finds the writer schema by its
fingerprint in the registry and resolves the body to the latest version of the same record,
so consumers read messages of every released version.

>>> data = encode("BehaviorEvent", {
...     "board_id": "board-7", "subject_id": "S01", "session_id": "2024-05-02-a", "seq": 12,
...     "event_time": 1_714_640_000_000_000, "kind": "go_cue", "trial_id": 3,
... })
>>> data[:2].hex()
'c301'
>>> message = decode(data, topic="raw.behavior", partition=0, offset=12)
>>> message.name, message.version, message.record["kind"], message.record["schema_version"]
('BehaviorEvent', 2, 'go_cue', 2)
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any, Final, cast

from fastavro import schemaless_reader, schemaless_writer
from fastavro.types import Schema
from fastavro.validation import ValidationError, ValidationErrorData, validate

from schemas.exceptions import (
    CorruptBodyError,
    HeaderError,
    InvalidRecordError,
    UnknownFingerprintError,
    UnknownSchemaError,
    format_position,
    format_prefix,
)
from schemas.registry import SchemaRegistry, SchemaVersion, default_registry
from schemas.shapes import ShapeCheck, find_shape_check

MARKER: Final = b"\xc3\x01"
HEADER_SIZE: Final = len(MARKER) + 8  # marker and 8-byte fingerprint

# Errors that fastavro 1.13 raised while reading fuzzed bodies: EOFError when the body is short,
# IndexError for an enum or union index out of range, UnicodeDecodeError (a ValueError) for
# invalid UTF-8, and OverflowError for a timestamp beyond the datetime range.
_BODY_ERRORS: Final = (EOFError, IndexError, ValueError, OverflowError)

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MIN_MICROS: Final = (datetime.min.replace(tzinfo=UTC) - _EPOCH) // timedelta(microseconds=1)
_MAX_MICROS: Final = (datetime.max.replace(tzinfo=UTC) - _EPOCH) // timedelta(microseconds=1)

# Errors that fastavro's writer may still raise for a record that passed validation.
_WRITE_ERRORS: Final = (ValueError, TypeError, OverflowError)


@dataclass(frozen=True, slots=True)
class Decoded:
    """One decoded message."""

    name: str  # record name, such as "SpikeFrame"
    version: int  # schema version the writer used
    reader_version: int  # schema version `record` was resolved to
    fingerprint: bytes  # 8-byte fingerprint of the writer schema, as on the wire
    record: dict[str, Any]  # field values, with timestamp-micros fields as aware UTC datetimes


@dataclass(frozen=True, slots=True)
class _Resolution:
    writer: SchemaVersion
    reader: SchemaVersion
    reader_schema: Schema | None  # None when the writer schema is also the reader schema
    shape_check: ShapeCheck | None


class Codec:
    """Encoder and decoder of single-object encoded messages for the schemas of a registry."""

    def __init__(self, registry: SchemaRegistry | None = None) -> None:
        self.registry = registry if registry is not None else default_registry()
        self._resolutions: dict[tuple[bytes, int | None], _Resolution] = {}
        self._shape_checks: dict[SchemaVersion, ShapeCheck | None] = {}

    def encode(self, name: str, record: Mapping[str, Any], *, version: int | None = None) -> bytes:
        """Encode `record` with `version` of schema `name`, by default the latest version.

        Fields with a default may be left out. The codec sets `schema_version`, where the
        schema has it, to the version written and replaces any value in `record`.
        Timestamp fields take an aware datetime or microseconds since the Unix epoch.

        Raises `UnknownSchemaError` for an unknown name or version, `InvalidRecordError` when
        the record does not match the schema and `ShapeError` when its sizes disagree.
        """
        schema = self.registry.get(name, version)
        if "schema_version" in schema.field_names:
            record = {**record, "schema_version": schema.version}

        _check_record(schema, record)
        shape_check = self._shape_check(schema)
        if shape_check is not None:
            shape_check(record, f"encoding {schema.label}")

        buffer = io.BytesIO()
        buffer.write(MARKER)
        buffer.write(schema.fingerprint)
        try:
            schemaless_writer(buffer, schema.parsed, record, strict_allow_default=True)
        except _WRITE_ERRORS as exc:
            raise InvalidRecordError(f"failed to encode {schema.label}: {exc}") from exc
        return buffer.getvalue()

    def decode(
        self,
        data: bytes | None,
        *,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
        reader: int | None = None,
    ) -> Decoded:
        """Decode one message and resolve it to version `reader` of its record (default: latest).

        `topic`, `partition` and `offset` only name the message in error messages. Raises
        `HeaderError` (also for a tombstone, whose value is None), `UnknownFingerprintError`,
        `UnknownSchemaError` (for `reader`), `CorruptBodyError` or `ShapeError`, all subclasses
        of `SchemaError`.
        """
        # Steps: 1. check the header, 2. find the writer and reader schemas,
        # 3. read the body, 4. check the record's sizes.
        if data is None or len(data) < HEADER_SIZE or data[:2] != MARKER:
            raise _header_error(data, format_position(topic, partition, offset))

        fingerprint = bytes(data[2:HEADER_SIZE])
        resolution = self._resolutions.get((fingerprint, reader))
        if resolution is None:
            resolution = self._resolve(fingerprint, reader, topic, partition, offset)

        stream = io.BytesIO(data)
        stream.seek(HEADER_SIZE)
        writer = resolution.writer
        try:
            record = schemaless_reader(stream, writer.parsed, resolution.reader_schema)
        except _BODY_ERRORS as exc:
            where = format_position(topic, partition, offset)
            cause = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise CorruptBodyError(
                f"{format_prefix(where)}corrupt {writer.label} body: expected one complete record, "
                f"received {len(data) - HEADER_SIZE} body bytes that fail to decode near body "
                f"byte {stream.tell() - HEADER_SIZE} ({cause})"
            ) from exc
        if stream.tell() != len(data):
            where = format_position(topic, partition, offset)
            raise CorruptBodyError(
                f"{format_prefix(where)}corrupt {writer.label} body: expected the message to end "
                f"after the record at byte {stream.tell()}, received "
                f"{len(data) - stream.tell()} trailing bytes"
            )

        result = cast(dict[str, Any], record)
        if resolution.shape_check is not None:
            resolution.shape_check(result, format_position(topic, partition, offset))
        return Decoded(
            name=writer.name,
            version=writer.version,
            reader_version=resolution.reader.version,
            fingerprint=fingerprint,
            record=result,
        )

    def _resolve(
        self,
        fingerprint: bytes,
        reader: int | None,
        topic: str | None,
        partition: int | None,
        offset: int | None,
    ) -> _Resolution:
        where = format_position(topic, partition, offset)
        writer = self.registry.lookup(fingerprint)
        if writer is None:
            raise UnknownFingerprintError(
                f"{format_prefix(where)}unknown writer schema: expected one of the "
                f"{len(self.registry)} registered fingerprints, received {fingerprint.hex()}. "
                "The producer used a schema version that this package does not have, so "
                "upgrade bcratos or check the producer"
            )
        try:
            reader_version = self.registry.get(writer.name, reader)
        except UnknownSchemaError as exc:
            raise UnknownSchemaError(f"{format_prefix(where)}{exc}") from exc
        resolution = _Resolution(
            writer=writer,
            reader=reader_version,
            reader_schema=None if reader_version is writer else reader_version.parsed,
            shape_check=self._shape_check(reader_version),
        )
        self._resolutions[(fingerprint, reader)] = resolution
        return resolution

    def _shape_check(self, schema: SchemaVersion) -> ShapeCheck | None:
        if schema not in self._shape_checks:
            self._shape_checks[schema] = find_shape_check(schema.name, schema.field_names)
        return self._shape_checks[schema]


@cache
def default_codec() -> Codec:
    """Return the codec of the bundled schemas, created on first use."""
    return Codec(default_registry())


def encode(name: str, record: Mapping[str, Any], *, version: int | None = None) -> bytes:
    """Encode `record` with the bundled schemas, as `Codec.encode` does."""
    return default_codec().encode(name, record, version=version)


def decode(
    data: bytes | None,
    *,
    topic: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
    reader: int | None = None,
) -> Decoded:
    """Decode one message with the bundled schemas, as `Codec.decode` does."""
    return default_codec().decode(
        data, topic=topic, partition=partition, offset=offset, reader=reader
    )


def _header_error(data: bytes | None, where: str) -> HeaderError:
    if data is None:
        return HeaderError(
            f"{format_prefix(where)}message has no value: expected Avro single-object encoding, "
            "received a tombstone (value None)"
        )
    if len(data) < HEADER_SIZE:
        return HeaderError(
            f"{format_prefix(where)}message too short for Avro single-object encoding: expected at "
            f"least {HEADER_SIZE} bytes (marker c3 01 and an 8-byte fingerprint), "
            f"received {len(data)} bytes"
        )
    return HeaderError(
        f"{format_prefix(where)}invalid single-object marker: expected c3 01, received "
        f"{bytes(data[:2]).hex(' ')}, so the producer did not use Avro single-object encoding"
    )


def _check_record(schema: SchemaVersion, record: Mapping[str, Any]) -> None:
    """Raise `InvalidRecordError` unless `record` has the fields and types of `schema`."""
    missing = sorted(schema.required_fields - record.keys())
    if missing:
        raise InvalidRecordError(f"invalid {schema.label} record: missing fields {missing}")
    unknown = sorted(record.keys() - schema.field_names)
    if unknown:
        raise InvalidRecordError(
            f"invalid {schema.label} record: unknown fields {unknown}, expected only "
            f"{sorted(schema.field_names)}"
        )

    for field in schema.timestamp_fields:
        _check_timestamp(schema, field, record.get(field))

    try:
        validate(record, schema.parsed, raise_errors=True)
    except ValidationError as exc:
        problems = "; ".join(_describe_invalid_value(error) for error in exc.errors)
        raise InvalidRecordError(f"invalid {schema.label} record: {problems}") from exc


def _check_timestamp(schema: SchemaVersion, field: str, value: object) -> None:
    if isinstance(value, datetime) and value.tzinfo is None:
        raise InvalidRecordError(
            f"invalid {schema.label} field {field}: expected an aware datetime or "
            f"microseconds since the Unix epoch, received the naive datetime {value}"
        )
    # Readers turn the value into a datetime, so it must lie within years 1 to 9999.
    if isinstance(value, int) and not _MIN_MICROS <= value <= _MAX_MICROS:
        raise InvalidRecordError(
            f"invalid {schema.label} field {field}: expected microseconds since the Unix epoch "
            f"from {_MIN_MICROS} to {_MAX_MICROS} (years 1 to 9999), received {value}. "
            "Check that the value is not in nanoseconds"
        )


def _describe_invalid_value(error: ValidationErrorData) -> str:
    """Describe one fastavro `ValidationErrorData` as field, expected type and received value."""
    expected = error.schema
    if isinstance(expected, dict):
        expected = expected.get("symbols") or expected.get("type")
    received = repr(error.datum)
    if len(received) > 80:
        received = received[:77] + "..."
    return f"field {error.field}: expected {expected}, received {received}"
