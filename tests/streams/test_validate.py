"""Tests of the semantic checks of raw board events."""

from __future__ import annotations

import doctest
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from raw_events import (
    BOARD_ID,
    EVENT_TIME,
    RAW_EVENTS,
    SESSION_ID,
    SUBJECT_ID,
    behavior_event,
    spike_frame,
)

import streams.validate
from schemas.counts import pack_counts
from streams.exceptions import StateError
from streams.validate import Check, ValidationSettings, Validator, Verdict

NOW = datetime(2024, 5, 2, 9, 30, tzinfo=UTC)


def make_validator(**settings: Any) -> Validator:
    return Validator(ValidationSettings(**settings), clock=lambda: NOW)


def signed_counts(value: int) -> dict[str, Any]:
    counts = np.zeros((2, 96), dtype=np.int16)  # (n_bins, n_channels)
    counts[1, 5] = value
    return pack_counts(counts)


# (record name, changes to a valid record, expected check, text the reason must contain)
REJECTIONS: list[tuple[str, dict[str, Any], Check, str]] = [
    ("SpikeFrame", {"counts": b"\x00" * 10}, Check.SHAPE_MISMATCH, "received 10 bytes"),
    ("SpikeFrame", {"channel_ids": ["ee01u0"]}, Check.SHAPE_MISMATCH, "received 1"),
    ("SpikeFrame", signed_counts(-3), Check.COUNTS_NEGATIVE, "-3"),
    ("SpikeFrame", {"threshold_rms": float("nan")}, Check.VALUE_NOT_FINITE, "nan"),
    ("EskinFrame", {"n_taxels": 5}, Check.TAXEL_COUNT_MISMATCH, "n_taxels 5"),
    ("EskinFrame", {"pressure_unit": "psi"}, Check.PRESSURE_UNIT_UNKNOWN, "'psi'"),
    ("EskinFrame", {"pressures": [0.0, float("nan"), 1.0, 2.0]}, Check.PRESSURE_NOT_FINITE, "nan"),
    ("EskinFrame", {"pressures": [0.0, 1.0, float("inf"), 2.0]}, Check.PRESSURE_NOT_FINITE, "inf"),
    ("EskinFrame", {"total_force_n": float("-inf")}, Check.VALUE_NOT_FINITE, "-inf"),
    ("EskinFrame", {"joint_positions": [0.5, float("nan")]}, Check.VALUE_NOT_FINITE, "nan"),
    ("BehaviorEvent", {"value": float("nan")}, Check.VALUE_NOT_FINITE, "nan"),
    (
        "DecoderOutput",
        {"probabilities": [0.5, float("nan"), 0.25, 0.25]},
        Check.PROBABILITIES_INVALID,
        "nan",
    ),
    (
        "DecoderOutput",
        {"probabilities": [1.25, -0.25, 0.0, 0.0]},
        Check.PROBABILITIES_INVALID,
        "1.25",
    ),
    (
        "DecoderOutput",
        {"probabilities": [0.5, 0.25, 0.125, 0.0]},
        Check.PROBABILITIES_INVALID,
        "0.875",
    ),
    ("DecoderOutput", {"probabilities": [1.0, 0.0]}, Check.SHAPE_MISMATCH, "received 2"),
    (
        "BehaviorEvent",
        {"event_time": NOW + timedelta(hours=1)},
        Check.EVENT_TIME_SKEW,
        "3600.000 s ahead",
    ),
]


@pytest.mark.parametrize(
    ("record_name", "changes", "check", "text"),
    REJECTIONS,
    ids=[f"{row[2]}-{index}" for index, row in enumerate(REJECTIONS)],
)
def test_bad_record_rejected(
    record_name: str, changes: dict[str, Any], check: Check, text: str
) -> None:
    record = RAW_EVENTS[record_name](**changes)

    verdict = make_validator().check(record_name, record)

    assert verdict.outcome == "reject"
    assert verdict.finding is not None
    assert verdict.finding.check == check
    assert text in verdict.finding.reason


@pytest.mark.parametrize("record_name", sorted(RAW_EVENTS))
def test_valid_record_accepted(record_name: str) -> None:
    verdict = make_validator().check(record_name, RAW_EVENTS[record_name]())
    assert verdict.accepted
    assert verdict.finding is None
    assert verdict.warnings == ()


def test_negative_count_reason_names_position() -> None:
    verdict = make_validator().check("SpikeFrame", spike_frame(**signed_counts(-7)))
    assert verdict.finding is not None
    assert verdict.finding.reason.startswith("spike counts contain -7 at bin 1, channel 5")


def test_signed_counts_without_negatives_accepted() -> None:
    verdict = make_validator().check("SpikeFrame", spike_frame(**signed_counts(9)))
    assert verdict.accepted


