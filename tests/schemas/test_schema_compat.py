"""Tests of the compatibility checks between schema versions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from schemas.compat import check_compatibility, compare_versions, find_incompatibilities
from schemas.exceptions import CompatibilityError
from schemas.registry import AVRO_DIR, SchemaRegistry, default_registry


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


def test_spike_frame_pair_compatible() -> None:
    older, newer = default_registry().versions("SpikeFrame")
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
