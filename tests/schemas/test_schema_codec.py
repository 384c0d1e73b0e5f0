"""Tests of single-object encoding and decoding, including every guard against bad messages."""

from __future__ import annotations

import dataclasses
import io
import json
import random
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastavro import schemaless_writer

from schemas.codec import HEADER_SIZE, MARKER, Codec, decode, encode
from schemas.exceptions import (
    CorruptBodyError,
    HeaderError,
    InvalidRecordError,
    SchemaError,
    ShapeError,
    UnknownFingerprintError,
    UnknownSchemaError,
)
from schemas.registry import AVRO_DIR, SchemaRegistry, SchemaVersion, default_registry

Records = dict[str, dict[str, Any]]

RECORD_NAMES = sorted(default_registry().names)
POSITION: dict[str, Any] = {"topic": "raw.spikes", "partition": 2, "offset": 1041}
POSITION_TEXT = "raw.spikes[2]@1041"
BOARD_EVENTS = ["SpikeFrame", "BehaviorEvent", "EskinFrame", "DecoderOutput"]
VERSIONED = {*BOARD_EVENTS, *(f"Anon{name}" for name in BOARD_EVENTS)}
SPIKE_FRAME_LATEST = default_registry().latest("SpikeFrame")
# Every version that is not the latest of its record, such as SpikeFrame v1 and v2.
OLDER_VERSIONS = [
    schema
    for name in RECORD_NAMES
    for schema in default_registry().versions(name)
    if schema.version < default_registry().latest(name).version
]


def fields_of(record: dict[str, Any], schema: SchemaVersion) -> dict[str, Any]:
    """Return the fields of `record` that `schema` has, to write a record with an older version."""
    return {field: value for field, value in record.items() if field in schema.field_names}


def schema_defaults(schema: SchemaVersion) -> dict[str, Any]:
    """Return the default of each field of `schema` that has one, as the .avsc file writes it."""
    fields = json.loads(schema.text)["fields"]
    return {field["name"]: field["default"] for field in fields if "default" in field}


def write_unchecked(name: str, record: dict[str, Any], version: int | None = None) -> bytes:
    """Encode `record` with fastavro alone, skipping the codec's checks, to forge bad messages."""
    schema = default_registry().get(name, version)
    buffer = io.BytesIO()
    buffer.write(MARKER + schema.fingerprint)
    schemaless_writer(buffer, schema.parsed, {"schema_version": schema.version, **record})
    return buffer.getvalue()


def test_every_record_has_sample(records: Records) -> None:
    assert set(RECORD_NAMES) - set(records) == set()


@pytest.mark.parametrize("name", RECORD_NAMES)
def test_sample_sets_every_field(name: str, records: Records) -> None:
    # The codec sets schema_version, so the samples leave it out.
    latest = default_registry().latest(name)
    assert records[name].keys() | {"schema_version"} == latest.field_names | {"schema_version"}


@pytest.mark.parametrize("name", RECORD_NAMES)
def test_round_trip_every_record(name: str, records: Records) -> None:
    record = records[name]
    decoded = decode(encode(name, record), **POSITION)

    latest = default_registry().latest(name)
    expected = {**record, "schema_version": latest.version} if name in VERSIONED else record
    assert decoded.name == name
    assert decoded.version == latest.version
    assert decoded.reader_version == latest.version
    assert decoded.fingerprint == latest.fingerprint
    assert decoded.record == expected


def test_message_starts_with_header(records: Records) -> None:
    data = encode("JobStatus", records["JobStatus"])
    assert data[:2] == b"\xc3\x01"
    assert data[2:HEADER_SIZE] == default_registry().latest("JobStatus").fingerprint


def test_round_trip_fills_defaults(board: dict[str, Any]) -> None:
    record = {**board, "kind": "go_cue"}
    del record["metadata"]
    decoded = decode(encode("BehaviorEvent", record))
    assert decoded.record["metadata"] == {}
    assert decoded.record["trial_id"] is None
    assert decoded.record["label"] is None
    assert decoded.record["value"] is None


