"""Semantic checks of raw board events, the first stage after decoding.

The codec already rejects what Avro types cannot hold and packed counts of the wrong length.
This stage checks what a well-formed record can still get wrong. Examples are negative spike
counts, a channel layout or bin width that changes within a session, non-finite pressures,
probabilities that are not a distribution, event times far from the processor clock, and
repeated sequence numbers. `Validator.check` returns a `Verdict` for each event:

- ``accept``: the event goes on to anonymization. ``warnings`` may list observations such as
  a `sequence_gap`, which the processor logs at WARNING level and counts.
- ``reject``: the event goes to the dead-letter topic with ``finding.check`` and
  ``finding.reason``.
- ``duplicate``: the event repeats a sequence number already seen. It is dropped and counted,
  not dead-lettered, because an at-least-once publisher resends events after a retry.

Reasons name the bad value and the expected one. They never contain a board, subject or
session identifier, so a processor may log them.

>>> from datetime import UTC, datetime
>>> validator = Validator(clock=lambda: datetime(2024, 5, 2, tzinfo=UTC))
>>> event = {"board_id": "b1", "subject_id": "s1", "session_id": "x", "seq": 1,
...          "event_time": datetime(2012, 7, 18, tzinfo=UTC), "kind": "go_cue", "value": None}
>>> validator.check("BehaviorEvent", event).outcome
'accept'
>>> verdict = validator.check("BehaviorEvent", event)
>>> verdict.outcome, str(verdict.finding.check)
('duplicate', 'duplicate')
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Final, Literal

import numpy as np

from schemas.counts import unpack_counts
from schemas.exceptions import ShapeError
from schemas.shapes import check_decoder_output, check_spike_frame
from streams.exceptions import StateError

STATE_FORMAT_VERSION: Final = 1
"""Version of the dictionary that `Validator.export_state` returns."""


class Check(StrEnum):
    """Machine-readable name of each check, used as the dead-letter reason code."""

    UNKNOWN_RECORD = "unknown_record"
    DUPLICATE = "duplicate"
    SHAPE_MISMATCH = "shape_mismatch"
    COUNTS_NEGATIVE = "counts_negative"
    CHANNEL_COUNT_CHANGED = "channel_count_changed"
    BIN_WIDTH_CHANGED = "bin_width_changed"
    TAXEL_COUNT_MISMATCH = "taxel_count_mismatch"
    PRESSURE_UNIT_UNKNOWN = "pressure_unit_unknown"
    PRESSURE_NOT_FINITE = "pressure_not_finite"
    VALUE_NOT_FINITE = "value_not_finite"
    PROBABILITIES_INVALID = "probabilities_invalid"
    EVENT_TIME_SKEW = "event_time_skew"
    SEQUENCE_GAP = "sequence_gap"


Outcome = Literal["accept", "reject", "duplicate"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One failed check: its name and a reason that names the value and the expected one."""

    check: Check
    reason: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """Result of validating one event."""

    outcome: Outcome
    finding: Finding | None = None  # why the event is rejected or a duplicate, None if accepted
    warnings: tuple[Finding, ...] = ()  # observations that do not stop the event

    @property
    def accepted(self) -> bool:
        """True when the event goes on to anonymization."""
        return self.outcome == "accept"


_ACCEPTED: Final = Verdict("accept")

BOARD_EVENTS: Final = frozenset({"SpikeFrame", "BehaviorEvent", "EskinFrame", "DecoderOutput"})
PRESSURE_UNITS: Final = frozenset({"kpa", "raw_capacitance"})


