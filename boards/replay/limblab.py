"""Reader for binned Utah-array sessions of the Miller lab (Northwestern), MATLAB v5 files.

A file contains one struct, ``binnedData`` (monkey Spike, wrist-force task, 2012) or
``train_data`` (monkey Jango, 2014), with these fields:

- ``spikeratedata`` (bins, channels): threshold crossings per channel as a rate in Hz, so a
  count is rate x bin width. ``spikeguide`` names the channels.
- ``timeframe`` (bins): bin start times in seconds.
- ``trialtable`` (trials, columns): trial start, four target corners, outer target time, go cue
  time, trial end time, result code as an ASCII letter, target id. ``train_data`` adds
  ``trialtablelabels`` with the column names and a ``catch`` column.
- ``meta``: original file name (with the operator's desktop folder), start date-time, duration.

Stored times of -1 mark an event that did not happen. They become no event, and the report
lists each one. Source: Miller lab repositories limblab/deprecated_limblab_analysis and
limblab/bmi on GitHub; no licence is stated, so use for testing only, with attribution.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import scipy.io

from boards.replay.errors import RecordingFormatError
from boards.replay.events import (
    UNDATED_START_TIME,
    ReplayOptions,
    ReplayReport,
    describe_time,
    is_missing_time,
)
from boards.replay.recording import Marker, Recording, SpikeSegment

logger = logging.getLogger(__name__)

KIND: Final = "limblab_binned"
STRUCT_NAMES: Final = ("binnedData", "train_data")

RESULT_LABELS: Final = {
    ord("R"): "reward",
    ord("A"): "abort",
    ord("F"): "fail",
    ord("I"): "incomplete",
}

_MAT_DATETIME = re.compile(
    r"^\s*(\d{1,2})/(\d{1,2})/(\d{4})\s+(\d{1,2}):(\d{1,2}):(\d{1,2})(?:\.(\d{1,6}))?\s*$"
)
_NAME_DATE_MM_DD_YY = re.compile(r"_(\d{2})-(\d{2})-(\d{2})_")
_NAME_DATE_YYYYMMDD = re.compile(r"_(\d{4})(\d{2})(\d{2})_")


@dataclass(frozen=True)
class TrialColumns:
    """Column index of each trial-table field that becomes a behaviour event."""

    start: int
    target_on: int
    go_cue: int
    end: int
    result: int
    target_id: int
    catch: int | None = None

    def width(self) -> int:
        indexes = [self.start, self.target_on, self.go_cue, self.end, self.result, self.target_id]
        if self.catch is not None:
            indexes.append(self.catch)
        return max(indexes) + 1


# Layout of ``binnedData.trialtable`` files, which carry no column labels.
UNLABELLED_COLUMNS: Final = TrialColumns(
    start=0, target_on=5, go_cue=6, end=7, result=8, target_id=9
)


def open_limblab(path: Path | str, options: ReplayOptions) -> Recording:
    """Read a limblab binned session and return it as a recording.

    The source bins (50 ms in the known files) are kept unless ``options.bin_ms`` requests a
    multiple of them. Trailing source bins that do not fill a whole bin are dropped and
    reported. Raises RecordingFormatError when the file lacks the struct or its fields have
    unexpected shapes.
    """
    path = Path(path)
    struct_name, data = _load_struct(path)
    report = ReplayReport(source=path.name, kind=KIND)

    source_bin_ms, first_bin_s = _bin_layout(path, data)
    counts = _spike_counts(path, data, source_bin_ms, report)  # (bins, channels)
    bin_ms, counts = _rebin(path, counts, source_bin_ms, options.bin_ms, report)
    channel_ids = _channel_ids(path, data, counts.shape[1])
    report.read["bins"] = counts.shape[0]
    report.read["spikes"] = int(counts.sum(dtype=np.int64))

    table, columns = _trial_table(path, data)
    markers = _trial_markers(table, columns, report)
    report.read["trials"] = table.shape[0]

    start_time = _start_time(path, data, options, report)
    recording = Recording(
        kind=KIND,
        source=path,
        options=options,
        start_time=start_time,
        metadata=_metadata(path, struct_name, data),
        report=report,
        n_trials=table.shape[0],
        bin_ms=bin_ms,
        channel_ids=channel_ids,
        segments=[SpikeSegment(round(first_bin_s * 1_000_000), counts)],
        markers=markers,
    )
    logger.info("read %s", report.summary())
    return recording


def _load_struct(path: Path) -> tuple[str, Any]:
    try:
        contents = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
    except FileNotFoundError:
        raise
    except (NotImplementedError, ValueError, TypeError, OSError) as exc:
        raise RecordingFormatError(
            path, f"cannot read as a MATLAB v5 file with a limblab struct ({exc})"
        ) from exc
    for name in STRUCT_NAMES:
        if name in contents:
            return name, contents[name]
    found = sorted(key for key in contents if not key.startswith("__"))
    raise RecordingFormatError(
        path, f"missing struct: expected one of {list(STRUCT_NAMES)}, found variables {found}"
    )


def _field(path: Path, data: Any, name: str) -> Any:
    if not hasattr(data, name):
        fields = list(getattr(data, "_fieldnames", []))
        raise RecordingFormatError(path, f"struct has no field {name!r}, its fields are {fields}")
    return getattr(data, name)


def _bin_layout(path: Path, data: Any) -> tuple[int, float]:
    """Return the source bin width in ms and the start of the first bin in seconds."""
    timeframe = np.atleast_1d(np.asarray(_field(path, data, "timeframe"), dtype=np.float64))
    if timeframe.ndim != 1 or timeframe.size < 2:
        raise RecordingFormatError(
            path, f"timeframe must list at least 2 bin start times, got shape {timeframe.shape}"
        )
    bin_s = float(np.median(np.diff(timeframe)))
    bin_ms = round(bin_s * 1000)
    if bin_ms <= 0:
        raise RecordingFormatError(path, f"timeframe must increase, median step is {bin_s} s")

    expected = timeframe[0] + np.arange(timeframe.size) * (bin_ms / 1000)
    worst_s = float(np.max(np.abs(timeframe - expected)))
    if worst_s > bin_ms / 2000:
        raise RecordingFormatError(
            path,
            f"timeframe must be evenly spaced at {bin_ms} ms, but a bin start is {worst_s:.3f} s "
            "away from that grid",
        )
    return bin_ms, float(timeframe[0])


def _spike_counts(
    path: Path, data: Any, bin_ms: int, report: ReplayReport
) -> npt.NDArray[np.int64]:
    """Convert ``spikeratedata`` (Hz) to counts per bin, shape (bins, channels)."""
    n_bins = np.atleast_1d(_field(path, data, "timeframe")).size
    rates = np.asarray(_field(path, data, "spikeratedata"), dtype=np.float64)
    if rates.ndim == 1 and rates.size == n_bins:
        rates = rates[:, np.newaxis]  # squeeze_me dropped the axis of a single channel
    if rates.ndim != 2 or rates.shape[0] != n_bins:
        raise RecordingFormatError(
            path, f"spikeratedata must have shape ({n_bins}, channels), got {rates.shape}"
        )
    if not np.all(np.isfinite(rates)):
        raise RecordingFormatError(
            path, f"spikeratedata has {int(np.sum(~np.isfinite(rates)))} NaN or infinite values"
        )
    if np.any(rates < 0):
        raise RecordingFormatError(path, f"spikeratedata has negative rates, minimum {rates.min()}")

    exact = rates * (bin_ms / 1000)  # (bins, channels) crossings per bin
    counts = np.rint(exact).astype(np.int64)
    deviation = np.abs(exact - counts)
    if float(deviation.max(initial=0.0)) > 1e-3:
        report.notes.append(
            f"{int(np.sum(deviation > 1e-3))} rate values were not whole counts per bin "
            f"(largest deviation {float(deviation.max()):.3f}) and were rounded"
        )
    return counts


def _rebin(
    path: Path,
    counts: npt.NDArray[np.int64],
    source_bin_ms: int,
    bin_ms: int | None,
    report: ReplayReport,
) -> tuple[int, npt.NDArray[np.int64]]:
    if bin_ms is None or bin_ms == source_bin_ms:
        return source_bin_ms, counts
    if bin_ms % source_bin_ms:
        raise ValueError(
            f"{path}: bin_ms must be a multiple of the file's {source_bin_ms} ms bins, got {bin_ms}"
        )

    factor = bin_ms // source_bin_ms
    n_bins = counts.shape[0] // factor
    leftover = counts[n_bins * factor :]
    if leftover.shape[0]:
        report.skip(
            "trailing source bins shorter than one bin",
            f"last {leftover.shape[0]} source bins ({leftover.shape[0] * source_bin_ms} ms, "
            f"{int(leftover.sum())} spikes) do not fill a {bin_ms} ms bin and were dropped",
        )
    rebinned = counts[: n_bins * factor].reshape(n_bins, factor, counts.shape[1]).sum(axis=1)
    return bin_ms, rebinned


def _channel_ids(path: Path, data: Any, n_channels: int) -> list[str] | None:
    if not hasattr(data, "spikeguide"):
        return None
    guide = [str(name).strip() for name in np.atleast_1d(data.spikeguide)]
    if len(guide) != n_channels:
        raise RecordingFormatError(
            path, f"spikeguide names {len(guide)} channels but spikeratedata has {n_channels}"
        )
    return guide


def _trial_table(path: Path, data: Any) -> tuple[npt.NDArray[np.float64], TrialColumns]:
    """Return the trial table as (trials, columns) and the column of each field."""
    raw = np.asarray(_field(path, data, "trialtable"), dtype=np.float64)
    if hasattr(data, "trialtablelabels"):
        labels = [str(label) for label in np.atleast_1d(data.trialtablelabels)]
        columns = columns_from_labels(path, labels)
    else:
        columns = UNLABELLED_COLUMNS

    if raw.size == 0:
        return np.empty((0, columns.width())), columns
    table = raw[np.newaxis, :] if raw.ndim == 1 else raw  # squeeze_me dropped a single row
    if table.ndim != 2 or table.shape[1] < columns.width():
        raise RecordingFormatError(
            path, f"trialtable must have at least {columns.width()} columns, got shape {raw.shape}"
        )
    return table, columns


def columns_from_labels(path: Path, labels: list[str]) -> TrialColumns:
    """Find each field's column by its label, for example 'go/catch' or 'tgt_id'."""
    found: dict[str, int] = {}
    for index, label in enumerate(labels):
        name = label.strip().lower()
        if name.startswith("trial start"):
            found.setdefault("start", index)
        elif name.startswith("outer target"):
            found.setdefault("target_on", index)
        elif name.startswith("go"):
            found.setdefault("go_cue", index)
        elif name.startswith("trial end"):
            found.setdefault("end", index)
        elif name.startswith("result"):
            found.setdefault("result", index)
        elif name in ("tgt_id", "tgt id", "target id", "target_id"):
            found.setdefault("target_id", index)
        elif name == "catch":
            found.setdefault("catch", index)

    required = ("start", "target_on", "go_cue", "end", "result", "target_id")
    missing = [name for name in required if name not in found]
    if missing:
        raise RecordingFormatError(
            path, f"trialtablelabels lack columns for {missing}, the labels are {labels}"
        )
    return TrialColumns(**found)


