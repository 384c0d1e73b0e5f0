"""`bcratos lake compact`, `vacuum` and `erase` on copies of a lake the sink wrote."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from deltalake import CommitProperties, DeltaTable, write_deltalake
from lake_cli import SINK_TABLES, copy_lake, count_rows, invoke, invoke_json, table_uri

from bcratos.config import Settings
from jobs.catalog import Lake
from jobs.erasure import ERASURE_MARK, SubjectRef, erase_subject
from jobs.maintenance import compact_tables, select_tables
from streams.anonymize import Pseudonymizer, load_key

if TYPE_CHECKING:
    from tests.jobs.conftest import SinkLake

pytestmark = pytest.mark.integration


@pytest.fixture
def lake_copy(sink_lake: SinkLake, tmp_path: Path) -> Settings:
    return copy_lake(sink_lake.settings, tmp_path)


@pytest.fixture(scope="module")
def pseudonyms(sink_lake: SinkLake) -> dict[str, str]:
    """Pseudonym of each replayed subject id under the lake's key."""
    pseudonymizer = Pseudonymizer(*load_key(sink_lake.settings.anonymization))
    return {subject: pseudonymizer.subject(subject) for subject in sink_lake.recordings}


def data_files(settings: Settings) -> list[Path]:
    """Parquet data files of the lake, without the checkpoints in the Delta logs."""
    return [
        path
        for path in Path(settings.lake_uri).rglob("*.parquet")
        if "_delta_log" not in path.parts
    ]


def files_containing(settings: Settings, values: set[str]) -> list[Path]:
    encoded = [value.encode() for value in values]
    return [path for path in data_files(settings) if any(v in path.read_bytes() for v in encoded)]


def subject_values(settings: Settings, pseudonym: str) -> set[str]:
    """The subject's pseudonym and the session and board pseudonyms stored in its rows."""
    values = {pseudonym}
    for name in ("bronze.spike_frames", "silver.spike_steps"):
        dataset = DeltaTable(table_uri(settings, name)).to_pyarrow_dataset()
        columns = [c for c in ("session_pseudonym", "board_pseudonym") if c in dataset.schema.names]
        rows = dataset.to_table(columns=columns, filter=pc.field("subject_pseudonym") == pseudonym)
        for column in columns:
            values.update(pc.unique(rows.column(column)).to_pylist())
    return values


def subject_counts(settings: Settings, pseudonym: str) -> dict[str, int]:
    return {name: count_rows(settings, name, pseudonym) for name in SINK_TABLES}


# ---------------------------------------------------------------------------------------------
# compact and vacuum


def test_compact_merges_small_files(lake_copy: Settings) -> None:
    rows_before = {name: count_rows(lake_copy, name) for name in SINK_TABLES}

    results = invoke_json(lake_copy, "compact")

    assert [result["table"] for result in results] == list(SINK_TABLES)
    for result in results:
        delta = DeltaTable(table_uri(lake_copy, result["table"]))
        assert result["files_after"] < result["files_before"]
        assert result["files_after"] == len(delta.file_uris())
        assert result["version"] == delta.version()
        assert count_rows(lake_copy, result["table"]) == rows_before[result["table"]]


def test_compact_one_table(lake_copy: Settings) -> None:
    versions = {name: DeltaTable(table_uri(lake_copy, name)).version() for name in SINK_TABLES}

    results = invoke_json(lake_copy, "compact", "bronze.behavior_events")

    assert [result["table"] for result in results] == ["bronze.behavior_events"]
    assert (
        DeltaTable(table_uri(lake_copy, "bronze.spike_frames")).version()
        == versions["bronze.spike_frames"]
    )


def test_vacuum_zero_retention_needs_force(lake_copy: Settings) -> None:
    lake = Lake.from_settings(lake_copy)
    compacted = compact_tables(lake, select_tables(lake, "bronze.spike_frames"))[0]
    on_disk = len(data_files(lake_copy))
    rows = count_rows(lake_copy, "bronze.spike_frames")

    rejected = invoke(lake_copy, "vacuum", "bronze.spike_frames", "--retain-hours", "0")
    default = invoke_json(lake_copy, "vacuum", "bronze.spike_frames")
    dry_run = invoke_json(
        lake_copy, "vacuum", "bronze.spike_frames", "--retain-hours", "0", "--force", "--dry-run"
    )
    assert len(data_files(lake_copy)) == on_disk
    forced = invoke_json(
        lake_copy, "vacuum", "bronze.spike_frames", "--retain-hours", "0", "--force"
    )

    assert rejected.exit_code == 1
    assert "--force" in rejected.output
    assert default[0]["files_deleted"] == []
    assert len(dry_run[0]["files_to_delete"]) == compacted.files_removed
    assert sorted(forced[0]["files_deleted"]) == sorted(dry_run[0]["files_to_delete"])
    assert len(data_files(lake_copy)) == on_disk - compacted.files_removed
    assert count_rows(lake_copy, "bronze.spike_frames") == rows