def test_round_trip_session_start_none(records: Records) -> None:
    record = {**records["BehaviorEvent"], "session_start": None}
    decoded = decode(encode("BehaviorEvent", record))
    assert decoded.record["session_start"] is None


def test_session_start_accepts_micros(board: dict[str, Any]) -> None:
    session_start = datetime(2024, 5, 2, 9, 0, tzinfo=UTC)
    record = {**board, "kind": "grasp", "session_start": 1_714_640_400_000_000}
    decoded = decode(encode("BehaviorEvent", record))
    assert decoded.record["session_start"] == session_start


def test_event_time_accepts_micros(board: dict[str, Any]) -> None:
    record = {**board, "kind": "grasp", "event_time": 1_714_642_215_123_456}
    decoded = decode(encode("BehaviorEvent", record))
    assert decoded.record["event_time"] == board["event_time"]


@pytest.mark.parametrize("micros", [-62_135_596_800_000_000, 253_402_300_799_999_999])
def test_event_time_extremes_round_trip(micros: int, board: dict[str, Any]) -> None:
    record = {**board, "kind": "trial_start", "event_time": micros}
    decoded = decode(encode("BehaviorEvent", record))
    event_time = decoded.record["event_time"]
    assert event_time.tzinfo is not None
    assert event_time.year in (1, 9999)


def test_encode_sets_schema_version(records: Records) -> None:
    data = encode("SpikeFrame", {**records["SpikeFrame"], "schema_version": 99})
    assert decode(data).record["schema_version"] == SPIKE_FRAME_LATEST.version


@pytest.mark.parametrize(
    "schema", default_registry().versions("SpikeFrame"), ids=lambda schema: schema.label
)
def test_encode_sets_older_schema_version(schema: SchemaVersion, records: Records) -> None:
    record = {**fields_of(records["SpikeFrame"], schema), "schema_version": 99}
    decoded = decode(encode("SpikeFrame", record, version=schema.version), reader=schema.version)
    assert decoded.record["schema_version"] == schema.version


def test_v1_frame_gets_newer_defaults(records: Records) -> None:
    record = records["SpikeFrame"]
    del record["threshold_rms"]
    del record["session_start"]
    decoded = decode(encode("SpikeFrame", record, version=1))
    assert decoded.version == 1
    assert decoded.reader_version == SPIKE_FRAME_LATEST.version
    assert decoded.fingerprint == default_registry().get("SpikeFrame", 1).fingerprint
    assert decoded.record["threshold_rms"] is None
    assert decoded.record["session_start"] is None
    assert decoded.record["schema_version"] == 1
    assert decoded.record["counts"] == record["counts"]
    assert decoded.record.keys() == SPIKE_FRAME_LATEST.field_names


def test_v1_frame_read_as_v2(records: Records) -> None:
    record = fields_of(records["SpikeFrame"], default_registry().get("SpikeFrame", 1))
    decoded = decode(encode("SpikeFrame", record, version=1), reader=2)
    assert decoded.version == 1
    assert decoded.reader_version == 2
    assert decoded.record["threshold_rms"] is None
    assert "session_start" not in decoded.record


def test_v2_frame_gets_session_start_default(records: Records) -> None:
    record = fields_of(records["SpikeFrame"], default_registry().get("SpikeFrame", 2))
    decoded = decode(encode("SpikeFrame", record, version=2), reader=3)
    assert decoded.version == 2
    assert decoded.reader_version == 3
    assert decoded.record["threshold_rms"] == records["SpikeFrame"]["threshold_rms"]
    assert decoded.record["session_start"] is None


@pytest.mark.parametrize("reader", [1, 2])
def test_v3_frame_read_as_older(reader: int, records: Records) -> None:
    record = records["SpikeFrame"]
    decoded = decode(encode("SpikeFrame", record, version=3), reader=reader)
    assert decoded.version == 3
    assert decoded.reader_version == reader
    assert decoded.record.keys() == default_registry().get("SpikeFrame", reader).field_names
    assert "session_start" not in decoded.record
    assert decoded.record["channel_ids"] == record["channel_ids"]
    assert decoded.record["counts"] == record["counts"]


