"""Tests of packing and unpacking spike counts."""

from __future__ import annotations

import numpy as np
import pytest

from schemas.counts import COUNT_DTYPES, check_counts, pack_counts, unpack_counts
from schemas.exceptions import InvalidRecordError, ShapeError


@pytest.mark.parametrize("name", list(COUNT_DTYPES))
def test_pack_unpack_every_dtype(name: str) -> None:
    counts = (np.arange(12).reshape(4, 3) * 9).astype(name)  # (n_bins, n_channels)
    fields = pack_counts(counts)
    assert fields["dtype"] == name
    assert (fields["n_bins"], fields["n_channels"]) == (4, 3)
    assert len(fields["counts"]) == 12 * np.dtype(name).itemsize

    unpacked = unpack_counts(fields)
    assert unpacked.shape == (4, 3)
    assert unpacked.dtype == COUNT_DTYPES[name]
    np.testing.assert_array_equal(unpacked, counts)


def test_pack_is_little_endian_row_major() -> None:
    counts = np.array([[0x0102, 0x0304], [0x0506, 0x0708]], dtype=">u2")  # big-endian input
    fields = pack_counts(counts)
    assert fields["dtype"] == "uint16"
    assert fields["counts"] == bytes.fromhex("0201 0403 0605 0807")


def test_pack_column_slice() -> None:
    counts = np.arange(20, dtype=np.uint8).reshape(4, 5)[:, ::2]  # not C-contiguous
    np.testing.assert_array_equal(unpack_counts(pack_counts(counts)), counts)


def test_pack_casts_to_dtype() -> None:
    counts = np.array([[0, 255], [7, 1]], dtype=np.int64)
    fields = pack_counts(counts, dtype="uint8")
    assert fields["dtype"] == "uint8"
    assert fields["counts"] == bytes([0, 255, 7, 1])


def test_pack_cast_overflow_raises() -> None:
    counts = np.array([[0, 256]], dtype=np.int64)
    with pytest.raises(
        InvalidRecordError, match="expected values from 0 to 255, received .* to 256"
    ):
        pack_counts(counts, dtype="uint8")


def test_pack_negative_to_unsigned_raises() -> None:
    with pytest.raises(InvalidRecordError, match="received values from -1 to 3"):
        pack_counts(np.array([[-1, 3]], dtype=np.int16), dtype="uint16")


def test_pack_int64_without_dtype_raises() -> None:
    with pytest.raises(
        ShapeError, match="expected one of uint8, uint16, int16, int32, received 'int64'"
    ):
        pack_counts(np.zeros((2, 2), dtype=np.int64))


def test_pack_float_array_raises() -> None:
    with pytest.raises(ShapeError, match="expected an integer array, received dtype float32"):
        pack_counts(np.zeros((2, 2), dtype=np.float32), dtype="uint8")


@pytest.mark.parametrize("shape", [(6,), (1, 2, 3)])
def test_pack_wrong_ndim_raises(shape: tuple[int, ...]) -> None:
    with pytest.raises(ShapeError, match=rf"received shape \({shape[0]},"):
        pack_counts(np.zeros(shape, dtype=np.uint8))


@pytest.mark.parametrize("shape", [(0, 96), (3, 0)])
def test_pack_empty_raises(shape: tuple[int, int]) -> None:
    with pytest.raises(ShapeError, match="expected at least one bin and one channel"):
        pack_counts(np.zeros(shape, dtype=np.uint8))


def test_unpack_is_read_only() -> None:
    unpacked = unpack_counts(pack_counts(np.ones((2, 2), dtype=np.uint8)))
    assert not unpacked.flags.writeable


def test_unpack_wrong_length_names_position() -> None:
    fields = pack_counts(np.ones((2, 3), dtype=np.int32))
    fields["counts"] = fields["counts"][:-4]
    with pytest.raises(ShapeError) as caught:
        unpack_counts(fields, where="raw.spikes[0]@9")
    message = str(caught.value)
    assert message.startswith("raw.spikes[0]@9: ")
    assert "expected 24 bytes (n_bins 2 x n_channels 3 x 4 bytes of int32)" in message
    assert message.endswith("received 20 bytes")


def test_unpack_unknown_dtype_raises() -> None:
    fields = pack_counts(np.ones((2, 2), dtype=np.uint8))
    fields["dtype"] = "float16"
    with pytest.raises(ShapeError, match="^raw.spikes@3: unknown spike count dtype"):
        unpack_counts(fields, where="raw.spikes@3")


@pytest.mark.parametrize(("n_bins", "n_channels"), [(0, 4), (4, 0), (-1, -4)])
def test_check_non_positive_shape_raises(n_bins: int, n_channels: int) -> None:
    record = {"dtype": "uint8", "n_bins": n_bins, "n_channels": n_channels, "counts": b""}
    with pytest.raises(ShapeError, match=f"received n_bins {n_bins} and n_channels {n_channels}"):
        check_counts(record)


def test_check_returns_dtype() -> None:
    record = {"dtype": "int16", "n_bins": 1, "n_channels": 2, "counts": bytes(4)}
    assert check_counts(record) == np.dtype("<i2")