def test_vacuum_below_table_retention_needs_force(lake_copy: Settings) -> None:
    result = invoke(lake_copy, "vacuum", "silver.spike_steps", "--retain-hours", "1")

    assert result.exit_code == 1
    assert "minimum retention" in result.output
    assert "needs --force" in result.output


# ---------------------------------------------------------------------------------------------
# erase


def test_erase_removes_subject_everywhere(
    sink_lake: SinkLake, lake_copy: Settings, pseudonyms: dict[str, str]
) -> None:
    erased, kept = pseudonyms["Jango"], pseudonyms["Spike"]
    before = subject_counts(lake_copy, erased)
    kept_before = subject_counts(lake_copy, kept)
    values = subject_values(lake_copy, erased)
    # Compaction first leaves replaced files of the subject on disk that only the log
    # mentions; the erasure must delete them too.
    invoke_json(lake_copy, "compact")
    assert files_containing(lake_copy, values)

    report = invoke_json(lake_copy, "erase", "--subject", erased)

    by_table = {row["table"]: row for row in report["tables"]}
    assert report["subject_pseudonym"] == erased
    assert report["from_raw_id"] is False
    assert report["rows"] == sum(before.values())
    for name in SINK_TABLES:
        assert by_table[name]["rows_found"] == before[name] > 0
        assert by_table[name]["rows_deleted"] == before[name]
        assert by_table[name]["files_vacuumed"] > 0
    assert subject_counts(lake_copy, erased) == dict.fromkeys(SINK_TABLES, 0)
    assert subject_counts(lake_copy, kept) == kept_before
    assert files_containing(lake_copy, values) == []
    assert [p for p in Path(lake_copy.lake_uri).rglob(f"*{erased}*")] == []