def _trial_markers(
    table: npt.NDArray[np.float64], columns: TrialColumns, report: ReplayReport
) -> list[Marker]:
    """Turn trial-table rows into behaviour markers. Trial ids are 1-based row numbers."""
    markers: list[Marker] = []
    labels_at_start = 0
    if table.shape[0] == 0:
        report.notes.append("trial table is empty, so the session has no behaviour events")
    for row_index, row in enumerate(table):
        trial_id = row_index + 1
        start_s = float(row[columns.start])
        if is_missing_time(start_s):
            report.skip(
                "trial start time missing",
                f"trial {trial_id}: trial start time missing ({describe_time(start_s)}), "
                "all events of the trial omitted",
            )
            continue
        markers.append(Marker(_to_us(start_s), "trial_start", trial_id))
        markers.extend(_target_on(row, columns, trial_id, report))
        go_markers = _go_cue(row, columns, trial_id, report)
        markers.extend(go_markers)

        class_marker = _class_label(row, columns, trial_id, go_markers, start_s, report)
        if class_marker is not None:
            markers.append(class_marker)
            if not go_markers:
                labels_at_start += 1

        markers.extend(_trial_end_and_outcome(row, columns, trial_id, report))

    if labels_at_start:
        report.notes.append(
            f"{labels_at_start} class_label events were placed at trial start because their "
            "trial has no go cue time"
        )
    return markers


