"""Packing of spike counts into the `dtype`, `n_bins`, `n_channels` and `counts` fields.

A SpikeFrame carries its counts as one packed row-major little-endian array of shape
(n_bins, n_channels), because an Avro array of ints is slow to decode in Python.

>>> import numpy as np
>>> fields = pack_counts(np.array([[0, 1, 2], [3, 4, 5]], dtype=np.uint16))
>>> fields["dtype"], fields["n_bins"], fields["n_channels"], len(fields["counts"])
('uint16', 2, 3, 12)
>>> unpack_counts(fields).tolist()
[[0, 1, 2], [3, 4, 5]]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from schemas.exceptions import InvalidRecordError, ShapeError, format_prefix

# Values of the SpikeFrame `dtype` field and the numpy dtype of each, always little-endian.
COUNT_DTYPES: Final[Mapping[str, np.dtype[Any]]] = {
    "uint8": np.dtype("<u1"),
    "uint16": np.dtype("<u2"),
    "int16": np.dtype("<i2"),
    "int32": np.dtype("<i4"),
}

CountArray = npt.NDArray[np.integer[Any]]


def pack_counts(counts: CountArray, *, dtype: str | None = None) -> dict[str, Any]:
    """Pack a (n_bins, n_channels) integer array into the four SpikeFrame count fields.

    `dtype` names the element type to send (a key of `COUNT_DTYPES`). It defaults to the
    array's own type, which then must be one of them. Casting to a narrower type raises
    `InvalidRecordError` when a count does not fit, and a bad shape or type raises `ShapeError`.
    """
    array = np.asarray(counts)
    if array.ndim != 2:
        raise ShapeError(
            f"invalid spike counts: expected a 2-D array (n_bins, n_channels), "
            f"received shape {array.shape}"
        )
    n_bins, n_channels = array.shape
    if n_bins < 1 or n_channels < 1:
        raise ShapeError(
            f"invalid spike counts: expected at least one bin and one channel, "
            f"received shape {array.shape}"
        )
    if array.dtype.kind not in "iu":
        raise ShapeError(
            f"invalid spike counts: expected an integer array, received dtype {array.dtype}"
        )

    name = dtype if dtype is not None else array.dtype.name
    target = _count_dtype(name, where="")
    if not np.can_cast(array.dtype, target, casting="safe"):
        _check_range(array, name, target)

    packed = np.ascontiguousarray(array, dtype=target)  # (n_bins, n_channels), little-endian
    return {
        "dtype": name,
        "n_bins": int(n_bins),
        "n_channels": int(n_channels),
        "counts": packed.tobytes(),
    }


def unpack_counts(record: Mapping[str, Any], *, where: str = "") -> CountArray:
    """Return the spike counts of a spike frame record as a read-only (n_bins, n_channels) array.

    `where` starts every error message, usually a position such as ``raw.spikes[2]@1041``.
    Raises `ShapeError` when the fields disagree, as `check_counts` does.
    """
    dtype = check_counts(record, where=where)
    flat = np.frombuffer(record["counts"], dtype=dtype)
    return flat.reshape(record["n_bins"], record["n_channels"])  # (n_bins, n_channels)


def check_counts(record: Mapping[str, Any], *, where: str = "") -> np.dtype[Any]:
    """Check the count fields of a spike frame record and return the numpy dtype of `counts`.

    Raises `ShapeError` for an unknown dtype, a non-positive `n_bins` or `n_channels`,
    or a `counts` byte length other than n_bins * n_channels * item size.
    """
    dtype = _count_dtype(record["dtype"], where=where)
    n_bins = record["n_bins"]
    n_channels = record["n_channels"]
    if n_bins < 1 or n_channels < 1:
        raise ShapeError(
            f"{format_prefix(where)}invalid spike count shape: expected n_bins >= 1 and "
            f"n_channels >= 1, received n_bins {n_bins} and n_channels {n_channels}"
        )

    expected = n_bins * n_channels * dtype.itemsize
    received = len(record["counts"])
    if received != expected:
        raise ShapeError(
            f"{format_prefix(where)}spike counts have the wrong length: expected {expected} "
            f"bytes (n_bins {n_bins} x n_channels {n_channels} x {dtype.itemsize} bytes of "
            f"{record['dtype']}), received {received} bytes"
        )
    return dtype


def _count_dtype(name: str, *, where: str) -> np.dtype[Any]:
    try:
        return COUNT_DTYPES[name]
    except KeyError:
        raise ShapeError(
            f"{format_prefix(where)}unknown spike count dtype: expected one of "
            f"{', '.join(COUNT_DTYPES)}, received {name!r}"
        ) from None


def _check_range(array: CountArray, name: str, target: np.dtype[Any]) -> None:
    limits = np.iinfo(target)
    low = int(array.min())
    high = int(array.max())
    if low < limits.min or high > limits.max:
        raise InvalidRecordError(
            f"spike counts do not fit in {name}: expected values from {limits.min} to "
            f"{limits.max}, received values from {low} to {high}. Pick a wider dtype"
        )