@dataclass(frozen=True, slots=True)
class ValidationSettings:
    """Limits of the validator.

    Event times are compared with the processor clock. Replays publish recordings with their
    original times (the limblab sessions date from 2012), so by default only times in the
    future are limited: a board clock that runs ahead is a fault, an old time is a replay.
    Set ``max_past_skew_s`` to also reject old times in a deployment that never replays.
    """

    max_future_skew_s: float | None = 300.0
    """Seconds an event time may lie ahead of the processor clock. None disables the check."""
    max_past_skew_s: float | None = None
    """Seconds an event time may lie behind the processor clock. None (default) allows any."""
    probability_sum_tolerance: float = 1e-3
    """Allowed difference between the sum of a decoder's probabilities and 1."""
    max_sessions_per_board: int = 8
    """Sessions per board whose channel count and bin width are kept. The oldest is dropped."""
    report_sequence_gaps: bool = True
    """Add a `sequence_gap` warning to events that skip sequence numbers of their board."""

    def __post_init__(self) -> None:
        for name in ("max_future_skew_s", "max_past_skew_s"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ValueError(f"{name} must be None or >= 0 seconds, received {value!r}")
        if not 0 <= self.probability_sum_tolerance < 1:
            raise ValueError(
                "probability_sum_tolerance must be in [0, 1), "
                f"received {self.probability_sum_tolerance!r}"
            )
        if self.max_sessions_per_board < 1:
            raise ValueError(
                f"max_sessions_per_board must be >= 1, received {self.max_sessions_per_board!r}"
            )


@dataclass(slots=True)
class SessionReference:
    """Channel count and bin width of the first accepted spike frame of a session."""

    n_channels: int
    bin_ms: int


@dataclass(slots=True)
class BoardState:
    """State that the validator keeps for one board."""

    max_seq: dict[str, int] = field(default_factory=dict)  # record name -> highest seq seen
    sessions: dict[str, SessionReference] = field(default_factory=dict)  # oldest first

    def to_dict(self) -> dict[str, Any]:
        """Return the state as plain dicts, lists, strings and ints."""
        return {
            "max_seq": dict(self.max_seq),
            "sessions": {
                session_id: {"n_channels": ref.n_channels, "bin_ms": ref.bin_ms}
                for session_id, ref in self.sessions.items()
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "board") -> BoardState:
        """Build the state from `to_dict` output, raising `StateError` on a malformed entry."""
        max_seq = _mapping(data.get("max_seq", {}), f"{where}.max_seq")
        sessions = _mapping(data.get("sessions", {}), f"{where}.sessions")
        state = cls()
        for record_name, seq in max_seq.items():
            state.max_seq[str(record_name)] = _integer(seq, f"{where}.max_seq.{record_name}")
        # Paths in messages use positions, because ids are identifying.
        for index, (session_id, entry) in enumerate(sessions.items()):
            path = f"{where}.sessions[{index}]"
            entry = _mapping(entry, path)
            state.sessions[str(session_id)] = SessionReference(
                n_channels=_integer(entry.get("n_channels"), f"{path}.n_channels"),
                bin_ms=_integer(entry.get("bin_ms"), f"{path}.bin_ms"),
            )
        return state


class Validator:
    """Semantic checks of raw events, with the small state they need per board.

    The publisher numbers all events of a board from one increasing counter and sends them
    in that order. Each record name has its own raw topic keyed by board id, so the events of
    one board and record name arrive in increasing ``seq``, while Kafka gives no order between
    topics. Duplicates are therefore found per board and record name: an event whose ``seq``
    is at most the highest one seen for its record name is a resend.

    A `sequence_gap` compares ``seq`` with the highest one seen on the board over all record
    names. It means "not seen yet", not "lost": the missing numbers may still arrive on
    another topic, or a publisher restart skipped them.

    Per session of a board, the channel count and bin width of the first accepted spike frame
    are the reference for every later frame of that session.

    NOTE: the state is keyed by raw board and session ids. Persist `export_state` only where
    raw data may be kept, such as a changelog topic with the retention of the raw topics.
    """

    def __init__(
        self,
        settings: ValidationSettings | None = None,
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        """Create a validator with empty state. `clock` returns the aware current time."""
        self.settings = settings if settings is not None else ValidationSettings()
        self.counters: Counter[str] = Counter()  # events by check name, and "accepted"
        self._clock = clock if clock is not None else _utc_now
        self._boards: dict[str, BoardState] = {}
        self._future_skew = _seconds(self.settings.max_future_skew_s)
        self._past_skew = _seconds(self.settings.max_past_skew_s)

    def check(self, record_name: str, record: Mapping[str, Any]) -> Verdict:
        """Validate one decoded raw event and update the state.

        Steps: 1. reject unknown record names, 2. drop duplicates, 3. run the record's own
        checks, 4. check the event time, 5. compare a spike frame with its session reference,
        6. note a sequence gap, 7. update the state. A rejected event still advances the
        highest seq seen, so a resend of it is dropped as a duplicate instead of being
        dead-lettered twice. Only an accepted spike frame sets a session reference.
        """
        # 1. Unknown record names.
        if record_name not in BOARD_EVENTS:
            return self._reject(
                Finding(
                    Check.UNKNOWN_RECORD,
                    f"unexpected record {record_name!r} on a raw topic: expected one of "
                    f"{', '.join(sorted(BOARD_EVENTS))}",
                )
            )

        # 2. Duplicates.
        board = self._boards.get(record["board_id"])
        if board is None:
            board = self._boards[record["board_id"]] = BoardState()
        seq = record["seq"]
        previous_seq = board.max_seq.get(record_name)
        if previous_seq is not None and seq <= previous_seq:
            self.counters[Check.DUPLICATE] += 1
            return Verdict(
                "duplicate",
                Finding(
                    Check.DUPLICATE,
                    f"{record_name} seq {seq} was already seen: expected a seq above "
                    f"{previous_seq}, the highest seen for {record_name} on this board",
                ),
            )

        # 3.-5. Rejections.
        finding = _RECORD_CHECKS[record_name](record, self.settings)
        if finding is None:
            finding = self._check_event_time(record["event_time"])
        if finding is None and record_name == "SpikeFrame":
            finding = self._check_session(board, record)

        # 6. Sequence gaps.
        warnings: tuple[Finding, ...] = ()
        board_seq = max(board.max_seq.values(), default=None)
        if self.settings.report_sequence_gaps and board_seq is not None and seq > board_seq + 1:
            self.counters[Check.SEQUENCE_GAP] += 1
            warnings = (
                Finding(
                    Check.SEQUENCE_GAP,
                    f"{record_name} seq {seq} follows seq {board_seq}, the highest seen on this "
                    f"board: expected {board_seq + 1}, so {seq - board_seq - 1} events are not "
                    "seen yet (lost, still on another topic, or skipped by a publisher restart)",
                ),
            )

        # 7. State.
        board.max_seq[record_name] = seq
        if finding is not None:
            return self._reject(finding, warnings)
        if record_name == "SpikeFrame":
            self._remember_session(board, record)
        self.counters["accepted"] += 1
        return Verdict("accept", warnings=warnings) if warnings else _ACCEPTED

    def export_state(self) -> dict[str, Any]:
        """Return the state as plain dicts, for a faust table, a changelog or a JSON file."""
        return {
            "version": STATE_FORMAT_VERSION,
            "boards": {board_id: state.to_dict() for board_id, state in self._boards.items()},
        }

    def import_state(self, state: Mapping[str, Any]) -> None:
        """Replace the state with `export_state` output, raising `StateError` if malformed."""
        version = state.get("version")
        if version != STATE_FORMAT_VERSION:
            raise StateError(
                f"unsupported validator state version: expected {STATE_FORMAT_VERSION}, "
                f"received {version!r}"
            )
        boards = _mapping(state.get("boards", {}), "boards")
        imported: dict[str, BoardState] = {}
        for index, (board_id, entry) in enumerate(boards.items()):
            where = f"boards[{index}]"  # a position, because board ids are identifying
            imported[str(board_id)] = BoardState.from_dict(_mapping(entry, where), where=where)
        self._boards = imported

    def _reject(self, finding: Finding, warnings: tuple[Finding, ...] = ()) -> Verdict:
        self.counters[finding.check] += 1
        return Verdict("reject", finding, warnings)

    def _check_event_time(self, event_time: datetime) -> Finding | None:
        if self._future_skew is None and self._past_skew is None:
            return None
        now = self._clock()
        if self._future_skew is not None and event_time > now + self._future_skew:
            ahead_s = (event_time - now).total_seconds()
            return Finding(
                Check.EVENT_TIME_SKEW,
                f"event time {event_time.isoformat()} is {ahead_s:.3f} s ahead of the processor "
                f"clock {now.isoformat()}: expected at most {self.settings.max_future_skew_s} s "
                "(max_future_skew_s); check the board clock",
            )
        if self._past_skew is not None and event_time < now - self._past_skew:
            behind_s = (now - event_time).total_seconds()
            return Finding(
                Check.EVENT_TIME_SKEW,
                f"event time {event_time.isoformat()} is {behind_s:.3f} s behind the processor "
                f"clock {now.isoformat()}: expected at most {self.settings.max_past_skew_s} s "
                "(max_past_skew_s); raise or disable the limit to replay old recordings",
            )
        return None

    @staticmethod
    def _check_session(board: BoardState, record: Mapping[str, Any]) -> Finding | None:
        reference = board.sessions.get(record["session_id"])
        if reference is None:
            return None
        if record["n_channels"] != reference.n_channels:
            return Finding(
                Check.CHANNEL_COUNT_CHANGED,
                f"n_channels changed within the session: expected {reference.n_channels} as in "
                f"its first spike frame, received {record['n_channels']}; a new channel layout "
                "needs a new session id",
            )
        if record["bin_ms"] != reference.bin_ms:
            return Finding(
                Check.BIN_WIDTH_CHANGED,
                f"bin_ms changed within the session: expected {reference.bin_ms} ms as in its "
                f"first spike frame, received {record['bin_ms']} ms; a new bin width needs a "
                "new session id",
            )
        return None

    def _remember_session(self, board: BoardState, record: Mapping[str, Any]) -> None:
        session_id = record["session_id"]
        if session_id in board.sessions:
            return
        board.sessions[session_id] = SessionReference(record["n_channels"], record["bin_ms"])
        if len(board.sessions) > self.settings.max_sessions_per_board:
            del board.sessions[next(iter(board.sessions))]


# Checks of one record without state. Each returns the first failed check or None.

Record = Mapping[str, Any]
RecordCheck = Callable[[Record, "ValidationSettings"], "Finding | None"]


def _check_spike_frame(record: Record, settings: ValidationSettings) -> Finding | None:
    try:
        check_spike_frame(record, "")
        counts = unpack_counts(record)  # (n_bins, n_channels)
    except ShapeError as exc:
        return Finding(Check.SHAPE_MISMATCH, str(exc))

    threshold = record.get("threshold_rms")
    if threshold is not None and not math.isfinite(threshold):
        return Finding(
            Check.VALUE_NOT_FINITE,
            f"SpikeFrame threshold_rms is {threshold}: expected a finite multiple of the RMS "
            "noise or null",
        )

    if counts.dtype.kind == "i":
        lowest = int(counts.argmin())  # index into the flattened (n_bins, n_channels) array
        value = int(counts.flat[lowest])
        if value < 0:
            bin_index, channel = divmod(lowest, record["n_channels"])
            return Finding(
                Check.COUNTS_NEGATIVE,
                f"spike counts contain {value} at bin {bin_index}, channel {channel}: expected "
                "counts >= 0",
            )
    return None


def _check_behavior_event(record: Record, settings: ValidationSettings) -> Finding | None:
    value = record.get("value")
    if value is not None and not math.isfinite(value):
        return Finding(
            Check.VALUE_NOT_FINITE,
            f"BehaviorEvent value is {value}: expected a finite number or null",
        )
    return None


def _check_eskin_frame(record: Record, settings: ValidationSettings) -> Finding | None:
    n_taxels = record["n_taxels"]
    pressures = record["pressures"]
    if n_taxels < 1 or len(pressures) != n_taxels:
        return Finding(
            Check.TAXEL_COUNT_MISMATCH,
            f"EskinFrame has {len(pressures)} pressures and n_taxels {n_taxels}: expected one "
            "pressure per taxel and at least one taxel",
        )

    unit = record["pressure_unit"]
    if unit not in PRESSURE_UNITS:
        return Finding(
            Check.PRESSURE_UNIT_UNKNOWN,
            f"unknown pressure_unit {unit!r}: expected one of {', '.join(sorted(PRESSURE_UNITS))}",
        )

    bad = _first_non_finite(pressures)
    if bad is not None:
        return Finding(
            Check.PRESSURE_NOT_FINITE,
            f"pressure of taxel {bad[0]} is {bad[1]}: expected a finite value in {unit}",
        )

    for name in ("contact_centroid", "joint_positions"):
        values = record.get(name)
        bad = _first_non_finite(values) if values is not None else None
        if bad is not None:
            return Finding(
                Check.VALUE_NOT_FINITE,
                f"EskinFrame {name}[{bad[0]}] is {bad[1]}: expected finite values",
            )
    force = record.get("total_force_n")
    if force is not None and not math.isfinite(force):
        return Finding(
            Check.VALUE_NOT_FINITE,
            f"EskinFrame total_force_n is {force}: expected a finite force in newtons or null",
        )
    return None


def _check_decoder_output(record: Record, settings: ValidationSettings) -> Finding | None:
    try:
        check_decoder_output(record, "")
    except ShapeError as exc:
        return Finding(Check.SHAPE_MISMATCH, str(exc))

    probabilities = np.asarray(record["probabilities"], dtype=np.float64)  # (classes,)
    bad = _first_non_finite(probabilities)
    if bad is not None:
        return Finding(
            Check.PROBABILITIES_INVALID,
            f"probability of class {bad[0]} is {bad[1]}: expected a finite value from 0 to 1",
        )
    outside = np.flatnonzero((probabilities < 0.0) | (probabilities > 1.0))
    if outside.size:
        index = int(outside[0])
        return Finding(
            Check.PROBABILITIES_INVALID,
            f"probability of class {index} is {float(probabilities[index])}: expected a value "
            "from 0 to 1",
        )
    total = float(probabilities.sum())
    if abs(total - 1.0) > settings.probability_sum_tolerance:
        return Finding(
            Check.PROBABILITIES_INVALID,
            f"probabilities sum to {total}: expected 1 within "
            f"{settings.probability_sum_tolerance} (probability_sum_tolerance)",
        )
    return None


_RECORD_CHECKS: Final[Mapping[str, RecordCheck]] = {
    "SpikeFrame": _check_spike_frame,
    "BehaviorEvent": _check_behavior_event,
    "EskinFrame": _check_eskin_frame,
    "DecoderOutput": _check_decoder_output,
}


def _first_non_finite(values: Any) -> tuple[int, float] | None:
    """Return the index and value of the first NaN or infinity in `values`, or None."""
    array = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(array)
    if finite.all():
        return None
    index = int(np.argmin(finite))  # first False
    return index, float(array[index])


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _seconds(value: float | None) -> timedelta | None:
    return None if value is None else timedelta(seconds=value)


def _mapping(value: Any, where: str) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        raise StateError(
            f"malformed validator state at {where}: expected a mapping, "
            f"received {type(value).__name__}"
        )
    return value


def _integer(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise StateError(
            f"malformed validator state at {where}: expected an integer, received {value!r}"
        )
    return value
