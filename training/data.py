"""Gold datasets as memory-mapped numpy arrays, and windows of steps cut from them by index.

``load_gold`` reads the gold Delta table ``<lake>/gold/datasets/<name>`` once with pyarrow and
sorts its rows by subject, session day, session and step. It saves each column as a ``.npy``
file in a cache folder keyed by the table version and the manifest's content hash. Later
calls open those files with ``np.load(mmap_mode="r")``, so several training processes share
one copy in the page cache.

``select_targets`` picks the rows that a model is trained or tested on: rows of the requested
splits whose window of ``window`` steps lies inside one session, with contiguous step indexes
and no gap step. Excluded steps (steps of aborted, failed or incomplete trials) are dropped
as targets and counted in the returned report; they still appear as context inside other
rows' windows, as they would on a board.

``WindowDataset`` returns ``features[i - window + 1 : i + 1]`` for each selected row ``i``: a
view of the memory map, copied only when ``collate_windows`` stacks a batch.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import torch
from pyarrow import fs
from torch.utils.data import Dataset

from training.errors import DatasetError

logger = logging.getLogger(__name__)

SPLITS: Final = ("train", "validation", "test")
OUTCOMES: Final = ("reward", "abort", "fail", "incomplete")
NO_OFFSET: Final = np.iinfo(np.int32).min
"""``steps_from_go`` of a step outside every trial (null in the table)."""

REQUIRED_COLUMNS: Final = (
    "subject_pseudonym",
    "session_pseudonym",
    "session_day",
    "step_index",
    "counts",
    "features",
    "label_index",
    "trial_id",
    "trial_outcome",
    "trial_class",
    "steps_from_go",
    "excluded",
    "gap",
    "split",
)
SORT_COLUMNS: Final = ("subject_pseudonym", "session_day", "session_pseudonym", "step_index")

# Arrays saved per column, in the order ``StepArrays`` lists them.
ARRAY_NAMES: Final = (
    "features",
    "counts",
    "label_index",
    "split",
    "subject",
    "session",
    "session_day",
    "step_index",
    "trial_id",
    "trial_outcome",
    "trial_class",
    "steps_from_go",
    "excluded",
    "gap",
)
_INFO_FILE: Final = "dataset.json"


@dataclass(frozen=True)
class DatasetInfo:
    """Names behind the integer codes of ``StepArrays``, and the dataset's manifest."""

    name: str
    classes: list[str]
    """Class names in ``label_index`` order."""
    subjects: list[str]
    """Subject pseudonyms; ``StepArrays.subject`` indexes this list."""
    sessions: list[str]
    """Session pseudonyms; ``StepArrays.session`` indexes this list."""
    channels: dict[str, int]
    """Channel count of each subject; ``features`` is padded with zeros to the largest."""
    step_ms: int
    window: int | None
    """Window length in steps that the dataset was prepared for (manifest parameter)."""
    trial_classes: list[str]
    """Classes that name a trial's target or grasp: those found in ``trial_class``."""
    content_hash: str
    table_version: int | None
    manifest: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class StepArrays:
    """One row per step, sorted by subject, session day, session and step index.

    Codes: ``split`` indexes ``SPLITS`` (-1 for another value), ``trial_outcome`` indexes
    ``OUTCOMES`` (-1 for none), ``trial_class`` indexes ``info.classes`` (-1 for none),
    ``trial_id`` is -1 outside trials and ``steps_from_go`` is ``NO_OFFSET`` there.
    """

    info: DatasetInfo
    features: npt.NDArray[np.float32]  # (steps, channels)
    counts: npt.NDArray[np.int32]  # (steps, channels)
    label_index: npt.NDArray[np.int64]  # (steps,)
    split: npt.NDArray[np.int8]
    subject: npt.NDArray[np.int32]
    session: npt.NDArray[np.int32]
    session_day: npt.NDArray[np.int32]
    step_index: npt.NDArray[np.int64]
    trial_id: npt.NDArray[np.int64]
    trial_outcome: npt.NDArray[np.int8]
    trial_class: npt.NDArray[np.int32]
    steps_from_go: npt.NDArray[np.int32]
    excluded: npt.NDArray[np.bool_]
    gap: npt.NDArray[np.bool_]

    def __len__(self) -> int:
        return int(self.label_index.shape[0])

    @property
    def n_channels(self) -> int:
        """Width of ``features``: the largest channel count of any subject."""
        return int(self.features.shape[1])

    def split_code(self, split: str) -> int:
        """Return the code of a split name in ``split``."""
        if split not in SPLITS:
            raise DatasetError(f"unknown split {split!r}; expected one of {SPLITS}")
        return SPLITS.index(split)

    def session_starts(self) -> npt.NDArray[np.int64]:
        """Return, for every row, the row index where its session begins."""
        change = np.ones(len(self), dtype=bool)
        change[1:] = self.session[1:] != self.session[:-1]
        starts = np.flatnonzero(change)  # (sessions,)
        return starts[np.cumsum(change) - 1]  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------
