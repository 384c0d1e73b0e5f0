"""Model steps of a dataset: re-binning to the requested width, windows, features and hashes.

All functions work on DataFrames with the silver ``spike_steps`` columns, without Python UDFs:
array arithmetic uses Spark's higher-order functions (``aggregate``, ``zip_with``,
``transform``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Final

from pyspark.sql import Window
from pyspark.sql import functions as F

from jobs.dataset.labels import floor_div
from jobs.dataset.normalization import ChannelStats, ChannelSums

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

STEP_COLUMNS: Final = (
    "subject_pseudonym",
    "session_pseudonym",
    "session_day",
    "step_index",
    "t_step_us",
    "step_ms",
    "n_channels",
    "counts",
    "gap",
)


def rebin(steps: DataFrame, *, step_ms: int, silver_step_ms: set[int]) -> DataFrame:
    """Return the steps at width `step_ms`, summing the counts of the silver steps inside.

    `silver_step_ms` contains the widths of the selected silver steps; each must divide
    `step_ms` (the caller checks). A re-binned step is a gap when one of its silver steps is
    a gap or missing, as at the edges of a session. Re-binned steps start at multiples of
    `step_ms` in session time.
    """
    if silver_step_ms == {step_ms}:
        return steps.select(*STEP_COLUMNS)

    step_us = step_ms * 1000
    sum_arrays = F.aggregate(
        F.collect_list("counts"),
        F.array_repeat(F.lit(0), F.max("n_channels")),
        lambda total, counts: F.zip_with(total, counts, lambda a, b: a + b),
    )
    grouped = (
        steps.withColumn("coarse_index", floor_div("t_step_us", step_us))
        .groupBy("subject_pseudonym", "session_pseudonym", "session_day", "coarse_index")
        .agg(
            sum_arrays.alias("counts"),
            F.max("n_channels").alias("n_channels"),
            F.count(F.lit(1)).alias("silver_steps"),
            F.max("step_ms").alias("silver_step_ms"),
            F.max(F.col("gap").cast("int")).alias("any_gap"),
        )
    )
    expected = F.lit(step_ms) / F.col("silver_step_ms")
    return grouped.select(
        "subject_pseudonym",
        "session_pseudonym",
        "session_day",
        F.col("coarse_index").alias("step_index"),
        (F.col("coarse_index") * step_us).alias("t_step_us"),
        F.lit(step_ms).alias("step_ms"),
        "n_channels",
        "counts",
        ((F.col("any_gap") == 1) | (F.col("silver_steps") < expected)).alias("gap"),
    )


def add_window_complete(frame: DataFrame, window: int) -> DataFrame:
    """Add ``window_complete``: the step and the `window` - 1 steps before it exist, no gap."""
    frame_rows = (
        Window.partitionBy("session_pseudonym").orderBy("step_index").rowsBetween(-(window - 1), 0)
    )
    clean_steps = F.sum(F.when(F.col("gap"), 0).otherwise(1)).over(frame_rows)
    oldest_index = F.min("step_index").over(frame_rows)
    complete = (clean_steps == window) & (F.col("step_index") - oldest_index == window - 1)
    return frame.withColumn("window_complete", complete)


def training_sums(frame: DataFrame, *, split_column: str = "split") -> dict[str, ChannelSums]:
    """Return exact per-channel sums over the training steps without a gap, per session."""
    exploded = frame.where((F.col(split_column) == "train") & ~F.col("gap")).select(
        "session_pseudonym", F.posexplode("counts").alias("channel", "count")
    )
    count = F.col("count").cast("long")
    rows = (
        exploded.groupBy("session_pseudonym", "channel")
        .agg(
            F.count(F.lit(1)).alias("steps"),
            F.sum(count).alias("total"),
            F.sum(count * count).alias("squares"),
        )
        .collect()
    )
    per_session: dict[str, dict[int, tuple[int, int, int]]] = {}
    for row in rows:
        channels = per_session.setdefault(row["session_pseudonym"], {})
        channels[int(row["channel"])] = (int(row["steps"]), int(row["total"]), int(row["squares"]))

    sums: dict[str, ChannelSums] = {}
    for session, channels in per_session.items():
        ordered = [channels[index] for index in sorted(channels)]
        sums[session] = ChannelSums(
            ordered[0][0],
            tuple(total for _steps, total, _squares in ordered),
            tuple(squares for _steps, _total, squares in ordered),
        )
    return sums


def statistics_frame(
    spark: SparkSession, applied: Mapping[str, tuple[str, ChannelStats]]
) -> DataFrame:
    """Return one row per session with the mean and divisor arrays its features use."""
    rows = [
        (session, list(stats.mean), list(stats.divisors()))
        for session, (_source, stats) in sorted(applied.items())
    ]
    schema = "session_pseudonym string, norm_mean array<double>, norm_divisor array<double>"
    return spark.createDataFrame(rows, schema)


def add_features(frame: DataFrame, statistics: DataFrame) -> DataFrame:
    """Add ``features``: (count - mean) / std per channel, as float32 (`statistics_frame`)."""
    mean = F.col("norm_mean")
    divisor = F.col("norm_divisor")
    features = F.transform(
        "counts", lambda count, i: ((count.cast("double") - mean[i]) / divisor[i]).cast("float")
    )
    joined = frame.join(F.broadcast(statistics), on="session_pseudonym", how="left")
    return joined.withColumn("features", features).drop("norm_mean", "norm_divisor")


def add_label_index(frame: DataFrame, classes: Sequence[str]) -> DataFrame:
    """Add ``label_index``, the position of each step's label in the sorted `classes`."""
    index_of = F.create_map(
        *[item for index, name in enumerate(classes) for item in (F.lit(name), F.lit(index))]
    )
    return frame.withColumn("label_index", index_of[F.col("label")].cast("int"))


def session_hashes(frame: DataFrame, columns: Sequence[str]) -> list[tuple[str, str, int, str]]:
    """Return (split, session, rows, hash) per session, from the SHA-256 of each row's JSON.

    A session's hash is the SHA-256 of its sorted row hashes, so it does not depend on the
    order in which Spark reads the rows.
    """
    row_hash = F.sha2(F.to_json(F.struct(*columns)), 256)
    rows = (
        frame.groupBy("split", "session_pseudonym")
        .agg(
            F.count(F.lit(1)).alias("rows"),
            F.sha2(F.concat_ws(",", F.sort_array(F.collect_list(row_hash))), 256).alias("hash"),
        )
        .collect()
    )
    return sorted(
        (row["split"], row["session_pseudonym"], int(row["rows"]), row["hash"]) for row in rows
    )
