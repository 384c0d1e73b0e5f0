"""Avro contracts of bcratos: the released schemas, the single-object codec and spike counts.

`schemas.compat` checks compatibility between schema versions. It is not imported here
because it loads the `avro` package, which boards and stream processors do not need.
"""

from schemas.codec import Codec, Decoded, decode, default_codec, encode
from schemas.counts import COUNT_DTYPES, check_counts, pack_counts, unpack_counts
from schemas.exceptions import (
    CompatibilityError,
    CorruptBodyError,
    HeaderError,
    InvalidRecordError,
    SchemaError,
    SchemaFileError,
    ShapeError,
    UnknownFingerprintError,
    UnknownSchemaError,
    format_position,
)
from schemas.registry import SchemaRegistry, SchemaVersion, default_registry

__all__ = [
    "COUNT_DTYPES",
    "Codec",
    "CompatibilityError",
    "CorruptBodyError",
    "Decoded",
    "HeaderError",
    "InvalidRecordError",
    "SchemaError",
    "SchemaFileError",
    "SchemaRegistry",
    "SchemaVersion",
    "ShapeError",
    "UnknownFingerprintError",
    "UnknownSchemaError",
    "check_counts",
    "decode",
    "default_codec",
    "default_registry",
    "encode",
    "format_position",
    "pack_counts",
    "unpack_counts",
]
