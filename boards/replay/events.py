"""Board events, replay options and the report of what a reader read and skipped.

Records are plain dicts whose keys are the Avro field names of SpikeFrame, BehaviorEvent and
EskinFrame. They leave out ``seq``, which the publisher assigns, and ``schema_version``, which
the codec sets on encode.
"""

from __future__ import annotations

import math
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

RecordName = Literal["SpikeFrame", "BehaviorEvent", "EskinFrame"]
RECORD_NAMES: Final[frozenset[str]] = frozenset({"SpikeFrame", "BehaviorEvent", "EskinFrame"})

BehaviorKind = Literal[
    "trial_start",
    "target_on",
    "go_cue",
    "movement_onset",
    "grasp",
    "hold",
    "release",
    "reward",
    "trial_end",
    "outcome",
    "class_label",
]

CountDtype = Literal["uint8", "uint16", "int16", "int32"]

# Spike bins per frame when the caller does not choose. One bin per frame sends one frame per
# model step, so a board with 50 ms bins publishes 20 frames/s.
DEFAULT_BINS_PER_FRAME: Final = 1

# Recording start for files that store no date (Brochier grasp, iCub grasp) and no start_time
# was given. A fixed value keeps replays reproducible, and the report states that it was used.
UNDATED_START_TIME: Final = datetime(2000, 1, 1, tzinfo=UTC)

_SESSION_NAMESPACE: Final = uuid.UUID("5a0c1e8e-3c1f-4f7a-9a55-2b8f6d0e4c11")


@dataclass(frozen=True, slots=True)
class BoardEvent:
    """One record as a board would publish it, with its event time for ordering."""

    record_name: RecordName
    record: dict[str, Any]
    event_time: datetime


@dataclass
class ReplayReport:
    """Counts of the items a reader read from one source and of those it skipped, by reason.

    ``read`` counts source items (bins, trials, spikes, grasps). ``skipped`` counts skipped
    items by reason, and ``skip_details`` has one line per skipped item, for example
    "trial 17: go cue time missing (-1), go_cue event omitted". ``notes`` lists decisions that
    skipped nothing but change how the data reads, such as where the start time came from.
    """

    source: str
    kind: str
    read: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    skip_details: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def skip(self, reason: str, detail: str) -> None:
        """Count one skipped item under ``reason`` and keep its ``detail`` line."""
        self.skipped[reason] += 1
        self.skip_details.append(detail)

    def summary(self) -> str:
        """Return a one-line summary of the counters, without the detail lines."""
        read = ", ".join(f"{key}={value}" for key, value in sorted(self.read.items()))
        skipped = ", ".join(f"{key}={value}" for key, value in sorted(self.skipped.items()))
        return (
            f"{self.kind} {self.source}: read {read or 'nothing'}; skipped {skipped or 'nothing'}"
        )


@dataclass(frozen=True)
class ReplayOptions:
    """Options that every reader accepts.

    ``bin_ms`` is the spike bin width in ms, and None keeps the reader's default. ``start_time``
    replaces the recording start that the file stores and must be timezone-aware.
    ``session_id`` None derives a stable id from the board id and the file name.
    """

    board_id: str
    subject_id: str
    session_id: str | None = None
    bin_ms: int | None = None
    bins_per_frame: int = DEFAULT_BINS_PER_FRAME
    start_time: datetime | None = None

    def __post_init__(self) -> None:
        for name in ("board_id", "subject_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        if self.session_id is not None and not self.session_id:
            raise ValueError("session_id must be None or a non-empty string, got ''")
        if self.bin_ms is not None and (isinstance(self.bin_ms, bool) or self.bin_ms <= 0):
            raise ValueError(
                f"bin_ms must be a positive number of milliseconds, got {self.bin_ms!r}"
            )
        if isinstance(self.bins_per_frame, bool) or self.bins_per_frame < 1:
            raise ValueError(f"bins_per_frame must be at least 1, got {self.bins_per_frame!r}")
        if self.start_time is not None and self.start_time.utcoffset() is None:
            raise ValueError(
                f"start_time must be timezone-aware, got naive {self.start_time.isoformat()}. "
                "Pass for example datetime(..., tzinfo=datetime.UTC)"
            )

    def session_for(self, source: Path) -> str:
        """Return the session id: the given one, or a UUID derived from board id and file name.

        The derived id is the same on every replay of the file by the same board and contains
        no text of the file name, which may name the subject.
        """
        if self.session_id is not None:
            return self.session_id
        return str(uuid.uuid5(_SESSION_NAMESPACE, f"{self.board_id}/{source.name}"))


def is_missing_time(value: float) -> bool:
    """Return True when a stored event time is a gap marker: NaN, infinite or negative."""
    return not math.isfinite(value) or value < 0


def describe_time(value: float) -> str:
    """Format a stored time for a report line, keeping sentinels such as -1 readable."""
    if math.isfinite(value) and value == int(value):
        return str(int(value))
    return repr(float(value))


def start_time_or_default(options: ReplayOptions, report: ReplayReport) -> datetime:
    """Return the caller's start time, else UNDATED_START_TIME, for files that store no date."""
    if options.start_time is not None:
        report.notes.append("start time given by the caller")
        return options.start_time
    report.notes.append(
        "the source stores no recording date, so the start time is "
        f"{UNDATED_START_TIME.isoformat()}"
    )
    return UNDATED_START_TIME