def test_erase_by_raw_id_with_key(
    lake_copy: Settings, pseudonyms: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    before = subject_counts(lake_copy, pseudonyms["Jango"])

    result = invoke(lake_copy, "erase", "--subject", "Jango", "--format", "json")

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["subject_pseudonym"] == pseudonyms["Jango"]
    assert report["from_raw_id"] is True
    assert report["rows"] == sum(before.values())
    assert subject_counts(lake_copy, pseudonyms["Jango"]) == dict.fromkeys(SINK_TABLES, 0)
    assert "Jango" not in result.output
    assert not [record for record in caplog.records if "Jango" in record.getMessage()]


def test_erase_raw_id_from_stdin(lake_copy: Settings, pseudonyms: dict[str, str]) -> None:
    result = invoke(
        lake_copy, "erase", "--subject", "-", "--raw", "--dry-run", input_text="Spike\n"
    )

    assert result.exit_code == 0, result.output
    assert f"subject {pseudonyms['Spike']} (pseudonym of the raw id under key" in result.stdout
    assert "Spike" not in result.stdout


def test_erase_dry_run_changes_nothing(lake_copy: Settings, pseudonyms: dict[str, str]) -> None:
    versions = {name: DeltaTable(table_uri(lake_copy, name)).version() for name in SINK_TABLES}
    before = subject_counts(lake_copy, pseudonyms["Spike"])

    report = invoke_json(lake_copy, "erase", "--subject", pseudonyms["Spike"], "--dry-run")

    assert report["dry_run"] is True
    assert {row["table"]: row["rows_found"] for row in report["tables"]} == before
    assert all(row["rows_deleted"] == 0 for row in report["tables"])
    for name in SINK_TABLES:
        assert DeltaTable(table_uri(lake_copy, name)).version() == versions[name]
    assert subject_counts(lake_copy, pseudonyms["Spike"]) == before


def test_erase_rejects_non_pseudonym(lake_copy: Settings) -> None:
    result = invoke(lake_copy, "erase", "--subject", "Subject-07", "--pseudonym")

    assert result.exit_code == 2
    assert "expected exactly 20 lowercase hexadecimal characters" in result.output
    assert "Subject-07" not in result.output


def test_erase_gold_dataset_and_manifest(lake_copy: Settings, pseudonyms: dict[str, str]) -> None:
    erased, kept = pseudonyms["Jango"], pseudonyms["Spike"]
    gold = table_uri(lake_copy, "gold.grasp_v1")
    rows = pa.table(
        {
            "subject_pseudonym": [erased, erased, kept, kept, kept],
            "split": ["train", "test", "train", "train", "test"],
            "step_index": [0, 1, 0, 1, 2],
        }
    )
    write_deltalake(gold, rows, partition_by=["split"])
    write_deltalake(gold, rows.slice(0, 1), mode="append")
    registry = f"{lake_copy.lake_uri}/registry/models"
    write_deltalake(registry, pa.table({"model_version": ["m1"], "target": ["global"]}))
    manifests = Path(lake_copy.lake_uri) / "gold" / "manifests"
    manifests.mkdir(parents=True)
    manifest = {
        "format_version": 1,
        "name": "grasp_v1",
        "sessions": [
            {"subject_pseudonym": erased, "session_pseudonym": "s-erased", "rows": 2},
            {"subject_pseudonym": kept, "session_pseudonym": "s-kept", "rows": 3},
        ],
        "subjects": [erased, kept],
        "channels": {erased: 96, kept: 96},
        "notes": [f"subject {erased} has a gap"],
    }
    (manifests / "grasp_v1.json").write_text(json.dumps(manifest))

    report = invoke_json(lake_copy, "erase", "--subject", erased)

    by_table = {row["table"]: row for row in report["tables"]}
    assert by_table["gold.grasp_v1"]["rows_deleted"] == 3
    assert by_table["registry.models"]["note"] == "no subject column"
    assert count_rows(lake_copy, "gold.grasp_v1", erased) == 0
    assert count_rows(lake_copy, "gold.grasp_v1", kept) == 3
    assert not any(erased.encode() in path.read_bytes() for path in Path(gold).rglob("*.parquet"))
    updated = json.loads((manifests / "grasp_v1.json").read_text())
    assert erased not in json.dumps(updated)
    assert updated["sessions"] == [manifest["sessions"][1]]
    assert updated["subjects"] == [kept]
    assert updated["channels"] == {kept: 96}
    assert updated["needs_rebuild"] is True
    assert updated["erasures"][0]["rows_removed"] == 3
    assert report["manifests"] == [
        {
            "dataset": "grasp_v1",
            "path": str(manifests / "grasp_v1.json"),
            "mentions_removed": 4,
            "rows_removed": 3,
        }
    ]


def test_erase_again_finishes_unvacuumed_delete(
    lake_copy: Settings, pseudonyms: dict[str, str]
) -> None:
    """An erasure that stopped after its DELETE commits: the next run vacuums the files."""
    erased, kept = pseudonyms["Jango"], pseudonyms["Spike"]
    gold = table_uri(lake_copy, "gold.grasp_v1")
    rows = pa.table({"subject_pseudonym": [erased, kept], "split": ["train", "train"]})
    write_deltalake(gold, rows, partition_by=["split"])
    mark = CommitProperties(custom_metadata={"userMetadata": ERASURE_MARK})
    for name in (*SINK_TABLES, "gold.grasp_v1"):
        DeltaTable(table_uri(lake_copy, name)).delete(
            f"subject_pseudonym = '{erased}'", commit_properties=mark
        )
    values = subject_values_from_files(lake_copy, erased)
    assert files_containing(lake_copy, values)

    report = erase_subject(lake_copy, SubjectRef(erased, from_raw_id=False))

    assert report.rows == 0
    assert [table.table for table in report.tables] == [*SINK_TABLES, "gold.grasp_v1"]
    assert all(table.files_vacuumed > 0 for table in report.tables)
    assert files_containing(lake_copy, values) == []
    assert [p for p in Path(lake_copy.lake_uri).rglob(f"*{erased}*")] == []
    assert count_rows(lake_copy, "gold.grasp_v1", kept) == 1


def subject_values_from_files(settings: Settings, pseudonym: str) -> set[str]:
    """Session pseudonyms found in the subject's partition folders, read from the files."""
    values = {pseudonym}
    for path in Path(settings.lake_uri).rglob(f"subject_pseudonym={pseudonym}/*/*.parquet"):
        table = pq.read_table(path, columns=["session_pseudonym"])
        values.update(pc.unique(table.column("session_pseudonym")).to_pylist())
    return values