def test_v3_frame_read_as_v2_keeps_threshold(records: Records) -> None:
    decoded = decode(encode("SpikeFrame", records["SpikeFrame"], version=3), reader=2)
    assert decoded.record["threshold_rms"] == records["SpikeFrame"]["threshold_rms"]


def test_v1_behavior_event_gets_session_start(records: Records) -> None:
    record = records["BehaviorEvent"]
    del record["session_start"]
    data = encode("BehaviorEvent", record, version=1)
    latest = default_registry().latest("BehaviorEvent")
    for reader, reader_version in [(2, 2), (None, latest.version)]:
        decoded = decode(data, reader=reader)
        assert decoded.version == 1
        assert decoded.reader_version == reader_version
        assert decoded.record["session_start"] is None
        assert decoded.record["kind"] == record["kind"]


def test_v2_behavior_event_read_as_v1(records: Records) -> None:
    decoded = decode(encode("BehaviorEvent", records["BehaviorEvent"], version=2), reader=1)
    assert decoded.version == 2
    assert decoded.reader_version == 1
    assert "session_start" not in decoded.record
    assert decoded.record["trial_id"] == records["BehaviorEvent"]["trial_id"]


@pytest.mark.parametrize("schema", OLDER_VERSIONS, ids=lambda schema: schema.label)
def test_older_version_read_as_latest(schema: SchemaVersion, records: Records) -> None:
    record = fields_of(records[schema.name], schema)
    decoded = decode(encode(schema.name, record, version=schema.version))

    latest = default_registry().latest(schema.name)
    defaults = schema_defaults(latest)
    added = latest.field_names - schema.field_names
    assert decoded.version == schema.version
    assert decoded.reader_version == latest.version
    assert decoded.record == {
        **record,
        "schema_version": schema.version,
        **{field: defaults[field] for field in added},
    }


@pytest.mark.parametrize("schema", OLDER_VERSIONS, ids=lambda schema: schema.label)
def test_latest_read_as_older_version(schema: SchemaVersion, records: Records) -> None:
    record = records[schema.name]
    decoded = decode(encode(schema.name, record), reader=schema.version)

    latest = default_registry().latest(schema.name)
    assert decoded.version == latest.version
    assert decoded.reader_version == schema.version
    assert decoded.record == {**fields_of(record, schema), "schema_version": latest.version}


def test_unknown_reader_version_raises(records: Records) -> None:
    data = encode("SpikeFrame", records["SpikeFrame"])
    with pytest.raises(UnknownSchemaError, match=r"^raw\.spikes\[2\]@1041: .*received 7"):
        decode(data, reader=7, **POSITION)


def test_old_registry_rejects_new_version(tmp_path: Path, records: Records) -> None:
    shutil.copy(AVRO_DIR / "SpikeFrame.v1.avsc", tmp_path)
    old_codec = Codec(SchemaRegistry.from_directory(tmp_path))
    data = encode("SpikeFrame", records["SpikeFrame"])
    with pytest.raises(UnknownFingerprintError, match="upgrade bcratos"):
        old_codec.decode(data, **POSITION)


def test_decoded_is_frozen(records: Records) -> None:
    decoded = decode(encode("JobStatus", records["JobStatus"]))
    with pytest.raises(dataclasses.FrozenInstanceError):
        decoded.version = 3  # type: ignore[misc]


def valid_frame(records: Records) -> bytes:
    return encode("SpikeFrame", records["SpikeFrame"])


def random_bytes(records: Records) -> bytes:
    data = random.Random(20240502).randbytes(200)
    assert data[:2] != MARKER
    return data


def forge(name: str, **changes: Any) -> Callable[[Records], bytes]:
    """Return a builder of a `name` message with `changes`, written without the codec's checks."""
    return lambda records: write_unchecked(name, {**records[name], **changes})


