"""Property tests: arbitrary valid records round-trip, arbitrary bytes raise only SchemaError."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from schemas.codec import MARKER, decode, encode
from schemas.counts import COUNT_DTYPES, unpack_counts
from schemas.exceptions import CorruptBodyError, SchemaError, ShapeError
from schemas.registry import SchemaVersion, default_registry

LONGS = st.integers(min_value=-(2**63), max_value=2**63 - 1)
IDS = st.text(min_size=1, max_size=24)
EVENT_TIMES = st.datetimes(
    min_value=datetime(1970, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.just(UTC),
)
SESSION_STARTS = st.none() | EVENT_TIMES
SPIKE_FRAME_VERSIONS = default_registry().versions("SpikeFrame")
BEHAVIOR_EVENT_VERSIONS = default_registry().versions("BehaviorEvent")


def expected_record(record: dict[str, Any], writer: SchemaVersion) -> dict[str, Any]:
    """Return `record` as the latest reader returns it after `writer` wrote the fields it has.

    Fields that `writer` lacks get the latest version's default, and schema_version is the
    writer's version.
    """
    latest = default_registry().latest(writer.name)
    fields = json.loads(latest.text)["fields"]
    defaults = {field["name"]: field["default"] for field in fields if "default" in field}
    missing = {field: defaults[field] for field in record if field not in writer.field_names}
    return {**record, "schema_version": writer.version, **missing}


def written_fields(record: dict[str, Any], writer: SchemaVersion) -> dict[str, Any]:
    """Return the fields of `record` that `writer` has."""
    return {field: value for field, value in record.items() if field in writer.field_names}


def enum_symbols(name: str, field: str) -> list[str]:
    fields = json.loads(default_registry().latest(name).text)["fields"]
    return next(item["type"]["symbols"] for item in fields if item["name"] == field)


def board_fields() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "board_id": IDS,
            "subject_id": IDS,
            "session_id": IDS,
            "seq": LONGS,
            "event_time": EVENT_TIMES,
            "metadata": st.dictionaries(st.text(max_size=12), st.text(max_size=40), max_size=4),
        }
    )


@st.composite
def spike_frames(draw: st.DrawFn) -> dict[str, Any]:
    dtype = draw(st.sampled_from(list(COUNT_DTYPES)))
    n_bins = draw(st.integers(min_value=1, max_value=8))
    n_channels = draw(st.integers(min_value=1, max_value=256))
    counts = draw(arrays(COUNT_DTYPES[dtype], (n_bins, n_channels)))  # (n_bins, n_channels)
    channel_ids = draw(
        st.none() | st.lists(st.text(max_size=8), min_size=n_channels, max_size=n_channels)
    )
    return {
        **draw(board_fields()),
        "bin_ms": draw(st.integers(min_value=1, max_value=1000)),
        "n_bins": n_bins,
        "n_channels": n_channels,
        "dtype": dtype,
        "counts": counts.tobytes(),
        "channel_ids": channel_ids,
        "threshold_rms": draw(st.none() | st.floats(width=32, allow_nan=False)),
        "session_start": draw(SESSION_STARTS),
    }


@st.composite
def behavior_events(draw: st.DrawFn) -> dict[str, Any]:
    return {
        **draw(board_fields()),
        "kind": draw(st.sampled_from(enum_symbols("BehaviorEvent", "kind"))),
        "trial_id": draw(st.none() | LONGS),
        "label": draw(st.none() | st.text(max_size=24)),
        "value": draw(st.none() | st.floats(allow_nan=False)),
        "session_start": draw(SESSION_STARTS),
    }


@given(record=spike_frames(), writer=st.sampled_from(SPIKE_FRAME_VERSIONS))
def test_spike_frame_round_trip(record: dict[str, Any], writer: SchemaVersion) -> None:
    decoded = decode(encode("SpikeFrame", written_fields(record, writer), version=writer.version))

    assert decoded.version == writer.version
    assert decoded.reader_version == default_registry().latest("SpikeFrame").version
    assert decoded.record == expected_record(record, writer)
    expected = np.frombuffer(record["counts"], dtype=COUNT_DTYPES[record["dtype"]])
    np.testing.assert_array_equal(
        unpack_counts(decoded.record), expected.reshape(record["n_bins"], record["n_channels"])
    )


@given(record=behavior_events(), writer=st.sampled_from(BEHAVIOR_EVENT_VERSIONS))
def test_behavior_event_round_trip(record: dict[str, Any], writer: SchemaVersion) -> None:
    decoded = decode(
        encode("BehaviorEvent", written_fields(record, writer), version=writer.version)
    )

    assert decoded.name == "BehaviorEvent"
    assert decoded.version == writer.version
    assert decoded.reader_version == default_registry().latest("BehaviorEvent").version
    assert decoded.record == expected_record(record, writer)


@given(record=spike_frames())
def test_latest_spike_frame_read_as_older(record: dict[str, Any]) -> None:
    data = encode("SpikeFrame", record)
    latest_version = default_registry().latest("SpikeFrame").version
    for reader in SPIKE_FRAME_VERSIONS:
        decoded = decode(data, reader=reader.version)
        expected = {**written_fields(record, reader), "schema_version": latest_version}
        assert decoded.record == expected, reader.label


@given(data=st.binary(max_size=64))
def test_arbitrary_bytes_raise_schema_error(data: bytes) -> None:
    try:
        decode(data, topic="raw.spikes", partition=0, offset=5)
    except SchemaError as exc:
        assert str(exc).startswith("raw.spikes[0]@5: ")
    else:
        raise AssertionError(f"decoded arbitrary bytes {data!r}")


@given(
    fingerprint=st.sampled_from([schema.fingerprint for schema in default_registry()]),
    body=st.binary(max_size=300),
)
def test_arbitrary_body_decodes_or_raises(fingerprint: bytes, body: bytes) -> None:
    try:
        decoded = decode(MARKER + fingerprint + body, topic="raw.spikes", partition=0, offset=5)
    except (CorruptBodyError, ShapeError) as exc:
        assert str(exc).startswith("raw.spikes[0]@5: ")
    else:
        assert decoded.fingerprint == fingerprint
