"""Matplotlib figures of the report, rendered to PNG bytes.

Each function takes the values of one loader (`jobs.report.neural`, `pipeline`, `decoders`)
and returns `Figure` values with a title, labelled axes and a caption. Figures are built with
`matplotlib.figure.Figure` on the Agg canvas, never through `pyplot`, so no global figure
state is kept between reports.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import blended_transform_factory

from jobs.report.decoders import ClassBalance, ModelRun, NextDayEvaluation
from jobs.report.neural import Marker, SessionStretch, SubjectRates
from jobs.report.pipeline import Commit
from jobs.report.sections import Figure, short_pseudonym

DPI: Final = 100
COLORS: Final = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2")
MARKER_CLUSTER_S: Final = 0.1  # markers closer than this share one text label
SPLIT_COLORS: Final = {"train": "#1f77b4", "validation": "#ff7f0e", "test": "#2ca02c"}
SETTING_STYLES: Final = {
    "pooled": ("-", "no adaptation (pooled)"),
    "zscore": ("--", "label-free: per-day z-scoring"),
    "read_in": ("-.", "label-free: read-in alignment"),
    "supervised": (":", "supervised within day (reference)"),
}
MAX_BUCKETS: Final = 150  # most bins of the throughput plot
UPRIGHT_TICKS: Final = 4  # test days whose tick labels still fit side by side
COMMITS_PER_BUCKET: Final = 4  # a bin spans about this many commit intervals of a table


def to_png(figure: MplFigure) -> bytes:
    """Render a figure to PNG bytes."""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# 1. Raster


def raster_figure(stretch: SessionStretch) -> Figure:
    """Plot spike counts of a session stretch as a channel-by-time heat map with its markers."""
    figure = MplFigure(figsize=(12, 5.5))
    axes = figure.subplots()
    step_s = stretch.step_ms / 1000.0
    counts = stretch.counts.T  # (channels, steps)
    start, end = stretch.t_s[0], stretch.t_s[-1] + step_s
    image = axes.imshow(
        counts,
        aspect="auto",
        interpolation="nearest",
        cmap="Greys",
        extent=(start, end, counts.shape[0] + 0.5, 0.5),
        vmin=0,
        vmax=max(1.0, float(np.percentile(counts, 99))),
    )
    colorbar = figure.colorbar(image, ax=axes, pad=0.01)
    colorbar.set_label(f"spike count per {stretch.step_ms} ms step")
    for t_s in stretch.t_s[stretch.gap]:
        axes.axvspan(t_s, t_s + step_s, color="#ffd54f", alpha=0.5, lw=0)
    label_height = _draw_markers(axes, stretch.markers)

    axes.set_xlim(start, end)
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("time since session start (s)")
    axes.set_ylabel("channel")
    title = (
        f"Spike counts and behaviour events, session {short_pseudonym(stretch.session)} "
        f"(subject {short_pseudonym(stretch.subject)}, day {stretch.session_day})"
    )
    axes.set_title(title, pad=label_height)
    gaps = int(stretch.gap.sum())
    caption = (
        f"silver.spike_steps: {counts.shape[0]} channels × {counts.shape[1]} steps of "
        f"{stretch.step_ms} ms ({end - start:.1f} s) of session {stretch.session}; vertical "
        f"lines are bronze.behavior_events markers"
        + (f"; {gaps} steps with missing bins are shaded yellow" if gaps else "")
    )
    return Figure("raster", title, caption, to_png(figure))


def _draw_markers(axes: Axes, markers: Sequence[Marker]) -> float:
    """Draw one line and one rotated label per cluster of close markers.

    Markers of one cluster (a go cue and its class label, a trial end and its outcome) share
    a colour, which the legend names by their kinds. Returns the label height in points.
    """
    kind_sets: list[str] = []
    transform = blended_transform_factory(axes.transData, axes.transAxes)
    longest = 0
    for cluster in _clusters(markers):
        kinds = " + ".join(dict.fromkeys(marker.kind for marker in cluster))
        if kinds not in kind_sets:
            kind_sets.append(kinds)
        color = COLORS[kind_sets.index(kinds) % len(COLORS)]
        axes.axvline(cluster[0].t_s, color=color, lw=1.5, alpha=0.9)
        labels = [marker.label for marker in cluster if marker.label]
        text = ", ".join(dict.fromkeys(labels)) if labels else kinds
        longest = max(longest, len(text))
        axes.text(
            cluster[0].t_s,
            1.01,
            text,
            transform=transform,
            rotation=90,
            ha="center",
            va="bottom",
            fontsize=8,
            color=color,
        )
    if kind_sets:
        handles = [
            Line2D([], [], color=COLORS[index % len(COLORS)], lw=2, label=kinds)
            for index, kinds in enumerate(kind_sets)
        ]
        axes.legend(
            handles=handles,
            title="behaviour events",
            loc="upper left",
            bbox_to_anchor=(1.09, 1.0),
            fontsize=8,
            title_fontsize=8,
        )
    return longest * 5.0 + 10  # about 5 points per character at font size 8


def _clusters(markers: Sequence[Marker]) -> list[list[Marker]]:
    clusters: list[list[Marker]] = []
    for marker in sorted(markers, key=lambda item: item.t_s):
        if clusters and marker.t_s - clusters[-1][0].t_s < MARKER_CLUSTER_S:
            clusters[-1].append(marker)
        else:
            clusters.append([marker])
    return clusters


# ---------------------------------------------------------------------------------------------
# 2. Drift


def drift_figure(rates: SubjectRates) -> Figure:
    """Plot one subject's mean rate per channel (rows) and session day (columns)."""
    channels, n_days = rates.rate_hz.shape
    figure = MplFigure(figsize=(max(5.0, 1.0 + 0.5 * n_days), 6))
    axes = figure.subplots()
    finite = rates.rate_hz[np.isfinite(rates.rate_hz)]
    image = axes.imshow(
        rates.rate_hz,
        aspect="auto",
        interpolation="nearest",
        cmap="viridis",
        extent=(-0.5, n_days - 0.5, channels + 0.5, 0.5),
        vmin=0,
        vmax=float(np.percentile(finite, 99)) if finite.size else 1.0,
    )
    figure.colorbar(image, ax=axes, pad=0.02).set_label("mean firing rate (Hz)")
    axes.set_xticks(range(n_days), [str(day) for day in rates.days], rotation=90)
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("session day (shifted day number)")
    axes.set_ylabel("channel")
    title = f"Firing rate per channel and day, subject {short_pseudonym(rates.subject)}"
    axes.set_title(title)
    caption = (
        f"silver.spike_steps: mean spike count per second of gap-free steps, {channels} "
        f"channels × {n_days} session days of subject {rates.subject} "
        f"({sum(rates.steps)} steps); colours above the 99th percentile are clipped"
    )
    return Figure(f"drift-{rates.subject}", title, caption, to_png(figure))


