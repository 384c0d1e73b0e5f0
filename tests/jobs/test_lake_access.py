"""`bcratos lake tables`, `history` and `sql`, and `lake_session`, on a lake the sink wrote."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from deltalake import DeltaTable
from lake_cli import SINK_TABLES, copy_lake, count_rows, invoke, invoke_json, table_uri
from pyspark.sql import SparkSession

from bcratos.config import Settings, load_settings
from jobs.catalog import lake_session
from streams.lake import SPIKE_FRAMES, LakeWriter

if TYPE_CHECKING:
    from tests.jobs.conftest import SinkLake

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BCRATOS = Path(sys.executable).parent / "bcratos"


@pytest.fixture(scope="module", autouse=True)
def stop_spark_after_module() -> Iterator[None]:
    yield
    active = SparkSession.getActiveSession()
    if active is not None:
        active.stop()


@pytest.fixture
def lake_copy(sink_lake: SinkLake, tmp_path: Path) -> Settings:
    return copy_lake(sink_lake.settings, tmp_path)


# ---------------------------------------------------------------------------------------------
# tables


def test_tables_lists_sink_tables(sink_lake: SinkLake) -> None:
    settings = sink_lake.settings
    listed = {row["table"]: row for row in invoke_json(settings, "tables")}

    assert sorted(listed) == list(SINK_TABLES)
    assert listed["bronze.spike_frames"]["rows"] == sink_lake.published["SpikeFrame"]
    assert listed["bronze.behavior_events"]["rows"] == sink_lake.published["BehaviorEvent"]
    assert listed["silver.spike_steps"]["rows"] == count_rows(settings, "silver.spike_steps")
    for name, row in listed.items():
        delta = DeltaTable(table_uri(settings, name))
        assert row["version"] == delta.version(), name
        assert row["files"] == len(delta.file_uris()), name
        assert row["size_bytes"] > 0, name
        assert row["partitioned_by"] == ["subject_pseudonym", "session_day"], name


def test_tables_text_format(sink_lake: SinkLake) -> None:
    result = invoke(sink_lake.settings, "tables")

    assert result.exit_code == 0, result.output
    header = result.stdout.splitlines()[0].split()
    assert header == [
        "table",
        "version",
        "rows",
        "files",
        "size_bytes",
        "partitioned_by",
        "last_commit",
    ]
    for name in SINK_TABLES:
        assert name in result.stdout


def test_tables_on_empty_lake(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, anonymization={"key_file": tmp_path / "key"})

    result = invoke(settings, "tables")

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"no Delta tables under {tmp_path / 'lake'}"


def test_tables_rejects_lake_outside_allowed_regions(tmp_path: Path) -> None:
    settings = load_settings(
        data_dir=tmp_path,
        lake={"uri": "s3://bcratos-lake/lake?region=us-east-1", "allowed_regions": []},
        anonymization={"key_file": tmp_path / "key"},
    )

    result = invoke(settings, "tables")

    assert result.exit_code == 2
    assert "outside the allowed regions" in result.output


# ---------------------------------------------------------------------------------------------
# history


def test_history_lists_newest_versions(sink_lake: SinkLake) -> None:
    settings = sink_lake.settings
    latest = DeltaTable(table_uri(settings, "bronze.spike_frames")).version()

    commits = invoke_json(settings, "history", "bronze.spike_frames", "--limit", "3")

    assert [commit["version"] for commit in commits] == [latest, latest - 1, latest - 2]
    for commit in commits:
        assert commit["operation"] == "WRITE"
        assert commit["metrics"]["num_added_rows"] > 0
        assert commit["parameters"]["mode"] == "Append"
        assert commit["timestamp"].endswith("+00:00")


def test_history_accepts_path_and_slash_name(sink_lake: SinkLake) -> None:
    settings = sink_lake.settings
    by_name = invoke_json(settings, "history", "silver.spike_steps", "--limit", "2")

    by_path = invoke_json(settings, "history", table_uri(settings, "silver.spike_steps"))
    by_layout_name = invoke_json(settings, "history", "silver/spike_steps", "--limit", "2")

    assert by_path[:2] == by_name
    assert by_layout_name == by_name
    assert by_path[-1]["version"] == 0


def test_history_of_unknown_table(sink_lake: SinkLake) -> None:
    result = invoke(sink_lake.settings, "history", "silver.nope")

    assert result.exit_code == 2
    assert "no Delta table silver.nope" in result.output
    assert "bronze.spike_frames" in result.output


# ---------------------------------------------------------------------------------------------
# sql


def test_sql_counts_by_table_name(sink_lake: SinkLake) -> None:
    settings = sink_lake.settings
    rows = invoke_json(settings, "sql", "SELECT count(*) AS n FROM bronze.spike_frames")

    assert rows == [{"n": sink_lake.published["SpikeFrame"]}]


def test_sql_groups_steps_by_subject(sink_lake: SinkLake) -> None:
    settings = sink_lake.settings
    query = (
        "SELECT subject_pseudonym, count(*) AS steps FROM silver.spike_steps "
        "GROUP BY subject_pseudonym ORDER BY subject_pseudonym"
    )
    rows = invoke_json(settings, "sql", query)

    assert len(rows) == 2
    for row in rows:
        expected = count_rows(settings, "silver.spike_steps", row["subject_pseudonym"])
        assert row["steps"] == expected


def test_sql_csv_and_limit(sink_lake: SinkLake) -> None:
    result = invoke(
        sink_lake.settings,
        "sql",
        "SELECT seq, kind FROM bronze.behavior_events ORDER BY seq",
        "--format",
        "csv",
        "--limit",
        "3",
    )

    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "seq,kind"
    assert len(lines) == 4
    assert "showing the first 3 rows" in result.stderr


def test_sql_time_travel_after_append(lake_copy: Settings) -> None:
    uri = table_uri(lake_copy, "bronze.spike_frames")
    before_version = DeltaTable(uri).version()
    before_rows = count_rows(lake_copy, "bronze.spike_frames")
    extra = DeltaTable(uri).to_pyarrow_table().slice(0, 5)
    LakeWriter(lake_copy.lake_uri).append(SPIKE_FRAMES, extra, offsets={"tests/extra/0": 5})
    query = "SELECT count(*) AS n FROM bronze.spike_frames"

    latest = invoke_json(lake_copy, "sql", query)
    as_of = invoke_json(lake_copy, "sql", query, "--as-of", str(before_version))
    as_of_table = invoke_json(
        lake_copy, "sql", query, "--as-of", f"bronze.spike_frames={before_version}"
    )
    in_query = invoke_json(lake_copy, "sql", f"{query} VERSION AS OF {before_version}")

    assert latest == [{"n": before_rows + 5}]
    assert as_of == [{"n": before_rows}]
    assert as_of_table == [{"n": before_rows}]
    assert in_query == [{"n": before_rows}]


def test_sql_describe_history_by_name(sink_lake: SinkLake) -> None:
    settings = sink_lake.settings
    latest = DeltaTable(table_uri(settings, "bronze.behavior_events")).version()

    rows = invoke_json(settings, "sql", "DESCRIBE HISTORY bronze.behavior_events", "--limit", "1")

    assert rows[0]["version"] == latest
    assert rows[0]["operation"] == "WRITE"


def test_sql_as_of_later_than_latest(sink_lake: SinkLake) -> None:
    settings = sink_lake.settings
    latest = DeltaTable(table_uri(settings, "bronze.spike_frames")).version()

    result = invoke(
        settings, "sql", "SELECT count(*) FROM bronze.spike_frames", "--as-of", str(latest + 1)
    )

    assert result.exit_code == 2
    assert f"bronze.spike_frames has no version {latest + 1}" in result.output


def test_sql_as_of_without_named_table(sink_lake: SinkLake) -> None:
    result = invoke(sink_lake.settings, "sql", "SELECT 1", "--as-of", "2")

    assert result.exit_code == 2
    assert "names none" in result.output


def test_sql_rejects_writes(sink_lake: SinkLake) -> None:
    settings = sink_lake.settings
    before = count_rows(settings, "bronze.behavior_events")

    result = invoke(settings, "sql", "DELETE FROM bronze.behavior_events")

    assert result.exit_code == 2
    assert "read-only statements" in result.output
    assert count_rows(settings, "bronze.behavior_events") == before


@pytest.mark.parametrize(
    ("query", "expected", "hint"),
    [
        ("SELECT * FROM bronze.nope", "[TABLE_OR_VIEW_NOT_FOUND]", "bronze.spike_frames"),
        (
            "SELECT no_such_column FROM silver.spike_steps",
            "[UNRESOLVED_COLUMN.WITH_SUGGESTION]",
            "DESCRIBE layer.table",
        ),
        ("SELECT count(* FROM bronze.spike_frames", "[PARSE_SYNTAX_ERROR]", "position"),
    ],
)
def test_sql_error_is_short(sink_lake: SinkLake, query: str, expected: str, hint: str) -> None:
    result = invoke(sink_lake.settings, "sql", query)

    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith(f"error: {expected}")
    assert lines[1].startswith("hint: ")
    assert hint in result.stderr
    assert "at org.apache" not in result.output
    assert "Traceback" not in result.output


def test_sql_error_stderr_in_subprocess(sink_lake: SinkLake) -> None:
    """Spark and pyspark write to the process's stderr directly; read all of it."""
    settings = sink_lake.settings
    environment = {
        **os.environ,
        "BCRATOS_DATA_DIR": str(settings.data_dir),
        "BCRATOS_ANONYMIZATION__KEY_FILE": str(settings.anonymization.key_file),
    }
    result = subprocess.run(
        [str(BCRATOS), "lake", "sql", "SELECT * FROM silver.missing"],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 2, result.stderr
    assert "error: [TABLE_OR_VIEW_NOT_FOUND]" in result.stderr
    assert "hint: lake tables are named layer.table" in result.stderr
    assert "at org.apache" not in result.stderr
    assert "JVM stacktrace" not in result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------------
# lake_session


def test_lake_session_registers_every_table(sink_lake: SinkLake) -> None:
    spark = lake_session(sink_lake.settings)

    tables = {
        f"{row['namespace']}.{row['tableName']}"
        for layer in ("bronze", "silver")
        for row in spark.sql(f"SHOW TABLES IN {layer}").collect()
    }
    count = spark.sql("SELECT count(*) AS n FROM bronze.behavior_events").first()

    assert tables == set(SINK_TABLES)
    assert count is not None
    assert count["n"] == sink_lake.published["BehaviorEvent"]