# Loading


def dataset_uri(lake_uri: str, name: str) -> str:
    """Return the URI of the gold Delta table of dataset ``name``."""
    return f"{lake_uri.rstrip('/')}/gold/datasets/{name}"


def manifest_uri(lake_uri: str, name: str) -> str:
    """Return the URI of the JSON manifest of dataset ``name``."""
    return f"{lake_uri.rstrip('/')}/gold/manifests/{name}.json"


def read_manifest(uri: str) -> dict[str, Any]:
    """Read a dataset manifest from a local path or an object-store URI.

    Raises DatasetError when it is missing, is not a JSON object or lacks ``classes`` or
    ``content_hash``.
    """
    filesystem, path = _filesystem(uri)
    try:
        with filesystem.open_input_stream(path) as stream:
            manifest = json.loads(stream.read().decode())
    except FileNotFoundError as exc:
        raise DatasetError(
            f"dataset manifest {uri} not found; prepare the dataset first with "
            "`bcratos jobs prepare --name NAME`"
        ) from exc
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read dataset manifest {uri}: {exc}") from exc
    if not isinstance(manifest, dict):
        raise DatasetError(f"dataset manifest {uri} must be a JSON object, got {type(manifest)}")
    missing = [key for key in ("classes", "content_hash") if key not in manifest]
    if missing:
        raise DatasetError(f"dataset manifest {uri} lacks the keys {missing}")
    return manifest


def load_gold(lake_uri: str, name: str, cache_dir: Path) -> StepArrays:
    """Return the gold dataset ``name`` as memory-mapped arrays, building the cache if needed.

    The cache folder is ``cache_dir/<name>-v<table version>-<hash prefix>``; a new table
    version or content hash gets a new folder. Raises DatasetError when the table or the
    manifest is missing or the table lacks a column of the gold layout.
    """
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    manifest = read_manifest(manifest_uri(lake_uri, name))
    table_uri = dataset_uri(lake_uri, name)
    try:
        table = DeltaTable(table_uri)
    except TableNotFoundError as exc:
        raise DatasetError(
            f"no Delta table at {table_uri}; prepare the dataset with "
            "`bcratos jobs prepare --name NAME`"
        ) from exc
    version = table.version()
    content_hash = str(manifest["content_hash"])
    folder = cache_dir / f"{name}-v{version}-{_hash_prefix(content_hash)}"
    if not (folder / _INFO_FILE).exists():
        arrow = table.to_pyarrow_table(columns=list(_columns_to_read(table)))
        logger.info("read %d rows of %s at version %d", arrow.num_rows, table_uri, version)
        arrays = arrays_from_arrow(
            arrow, name=name, manifest=manifest, table_version=version, source=table_uri
        )
        save_arrays(arrays, folder)
    return open_arrays(folder)


def _columns_to_read(table: Any) -> list[str]:
    present = {item.name for item in table.schema().fields}
    missing = [column for column in REQUIRED_COLUMNS if column not in present]
    if missing:
        raise DatasetError(
            f"gold table {table.table_uri} lacks the columns {missing}; it has {sorted(present)}"
        )
    return list(REQUIRED_COLUMNS)


