"""Spark with delta-spark reads every lake table that `LakeWriter` writes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from lake_records import APP_ID, INGESTED_AT, sample_rows, spike_record
from pyspark.sql import SparkSession

from bcratos.config import Settings
from infra.spark import spark_session
from streams.lake import SPIKE_FRAMES, SPIKE_STEPS, TABLES, LakeWriter

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def spark(settings: Settings) -> Iterator[SparkSession]:
    session = spark_session(settings, app_name="bcratos-lake-tests")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lake")
    writer = LakeWriter(str(root))
    for table_name in TABLES:
        writer.append(table_name, sample_rows(table_name), offsets={APP_ID: 1})
    return root


@pytest.mark.parametrize("table_name", sorted(TABLES))
def test_spark_reads_every_table(spark: SparkSession, lake: Path, table_name: str) -> None:
    frame = spark.read.format("delta").load(str(lake / table_name))

    assert frame.count() == sample_rows(table_name).num_rows
    assert sorted(frame.columns) == sorted(TABLES[table_name].schema.names)


def test_spark_reads_bronze_values(spark: SparkSession, lake: Path) -> None:
    frame = spark.read.format("delta").load(str(lake / SPIKE_FRAMES))
    row = frame.orderBy("ingest_offset").first()

    assert row is not None
    assert bytes(row["counts"]) == spike_record(0)["counts"]
    assert row["metadata"] == {"task": "center_out"}
    assert row["session_day"] == 812
    assert row["channel_ids"] == ["e1", "e2", "e3"]
    micros = frame.selectExpr("unix_micros(ingested_at) AS micros").first()
    assert micros is not None
    assert micros["micros"] == int(INGESTED_AT.timestamp()) * 1_000_000


def test_spark_reads_silver_counts(spark: SparkSession, lake: Path) -> None:
    frame = spark.read.format("delta").load(str(lake / SPIKE_STEPS))
    counts = [row["counts"] for row in frame.orderBy("step_index").collect()]

    assert counts == [[2 * (seq % 7)] * 3 for seq in range(6)]


def test_spark_sees_partition_columns(spark: SparkSession, lake: Path) -> None:
    detail = spark.sql(f"DESCRIBE DETAIL delta.`{lake / SPIKE_FRAMES}`").first()

    assert detail is not None
    assert detail["partitionColumns"] == ["subject_pseudonym", "session_day"]
