"""Spark with delta-spark and the delta-rs `deltalake` package read each other's tables."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from pyspark.sql import SparkSession

from bcratos.config import Settings
from infra.spark import spark_conf, spark_session

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def spark(settings: Settings) -> Iterator[SparkSession]:
    session = spark_session(settings, app_name="bcratos-tests")
    yield session
    session.stop()


def test_conf_uses_local_jars_only(settings: Settings) -> None:
    conf = spark_conf(settings)
    assert "spark.jars.packages" not in conf
    jars = conf["spark.jars"].split(",")
    assert any("delta-spark_2.13" in jar for jar in jars)
    assert all(Path(jar).is_file() for jar in jars)


def test_spark_writes_and_reads_delta(spark: SparkSession, tmp_path: Path) -> None:
    path = str(tmp_path / "steps")
    frame = spark.createDataFrame([(1, "rest"), (2, "grasp")], "step long, label string")
    frame.write.format("delta").save(path)
    frame.limit(1).write.format("delta").mode("append").save(path)

    assert spark.read.format("delta").load(path).count() == 3
    assert spark.read.format("delta").option("versionAsOf", 0).load(path).count() == 2


def test_spark_reads_deltalake_table(spark: SparkSession, tmp_path: Path) -> None:
    path = str(tmp_path / "from_rust")
    table = pa.table({"session": ["a", "a", "b"], "count": [3, 4, 5]})
    write_deltalake(path, table, partition_by=["session"])

    rows = spark.read.format("delta").load(path).groupBy("session").sum("count").collect()
    assert {row["session"]: row["sum(count)"] for row in rows} == {"a": 7, "b": 5}


def test_deltalake_reads_spark_table(spark: SparkSession, tmp_path: Path) -> None:
    path = str(tmp_path / "from_spark")
    frame = spark.createDataFrame([(i, float(i) / 2) for i in range(10)], "step long, rate double")
    frame.write.format("delta").partitionBy("step").save(path)

    table = DeltaTable(path)
    assert table.version() == 0
    data = table.to_pyarrow_table()
    assert data.num_rows == 10
    assert sorted(data.column("rate").to_pylist()) == [i / 2 for i in range(10)]
