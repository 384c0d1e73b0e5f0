"""Tests of re-binning spike and e-skin frames into model steps (pure, no services)."""

from __future__ import annotations

import doctest
import random
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

import streams.window
from streams.exceptions import SessionMismatchError, StepWidthError, WindowError
from streams.window import EskinStep, EskinWindower, SpikeStep, SpikeWindower

N_CHANNELS = 4
STEP_US = 50_000


def spike_frame(
    t_session_us: int,
    counts: npt.ArrayLike,
    *,
    bin_ms: int = 10,
    seq: int = 0,
    session: str = "ses-a",
    dtype: str = "uint16",
) -> dict[str, Any]:
    """Return an anonymized spike frame whose counts are a (n_bins, n_channels) array."""
    array = np.asarray(counts, dtype=dtype)
    if array.ndim == 1:
        array = array[np.newaxis, :]
    return {
        "subject_pseudonym": "subj-" + session,
        "board_pseudonym": "board-1",
        "session_pseudonym": session,
        "key_id": "k1",
        "seq": seq,
        "session_day": 17,
        "t_session_us": t_session_us,
        "metadata": {},
        "bin_ms": bin_ms,
        "n_bins": array.shape[0],
        "n_channels": array.shape[1],
        "dtype": dtype,
        "counts": array.astype(np.dtype(dtype).newbyteorder("<")).tobytes(),
        "channel_ids": None,
    }


def eskin_frame(
    t_session_us: int,
    pressures: Sequence[float],
    *,
    total_force_n: float | None = None,
    seq: int = 0,
    session: str = "ses-a",
) -> dict[str, Any]:
    return {
        "subject_pseudonym": "subj-" + session,
        "board_pseudonym": "board-1",
        "session_pseudonym": session,
        "key_id": "k1",
        "seq": seq,
        "session_day": 17,
        "t_session_us": t_session_us,
        "metadata": {},
        "n_taxels": len(pressures),
        "pressures": list(pressures),
        "pressure_unit": "kpa",
        "contact_centroid": None,
        "total_force_n": total_force_n,
        "joint_positions": None,
        "label": None,
    }


