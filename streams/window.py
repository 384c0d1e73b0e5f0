"""Re-binning of anonymized spike and e-skin frames into model steps, one session at a time.

Step k of a session covers session time ``[k * step_ms, (k + 1) * step_ms)``. A spike bin
belongs to the step that contains its start, and an e-skin sample to the step that contains its
time. Each session has a watermark: the end of its newest bin (for e-skin, the time of its
newest sample) minus the grace period. A step is emitted once the watermark reaches its end, so
frames that arrive out of order by less than the grace period give the same steps as ordered
ones. A bin or sample whose step was already emitted is late: `add` returns it as a
`Rejection`, and the caller sends the frame to the dead-letter topic.

Steps without any bin that lie between two steps with data are emitted as gap rows with zero
counts. No step is emitted before the first or after the last bin of a session.

Exactly-once use by a Kafka consumer (one windower per consumer, sessions keyed by pseudonym
so that each session lives in one partition):

1. Feed each record with ``add(record, partition=..., offset=...)`` and write the emitted steps.
2. With each commit of steps, store ``min_open_offset(partition)`` as the next offset to read,
   or the offset after the last record read when it returns None.
3. After a restart, call ``resume(session, last_step_index)`` for every session with rows in
   the silver table, then read again from the stored offset. The open steps are rebuilt from
   the records read again, and bins of steps that were already written are skipped.

>>> import numpy as np
>>> windower = SpikeWindower(step_ms=50, grace_ms=0)
>>> frame = {"subject_pseudonym": "s1", "session_pseudonym": "x1", "session_day": 3,
...          "seq": 1, "t_session_us": 0, "bin_ms": 10, "n_bins": 10, "n_channels": 2,
...          "dtype": "uint8", "counts": np.ones((10, 2), dtype=np.uint8).tobytes()}
>>> output = windower.add(frame, partition=0, offset=41)
>>> [(step["step_index"], step["counts"].tolist(), step["gap"]) for step in output.steps]
[(0, [5, 5], False), (1, [5, 5], False)]
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypedDict, TypeVar

import numpy as np
import numpy.typing as npt

from schemas.counts import CountArray, unpack_counts
from schemas.exceptions import format_position
from streams.exceptions import SessionMismatchError, StepWidthError

DEFAULT_STEP_MS: Final = 50
"""Model step width in milliseconds."""
DEFAULT_GRACE_MS: Final = 1000
"""Grace period in milliseconds: data that ends further behind the newest data of its session
than this arrives after its step was emitted, and is late."""

_US_PER_MS: Final = 1000


class SpikeStep(TypedDict):
    """One row of the silver ``spike_steps`` table: the spike counts of one session and step."""

    subject_pseudonym: str
    session_pseudonym: str
    session_day: int
    step_index: int
    t_step_us: int  # step start, microseconds since session start
    step_ms: int
    bin_ms: int
    n_channels: int
    counts: npt.NDArray[np.int32]  # (n_channels,): sum over the bins present
    bins_expected: int
    bins_present: int
    gap: bool  # bins_present < bins_expected
    first_seq: int | None  # smallest board sequence number that contributed, None without bins
    last_seq: int | None


class EskinStep(TypedDict):
    """One row of the silver ``eskin_steps`` table: the e-skin summary of one session and step."""

    subject_pseudonym: str
    session_pseudonym: str
    session_day: int
    step_index: int
    t_step_us: int
    step_ms: int
    n_taxels: int
    n_samples: int
    pressure_mean: npt.NDArray[np.float64]  # (n_taxels,), zeros without samples
    pressure_max: npt.NDArray[np.float64]  # (n_taxels,), zeros without samples
    pressure_unit: str | None
    total_force_mean_n: float | None  # mean over the samples that report a total force
    gap: bool  # no sample in this step
    first_seq: int | None
    last_seq: int | None


RowT = TypeVar("RowT", SpikeStep, EskinStep)


@dataclass(frozen=True, slots=True)
class Rejection:
    """Bins or samples of one frame that arrived after their step was emitted."""

    session_pseudonym: str
    step_index: int
    t_first_us: int  # start of the first late bin, or the time of the late sample
    count: int  # late bins of this frame in this step (1 for an e-skin sample)
    late_ms: float  # how far the data ends behind the newest data of its session
    grace_ms: int
    reason: str
    code: str = "late"


@dataclass(slots=True)
class WindowOutput(Generic[RowT]):
    """Result of one `add` call: the steps it completed and the data it rejected as late."""

    steps: list[RowT] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)


class _Step:
    """Accumulator of one open step. Subclasses add the sums of their data."""

    __slots__ = ("first_seq", "last_seq", "min_offset", "times_us")

    def __init__(self) -> None:
        self.times_us: set[int] = set()  # bin starts or sample times already added
        self.first_seq: int | None = None
        self.last_seq: int | None = None
        self.min_offset: int | None = None  # smallest Kafka offset that contributed

    def note_source(self, seq: int, offset: int) -> None:
        if self.first_seq is None or seq < self.first_seq:
            self.first_seq = seq
        if self.last_seq is None or seq > self.last_seq:
            self.last_seq = seq
        if self.min_offset is None or offset < self.min_offset:
            self.min_offset = offset


class _SpikeAccumulator(_Step):
    __slots__ = ("counts",)

    def __init__(self, n_channels: int) -> None:
        super().__init__()
        self.counts = np.zeros(n_channels, dtype=np.int32)  # (n_channels,)


class _EskinAccumulator(_Step):
    __slots__ = ("force_count", "force_sum", "pressure_max", "pressure_sum")

    def __init__(self, n_taxels: int) -> None:
        super().__init__()
        self.pressure_sum = np.zeros(n_taxels, dtype=np.float64)  # (n_taxels,)
        self.pressure_max = np.full(n_taxels, -np.inf, dtype=np.float64)  # (n_taxels,)
        self.force_sum = 0.0
        self.force_count = 0


StepT = TypeVar("StepT", bound=_Step)


class _Session(Generic[StepT]):
    """Window state of one session."""

    __slots__ = (
        "bin_us",
        "last_emitted",
        "max_end_us",
        "open",
        "partition",
        "session_day",
        "session_pseudonym",
        "skip_through",
        "subject_pseudonym",
        "unit",
        "width",
    )

    def __init__(
        self,
        record: Mapping[str, Any],
        *,
        partition: int,
        width: int,
        bin_us: int,
        skip_through: int | None,
    ) -> None:
        self.session_pseudonym: str = record["session_pseudonym"]
        self.subject_pseudonym: str = record["subject_pseudonym"]
        self.session_day: int = record["session_day"]  # of the first record of the session
        self.partition = partition
        self.width = width  # channels or taxels
        self.bin_us = bin_us  # 0 for e-skin samples
        self.unit: str | None = record.get("pressure_unit")
        self.open: dict[int, StepT] = {}  # step index -> accumulator
        self.max_end_us: int | None = None  # end of the newest bin seen
        # After `resume`, steps up to `skip_through` were written before the restart.
        self.last_emitted: int | None = skip_through
        self.skip_through: int | None = skip_through


class _Windower(ABC, Generic[StepT, RowT]):
    """Session bookkeeping, watermarks, emission and offsets shared by both windowers."""

    def __init__(self, step_ms: int, grace_ms: int) -> None:
        if isinstance(step_ms, bool) or not isinstance(step_ms, int) or step_ms <= 0:
            raise StepWidthError(f"invalid step width {step_ms!r}: expected a positive int of ms")
        if isinstance(grace_ms, bool) or not isinstance(grace_ms, int) or grace_ms < 0:
            raise ValueError(f"invalid grace period {grace_ms!r}: expected an int of ms >= 0")
        self.step_ms = step_ms
        self.grace_ms = grace_ms
        self._step_us = step_ms * _US_PER_MS
        self._grace_us = grace_ms * _US_PER_MS
        # NOTE: a session's state stays after its last frame, so that later data for it is
        # still found late. A long-running consumer keeps one small entry per session seen.
        self._sessions: dict[str, _Session[StepT]] = {}
        self._resumed: dict[str, int] = {}  # resume points of sessions not seen yet
        self.duplicates = 0
        """Bins or samples ignored because the same time was already in an open step."""
        self.skipped = 0
        """Bins or samples ignored because their step was written before a restart."""

    # -- public API shared by both windowers

    def flush(self, session: str | None = None) -> list[RowT]:
        """Emit the open steps of one session, or of all sessions, as they are.

        Use at the end of a stream or at shutdown. Missing bins show in the gap flags. Data
        that arrives later for a flushed step is late.
        """
        names = list(self._sessions) if session is None else [session]
        rows: list[RowT] = []
        for name in names:
            state = self._sessions.get(name)
            if state is not None and state.open:
                self._emit_through(state, max(state.open), rows)
        return rows

    def min_open_offset(self, partition: int) -> int | None:
        """Return the smallest offset of any record in an open step of `partition`, or None.

        Reading the partition again from this offset rebuilds every open step.
        """
        smallest: int | None = None
        for state in self._sessions.values():
            if state.partition != partition:
                continue
            for step in state.open.values():
                if step.min_offset is not None and (smallest is None or step.min_offset < smallest):
                    smallest = step.min_offset
        return smallest

    def resume(self, session: str, last_emitted_step_index: int) -> None:
        """Skip data of `session` for steps up to `last_emitted_step_index`, written before.

        Call it after a restart, before reading the partition again. Skipped data is neither
        emitted nor rejected, and is counted in `skipped`.

        NOTE: after a restart a bin of a written step that arrives late for the first time is
        skipped as well, because the windower cannot tell it from a bin read again.
        """
        state = self._sessions.get(session)
        if state is None:
            previous = self._resumed.get(session)
            if previous is None or last_emitted_step_index > previous:
                self._resumed[session] = last_emitted_step_index
            return

        for index in [index for index in state.open if index <= last_emitted_step_index]:
            del state.open[index]
        if state.skip_through is None or last_emitted_step_index > state.skip_through:
            state.skip_through = last_emitted_step_index
        if state.last_emitted is None or last_emitted_step_index > state.last_emitted:
            state.last_emitted = last_emitted_step_index

    def forget_partition(self, partition: int) -> list[str]:
        """Drop every session read from `partition` and return their pseudonyms.

        Call it when a consumer loses the partition, so that open steps the new owner rebuilds
        are never emitted here as well.
        """
        names = [name for name, state in self._sessions.items() if state.partition == partition]
        for name in names:
            del self._sessions[name]
        return names

    def open_steps(self) -> int:
        """Return the number of open steps over all sessions."""
        return sum(len(state.open) for state in self._sessions.values())

    # -- hooks of the two windowers

    @abstractmethod
    def _new_step(self, state: _Session[StepT]) -> StepT: ...

    @abstractmethod
    def _row(self, state: _Session[StepT], index: int, step: StepT | None) -> RowT: ...

    # -- shared steps of `add`

    def _session(
        self, record: Mapping[str, Any], *, partition: int, width: int, bin_us: int, where: str
    ) -> _Session[StepT]:
        """Return the state of the record's session, creating it on the first record."""
        name = record["session_pseudonym"]
        state = self._sessions.get(name)
        if state is None:
            state = _Session(
                record,
                partition=partition,
                width=width,
                bin_us=bin_us,
                skip_through=self._resumed.pop(name, None),
            )
            self._sessions[name] = state
            return state

        if state.width != width or state.bin_us != bin_us or state.partition != partition:
            raise SessionMismatchError(
                f"{where}: frame does not match session {name}: expected partition "
                f"{state.partition}, width {state.width} and bin width {state.bin_us} us as in "
                f"its first frame, received partition {partition}, width {width} and bin width "
                f"{bin_us} us; a session must keep its layout, so start a new session instead"
            )
        return state

    def _target(
        self, state: _Session[StepT], index: int, time_us: int, end_us: int, count: int
    ) -> StepT | Rejection | None:
        """Return the open step for data of step `index`, a rejection when late, or None to skip."""
        if state.skip_through is not None and index <= state.skip_through:
            self.skipped += count
            return None
        if state.last_emitted is not None and index <= state.last_emitted:
            return self._late(state, index, time_us, end_us, count)

        step = state.open.get(index)
        if step is None:
            step = self._new_step(state)
            state.open[index] = step
        return step

    def _late(
        self, state: _Session[StepT], index: int, time_us: int, end_us: int, count: int
    ) -> Rejection:
        newest_us = state.max_end_us if state.max_end_us is not None else end_us
        late_ms = (newest_us - end_us) / _US_PER_MS
        if state.bin_us == 0:
            noun = "sample" if count == 1 else "samples"
        else:
            noun = "bin" if count == 1 else "bins"
        reason = (
            f"late data: step {index} of session {state.session_pseudonym} was already "
            f"emitted; {count} {noun} from t_session_us {time_us} arrived {late_ms:g} ms "
            f"behind the session's newest data, beyond the grace of {self.grace_ms} ms"
        )
        return Rejection(
            session_pseudonym=state.session_pseudonym,
            step_index=index,
            t_first_us=time_us,
            count=count,
            late_ms=late_ms,
            grace_ms=self.grace_ms,
            reason=reason,
        )

    def _advance(self, state: _Session[StepT], end_us: int, rows: list[RowT]) -> None:
        """Move the session's watermark to cover data ending at `end_us` and emit what it passed."""
        if state.max_end_us is None or end_us > state.max_end_us:
            state.max_end_us = end_us
        watermark_us = state.max_end_us - self._grace_us
        complete_through = watermark_us // self._step_us - 1  # last step whose end <= watermark

        if state.last_emitted is not None:
            if complete_through > state.last_emitted:
                self._emit_through(state, complete_through, rows)
        elif state.open and complete_through >= min(state.open):
            self._emit_through(state, complete_through, rows)

    def _emit_through(self, state: _Session[StepT], last: int, rows: list[RowT]) -> None:
        """Emit steps up to `last` in order, with a gap row for each step without data."""
        # The first step of a session is its first step with data, never an invented one.
        first = min(state.open) if state.last_emitted is None else state.last_emitted + 1
        # NOTE: a long outage of a board gives one gap row per missing step (72,000 per hour
        # at 50 ms), all in this call.
        for index in range(first, last + 1):
            rows.append(self._row(state, index, state.open.pop(index, None)))
        if first <= last:
            state.last_emitted = last