# ---------------------------------------------------------------------------------------------
# 3. Class balance


def balance_figure(balance: ClassBalance) -> Figure:
    """Plot rows per class of one dataset, stacked by split."""
    figure = MplFigure(figsize=(max(6.0, 0.7 * len(balance.classes) + 2), 4.5))
    axes = figure.subplots()
    positions = np.arange(len(balance.classes))
    bottom = np.zeros(len(balance.classes))
    for index, (split, counts) in enumerate(balance.rows.items()):
        heights = np.array([counts.get(name, 0) for name in balance.classes], dtype=np.float64)
        color = SPLIT_COLORS.get(split, COLORS[index % len(COLORS)])
        axes.bar(positions, heights, bottom=bottom, color=color, label=split, width=0.7)
        bottom += heights
    axes.set_xticks(positions, balance.classes, rotation=45, ha="right")
    axes.set_xlabel("class")
    axes.set_ylabel("rows (model steps)")
    axes.legend(title="split", fontsize=8, title_fontsize=8)
    axes.grid(axis="y", alpha=0.3)
    title = f"Class balance of dataset {balance.name}"
    axes.set_title(title)
    total = int(bottom.sum())
    caption = (
        f"gold manifest of {balance.name}: {total} rows by label and split, including "
        f"{balance.excluded} rows of excluded trials"
    )
    return Figure(f"balance-{balance.name}", title, caption, to_png(figure))


# ---------------------------------------------------------------------------------------------
# 4. Training curves


