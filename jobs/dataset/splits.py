"""Assignment of whole sessions to the train, validation and test splits.

Steps of one session are strongly correlated, so a split never divides a session: splitting by
random step would leak the test session into training. Each subject is split on its own:

- ``day``: the units are the subject's session days. Every session of a day goes to the split
  of its day.
- ``session``: the units are the subject's sessions, ordered by session day and then by
  session pseudonym. The pseudonym order within one day is arbitrary but stable, because the
  lake stores no time of day.

The last ``test_units`` units of a subject are ``test``, the ``validation_units`` units before
them ``validation`` and the rest ``train``. At least one unit always stays in ``train``. A
subject with fewer units than requested fills ``test`` first and gets fewer validation units,
and a subject with a single unit is all ``train``. Every shortfall is written to the notes.

>>> plan = assign_splits(
...     [SessionKey("s1", day, f"x{day}") for day in (10, 11, 12, 14)],
...     split_by="day", test_units=1, validation_units=1)
>>> [plan.splits[f"x{day}"] for day in (10, 11, 12, 14)]
['train', 'train', 'validation', 'test']
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Literal

SplitBy = Literal["session", "day"]
SPLIT_BY_CHOICES: Final[tuple[SplitBy, ...]] = ("day", "session")

TRAIN: Final = "train"
VALIDATION: Final = "validation"
TEST: Final = "test"
SPLITS: Final = (TRAIN, VALIDATION, TEST)


@dataclass(frozen=True, order=True)
class SessionKey:
    """One session of the selection: its subject, shifted day and pseudonym."""

    subject_pseudonym: str
    session_day: int
    session_pseudonym: str


@dataclass
class SplitPlan:
    """The split of every session, the units of each subject and notes on shortfalls."""

    splits: dict[str, str] = field(default_factory=dict)  # session pseudonym -> split
    units: dict[str, list[dict[str, object]]] = field(default_factory=dict)  # per subject
    notes: list[str] = field(default_factory=list)


def assign_splits(
    sessions: Iterable[SessionKey],
    *,
    split_by: SplitBy,
    test_units: int,
    validation_units: int,
) -> SplitPlan:
    """Assign each session to a split, by day or by session, for each subject on its own.

    Raises `ValueError` for an unknown `split_by` or a negative unit count.
    """
    if split_by not in SPLIT_BY_CHOICES:
        raise ValueError(f"invalid split_by {split_by!r}: expected one of {SPLIT_BY_CHOICES}")
    if test_units < 0 or validation_units < 0:
        raise ValueError(
            f"invalid unit counts: test {test_units}, validation {validation_units}; "
            "expected 0 or more"
        )

    by_subject: dict[str, list[SessionKey]] = defaultdict(list)
    for session in sessions:
        by_subject[session.subject_pseudonym].append(session)

    plan = SplitPlan()
    for subject in sorted(by_subject):
        sessions_of_subject = sorted(by_subject[subject])
        _split_subject(plan, subject, sessions_of_subject, split_by, test_units, validation_units)
    return plan


def _split_subject(
    plan: SplitPlan,
    subject: str,
    sessions: list[SessionKey],
    split_by: SplitBy,
    test_units: int,
    validation_units: int,
) -> None:
    """Add the splits of one subject's sessions, sorted by day and pseudonym, to `plan`."""
    if split_by == "day":
        units: list[tuple[int | str, list[SessionKey]]] = []
        for session in sessions:
            if units and units[-1][0] == session.session_day:
                units[-1][1].append(session)
            else:
                units.append((session.session_day, [session]))
    else:
        units = [(session.session_pseudonym, [session]) for session in sessions]

    n_units = len(units)
    n_test = min(test_units, n_units - 1)  # at least one unit stays in train
    n_validation = min(validation_units, n_units - 1 - n_test)
    unit_name = "day" if split_by == "day" else "session"
    if n_units == 1:
        plan.notes.append(
            f"subject {subject} has one {unit_name} in the selection, so all of it is train"
        )
    elif n_test < test_units or n_validation < validation_units:
        plan.notes.append(
            f"subject {subject} has {n_units} {unit_name}s in the selection: {n_test} test "
            f"and {n_validation} validation {unit_name}s instead of the {test_units} and "
            f"{validation_units} requested, because at least one {unit_name} stays in train"
        )

    first_validation = n_units - n_test - n_validation
    first_test = n_units - n_test
    described: list[dict[str, object]] = []
    for index, (unit, members) in enumerate(units):
        if index >= first_test:
            split = TEST
        elif index >= first_validation:
            split = VALIDATION
        else:
            split = TRAIN
        for member in members:
            plan.splits[member.session_pseudonym] = split
        described.append(
            {
                unit_name: unit,
                "split": split,
                "sessions": [member.session_pseudonym for member in members],
            }
        )
    plan.units[subject] = described