def arrays_from_arrow(
    arrow: pa.Table,
    *,
    name: str,
    manifest: Mapping[str, Any],
    table_version: int | None = None,
    source: str = "",
) -> StepArrays:
    """Convert gold rows (any order) to sorted ``StepArrays`` in memory."""
    if arrow.num_rows == 0:
        raise DatasetError(f"gold table {source or name} has no rows")
    arrow = arrow.sort_by([(column, "ascending") for column in SORT_COLUMNS])
    classes = [str(label) for label in manifest["classes"]]

    subjects, subject_codes = _codes(arrow["subject_pseudonym"])
    sessions, session_codes = _codes(arrow["session_pseudonym"])
    channels = _channels_per_subject(arrow, subjects, subject_codes, source or name)
    width = max(channels.values())
    trial_class_names = sorted(
        {str(value) for value in arrow["trial_class"].to_pylist() if value is not None}
    )
    unknown = [value for value in trial_class_names if value not in classes]
    if unknown:
        raise DatasetError(
            f"gold table {source or name} has trial classes {unknown} that the manifest's "
            f"classes {classes} lack"
        )

    parameters = manifest.get("parameters", {})
    info = DatasetInfo(
        name=name,
        classes=classes,
        subjects=subjects,
        sessions=sessions,
        channels=channels,
        step_ms=int(parameters.get("step_ms", 50)),
        window=int(parameters["window"]) if "window" in parameters else None,
        trial_classes=[name for name in classes if name in trial_class_names],
        content_hash=str(manifest["content_hash"]),
        table_version=table_version,
        manifest=dict(manifest),
    )
    return StepArrays(
        info=info,
        features=_list_matrix(arrow["features"], width, np.float32),
        counts=_list_matrix(arrow["counts"], width, np.int32),
        label_index=_numbers(arrow["label_index"], np.int64, fill=-1),
        split=_lookup(arrow["split"], SPLITS, np.int8),
        subject=subject_codes,
        session=session_codes,
        session_day=_numbers(arrow["session_day"], np.int32, fill=0),
        step_index=_numbers(arrow["step_index"], np.int64, fill=-1),
        trial_id=_numbers(arrow["trial_id"], np.int64, fill=-1),
        trial_outcome=_lookup(arrow["trial_outcome"], OUTCOMES, np.int8),
        trial_class=_lookup(arrow["trial_class"], tuple(classes), np.int32),
        steps_from_go=_numbers(arrow["steps_from_go"], np.int32, fill=NO_OFFSET),
        excluded=_numbers(arrow["excluded"], np.bool_, fill=False),
        gap=_numbers(arrow["gap"], np.bool_, fill=False),
    )


def _codes(column: pa.ChunkedArray) -> tuple[list[str], npt.NDArray[np.int32]]:
    """Return a column's distinct strings in first-seen order and each row's index into them."""
    encoded = pc.dictionary_encode(column).combine_chunks()
    names = [str(value) for value in encoded.dictionary.to_pylist()]
    return names, encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32)


def _channels_per_subject(
    arrow: pa.Table, subjects: list[str], codes: npt.NDArray[np.int32], source: str
) -> dict[str, int]:
    lengths = pc.list_value_length(arrow["counts"]).to_numpy(zero_copy_only=False)
    channels: dict[str, int] = {}
    for index, subject in enumerate(subjects):
        widths = np.unique(lengths[codes == index])
        if widths.size != 1 or widths[0] <= 0:
            raise DatasetError(
                f"gold table {source}: steps of subject {subject} have channel counts "
                f"{widths.tolist()}; expected one positive count per subject"
            )
        channels[subject] = int(widths[0])
    return channels