def curves_figure(runs: Sequence[ModelRun]) -> Figure:
    """Plot loss and validation accuracy per epoch, one panel per model."""
    columns = min(3, len(runs))
    rows = math.ceil(len(runs) / columns)
    figure = MplFigure(figsize=(5.2 * columns, 3.8 * rows), layout="constrained")
    grid = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    for axes, run in zip(grid, runs, strict=False):
        _curve_panel(axes, run)
    for axes in grid[len(runs) :]:
        axes.set_visible(False)
    handles = [
        Line2D([], [], color=COLORS[0], marker="o", ms=3, label="training loss"),
        Line2D([], [], color=COLORS[1], marker="o", ms=3, label="validation loss"),
        Line2D([], [], color=COLORS[2], marker="s", ms=3, label="validation balanced accuracy"),
        Line2D([], [], color=COLORS[3], marker="s", ms=3, ls="--", label="validation accuracy"),
    ]
    figure.legend(handles=handles, loc="outside lower center", ncols=4, fontsize=8)
    title = "Training curves of the exported models"
    figure.suptitle(title)
    caption = (
        "metrics.history of each models/<version>/config.json: cross-entropy loss on the "
        "training and validation windows (left axis) and validation accuracy (right axis) per "
        "epoch"
    )
    return Figure("training-curves", title, caption, to_png(figure))


def _curve_panel(axes: Axes, run: ModelRun) -> None:
    epochs = [record["epoch"] for record in run.history]
    axes.plot(epochs, _values(run.history, "train_loss"), color=COLORS[0], marker="o", ms=3)
    axes.plot(epochs, _values(run.history, "val_loss"), color=COLORS[1], marker="o", ms=3)
    axes.set_xlabel("epoch")
    axes.set_ylabel("cross-entropy loss (nats)")
    axes.set_title(f"{run.version}", fontsize=9)
    if epochs:
        axes.set_xticks(_integer_ticks(max(epochs)))

    accuracy_axes = axes.twinx()
    accuracy_axes.plot(
        epochs, _values(run.history, "val_balanced_accuracy"), color=COLORS[2], marker="s", ms=3
    )
    accuracy_axes.plot(
        epochs, _values(run.history, "val_accuracy"), color=COLORS[3], marker="s", ms=3, ls="--"
    )
    accuracy_axes.set_ylim(0, 1)
    accuracy_axes.set_ylabel("validation accuracy (fraction)")
    axes.grid(alpha=0.3)


def _values(history: Sequence[dict[str, Any]], key: str) -> list[float]:
    return [math.nan if record.get(key) is None else float(record[key]) for record in history]


def _integer_ticks(last: int) -> list[int]:
    step = max(1, math.ceil(last / 10))
    return list(range(1, last + 1, step))


# ---------------------------------------------------------------------------------------------
# 5. Confusion matrices


def confusion_figure(run: ModelRun) -> Figure:
    """Plot one model's test confusion matrix, coloured by the share of each true class."""
    matrix = np.asarray(run.confusion, dtype=np.float64)  # (true, predicted)
    n_classes = matrix.shape[0]
    classes = run.classes if len(run.classes) == n_classes else [str(i) for i in range(n_classes)]
    support = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, support, out=np.zeros_like(matrix), where=support > 0)

    size = max(5.0, 0.55 * n_classes + 2.5)
    figure = MplFigure(figsize=(size + 1, size))
    axes = figure.subplots()
    image = axes.imshow(share, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, pad=0.02).set_label("share of the true class's steps")
    font = 8 if n_classes <= 10 else 6
    for true in range(n_classes):
        for predicted in range(n_classes):
            value = share[true, predicted]
            axes.text(
                predicted,
                true,
                f"{100 * value:.0f}",
                ha="center",
                va="center",
                fontsize=font,
                color="white" if value > 0.5 else "black",
            )
    axes.set_xticks(range(n_classes), classes, rotation=45, ha="right")
    axes.set_yticks(range(n_classes), classes)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    title = f"Confusion matrix of {run.version} (test split)"
    axes.set_title(title, fontsize=10)
    scores = []
    if run.balanced_accuracy is not None:
        scores.append(f"balanced accuracy {run.balanced_accuracy:.3f}")
    if run.trial_accuracy is not None:
        scores.append(f"trial accuracy {run.trial_accuracy:.3f}")
    caption = (
        f"metrics.confusion_matrix of {run.version} ({run.architecture} on dataset "
        f"{run.dataset}): {int(matrix.sum())} test steps, numbers are the percentage of each "
        f"row" + (f"; {', '.join(scores)}" if scores else "")
    )
    return Figure(f"confusion-{run.version}", title, caption, to_png(figure))


# ---------------------------------------------------------------------------------------------
# 6. Accuracy by days since training