def test_unknown_record_rejected() -> None:
    verdict = make_validator().check("JobStatus", {"job_id": "job-1"})
    assert verdict.outcome == "reject"
    assert verdict.finding is not None
    assert verdict.finding.check == Check.UNKNOWN_RECORD
    assert "'JobStatus'" in verdict.finding.reason


def test_channel_count_change_rejected() -> None:
    validator = make_validator()
    assert validator.check("SpikeFrame", spike_frame(1)).accepted

    narrow = pack_counts(np.ones((2, 64), dtype=np.uint8))
    verdict = validator.check("SpikeFrame", spike_frame(2, **narrow, channel_ids=None))

    assert verdict.finding is not None
    assert verdict.finding.check == Check.CHANNEL_COUNT_CHANGED
    assert "expected 96" in verdict.finding.reason
    assert "received 64" in verdict.finding.reason


def test_bin_width_change_rejected() -> None:
    validator = make_validator()
    assert validator.check("SpikeFrame", spike_frame(1)).accepted

    verdict = validator.check("SpikeFrame", spike_frame(2, bin_ms=20))

    assert verdict.finding is not None
    assert verdict.finding.check == Check.BIN_WIDTH_CHANGED
    assert "expected 50 ms" in verdict.finding.reason
    assert "received 20 ms" in verdict.finding.reason


def test_new_session_may_change_layout() -> None:
    validator = make_validator()
    assert validator.check("SpikeFrame", spike_frame(1)).accepted
    verdict = validator.check("SpikeFrame", spike_frame(2, bin_ms=20, session_id="next-session"))
    assert verdict.accepted


def test_rejected_first_frame_sets_no_reference() -> None:
    validator = make_validator()
    assert not validator.check("SpikeFrame", spike_frame(1, **signed_counts(-1))).accepted
    narrow = pack_counts(np.ones((2, 64), dtype=np.uint8))
    assert validator.check("SpikeFrame", spike_frame(2, **narrow, channel_ids=None)).accepted


def test_future_event_time_rejected_past_accepted() -> None:
    validator = make_validator()
    assert validator.check("BehaviorEvent", behavior_event(1, event_time=EVENT_TIME)).accepted
    ahead = behavior_event(2, event_time=NOW + timedelta(seconds=301))
    assert validator.check("BehaviorEvent", ahead).finding is not None
    within = behavior_event(3, event_time=NOW + timedelta(seconds=299))
    assert validator.check("BehaviorEvent", within).accepted


def test_past_skew_limit_rejects_replay() -> None:
    validator = make_validator(max_past_skew_s=86_400.0)

    verdict = validator.check("BehaviorEvent", behavior_event(event_time=EVENT_TIME))

    assert verdict.finding is not None
    assert verdict.finding.check == Check.EVENT_TIME_SKEW
    assert EVENT_TIME.isoformat() in verdict.finding.reason
    assert "max_past_skew_s" in verdict.finding.reason


def test_skew_check_disabled() -> None:
    validator = make_validator(max_future_skew_s=None, max_past_skew_s=None)
    far_future = behavior_event(event_time=NOW + timedelta(days=3650))
    assert validator.check("BehaviorEvent", far_future).accepted


def test_duplicate_dropped_and_counted() -> None:
    validator = make_validator()
    assert validator.check("SpikeFrame", spike_frame(7)).accepted

    for seq in (7, 6):
        verdict = validator.check("SpikeFrame", spike_frame(seq))
        assert verdict.outcome == "duplicate"
        assert verdict.finding is not None
        assert verdict.finding.check == Check.DUPLICATE
        assert f"seq {seq} was already seen" in verdict.finding.reason
        assert "above 7" in verdict.finding.reason

    assert validator.counters[Check.DUPLICATE] == 2
    assert validator.counters["accepted"] == 1


def test_resent_rejected_event_is_duplicate() -> None:
    validator = make_validator()
    bad = spike_frame(3, **signed_counts(-1))
    assert validator.check("SpikeFrame", bad).outcome == "reject"
    assert validator.check("SpikeFrame", bad).outcome == "duplicate"


def test_duplicates_tracked_per_record_name() -> None:
    # Topics are not ordered among each other, so a lower seq on another topic is no repeat.
    validator = make_validator()
    assert validator.check("SpikeFrame", spike_frame(10)).accepted
    assert validator.check("BehaviorEvent", behavior_event(9)).accepted


def test_duplicates_tracked_per_board() -> None:
    validator = make_validator()
    assert validator.check("SpikeFrame", spike_frame(10)).accepted
    assert validator.check("SpikeFrame", spike_frame(10, board_id="cerebus-rig-3")).accepted


def test_sequence_gap_is_warning() -> None:
    validator = make_validator()
    assert validator.check("SpikeFrame", spike_frame(1)).accepted

    verdict = validator.check("SpikeFrame", spike_frame(5))

    assert verdict.accepted
    assert verdict.finding is None
    assert [warning.check for warning in verdict.warnings] == [Check.SEQUENCE_GAP]
    assert "seq 5 follows seq 1" in verdict.warnings[0].reason
    assert "3 events are not seen yet" in verdict.warnings[0].reason
    assert validator.counters[Check.SEQUENCE_GAP] == 1


