"""Tests of the schema files and of the registry that loads them."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from schemas.exceptions import SchemaFileError, UnknownSchemaError
from schemas.registry import AVRO_DIR, SchemaRegistry, SchemaVersion, default_registry

RECORD_NAMES = {
    "SpikeFrame",
    "BehaviorEvent",
    "EskinFrame",
    "DecoderOutput",
    "ModelAnnouncement",
    "RetrainRequest",
    "JobStatus",
}
BOARD_EVENTS = ["SpikeFrame", "BehaviorEvent", "EskinFrame", "DecoderOutput"]
TIMESTAMP_MICROS = {"type": "long", "logicalType": "timestamp-micros"}
COMMON_FIELD_TYPES = {
    "board_id": "string",
    "subject_id": "string",
    "session_id": "string",
    "seq": "long",
    "event_time": TIMESTAMP_MICROS,
    "schema_version": "int",
    "metadata": {"type": "map", "values": "string"},
    "session_start": ["null", TIMESTAMP_MICROS],
}
# Version of each board event that added session_start.
SESSION_START_ADDED = [
    ("SpikeFrame", 3),
    ("BehaviorEvent", 2),
    ("EskinFrame", 2),
    ("DecoderOutput", 2),
]


def rabin_fingerprint(data: bytes) -> int:
    """Compute the 64-bit Rabin fingerprint of the Avro specification, as an unsigned int."""
    empty = 0xC15D213AA4D7A795
    table = []
    for byte in range(256):
        value = byte
        for _ in range(8):
            value = (value >> 1) ^ (empty if value & 1 else 0)
        table.append(value)
    result = empty
    for byte in data:
        result = (result >> 8) ^ table[(result ^ byte) & 0xFF]
    return result


def copy_schemas(directory: Path) -> Path:
    """Copy the shipped .avsc files into `directory` and return it."""
    for path in AVRO_DIR.glob("*.avsc"):
        shutil.copy(path, directory / path.name)
    return directory


def test_registry_has_contract_records() -> None:
    missing = RECORD_NAMES - set(default_registry().names)
    assert missing == set()


def test_spike_frame_versions_released() -> None:
    versions = [schema.version for schema in default_registry().versions("SpikeFrame")]
    assert versions[:3] == [1, 2, 3]


@pytest.mark.parametrize("name", sorted(default_registry().names))
def test_latest_is_highest_version(name: str) -> None:
    registry = default_registry()
    versions = registry.versions(name)
    assert [schema.version for schema in versions] == list(range(1, len(versions) + 1))
    assert registry.latest(name) is versions[-1]
    assert registry.get(name) is versions[-1]


def test_spike_frame_v2_adds_threshold() -> None:
    registry = default_registry()
    added = registry.get("SpikeFrame", 2).field_names - registry.get("SpikeFrame", 1).field_names
    assert added == {"threshold_rms"}
    assert "threshold_rms" not in registry.get("SpikeFrame", 2).required_fields


@pytest.mark.parametrize(("name", "version"), SESSION_START_ADDED)
def test_version_adds_session_start(name: str, version: int) -> None:
    registry = default_registry()
    newer = registry.get(name, version)
    older = registry.get(name, version - 1)
    assert newer.field_names - older.field_names == {"session_start"}
    assert older.field_names - newer.field_names == set()
    assert "session_start" not in newer.required_fields


@pytest.mark.parametrize(("name", "version"), SESSION_START_ADDED)
def test_session_start_is_optional_timestamp(name: str, version: int) -> None:
    fields = json.loads(default_registry().get(name, version).text)["fields"]
    session_start = next(field for field in fields if field["name"] == "session_start")
    assert session_start["type"] == ["null", TIMESTAMP_MICROS]
    assert session_start["default"] is None
    assert f"Added in version {version}." in session_start["doc"]


@pytest.mark.parametrize(("name", "version"), SESSION_START_ADDED)
def test_session_start_leaves_other_fields(name: str, version: int) -> None:
    registry = default_registry()
    older = json.loads(registry.get(name, version - 1).text)
    newer = json.loads(registry.get(name, version).text)
    newer_fields = [field for field in newer["fields"] if field["name"] != "session_start"]
    assert newer_fields == older["fields"]
    assert {key: value for key, value in newer.items() if key != "fields"} == {
        key: value for key, value in older.items() if key != "fields"
    }


def test_rabin_reference_matches_spec_vector() -> None:
    # The fingerprint of the schema "null" is 7195948357588979594 in Avro's own test data.
    assert rabin_fingerprint(b'"null"') == 7195948357588979594


@pytest.mark.parametrize("schema", list(default_registry()), ids=lambda schema: schema.label)
def test_fingerprint_is_rabin_little_endian(schema: SchemaVersion) -> None:
    expected = rabin_fingerprint(schema.canonical_form.encode()).to_bytes(8, "little")
    assert schema.fingerprint == expected


def test_canonical_form_drops_logical_type() -> None:
    canonical_form = default_registry().latest("SpikeFrame").canonical_form
    assert "logicalType" not in canonical_form
    assert '{"name":"event_time","type":"long"}' in canonical_form


def test_fingerprints_are_unique() -> None:
    fingerprints = [schema.fingerprint for schema in default_registry()]
    assert len(set(fingerprints)) == len(fingerprints) == len(default_registry())


def test_lookup_finds_each_fingerprint() -> None:
    registry = default_registry()
    for schema in registry:
        assert registry.lookup(schema.fingerprint) is schema
    assert registry.lookup(bytes(8)) is None


@pytest.mark.parametrize("name", BOARD_EVENTS)
def test_board_event_common_fields(name: str) -> None:
    fields = {
        field["name"]: field for field in json.loads(default_registry().latest(name).text)["fields"]
    }
    for field_name, field_type in COMMON_FIELD_TYPES.items():
        assert fields[field_name]["type"] == field_type, field_name
    assert fields["metadata"]["default"] == {}
    assert fields["session_start"]["default"] is None


@pytest.mark.parametrize("schema", list(default_registry()), ids=lambda schema: schema.label)
def test_every_field_has_doc(schema: SchemaVersion) -> None:
    document = json.loads(schema.text)
    assert document["namespace"] == "org.bcratos"
    assert document.get("doc")
    undocumented = [field["name"] for field in document["fields"] if not field.get("doc")]
    assert undocumented == []


def test_timestamp_fields_found() -> None:
    registry = default_registry()
    assert registry.latest("SpikeFrame").timestamp_fields == ("event_time", "session_start")
    assert registry.get("SpikeFrame", 1).timestamp_fields == ("event_time",)
    assert registry.latest("JobStatus").timestamp_fields == ("time",)
    assert registry.latest("ModelAnnouncement").timestamp_fields == ("created_at",)


def test_get_unknown_name_raises() -> None:
    with pytest.raises(UnknownSchemaError, match="received 'SpikeFrames'"):
        default_registry().get("SpikeFrames")


def test_get_unknown_version_raises() -> None:
    versions = [schema.version for schema in default_registry().versions("SpikeFrame")]
    unknown = versions[-1] + 1
    expected = f"unknown version of SpikeFrame: expected one of {versions}, received {unknown}"
    with pytest.raises(UnknownSchemaError, match=re.escape(expected)):
        default_registry().get("SpikeFrame", unknown)


def test_directory_loads_copies(tmp_path: Path) -> None:
    registry = SchemaRegistry.from_directory(copy_schemas(tmp_path))
    assert [schema.fingerprint for schema in registry] == [
        schema.fingerprint for schema in default_registry()
    ]


def test_empty_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(SchemaFileError, match="no .avsc files"):
        SchemaRegistry.from_directory(tmp_path)


def test_version_gap_raises(tmp_path: Path) -> None:
    copy_schemas(tmp_path)
    versions = [schema.version for schema in default_registry().versions("SpikeFrame")]
    latest = versions[-1]
    (tmp_path / f"SpikeFrame.v{latest}.avsc").rename(tmp_path / f"SpikeFrame.v{latest + 1}.avsc")
    received = [*versions[:-1], latest + 1]
    with pytest.raises(
        SchemaFileError, match=re.escape(f"expected {versions}, received {received}")
    ):
        SchemaRegistry.from_directory(tmp_path)


def test_bad_file_name_raises(tmp_path: Path) -> None:
    shutil.copy(AVRO_DIR / "JobStatus.v1.avsc", tmp_path / "JobStatus.avsc")
    with pytest.raises(SchemaFileError, match="unexpected schema file name 'JobStatus.avsc'"):
        SchemaRegistry.from_directory(tmp_path)


def test_record_name_mismatch_raises(tmp_path: Path) -> None:
    shutil.copy(AVRO_DIR / "JobStatus.v1.avsc", tmp_path / "JobState.v1.avsc")
    with pytest.raises(
        SchemaFileError, match="expected namespace 'org.bcratos' and name 'JobState'"
    ):
        SchemaRegistry.from_directory(tmp_path)


def test_same_canonical_form_raises(tmp_path: Path) -> None:
    document = json.loads((AVRO_DIR / "JobStatus.v1.avsc").read_text())
    (tmp_path / "JobStatus.v1.avsc").write_text(json.dumps(document))
    document["doc"] = "Only the documentation changed."
    (tmp_path / "JobStatus.v2.avsc").write_text(json.dumps(document))
    with pytest.raises(SchemaFileError, match="same parsing canonical form"):
        SchemaRegistry.from_directory(tmp_path)


def test_invalid_json_raises(tmp_path: Path) -> None:
    (tmp_path / "JobStatus.v1.avsc").write_text('{"type": "record",')
    with pytest.raises(SchemaFileError, match="not valid JSON"):
        SchemaRegistry.from_directory(tmp_path)


def test_invalid_avro_raises(tmp_path: Path) -> None:
    document = {
        "type": "record",
        "name": "JobStatus",
        "namespace": "org.bcratos",
        "fields": [{"name": "job_id", "type": "uuid_string"}],
    }
    (tmp_path / "JobStatus.v1.avsc").write_text(json.dumps(document))
    with pytest.raises(SchemaFileError, match="not a valid Avro schema"):
        SchemaRegistry.from_directory(tmp_path)


def test_missing_fields_raises(tmp_path: Path) -> None:
    document = {"type": "record", "name": "JobStatus", "namespace": "org.bcratos"}
    (tmp_path / "JobStatus.v1.avsc").write_text(json.dumps(document))
    with pytest.raises(SchemaFileError, match="fields"):
        SchemaRegistry.from_directory(tmp_path)


ENUM_SYMBOLS = [
    ("SpikeFrame", "dtype", ["uint8", "uint16", "int16", "int32"]),
    (
        "BehaviorEvent",
        "kind",
        [
            "trial_start",
            "target_on",
            "go_cue",
            "movement_onset",
            "grasp",
            "hold",
            "release",
            "reward",
            "trial_end",
            "outcome",
            "class_label",
        ],
    ),
    ("RetrainRequest", "reason", ["volume", "drift", "schedule", "manual"]),
    ("JobStatus", "state", ["submitted", "running", "succeeded", "failed", "cancelled"]),
]


@pytest.mark.parametrize(("name", "field", "symbols"), ENUM_SYMBOLS)
def test_enum_symbols(name: str, field: str, symbols: list[str]) -> None:
    for schema in default_registry().versions(name):
        fields = {item["name"]: item for item in json.loads(schema.text)["fields"]}
        assert fields[field]["type"]["symbols"] == symbols, schema.label