def accuracy_figure(
    evaluation: NextDayEvaluation | None, runs: Sequence[ModelRun]
) -> Figure | None:
    """Plot next-day accuracies per test day and each model's accuracy by days since training.

    Returns None when neither source has values.
    """
    runs = [run for run in runs if run.trials_by_days]
    panels = int(evaluation is not None) + int(bool(runs))
    if panels == 0:
        return None
    widths = []  # the next-day panel has a point per test day, so it gets twice the width
    if evaluation is not None:
        widths.append(2.0)
    if runs:
        widths.append(1.0)
    figure = MplFigure(figsize=(4.5 * sum(widths) + 3, 5.5), layout="constrained")
    grid = np.atleast_1d(figure.subplots(1, panels, squeeze=False, width_ratios=widths)).ravel()
    parts = []
    if evaluation is not None:
        _next_day_panel(grid[0], evaluation)
        parts.append(
            f"{evaluation.path.name}: trial accuracy of the next-day protocol on "
            f"{evaluation.source} per test day, with and without label-free adaptation"
        )
    if runs:
        _model_days_panel(grid[-1], runs)
        parts.append("metrics.by_days_since_training.trials of each exported model's test split")
    title = "Accuracy by days since training"
    figure.suptitle(title)
    return Figure("accuracy-by-days", title, "; ".join(parts), to_png(figure))


def _next_day_panel(axes: Axes, evaluation: NextDayEvaluation) -> None:
    decoders: list[str] = []
    for day in evaluation.days:
        decoders += [name for name in day.accuracy if name not in decoders]
    present = _plot_settings(axes, evaluation, decoders)

    if evaluation.classes:
        chance = 1 / len(evaluation.classes)
        axes.axhline(chance, color="#7f7f7f", lw=1, ls=":")
        axes.text(
            len(evaluation.days) - 1,
            chance,
            "chance",
            fontsize=8,
            va="bottom",
            ha="right",
            color="#7f7f7f",
        )

    upright = len(evaluation.days) <= UPRIGHT_TICKS
    separator = "\n" if upright else " "
    labels = [
        f"{day.name}{separator}(+{day.days_since_training} d, {day.trials} trials)"
        for day in evaluation.days
    ]
    axes.set_xticks(range(len(labels)), labels, fontsize=8, rotation=0 if upright else 90)
    axes.set_xlabel("test day (days since the last training day, rewarded trials)")
    axes.set_ylabel("trial accuracy (fraction)")
    axes.set_ylim(0, 1)
    axes.set_title("next-day protocol", fontsize=10)
    axes.grid(alpha=0.3)
    _next_day_legend(axes, decoders, present)


def _plot_settings(axes: Axes, evaluation: NextDayEvaluation, decoders: Sequence[str]) -> list[str]:
    """Draw one line per decoder (colour) and setting (line style); return the settings drawn."""
    present: list[str] = []
    for index, decoder in enumerate(decoders):
        color = COLORS[index % len(COLORS)]
        for setting, (style, _label) in SETTING_STYLES.items():
            values = [
                day.accuracy.get(decoder, {}).get(setting, math.nan) for day in evaluation.days
            ]
            if all(math.isnan(value) for value in values):
                continue
            if setting not in present:
                present.append(setting)
            alpha = 0.55 if setting == "supervised" else 1.0
            axes.plot(
                range(len(values)), values, ls=style, color=color, marker="o", ms=4, alpha=alpha
            )
    return present


def _next_day_legend(axes: Axes, decoders: Sequence[str], settings: Sequence[str]) -> None:
    decoder_handles = [
        Line2D([], [], color=COLORS[index % len(COLORS)], lw=2, label=name)
        for index, name in enumerate(decoders)
    ]
    setting_handles = [
        Line2D([], [], color="black", ls=style, label=label)
        for setting, (style, label) in SETTING_STYLES.items()
        if setting in settings
    ]
    axes.figure.legend(
        handles=decoder_handles + setting_handles,
        fontsize=8,
        loc="outside right upper",
        title="next-day protocol",
        title_fontsize=8,
    )


def _model_days_panel(axes: Axes, runs: Sequence[ModelRun]) -> None:
    for index, run in enumerate(runs):
        days = sorted(run.trials_by_days)
        axes.plot(
            days,
            [run.trials_by_days[day][1] for day in days],
            marker="o",
            color=COLORS[index % len(COLORS)],
            label=run.version,
        )
    axes.set_xlabel("days since the last training day (d)")
    axes.set_ylabel("trial accuracy on the test split (fraction)")
    axes.set_ylim(0, 1)
    all_days = sorted({day for run in runs for day in run.trials_by_days})
    axes.set_xticks(all_days)
    axes.set_title("exported models", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="lower left", title="exported model", title_fontsize=7)


