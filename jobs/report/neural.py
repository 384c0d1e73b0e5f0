"""Spike data for the report: one stretch of a session, and mean firing rates per channel and day.

Both read ``silver.spike_steps`` (and ``bronze.behavior_events`` for the markers) with delta-rs
and pyarrow. They read one partition (subject and session day) at a time and only the columns
they need, so memory stays bounded by one partition's batches.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from jobs.catalog import Lake, LakeTable
from jobs.report.sections import Missing

STRETCH_S: Final = 15.0  # seconds of a session that the raster shows, about three limblab trials
LEAD_S: Final = 1.0  # seconds shown before the first trial start

FILL_LAKE: Final = "make run"


@dataclass(frozen=True)
class Marker:
    """A behaviour event inside the stretch."""

    t_s: float  # seconds since session start
    kind: str  # trial_start, go_cue, class_label, outcome, trial_end, ...
    label: str | None  # class or outcome label, None for other kinds


@dataclass(frozen=True)
class SessionStretch:
    """Spike counts of consecutive steps of one session, with the behaviour events among them."""

    subject: str
    session: str
    session_day: int
    step_ms: int
    t_s: npt.NDArray[np.float64]  # (steps,): start of each step, seconds since session start
    counts: npt.NDArray[np.int32]  # (steps, channels)
    gap: npt.NDArray[np.bool_]  # (steps,): a bin of the step is missing
    markers: list[Marker]


@dataclass(frozen=True)
class SubjectRates:
    """Mean firing rate of every channel on every session day of one subject."""

    subject: str
    days: list[int]  # shifted session days, ascending
    rate_hz: npt.NDArray[np.float64]  # (channels, days); NaN where a day has fewer channels
    steps: list[int]  # gap-free steps averaged on each day


def spike_steps(lake: Lake) -> LakeTable:
    """Return ``silver.spike_steps`` of `lake`."""
    return lake.table("silver", "spike_steps")


def behavior_events(lake: Lake) -> LakeTable:
    """Return ``bronze.behavior_events`` of `lake`."""
    return lake.table("bronze", "behavior_events")


def session_partitions(lake: Lake, table: LakeTable) -> list[tuple[str, int]]:
    """Return the (subject pseudonym, session day) partitions of `table`, sorted."""
    partitions = lake.open(table).partitions()
    return sorted({(p["subject_pseudonym"], int(p["session_day"])) for p in partitions})


def _partition_dataset(lake: Lake, table: LakeTable, subject: str, session_day: int) -> ds.Dataset:
    """Return a dataset of the files of one partition only."""
    predicate = [("subject_pseudonym", "=", subject), ("session_day", "=", str(session_day))]
    return lake.open(table).to_pyarrow_dataset(file_pruning_predicate=predicate)


# ---------------------------------------------------------------------------------------------
# Raster


def load_stretch(
    lake: Lake,
    *,
    subject: str | None = None,
    session_day: int | None = None,
    stretch_s: float = STRETCH_S,
) -> SessionStretch | Missing:
    """Read `stretch_s` seconds of one session's steps and the behaviour events among them.

    Without a choice, the subject is the one with the most session days and the day its
    first. The session is the one of that day with the most trials. The stretch starts
    `LEAD_S` before its first trial start, or at its first step when it has no trials.
    """
    steps_table = spike_steps(lake)
    if not lake.is_table(steps_table.uri):
        return Missing(f"no table {steps_table.name} in the lake", FILL_LAKE)
    partitions = session_partitions(lake, steps_table)
    if not partitions:
        return Missing(f"{steps_table.name} has no rows", FILL_LAKE)
    subject, session_day = _choose_partition(partitions, subject, session_day)

    steps = _partition_dataset(lake, steps_table, subject, session_day)
    sessions = set(steps.to_table(columns=["session_pseudonym"]).column(0).unique().to_pylist())
    events = _partition_events(lake, subject, session_day)
    session = _choose_session(sessions, events)

    of_session = events.filter(pc.equal(events["session_pseudonym"], session))
    starts = of_session.filter(pc.equal(of_session["kind"], "trial_start"))["t_session_us"]
    if len(starts):
        start_us = max(0, int(pc.min(starts).as_py()) - round(LEAD_S * 1e6))
    else:
        start_us = _first_step_us(steps, session)
    end_us = start_us + round(stretch_s * 1e6)

    rows = steps.to_table(
        columns=["t_step_us", "step_ms", "counts", "gap"],
        filter=(ds.field("session_pseudonym") == session)
        & (ds.field("t_step_us") >= start_us)
        & (ds.field("t_step_us") < end_us),
    ).sort_by("t_step_us")
    counts = _counts_matrix(rows.column("counts"))
    step_ms = int(pc.min(rows["step_ms"]).as_py()) if rows.num_rows else 0
    return SessionStretch(
        subject=subject,
        session=session,
        session_day=session_day,
        step_ms=step_ms,
        t_s=rows.column("t_step_us").to_numpy().astype(np.float64) / 1e6,
        counts=counts,
        gap=rows.column("gap").to_numpy(zero_copy_only=False).astype(bool),
        markers=_markers(of_session, start_us, end_us),
    )


def _choose_partition(
    partitions: list[tuple[str, int]], subject: str | None, session_day: int | None
) -> tuple[str, int]:
    days_of: dict[str, list[int]] = {}
    for name, day in partitions:
        days_of.setdefault(name, []).append(day)
    if subject is None:
        # Most days first; the name breaks ties so the choice does not depend on file order.
        subject = min(days_of, key=lambda name: (-len(days_of[name]), name))
    elif subject not in days_of:
        raise ValueError(
            f"subject {subject!r} has no rows in silver.spike_steps; subjects: "
            f"{', '.join(sorted(days_of))}"
        )
    if session_day is None:
        session_day = min(days_of[subject])
    elif session_day not in days_of[subject]:
        raise ValueError(
            f"subject {subject} has no rows on session day {session_day} in "
            f"silver.spike_steps; its days: {', '.join(map(str, days_of[subject]))}"
        )
    return subject, session_day


def _partition_events(lake: Lake, subject: str, session_day: int) -> pa.Table:
    columns = ["session_pseudonym", "t_session_us", "kind", "label"]
    table = behavior_events(lake)
    if not lake.is_table(table.uri):
        return pa.table(
            {
                "session_pseudonym": pa.array([], pa.string()),
                "t_session_us": pa.array([], pa.int64()),
                "kind": pa.array([], pa.string()),
                "label": pa.array([], pa.string()),
            }
        )
    dataset = _partition_dataset(lake, table, subject, session_day)
    return dataset.to_table(columns=columns).sort_by("t_session_us")


def _choose_session(sessions: set[str], events: pa.Table) -> str:
    trials: Counter[str] = Counter()
    for name, kind in zip(
        events["session_pseudonym"].to_pylist(), events["kind"].to_pylist(), strict=True
    ):
        if kind == "trial_start" and name in sessions:
            trials[name] += 1
    if trials:
        return min(trials, key=lambda name: (-trials[name], name))
    return min(sessions)


def _first_step_us(steps: ds.Dataset, session: str) -> int:
    times = steps.to_table(
        columns=["t_step_us"], filter=ds.field("session_pseudonym") == session
    ).column(0)
    return int(pc.min(times).as_py())


def _markers(events: pa.Table, start_us: int, end_us: int) -> list[Marker]:
    markers = []
    for row in events.to_pylist():
        t_us = row["t_session_us"]
        if start_us <= t_us < end_us:
            markers.append(Marker(t_us / 1e6, row["kind"], row["label"]))
    return markers


def _counts_matrix(column: pa.ChunkedArray | pa.Array) -> npt.NDArray[np.int32]:
    """Return a list<int> column of equal-length lists as a (rows, channels) array."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(array) == 0:
        return np.zeros((0, 0), dtype=np.int32)
    lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
    if lengths.min() != lengths.max():
        raise ValueError(
            f"spike steps of one session have {lengths.min()} to {lengths.max()} channels: "
            f"expected one channel count per session"
        )
    flat: npt.NDArray[np.int32] = pc.list_flatten(array).to_numpy(zero_copy_only=False)
    return flat.astype(np.int32).reshape(len(array), int(lengths[0]))


