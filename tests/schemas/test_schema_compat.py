"""Tests of the compatibility checks between schema versions."""

from __future__ import annotations

import json
import shutil
from itertools import combinations, pairwise
from pathlib import Path
from typing import Any

import pytest

from schemas.compat import check_compatibility, compare_versions, find_incompatibilities
from schemas.exceptions import CompatibilityError
from schemas.registry import AVRO_DIR, SchemaRegistry, SchemaVersion, default_registry


def registry_with_v2(directory: Path, fields: list[dict[str, Any]]) -> SchemaRegistry:
    """Build a registry of JobStatus v1 and a v2 with `fields` in place of v1's fields."""
    shutil.copy(AVRO_DIR / "JobStatus.v1.avsc", directory)
    document = json.loads((AVRO_DIR / "JobStatus.v1.avsc").read_text())
    document["fields"] = fields
    (directory / "JobStatus.v2.avsc").write_text(json.dumps(document))
    return SchemaRegistry.from_directory(directory)


def job_status_fields() -> list[dict[str, Any]]:
    fields: list[dict[str, Any]] = json.loads((AVRO_DIR / "JobStatus.v1.avsc").read_text())[
        "fields"
    ]
    return fields


def test_shipped_versions_compatible() -> None:
    assert find_incompatibilities() == []
    check_compatibility()


# Pairs released so far, named here so that a missing version file fails the test.
RELEASED_PAIRS = [
    ("SpikeFrame", 1, 2),
    ("SpikeFrame", 2, 3),
    ("BehaviorEvent", 1, 2),
    ("EskinFrame", 1, 2),
    ("DecoderOutput", 1, 2),
]


def version_pair_id(pair: tuple[SchemaVersion, SchemaVersion]) -> str:
    older, newer = pair
    return f"{older.label}-v{newer.version}"


def consecutive_pairs() -> list[tuple[SchemaVersion, SchemaVersion]]:
    registry = default_registry()
    return [pair for name in registry.names for pair in pairwise(registry.versions(name))]


def distant_pairs() -> list[tuple[SchemaVersion, SchemaVersion]]:
    """Return the version pairs of each record that are two or more versions apart."""
    registry = default_registry()
    return [
        (older, newer)
        for name in registry.names
        for older, newer in combinations(registry.versions(name), 2)
        if newer.version - older.version >= 2
    ]


@pytest.mark.parametrize(("name", "older", "newer"), RELEASED_PAIRS)
def test_released_pair_compatible(name: str, older: int, newer: int) -> None:
    registry = default_registry()
    assert compare_versions(registry.get(name, older), registry.get(name, newer)) == []


def test_consecutive_pairs_include_released() -> None:
    pairs = {(older.name, older.version, newer.version) for older, newer in consecutive_pairs()}
    assert set(RELEASED_PAIRS) - pairs == set()


@pytest.mark.parametrize("pair", consecutive_pairs(), ids=version_pair_id)
def test_consecutive_pair_compatible(pair: tuple[SchemaVersion, SchemaVersion]) -> None:
    older, newer = pair
    assert newer.version == older.version + 1
    assert compare_versions(older, newer) == []


# The codec resolves data of every version to the latest one, and consumers may lag several
# releases, so distant versions must read each other's data. Compatible steps do not imply it.
@pytest.mark.parametrize("pair", distant_pairs(), ids=version_pair_id)
def test_distant_pair_compatible(pair: tuple[SchemaVersion, SchemaVersion]) -> None:
    older, newer = pair
    assert compare_versions(older, newer) == []


def test_optional_field_compatible(tmp_path: Path) -> None:
    fields = [*job_status_fields(), {"name": "node", "type": ["null", "string"], "default": None}]
    assert find_incompatibilities(registry_with_v2(tmp_path, fields)) == []


def test_required_field_breaks_backward(tmp_path: Path) -> None:
    fields = [*job_status_fields(), {"name": "node", "type": "string"}]
    problems = find_incompatibilities(registry_with_v2(tmp_path, fields))
    assert len(problems) == 1
    assert problems[0].startswith("JobStatus v2 cannot read JobStatus v1 data")
    assert "not backward compatible" in problems[0]
    assert "reader_field_missing_default_value" in problems[0]
    assert "node" in problems[0]


def test_removed_field_breaks_forward(tmp_path: Path) -> None:
    fields = [field for field in job_status_fields() if field["name"] != "backend"]
    problems = find_incompatibilities(registry_with_v2(tmp_path, fields))
    assert len(problems) == 1
    assert problems[0].startswith("JobStatus v1 cannot read JobStatus v2 data")
    assert "not forward compatible" in problems[0]
    assert "backend" in problems[0]


def test_new_enum_symbol_breaks_forward(tmp_path: Path) -> None:
    fields = job_status_fields()
    state = next(field for field in fields if field["name"] == "state")
    state["type"]["symbols"] = [*state["type"]["symbols"], "preempted"]
    problems = find_incompatibilities(registry_with_v2(tmp_path, fields))
    assert len(problems) == 1
    assert "missing_enum_symbols" in problems[0]
    assert "preempted" in problems[0]


def test_type_change_breaks_both(tmp_path: Path) -> None:
    fields = job_status_fields()
    next(field for field in fields if field["name"] == "backend")["type"] = "int"
    problems = find_incompatibilities(registry_with_v2(tmp_path, fields))
    assert len(problems) == 2
    assert all("type_mismatch" in problem for problem in problems)


def test_check_raises_naming_versions(tmp_path: Path) -> None:
    fields = [*job_status_fields(), {"name": "node", "type": "string"}]
    with pytest.raises(CompatibilityError, match="JobStatus v2 cannot read JobStatus v1"):
        check_compatibility(registry_with_v2(tmp_path, fields))
