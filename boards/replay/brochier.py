"""Reader for the reach-to-grasp subset of Brochier et al. (MATLAB 7.3 / HDF5 file).

Data: Brochier et al. 2018, "Massively parallel recordings in macaque motor cortex during an
instructed delayed reach-to-grasp task", Scientific Data 5:180055 (CC-BY-4.0), in the subset
prepared for the CONECT-INT 2022 summer school. Datasets, as h5py reads them:

- ``D`` (trials, neurons, time): 0/1 spike trains in 1 ms bins, 1500 ms per trial.
- ``GRIP`` (trials): 1 side grip, 2 precision grip.
- ``ID`` (neurons): neuron ids. ``RT`` (trials): reaction time in ms.

Trial windows carry no absolute time, so the reader lays them out one after another with
``trial_gap_ms`` between them. No frames are published inside the gaps, because nothing was
recorded there, and the windowing stage flags the missing steps.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Final

import h5py
import numpy as np
import numpy.typing as npt

from boards.replay.errors import RecordingFormatError
from boards.replay.events import ReplayOptions, ReplayReport, start_time_or_default
from boards.replay.recording import Marker, Recording, SpikeSegment

logger = logging.getLogger(__name__)

KIND: Final = "brochier_grasp"
SOURCE_BIN_MS: Final = 1

# 50 ms is the model step of the platform and divides the 1500 ms trial window into 30 bins.
DEFAULT_BIN_MS: Final = 50

# Silence between two trial windows on the replay timeline. The file does not store the
# inter-trial interval, so the value only keeps windows apart and in order.
DEFAULT_TRIAL_GAP_MS: Final = 500

GRIP_LABELS: Final = {1: "side_grip", 2: "precision_grip"}


def open_brochier(
    path: Path | str, options: ReplayOptions, *, trial_gap_ms: int = DEFAULT_TRIAL_GAP_MS
) -> Recording:
    """Read the Brochier grasp file and return its trials as one recording.

    Each trial yields trial_start and class_label (the grip) at the window start, spike frames
    over the window and trial_end at its end. ``options.bin_ms`` (default 50) must divide the
    trial window, so that no trial ends in a partial bin. Raises RecordingFormatError when a
    dataset is missing or has an unexpected shape.
    """
    path = Path(path)
    if trial_gap_ms < 0:
        raise ValueError(f"trial_gap_ms must be 0 or more, got {trial_gap_ms}")
    spikes, grips, neuron_ids, header = _read_datasets(path)  # spikes: (trials, neurons, ms)
    n_trials, n_neurons, window_ms = spikes.shape
    bin_ms = options.bin_ms if options.bin_ms is not None else DEFAULT_BIN_MS
    if window_ms % bin_ms:
        raise ValueError(
            f"{path}: bin_ms must divide the {window_ms} ms trial window, got {bin_ms}. "
            f"Divisors near it: {_divisors_near(window_ms, bin_ms)}"
        )

    report = ReplayReport(source=path.name, kind=KIND)
    report.read.update(trials=n_trials, neurons=n_neurons, spikes=int(spikes.sum(dtype=np.int64)))
    report.notes.append(
        f"trial windows of {window_ms} ms are laid out {trial_gap_ms} ms apart, "
        "because the file stores no time between trials"
    )
    report.notes.append(
        "reaction times (RT) are not replayed as events: the file does not say where the go cue "
        "lies in the trial window"
    )

    n_bins = window_ms // bin_ms
    # (trials, neurons, bins, ms per bin) -> sum over ms -> (trials, bins, neurons)
    binned = spikes.reshape(n_trials, n_neurons, n_bins, bin_ms).sum(axis=3).transpose(0, 2, 1)
    period_us = (window_ms + trial_gap_ms) * 1000
    segments = [SpikeSegment(trial * period_us, binned[trial]) for trial in range(n_trials)]
    markers = _trial_markers(grips, period_us, window_ms * 1000, report)
    report.read["bins"] = n_trials * n_bins

    recording = Recording(
        kind=KIND,
        source=path,
        options=options,
        start_time=start_time_or_default(options, report),
        metadata={"source_file": path.name, "source_kind": KIND, "mat_header": header},
        report=report,
        n_trials=n_trials,
        bin_ms=bin_ms,
        channel_ids=neuron_ids,
        segments=segments,
        markers=markers,
    )
    logger.info("read %s", report.summary())
    return recording


def _read_datasets(
    path: Path,
) -> tuple[npt.NDArray[np.integer[Any]], npt.NDArray[np.float64], list[str], str]:
    """Return spikes (trials, neurons, ms), grips (trials), neuron ids and the MAT header text."""
    try:
        with h5py.File(path, "r") as file:
            missing = [name for name in ("D", "GRIP", "ID") if name not in file]
            if missing:
                raise RecordingFormatError(
                    path,
                    f"missing datasets {missing}: expected D, GRIP and ID, found {sorted(file)}",
                )
            raw_spikes = np.asarray(file["D"][()])
            grips = np.asarray(file["GRIP"][()], dtype=np.float64).ravel()
            raw_ids = np.asarray(file["ID"][()], dtype=np.float64).ravel()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise RecordingFormatError(
            path, f"cannot open as a MATLAB 7.3 (HDF5) file ({exc})"
        ) from exc

    if raw_spikes.ndim != 3:
        raise RecordingFormatError(
            path, f"D must have shape (trials, neurons, ms), got {raw_spikes.shape}"
        )
    n_trials, n_neurons, _ = raw_spikes.shape
    if grips.size != n_trials or raw_ids.size != n_neurons:
        raise RecordingFormatError(
            path,
            f"GRIP must list {n_trials} trials and ID {n_neurons} neurons to match D "
            f"{raw_spikes.shape}, got {grips.size} and {raw_ids.size}",
        )
    return _whole_counts(path, raw_spikes), grips, _neuron_ids(path, raw_ids), _mat_header(path)


def _whole_counts(path: Path, raw_spikes: npt.NDArray[Any]) -> npt.NDArray[np.integer[Any]]:
    """Convert D to integers, raising unless every value is a whole count from 0 to 255."""
    with np.errstate(invalid="ignore"):  # NaN and out-of-range values fail the comparison below
        spikes: npt.NDArray[np.integer[Any]] = raw_spikes.astype(np.uint8)
    if np.array_equal(spikes, raw_spikes):
        return spikes  # one pass covers NaN, negative, fractional and too large values
    if not np.all(np.isfinite(raw_spikes)) or np.any(raw_spikes < 0):
        raise RecordingFormatError(path, "D must hold non-negative spike counts, found NaN or < 0")
    if np.any(raw_spikes != np.rint(raw_spikes)):
        raise RecordingFormatError(path, "D must hold whole spike counts per 1 ms bin")
    raise RecordingFormatError(
        path, f"D must hold at most 255 spikes per 1 ms bin, found {raw_spikes.max()}"
    )


def _neuron_ids(path: Path, raw_ids: npt.NDArray[np.float64]) -> list[str]:
    if not np.all(np.isfinite(raw_ids)) or np.any(raw_ids != np.rint(raw_ids)):
        raise RecordingFormatError(path, f"ID must hold whole neuron ids, got {raw_ids[:5]}...")
    return [str(int(neuron_id)) for neuron_id in raw_ids]


def _mat_header(path: Path) -> str:
    """Return the text header that MATLAB writes before the HDF5 data."""
    with path.open("rb") as file:
        head = file.read(116)
    return head.decode("ascii", errors="replace").rstrip(" \x00")


def _trial_markers(
    grips: npt.NDArray[np.float64], period_us: int, window_us: int, report: ReplayReport
) -> list[Marker]:
    """Return trial_start, class_label and trial_end per trial. Trial ids are 1-based."""
    markers: list[Marker] = []
    for index, grip in enumerate(grips):
        trial_id = index + 1
        start_us = index * period_us
        markers.append(Marker(start_us, "trial_start", trial_id))
        label = GRIP_LABELS.get(int(grip)) if np.isfinite(grip) else None
        if label is None:
            report.skip(
                "grip type unknown",
                f"trial {trial_id}: GRIP {grip!r} is neither 1 (side) nor 2 (precision), "
                "class_label event omitted",
            )
        else:
            markers.append(Marker(start_us, "class_label", trial_id, label=label))
        markers.append(Marker(start_us + window_us, "trial_end", trial_id))
    return markers


def _divisors_near(total: int, target: int) -> list[int]:
    divisors = [value for value in range(1, total + 1) if total % value == 0]
    return sorted(divisors, key=lambda value: abs(value - target))[:3]
