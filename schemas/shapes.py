"""Checks of the sizes within one record that Avro types cannot express.

The codec runs the check that `find_shape_check` picks for a record after every decode and
before every encode. A check is picked by the record's fields, so an anonymized counterpart
such as AnonSpikeFrame gets the check of SpikeFrame. Each check raises `ShapeError` with
`where` (a position or an empty string) at the start of its message.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Set
from functools import partial
from typing import Any, Final

from schemas.counts import check_counts
from schemas.exceptions import ShapeError, format_prefix

ShapeCheck = Callable[[Mapping[str, Any], str], None]

_SPIKE_FRAME_FIELDS: Final = frozenset({"bin_ms", "n_bins", "n_channels", "dtype", "counts"})
_ESKIN_FRAME_FIELDS: Final = frozenset({"n_taxels", "pressures"})
_DECODER_OUTPUT_FIELDS: Final = frozenset({"step_ms", "classes", "probabilities"})


def check_spike_frame(record: Mapping[str, Any], where: str, *, name: str = "SpikeFrame") -> None:
    """Check the packed counts, the bin width and the channel ids of a spike frame."""
    check_counts(record, where=where)
    _check_positive(record, name, "bin_ms", where)
    _check_length(record, name, "channel_ids", "n_channels", where)


def check_eskin_frame(record: Mapping[str, Any], where: str, *, name: str = "EskinFrame") -> None:
    """Check that an e-skin frame has at least one taxel and one pressure per taxel."""
    _check_positive(record, name, "n_taxels", where)
    _check_length(record, name, "pressures", "n_taxels", where)


def check_decoder_output(
    record: Mapping[str, Any], where: str, *, name: str = "DecoderOutput"
) -> None:
    """Check that a decoder output has a positive step width and one probability per class."""
    _check_positive(record, name, "step_ms", where)
    classes = record["classes"]
    probabilities = record["probabilities"]
    if len(probabilities) != len(classes):
        raise ShapeError(
            f"{format_prefix(where)}{name} needs one probability per class: expected "
            f"{len(classes)} probabilities, received {len(probabilities)}"
        )


def find_shape_check(name: str, field_names: Set[str]) -> ShapeCheck | None:
    """Return the check for records named `name` with `field_names`, or None if none applies."""
    if _SPIKE_FRAME_FIELDS.issubset(field_names):
        return partial(check_spike_frame, name=name)
    if _ESKIN_FRAME_FIELDS.issubset(field_names):
        return partial(check_eskin_frame, name=name)
    if _DECODER_OUTPUT_FIELDS.issubset(field_names):
        return partial(check_decoder_output, name=name)
    return None


def _check_positive(record: Mapping[str, Any], name: str, field: str, where: str) -> None:
    value = record[field]
    if value < 1:
        raise ShapeError(
            f"{format_prefix(where)}invalid {name} {field}: expected a positive value, "
            f"received {value}"
        )


def _check_length(
    record: Mapping[str, Any], name: str, array_field: str, size_field: str, where: str
) -> None:
    """Check that the array `array_field`, unless null, has `size_field` items."""
    items = record.get(array_field)
    if items is not None and len(items) != record[size_field]:
        raise ShapeError(
            f"{format_prefix(where)}{name} {array_field} has the wrong length: expected "
            f"{size_field} = {record[size_field]} items, received {len(items)}"
        )
