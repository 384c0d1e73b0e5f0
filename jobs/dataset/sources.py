"""Locations of the lake tables that the dataset job reads and writes, and pinned reads.

The job reads each source table at one version. It reads the latest version from the Delta
log first and then reads the rows ``versionAsOf`` that version. Rows that the lake sink commits
while the job runs therefore cannot reach some of its reads and miss others, and the manifest
names exactly what was read.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final

from py4j.protocol import Py4JError
from pyspark.errors import PySparkException

from jobs.dataset.errors import (
    InvalidParameterError,
    SourceTableError,
    spark_message,
    spark_step,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

# Tables written by the lake sink (see the stream processors' lake layout).
BEHAVIOR_EVENTS: Final = "bronze/behavior_events"
SPIKE_STEPS: Final = "silver/spike_steps"
SOURCE_TABLES: Final = (BEHAVIOR_EVENTS, SPIKE_STEPS)

GOLD_DATASETS: Final = "gold/datasets"
GOLD_MANIFESTS: Final = "gold/manifests"

_DATASET_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_dataset_name(name: str) -> str:
    """Return `name` if it can name a dataset folder, else raise `InvalidParameterError`.

    >>> check_dataset_name("spike-days-1-4")
    'spike-days-1-4'
    """
    if not _DATASET_NAME.fullmatch(name) or ".." in name:
        raise InvalidParameterError(
            f"invalid dataset name {name!r}: expected 1 to 128 letters, digits, '.', '_' or "
            "'-', starting with a letter or digit and without '..'"
        )
    return name


def table_uri(lake_uri: str, table: str) -> str:
    """Return the URI of a table under the lake root."""
    return f"{lake_uri.rstrip('/')}/{table}"


def dataset_uri(lake_uri: str, name: str) -> str:
    """Return the URI of the gold Delta table of dataset `name`."""
    return table_uri(lake_uri, f"{GOLD_DATASETS}/{check_dataset_name(name)}")


def manifest_uri(lake_uri: str, name: str) -> str:
    """Return the URI of the JSON manifest of dataset `name`."""
    return table_uri(lake_uri, f"{GOLD_MANIFESTS}/{check_dataset_name(name)}.json")


def latest_version(spark: SparkSession, uri: str) -> int:
    """Return the latest version of the Delta table at `uri`.

    Raises `SourceTableError` when no Delta table is there.
    """
    from delta.tables import DeltaTable

    with spark_step(f"reading the Delta log of {uri}"):
        if not DeltaTable.isDeltaTable(spark, uri):
            raise SourceTableError(
                f"no Delta table at {uri}: expected a table written by the lake sink; run the "
                "stream processors (`bcratos streams start`) and replay data first"
            )
        row = DeltaTable.forPath(spark, uri).history(1).select("version").first()
    if row is None:
        raise SourceTableError(f"Delta table {uri} has no commits")
    return int(row["version"])


def read_version(spark: SparkSession, uri: str, version: int) -> DataFrame:
    """Return the rows of the Delta table at `uri` as of `version`.

    Raises `SourceTableError` when that version cannot be read, for example because it is
    newer than the table or its files were vacuumed.
    """
    try:
        frame = spark.read.format("delta").option("versionAsOf", version).load(uri)
        frame.schema  # noqa: B018 - resolving the schema reads the log of that version
    except (PySparkException, Py4JError) as exc:
        latest = latest_version(spark, uri)
        if version > latest:
            raise SourceTableError(
                f"Delta table {uri} has no version {version}: its latest version is {latest}"
            ) from exc
        raise SourceTableError(
            f"cannot read version {version} of Delta table {uri} (latest {latest}): "
            f"{spark_message(exc)}; log cleanup or vacuum may have removed that version"
        ) from exc
    return frame
