"""A small lake written directly with `LakeWriter`, for the label-rule tests of the dataset job.

It has the two tables the job reads, with hand-made sessions whose trials cover the cases that
the replayed limblab sessions lack: release markers, Brochier-style trials without go cue or
outcome, overlapping trials, missing class labels and missing trial ends.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from streams.lake import BEHAVIOR_EVENTS, SPIKE_STEPS, LakeWriter, bronze_table, silver_table

STEP_US = 50_000


@dataclass
class SyntheticSession:
    """Steps and behaviour events of one session."""

    subject: str
    day: int
    name: str
    n_steps: int = 200  # 10 s of 50 ms steps
    n_channels: int = 4
    gap_steps: Sequence[int] = ()
    events: list[tuple[int, str, int | None, str | None]] = field(default_factory=list)
    # (t_session_us, kind, trial_id, label)

    def counts(self) -> np.ndarray:
        """Return deterministic counts, shape (n_steps, n_channels)."""
        seed = sum(ord(char) for char in self.name) + self.day
        return np.random.default_rng(seed).poisson(3.0, (self.n_steps, self.n_channels))


def trial(
    trial_id: int,
    *,
    start_s: float,
    end_s: float | None,
    label: str | None,
    outcome: str | None = "reward",
    target_on_s: float | None = None,
    go_s: float | None = None,
    release_s: float | None = None,
) -> list[tuple[int, str, int | None, str | None]]:
    """Return the behaviour events of one trial."""

    def us(seconds: float) -> int:
        return round(seconds * 1_000_000)

    events: list[tuple[int, str, int | None, str | None]] = [
        (us(start_s), "trial_start", trial_id, None)
    ]
    if target_on_s is not None:
        events.append((us(target_on_s), "target_on", trial_id, None))
    if go_s is not None:
        events.append((us(go_s), "go_cue", trial_id, None))
    if label is not None:
        events.append((us(go_s if go_s is not None else start_s), "class_label", trial_id, label))
    if release_s is not None:
        events.append((us(release_s), "release", trial_id, None))
    if end_s is not None:
        events.append((us(end_s), "trial_end", trial_id, None))
        if outcome is not None:
            events.append((us(end_s), "outcome", trial_id, outcome))
    return events


def write_lake(root: Path, sessions: Sequence[SyntheticSession]) -> None:
    """Write the steps and events of `sessions` into the lake at `root`, one commit per table."""
    writer = LakeWriter(str(root))
    app_id = f"synthetic/{uuid.uuid4().hex}"  # each call is a writer of its own
    steps: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for session in sessions:
        counts = session.counts().astype(np.int32)
        for index in range(session.n_steps):
            gap = index in session.gap_steps
            steps.append(
                {
                    "subject_pseudonym": session.subject,
                    "session_pseudonym": session.name,
                    "session_day": session.day,
                    "step_index": index,
                    "t_step_us": index * STEP_US,
                    "step_ms": 50,
                    "bin_ms": 10,
                    "n_channels": session.n_channels,
                    "counts": counts[index] if not gap else np.zeros_like(counts[index]),
                    "bins_expected": 5,
                    "bins_present": 0 if gap else 5,
                    "gap": gap,
                    "first_seq": None if gap else index,
                    "last_seq": None if gap else index,
                }
            )
        for seq, (t_us, kind, trial_id, label) in enumerate(session.events):
            events.append(
                {
                    "subject_pseudonym": session.subject,
                    "board_pseudonym": "board-1",
                    "session_pseudonym": session.name,
                    "key_id": "k1",
                    "seq": seq,
                    "session_day": session.day,
                    "t_session_us": t_us,
                    "metadata": {},
                    "kind": kind,
                    "trial_id": trial_id,
                    "label": label,
                    "value": None,
                }
            )
    writer.append(SPIKE_STEPS, silver_table(SPIKE_STEPS, steps), offsets={app_id: 1})
    rows = bronze_table(BEHAVIOR_EVENTS, events, partitions=0, offsets=list(range(len(events))))
    writer.append(BEHAVIOR_EVENTS, rows, offsets={app_id: len(events)})