class SpikeWindower(_Windower[_SpikeAccumulator, SpikeStep]):
    """Re-bins anonymized spike frames into model steps of `step_ms` milliseconds.

    Counts are summed as int32, per channel, over the bins present. A frame may hold several
    bins: bin i starts at ``t_session_us + i * bin_ms * 1000``. A bin whose start is already in
    its open step is a duplicate and is counted in `duplicates`, not added again.
    """

    def __init__(self, step_ms: int = DEFAULT_STEP_MS, grace_ms: int = DEFAULT_GRACE_MS) -> None:
        super().__init__(step_ms, grace_ms)

    def add(
        self, frame: Mapping[str, Any], *, partition: int, offset: int
    ) -> WindowOutput[SpikeStep]:
        """Add an anonymized spike frame read at `partition` and `offset`.

        Returns the steps that the frame completed and its late bins, one `Rejection` per late
        step. The other bins of a frame with late bins are still added. Raises `StepWidthError`
        when the bin width does not divide the step width, `SessionMismatchError` when the
        frame's layout differs from its session's first frame, and `schemas.exceptions.
        ShapeError` when the packed counts do not match their shape fields.
        """
        where = format_position(partition=partition, offset=offset)
        counts = unpack_counts(frame, where=where)  # (n_bins, n_channels)
        n_bins, n_channels = counts.shape
        bin_us = self._bin_us(frame, where)
        state = self._session(
            frame, partition=partition, width=n_channels, bin_us=bin_us, where=where
        )

        output: WindowOutput[SpikeStep] = WindowOutput()
        t0_us: int = frame["t_session_us"]
        seq: int = frame["seq"]
        step_us = self._step_us
        first = 0
        while first < n_bins:
            start_us = t0_us + first * bin_us
            index = start_us // step_us
            # Bins of this frame up to the end of step `index`.
            bins_in_step = -(-((index + 1) * step_us - start_us) // bin_us)
            stop = min(n_bins, first + bins_in_step)
            self._add_bins(state, index, start_us, counts[first:stop], seq, offset, output)
            first = stop

        self._advance(state, t0_us + n_bins * bin_us, output.steps)
        return output

    def _bin_us(self, frame: Mapping[str, Any], where: str) -> int:
        bin_ms = frame["bin_ms"]
        if not isinstance(bin_ms, int) or bin_ms <= 0 or self.step_ms % bin_ms != 0:
            raise StepWidthError(
                f"{where}: step width {self.step_ms} ms is not a positive multiple of the bin "
                f"width {bin_ms!r} ms of session {frame['session_pseudonym']}; expected a bin "
                f"width that divides {self.step_ms} ms, or a step width that is a multiple of "
                f"{bin_ms!r} ms"
            )
        return bin_ms * _US_PER_MS

    def _add_bins(
        self,
        state: _Session[_SpikeAccumulator],
        index: int,
        start_us: int,
        block: CountArray,  # (bins, n_channels), all in step `index`
        seq: int,
        offset: int,
        output: WindowOutput[SpikeStep],
    ) -> None:
        n_bins = block.shape[0]
        bin_us = state.bin_us
        target = self._target(state, index, start_us, start_us + n_bins * bin_us, n_bins)
        if target is None:
            return
        if isinstance(target, Rejection):
            output.rejections.append(target)
            return

        seen = target.times_us
        if n_bins == 1:
            if start_us in seen:
                self.duplicates += 1
                return
            seen.add(start_us)
            target.counts += block[0]
        else:
            fresh = [i for i in range(n_bins) if start_us + i * bin_us not in seen]
            if len(fresh) < n_bins:
                self.duplicates += n_bins - len(fresh)
                if not fresh:
                    return
                block = block[fresh]
            seen.update(start_us + i * bin_us for i in fresh)
            target.counts += block.sum(axis=0, dtype=np.int32)  # (n_channels,)
        target.note_source(seq, offset)

    def _new_step(self, state: _Session[_SpikeAccumulator]) -> _SpikeAccumulator:
        return _SpikeAccumulator(state.width)

    def _row(
        self, state: _Session[_SpikeAccumulator], index: int, step: _SpikeAccumulator | None
    ) -> SpikeStep:
        bins_expected = self._step_us // state.bin_us
        if step is None:
            counts = np.zeros(state.width, dtype=np.int32)
            bins_present = 0
            first_seq = last_seq = None
        else:
            counts = step.counts
            bins_present = len(step.times_us)
            first_seq, last_seq = step.first_seq, step.last_seq
        return {
            "subject_pseudonym": state.subject_pseudonym,
            "session_pseudonym": state.session_pseudonym,
            "session_day": state.session_day,
            "step_index": index,
            "t_step_us": index * self._step_us,
            "step_ms": self.step_ms,
            "bin_ms": state.bin_us // _US_PER_MS,
            "n_channels": state.width,
            "counts": counts,
            "bins_expected": bins_expected,
            "bins_present": bins_present,
            "gap": bins_present < bins_expected,
            "first_seq": first_seq,
            "last_seq": last_seq,
        }


class EskinWindower(_Windower[_EskinAccumulator, EskinStep]):
    """Summarizes anonymized e-skin frames per model step of `step_ms` milliseconds.

    Each frame is one sample at its `t_session_us`. A step row contains the mean and max pressure
    of each taxel, the number of samples and the mean total force of the samples that report
    one. A sample whose time is already in its open step is a duplicate and is counted in
    `duplicates`, not added again.
    """

    def __init__(self, step_ms: int = DEFAULT_STEP_MS, grace_ms: int = DEFAULT_GRACE_MS) -> None:
        super().__init__(step_ms, grace_ms)

    def add(
        self, frame: Mapping[str, Any], *, partition: int, offset: int
    ) -> WindowOutput[EskinStep]:
        """Add an anonymized e-skin frame read at `partition` and `offset`.

        Returns the steps that the frame completed and, when its step was already emitted, a
        `Rejection`. Raises `SessionMismatchError` when `pressures` does not hold `n_taxels`
        values or the taxel count differs from the session's first frame.
        """
        where = format_position(partition=partition, offset=offset)
        pressures = np.asarray(frame["pressures"], dtype=np.float64)  # (n_taxels,)
        n_taxels = frame["n_taxels"]
        if pressures.shape != (n_taxels,):
            raise SessionMismatchError(
                f"{where}: e-skin frame of session {frame['session_pseudonym']} has "
                f"{pressures.size} pressures: expected n_taxels = {n_taxels}"
            )
        state = self._session(frame, partition=partition, width=n_taxels, bin_us=0, where=where)

        output: WindowOutput[EskinStep] = WindowOutput()
        time_us: int = frame["t_session_us"]
        index = time_us // self._step_us
        target = self._target(state, index, time_us, time_us, 1)
        if isinstance(target, Rejection):
            output.rejections.append(target)
        elif target is not None:
            self._add_sample(target, time_us, pressures, frame, offset)

        self._advance(state, time_us, output.steps)
        return output

    def _add_sample(
        self,
        step: _EskinAccumulator,
        time_us: int,
        pressures: npt.NDArray[np.float64],  # (n_taxels,)
        frame: Mapping[str, Any],
        offset: int,
    ) -> None:
        if time_us in step.times_us:
            self.duplicates += 1
            return
        step.times_us.add(time_us)
        step.pressure_sum += pressures
        np.maximum(step.pressure_max, pressures, out=step.pressure_max)
        force = frame.get("total_force_n")
        if force is not None:
            step.force_sum += force
            step.force_count += 1
        step.note_source(frame["seq"], offset)

    def _new_step(self, state: _Session[_EskinAccumulator]) -> _EskinAccumulator:
        return _EskinAccumulator(state.width)

    def _row(
        self, state: _Session[_EskinAccumulator], index: int, step: _EskinAccumulator | None
    ) -> EskinStep:
        n_samples = 0 if step is None else len(step.times_us)
        if step is None or n_samples == 0:
            mean = np.zeros(state.width, dtype=np.float64)
            maximum = np.zeros(state.width, dtype=np.float64)
            force_mean = None
            first_seq = last_seq = None
        else:
            mean = step.pressure_sum / n_samples
            maximum = step.pressure_max
            force_mean = step.force_sum / step.force_count if step.force_count else None
            first_seq, last_seq = step.first_seq, step.last_seq
        return {
            "subject_pseudonym": state.subject_pseudonym,
            "session_pseudonym": state.session_pseudonym,
            "session_day": state.session_day,
            "step_index": index,
            "t_step_us": index * self._step_us,
            "step_ms": self.step_ms,
            "n_taxels": state.width,
            "n_samples": n_samples,
            "pressure_mean": mean,
            "pressure_max": maximum,
            "pressure_unit": state.unit,
            "total_force_mean_n": force_mean,
            "gap": n_samples == 0,
            "first_seq": first_seq,
            "last_seq": last_seq,
        }