# ---------------------------------------------------------------------------------------------
# Drift


def load_rates(lake: Lake) -> list[SubjectRates] | Missing:
    """Return each subject's mean rate per channel and session day, over gap-free steps."""
    table = spike_steps(lake)
    if not lake.is_table(table.uri):
        return Missing(f"no table {table.name} in the lake", FILL_LAKE)
    per_subject: dict[str, dict[int, tuple[npt.NDArray[np.float64], int]]] = {}
    for subject, day in session_partitions(lake, table):
        rates, steps = _mean_rates(_partition_dataset(lake, table, subject, day))
        if steps:
            per_subject.setdefault(subject, {})[day] = (rates, steps)
    if not per_subject:
        return Missing(f"{table.name} has no gap-free steps", FILL_LAKE)
    return [_subject_rates(name, days) for name, days in sorted(per_subject.items())]


def _mean_rates(dataset: ds.Dataset) -> tuple[npt.NDArray[np.float64], int]:
    """Return the mean rate in Hz per channel over a partition's gap-free steps, and the steps."""
    total = np.zeros(0, dtype=np.float64)
    steps = 0
    for counts, step_s in _gap_free_batches(dataset):  # (rows, channels), (rows,)
        rates = (counts / step_s[:, None]).sum(axis=0)  # (channels,): summed rates in Hz
        if rates.size > total.size:
            total = np.pad(total, (0, rates.size - total.size))
        total[: rates.size] += rates
        steps += counts.shape[0]
    return (total / steps if steps else total), steps


def _gap_free_batches(
    dataset: ds.Dataset,
) -> Iterator[tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]]:
    """Yield (counts, step width in s) of gap-free steps, grouped by channel count."""
    for batch in dataset.to_batches(columns=["counts", "step_ms"], filter=~ds.field("gap")):
        if batch.num_rows == 0:
            continue
        counts = batch.column("counts")
        step_s = batch.column("step_ms").to_numpy(zero_copy_only=False) / 1000.0
        lengths = pc.list_value_length(counts).to_numpy(zero_copy_only=False)
        for length in np.unique(lengths):
            rows = np.flatnonzero(lengths == length)
            part: Any = counts.take(pa.array(rows))
            flat = pc.list_flatten(part).to_numpy(zero_copy_only=False)
            yield flat.reshape(rows.size, int(length)).astype(np.float64), step_s[rows]


def _subject_rates(
    subject: str, days: dict[int, tuple[npt.NDArray[np.float64], int]]
) -> SubjectRates:
    ordered = sorted(days)
    channels = max(days[day][0].size for day in ordered)
    matrix = np.full((channels, len(ordered)), np.nan)
    for column, day in enumerate(ordered):
        rates = days[day][0]
        matrix[: rates.size, column] = rates
    return SubjectRates(subject, ordered, matrix, [days[day][1] for day in ordered])
