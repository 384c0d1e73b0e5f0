"""Reader for Blackrock NEV files: threshold crossings binned per channel into spike frames.

Spike times come from ``neo.io.BlackrockIO`` (neo 0.14), which reads only the NEV file here
(``nsx_to_load=[]``) because continuous signals are not replayed. Units on one electrode are
summed, so each column of counts is one electrode's threshold crossings. The NEV basic header
(336 bytes, read here directly because neo keeps it private) supplies the metadata: format
version, application, comment and time origin.
"""

from __future__ import annotations

import logging
import re
import struct
import warnings
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
from neo.io import BlackrockIO

from boards.replay.errors import RecordingFormatError
from boards.replay.events import UNDATED_START_TIME, ReplayOptions, ReplayReport
from boards.replay.recording import Recording, SpikeSegment

logger = logging.getLogger(__name__)

KIND: Final = "blackrock_nev"
DEFAULT_BIN_MS: Final = 50

# File type ids at byte 0: NEURALEV for specification 2.x, BREVENTS for 3.x.
NEV_FILE_TYPES: Final = (b"NEURALEV", b"BREVENTS")

# file type id, spec major, spec minor, flags, header bytes, packet bytes, timestamp
# resolution (Hz), sample resolution (Hz), time origin (8 x uint16: year, month, weekday, day,
# hour, minute, second, ms), application (32 bytes), comment (256 bytes), extended headers.
_BASIC_HEADER: Final = struct.Struct("<8sBBHIIII8H32s256sI")
_NAME_DATE = re.compile(r"(?<!\d)(\d{4})(\d{2})(\d{2})(?!\d)")


@dataclass(frozen=True)
class NevHeader:
    """Fields of the NEV basic header that become metadata."""

    file_type: str
    spec: str
    timestamp_resolution_hz: int
    time_origin: datetime | None
    application: str
    comment: str


def read_nev_header(path: Path | str) -> NevHeader:
    """Read the NEV basic header. Raises RecordingFormatError if the file is not a NEV file."""
    path = Path(path)
    with path.open("rb") as file:
        raw = file.read(_BASIC_HEADER.size)
    if len(raw) < _BASIC_HEADER.size or raw[:8] not in NEV_FILE_TYPES:
        raise RecordingFormatError(
            path,
            f"not a NEV file: expected a {_BASIC_HEADER.size}-byte header starting with "
            f"{' or '.join(kind.decode() for kind in NEV_FILE_TYPES)}, got {raw[:8]!r}",
        )
    fields = _BASIC_HEADER.unpack(raw)
    file_type, major, minor, _, _, _, timestamp_hz, _ = fields[:8]
    year, month, _, day, hour, minute, second, millisecond = fields[8:16]
    application, comment = fields[16], fields[17]
    try:
        origin: datetime | None = datetime(
            year, month, day, hour, minute, second, millisecond * 1000, tzinfo=UTC
        )
    except ValueError:
        origin = None
    return NevHeader(
        file_type=file_type.decode("ascii"),
        spec=f"{major}.{minor}",
        timestamp_resolution_hz=timestamp_hz,
        time_origin=origin,
        application=_c_string(application),
        comment=_c_string(comment),
    )


def open_blackrock(path: Path | str, options: ReplayOptions) -> Recording:
    """Read a NEV file and return its threshold crossings as spike frames.

    Bins (``options.bin_ms``, default 50) start at each segment's start. The last bin of a
    segment contains the segment's end, so it can extend past the last recorded timestamp.
    """
    path = Path(path)
    header = read_nev_header(path)
    bin_ms = options.bin_ms if options.bin_ms is not None else DEFAULT_BIN_MS
    report = ReplayReport(source=path.name, kind=KIND)

    block = _read_block(path, report)
    channel_ids = sorted(
        {
            int(train.annotations["channel_id"])
            for seg in block.segments
            for train in seg.spiketrains
        }
    )
    segments = [
        _bin_segment(path, segment, channel_ids, bin_ms * 1000, report)
        for segment in block.segments
    ]
    _report_unreplayed_events(block, report)
    report.read["segments"] = len(segments)
    report.read["bins"] = sum(segment.counts.shape[0] for segment in segments)

    recording = Recording(
        kind=KIND,
        source=path,
        options=options,
        start_time=_start_time(path, header, block.rec_datetime, options, report),
        metadata=_metadata(path, header),
        report=report,
        n_trials=0,
        bin_ms=bin_ms,
        channel_ids=[str(channel) for channel in channel_ids],
        segments=segments,
    )
    logger.info("read %s", report.summary())
    return recording


