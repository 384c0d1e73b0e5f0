"""Compatibility checks between consecutive versions of each record schema.

Each new version must be backward compatible (its reader reads data of the previous version)
and forward compatible (the previous version's reader reads its data), so that producers
and consumers one version apart can be upgraded in either order. The checks use the Apache
`avro` package's `ReaderWriterCompatibilityChecker`.
"""

from __future__ import annotations

from itertools import pairwise

import avro.errors
import avro.schema
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

from schemas.exceptions import CompatibilityError, SchemaFileError
from schemas.registry import SchemaRegistry, SchemaVersion, default_registry


def find_incompatibilities(registry: SchemaRegistry | None = None) -> list[str]:
    """Return one problem per direction in which a version cannot read its neighbour's data.

    An empty list means every pair of consecutive versions is backward and forward compatible.
    """
    if registry is None:
        registry = default_registry()
    problems: list[str] = []
    for name in registry.names:
        for older, newer in pairwise(registry.versions(name)):
            problems.extend(compare_versions(older, newer))
    return problems


def check_compatibility(registry: SchemaRegistry | None = None) -> None:
    """Raise `CompatibilityError` listing every incompatible pair of consecutive versions."""
    problems = find_incompatibilities(registry)
    if problems:
        raise CompatibilityError(
            f"{len(problems)} schema compatibility problems: " + "; ".join(problems)
        )


def compare_versions(older: SchemaVersion, newer: SchemaVersion) -> list[str]:
    """Return the problems of `newer` reading `older` data and of `older` reading `newer` data."""
    old_schema = _parse(older)
    new_schema = _parse(newer)
    problems: list[str] = []

    backward = _reader_problem(reader=new_schema, writer=old_schema)
    if backward:
        problems.append(
            f"{newer.label} cannot read {older.label} data (not backward compatible): {backward}"
        )
    forward = _reader_problem(reader=old_schema, writer=new_schema)
    if forward:
        problems.append(
            f"{older.label} cannot read {newer.label} data (not forward compatible): {forward}"
        )
    return problems


def _parse(schema: SchemaVersion) -> avro.schema.Schema:
    try:
        return avro.schema.parse(schema.text)
    except avro.errors.SchemaParseException as exc:
        raise SchemaFileError(f"avro cannot parse {schema.path}: {exc}") from exc


def _reader_problem(*, reader: avro.schema.Schema, writer: avro.schema.Schema) -> str:
    """Describe why `reader` cannot read data written with `writer`, or return ""."""
    # avro 1.12.2 leaves the checker's __init__ unannotated.
    checker = ReaderWriterCompatibilityChecker()  # type: ignore[no-untyped-call]
    result = checker.get_compatibility(reader, writer)
    if result.compatibility is SchemaCompatibilityType.compatible:
        return ""
    kinds = ", ".join(sorted({kind.value for kind in result.incompatibilities}))
    return (
        f"{kinds} ({'; '.join(sorted(result.messages))}) at {', '.join(sorted(result.locations))}"
    )
