"""Released Avro schema versions, loaded from the `.avsc` files of `schemas/avro/`.

This registry lives in the process: the files ship with the package, so boards and stream
processors resolve a writer's schema by fingerprint without a schema registry service.
A file is named ``<Record>.v<N>.avsc``, for example ``SpikeFrame.v2.avsc``. Versions of a record
start at 1 and have no gaps, and the highest one is the version new messages are written with.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import (
    SchemaParseException,
    UnknownType,
    fingerprint,
    to_parsing_canonical_form,
)
from fastavro.types import Schema

from schemas.exceptions import SchemaFileError, UnknownSchemaError

AVRO_DIR = Path(__file__).with_name("avro")
NAMESPACE = "org.bcratos"
FINGERPRINT_ALGORITHM = "CRC-64-AVRO"

_FILE_NAME = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)\.v(?P<version>[1-9][0-9]*)\.avsc")


@dataclass(frozen=True, eq=False)
class SchemaVersion:
    """One released version of one record schema."""

    name: str  # record name without namespace, such as "SpikeFrame"
    version: int  # from the file name, 1 for the first release
    fingerprint: bytes  # CRC-64-AVRO of the parsing canonical form, 8 bytes little-endian
    canonical_form: str  # Avro parsing canonical form, the input of the fingerprint
    parsed: Schema  # fastavro parsed schema, shared by every encode and decode: never modify
    text: str  # content of the .avsc file
    path: Path
    field_names: frozenset[str]
    required_fields: frozenset[str]  # fields without a default
    timestamp_fields: tuple[str, ...]  # top-level timestamp-micros fields, nullable ones included

    @property
    def label(self) -> str:
        """Name and version as written in messages, such as ``SpikeFrame v2``."""
        return f"{self.name} v{self.version}"


class SchemaRegistry:
    """Schema versions indexed by record name, version and fingerprint."""

    def __init__(self, versions: Iterable[SchemaVersion]) -> None:
        """Index `versions`, raising `SchemaFileError` on duplicates or gaps between versions."""
        self._by_fingerprint: dict[bytes, SchemaVersion] = {}
        self._by_name: dict[str, dict[int, SchemaVersion]] = {}

        for schema in versions:
            self._add(schema)

        for name, by_version in self._by_name.items():
            expected = list(range(1, len(by_version) + 1))
            if sorted(by_version) != expected:
                raise SchemaFileError(
                    f"versions of {name} must be numbered from 1 without gaps: "
                    f"expected {expected}, received {sorted(by_version)}"
                )

    @classmethod
    def from_directory(cls, directory: Path = AVRO_DIR) -> SchemaRegistry:
        """Load every `.avsc` file of `directory`, raising `SchemaFileError` on a bad file."""
        paths = sorted(directory.glob("*.avsc"))
        if not paths:
            raise SchemaFileError(f"no .avsc files found in {directory}")
        return cls(load_schema_file(path) for path in paths)

    @property
    def names(self) -> tuple[str, ...]:
        """Record names in alphabetical order."""
        return tuple(sorted(self._by_name))

    def versions(self, name: str) -> tuple[SchemaVersion, ...]:
        """Return every version of record `name`, oldest first."""
        by_version = self._by_name_or_raise(name)
        return tuple(by_version[version] for version in sorted(by_version))

    def latest(self, name: str) -> SchemaVersion:
        """Return the highest version of record `name`, the one new messages are written with."""
        by_version = self._by_name_or_raise(name)
        return by_version[max(by_version)]

    def get(self, name: str, version: int | None = None) -> SchemaVersion:
        """Return `version` of record `name`, or its latest version when `version` is None."""
        if version is None:
            return self.latest(name)
        by_version = self._by_name_or_raise(name)
        try:
            return by_version[version]
        except KeyError:
            raise UnknownSchemaError(
                f"unknown version of {name}: expected one of {sorted(by_version)}, "
                f"received {version!r}"
            ) from None

    def lookup(self, fingerprint: bytes) -> SchemaVersion | None:
        """Return the version whose 8-byte fingerprint is `fingerprint`, or None."""
        return self._by_fingerprint.get(fingerprint)

    def __iter__(self) -> Iterator[SchemaVersion]:
        for name in self.names:
            yield from self.versions(name)

    def __len__(self) -> int:
        return len(self._by_fingerprint)

    def _by_name_or_raise(self, name: str) -> dict[int, SchemaVersion]:
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownSchemaError(
                f"unknown record name: expected one of {', '.join(self.names)}, received {name!r}"
            ) from None

    def _add(self, schema: SchemaVersion) -> None:
        clash = self._by_fingerprint.get(schema.fingerprint)
        if clash is not None:
            raise SchemaFileError(
                f"{schema.path.name} has the same parsing canonical form as {clash.path.name}: "
                "a new version must change how data is read, so remove one of the two files"
            )
        by_version = self._by_name.setdefault(schema.name, {})
        if schema.version in by_version:
            raise SchemaFileError(
                f"{schema.label} is defined twice: by {by_version[schema.version].path} "
                f"and by {schema.path}"
            )
        self._by_fingerprint[schema.fingerprint] = schema
        by_version[schema.version] = schema


def load_schema_file(path: Path) -> SchemaVersion:
    """Parse one `.avsc` file, raising `SchemaFileError` when it is invalid or misnamed."""
    match = _FILE_NAME.fullmatch(path.name)
    if match is None:
        raise SchemaFileError(
            f"unexpected schema file name {path.name!r}: expected <Record>.v<N>.avsc, "
            "such as SpikeFrame.v2.avsc"
        )
    name = match["name"]
    version = int(match["version"])

    text = path.read_text(encoding="utf-8")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SchemaFileError(f"{path} is not valid JSON: {exc}") from exc
    _check_document(path, document, name)
    try:
        parsed = fastavro.parse_schema(document)
    except (SchemaParseException, UnknownType) as exc:
        raise SchemaFileError(f"{path} is not a valid Avro schema: {exc}") from exc

    # NOTE: fastavro 1.13 writes a timestamp-micros field as "long" in the canonical form, since
    # the specification strips logicalType. The `avro` package 1.12.2 writes {"type":"long"}, so
    # its fingerprints of our schemas differ: compute fingerprints with fastavro only.
    canonical_form = to_parsing_canonical_form(parsed)
    fields: list[dict[str, Any]] = document["fields"]
    return SchemaVersion(
        name=name,
        version=version,
        fingerprint=bytes.fromhex(fingerprint(canonical_form, FINGERPRINT_ALGORITHM)),
        canonical_form=canonical_form,
        parsed=parsed,
        text=text,
        path=path,
        field_names=frozenset(field["name"] for field in fields),
        required_fields=frozenset(field["name"] for field in fields if "default" not in field),
        timestamp_fields=tuple(
            field["name"] for field in fields if _is_timestamp_micros(field["type"])
        ),
    )


@cache
def default_registry() -> SchemaRegistry:
    """Return the registry of the schemas shipped in `schemas/avro/`, loaded on first use."""
    return SchemaRegistry.from_directory(AVRO_DIR)


def _check_document(path: Path, document: Any, name: str) -> None:
    if not isinstance(document, dict) or document.get("type") != "record":
        raise SchemaFileError(f"{path} must define an Avro record at the top level")
    if not isinstance(document.get("fields"), list):
        raise SchemaFileError(f"{path} must list the record's fields in a JSON array")
    received = (document.get("namespace"), document.get("name"))
    if received != (NAMESPACE, name):
        raise SchemaFileError(
            f"{path} defines the wrong record: expected namespace {NAMESPACE!r} and name "
            f"{name!r} from the file name, received {received[0]!r} and {received[1]!r}"
        )


def _is_timestamp_micros(field_type: Any) -> bool:
    """Tell whether a field's type is timestamp-micros, alone or in a union such as [null, ...]."""
    if isinstance(field_type, list):
        return any(_is_timestamp_micros(branch) for branch in field_type)
    return isinstance(field_type, dict) and field_type.get("logicalType") == "timestamp-micros"