def _read_block(path: Path, report: ReplayReport) -> Any:
    """Read spike trains with neo, keeping its warnings as report notes."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            reader = BlackrockIO(filename=str(path), nsx_to_load=[])
            block = reader.read_block(load_waveforms=False)
        except (OSError, ValueError, KeyError, IndexError) as exc:
            raise RecordingFormatError(
                path, f"neo BlackrockIO cannot read the file ({exc})"
            ) from exc
    for message, count in Counter(str(warning.message) for warning in caught).items():
        report.notes.append(f"neo warning while reading: {message} ({count} times)")
    return block


def _bin_segment(
    path: Path, segment: Any, channel_ids: list[int], bin_us: int, report: ReplayReport
) -> SpikeSegment:
    """Count crossings per bin and electrode, shape (bins, channels)."""
    if not segment.spiketrains:
        raise RecordingFormatError(path, "NEV file has no spike channels to bin")
    start_us = round(float(segment.t_start.rescale("s").magnitude) * 1_000_000)
    stop_us = round(float(segment.t_stop.rescale("s").magnitude) * 1_000_000)
    n_bins = (stop_us - start_us) // bin_us + 1
    column = {channel: index for index, channel in enumerate(channel_ids)}
    counts = np.zeros((n_bins, len(channel_ids)), dtype=np.int64)

    for train in segment.spiketrains:
        times_us = np.rint(train.rescale("s").magnitude * 1_000_000).astype(np.int64)
        bins = (times_us - start_us) // bin_us
        outside = (bins < 0) | (bins >= n_bins)
        if np.any(outside):
            report.skip(
                "crossing outside its segment",
                f"{train.name}: {int(outside.sum())} crossings lie outside the segment "
                f"{start_us / 1e6:.6f}-{stop_us / 1e6:.6f} s, omitted",
            )
        channel = column[int(train.annotations["channel_id"])]
        counts[:, channel] += np.bincount(bins[~outside], minlength=n_bins)
        report.read["spikes"] += int((~outside).sum())
    return SpikeSegment(start_us, counts)


def _report_unreplayed_events(block: Any, report: ReplayReport) -> None:
    for segment in block.segments:
        for event in segment.events:
            if len(event):
                report.skip(
                    f"{event.name} not replayed",
                    f"{len(event)} {event.name} events are not replayed: their meaning is "
                    "specific to the lab's task",
                )


def _start_time(
    path: Path,
    header: NevHeader,
    neo_datetime: datetime | None,
    options: ReplayOptions,
    report: ReplayReport,
) -> datetime:
    """Return the recording start: the caller's, else the header's time origin.

    NOTE: the header stores the time origin without a zone and neo returns it as a naive
    datetime. It is read as UTC, which files rewritten by lab scripts may not follow.
    """
    origin = header.time_origin
    if origin is None and neo_datetime is not None:
        origin = neo_datetime.replace(tzinfo=UTC)
    name_date = _date_from_name(path.name)
    if origin is not None and name_date is not None and origin.date() != name_date:
        report.notes.append(
            f"date in the file name ({name_date.isoformat()}) differs from the NEV time origin "
            f"({origin.date().isoformat()}), so the time origin is used"
        )

    if options.start_time is not None:
        report.notes.append("start time given by the caller")
        return options.start_time
    if origin is not None:
        report.notes.append("start time from the NEV time origin, read as UTC")
        return origin
    report.notes.append(
        f"NEV time origin is invalid, so the start time is {UNDATED_START_TIME.isoformat()}"
    )
    return UNDATED_START_TIME


def _date_from_name(name: str) -> date | None:
    match = _NAME_DATE.search(name)
    if match is None:
        return None
    try:
        return date(*(int(part) for part in match.groups()))
    except ValueError:
        return None


def _metadata(path: Path, header: NevHeader) -> dict[str, str]:
    metadata = {
        "source_file": path.name,
        "source_kind": KIND,
        "nev.file_type": header.file_type,
        "nev.spec": header.spec,
        "nev.timestamp_resolution_hz": str(header.timestamp_resolution_hz),
        "nev.application": header.application,
    }
    if header.time_origin is not None:
        metadata["nev.time_origin"] = header.time_origin.isoformat()
    if header.comment:
        metadata["nev.comment"] = header.comment
    return metadata


def _c_string(raw: bytes) -> str:
    return raw.split(b"\x00", 1)[0].decode("latin-1").strip()