def _list_matrix(column: pa.ChunkedArray, width: int, dtype: type[np.generic]) -> Any:
    """Turn a list column into a (rows, width) matrix, padding shorter lists with zeros."""
    lists = column.combine_chunks()
    lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False)
    values = lists.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    if np.all(lengths == width):
        return values.reshape(len(lists), width)
    matrix = np.zeros((len(lists), width), dtype=dtype)
    rows = np.repeat(np.arange(len(lists)), lengths)
    positions = np.arange(values.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    matrix[rows, positions] = values
    return matrix


def _numbers(column: pa.ChunkedArray, dtype: type[np.generic], *, fill: Any) -> Any:
    filled = pc.fill_null(column, fill) if column.null_count else column
    return filled.to_numpy().astype(dtype, copy=False)


def _lookup(column: pa.ChunkedArray, names: Sequence[str], dtype: type[np.generic]) -> Any:
    """Return each row's index into ``names``; -1 for null or a name not in the list."""
    indexes = pc.index_in(column, value_set=pa.array(list(names), type=pa.string()))
    return pc.fill_null(indexes, -1).to_numpy().astype(dtype)


def save_arrays(arrays: StepArrays, folder: Path) -> None:
    """Write the arrays as ``.npy`` files and the info as JSON into ``folder``.

    The files are written to a temporary folder beside it and renamed, so a reader never sees
    a half-written cache. When another process finished the same folder first, its copy wins.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        for array_name in ARRAY_NAMES:
            np.save(staging / f"{array_name}.npy", getattr(arrays, array_name))
        (staging / _INFO_FILE).write_text(json.dumps(asdict(arrays.info)) + "\n")
        try:
            os.rename(staging, folder)
        except OSError:
            if not (folder / _INFO_FILE).exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("cached %d steps of dataset %s in %s", len(arrays), arrays.info.name, folder)


def open_arrays(folder: Path) -> StepArrays:
    """Open a cache folder written by ``save_arrays`` with read-only memory maps."""
    try:
        info = DatasetInfo(**json.loads((folder / _INFO_FILE).read_text()))
        loaded = {
            array_name: np.load(folder / f"{array_name}.npy", mmap_mode="r")
            for array_name in ARRAY_NAMES
        }
    except (OSError, ValueError, TypeError) as exc:
        raise DatasetError(
            f"dataset cache {folder} is incomplete or unreadable ({exc}); delete the folder "
            "to rebuild it"
        ) from exc
    return StepArrays(info=info, **loaded)


def _filesystem(uri: str) -> tuple[fs.FileSystem, str]:
    if "://" not in uri or uri.startswith("file://"):
        local = uri.removeprefix("file://")
        return fs.LocalFileSystem(), os.path.abspath(local)
    filesystem, path = fs.FileSystem.from_uri(uri)
    return filesystem, path


def _hash_prefix(content_hash: str) -> str:
    return content_hash.split(":", 1)[-1][:12]


# ---------------------------------------------------------------------------------------------
# Selection of target rows


@dataclass(frozen=True)
class Selection:
    """Target rows of a split selection, and how many rows each rule dropped."""

    indexes: npt.NDArray[np.int64]
    """Row indexes of the selected targets, ascending."""
    candidates: int
    """Rows of the requested splits and subjects, before the rules below."""
    dropped_excluded: int
    """Rows dropped because their step belongs to an aborted, failed or incomplete trial."""
    dropped_incomplete_window: int
    """Rows dropped because their window leaves the session, skips steps or contains a gap."""
    dropped_unlabelled: int
    """Rows dropped because their label index is negative (no class)."""

    def describe(self) -> str:
        """Return a one-line summary for logs."""
        return (
            f"{self.indexes.size} of {self.candidates} rows selected; dropped "
            f"{self.dropped_excluded} excluded, {self.dropped_incomplete_window} with an "
            f"incomplete window, {self.dropped_unlabelled} without a label"
        )


def complete_windows(arrays: StepArrays, window: int) -> npt.NDArray[np.bool_]:
    """Return, per row, whether its ``window`` steps lie in its session, contiguous, gap-free."""
    rows = np.arange(len(arrays))
    first = rows - (window - 1)  # (steps,) first row of each window
    inside = first >= arrays.session_starts()
    safe_first = np.maximum(first, 0)
    contiguous = (arrays.step_index - arrays.step_index[safe_first]) == window - 1
    gaps_before = np.concatenate(([0], np.cumsum(arrays.gap, dtype=np.int64)))  # (steps + 1,)
    gap_free = (gaps_before[rows + 1] - gaps_before[safe_first]) == 0
    return inside & contiguous & gap_free  # type: ignore[no-any-return]


def select_targets(
    arrays: StepArrays,
    window: int,
    *,
    splits: Sequence[str],
    subjects: Sequence[str] | None = None,
    include_excluded: bool = False,
) -> Selection:
    """Return the rows of ``splits`` (and ``subjects``) usable as targets for ``window`` steps.

    Excluded steps are dropped unless ``include_excluded`` is true; either way the count is
    reported, so excluded steps never enter a training set unnoticed.
    """
    if window < 1:
        raise ValueError(f"window must be at least 1 step, got {window}")
    requested = np.isin(arrays.split, [arrays.split_code(split) for split in splits])
    if subjects is not None:
        unknown = [name for name in subjects if name not in arrays.info.subjects]
        if unknown:
            raise DatasetError(
                f"subjects {unknown} are not in dataset {arrays.info.name}; it has "
                f"{arrays.info.subjects}"
            )
        codes = [arrays.info.subjects.index(name) for name in subjects]
        requested &= np.isin(arrays.subject, codes)

    complete = complete_windows(arrays, window)
    excluded = (
        np.zeros(len(arrays), dtype=bool) if include_excluded else np.asarray(arrays.excluded)
    )
    labelled = np.asarray(arrays.label_index) >= 0
    keep = requested & complete & ~excluded & labelled
    selection = Selection(
        indexes=np.flatnonzero(keep).astype(np.int64),
        candidates=int(requested.sum()),
        dropped_excluded=int((requested & excluded).sum()),
        dropped_incomplete_window=int((requested & ~excluded & ~complete).sum()),
        dropped_unlabelled=int((requested & ~excluded & complete & ~labelled).sum()),
    )
    logger.info("splits %s of %s: %s", list(splits), arrays.info.name, selection.describe())
    return selection


# ---------------------------------------------------------------------------------------------
# Windows


WindowItem = tuple[npt.NDArray[np.float32], int, int]
"""One sample: the window (time, channels), its label index and its subject index."""


@dataclass(frozen=True)
class WindowBatch:
    """Samples gathered at once: windows (batch, time, channels), labels and subject indexes."""

    windows: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64]
    subjects: npt.NDArray[np.int64]


class WindowDataset(Dataset[WindowItem]):
    """Windows of ``features`` ending at the selected rows, as views of the arrays.

    ``subject_index`` maps a dataset subject code to the decoder's read-in index; by default
    they are the same.
    """

    def __init__(
        self,
        features: npt.NDArray[np.float32],
        labels: npt.NDArray[np.int64],
        subjects: npt.NDArray[np.int32],
        indexes: npt.NDArray[np.int64],
        window: int,
        *,
        subject_index: Mapping[int, int] | None = None,
    ) -> None:
        if indexes.size and int(indexes.min()) < window - 1:
            raise ValueError(
                f"row {int(indexes.min())} has fewer than {window - 1} rows before it; "
                "select targets with select_targets()"
            )
        self.features = features
        self.labels = labels
        self.subjects = subjects
        self.indexes = indexes
        self.window = window
        self.subject_index = dict(subject_index) if subject_index is not None else None

    @classmethod
    def from_arrays(
        cls,
        arrays: StepArrays,
        selection: Selection,
        window: int,
        *,
        subject_index: Mapping[int, int] | None = None,
    ) -> WindowDataset:
        """Return the windows of a selection over the arrays' normalized features."""
        return cls(
            arrays.features,
            arrays.label_index,
            arrays.subject,
            selection.indexes,
            window,
            subject_index=subject_index,
        )

    def __len__(self) -> int:
        return int(self.indexes.size)

    def __getitem__(self, position: int) -> WindowItem:
        row = int(self.indexes[position])
        window = self.features[row - self.window + 1 : row + 1]  # (time, channels), a view
        subject = int(self.subjects[row])
        if self.subject_index is not None:
            subject = self.subject_index[subject]
        return window, int(self.labels[row]), subject

    def __getitems__(self, positions: Sequence[int]) -> WindowBatch:
        """Return a whole batch with one gather, which DataLoader prefers to one call per item."""
        rows = self.indexes[np.asarray(positions, dtype=np.int64)]  # (batch,)
        steps = rows[:, None] + np.arange(1 - self.window, 1)  # (batch, time)
        windows = np.asarray(self.features[steps], dtype=np.float32)  # (batch, time, channels)
        subjects = np.asarray(self.subjects[rows], dtype=np.int64)
        if self.subject_index is not None:
            subjects = np.array([self.subject_index[int(code)] for code in subjects], np.int64)
        return WindowBatch(windows, np.asarray(self.labels[rows], dtype=np.int64), subjects)

    def labels_of_targets(self) -> npt.NDArray[np.int64]:
        """Return the label index of every target row, in dataset order."""
        return np.asarray(self.labels[self.indexes], dtype=np.int64)


def collate_windows(
    items: Sequence[WindowItem] | WindowBatch,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack samples into x (batch, time, channels), y (batch,) and subject (batch,) tensors."""
    if isinstance(items, WindowBatch):
        return (
            torch.from_numpy(items.windows),
            torch.from_numpy(items.labels),
            torch.from_numpy(items.subjects),
        )
    windows = np.stack([item[0] for item in items])  # (batch, time, channels), one copy
    labels = np.fromiter((item[1] for item in items), dtype=np.int64, count=len(items))
    subjects = np.fromiter((item[2] for item in items), dtype=np.int64, count=len(items))
    return (
        torch.from_numpy(windows.astype(np.float32, copy=False)),
        torch.from_numpy(labels),
        torch.from_numpy(subjects),
    )
