"""A recording read into memory, and the board events it replays.

Readers convert their file into spike segments (runs of contiguous bins), behaviour markers
and e-skin samples, all timed in microseconds from the recording start. ``Recording.events``
turns them into board events in event-time order.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from boards.replay.events import (
    BehaviorKind,
    BoardEvent,
    CountDtype,
    ReplayOptions,
    ReplayReport,
)

# Smallest first: counts are packed in the first type that fits the largest count.
_UNSIGNED_DTYPES: Final[tuple[tuple[CountDtype, int], ...]] = (
    ("uint8", 255),
    ("uint16", 65_535),
    ("int32", 2_147_483_647),
)


@dataclass(frozen=True)
class SpikeSegment:
    """Contiguous spike-count bins that start ``offset_us`` after the recording start.

    ``counts`` has shape (n_bins, n_channels) and non-negative integer values.
    """

    offset_us: int
    counts: npt.NDArray[np.integer[Any]]


@dataclass(frozen=True)
class Marker:
    """One behaviour marker, ``offset_us`` after the recording start.

    ``metadata`` entries are added to the recording's metadata for this marker only.
    """

    offset_us: int
    kind: BehaviorKind
    trial_id: int | None
    label: str | None = None
    value: float | None = None
    metadata: Mapping[str, str] | None = None


@dataclass(frozen=True)
class EskinSample:
    """One e-skin reading, ``offset_us`` after the recording start."""

    offset_us: int
    pressures: list[float]
    joint_positions: list[float] | None
    label: str | None
    metadata: Mapping[str, str] | None = None


def smallest_count_dtype(max_count: int) -> CountDtype:
    """Return the smallest SpikeFrame dtype that fits counts from 0 to ``max_count``."""
    for name, limit in _UNSIGNED_DTYPES:
        if max_count <= limit:
            return name
    raise ValueError(f"spike count {max_count} does not fit in int32, the widest SpikeFrame dtype")


class Recording:
    """A recording read into memory, ready to replay as one board's events.

    Build it through ``open_recording`` or a reader's ``open_*`` function. ``report`` states
    what the reader read and skipped.
    """

    def __init__(
        self,
        *,
        kind: str,
        source: Path,
        options: ReplayOptions,
        start_time: datetime,
        metadata: Mapping[str, str],
        report: ReplayReport,
        n_trials: int,
        bin_ms: int | None = None,
        channel_ids: Sequence[str] | None = None,
        segments: Sequence[SpikeSegment] = (),
        markers: Sequence[Marker] = (),
        eskin_samples: Sequence[EskinSample] = (),
        pressure_unit: str = "raw_capacitance",
    ) -> None:
        if start_time.utcoffset() is None:
            raise ValueError(f"{source}: start_time must be timezone-aware, got {start_time!r}")
        if segments and bin_ms is None:
            raise ValueError(f"{source}: spike segments need a bin width, got bin_ms=None")

        self.kind = kind
        self.source = source
        self.board_id = options.board_id
        self.subject_id = options.subject_id
        self.session_id = options.session_for(source)
        self.bins_per_frame = options.bins_per_frame
        self.start_time = start_time.astimezone(UTC)
        self.metadata: dict[str, str] = dict(metadata)
        self.report = report
        self.n_trials = n_trials
        self.bin_ms = bin_ms
        self.channel_ids = list(channel_ids) if channel_ids is not None else None
        self.pressure_unit = pressure_unit
        self.markers = sorted(markers, key=lambda marker: marker.offset_us)
        self.eskin_samples = sorted(eskin_samples, key=lambda sample: sample.offset_us)
        self.dtype, self.segments = self._pack_segments(segments)

    def _pack_segments(
        self, segments: Sequence[SpikeSegment]
    ) -> tuple[CountDtype, list[SpikeSegment]]:
        """Convert every segment to one little-endian dtype that fits the largest count."""
        n_channels = {segment.counts.shape[1] for segment in segments}
        if len(n_channels) > 1:
            raise ValueError(
                f"{self.source}: segments differ in channel count: {sorted(n_channels)}"
            )
        if self.channel_ids is not None and n_channels and len(self.channel_ids) not in n_channels:
            raise ValueError(
                f"{self.source}: {len(self.channel_ids)} channel ids for "
                f"{n_channels.pop()} channels of counts"
            )

        max_count = max((int(segment.counts.max(initial=0)) for segment in segments), default=0)
        min_count = min((int(segment.counts.min(initial=0)) for segment in segments), default=0)
        if min_count < 0:
            raise ValueError(f"{self.source}: spike counts must be non-negative, found {min_count}")
        dtype = smallest_count_dtype(max_count)
        numpy_dtype = np.dtype(dtype).newbyteorder("<")
        packed = [
            SpikeSegment(segment.offset_us, np.ascontiguousarray(segment.counts, dtype=numpy_dtype))
            for segment in sorted(segments, key=lambda segment: segment.offset_us)
        ]
        return dtype, packed

    @property
    def n_channels(self) -> int:
        """Number of spike channels, 0 for a recording without spike counts."""
        return self.segments[0].counts.shape[1] if self.segments else 0

    @property
    def n_bins(self) -> int:
        """Number of spike bins over all segments."""
        return sum(segment.counts.shape[0] for segment in self.segments)

    @property
    def spike_count(self) -> int:
        """Sum of all spike counts that the recording replays."""
        return sum(int(segment.counts.sum(dtype=np.int64)) for segment in self.segments)

    def events(self) -> Iterator[BoardEvent]:
        """Yield spike frames, behaviour events and e-skin frames in event-time order.

        At equal event times a behaviour event comes before an e-skin frame, which comes
        before a spike frame.
        """
        return heapq.merge(
            self._behavior_events(),
            self._eskin_events(),
            self._spike_frames(),
            key=_event_time,
        )

    def _common_fields(self, offset_us: int, extra: Mapping[str, str] | None) -> dict[str, Any]:
        metadata = dict(self.metadata)
        if extra:
            metadata.update(extra)
        return {
            "board_id": self.board_id,
            "subject_id": self.subject_id,
            "session_id": self.session_id,
            "event_time": self.start_time + timedelta(microseconds=offset_us),
            # Every record type of the session shares this origin after anonymization.
            "session_start": self.start_time,
            "metadata": metadata,
        }

    def _behavior_events(self) -> Iterator[BoardEvent]:
        for marker in self.markers:
            record = self._common_fields(marker.offset_us, marker.metadata)
            record.update(
                kind=marker.kind,
                trial_id=marker.trial_id,
                label=marker.label,
                value=marker.value,
            )
            yield BoardEvent("BehaviorEvent", record, record["event_time"])

    def _eskin_events(self) -> Iterator[BoardEvent]:
        for sample in self.eskin_samples:
            record = self._common_fields(sample.offset_us, sample.metadata)
            record.update(
                n_taxels=len(sample.pressures),
                pressures=list(sample.pressures),
                pressure_unit=self.pressure_unit,
                contact_centroid=None,
                total_force_n=None,
                joint_positions=(
                    list(sample.joint_positions) if sample.joint_positions is not None else None
                ),
                label=sample.label,
            )
            yield BoardEvent("EskinFrame", record, record["event_time"])

    def _spike_frames(self) -> Iterator[BoardEvent]:
        if not self.segments or self.bin_ms is None:
            return
        bin_us = self.bin_ms * 1000
        n_channels = self.n_channels
        for segment in self.segments:
            n_bins = segment.counts.shape[0]
            for first_bin in range(0, n_bins, self.bins_per_frame):
                last_bin = first_bin + self.bins_per_frame
                block = segment.counts[first_bin:last_bin]  # (bins, channels)
                record = self._common_fields(segment.offset_us + first_bin * bin_us, None)
                record.update(
                    bin_ms=self.bin_ms,
                    n_bins=block.shape[0],
                    n_channels=n_channels,
                    dtype=self.dtype,
                    counts=block.tobytes(),
                    channel_ids=list(self.channel_ids) if self.channel_ids is not None else None,
                )
                yield BoardEvent("SpikeFrame", record, record["event_time"])


def _event_time(event: BoardEvent) -> datetime:
    return event.event_time
