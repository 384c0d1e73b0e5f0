"""The next-day protocol on small synthetic days: folds, settings, skipped days and the table."""

from __future__ import annotations

import numpy as np
import pytest

from training.nextday import (
    DayTrials,
    LdaDecoder,
    TrialDays,
    render_table,
    run_next_day,
    stratified_folds,
)

CHANNELS = 4
STEPS = 3


def _day(day: int, trials: int, *, gain: float = 1.0, seed: int = 0) -> DayTrials:
    """Trials of two classes that differ in channel 0; ``gain`` scales every count (drift)."""
    rng = np.random.default_rng(seed + day)
    targets = np.arange(trials) % 2
    windows = rng.poisson(3.0, size=(trials, STEPS, CHANNELS)).astype(np.float64)
    windows[targets == 1, :, 0] += 6.0
    counts = rng.poisson(3.0, size=(500, CHANNELS)).astype(np.float64)
    return DayTrials(
        day=day,
        name=f"day {day}",
        counts=np.rint(counts * gain).astype(np.int32),
        windows=np.rint(windows * gain).astype(np.int32),
        targets=targets.astype(np.int64),
        fallback_trials=0,
    )


def test_stratified_folds_spread_each_class() -> None:
    targets = np.array([0] * 10 + [1] * 5)
    folds = stratified_folds(targets, 5, seed=0)
    for fold in range(5):
        assert np.sum((folds == fold) & (targets == 0)) == 2
        assert np.sum((folds == fold) & (targets == 1)) == 1


def test_lda_separates_shifted_channel() -> None:
    day = _day(0, 40)
    decoder = LdaDecoder(shrinkage=0.1)
    decoder.fit(day.windows.astype(np.float32), day.targets)
    predicted = decoder.predict(day.windows.astype(np.float32))
    assert np.mean(predicted == day.targets) > 0.9


def test_zscoring_recovers_from_gain_drift() -> None:
    days = [_day(0, 40), _day(1, 40), _day(2, 40), _day(5, 40, gain=3.0)]
    result = run_next_day(TrialDays(days, ["a", "b"], "synthetic"), ["lda"])
    accuracy = result.days[0].accuracy["lda"]

    assert result.days[0].days_since_training == 3
    assert accuracy["supervised"] > 0.9
    assert accuracy["zscore"] > 0.9
    assert accuracy["pooled"] < accuracy["zscore"]


def test_day_with_too_few_trials_skipped() -> None:
    days = [_day(0, 40), _day(1, 40), _day(2, 40), _day(3, 3), _day(4, 40)]
    result = run_next_day(TrialDays(days, ["a", "b"], "synthetic"), ["lda"])
    assert [day.name for day in result.days] == ["day 4"]
    assert "day 3 skipped: 3 rewarded trials" in result.notes[0]


def test_too_few_days_rejected() -> None:
    with pytest.raises(ValueError, match="at least 4 days, got 3"):
        run_next_day(TrialDays([_day(0, 20), _day(1, 20), _day(2, 20)], ["a", "b"], "s"))


def test_table_lists_reference_figures() -> None:
    days = [_day(0, 40), _day(1, 40), _day(2, 40), _day(3, 40)]
    table = render_table(run_next_day(TrialDays(days, ["a", "b"], "synthetic"), ["lda"]))
    assert "1 test day (day 3 to day 3)" in table
    assert "supervised within day k (5-fold)" in table
    assert "0.78" in table
    assert "chance 0.500" in table
