"""Tests of pseudonyms, key loading, the metadata policy, session time and anonymized records."""

from __future__ import annotations

import copy
import doctest
import json
import logging
import os
import pickle
import re
import tomllib
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from raw_events import (
    BOARD_ID,
    EVENT_TIME,
    RAW_EVENTS,
    RAW_STRINGS,
    SESSION_ID,
    SITE,
    SUBJECT_ID,
    behavior_event,
    spike_frame,
)

import streams.anonymize
from bcratos.config import PROJECT_ROOT, AnonymizationSettings
from boards.replay import open_recording
from schemas.codec import decode, encode
from schemas.registry import default_registry
from streams.anonymize import (
    ANON_RECORD_NAMES,
    DEFAULT_METADATA_POLICY,
    MAX_DAY_OFFSET,
    PAYLOAD_FIELDS,
    Anonymizer,
    FieldAction,
    MetadataPolicy,
    Pseudonymizer,
    SessionClock,
    load_key,
    shifted_day,
)
from streams.exceptions import (
    AnonymizationError,
    AnonymizationKeyError,
    MetadataPolicyError,
    StateError,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
PSEUDONYM = re.compile(r"[0-9a-f]{20}")
DATA = Path(os.environ.get("BCRATOS_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))


def make_anonymizer(policy: MetadataPolicy | None = None) -> Anonymizer:
    return Anonymizer(Pseudonymizer(KEY, "k2024"), policy)


def epoch_day(moment: datetime) -> int:
    return (moment.date() - datetime(1970, 1, 1, tzinfo=UTC).date()).days


def avro_long(value: int) -> bytes:
    """Encode `value` as Avro does: zigzag, then 7 bits per byte, lowest first."""
    zigzag = (value << 1) ^ (value >> 63)
    encoded = bytearray()
    while zigzag > 0x7F:
        encoded.append((zigzag & 0x7F) | 0x80)
        zigzag >>= 7
    encoded.append(zigzag)
    return bytes(encoded)


# Pseudonyms


def test_pseudonym_stable_for_one_key() -> None:
    first = Pseudonymizer(KEY, "k1")
    second = Pseudonymizer(KEY, "k1")
    assert first.subject(SUBJECT_ID) == second.subject(SUBJECT_ID)
    assert first.board(BOARD_ID) == second.board(BOARD_ID)
    assert first.session(SUBJECT_ID, SESSION_ID) == second.session(SUBJECT_ID, SESSION_ID)
    assert first.subject(SUBJECT_ID) == first.subject(SUBJECT_ID)  # from the cache


def test_pseudonym_is_20_lowercase_hex() -> None:
    pseudonymizer = Pseudonymizer(KEY, "k1")
    for pseudonym in (
        pseudonymizer.subject(SUBJECT_ID),
        pseudonymizer.board(BOARD_ID),
        pseudonymizer.session(SUBJECT_ID, SESSION_ID),
        pseudonymizer.metadata_value("site", SITE),
    ):
        assert PSEUDONYM.fullmatch(pseudonym)


def test_pseudonym_differs_across_keys() -> None:
    first = Pseudonymizer(KEY, "k1")
    second = Pseudonymizer(OTHER_KEY, "k2")
    assert first.subject(SUBJECT_ID) != second.subject(SUBJECT_ID)
    assert first.board(BOARD_ID) != second.board(BOARD_ID)
    assert first.session(SUBJECT_ID, SESSION_ID) != second.session(SUBJECT_ID, SESSION_ID)


def test_pseudonym_differs_across_kinds() -> None:
    pseudonymizer = Pseudonymizer(KEY, "k1")
    same = "rig-7"
    pseudonyms = {
        pseudonymizer.subject(same),
        pseudonymizer.board(same),
        pseudonymizer.metadata_value("site", same),
        pseudonymizer.metadata_value("rig", same),
    }
    assert len(pseudonyms) == 4


def test_session_pseudonym_depends_on_subject() -> None:
    pseudonymizer = Pseudonymizer(KEY, "k1")
    assert pseudonymizer.session("P1", "2024-05-02-am") != pseudonymizer.session(
        "P2", "2024-05-02-am"
    )
    # Length prefixes keep the boundary between the two parts.
    assert pseudonymizer.session("ab", "c") != pseudonymizer.session("a", "bc")


def test_key_id_carried() -> None:
    _, anon = Anonymizer(Pseudonymizer(KEY, "k2024-05")).anonymize("SpikeFrame", spike_frame())
    assert anon["key_id"] == "k2024-05"


def test_repr_hides_key() -> None:
    key = b"hunter2-hunter2-hunter2"
    pseudonymizer = Pseudonymizer(key, "k1")
    for text in (repr(pseudonymizer), str(pseudonymizer), f"{pseudonymizer!r}"):
        assert "hunter2" not in text
        assert key.hex() not in text
        assert "k1" in text


def test_pseudonymizer_cannot_be_pickled() -> None:
    pseudonymizer = Pseudonymizer(KEY, "k1")
    with pytest.raises(TypeError, match="contains the pseudonymization key"):
        pickle.dumps(pseudonymizer)
    with pytest.raises(TypeError):
        copy.copy(pseudonymizer)


def test_short_key_rejected_by_pseudonymizer() -> None:
    with pytest.raises(AnonymizationKeyError, match="received 15 bytes"):
        Pseudonymizer(b"x" * 15, "k1")


def test_day_offset_in_range() -> None:
    pseudonymizer = Pseudonymizer(KEY, "k1")
    offsets = [pseudonymizer.day_offset(f"subject-{index}") for index in range(500)]
    assert all(-MAX_DAY_OFFSET <= offset <= MAX_DAY_OFFSET for offset in offsets)
    assert len(set(offsets)) > 400


# Key loading


def test_key_loaded_from_setting() -> None:
    settings = AnonymizationSettings(key=SecretStr("a" * 32), key_id="k7")
    assert load_key(settings) == (b"a" * 32, "k7")


def test_key_file_newline_stripped(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_bytes(b"b" * 32 + b"\n")
    path.chmod(0o600)
    assert load_key(AnonymizationSettings(key_file=path)) == (b"b" * 32, "k1")


def test_binary_key_file_kept(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_bytes(KEY)
    path.chmod(0o600)
    assert load_key(AnonymizationSettings(key_file=path))[0] == KEY


def test_missing_key_names_settings() -> None:
    with pytest.raises(AnonymizationKeyError) as excinfo:
        load_key(AnonymizationSettings())
    message = str(excinfo.value)
    assert "BCRATOS_ANONYMIZATION__KEY_FILE" in message
    assert "BCRATOS_ANONYMIZATION__KEY " in message


def test_empty_key_rejected() -> None:
    with pytest.raises(AnonymizationKeyError, match="empty pseudonymization key in BCRATOS_"):
        load_key(AnonymizationSettings(key=SecretStr("")))


def test_short_key_message_hides_key() -> None:
    secret = "tiny-secret"
    with pytest.raises(AnonymizationKeyError) as excinfo:
        load_key(AnonymizationSettings(key=SecretStr(secret)))
    message = str(excinfo.value)
    assert "BCRATOS_ANONYMIZATION__KEY " in message
    assert "received 11 bytes" in message
    assert secret not in message
    assert secret not in repr(excinfo.value)


def test_short_key_file_message_hides_key(tmp_path: Path) -> None:
    secret = b"file-secret"
    path = tmp_path / "key"
    path.write_bytes(secret)
    path.chmod(0o600)
    with pytest.raises(AnonymizationKeyError) as excinfo:
        load_key(AnonymizationSettings(key_file=path))
    message = str(excinfo.value)
    assert "BCRATOS_ANONYMIZATION__KEY_FILE" in message
    assert "received 11 bytes" in message
    assert secret.decode() not in message


@pytest.mark.parametrize("name", ["missing-key", "."])
def test_unreadable_key_file_names_setting(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    with pytest.raises(AnonymizationKeyError) as excinfo:
        load_key(AnonymizationSettings(key_file=path))
    message = str(excinfo.value)
    assert "BCRATOS_ANONYMIZATION__KEY_FILE" in message
    assert str(path) in message
    assert isinstance(excinfo.value.__cause__, OSError)


def test_both_key_settings_rejected(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_bytes(KEY)
    secret = "c" * 32
    with pytest.raises(AnonymizationKeyError, match="expected exactly one") as excinfo:
        load_key(AnonymizationSettings(key=SecretStr(secret), key_file=path))
    assert secret not in str(excinfo.value)


@pytest.mark.parametrize("key_id", ["", "key one", "k" * 65])
def test_invalid_key_id_rejected(key_id: str) -> None:
    settings = AnonymizationSettings(key=SecretStr("d" * 32), key_id=key_id)
    with pytest.raises(AnonymizationKeyError, match="BCRATOS_ANONYMIZATION__KEY_ID"):
        load_key(settings)


def test_open_key_file_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "key"
    path.write_bytes(KEY)
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="streams.anonymize"):
        load_key(AnonymizationSettings(key_file=path))
    assert "chmod 600" in caplog.text
    assert KEY.hex() not in caplog.text


# Metadata policy


def test_unknown_metadata_dropped(caplog: pytest.LogCaptureFixture) -> None:
    anonymizer = make_anonymizer()
    record = behavior_event(metadata={"surgeon": "Dr. Example", "task": "wrist_force"})
    with caplog.at_level(logging.WARNING, logger="streams.anonymize"):
        _, anon = anonymizer.anonymize("BehaviorEvent", record)
        anonymizer.anonymize("BehaviorEvent", behavior_event(2, metadata=record["metadata"]))

    assert anon["metadata"] == {"task": "wrist_force"}
    assert anonymizer.counters["metadata_undeclared"] == 2
    assert caplog.text.count("'surgeon'") == 1
    assert "Dr. Example" not in caplog.text


def test_declared_metadata_handled() -> None:
    anonymizer = make_anonymizer()
    _, anon = anonymizer.anonymize("SpikeFrame", spike_frame())
    pseudonymizer = anonymizer.pseudonymizer
    shifted = epoch_day(EVENT_TIME) + pseudonymizer.day_offset(SUBJECT_ID)

    assert anon["metadata"] == {
        "source_kind": "limblab_binned",
        "task": "wrist_force",
        "site": pseudonymizer.metadata_value("site", SITE),
        "recording_start": str(shifted),
    }
    # Dropped: two file names, the recording date, operator, implant serial and notes.
    assert anonymizer.counters["metadata_dropped"] == 6


def test_policy_override_from_toml() -> None:
    table = tomllib.loads(
        """
        [metadata]
        notes = "keep"
        surgeon = "pseudonymize"
        task = "drop"
        """
    )
    policy = MetadataPolicy(table["metadata"])
    record = behavior_event(metadata={"notes": "n", "surgeon": "s", "task": "t", "x": "y"})

    _, anon = make_anonymizer(policy).anonymize("BehaviorEvent", record)

    assert anon["metadata"]["notes"] == "n"
    assert PSEUDONYM.fullmatch(anon["metadata"]["surgeon"])
    assert set(anon["metadata"]) == {"notes", "surgeon"}
    assert policy.action_for("operator") == FieldAction.DROP
    assert DEFAULT_METADATA_POLICY["task"] == FieldAction.KEEP


def test_invalid_policy_action_raises() -> None:
    with pytest.raises(MetadataPolicyError, match="'notes'.*received 'hash'"):
        MetadataPolicy({"notes": "hash"})


@pytest.mark.parametrize(
    ("value", "day"),
    [
        ("2012-07-18", 15539),
        ("2012-07-18T23:59:59", 15539),
        ("2012-07-18T23:30:00-02:00", 15540),
        ("1969-12-31T12:00:00+00:00", -1),
    ],
)
def test_shifted_day_parses_iso(value: str, day: int) -> None:
    assert shifted_day(value, 0) == day
    assert shifted_day(value, -100) == day - 100


def test_unparsed_shift_field_dropped() -> None:
    anonymizer = make_anonymizer()
    record = behavior_event(metadata={"recording_start": "7/18/2012 14:0:46.750"})
    _, anon = anonymizer.anonymize("BehaviorEvent", record)
    assert anon["metadata"] == {}
    assert anonymizer.counters["metadata_shift_unparsed"] == 1


@pytest.mark.parametrize(
    "relative",
    [
        "limblab-spike-wf/Spike_07-18-12_WF_001.mat",
        "limblab-jango/Jango_20141203_default_offline_data.mat",
        "brochier-grasp/Dataset2_old_b121bf7.mat",
        "icub-grasp/iCubGraspDataset",
        "blackrock/Han_20170516.nev",
    ],
)
def test_replay_metadata_fields_declared(relative: str) -> None:
    recording = open_recording(DATA / relative, board_id=BOARD_ID, subject_id=SUBJECT_ID)
    names = {name for event in islice(recording.events(), 200) for name in event.record["metadata"]}
    assert names
    assert sorted(names - DEFAULT_METADATA_POLICY.keys()) == []


# Session time and day


def test_day_shift_keeps_differences() -> None:
    anonymizer = make_anonymizer()
    later = datetime(2012, 8, 7, 10, 0, tzinfo=UTC)
    _, first = anonymizer.anonymize("SpikeFrame", spike_frame())
    _, second = anonymizer.anonymize(
        "SpikeFrame", spike_frame(session_id="Spike_08-07-12_WF_001", event_time=later)
    )

    assert second["session_day"] - first["session_day"] == 20
    assert first["session_day"] != epoch_day(EVENT_TIME)
    assert second["session_day"] != epoch_day(later)


def test_day_shift_differs_across_subjects() -> None:
    anonymizer = make_anonymizer()
    _, first = anonymizer.anonymize("SpikeFrame", spike_frame())
    _, second = anonymizer.anonymize("SpikeFrame", spike_frame(subject_id="monkey-jango"))
    assert first["session_day"] != second["session_day"]


def test_day_shift_differs_across_keys() -> None:
    _, first = make_anonymizer().anonymize("SpikeFrame", spike_frame())
    other = Anonymizer(Pseudonymizer(OTHER_KEY, "k2"))
    _, second = other.anonymize("SpikeFrame", spike_frame())
    assert first["session_day"] != second["session_day"]


def test_session_time_relative_to_first_event() -> None:
    anonymizer = make_anonymizer()
    _, first = anonymizer.anonymize("SpikeFrame", spike_frame(1))
    later = EVENT_TIME + timedelta(seconds=2, microseconds=5)
    _, second = anonymizer.anonymize("BehaviorEvent", behavior_event(2, event_time=later))

    assert first["t_session_us"] == 0
    assert second["t_session_us"] == 2_000_005
    assert second["session_day"] == first["session_day"]


def test_early_event_gets_negative_time() -> None:
    anonymizer = make_anonymizer()
    anonymizer.anonymize("SpikeFrame", spike_frame(1))
    earlier = EVENT_TIME - timedelta(milliseconds=150)

    _, anon = anonymizer.anonymize("SpikeFrame", spike_frame(2, event_time=earlier))

    assert anon["t_session_us"] == -150_000


def test_session_shared_across_boards() -> None:
    anonymizer = make_anonymizer()
    _, spikes = anonymizer.anonymize("SpikeFrame", spike_frame())
    later = EVENT_TIME + timedelta(seconds=1)
    _, skin = anonymizer.anonymize(
        "EskinFrame", RAW_EVENTS["EskinFrame"](board_id="eskin-hand-1", event_time=later)
    )
    assert skin["session_pseudonym"] == spikes["session_pseudonym"]
    assert skin["board_pseudonym"] != spikes["board_pseudonym"]
    assert skin["t_session_us"] == 1_000_000


def test_session_start_across_midnight() -> None:
    anonymizer = make_anonymizer()
    start = datetime(2012, 7, 18, 23, 59, 59, tzinfo=UTC)
    _, first = anonymizer.anonymize("SpikeFrame", spike_frame(1, event_time=start))
    _, second = anonymizer.anonymize(
        "SpikeFrame", spike_frame(2, event_time=start + timedelta(seconds=2))
    )
    assert second["session_day"] == first["session_day"]
    assert second["t_session_us"] == 2_000_000


def test_declared_session_start_used() -> None:
    anonymizer = make_anonymizer()
    start = datetime(2012, 7, 17, 23, 59, 50, tzinfo=UTC)  # the day before EVENT_TIME
    _, declared = anonymizer.anonymize("SpikeFrame", spike_frame(1, session_start=start))
    _, undeclared = anonymizer.anonymize(
        "BehaviorEvent", behavior_event(2, event_time=EVENT_TIME + timedelta(seconds=1))
    )

    expected_us = (EVENT_TIME - start) // timedelta(microseconds=1)
    assert declared["t_session_us"] == expected_us
    assert undeclared["t_session_us"] == expected_us + 1_000_000
    day_offset = anonymizer.pseudonymizer.day_offset(SUBJECT_ID)
    assert declared["session_day"] == epoch_day(start) + day_offset
    assert undeclared["session_day"] == declared["session_day"]


def test_declared_start_replaces_first_seen() -> None:
    anonymizer = make_anonymizer()
    anonymizer.anonymize("BehaviorEvent", behavior_event(1))
    start = EVENT_TIME - timedelta(minutes=5)

    _, anon = anonymizer.anonymize("SpikeFrame", spike_frame(2, session_start=start))

    assert anon["t_session_us"] == 300_000_000


def test_session_start_not_encoded() -> None:
    start = datetime(2012, 7, 18, 13, 55, 0, 123457, tzinfo=UTC)
    anon_name, anon = make_anonymizer().anonymize("SpikeFrame", spike_frame(session_start=start))
    start_us = (start - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)

    data = encode(anon_name, anon)

    assert "session_start" not in anon
    assert avro_long(start_us) not in data


def test_naive_session_start_raises() -> None:
    record = spike_frame(session_start=datetime(2012, 7, 18, 14, 0))
    with pytest.raises(AnonymizationError, match="session_start is a naive datetime"):
        make_anonymizer().anonymize("SpikeFrame", record)


def test_integer_event_time_accepted() -> None:
    anonymizer = make_anonymizer()
    micros = (EVENT_TIME - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    _, from_int = anonymizer.anonymize("SpikeFrame", spike_frame(1, event_time=micros))
    _, from_datetime = make_anonymizer().anonymize("SpikeFrame", spike_frame(1))
    assert from_int == from_datetime


def test_session_clock_round_trip() -> None:
    clock = SessionClock()
    assert clock.start_us("a", 100) == 100
    assert clock.start_us("a", 50) == 100
    assert clock.start_us("b", 70) == 70
    exported = json.loads(json.dumps(clock.export_state()))

    restored = SessionClock()
    restored.import_state(exported)

    assert exported == {"version": 1, "sessions": {"a": 100, "b": 70}}
    assert restored.start_us("a", 999) == 100
    assert len(restored) == 2


def test_session_clock_forgets_least_recent() -> None:
    clock = SessionClock(max_sessions=2)
    clock.start_us("a", 1)
    clock.start_us("b", 2)
    clock.start_us("a", 3)  # "a" is now the most recent
    clock.start_us("c", 4)
    assert list(clock.export_state()["sessions"]) == ["a", "c"]


@pytest.mark.parametrize(
    ("state", "text"),
    [
        ({"version": 0, "sessions": {}}, "expected 1, received 0"),
        ({"version": 1, "sessions": []}, "expected a mapping"),
        ({"version": 1, "sessions": {"a": 1.5}}, "received 1.5"),
    ],
)
def test_session_clock_bad_state_raises(state: dict[str, Any], text: str) -> None:
    with pytest.raises(StateError, match=re.escape(text)):
        SessionClock().import_state(state)


# Records


@pytest.mark.parametrize("record_name", sorted(RAW_EVENTS))
def test_payload_unchanged(record_name: str) -> None:
    raw = RAW_EVENTS[record_name]()
    anon_name, anon = make_anonymizer().anonymize(record_name, raw)

    assert anon_name == ANON_RECORD_NAMES[record_name]
    replaced = {"board_id", "subject_id", "session_id", "event_time", "schema_version"}
    for name in raw.keys() - replaced - {"metadata"}:
        assert anon[name] == raw[name], name
    for name in replaced:
        assert name not in anon


@pytest.mark.parametrize("record_name", sorted(RAW_EVENTS))
def test_encoded_record_round_trips(record_name: str) -> None:
    anon_name, anon = make_anonymizer().anonymize(record_name, RAW_EVENTS[record_name]())

    message = decode(encode(anon_name, anon), topic=f"anon.{record_name}")

    assert message.name == anon_name
    assert message.record == {**anon, "schema_version": message.version}


@pytest.mark.parametrize("record_name", sorted(RAW_EVENTS))
def test_encoded_record_has_no_raw_values(record_name: str) -> None:
    anon_name, anon = make_anonymizer().anonymize(record_name, RAW_EVENTS[record_name]())
    data = encode(anon_name, anon)
    event_time_us = (EVENT_TIME - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)

    for text in RAW_STRINGS:
        for encoding in ("utf-8", "utf-16-le"):
            assert text.encode(encoding) not in data, text
    assert avro_long(event_time_us) not in data
    assert event_time_us.to_bytes(8, "little") not in data
    assert event_time_us.to_bytes(8, "big") not in data


@pytest.mark.parametrize("record_name", sorted(RAW_EVENTS))
def test_anon_schema_matches_raw_payload(record_name: str) -> None:
    registry = default_registry()
    raw_fields = registry.latest(record_name).field_names
    anon_fields = registry.latest(ANON_RECORD_NAMES[record_name]).field_names
    common = {"seq", "metadata", "schema_version"}
    identifying = {"board_id", "subject_id", "session_id", "event_time", "session_start"}
    anonymized = {
        "subject_pseudonym",
        "board_pseudonym",
        "session_pseudonym",
        "key_id",
        "session_day",
        "t_session_us",
    }

    assert raw_fields - common - identifying == PAYLOAD_FIELDS[record_name]
    assert anon_fields - common - anonymized == PAYLOAD_FIELDS[record_name]


def test_unknown_record_raises() -> None:
    with pytest.raises(AnonymizationError, match="no anonymized record for 'JobStatus'"):
        make_anonymizer().anonymize("JobStatus", {})


def test_undeclared_field_raises() -> None:
    record = spike_frame(gain=2.0, implant_serial="SN-1")
    with pytest.raises(AnonymizationError, match=r"\['gain', 'implant_serial'\]"):
        make_anonymizer().anonymize("SpikeFrame", record)


def test_naive_event_time_raises() -> None:
    record = spike_frame(event_time=datetime(2012, 7, 18, 14, 0))
    with pytest.raises(AnonymizationError, match="naive datetime"):
        make_anonymizer().anonymize("SpikeFrame", record)


def test_module_examples_run() -> None:
    result = doctest.testmod(streams.anonymize)
    assert result.attempted > 0
    assert result.failed == 0
