"""Tests of the lake layout and the exactly-once Delta writer, on real Delta tables in tmp_path."""

from __future__ import annotations

import doctest
import json
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError
from lake_records import (
    APP_ID,
    INGESTED_AT,
    behavior_record,
    bronze_rows,
    eskin_step_rows,
    sample_rows,
    spike_record,
    spike_step_rows,
)

import streams.lake
from streams.exceptions import (
    LakeCommitError,
    LakeSchemaError,
    OffsetRegressionError,
    ResidencyError,
    UnknownTableError,
)
from streams.lake import (
    BEHAVIOR_EVENTS,
    BRONZE_TABLES,
    ESKIN_STEPS,
    PARTITION_COLUMNS,
    SPIKE_FRAMES,
    SPIKE_STEPS,
    TABLES,
    LakeWriter,
    bronze_table,
    check_lake_uri,
    offset_app_id,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def log_actions(table_path: Path, version: int) -> list[dict[str, Any]]:
    """Return the actions of one Delta commit file."""
    log_file = table_path / "_delta_log" / f"{version:020d}.json"
    return [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    return tmp_path / "lake"


@pytest.fixture
def writer(lake: Path) -> LakeWriter:
    return LakeWriter(str(lake))


def test_docstring_examples() -> None:
    result = doctest.testmod(streams.lake)
    assert result.attempted > 0
    assert result.failed == 0


# -- layout


def test_layout_names_every_table() -> None:
    assert set(TABLES) == {
        "bronze/spike_frames",
        "bronze/behavior_events",
        "bronze/eskin_frames",
        "bronze/decoder_outputs",
        "silver/spike_steps",
        "silver/eskin_steps",
    }
    assert BRONZE_TABLES["AnonSpikeFrame"] == SPIKE_FRAMES
    for spec in TABLES.values():
        assert spec.partition_by == PARTITION_COLUMNS
        assert set(PARTITION_COLUMNS) <= set(spec.schema.names)
        assert "ingested_at" in spec.schema.names


def test_unknown_table_rejected(writer: LakeWriter) -> None:
    with pytest.raises(UnknownTableError, match="bronze/spikes"):
        writer.append("bronze/spikes", pa.table({"a": [1]}), offsets={})


# -- append and read back


def test_append_then_read_back(writer: LakeWriter, lake: Path) -> None:
    rows = bronze_rows(SPIKE_FRAMES, 100, 4)

    version = writer.append(SPIKE_FRAMES, rows, offsets={APP_ID: 104})

    table = DeltaTable(str(lake / SPIKE_FRAMES))
    assert table.version() == version
    data = table.to_pyarrow_table().sort_by("ingest_offset").to_pylist()
    assert [row["ingest_offset"] for row in data] == [100, 101, 102, 103]
    first = data[0]
    assert first["ingest_partition"] == 0
    assert first["ingested_at"] == INGESTED_AT
    assert first["counts"] == spike_record(100)["counts"]
    assert (first["dtype"], first["n_bins"], first["n_channels"]) == ("uint16", 2, 3)
    assert dict(first["metadata"]) == {"task": "center_out"}
    assert first["channel_ids"] == ["e1", "e2", "e3"]
    assert first["subject_pseudonym"] == "subj-1"
    assert first["session_day"] == 812
    assert first["schema_version"] is None


def test_offsets_in_same_commit_as_rows(writer: LakeWriter, lake: Path) -> None:
    other_app = offset_app_id("bcratos-sink", "bcratos.anon.spikes", 1)
    version = writer.append(
        SPIKE_FRAMES, bronze_rows(SPIKE_FRAMES, 0, 3), offsets={APP_ID: 3, other_app: 9}
    )

    actions = log_actions(lake / SPIKE_FRAMES, version)
    adds = [action["add"] for action in actions if "add" in action]
    transactions = {
        action["txn"]["appId"]: action["txn"]["version"] for action in actions if "txn" in action
    }
    assert len(adds) >= 1
    assert sum(json.loads(add["stats"])["numRecords"] for add in adds) == 3
    assert transactions == {APP_ID: 3, other_app: 9}


def test_committed_offset_survives_reopen(writer: LakeWriter, lake: Path) -> None:
    writer.append(SPIKE_FRAMES, bronze_rows(SPIKE_FRAMES, 0, 3), offsets={APP_ID: 3})
    writer.append(SPIKE_FRAMES, bronze_rows(SPIKE_FRAMES, 3, 2), offsets={APP_ID: 5})

    reopened = LakeWriter(str(lake))

    assert reopened.committed_offset(SPIKE_FRAMES, APP_ID) == 5
    assert reopened.committed_offset(SPIKE_FRAMES, "bcratos-sink/other/0") is None


def test_committed_offset_of_missing_table(writer: LakeWriter, lake: Path) -> None:
    assert writer.committed_offset(BEHAVIOR_EVENTS, APP_ID) is None
    assert not (lake / BEHAVIOR_EVENTS).exists()


def test_committed_offset_sees_other_writer(writer: LakeWriter, lake: Path) -> None:
    writer.append(SPIKE_FRAMES, bronze_rows(SPIKE_FRAMES, 0, 1), offsets={APP_ID: 1})
    LakeWriter(str(lake)).append(SPIKE_FRAMES, bronze_rows(SPIKE_FRAMES, 1, 1), offsets={APP_ID: 2})

    assert writer.committed_offset(SPIKE_FRAMES, APP_ID) == 2


def test_empty_batch_moves_offsets(writer: LakeWriter, lake: Path) -> None:
    writer.append(SPIKE_FRAMES, bronze_rows(SPIKE_FRAMES, 0, 2), offsets={APP_ID: 2})
    empty = bronze_table(SPIKE_FRAMES, [], partitions=0, offsets=[])

    writer.append(SPIKE_FRAMES, empty, offsets={APP_ID: 10})

    assert writer.committed_offset(SPIKE_FRAMES, APP_ID) == 10
    assert DeltaTable(str(lake / SPIKE_FRAMES)).to_pyarrow_table().num_rows == 2


def test_marks_stored_with_offsets(writer: LakeWriter, lake: Path) -> None:
    mark = "group/seq/AnonSpikeFrame/session/board"
    writer.append(
        SPIKE_FRAMES, bronze_rows(SPIKE_FRAMES, 0, 3), offsets={APP_ID: 3}, marks={mark: 41}
    )
    writer.append(
        SPIKE_FRAMES, bronze_rows(SPIKE_FRAMES, 3, 1), offsets={APP_ID: 4}, marks={mark: 2}
    )

    reopened = LakeWriter(str(lake))
    assert reopened.committed_offset(SPIKE_FRAMES, mark) == 2  # marks are not checked
    assert reopened.committed_offset(SPIKE_FRAMES, APP_ID) == 4
    assert reopened.committed_offset(SPIKE_FRAMES, mark, refresh=False) == 2


def test_lower_offset_rejected(writer: LakeWriter, lake: Path) -> None:
    writer.append(SPIKE_FRAMES, bronze_rows(SPIKE_FRAMES, 0, 10), offsets={APP_ID: 10})
    version = DeltaTable(str(lake / SPIKE_FRAMES)).version()

    with pytest.raises(OffsetRegressionError) as caught:
        writer.append(SPIKE_FRAMES, bronze_rows(SPIKE_FRAMES, 5, 2), offsets={APP_ID: 7})

    message = str(caught.value)
    assert "stored 10" in message
    assert "received 7" in message
    assert APP_ID in message
    assert str(lake / SPIKE_FRAMES) in message
    assert DeltaTable(str(lake / SPIKE_FRAMES)).version() == version
    assert writer.committed_offset(SPIKE_FRAMES, APP_ID) == 10


def test_equal_offset_accepted(writer: LakeWriter) -> None:
    # A silver table keeps its offset while one step stays open, and still gets new rows.
    writer.append(SPIKE_STEPS, spike_step_rows(), offsets={APP_ID: 4})
    writer.append(SPIKE_STEPS, spike_step_rows(), offsets={APP_ID: 4})

    assert writer.committed_offset(SPIKE_STEPS, APP_ID) == 4


def test_second_writer_behind_rejected(lake: Path) -> None:
    zombie = LakeWriter(str(lake))
    zombie.append(SPIKE_FRAMES, bronze_rows(SPIKE_FRAMES, 0, 5), offsets={APP_ID: 5})
    LakeWriter(str(lake)).append(
        SPIKE_FRAMES, bronze_rows(SPIKE_FRAMES, 5, 10), offsets={APP_ID: 15}
    )

    with pytest.raises(OffsetRegressionError, match="stored 15"):
        zombie.append(SPIKE_FRAMES, bronze_rows(SPIKE_FRAMES, 5, 3), offsets={APP_ID: 8})


@pytest.mark.parametrize("offset", [-1, 2.5, True])
def test_invalid_offset_rejected(writer: LakeWriter, offset: Any) -> None:
    with pytest.raises(ValueError, match="invalid offset"):
        writer.append(SPIKE_FRAMES, bronze_rows(SPIKE_FRAMES, 0, 1), offsets={APP_ID: offset})


# -- partitions and readers


def test_partition_columns_present(writer: LakeWriter, lake: Path) -> None:
    rows = pa.concat_tables(
        [
            bronze_rows(BEHAVIOR_EVENTS, 0, 3, subject="subj-1", day=812),
            bronze_rows(BEHAVIOR_EVENTS, 3, 2, subject="subj-2", day=640),
        ]
    )

    writer.append(BEHAVIOR_EVENTS, rows, offsets={APP_ID: 5})

    table = DeltaTable(str(lake / BEHAVIOR_EVENTS))
    assert table.metadata().partition_columns == ["subject_pseudonym", "session_day"]
    partition_dirs = {
        path.parent.relative_to(lake / BEHAVIOR_EVENTS).as_posix()
        for path in (lake / BEHAVIOR_EVENTS).rglob("*.parquet")
    }
    assert partition_dirs == {
        "subject_pseudonym=subj-1/session_day=812",
        "subject_pseudonym=subj-2/session_day=640",
    }
    data = table.to_pyarrow_table()
    assert set(
        zip(data["subject_pseudonym"].to_pylist(), data["session_day"].to_pylist(), strict=True)
    ) == {("subj-1", 812), ("subj-2", 640)}


@pytest.mark.parametrize("table_name", sorted(TABLES))
def test_every_table_readable_by_pyarrow(writer: LakeWriter, lake: Path, table_name: str) -> None:
    rows = sample_rows(table_name)

    writer.append(table_name, rows, offsets={APP_ID: 1})

    table = DeltaTable(str(lake / table_name))
    data = table.to_pyarrow_table()
    assert data.num_rows == rows.num_rows
    assert data.column_names == rows.column_names
    assert table.metadata().partition_columns == list(PARTITION_COLUMNS)
    # The Parquet files alone, read without delta-rs, hold every column but the partitions.
    files = [pq.read_table(uri) for uri in table.file_uris()]
    assert sum(file.num_rows for file in files) == rows.num_rows
    for file in files:
        assert set(rows.column_names) - set(file.column_names) <= set(PARTITION_COLUMNS)


def test_silver_spike_steps_read_back(writer: LakeWriter, lake: Path) -> None:
    writer.append(SPIKE_STEPS, spike_step_rows(), offsets={APP_ID: 6})

    data = DeltaTable(str(lake / SPIKE_STEPS)).to_pyarrow_table().sort_by("step_index")
    assert data["step_index"].to_pylist() == [0, 1, 2, 3, 4, 5]
    # Each frame has 2 bins of 25 ms with count seq % 7 on each of 3 channels.
    assert data["counts"].to_pylist() == [[2 * (seq % 7)] * 3 for seq in range(6)]
    assert data["gap"].to_pylist() == [False] * 6
    assert data["bins_expected"].to_pylist() == [2] * 6


def test_silver_eskin_steps_read_back(writer: LakeWriter, lake: Path) -> None:
    writer.append(ESKIN_STEPS, eskin_step_rows(), offsets={APP_ID: 3})

    data = DeltaTable(str(lake / ESKIN_STEPS)).to_pyarrow_table().sort_by("step_index")
    assert data["step_index"].to_pylist() == [0, 1, 2, 3]
    assert data["gap"].to_pylist() == [False, True, True, False]
    assert data["n_samples"].to_pylist() == [2, 0, 0, 1]
    assert data["pressure_mean"].to_pylist()[0] == [1.5, 2.5]
    assert data["total_force_mean_n"].to_pylist() == [0.75, None, None, 0.75]


# -- schema guards


def test_unknown_record_field_rejected() -> None:
    record = {**behavior_record(0), "gain": 2.0}

    with pytest.raises(LakeSchemaError, match="gain"):
        bronze_table(BEHAVIOR_EVENTS, [record], partitions=0, offsets=[0])


def test_missing_required_field_rejected() -> None:
    record = behavior_record(0)
    del record["kind"]

    with pytest.raises(LakeSchemaError, match="'kind' is required but row 0"):
        bronze_table(BEHAVIOR_EVENTS, [record], partitions=0, offsets=[0])


def test_wrong_value_type_rejected() -> None:
    record = {**behavior_record(0), "trial_id": "three"}

    with pytest.raises(LakeSchemaError, match="trial_id"):
        bronze_table(BEHAVIOR_EVENTS, [record], partitions=0, offsets=[0])


def test_offsets_count_must_match_records() -> None:
    with pytest.raises(ValueError, match="2 records, 2 partitions and 1 offsets"):
        bronze_table(
            BEHAVIOR_EVENTS, [behavior_record(0), behavior_record(1)], partitions=0, offsets=[0]
        )


def test_rows_with_extra_column_rejected(writer: LakeWriter) -> None:
    rows = bronze_rows(BEHAVIOR_EVENTS, 0, 1).append_column("extra", pa.array([1]))

    with pytest.raises(LakeSchemaError, match="extra columns \\['extra'\\]"):
        writer.append(BEHAVIOR_EVENTS, rows, offsets={APP_ID: 1})


def test_existing_table_with_other_layout_rejected(writer: LakeWriter, lake: Path) -> None:
    write_deltalake(str(lake / BEHAVIOR_EVENTS), pa.table({"kind": ["go_cue"]}))

    with pytest.raises(LakeSchemaError, match="does not match the layout"):
        writer.append(BEHAVIOR_EVENTS, bronze_rows(BEHAVIOR_EVENTS, 0, 1), offsets={APP_ID: 1})


# -- atomicity and retries


def test_crash_before_commit_leaves_nothing(
    writer: LakeWriter, lake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer.append(SPIKE_FRAMES, bronze_rows(SPIKE_FRAMES, 0, 3), offsets={APP_ID: 3})

    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("simulated crash between building the batch and committing it")

    monkeypatch.setattr("streams.lake.write_deltalake", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        writer.append(SPIKE_FRAMES, bronze_rows(SPIKE_FRAMES, 3, 4), offsets={APP_ID: 7})
    monkeypatch.undo()

    reader = LakeWriter(str(lake))
    assert reader.committed_offset(SPIKE_FRAMES, APP_ID) == 3
    assert DeltaTable(str(lake / SPIKE_FRAMES)).to_pyarrow_table().num_rows == 3
    # The consumer restarts from offset 3 and writes the batch again, once.
    reader.append(SPIKE_FRAMES, bronze_rows(SPIKE_FRAMES, 3, 4), offsets={APP_ID: 7})
    offsets = DeltaTable(str(lake / SPIKE_FRAMES)).to_pyarrow_table()["ingest_offset"]
    assert sorted(offsets.to_pylist()) == list(range(7))


# Builds all batches before the first append, so that a kill lands inside delta-rs more often:
# while data files are written, between them and the commit, or during the commit.
KILLED_WRITER = textwrap.dedent(
    """
    import sys
    from streams.lake import BEHAVIOR_EVENTS, LakeWriter, bronze_table

    BATCH = 1000

    def batch(first):
        records = [
            {"subject_pseudonym": f"subj-{seq % 3}", "board_pseudonym": "board-1",
             "session_pseudonym": "ses-1", "key_id": "k1", "seq": seq, "session_day": 812,
             "t_session_us": seq, "metadata": {}, "kind": "go_cue", "trial_id": seq,
             "label": None, "value": None}
            for seq in range(first, first + BATCH)
        ]
        offsets = list(range(first, first + BATCH))
        return bronze_table(BEHAVIOR_EVENTS, records, partitions=0, offsets=offsets)

    writer = LakeWriter(sys.argv[1])
    batches = [batch(index * BATCH) for index in range(100)]
    for index, rows in enumerate(batches):
        writer.append(BEHAVIOR_EVENTS, rows, offsets={sys.argv[2]: (index + 1) * BATCH})
        print((index + 1) * BATCH, flush=True)
    """
)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_killed_writer_leaves_whole_batches(lake: Path, seed: int) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(lake), APP_ID],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    chance = random.Random(seed)
    try:
        assert process.stdout is not None
        for _ in range(chance.randint(1, 8)):
            assert process.stdout.readline(), "the writer process exited before its commits"
        time.sleep(chance.uniform(0.0, 0.05))  # spreads the kill over the next append
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL

    committed = LakeWriter(str(lake)).committed_offset(BEHAVIOR_EVENTS, APP_ID)
    data = DeltaTable(str(lake / BEHAVIOR_EVENTS)).to_pyarrow_table()
    assert committed is not None
    assert committed % 1000 == 0
    assert sorted(data["ingest_offset"].to_pylist()) == list(range(committed))


def test_commit_conflict_retried_with_warning(
    writer: LakeWriter,
    lake: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = []

    def conflict_once(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise CommitFailedError("simulated concurrent transaction")
        write_deltalake(*args, **kwargs)

    monkeypatch.setattr("streams.lake.write_deltalake", conflict_once)
    with caplog.at_level(logging.WARNING, logger="streams.lake"):
        writer.append(SPIKE_FRAMES, bronze_rows(SPIKE_FRAMES, 0, 2), offsets={APP_ID: 2})

    assert len(calls) == 2
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(lake / SPIKE_FRAMES) in warnings[0].getMessage()
    assert "attempt 1 of 3" in warnings[0].getMessage()
    assert writer.committed_offset(SPIKE_FRAMES, APP_ID) == 2


def test_commit_conflicts_exhausted(
    lake: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    writer = LakeWriter(str(lake), max_commit_attempts=2)
    writer.append(SPIKE_FRAMES, bronze_rows(SPIKE_FRAMES, 0, 1), offsets={APP_ID: 1})

    def always_conflict(*args: Any, **kwargs: Any) -> None:
        raise CommitFailedError("simulated concurrent transaction")

    monkeypatch.setattr("streams.lake.write_deltalake", always_conflict)
    with (
        caplog.at_level(logging.WARNING, logger="streams.lake"),
        pytest.raises(LakeCommitError) as caught,
    ):
        writer.append(SPIKE_FRAMES, bronze_rows(SPIKE_FRAMES, 1, 1), offsets={APP_ID: 2})

    message = str(caught.value)
    assert str(lake / SPIKE_FRAMES) in message
    assert "after 2 attempts" in message
    assert "table version 1" in message
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


# -- residency


@pytest.mark.parametrize("uri", ["/srv/lake", "relative/lake", "file:///srv/lake"])
def test_local_lake_always_accepted(uri: str) -> None:
    assert check_lake_uri(uri, []) == (uri, None)


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://bucket/lake?region=eu-central-1", "s3://bucket/lake"),
        ("gs://bucket/lake?region=EU-CENTRAL-1", "gs://bucket/lake"),
        (
            "abfss://fs@account.dfs.core.windows.net/lake?region=eu-central-1&x=1",
            "abfss://fs@account.dfs.core.windows.net/lake?x=1",
        ),
    ],
)
def test_cloud_lake_in_allowed_region_accepted(uri: str, expected: str) -> None:
    location = check_lake_uri(uri, ["eu-central-1", "eu-west-1"])

    assert location.uri == expected
    assert location.region is not None
    assert location.region.lower() == "eu-central-1"


def test_region_from_settings_accepted() -> None:
    location = check_lake_uri("s3://bucket/lake", ["eu-west-1"], region="eu-west-1")

    assert location == ("s3://bucket/lake", "eu-west-1")


@pytest.mark.parametrize(
    ("uri", "region", "expected_text"),
    [
        ("s3://bucket/lake", None, "declares no region"),
        ("s3://bucket/lake?region=us-east-1", None, "outside the allowed regions"),
        ("gs://bucket/lake", "us-east-1", "outside the allowed regions"),
        ("s3://bucket/lake?region=eu-west-1", "eu-central-1", "conflicting regions"),
        ("hdfs://namenode/lake", None, "cannot be checked"),
    ],
)
def test_lake_outside_allowed_regions_rejected(
    uri: str, region: str | None, expected_text: str
) -> None:
    with pytest.raises(ResidencyError) as caught:
        check_lake_uri(uri, ["eu-central-1", "eu-west-1"], region=region)

    message = str(caught.value)
    assert expected_text in message
    assert uri in message
    assert "eu-central-1, eu-west-1" in message or "conflicting" in message


def test_cloud_lake_without_allowed_regions_rejected() -> None:
    with pytest.raises(ResidencyError, match="allowed regions \\(none\\)"):
        check_lake_uri("s3://bucket/lake?region=eu-west-1", [])


def test_writer_checks_residency() -> None:
    with pytest.raises(ResidencyError):
        LakeWriter("s3://bucket/lake?region=us-east-1", allowed_regions=["eu-west-1"])

    writer = LakeWriter("s3://bucket/lake?region=eu-west-1", allowed_regions=["eu-west-1"])
    assert writer.table_uri(SPIKE_STEPS) == "s3://bucket/lake/silver/spike_steps"