def _target_on(
    row: npt.NDArray[np.float64], columns: TrialColumns, trial_id: int, report: ReplayReport
) -> list[Marker]:
    time_s = float(row[columns.target_on])
    if is_missing_time(time_s):
        report.skip(
            "outer target time missing",
            f"trial {trial_id}: outer target time missing ({describe_time(time_s)}), "
            "target_on event omitted",
        )
        return []
    return [Marker(_to_us(time_s), "target_on", trial_id)]


def _go_cue(
    row: npt.NDArray[np.float64], columns: TrialColumns, trial_id: int, report: ReplayReport
) -> list[Marker]:
    time_s = float(row[columns.go_cue])
    if columns.catch is not None and float(row[columns.catch]) != 0:
        report.skip(
            "catch trial",
            f"trial {trial_id}: catch trial, so the go/catch time is a catch cue and the "
            "go_cue event is omitted",
        )
        return []
    if is_missing_time(time_s):
        report.skip(
            "go cue time missing",
            f"trial {trial_id}: go cue time missing ({describe_time(time_s)}), "
            "go_cue event omitted",
        )
        return []
    return [Marker(_to_us(time_s), "go_cue", trial_id)]


def _class_label(
    row: npt.NDArray[np.float64],
    columns: TrialColumns,
    trial_id: int,
    go_markers: list[Marker],
    start_s: float,
    report: ReplayReport,
) -> Marker | None:
    target = float(row[columns.target_id])
    if not np.isfinite(target) or target < 1 or target != int(target):
        report.skip(
            "target id missing",
            f"trial {trial_id}: target id {describe_time(target)} is not a positive whole "
            "number, class_label event omitted",
        )
        return None
    offset_us = go_markers[0].offset_us if go_markers else _to_us(start_s)
    return Marker(offset_us, "class_label", trial_id, label=f"target_{int(target)}")


