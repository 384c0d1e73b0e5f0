"""Per-channel normalization statistics, computed from training steps only.

Spark sums the counts and squared counts of each channel over the training steps of each
session as exact integers (`ChannelSums`). The driver turns the sums into means and population
standard deviations (`ChannelStats`) with integer arithmetic before one final division. The
statistics therefore do not depend on the order in which Spark adds partial sums, and a rerun
gives the same bits.

Two modes decide which statistics each session's features use:

- ``subject`` (default): one set per subject, pooled over the steps of its training sessions,
  applied to every session of the subject. Train, validation and test features then share one
  scale, and nothing of a validation or test session enters the statistics.
- ``session``: each training session uses its own statistics. This per-session z-scoring
  removes day-to-day drift from the training data. Validation and test sessions use the
  subject's pooled training statistics, because their own steps must not be used.

Statistics are per subject, never pooled across subjects, because channel ``i`` of two
subjects' arrays is not the same electrode. Steps flagged as gaps are left out: their missing
bins count as zeros.

>>> stats = ChannelStats.from_sums(ChannelSums(4, (2, 8), (2, 20)))
>>> stats.mean, stats.std
((0.5, 2.0), (0.5, 1.0))
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

NormalizationMode = Literal["subject", "session"]
NORMALIZATION_CHOICES: Final[tuple[NormalizationMode, ...]] = ("subject", "session")

SOURCE_SESSION: Final = "session"  # the session's own training statistics
SOURCE_SUBJECT: Final = "subject_training"  # the subject's pooled training statistics
SOURCE_IDENTITY: Final = "identity"  # no training steps: mean 0, std 1


@dataclass(frozen=True)
class ChannelSums:
    """Exact sums over steps of one session or subject: step count, per-channel sums of
    counts and of squared counts."""

    steps: int
    sums: tuple[int, ...]  # (n_channels,)
    squares: tuple[int, ...]  # (n_channels,)

    def __add__(self, other: ChannelSums) -> ChannelSums:
        if len(self.sums) != len(other.sums):
            raise ValueError(f"cannot add sums of {len(self.sums)} and {len(other.sums)} channels")
        return ChannelSums(
            self.steps + other.steps,
            tuple(a + b for a, b in zip(self.sums, other.sums, strict=True)),
            tuple(a + b for a, b in zip(self.squares, other.squares, strict=True)),
        )

    @classmethod
    def zeros(cls, n_channels: int) -> ChannelSums:
        """Return the sums of no steps."""
        return cls(0, (0,) * n_channels, (0,) * n_channels)


@dataclass(frozen=True)
class ChannelStats:
    """Per-channel mean and population standard deviation of counts, and the step count."""

    steps: int
    mean: tuple[float, ...]  # (n_channels,)
    std: tuple[float, ...]  # (n_channels,)

    @classmethod
    def from_sums(cls, sums: ChannelSums) -> ChannelStats:
        """Compute the statistics of `sums`; raises `ValueError` for sums of no steps."""
        n = sums.steps
        if n <= 0:
            raise ValueError("statistics of no steps: expected at least one step")
        mean = tuple(total / n for total in sums.sums)
        # n * sum(x^2) - sum(x)^2 is exact in integers and never negative.
        std = tuple(
            math.sqrt((n * square - total * total) / (n * n))
            for total, square in zip(sums.sums, sums.squares, strict=True)
        )
        return cls(n, mean, std)

    @classmethod
    def identity(cls, n_channels: int) -> ChannelStats:
        """Return statistics that leave counts unchanged: mean 0 and std 1."""
        return cls(0, (0.0,) * n_channels, (1.0,) * n_channels)

    def divisors(self) -> tuple[float, ...]:
        """Return the std of each channel, with 1.0 for a channel whose std is 0.

        A channel that never changed during training would otherwise divide by zero. With 1.0
        its features are its counts minus the training mean.
        """
        return tuple(value if value > 0 else 1.0 for value in self.std)

    def as_dict(self) -> dict[str, Any]:
        """Return the statistics as JSON-ready values."""
        return {"steps": self.steps, "mean": list(self.mean), "std": list(self.std)}


@dataclass
class NormalizationPlan:
    """Statistics used for the features of each session, and the statistics behind them."""

    mode: NormalizationMode
    applied: dict[str, tuple[str, ChannelStats]] = field(default_factory=dict)  # per session
    subjects: dict[str, ChannelStats] = field(default_factory=dict)  # pooled training, per subject
    sessions: dict[str, ChannelStats] = field(default_factory=dict)  # own, per training session
    notes: list[str] = field(default_factory=list)


def plan_normalization(
    mode: NormalizationMode,
    *,
    training_sums: Mapping[str, ChannelSums],
    sessions: Sequence[tuple[str, str, str, int]],
) -> NormalizationPlan:
    """Choose the statistics of every session's features.

    `training_sums` maps each training session pseudonym to the sums over its steps without
    a gap (a training session with no such steps may be missing). `sessions` lists every
    session of the dataset as (subject pseudonym, session pseudonym, split, channel count).
    Raises `ValueError` for an unknown mode.
    """
    if mode not in NORMALIZATION_CHOICES:
        raise ValueError(f"invalid normalization {mode!r}: expected one of {NORMALIZATION_CHOICES}")
    plan = NormalizationPlan(mode)

    pooled: dict[str, ChannelSums] = {}
    channels: dict[str, int] = {}
    for subject, session, split, n_channels in sessions:
        channels[subject] = n_channels
        pooled.setdefault(subject, ChannelSums.zeros(n_channels))
        if split == "train" and session in training_sums:
            pooled[subject] = pooled[subject] + training_sums[session]

    for subject in sorted(pooled):
        if pooled[subject].steps == 0:
            plan.subjects[subject] = ChannelStats.identity(channels[subject])
            plan.notes.append(
                f"subject {subject} has no training steps without a gap, so its features are "
                "its counts unchanged (mean 0, std 1)"
            )
        else:
            plan.subjects[subject] = ChannelStats.from_sums(pooled[subject])

    for subject, session, split, _n_channels in sessions:
        own = training_sums.get(session)
        if mode == "session" and split == "train" and own is not None and own.steps > 0:
            stats = ChannelStats.from_sums(own)
            plan.sessions[session] = stats
            plan.applied[session] = (SOURCE_SESSION, stats)
        elif plan.subjects[subject].steps == 0:
            plan.applied[session] = (SOURCE_IDENTITY, plan.subjects[subject])
        else:
            plan.applied[session] = (SOURCE_SUBJECT, plan.subjects[subject])
    return plan