def test_gap_counts_other_record_names() -> None:
    # The publisher numbers all events of a board from one counter.
    validator = make_validator()
    assert validator.check("SpikeFrame", spike_frame(1)).accepted
    assert validator.check("BehaviorEvent", behavior_event(2)).accepted
    assert validator.check("SpikeFrame", spike_frame(3)).warnings == ()


def test_sequence_gap_report_disabled() -> None:
    validator = make_validator(report_sequence_gaps=False)
    assert validator.check("SpikeFrame", spike_frame(1)).accepted
    assert validator.check("SpikeFrame", spike_frame(50)).warnings == ()


def test_reasons_contain_no_identifiers() -> None:
    validator = make_validator()
    verdicts: list[Verdict] = [
        validator.check("SpikeFrame", spike_frame(1)),
        validator.check("SpikeFrame", spike_frame(1)),
        validator.check("SpikeFrame", spike_frame(9, bin_ms=20)),
    ]
    verdicts += [
        make_validator().check(name, RAW_EVENTS[name](**changes))
        for name, changes, _, _ in REJECTIONS
    ]

    reasons = [verdict.finding.reason for verdict in verdicts if verdict.finding is not None]
    reasons += [warning.reason for verdict in verdicts for warning in verdict.warnings]
    assert len(reasons) == len(REJECTIONS) + 3
    for reason in reasons:
        for identifier in (BOARD_ID, SUBJECT_ID, SESSION_ID):
            assert identifier not in reason


def test_state_round_trip_through_json() -> None:
    validator = make_validator()
    assert validator.check("SpikeFrame", spike_frame(4)).accepted
    assert validator.check("BehaviorEvent", behavior_event(5)).accepted
    exported = json.loads(json.dumps(validator.export_state()))

    restored = make_validator()
    restored.import_state(exported)

    assert restored.export_state() == validator.export_state()
    assert restored.check("SpikeFrame", spike_frame(4)).outcome == "duplicate"
    assert restored.check("BehaviorEvent", behavior_event(5)).outcome == "duplicate"
    changed = restored.check("SpikeFrame", spike_frame(6, bin_ms=20))
    assert changed.finding is not None
    assert changed.finding.check == Check.BIN_WIDTH_CHANGED


def test_exported_state_layout() -> None:
    validator = make_validator()
    validator.check("SpikeFrame", spike_frame(4))
    assert validator.export_state() == {
        "version": 1,
        "boards": {
            BOARD_ID: {
                "max_seq": {"SpikeFrame": 4},
                "sessions": {SESSION_ID: {"n_channels": 96, "bin_ms": 50}},
            }
        },
    }


@pytest.mark.parametrize(
    ("state", "text"),
    [
        ({"version": 2, "boards": {}}, "expected 1, received 2"),
        ({"version": 1, "boards": []}, "at boards: expected a mapping"),
        ({"version": 1, "boards": {BOARD_ID: {"max_seq": {"SpikeFrame": "4"}}}}, "'4'"),
        (
            {"version": 1, "boards": {BOARD_ID: {"sessions": {SESSION_ID: {"n_channels": 96}}}}},
            "boards[0].sessions[0].bin_ms",
        ),
    ],
)
def test_malformed_state_raises(state: dict[str, Any], text: str) -> None:
    with pytest.raises(StateError) as excinfo:
        make_validator().import_state(state)
    assert text in str(excinfo.value)
    assert BOARD_ID not in str(excinfo.value)
    assert SESSION_ID not in str(excinfo.value)


def test_oldest_session_forgotten() -> None:
    validator = make_validator(max_sessions_per_board=2)
    for seq, session in enumerate(["day-1", "day-2", "day-3"], start=1):
        assert validator.check("SpikeFrame", spike_frame(seq, session_id=session)).accepted

    sessions = validator.export_state()["boards"][BOARD_ID]["sessions"]
    assert list(sessions) == ["day-2", "day-3"]


@pytest.mark.parametrize(
    ("settings", "text"),
    [
        ({"max_future_skew_s": -1.0}, "max_future_skew_s"),
        ({"max_past_skew_s": float("nan")}, "max_past_skew_s"),
        ({"probability_sum_tolerance": 1.5}, "1.5"),
        ({"max_sessions_per_board": 0}, "received 0"),
    ],
)
def test_invalid_settings_raise(settings: dict[str, Any], text: str) -> None:
    with pytest.raises(ValueError, match=text):
        ValidationSettings(**settings)


def test_default_clock_is_aware_utc() -> None:
    verdict = Validator().check("BehaviorEvent", behavior_event())
    assert verdict.accepted


def test_module_examples_run() -> None:
    result = doctest.testmod(streams.validate)
    assert result.attempted > 0
    assert result.failed == 0
