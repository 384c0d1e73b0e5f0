"""The next-day protocol: how well a decoder trained on earlier days classifies a new day.

Task: classify the target of each rewarded trial from the spike counts of the ``steps`` steps
(10 steps of 50 ms by default) from its movement start. The movement start is the go cue, or
the outer-target time for a trial without one (counted in ``DayTrials.fallback_trials``).
For every day k from ``first_test_day`` (4) to the last, the decoders are trained on all
earlier days and tested on day k, in these settings:

``supervised``
    5-fold cross-validation within day k, with its labels: the upper reference.
``pooled``
    trained on the earlier days with features scaled by their pooled channel statistics, and
    applied to day k as it is (no adaptation).
``zscore``
    label-free adaptation by per-day z-scoring: every day, day k included, is scaled with the
    statistics of its own unlabelled steps.
``read_in``
    label-free adaptation of the ``pooled`` decoder by read-in alignment: its read-in is
    refitted in closed form so that day k's unlabelled steps get the latent mean and
    covariance of the training days (``training.adapt.align_read_in``). Only decoders with a
    latent read-in (``gru``, ``tcn``) have this setting.

Decoders: ``lda`` (linear discriminant on summed counts, the method of the published
reference figures), and ``linear``, ``gru`` and ``tcn`` from ``training.models`` on the whole
window. ``REFERENCE`` contains the reference figures measured with ``lda`` on days 4-16 of the
limblab Spike sessions.

Days come from a gold dataset (``days_from_arrays``) or straight from limblab recording files
(``days_from_recordings``), which needs no lake.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt

from training.adapt import ChannelStats, LatentMoments, align_read_in, latent_moments
from training.data import NO_OFFSET, OUTCOMES, StepArrays

logger = logging.getLogger(__name__)

TRIAL_STEPS: Final = 10
FIRST_TEST_DAY: Final = 4
FOLDS: Final = 5
SETTINGS: Final = ("supervised", "pooled", "zscore", "read_in")
SETTING_TITLES: Final = {
    "supervised": "supervised within day k (5-fold)",
    "pooled": "pooled days < k, no adaptation",
    "zscore": "label-free: per-day z-scoring",
    "read_in": "label-free: read-in alignment",
}
REFERENCE: Final = {"supervised": 0.78, "pooled": 0.55, "zscore": 0.70}
"""Published reference: linear discriminant on summed counts, days 4-16 of limblab Spike."""
CHANCE: Final = 0.125


@dataclass(frozen=True)
class DayTrials:
    """The rewarded trials of one day, and every unlabelled step of that day."""

    day: int
    """Day number; differences between days are in calendar days."""
    name: str
    counts: npt.NDArray[np.int32]  # (steps, channels): every gap-free step of the day
    windows: npt.NDArray[np.int32]  # (trials, steps, channels): counts from movement start
    targets: npt.NDArray[np.int64]  # (trials,): index into the classes
    fallback_trials: int | None = None
    """Trials whose window starts at the outer-target time (no go cue); None when unknown."""


@dataclass(frozen=True)
class TrialDays:
    """Days of one subject in day order, and the trial class names."""

    days: list[DayTrials]
    classes: list[str]
    source: str


# ---------------------------------------------------------------------------------------------
# Sources


def days_from_recordings(paths: Iterable[Path], *, steps: int = TRIAL_STEPS) -> TrialDays:
    """Read limblab recording files (one session each) and group their trials by date.

    Day numbers count calendar days from the earliest recording. Sessions of the same date
    are one day.
    """
    # NOTE: this uses the board-side replay readers instead of the lake, so the protocol can
    # run before any dataset is prepared. It is the only import of `boards` in `training`.
    from boards.replay import open_recording

    per_date: dict[date, list[tuple[str, Any, Any, Any, int]]] = {}
    class_names: set[str] = set()
    for path in sorted(Path(p) for p in paths):
        recording = open_recording(path, board_id="nextday", subject_id="nextday")
        counts, windows, labels, fallback = _recording_trials(recording, steps)
        class_names.update(labels)
        per_date.setdefault(recording.start_time.date(), []).append(
            (path.name, counts, windows, labels, fallback)
        )
    if not per_date:
        raise ValueError("no recording files given; expected limblab .mat files")

    classes = sorted(class_names, key=_natural_key)
    first = min(per_date)
    days = []
    for day_date in sorted(per_date):
        parts = per_date[day_date]
        labels = [label for part in parts for label in part[3]]
        days.append(
            DayTrials(
                day=(day_date - first).days,
                name=day_date.isoformat(),
                counts=np.concatenate([part[1] for part in parts]),
                windows=np.concatenate([part[2] for part in parts]),
                targets=np.array([classes.index(label) for label in labels], dtype=np.int64),
                fallback_trials=sum(part[4] for part in parts),
            )
        )
    source = f"{sum(len(parts) for parts in per_date.values())} limblab recording files"
    return TrialDays(days=days, classes=classes, source=source)


def _recording_trials(
    recording: Any, steps: int
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int32], list[str], int]:
    """Return all counts, the trial windows, their class labels and the fallback count."""
    segment = recording.segments[0]
    counts = np.asarray(segment.counts, dtype=np.int32)  # (bins, channels)
    bin_us = recording.bin_ms * 1000
    trials: dict[int, dict[str, Any]] = {}
    for marker in recording.markers:
        if marker.trial_id is not None:
            trials.setdefault(marker.trial_id, {})[marker.kind] = marker

    windows, labels, fallback = [], [], 0
    for markers in trials.values():
        outcome = markers.get("outcome")
        label = markers.get("class_label")
        start = markers.get("go_cue") or markers.get("target_on")
        if outcome is None or outcome.label != "reward" or label is None or start is None:
            continue
        first = -(-(start.offset_us - segment.offset_us) // bin_us)  # first step at or after
        if first < 0 or first + steps > counts.shape[0]:
            continue
        windows.append(counts[first : first + steps])
        labels.append(str(label.label))
        fallback += "go_cue" not in markers
    stacked = np.stack(windows) if windows else np.zeros((0, steps, counts.shape[1]), np.int32)
    return counts, stacked, labels, fallback


def days_from_arrays(
    arrays: StepArrays, *, subject: str | None = None, steps: int = TRIAL_STEPS
) -> TrialDays:
    """Collect the rewarded trials of one subject of a gold dataset, per session day.

    Every split is used: the protocol chooses its own training and test days.
    """
    info = arrays.info
    if subject is None:
        if len(info.subjects) != 1:
            raise ValueError(
                f"dataset {info.name} has {len(info.subjects)} subjects; choose one of "
                f"{info.subjects}"
            )
        subject = info.subjects[0]
    subject_code = info.subjects.index(subject)
    channels = info.channels[subject]
    classes = list(info.trial_classes)

    of_subject = np.asarray(arrays.subject) == subject_code
    offsets = np.asarray(arrays.steps_from_go)
    in_window = (
        of_subject
        & (np.asarray(arrays.trial_outcome) == OUTCOMES.index("reward"))
        & ~np.asarray(arrays.excluded)
        & (offsets != NO_OFFSET)
        & (offsets >= 0)
        & (offsets < steps)
    )
    session_day = np.asarray(arrays.session_day)
    days = []
    for day in np.unique(session_day[of_subject]):
        of_day = of_subject & (session_day == day)
        unlabelled = np.flatnonzero(of_day & ~np.asarray(arrays.gap))
        windows, targets = _gold_trial_windows(arrays, np.flatnonzero(of_day & in_window), steps)
        days.append(
            DayTrials(
                day=int(day),
                name=f"day {int(day)}",
                counts=np.asarray(arrays.counts[unlabelled, :channels], dtype=np.int32),
                windows=windows[:, :, :channels],
                targets=np.array(
                    [classes.index(info.classes[code]) for code in targets], dtype=np.int64
                ),
            )
        )
    return TrialDays(days=days, classes=classes, source=f"dataset {info.name}")


def _gold_trial_windows(
    arrays: StepArrays, rows: npt.NDArray[np.int64], steps: int
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int32]]:
    """Return (trials, steps, channels) counts and the class code of trials with all steps."""
    keys = (
        np.asarray(arrays.session)[rows].astype(np.int64) * (1 << 32)
        + np.asarray(arrays.trial_id)[rows]
    )
    order = np.lexsort((np.asarray(arrays.steps_from_go)[rows], keys))
    rows, keys = rows[order], keys[order]
    unique, first, counts = np.unique(keys, return_index=True, return_counts=True)
    complete = first[counts == steps]
    picked = (complete[:, None] + np.arange(steps)).reshape(-1)  # (trials * steps,)
    windows = np.asarray(arrays.counts[rows[picked]], dtype=np.int32)
    windows = windows.reshape(complete.size, steps, arrays.counts.shape[1])
    return windows, np.asarray(arrays.trial_class)[rows[complete]]


def _natural_key(name: str) -> tuple[str, int]:
    head = name.rstrip("0123456789")
    tail = name[len(head) :]
    return head, int(tail) if tail else -1


# ---------------------------------------------------------------------------------------------
# Decoders


class TrialDecoder(Protocol):
    """A classifier of trial windows (trials, steps, channels) of features."""

    def fit(self, windows: npt.NDArray[np.float32], targets: npt.NDArray[np.int64]) -> None: ...

    def predict(self, windows: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]: ...


class LdaDecoder:
    """Linear discriminant analysis on the counts summed over the window (numpy only).

    Pooled within-class covariance, optionally shrunk towards its mean variance, and class
    priors from the training frequencies. ``shrinkage=0`` is plain LDA, the method of the
    reference figures.
    """

    def __init__(self, shrinkage: float = 0.0) -> None:
        self.shrinkage = shrinkage
        self.classes = np.zeros(0, dtype=np.int64)
        self.weights = np.zeros((0, 0))
        self.bias = np.zeros(0)

    def fit(self, windows: npt.NDArray[np.float32], targets: npt.NDArray[np.int64]) -> None:
        summed = windows.sum(axis=1, dtype=np.float64)  # (trials, channels)
        self.classes = np.unique(targets)
        position = np.searchsorted(self.classes, targets)
        means = np.stack([summed[targets == c].mean(axis=0) for c in self.classes])
        centred = summed - means[position]
        covariance = centred.T @ centred / max(len(summed) - len(self.classes), 1)
        if self.shrinkage > 0:
            average = np.trace(covariance) / covariance.shape[0]
            covariance = (1 - self.shrinkage) * covariance + self.shrinkage * average * np.eye(
                covariance.shape[0]
            )
        precision = np.linalg.pinv(covariance)
        self.weights = means @ precision  # (classes, channels)
        priors = np.bincount(position) / len(position)
        self.bias = -0.5 * np.sum(self.weights * means, axis=1) + np.log(priors)

    def predict(self, windows: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
        summed = windows.sum(axis=1, dtype=np.float64)
        scores = summed @ self.weights.T + self.bias  # (trials, classes)
        return self.classes[np.argmax(scores, axis=1)]  # type: ignore[no-any-return]


class NeuralTrialDecoder:
    """A ``training.models`` decoder trained on whole trial windows with ``training.train``."""

    def __init__(
        self,
        architecture: str,
        classes: Sequence[str],
        *,
        epochs: int,
        seed: int,
        overrides: dict[str, Any] | None = None,
    ) -> None:
        self.architecture = architecture
        self.classes = list(classes)
        self.epochs = epochs
        self.seed = seed
        self.overrides = overrides or {}
        self.model: Any = None

    def fit(self, windows: npt.NDArray[np.float32], targets: npt.NDArray[np.int64]) -> None:
        from training.models import build_decoder, default_config
        from training.train import TrainConfig, train

        trials, steps, channels = windows.shape
        config = default_config(
            self.architecture,  # type: ignore[arg-type]
            channels={"subject": channels},
            window=steps,
            classes=self.classes,
        )
        if self.overrides:
            config = type(config).from_dict({**config.to_dict(), **self.overrides})
        model = build_decoder(config, seed=self.seed)
        result = train(
            model,
            _windows_dataset(windows, targets),
            None,
            TrainConfig(
                epochs=self.epochs,
                batch_size=64,
                patience=0,
                class_weights="none",
                seed=self.seed,
                progress=False,
                # Trial models are small: one CPU thread saves the synchronisation cost that
                # several intra-op threads add to every tiny matrix product.
                threads=1,
            ),
        )
        self.model = result.model.eval()

    def predict(self, windows: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
        return _predict(self.model, windows)


def _windows_dataset(windows: npt.NDArray[np.float32], targets: npt.NDArray[np.int64]) -> Any:
    """Lay trial windows end to end as steps, with one target row at the end of each window."""
    from training.data import WindowDataset

    trials, steps, channels = windows.shape
    features = np.ascontiguousarray(windows, dtype=np.float32).reshape(trials * steps, channels)
    labels = np.full(trials * steps, -1, dtype=np.int64)
    ends = np.arange(trials, dtype=np.int64) * steps + steps - 1  # (trials,)
    labels[ends] = targets
    subjects = np.zeros(trials * steps, dtype=np.int32)
    return WindowDataset(features, labels, subjects, ends, steps)


def _predict(model: Any, windows: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
    import torch

    with torch.no_grad():
        logits = model(torch.as_tensor(np.asarray(windows, dtype=np.float32)))  # (trials, classes)
    return logits.argmax(dim=1).numpy().astype(np.int64)  # type: ignore[no-any-return]


DecoderFactory = Callable[[], TrialDecoder]


def decoder_factory(
    name: str, classes: Sequence[str], *, epochs: int = 30, seed: int = 0
) -> DecoderFactory:
    """Return a function that makes a fresh, untrained decoder called ``name``."""
    if name == "lda":
        return LdaDecoder
    if name in ("linear", "gru", "tcn"):
        overrides = {"dropout": 0.5} if name == "linear" else None
        return lambda: NeuralTrialDecoder(
            name, classes, epochs=epochs, seed=seed, overrides=overrides
        )
    raise ValueError(f"unknown decoder {name!r}; expected lda, linear, gru or tcn")


# ---------------------------------------------------------------------------------------------
# Protocol


@dataclass
class DayResult:
    """Accuracies of every decoder and setting on one test day."""

    day: int
    name: str
    days_since_training: int
    """Calendar days since the last training day."""
    trials: int
    accuracy: dict[str, dict[str, float]] = field(default_factory=dict)
    """decoder -> setting -> trial-level accuracy."""


@dataclass
class NextDayResult:
    """Per-day results and their means over the test days."""

    source: str
    decoders: list[str]
    days: list[DayResult]
    classes: list[str]
    notes: list[str] = field(default_factory=list)

    def mean(self, decoder: str, setting: str) -> float:
        """Return the mean accuracy over test days (NaN if the setting did not run)."""
        values = [
            day.accuracy[decoder][setting] for day in self.days if setting in day.accuracy[decoder]
        ]
        return float(np.mean(values)) if values else float("nan")

    def as_dict(self) -> dict[str, Any]:
        """Return the means and per-day figures as JSON-able values."""
        return {
            "source": self.source,
            "classes": self.classes,
            "test_days": [day.name for day in self.days],
            "mean": {
                decoder: {
                    setting: self.mean(decoder, setting)
                    for setting in SETTINGS
                    if not np.isnan(self.mean(decoder, setting))
                }
                for decoder in self.decoders
            },
            "days": [
                {
                    "day": day.name,
                    "days_since_training": day.days_since_training,
                    "trials": day.trials,
                    "accuracy": day.accuracy,
                }
                for day in self.days
            ],
            "notes": self.notes,
        }


def run_next_day(
    trial_days: TrialDays,
    decoders: Sequence[str] = ("lda",),
    *,
    first_test_day: int = FIRST_TEST_DAY,
    folds: int = FOLDS,
    epochs: int = 30,
    seed: int = 0,
    last_test_day: int | None = None,
) -> NextDayResult:
    """Run the protocol for each test day (1-based positions ``first_test_day``..last)."""
    days = trial_days.days
    if len(days) < first_test_day:
        raise ValueError(
            f"the protocol needs at least {first_test_day} days, got {len(days)} "
            f"({', '.join(day.name for day in days)})"
        )
    stop = len(days) if last_test_day is None else min(last_test_day, len(days))
    results = []
    notes = []
    for position in range(first_test_day - 1, stop):
        test, earlier = days[position], days[:position]
        if test.targets.size < folds:
            notes.append(
                f"test day {test.name} skipped: {test.targets.size} rewarded trials, fewer "
                f"than the {folds} cross-validation folds"
            )
            continue
        result = DayResult(
            day=test.day,
            name=test.name,
            days_since_training=test.day - earlier[-1].day,
            trials=int(test.targets.size),
        )
        for name in decoders:
            make = decoder_factory(name, trial_days.classes, epochs=epochs, seed=seed)
            result.accuracy[name] = _day_accuracies(make, test, earlier, folds=folds, seed=seed)
        logger.info("next-day protocol, test day %s: %s", test.name, result.accuracy)
        results.append(result)

    if not results:
        raise ValueError(f"no test day has at least {folds} rewarded trials: {'; '.join(notes)}")
    fallback = sum(day.fallback_trials or 0 for day in days)
    if fallback:
        notes.append(
            f"{fallback} rewarded trials have no go cue; their window starts at the outer-target "
            "time instead"
        )
    return NextDayResult(trial_days.source, list(decoders), results, trial_days.classes, notes)


def _day_accuracies(
    make: DecoderFactory,
    test: DayTrials,
    earlier: Sequence[DayTrials],
    *,
    folds: int,
    seed: int,
) -> dict[str, float]:
    own = ChannelStats.of(test.counts)
    accuracy = {
        "supervised": _cross_validate(make, own.apply(test.windows), test.targets, folds, seed)
    }

    pooled_stats = ChannelStats.of(np.concatenate([day.counts for day in earlier]))
    pooled = make()
    pooled.fit(*_training_windows(earlier, lambda day: pooled_stats))
    accuracy["pooled"] = _score(pooled, pooled_stats.apply(test.windows), test.targets)

    zscored = make()
    zscored.fit(*_training_windows(earlier, lambda day: ChannelStats.of(day.counts)))
    accuracy["zscore"] = _score(zscored, own.apply(test.windows), test.targets)

    model = getattr(pooled, "model", None)
    if model is not None and not model.read_in.identity:
        reference = _reference_moments(model, earlier, pooled_stats)
        aligned = align_read_in(model, pooled_stats.apply(test.counts), reference).model
        predicted = _predict(aligned, pooled_stats.apply(test.windows))
        accuracy["read_in"] = float(np.mean(predicted == test.targets))
    return accuracy


def _training_windows(
    days: Sequence[DayTrials], stats_of: Callable[[DayTrials], ChannelStats]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    windows = np.concatenate([stats_of(day).apply(day.windows) for day in days])
    targets = np.concatenate([day.targets for day in days])
    return windows, targets


def _reference_moments(model: Any, days: Sequence[DayTrials], stats: ChannelStats) -> LatentMoments:
    """Return the latent moments over every unlabelled step of the training days."""
    return latent_moments(model, stats.apply(np.concatenate([day.counts for day in days])))


def _score(
    decoder: TrialDecoder, windows: npt.NDArray[np.float32], targets: npt.NDArray[np.int64]
) -> float:
    return float(np.mean(decoder.predict(windows) == targets))


def stratified_folds(
    targets: npt.NDArray[np.int64], folds: int, seed: int
) -> npt.NDArray[np.int64]:
    """Return a fold number per sample so that every class is spread evenly over the folds."""
    rng = np.random.default_rng(seed)
    assignment = np.empty(targets.size, dtype=np.int64)
    offset = 0
    for target in np.unique(targets):
        members = np.flatnonzero(targets == target)
        rng.shuffle(members)
        assignment[members] = (np.arange(members.size) + offset) % folds
        offset += members.size
    return assignment


def _cross_validate(
    make: DecoderFactory,
    windows: npt.NDArray[np.float32],
    targets: npt.NDArray[np.int64],
    folds: int,
    seed: int,
) -> float:
    assignment = stratified_folds(targets, folds, seed)
    correct = 0
    for fold in range(folds):
        held_out = assignment == fold
        decoder = make()
        decoder.fit(windows[~held_out], targets[~held_out])
        correct += int(np.sum(decoder.predict(windows[held_out]) == targets[held_out]))
    return correct / targets.size


# ---------------------------------------------------------------------------------------------
# Table


def render_table(result: NextDayResult, *, per_day: bool = False) -> str:
    """Return the mean accuracies as a text table, with the reference figures beside them."""
    test_days = f"{len(result.days)} test day{'s' if len(result.days) != 1 else ''}"
    lines = [
        f"Next-day protocol on {result.source}: {test_days} "
        f"({result.days[0].name} to {result.days[-1].name}), trial-level accuracy, "
        f"{len(result.classes)} classes (chance {1 / len(result.classes):.3f})",
        "",
        f"{'decoder':<8} {'setting':<44} {'mean':>6} {'reference (lda)':>16}",
    ]
    for decoder in result.decoders:
        for setting in SETTINGS:
            mean = result.mean(decoder, setting)
            if np.isnan(mean):
                continue
            reference = f"{REFERENCE[setting]:.2f}" if setting in REFERENCE else "-"
            lines.append(f"{decoder:<8} {SETTING_TITLES[setting]:<44} {mean:>6.3f} {reference:>16}")
    lines.append(
        "reference (lda): linear discriminant on summed counts, mean over days 4-16 of the "
        "limblab Spike sessions"
    )
    if per_day:
        lines += ["", _per_day_table(result)]
    if result.notes:
        lines += ["", *result.notes]
    return "\n".join(lines)


def _per_day_table(result: NextDayResult) -> str:
    columns = [(d, s) for d in result.decoders for s in SETTINGS if s in result.days[0].accuracy[d]]
    header = f"{'test day':<12} {'since':>5} {'trials':>6} " + " ".join(
        f"{d + '/' + s:>18}" for d, s in columns
    )
    rows = [header]
    for day in result.days:
        cells = " ".join(f"{day.accuracy[d][s]:>18.3f}" for d, s in columns)
        rows.append(f"{day.name:<12} {day.days_since_training:>5} {day.trials:>6} {cells}")
    return "\n".join(rows)
