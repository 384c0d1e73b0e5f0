"""Trial intervals from behaviour events, and the label of every model step.

Label rules (also written to each manifest, from `LABEL_RULES`):

- A step belongs to an interval when its start time ``t_step_us`` lies in the half-open
  interval ``[start, end)`` of session time.
- ``rest``: outside every trial. A trial runs from its ``trial_start`` event to its
  ``trial_end`` event.
- ``pre_movement``: from the trial start to the movement start (the centre hold and, where the
  task has one, the instructed delay).
- the trial's class, such as ``target_3`` or ``precision_grip`` (the label of its
  ``class_label`` event): from the movement start to the trial's ``release`` marker, or to the
  trial end when it has none.
- ``release``: from the ``release`` marker to the trial end.

The movement start is the ``go_cue`` event. A trial without one starts its movement at the
``target_on`` event (the outer target time of the limblab tasks), and a trial without either at
its start, as the Brochier grasp trials do, whose whole recorded window is movement. The
column ``movement_start_source`` records which one a trial used. ``steps_from_go`` is the
step's offset from the first step that starts at or after the movement start: 0 for that step,
negative before it, null outside trials.

A trial is excluded (``excluded`` true) when it has conflicting outcomes or an outcome other
than ``reward`` (abort, fail, incomplete). It is also excluded without a ``trial_end`` event, and
then ends at the next trial's start or at the end of the session's last step. The remaining
reasons are no outcome although other trials of its session have one, conflicting class
labels, and no class label (its movement steps are then labelled ``unknown_class``).
``exclusion_reason`` names the first of these that applies, in this order. Excluded steps keep
their phase label, so a consumer must filter on ``excluded``.
Sessions without any outcome event, such as the Brochier replay, report only completed trials,
so their trials are not excluded for lacking one.

Trials come from a small aggregate of the behaviour events, so the interval join broadcasts
them. Each trial is repeated once per 10 s bucket that it overlaps, and a step joins only the
trials of its own bucket, which keeps the range condition from comparing every step with
every trial of its session.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from pyspark.sql import Column, Window
from pyspark.sql import functions as F

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

REST: Final = "rest"
PRE_MOVEMENT: Final = "pre_movement"
RELEASE: Final = "release"
UNKNOWN_CLASS: Final = "unknown_class"
REWARD: Final = "reward"

JOIN_BUCKET_US: Final = 10_000_000  # width of the buckets of the interval join, 10 s

LABEL_RULES: Final = (
    "A step belongs to an interval when its start time t_step_us lies in the half-open "
    "interval [start, end) of session time.",
    "rest: outside every trial; a trial runs from its trial_start event to its trial_end event.",
    "pre_movement: from the trial start to the movement start.",
    "<class> (the label of the trial's class_label event, such as target_3 or "
    "precision_grip): from the movement start to the trial's release marker, or to the trial "
    "end without one.",
    "release: from the trial's release marker to the trial end.",
    "movement start: the go_cue event; without one the target_on event (outer target time); "
    "without either the trial start (Brochier grasp trials: the whole window is movement). "
    "Column movement_start_source records which.",
    "steps_from_go: offset from the first step starting at or after the movement start "
    "(0 for that step, negative before it), null outside trials.",
    "excluded: steps of trials with, in this order of exclusion_reason: conflicting outcomes, "
    "an outcome other than reward (abort, fail, incomplete), no trial_end event (the trial "
    "then ends at the next trial start or the session end), no outcome while other trials of "
    "the session have one, conflicting class labels, no class label (movement labelled "
    "unknown_class). Excluded steps keep their phase label.",
    "A trial without a trial_start event starts at its earliest event. A step inside two "
    "overlapping trials belongs to the one that started last.",
)

# Columns of a labelled step that come from its trial.
TRIAL_COLUMNS: Final = (
    "trial_id",
    "trial_class",
    "trial_outcome",
    "excluded",
    "exclusion_reason",
    "movement_start_source",
    "steps_from_go",
    "label",
)


def floor_div(column: str, divisor: int) -> Column:
    """Return ``floor(column / divisor)`` in exact integer arithmetic, also for negatives."""
    return F.expr(f"(`{column}` - pmod(`{column}`, {divisor})) div {divisor}")


def ceil_div(column: str, divisor: int) -> Column:
    """Return ``ceil(column / divisor)`` in exact integer arithmetic, also for negatives."""
    return F.expr(
        f"(`{column}` - pmod(`{column}`, {divisor})) div {divisor}"
        f" + IF(pmod(`{column}`, {divisor}) > 0, 1, 0)"
    )


def build_trials(events: DataFrame, session_ends: DataFrame) -> DataFrame:
    """Return one row per trial with its interval, movement phase, class and exclusion.

    `events` are bronze behaviour events of the selected sessions. `session_ends` has
    ``session_pseudonym`` and ``session_end_us``, the end of each selected session's last
    step; trials of other sessions are dropped.
    """
    kind = F.col("kind")
    time = F.col("t_session_us")
    label = F.col("label")

    def first_time(name: str) -> Column:
        return F.min(F.when(kind == name, time))

    per_trial = (
        events.where(F.col("trial_id").isNotNull())
        .groupBy("session_pseudonym", "trial_id")
        .agg(
            first_time("trial_start").alias("trial_start_us"),
            F.min(time).alias("first_event_us"),
            first_time("target_on").alias("target_on_us"),
            first_time("go_cue").alias("go_cue_us"),
            first_time("trial_end").alias("trial_end_us"),
            first_time("release").alias("release_us"),
            F.min(F.when(kind == "class_label", label)).alias("trial_class"),
            F.count_distinct(F.when(kind == "class_label", label)).alias("class_count"),
            F.min(F.when(kind == "outcome", label)).alias("trial_outcome"),
            F.count_distinct(F.when(kind == "outcome", label)).alias("outcome_count"),
        )
        .join(session_ends, on="session_pseudonym", how="inner")
        .withColumn("start_us", F.coalesce("trial_start_us", "first_event_us"))
    )

    in_session = Window.partitionBy("session_pseudonym")
    in_order = in_session.orderBy("start_us", "trial_id")
    trials = (
        per_trial.withColumn("next_start_us", F.lead("start_us").over(in_order))
        .withColumn(
            "session_reports_outcomes",
            F.max(F.col("trial_outcome").isNotNull()).over(in_session),
        )
        .withColumn(
            "end_us",
            F.greatest(
                F.coalesce("trial_end_us", "next_start_us", "session_end_us"), F.col("start_us")
            ),
        )
    )
    return _movement_phase(trials).withColumn("exclusion_reason", _exclusion_reason())


def _movement_phase(trials: DataFrame) -> DataFrame:
    """Add the movement start (with its source) and end, clamped into the trial interval."""
    start = F.col("start_us")
    end = F.col("end_us")
    release = F.col("release_us")
    raw_start = F.coalesce("go_cue_us", "target_on_us", "start_us")
    source = (
        F.when(F.col("go_cue_us").isNotNull(), "go_cue")
        .when(F.col("target_on_us").isNotNull(), "target_on")
        .otherwise("trial_start")
    )
    movement_start = F.least(F.greatest(raw_start, start), end)
    with_start = trials.withColumn("movement_start_us", movement_start).withColumn(
        "movement_start_source", source
    )
    release_inside = (
        release.isNotNull() & (release >= F.col("movement_start_us")) & (release <= end)
    )
    return with_start.withColumn("movement_end_us", F.when(release_inside, release).otherwise(end))


def _exclusion_reason() -> Column:
    outcome = F.col("trial_outcome")
    return (
        F.when(F.col("outcome_count") > 1, F.lit("conflicting_outcomes"))
        .when(outcome.isNotNull() & (outcome != REWARD), F.concat(F.lit("outcome_"), outcome))
        .when(F.col("trial_end_us").isNull(), F.lit("no_trial_end"))
        .when(outcome.isNull() & F.col("session_reports_outcomes"), F.lit("no_outcome"))
        .when(F.col("class_count") > 1, F.lit("conflicting_class_labels"))
        .when(F.col("trial_class").isNull(), F.lit("no_class_label"))
    )


def count_overlapping_trials(trials: DataFrame) -> int:
    """Return how many trials start before the previous trial of their session ends."""
    in_order = Window.partitionBy("session_pseudonym").orderBy("start_us", "trial_id")
    previous_end = F.lag("end_us").over(in_order)
    flagged = trials.withColumn(
        "overlaps", F.coalesce(F.col("start_us") < previous_end, F.lit(False))
    )
    return flagged.where("overlaps").count()


def label_steps(
    steps: DataFrame, trials: DataFrame, *, step_us: int, resolve_overlaps: bool
) -> DataFrame:
    """Join each step with the trial that contains its start and add the label columns.

    `steps` need ``session_pseudonym``, ``step_index`` and ``t_step_us`` aligned to
    `step_us`. With `resolve_overlaps`, a step inside several trials keeps only the trial that
    started last; without it the caller guarantees that trials do not overlap.
    """
    trial_side = _bucketed(trials)

    time = F.col("t_step_us")
    joined = steps.withColumn("step_bucket", floor_div("t_step_us", JOIN_BUCKET_US)).join(
        F.broadcast(trial_side),
        on=(F.col("session_pseudonym") == F.col("trial_session"))
        & (F.col("step_bucket") == F.col("trial_bucket"))
        & (time >= F.col("start_us"))
        & (time < F.col("end_us")),
        how="left",
    )
    if resolve_overlaps:
        latest_first = Window.partitionBy("session_pseudonym", "step_index").orderBy(
            F.col("start_us").desc_nulls_last(), F.col("trial_id").desc_nulls_last()
        )
        joined = (
            joined.withColumn("trial_rank", F.row_number().over(latest_first))
            .where(F.col("trial_rank") == 1)
            .drop("trial_rank")
        )

    in_trial = F.col("trial_id").isNotNull()
    label = (
        F.when(~in_trial, F.lit(REST))
        .when(time < F.col("movement_start_us"), F.lit(PRE_MOVEMENT))
        .when(time < F.col("movement_end_us"), F.coalesce("trial_class", F.lit(UNKNOWN_CLASS)))
        .otherwise(F.lit(RELEASE))
    )
    steps_from_go = F.when(
        in_trial,
        (floor_div("t_step_us", step_us) - ceil_div("movement_start_us", step_us)).cast("int"),
    )
    labelled = (
        joined.withColumn("label", label)
        .withColumn("steps_from_go", steps_from_go)
        .withColumn("excluded", F.col("exclusion_reason").isNotNull())
    )
    return labelled.drop(
        "step_bucket",
        "trial_session",
        "trial_bucket",
        "start_us",
        "end_us",
        "movement_start_us",
        "movement_end_us",
    )


def _bucketed(trials: DataFrame) -> DataFrame:
    """Return the trials repeated once per join bucket that their interval overlaps."""
    last_us = F.greatest(F.col("end_us") - 1, F.col("start_us"))
    return trials.withColumn("last_us", last_us).select(
        F.col("session_pseudonym").alias("trial_session"),
        F.explode(
            F.sequence(floor_div("start_us", JOIN_BUCKET_US), floor_div("last_us", JOIN_BUCKET_US))
        ).alias("trial_bucket"),
        "trial_id",
        "start_us",
        "end_us",
        "movement_start_us",
        "movement_end_us",
        "movement_start_source",
        "trial_class",
        "trial_outcome",
        "exclusion_reason",
    )
