"""Errors of the schemas package.

Every error is a `SchemaError`. Each class has a short `reason` code that a dead-letter router
can put in a header or a metric label. Decoding errors name the message's position as
``topic[partition]@offset`` when the caller passed it.
"""

from __future__ import annotations

from typing import ClassVar


class SchemaError(Exception):
    """Base class of every error raised by the schemas package."""

    reason: ClassVar[str] = "schema_error"


class SchemaFileError(SchemaError):
    """An `.avsc` file is unreadable, misnamed, invalid, or clashes with another version."""

    reason = "invalid_schema_file"


class UnknownSchemaError(SchemaError):
    """A record name or version that no `.avsc` file defines."""

    reason = "unknown_schema"


class InvalidRecordError(SchemaError):
    """A record that does not match the schema it is encoded with."""

    reason = "invalid_record"


class HeaderError(SchemaError):
    """A message without a value, shorter than the single-object header, or without C3 01."""

    reason = "invalid_header"


class UnknownFingerprintError(SchemaError):
    """A message whose writer schema fingerprint matches no known schema version."""

    reason = "unknown_fingerprint"


class CorruptBodyError(SchemaError):
    """A message body that is truncated, corrupt, or longer than its writer schema allows."""

    reason = "corrupt_body"


class ShapeError(SchemaError):
    """A record whose sizes disagree, such as packed spike counts of the wrong byte length."""

    reason = "shape_mismatch"


class CompatibilityError(SchemaError):
    """Two consecutive versions of a record schema that cannot read each other's data."""

    reason = "incompatible_versions"


def format_position(
    topic: str | None = None, partition: int | None = None, offset: int | None = None
) -> str:
    """Format a message position as ``topic[partition]@offset``, leaving out unknown parts.

    >>> format_position("raw.spikes", 2, 1041)
    'raw.spikes[2]@1041'
    >>> format_position(offset=7)
    '@7'
    >>> format_position()
    ''
    """
    text = topic or ""
    if partition is not None:
        text += f"[{partition}]"
    if offset is not None:
        text += f"@{offset}"
    return text


def format_prefix(where: str) -> str:
    """Return ``"where: "`` to start an error message, or ``""`` when the position is unknown."""
    return f"{where}: " if where else ""