def binned_stream(
    n_bins: int, *, bin_ms: int, bins_per_frame: int = 1, session: str = "ses-a", seed: int = 0
) -> tuple[list[dict[str, Any]], npt.NDArray[np.int64]]:
    """Return frames of `n_bins` consecutive bins from t=0 and their counts (n_bins, channels)."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 20, size=(n_bins, N_CHANNELS))
    frames = [
        spike_frame(
            start * bin_ms * 1000,
            counts[start : start + bins_per_frame],
            bin_ms=bin_ms,
            seq=start // bins_per_frame,
            session=session,
        )
        for start in range(0, n_bins, bins_per_frame)
    ]
    return frames, counts


def run(
    windower: SpikeWindower, frames: Iterable[dict[str, Any]], *, first_offset: int = 0
) -> list[SpikeStep]:
    """Add every frame at consecutive offsets of partition 0, flush, and return all steps."""
    steps: list[SpikeStep] = []
    for offset, frame in enumerate(frames, start=first_offset):
        output = windower.add(frame, partition=0, offset=offset)
        assert output.rejections == []
        steps.extend(output.steps)
    steps.extend(windower.flush())
    return steps


def summary(steps: Iterable[SpikeStep]) -> list[tuple[Any, ...]]:
    """Return the comparable content of step rows, with counts as lists."""
    return [
        (
            step["session_pseudonym"],
            step["step_index"],
            step["counts"].tolist(),
            step["bins_present"],
            step["gap"],
            step["first_seq"],
            step["last_seq"],
        )
        for step in steps
    ]


def test_docstring_examples() -> None:
    result = doctest.testmod(streams.window)
    assert result.attempted > 0
    assert result.failed == 0


# -- sums and re-binning


def test_steps_sum_to_input_counts() -> None:
    frames, counts = binned_stream(1000, bin_ms=1, seed=3)
    steps = run(SpikeWindower(step_ms=50, grace_ms=100), frames)

    total = np.stack([step["counts"] for step in steps]).sum(axis=0)
    assert total.tolist() == counts.sum(axis=0).tolist()
    assert [step["step_index"] for step in steps] == list(range(20))


def test_one_ms_bins_rebinned_to_50_ms() -> None:
    frames, counts = binned_stream(100, bin_ms=1)
    steps = run(SpikeWindower(step_ms=50, grace_ms=0), frames)

    assert len(steps) == 2
    for index, step in enumerate(steps):
        assert step["step_index"] == index
        assert step["t_step_us"] == index * STEP_US
        assert step["counts"].tolist() == counts[index * 50 : (index + 1) * 50].sum(0).tolist()
        assert step["bins_expected"] == 50
        assert step["bins_present"] == 50
        assert step["gap"] is False
        assert step["bin_ms"] == 1
        assert step["step_ms"] == 50
        assert step["n_channels"] == N_CHANNELS
        assert step["session_day"] == 17
        assert step["subject_pseudonym"] == "subj-ses-a"
    assert (steps[0]["first_seq"], steps[0]["last_seq"]) == (0, 49)
    assert (steps[1]["first_seq"], steps[1]["last_seq"]) == (50, 99)


def test_counts_sum_as_int32() -> None:
    frame = spike_frame(0, np.full((50, 2), 60_000), bin_ms=1, dtype="uint16")
    steps = SpikeWindower(step_ms=50, grace_ms=0).add(frame, partition=0, offset=0).steps

    assert steps[0]["counts"].dtype == np.int32
    assert steps[0]["counts"].tolist() == [3_000_000, 3_000_000]


def test_frame_bins_split_across_steps() -> None:
    counts = np.arange(20 * N_CHANNELS).reshape(20, N_CHANNELS)
    # 20 bins of 5 ms from 30 ms: 4 bins in step 0, 10 in step 1 and 6 in step 2.
    frame = spike_frame(30_000, counts, bin_ms=5, seq=9)
    windower = SpikeWindower(step_ms=50, grace_ms=0)
    steps = windower.add(frame, partition=0, offset=0).steps + windower.flush()

    assert [step["step_index"] for step in steps] == [0, 1, 2]
    assert [step["bins_present"] for step in steps] == [4, 10, 6]
    assert [step["gap"] for step in steps] == [True, False, True]
    assert steps[0]["counts"].tolist() == counts[0:4].sum(0).tolist()
    assert steps[1]["counts"].tolist() == counts[4:14].sum(0).tolist()
    assert steps[2]["counts"].tolist() == counts[14:20].sum(0).tolist()
    assert all(step["first_seq"] == step["last_seq"] == 9 for step in steps)


def test_multi_bin_frames_match_single_bin_frames() -> None:
    single, _ = binned_stream(300, bin_ms=5, bins_per_frame=1, seed=5)
    multi, _ = binned_stream(300, bin_ms=5, bins_per_frame=7, seed=5)

    single_steps = run(SpikeWindower(step_ms=50, grace_ms=20), single)
    multi_steps = run(SpikeWindower(step_ms=50, grace_ms=20), multi)

    # Sequence numbers differ by construction: one per bin against one per 7 bins.
    assert [row[:5] for row in summary(multi_steps)] == [row[:5] for row in summary(single_steps)]


def test_bins_with_offset_phase() -> None:
    # Bins on a grid shifted by 2.5 ms still give 10 bins of 5 ms per step.
    frames = [spike_frame(2_500 + i * 5_000, [1] * N_CHANNELS, bin_ms=5) for i in range(30)]
    steps = run(SpikeWindower(step_ms=50, grace_ms=0), frames)

    assert [step["bins_present"] for step in steps] == [10, 10, 10]
    assert [step["gap"] for step in steps] == [False, False, False]


def test_negative_session_time() -> None:
    frames = [spike_frame(t, [1] * N_CHANNELS, bin_ms=10) for t in range(-100_000, 0, 10_000)]
    steps = run(SpikeWindower(step_ms=50, grace_ms=0), frames)

    assert [step["step_index"] for step in steps] == [-2, -1]
    assert [step["t_step_us"] for step in steps] == [-100_000, -50_000]
    assert [step["bins_present"] for step in steps] == [5, 5]


# -- order, lateness and duplicates


def test_shuffled_within_grace_same_steps() -> None:
    frames, _ = binned_stream(2000, bin_ms=1, seed=11)
    ordered = run(SpikeWindower(step_ms=50, grace_ms=20), frames)

    # Shuffle within blocks of 10 frames: no frame arrives more than 9 ms behind, under 20 ms.
    shuffled = list(frames)
    shuffler = random.Random(20240502)
    for start in range(0, len(shuffled), 10):
        block = shuffled[start : start + 10]
        shuffler.shuffle(block)
        shuffled[start : start + 10] = block
    assert shuffled != frames

    assert summary(run(SpikeWindower(step_ms=50, grace_ms=20), shuffled)) == summary(ordered)


def test_late_frame_rejected_with_reason() -> None:
    windower = SpikeWindower(step_ms=50, grace_ms=100)
    for i in range(40):
        windower.add(spike_frame(i * 10_000, [1] * N_CHANNELS, seq=i), partition=0, offset=i)
    # Newest bin ends at 400 ms, so steps 0 to 5 (ends up to 300 ms) were emitted.
    late = spike_frame(20_000, [7] * N_CHANNELS, seq=99)

    output = windower.add(late, partition=0, offset=40)

    assert output.steps == []
    assert len(output.rejections) == 1
    rejection = output.rejections[0]
    assert rejection.session_pseudonym == "ses-a"
    assert rejection.step_index == 0
    assert rejection.late_ms == 370.0
    assert rejection.grace_ms == 100
    assert rejection.code == "late"
    assert "session ses-a" in rejection.reason
    assert "step 0" in rejection.reason
    assert "370 ms" in rejection.reason
    assert "grace of 100 ms" in rejection.reason


def test_late_bins_not_added() -> None:
    windower = SpikeWindower(step_ms=50, grace_ms=0)
    steps = []
    for i in range(10):
        steps += windower.add(spike_frame(i * 10_000, [1] * 4), partition=0, offset=i).steps
    windower.add(spike_frame(0, [50] * 4), partition=0, offset=10)
    steps += windower.flush()

    assert [step["counts"].tolist() for step in steps] == [[5] * 4, [5] * 4]


def test_partly_late_frame_keeps_on_time_bins() -> None:
    windower = SpikeWindower(step_ms=50, grace_ms=0)
    windower.add(spike_frame(0, np.ones((10, 4))), partition=0, offset=0)  # steps 0 and 1
    windower.add(spike_frame(100_000, np.ones((1, 4))), partition=0, offset=1)  # emits 0, 1
    # Bins at 90 ms (step 1, emitted) and 100 to 130 ms (step 2, open).
    output = windower.add(spike_frame(90_000, np.full((5, 4), 2)), partition=0, offset=2)

    assert [rejection.step_index for rejection in output.rejections] == [1]
    assert output.rejections[0].count == 1
    step_2 = windower.flush()[0]
    assert step_2["step_index"] == 2
    assert step_2["bins_present"] == 4
    # The bin at 100 ms arrived twice and counts once, from the earlier frame.
    assert step_2["counts"].tolist() == [1 + 3 * 2] * 4
    assert windower.duplicates == 1


def test_duplicate_bins_ignored_and_counted() -> None:
    frames, counts = binned_stream(100, bin_ms=10)
    windower = SpikeWindower(step_ms=50, grace_ms=200)
    doubled = [frame for frame in frames for _ in range(2)]

    steps = run(windower, doubled)

    assert windower.duplicates == 100
    total = np.stack([step["counts"] for step in steps]).sum(axis=0)
    assert total.tolist() == counts.sum(axis=0).tolist()
    assert all(step["bins_present"] == 5 for step in steps)


def test_duplicate_bins_within_multi_bin_frame() -> None:
    windower = SpikeWindower(step_ms=50, grace_ms=0)
    windower.add(spike_frame(0, np.ones((3, 4))), partition=0, offset=0)
    windower.add(spike_frame(10_000, np.full((3, 4), 5)), partition=0, offset=1)
    step = windower.flush()[0]

    assert windower.duplicates == 2
    assert step["bins_present"] == 4
    assert step["counts"].tolist() == [1 + 1 + 1 + 5] * 4


# -- gaps


def test_gap_rows_between_steps() -> None:
    windower = SpikeWindower(step_ms=50, grace_ms=0)
    frames = [spike_frame(t, [1] * 4) for t in (0, 10_000, 160_000, 170_000)]
    steps = run(windower, frames)

    assert [step["step_index"] for step in steps] == [0, 1, 2, 3]
    gaps = steps[1:3]
    assert all(step["gap"] for step in gaps)
    assert all(step["bins_present"] == 0 for step in gaps)
    assert all(step["counts"].tolist() == [0] * 4 for step in gaps)
    assert all(step["first_seq"] is None and step["last_seq"] is None for step in gaps)
    assert [step["bins_present"] for step in (steps[0], steps[3])] == [2, 2]
    assert steps[0]["gap"] and steps[3]["gap"]


def test_no_steps_before_first_or_after_last_bin() -> None:
    frames = [spike_frame(t, [1] * 4) for t in range(500_000, 600_000, 10_000)]
    steps = run(SpikeWindower(step_ms=50, grace_ms=0), frames)

    assert [step["step_index"] for step in steps] == [10, 11]


def test_missing_bins_flag_gap() -> None:
    frames = [spike_frame(t, [1] * 4) for t in (0, 10_000, 30_000, 40_000)]
    (step,) = run(SpikeWindower(step_ms=50, grace_ms=0), frames)

    assert step["bins_expected"] == 5
    assert step["bins_present"] == 4
    assert step["gap"] is True


# -- bad input


@pytest.mark.parametrize("bin_ms", [3, 7, 0, -10, 100])
def test_step_not_multiple_of_bin_rejected(bin_ms: int) -> None:
    windower = SpikeWindower(step_ms=50)

    with pytest.raises(StepWidthError) as caught:
        windower.add(spike_frame(0, [1] * 4, bin_ms=bin_ms), partition=0, offset=0)

    assert "50 ms" in str(caught.value)
    assert f"{bin_ms} ms" in str(caught.value)
    assert caught.value.reason == "step_not_multiple_of_bin"
    assert windower.open_steps() == 0


@pytest.mark.parametrize("step_ms", [0, -50])
def test_invalid_step_width_rejected(step_ms: int) -> None:
    with pytest.raises(StepWidthError, match=str(step_ms)):
        SpikeWindower(step_ms=step_ms)


def test_negative_grace_rejected() -> None:
    with pytest.raises(ValueError, match="-1"):
        SpikeWindower(grace_ms=-1)


def test_channel_count_change_rejected() -> None:
    windower = SpikeWindower(step_ms=50)
    windower.add(spike_frame(0, [1] * 4), partition=0, offset=0)

    with pytest.raises(SessionMismatchError) as caught:
        windower.add(spike_frame(10_000, [1] * 5), partition=0, offset=1)

    assert "ses-a" in str(caught.value)
    assert "[0]@1" in str(caught.value)
    assert isinstance(caught.value, WindowError)


def test_bin_width_change_rejected() -> None:
    windower = SpikeWindower(step_ms=50)
    windower.add(spike_frame(0, [1] * 4, bin_ms=10), partition=0, offset=0)

    with pytest.raises(SessionMismatchError, match="bin width"):
        windower.add(spike_frame(10_000, [1] * 4, bin_ms=5), partition=0, offset=1)


# -- offsets and resumption


def test_min_open_offset_moves_as_steps_close() -> None:
    windower = SpikeWindower(step_ms=50, grace_ms=10)
    assert windower.min_open_offset(0) is None

    for i in range(5):  # step 0 at offsets 100 to 104
        windower.add(spike_frame(i * 10_000, [1] * 4), partition=0, offset=100 + i)
    assert windower.min_open_offset(0) == 100

    # The bin at 50 ms ends at 60 ms, so the watermark reaches the end of step 0.
    windower.add(spike_frame(50_000, [1] * 4), partition=0, offset=105)
    assert windower.min_open_offset(0) == 105

    windower.add(spike_frame(60_000, [1] * 4), partition=0, offset=106)
    assert windower.min_open_offset(0) == 105

    windower.flush()
    assert windower.min_open_offset(0) is None


def test_min_open_offset_per_partition() -> None:
    windower = SpikeWindower(step_ms=50, grace_ms=0)
    windower.add(spike_frame(0, [1] * 4, session="ses-a"), partition=0, offset=7)
    windower.add(spike_frame(0, [1] * 4, session="ses-b"), partition=1, offset=3)
    windower.add(spike_frame(0, [1] * 4, session="ses-c"), partition=1, offset=2)

    assert windower.min_open_offset(0) == 7
    assert windower.min_open_offset(1) == 2
    assert windower.min_open_offset(2) is None


def test_forget_partition_drops_its_sessions() -> None:
    windower = SpikeWindower(step_ms=50, grace_ms=0)
    windower.add(spike_frame(0, [1] * 4, session="ses-a"), partition=0, offset=7)
    windower.add(spike_frame(0, [1] * 4, session="ses-b"), partition=1, offset=3)

    assert windower.forget_partition(1) == ["ses-b"]
    assert windower.min_open_offset(1) is None
    assert windower.min_open_offset(0) == 7
    assert [step["session_pseudonym"] for step in windower.flush()] == ["ses-a"]


def test_min_open_offset_ignores_late_and_duplicate_frames() -> None:
    windower = SpikeWindower(step_ms=50, grace_ms=0)
    windower.add(spike_frame(0, [1] * 4), partition=0, offset=10)
    windower.add(spike_frame(60_000, [1] * 4), partition=0, offset=11)  # step 0 emitted
    windower.add(spike_frame(0, [1] * 4), partition=0, offset=12)  # late
    windower.add(spike_frame(60_000, [1] * 4), partition=0, offset=13)  # duplicate

    assert windower.min_open_offset(0) == 11


def interleaved_sessions(seed: int) -> list[dict[str, Any]]:
    """Return two sessions of 5 ms bins in one partition, interleaved and slightly out of order."""
    a, _ = binned_stream(400, bin_ms=5, bins_per_frame=3, session="ses-a", seed=seed)
    b, _ = binned_stream(400, bin_ms=5, bins_per_frame=2, session="ses-b", seed=seed + 1)
    # Drop a stretch of ses-b so that it has gap rows.
    b = [frame for frame in b if not 600_000 <= frame["t_session_us"] < 800_000]
    frames = sorted(a + b, key=lambda frame: frame["t_session_us"])
    shuffler = random.Random(seed)
    for start in range(0, len(frames), 4):
        block = frames[start : start + 4]
        shuffler.shuffle(block)
        frames[start : start + 4] = block
    return frames


@pytest.mark.parametrize("crash_at", [1, 57, 200, 333])
def test_resume_after_crash_emits_each_step_once(crash_at: int) -> None:
    frames = interleaved_sessions(seed=crash_at)
    uninterrupted = run(SpikeWindower(step_ms=50, grace_ms=40), frames)

    # First run: read `crash_at` records, write the steps, store min_open_offset, crash.
    first = SpikeWindower(step_ms=50, grace_ms=40)
    written: list[SpikeStep] = []
    for offset, frame in enumerate(frames[:crash_at]):
        written += first.add(frame, partition=0, offset=offset).steps
    stored = first.min_open_offset(0)
    restart_offset = crash_at if stored is None else stored

    # Restart: resume every session from the rows written, read again from the stored offset.
    second = SpikeWindower(step_ms=50, grace_ms=40)
    for session in {step["session_pseudonym"] for step in written}:
        last = max(s["step_index"] for s in written if s["session_pseudonym"] == session)
        second.resume(session, last)
    replayed = run(second, frames[restart_offset:], first_offset=restart_offset)

    def by_session(steps: list[SpikeStep]) -> list[tuple[Any, ...]]:
        return sorted(summary(steps), key=lambda row: (row[0], row[1]))

    assert by_session(written + replayed) == by_session(uninterrupted)


def test_resume_drops_open_steps_already_written() -> None:
    windower = SpikeWindower(step_ms=50, grace_ms=1000)
    for i in range(20):  # steps 0 to 3, all open
        windower.add(spike_frame(i * 10_000, [1] * 4), partition=0, offset=i)

    windower.resume("ses-a", 1)

    assert windower.open_steps() == 2
    assert windower.min_open_offset(0) == 10
    output = windower.add(spike_frame(0, [1] * 4), partition=0, offset=20)
    assert output.rejections == []
    assert windower.skipped == 1
    assert [step["step_index"] for step in windower.flush()] == [2, 3]


def test_resume_skips_without_rejection() -> None:
    windower = SpikeWindower(step_ms=50, grace_ms=0)
    windower.resume("ses-a", 4)
    steps: list[SpikeStep] = []
    rejections = []
    for i in range(40):
        output = windower.add(spike_frame(i * 10_000, [1] * 4), partition=0, offset=i)
        steps += output.steps
        rejections += output.rejections
    steps += windower.flush()

    assert rejections == []
    assert windower.skipped == 25
    assert [step["step_index"] for step in steps] == [5, 6, 7]


def test_resume_then_gap_rows_up_to_first_step() -> None:
    windower = SpikeWindower(step_ms=50, grace_ms=0)
    windower.resume("ses-a", 2)
    steps = run(windower, [spike_frame(250_000, [1] * 4)])

    assert [step["step_index"] for step in steps] == [3, 4, 5]
    assert [step["bins_present"] for step in steps] == [0, 0, 1]


# -- e-skin


def eskin_steps(windower: EskinWindower, frames: Iterable[dict[str, Any]]) -> list[EskinStep]:
    steps: list[EskinStep] = []
    for offset, frame in enumerate(frames):
        output = windower.add(frame, partition=0, offset=offset)
        assert output.rejections == []
        steps.extend(output.steps)
    steps.extend(windower.flush())
    return steps


def test_eskin_summaries() -> None:
    frames = [
        eskin_frame(0, [1.0, 4.0, 0.0], total_force_n=2.0, seq=1),
        eskin_frame(20_000, [3.0, 2.0, 0.0], total_force_n=None, seq=2),
        eskin_frame(40_000, [2.0, 0.0, 6.0], total_force_n=4.0, seq=3),
        eskin_frame(60_000, [5.0, 5.0, 5.0], seq=4),
    ]
    steps = eskin_steps(EskinWindower(step_ms=50, grace_ms=0), frames)

    assert [step["step_index"] for step in steps] == [0, 1]
    first, second = steps
    assert first["n_samples"] == 3
    assert first["pressure_mean"].tolist() == [2.0, 2.0, 2.0]
    assert first["pressure_max"].tolist() == [3.0, 4.0, 6.0]
    assert first["total_force_mean_n"] == 3.0
    assert first["gap"] is False
    assert (first["first_seq"], first["last_seq"]) == (1, 3)
    assert first["n_taxels"] == 3
    assert first["pressure_unit"] == "kpa"
    assert second["n_samples"] == 1
    assert second["total_force_mean_n"] is None


def test_eskin_gap_rows_between_steps() -> None:
    frames = [eskin_frame(t, [1.0, 1.0]) for t in (10_000, 210_000)]
    steps = eskin_steps(EskinWindower(step_ms=50, grace_ms=0), frames)

    assert [step["step_index"] for step in steps] == [0, 1, 2, 3, 4]
    assert [step["gap"] for step in steps] == [False, True, True, True, False]
    assert steps[2]["n_samples"] == 0
    assert steps[2]["pressure_mean"].tolist() == [0.0, 0.0]
    assert steps[2]["total_force_mean_n"] is None


def test_eskin_late_sample_rejected() -> None:
    windower = EskinWindower(step_ms=50, grace_ms=10)
    windower.add(eskin_frame(0, [1.0]), partition=0, offset=0)
    windower.add(eskin_frame(100_000, [1.0]), partition=0, offset=1)  # emits step 0

    output = windower.add(eskin_frame(30_000, [9.0]), partition=0, offset=2)

    assert [rejection.step_index for rejection in output.rejections] == [0]
    assert output.rejections[0].late_ms == 70.0
    assert "grace of 10 ms" in output.rejections[0].reason


def test_eskin_out_of_order_and_duplicates() -> None:
    frames = [eskin_frame(t, [float(t // 10_000)], seq=t) for t in range(0, 200_000, 10_000)]
    ordered = eskin_steps(EskinWindower(step_ms=50, grace_ms=30), frames)
    shuffled = list(frames)
    for start in range(0, len(shuffled), 3):
        block = shuffled[start : start + 3]
        random.Random(start).shuffle(block)
        shuffled[start : start + 3] = block
    windower = EskinWindower(step_ms=50, grace_ms=30)
    with_duplicates = eskin_steps(windower, [frame for frame in shuffled for _ in range(2)])

    def content(steps: list[EskinStep]) -> list[tuple[Any, ...]]:
        return [
            (s["step_index"], s["n_samples"], s["pressure_mean"].tolist(), s["first_seq"])
            for s in steps
        ]

    assert content(with_duplicates) == content(ordered)
    assert windower.duplicates == 20


def test_eskin_offsets_and_resume() -> None:
    windower = EskinWindower(step_ms=50, grace_ms=0)
    windower.resume("ses-a", 0)
    windower.add(eskin_frame(10_000, [1.0]), partition=3, offset=40)  # step 0, skipped
    windower.add(eskin_frame(60_000, [1.0]), partition=3, offset=41)

    assert windower.skipped == 1
    assert windower.min_open_offset(3) == 41
    assert [step["step_index"] for step in windower.flush("ses-a")] == [1]
    assert windower.min_open_offset(3) is None


def test_eskin_pressure_count_mismatch_rejected() -> None:
    frame = eskin_frame(0, [1.0, 2.0])
    frame["n_taxels"] = 3

    with pytest.raises(SessionMismatchError, match="n_taxels = 3"):
        EskinWindower().add(frame, partition=0, offset=0)
