"""Recognise a recording's kind from its content and open it with the matching reader."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Final

import h5py
import scipy.io

from boards.replay import blackrock, brochier, icub, limblab
from boards.replay.errors import RecordingFormatError
from boards.replay.events import DEFAULT_BINS_PER_FRAME, ReplayOptions
from boards.replay.recording import Recording

Reader = Callable[[Path, ReplayOptions], Recording]

READERS: Final[dict[str, Reader]] = {
    limblab.KIND: limblab.open_limblab,
    brochier.KIND: brochier.open_brochier,
    icub.KIND: icub.open_icub,
    blackrock.KIND: blackrock.open_blackrock,
}

_HDF5_SIGNATURE: Final = b"\x89HDF\r\n\x1a\n"
_MAT_V73_USERBLOCK: Final = 512


def detect_kind(path: Path | str) -> str:
    """Return the reader kind of a recording, one of the keys of READERS.

    Folders and ``.txt`` files are iCub grasps. Other files are recognised by content: the NEV
    file type id, a MATLAB 7.3 (HDF5) file with datasets D and GRIP, or a MATLAB v5 file with a
    ``binnedData`` or ``train_data`` struct. Raises FileNotFoundError for a missing path and
    RecordingFormatError for any other file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: recording not found")
    if path.is_dir() or path.suffix.lower() == ".txt":
        return icub.KIND

    with path.open("rb") as file:
        head = file.read(_MAT_V73_USERBLOCK + len(_HDF5_SIGNATURE))
    if head[:8] in blackrock.NEV_FILE_TYPES:
        return blackrock.KIND
    if head[_MAT_V73_USERBLOCK:] == _HDF5_SIGNATURE or head.startswith(_HDF5_SIGNATURE):
        return _detect_hdf5(path)
    if head.startswith(b"MATLAB 5.0 MAT-file"):
        return _detect_mat_v5(path)
    raise RecordingFormatError(
        path,
        "unknown recording kind: expected a NEV file, a MATLAB v5 or 7.3 file, "
        f"or an iCub grasp folder, but the file starts with {head[:20]!r}",
    )


def _detect_hdf5(path: Path) -> str:
    with h5py.File(path, "r") as file:
        names = sorted(file)
    if {"D", "GRIP"} <= set(names):
        return brochier.KIND
    raise RecordingFormatError(
        path, f"HDF5 file without the Brochier datasets D and GRIP, found {names}"
    )


def _detect_mat_v5(path: Path) -> str:
    try:
        names = [name for name, _, _ in scipy.io.whosmat(path)]
    except (ValueError, TypeError, OSError) as exc:
        raise RecordingFormatError(
            path, f"cannot list the variables of the MAT file ({exc})"
        ) from exc
    if any(name in limblab.STRUCT_NAMES for name in names):
        return limblab.KIND
    raise RecordingFormatError(
        path, f"MAT file without a struct {' or '.join(limblab.STRUCT_NAMES)}, found {names}"
    )


def open_recording(
    path: Path | str,
    *,
    board_id: str,
    subject_id: str,
    session_id: str | None = None,
    bin_ms: int | None = None,
    bins_per_frame: int = DEFAULT_BINS_PER_FRAME,
    start_time: datetime | None = None,
) -> Recording:
    """Detect the kind of a recording file or folder and read it with its reader.

    Args:
        path: recording file, or an iCub grasp folder.
        board_id: id of the board that replays the recording.
        subject_id: id of the subject. It is identifying, so it is never logged.
        session_id: session id. None derives a stable one from board id and file name.
        bin_ms: spike bin width in ms. None keeps the reader's default (50 ms for every kind).
        bins_per_frame: spike bins per SpikeFrame. The last frame of a run may have fewer.
        start_time: timezone-aware start of the recording, replacing the file's own date.

    Reader-specific options (trial gaps, iCub sample period and object selection) are
    keyword arguments of the readers' ``open_*`` functions.
    """
    options = ReplayOptions(
        board_id=board_id,
        subject_id=subject_id,
        session_id=session_id,
        bin_ms=bin_ms,
        bins_per_frame=bins_per_frame,
        start_time=start_time,
    )
    kind = detect_kind(path)
    return READERS[kind](Path(path), options)