# ---------------------------------------------------------------------------------------------
# 7. Ingestion


def ingestion_figure(commits: dict[str, list[Commit]]) -> Figure:
    """Plot rows committed per second and the delay from batch build to commit, per table."""
    times = [commit.committed_at for table in commits.values() for commit in table]
    origin = min(times)
    span_s = (max(times) - origin).total_seconds()
    bucket_s = _bucket_s(commits, span_s)

    figure = MplFigure(figsize=(11, 7), layout="constrained")
    rate_axes, delay_axes = figure.subplots(2, 1, sharex=True)
    summaries = []
    clipped = 0
    for index, (table, table_commits) in enumerate(sorted(commits.items())):
        color = COLORS[index % len(COLORS)]
        edges, rates = throughput(table_commits, origin, bucket_s, span_s)
        rate_axes.stairs(rates, edges, color=color, label=table, lw=1.5)
        delays = commit_delays_ms(table_commits)
        clipped += int(np.sum(delays < 1))
        # The log axis cannot show 0 ms: ingested_at statistics are rounded to milliseconds.
        delay_axes.scatter(
            _delay_offsets(table_commits, origin),
            np.maximum(delays, 1),
            s=12,
            color=color,
            label=table,
        )
        if delays.size:
            summaries.append(
                f"{table} p50 {np.percentile(delays, 50):.0f} ms, "
                f"p99 {np.percentile(delays, 99):.0f} ms"
            )
    rate_axes.set_ylabel(f"rows per second ({bucket_s} s bins)")
    rate_axes.set_title("rows committed to bronze tables per second", fontsize=10)
    rate_axes.legend(fontsize=8)
    rate_axes.grid(alpha=0.3)
    delay_axes.set_yscale("log")
    delay_axes.set_ylabel("commit time − ingested_at (ms)")
    delay_axes.set_xlabel(f"time since {origin:%Y-%m-%d %H:%M:%S} UTC (s)")
    delay_axes.set_title("delay from batch build to Delta commit, one dot per commit", fontsize=10)
    delay_axes.grid(alpha=0.3, which="both")
    title = "Ingestion throughput and commit delay"
    figure.suptitle(title)
    total = sum(len(table) for table in commits.values())
    caption = (
        f"Delta logs of the bronze tables: {total} commit{'s' if total != 1 else ''} that "
        f"added rows, by commit time; "
        f"delay is the commit timestamp minus the batch's ingested_at"
        + (f" ({'; '.join(summaries)})" if summaries else "")
        + (f"; {clipped} delays under 1 ms are drawn at 1 ms" if clipped else "")
    )
    return Figure("ingestion", title, caption, to_png(figure))


def _bucket_s(commits: dict[str, list[Commit]], span_s: float) -> int:
    """Return a bin width that contains several commits, so the rate does not flicker per commit."""
    intervals = [
        (later.committed_at - earlier.committed_at).total_seconds()
        for table in commits.values()
        for earlier, later in zip(table, table[1:], strict=False)
    ]
    typical = float(np.median(intervals)) if intervals else 1.0
    return max(1, math.ceil(span_s / MAX_BUCKETS), math.ceil(COMMITS_PER_BUCKET * typical))


def throughput(
    commits: Sequence[Commit], origin: datetime, bucket_s: int, span_s: float
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Return bin edges (s since `origin`) and rows per second committed in each bin."""
    n_buckets = int(span_s // bucket_s) + 1  # the last commit lies at span_s
    edges = np.arange(n_buckets + 1, dtype=np.float64) * bucket_s
    rows = np.zeros(n_buckets, dtype=np.float64)
    for commit in commits:
        index = min(int(_seconds(commit.committed_at, origin) // bucket_s), n_buckets - 1)
        rows[index] += commit.rows
    return edges, rows / bucket_s


def commit_delays_ms(commits: Sequence[Commit]) -> npt.NDArray[np.float64]:
    """Return commit time minus the oldest ingested_at, in ms, of commits that record it."""
    return np.array(
        [
            (commit.committed_at - commit.oldest_ingested_at).total_seconds() * 1000
            for commit in commits
            if commit.oldest_ingested_at is not None
        ],
        dtype=np.float64,
    )


def _delay_offsets(commits: Sequence[Commit], origin: datetime) -> list[float]:
    return [
        _seconds(commit.committed_at, origin)
        for commit in commits
        if commit.oldest_ingested_at is not None
    ]


def _seconds(moment: datetime, origin: datetime) -> float:
    return (moment - origin).total_seconds()