def forge_short_counts(records: Records) -> bytes:
    record = records["SpikeFrame"]
    return write_unchecked("SpikeFrame", {**record, "counts": record["counts"][:-1]})


BAD_MESSAGES: list[tuple[str, Callable[[Records], bytes | None], type[SchemaError], str]] = [
    ("tombstone", lambda records: None, HeaderError, r"received a tombstone \(value None\)"),
    ("empty", lambda records: b"", HeaderError, "expected at least 10 bytes.*received 0 bytes"),
    ("part of header", lambda r: valid_frame(r)[:9], HeaderError, "received 9 bytes"),
    ("random bytes", random_bytes, HeaderError, "expected c3 01, received"),
    ("wrong marker", lambda r: b"\xc3\x00" + valid_frame(r)[2:], HeaderError, "received c3 00"),
    (
        "confluent framing",
        lambda r: b"\x00\x00\x00\x00\x07" + valid_frame(r)[HEADER_SIZE:],
        HeaderError,
        "received 00 00",
    ),
    (
        "unknown fingerprint",
        lambda r: MARKER + bytes.fromhex("0123456789abcdef") + valid_frame(r)[HEADER_SIZE:],
        UnknownFingerprintError,
        "received 0123456789abcdef",
    ),
    (
        "truncated body",
        lambda r: valid_frame(r)[:-5],
        CorruptBodyError,
        f"corrupt {SPIKE_FRAME_LATEST.label} body",
    ),
    ("no body", lambda r: valid_frame(r)[:HEADER_SIZE], CorruptBodyError, "received 0 body bytes"),
    (
        "trailing bytes",
        lambda r: valid_frame(r) + b"\x00\x00",
        CorruptBodyError,
        "received 2 trailing bytes",
    ),
    (
        "counts one byte short",
        forge_short_counts,
        ShapeError,
        r"expected 576 bytes \(n_bins 3 x n_channels 96 x 2 bytes of uint16\), received 575",
    ),
    ("zero bins", forge("SpikeFrame", n_bins=0), ShapeError, "received n_bins 0 and n_channels"),
    (
        "zero bin width",
        forge("SpikeFrame", bin_ms=0),
        ShapeError,
        "invalid SpikeFrame bin_ms: expected a positive value, received 0",
    ),
    (
        "too few channel ids",
        forge("SpikeFrame", channel_ids=["e1", "e2"]),
        ShapeError,
        "expected n_channels = 96 items, received 2",
    ),
    (
        "taxel count mismatch",
        forge("EskinFrame", n_taxels=5),
        ShapeError,
        "EskinFrame pressures has the wrong length: expected n_taxels = 5 items, received 4",
    ),
    (
        "anonymized counts too short",
        forge("AnonSpikeFrame", counts=b"\x00"),
        ShapeError,
        "spike counts have the wrong length: expected 576 bytes",
    ),
    (
        "anonymized zero bin width",
        forge("AnonSpikeFrame", bin_ms=0),
        ShapeError,
        "invalid AnonSpikeFrame bin_ms",
    ),
    (
        "probability count mismatch",
        forge("DecoderOutput", probabilities=[1.0]),
        ShapeError,
        "expected 4 probabilities, received 1",
    ),
]
BAD_MESSAGE_IDS = [case[0] for case in BAD_MESSAGES]


@pytest.mark.parametrize(
    ("make_data", "error", "pattern"), [case[1:] for case in BAD_MESSAGES], ids=BAD_MESSAGE_IDS
)
def test_bad_message_raises(
    make_data: Callable[[Records], bytes | None],
    error: type[SchemaError],
    pattern: str,
    records: Records,
) -> None:
    data = make_data(records)
    with pytest.raises(error, match=pattern) as caught:
        decode(data, **POSITION)
    assert str(caught.value).startswith(f"{POSITION_TEXT}: ")