def _trial_end_and_outcome(
    row: npt.NDArray[np.float64], columns: TrialColumns, trial_id: int, report: ReplayReport
) -> list[Marker]:
    end_s = float(row[columns.end])
    if is_missing_time(end_s):
        report.skip(
            "trial end time missing",
            f"trial {trial_id}: trial end time missing ({describe_time(end_s)}), "
            "trial_end and outcome events omitted",
        )
        return []

    end_us = _to_us(end_s)
    markers = [Marker(end_us, "trial_end", trial_id)]
    code = float(row[columns.result])
    label = RESULT_LABELS.get(int(code)) if np.isfinite(code) else None
    if label is None:
        printable_code = (
            chr(int(code)) if np.isfinite(code) and 32 <= code < 127 else describe_time(code)
        )
        report.skip(
            "result code unknown",
            f"trial {trial_id}: result code {printable_code!r} is not R, A, F or I, "
            "outcome event omitted",
        )
    else:
        markers.append(Marker(end_us, "outcome", trial_id, label=label))
    return markers


def _to_us(time_s: float) -> int:
    return round(time_s * 1_000_000)


def _start_time(path: Path, data: Any, options: ReplayOptions, report: ReplayReport) -> datetime:
    """Return the recording start: ``options.start_time``, ``meta.datetime`` or the file name date.

    NOTE: ``meta.datetime`` has no time zone. It is read as UTC because it is copied from the
    Cerebus file header, but the files do not say which zone the acquisition computer used.
    """
    name_date = _date_from_name(path.name)
    meta_time = _meta_datetime(data)
    if meta_time is not None and name_date is not None and meta_time.date() != name_date:
        report.notes.append(
            f"date in the file name ({name_date.isoformat()}) differs from meta.datetime "
            f"({meta_time.date().isoformat()}), so meta.datetime is used"
        )

    if options.start_time is not None:
        report.notes.append("start time given by the caller")
        return options.start_time
    if meta_time is not None:
        report.notes.append("start time from meta.datetime, read as UTC")
        return meta_time
    if name_date is not None:
        report.notes.append(
            "meta.datetime missing; start time is midnight UTC of the file name date"
        )
        return datetime(name_date.year, name_date.month, name_date.day, tzinfo=UTC)
    report.notes.append(
        f"file stores no recording date, so the start time is {UNDATED_START_TIME.isoformat()}"
    )
    return UNDATED_START_TIME


def _meta_datetime(data: Any) -> datetime | None:
    meta = getattr(data, "meta", None)
    text = getattr(meta, "datetime", None)
    if not isinstance(text, str):
        return None
    match = _MAT_DATETIME.match(text)
    if match is None:
        return None
    month, day, year, hour, minute, second = (int(part) for part in match.groups()[:6])
    fraction = match.group(7) or "0"
    microsecond = int(fraction.ljust(6, "0"))
    try:
        start = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        return None
    return start + timedelta(microseconds=microsecond)


def _date_from_name(name: str) -> date | None:
    """Return the date in names like ``Spike_07-18-12_WF_001.mat`` or ``Jango_20141203_...``."""
    try:
        if match := _NAME_DATE_MM_DD_YY.search(name):
            month, day, year = (int(part) for part in match.groups())
            return date(2000 + year, month, day)
        if match := _NAME_DATE_YYYYMMDD.search(name):
            year, month, day = (int(part) for part in match.groups())
            return date(year, month, day)
    except ValueError:
        return None
    return None


def _metadata(path: Path, struct_name: str, data: Any) -> dict[str, str]:
    """Collect identifying metadata as a board would send it: file name and every meta field."""
    metadata = {"source_file": path.name, "source_kind": KIND, "source_struct": struct_name}
    meta = getattr(data, "meta", None)
    for name in getattr(meta, "_fieldnames", []):
        value = getattr(meta, name)
        if isinstance(value, np.ndarray) and value.size == 1:
            value = value.item()
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, str | int | float):
            metadata[f"meta.{name}"] = str(value)
    return metadata
