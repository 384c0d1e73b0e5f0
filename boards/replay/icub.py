"""Reader for the iCub grasp dataset: tactile and joint readings of a robot hand.

Data: iCub Grasp Dataset, Copyright 2012 Harold Soh. Cite Harold Soh, Yanyu Su and Yiannis
Demiris, "Online Spatio-Temporal Gaussian Process Experts with Application to Tactile
Classification", IEEE/RSJ IROS 2012. The dataset may be used and distributed freely as long
as the copyright information stays intact, so every event carries it in ``metadata``.

Each file ``<object>_<grasp>.txt`` contains one grasp, and its first line (-10000) is ignored.
Each time slice is 7 lines. Line 1 has 9 joint encoder values (iCub hand joints 7-15), and
line 2 the maximum of 255 minus the reading per finger, which is derived and not replayed.
Lines 3-7 have 12 taxel readings each, for thumb, index, middle, ring and little finger.
Taxels read 0-255, and lower means more pressure, so pressures are replayed as raw
capacitance.

A folder becomes one session: grasps of all objects in turn (objects in alphabetical order,
grasps by number), so a decoder sees every class within the session. Pass ``objects`` for a
session of selected objects only, or a single file for a session of one grasp.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from boards.replay.errors import RecordingFormatError
from boards.replay.events import ReplayOptions, ReplayReport, start_time_or_default
from boards.replay.recording import EskinSample, Marker, Recording

logger = logging.getLogger(__name__)

KIND: Final = "icub_grasp"
DATASET_FOLDER: Final = "iCubGraspDataset"
COPYRIGHT_NOTICE: Final = (
    "iCub Grasp Dataset, Copyright 2012 Harold Soh; cite Soh, Su and Demiris, IROS 2012"
)

N_JOINTS: Final = 9
N_FINGERS: Final = 5
TAXELS_PER_FINGER: Final = 12
N_TAXELS: Final = N_FINGERS * TAXELS_PER_FINGER
LINES_PER_SLICE: Final = 2 + N_FINGERS

# NOTE: the dataset README does not state the sampling period of a time slice. 100 ms is an
# assumption, so event times inside a grasp are only as good as this guess.
DEFAULT_SAMPLE_PERIOD_MS: Final = 100

# Time between the end of one grasp and the start of the next on the replay timeline.
DEFAULT_TRIAL_GAP_MS: Final = 1000

# The README reports problems while recording "full-coke" and advises against relying on it.
UNRELIABLE_OBJECTS: Final = frozenset({"full_coke"})

# File-name object of the baseline grasps with nothing in the hand.
NO_OBJECT: Final = "none"

_GRASP_FILE = re.compile(r"^(?P<object>[A-Za-z][A-Za-z_]*?)_(?P<grasp>\d+)\.txt$")


@dataclass(frozen=True)
class Grasp:
    """One grasp file: its object, grasp number and time slices."""

    path: Path
    object_name: str
    number: int
    joints_deg: list[list[float]]  # (slices, joints)
    taxels: list[list[float]]  # (slices, taxels)


def open_icub(
    path: Path | str,
    options: ReplayOptions,
    *,
    objects: Collection[str] | None = None,
    include_unreliable: bool = False,
    sample_period_ms: int = DEFAULT_SAMPLE_PERIOD_MS,
    trial_gap_ms: int = DEFAULT_TRIAL_GAP_MS,
) -> Recording:
    """Read iCub grasps from a folder or one file and return them as one recording.

    Every grasp is a trial: trial_start and class_label (the object, or ``no_object`` for the
    baseline grasps) at its first slice, one EskinFrame of 60 taxels per slice, and trial_end
    one sample period after its last slice. Grasps of ``UNRELIABLE_OBJECTS`` are skipped and
    reported unless ``include_unreliable`` is set. Joint positions are converted from the
    encoders' degrees to radians.

    NOTE: the dataset README does not state the encoder unit. Degrees are assumed because
    values such as 81 cannot be joint angles in radians.
    """
    path = Path(path)
    if options.bin_ms is not None:
        raise ValueError(f"{path}: iCub grasps have no spike bins, so bin_ms must be None")
    if sample_period_ms <= 0 or trial_gap_ms < 0:
        raise ValueError(
            "sample_period_ms must be positive and trial_gap_ms 0 or more, "
            f"got {sample_period_ms} and {trial_gap_ms}"
        )

    report = ReplayReport(source=path.name, kind=KIND)
    report.notes.append(
        "sampling period is not documented, so time slices are set "
        f"{sample_period_ms} ms apart and grasps {trial_gap_ms} ms apart"
    )
    files = _grasp_files(path)
    selected_objects = set(objects) if objects is not None else None
    grasps = [
        _read_grasp(file)
        for file in files
        if _is_selected(file, selected_objects, include_unreliable, report)
    ]
    if not grasps:
        raise RecordingFormatError(path, "no grasp files selected, expected <object>_<n>.txt files")

    markers, samples = _grasp_events(grasps, sample_period_ms * 1000, trial_gap_ms * 1000, report)
    report.read["grasps"] = len(grasps)
    report.read["objects"] = len({grasp.object_name for grasp in grasps})
    report.read["slices"] = len(samples)

    recording = Recording(
        kind=KIND,
        source=path,
        options=options,
        start_time=start_time_or_default(options, report),
        metadata={
            "source_folder": (path.parent if path.is_file() else path).name,
            "source_kind": KIND,
            "copyright": COPYRIGHT_NOTICE,
        },
        report=report,
        n_trials=len(grasps),
        markers=markers,
        eskin_samples=samples,
        pressure_unit="raw_capacitance",
    )
    logger.info("read %s", report.summary())
    return recording


def _grasp_files(path: Path) -> list[Path]:
    """Return grasp files ordered by object name and grasp number."""
    if path.is_file():
        if _GRASP_FILE.match(path.name) is None:
            raise RecordingFormatError(path, "file name must have the form <object>_<n>.txt")
        return [path]
    folder = path / DATASET_FOLDER if (path / DATASET_FOLDER).is_dir() else path
    files = [file for file in folder.iterdir() if _GRASP_FILE.match(file.name)]
    if not files:
        raise RecordingFormatError(
            path, f"folder has no grasp files named <object>_<n>.txt (looked in {folder})"
        )
    return sorted(files, key=_grasp_sort_key)


def _grasp_sort_key(file: Path) -> tuple[str, int]:
    match = _GRASP_FILE.match(file.name)
    if match is None:
        raise RecordingFormatError(file, "file name must have the form <object>_<n>.txt")
    return match["object"], int(match["grasp"])


def _is_selected(
    file: Path, selected_objects: set[str] | None, include_unreliable: bool, report: ReplayReport
) -> bool:
    object_name, _ = _grasp_sort_key(file)
    if selected_objects is not None and object_name not in selected_objects:
        return False
    if object_name in UNRELIABLE_OBJECTS and not include_unreliable:
        report.skip(
            "object marked unreliable by the dataset",
            f"{file.name}: the dataset README marks {object_name} as unreliable, grasp omitted",
        )
        return False
    return True


def _read_grasp(file: Path) -> Grasp:
    lines = [line.split() for line in file.read_text(encoding="ascii").splitlines()]
    lines = [tokens for tokens in lines if tokens]
    if lines and len(lines[0]) == 1:
        lines = lines[1:]  # the -10000 start marker
    if len(lines) % LINES_PER_SLICE:
        raise RecordingFormatError(
            file, f"expected {LINES_PER_SLICE} lines per time slice, got {len(lines)} data lines"
        )

    joints: list[list[float]] = []
    taxels: list[list[float]] = []
    for first in range(0, len(lines), LINES_PER_SLICE):
        block = lines[first : first + LINES_PER_SLICE]
        joints.append(_numbers(file, first, block[0], N_JOINTS))
        _numbers(file, first + 1, block[1], N_FINGERS)
        slice_taxels: list[float] = []
        for finger, tokens in enumerate(block[2:]):
            slice_taxels.extend(_numbers(file, first + 2 + finger, tokens, TAXELS_PER_FINGER))
        taxels.append(slice_taxels)

    object_name, number = _grasp_sort_key(file)
    return Grasp(file, object_name, number, joints, taxels)


def _numbers(file: Path, data_line: int, tokens: list[str], expected: int) -> list[float]:
    if len(tokens) != expected:
        raise RecordingFormatError(
            file, f"data line {data_line + 1}: expected {expected} numbers, got {len(tokens)}"
        )
    try:
        return [float(token) for token in tokens]
    except ValueError as exc:
        raise RecordingFormatError(file, f"data line {data_line + 1}: {exc}") from exc


def _grasp_events(
    grasps: Iterable[Grasp], period_us: int, gap_us: int, report: ReplayReport
) -> tuple[list[Marker], list[EskinSample]]:
    """Lay grasps out one after another. Trial ids count grasps from 1 in replay order."""
    markers: list[Marker] = []
    samples: list[EskinSample] = []
    start_us = 0
    trial_id = 0
    for grasp in grasps:
        if not grasp.taxels:
            report.skip("grasp without time slices", f"{grasp.path.name}: no time slices, omitted")
            continue
        trial_id += 1
        extra = {"source_file": grasp.path.name}
        object_label = None if grasp.object_name == NO_OBJECT else grasp.object_name
        class_name = "no_object" if object_label is None else object_label
        markers.append(Marker(start_us, "trial_start", trial_id, metadata=extra))
        markers.append(Marker(start_us, "class_label", trial_id, label=class_name, metadata=extra))
        for index, (joints, pressures) in enumerate(
            zip(grasp.joints_deg, grasp.taxels, strict=True)
        ):
            samples.append(
                EskinSample(
                    start_us + index * period_us,
                    pressures,
                    [math.radians(angle) for angle in joints],
                    object_label,
                    metadata=extra,
                )
            )
        end_us = start_us + len(grasp.taxels) * period_us
        markers.append(Marker(end_us, "trial_end", trial_id, metadata=extra))
        start_us = end_us + gap_us
    return markers, samples