@pytest.mark.parametrize("make_data", [case[1] for case in BAD_MESSAGES], ids=BAD_MESSAGE_IDS)
def test_bad_message_without_position(
    make_data: Callable[[Records], bytes | None], records: Records
) -> None:
    data = make_data(records)
    with pytest.raises(SchemaError) as caught:
        decode(data)
    message = str(caught.value)
    assert not message.startswith(":")
    assert "@" not in message


def test_corrupt_body_keeps_cause(records: Records) -> None:
    with pytest.raises(CorruptBodyError) as caught:
        decode(valid_frame(records)[:-5], **POSITION)
    assert isinstance(caught.value.__cause__, EOFError)


def test_reason_codes_are_distinct() -> None:
    classes: list[type[SchemaError]] = [SchemaError, *SchemaError.__subclasses__()]
    reasons = [cls.reason for cls in classes]
    assert len(classes) == 9
    assert len(set(reasons)) == len(reasons)


INVALID_RECORDS: list[tuple[str, dict[str, Any], type[SchemaError], str]] = [
    ("missing field", {"board_id": None}, InvalidRecordError, r"missing fields \['board_id'\]"),
    ("unknown field", {"gain": 1.0}, InvalidRecordError, r"unknown fields \['gain'\]"),
    ("int overflow", {"bin_ms": 2**31}, InvalidRecordError, "bin_ms: expected int, received 2147"),
    ("float for int", {"n_bins": 3.0}, InvalidRecordError, "n_bins: expected int, received 3.0"),
    ("bool for int", {"bin_ms": True}, InvalidRecordError, "bin_ms: expected int, received True"),
    ("unknown dtype", {"dtype": "float32"}, InvalidRecordError, r"dtype: expected \['uint8'"),
    (
        "naive event time",
        {"event_time": datetime(2024, 5, 2, 9, 30)},
        InvalidRecordError,
        "received the naive datetime",
    ),
    (
        "event time in nanoseconds",
        {"event_time": 1_714_642_215_123_456_789},
        InvalidRecordError,
        "received 1714642215123456789. Check that the value is not in nanoseconds",
    ),
    (
        "session start as text",
        {"session_start": "2024-05-02T09:00:00Z"},
        InvalidRecordError,
        "session_start: expected null",
    ),
    ("counts too long", {"counts": bytes(577)}, ShapeError, "expected 576 bytes"),
]


@pytest.mark.parametrize(
    ("changes", "error", "pattern"),
    [case[1:] for case in INVALID_RECORDS],
    ids=[case[0] for case in INVALID_RECORDS],
)
def test_invalid_record_raises(
    changes: dict[str, Any], error: type[SchemaError], pattern: str, records: Records
) -> None:
    record = {**records["SpikeFrame"], **changes}
    for field, value in changes.items():
        if value is None:
            del record[field]
    with pytest.raises(error, match=pattern):
        encode("SpikeFrame", record)


def test_encode_unknown_name_raises(records: Records) -> None:
    with pytest.raises(UnknownSchemaError, match="received 'Spikeframe'"):
        encode("Spikeframe", records["SpikeFrame"])


def test_encode_leaves_record_unchanged(records: Records) -> None:
    record = records["SpikeFrame"]
    before = dict(record)
    encode("SpikeFrame", record)
    assert record == before


def test_naive_session_start_raises(records: Records) -> None:
    # fastavro reads a naive datetime as local time, so the value would depend on the producer.
    record = {**records["SpikeFrame"], "session_start": datetime(2024, 5, 2, 9, 0)}
    with pytest.raises(InvalidRecordError, match="received the naive datetime"):
        encode("SpikeFrame", record)


def test_session_start_in_nanoseconds_raises(records: Records) -> None:
    # Without the check, encode succeeds and every decode of the message raises CorruptBodyError.
    record = {**records["SpikeFrame"], "session_start": 1_714_640_400_000_000_000}
    with pytest.raises(InvalidRecordError, match="Check that the value is not in nanoseconds"):
        encode("SpikeFrame", record)
