"""`bcratos jobs prepare` on the lake that the real processors wrote from replayed recordings.

Expected labels are computed here from the recordings' trial tables (`Recording.markers`) and
the silver step times, independently of the Spark job.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from click.testing import Result
from deltalake import DeltaTable
from pyspark.sql import SparkSession
from typer.testing import CliRunner

from bcratos.cli import app
from bcratos.config import Settings
from boards.replay import Recording
from infra.spark import spark_session
from jobs.dataset.sources import BEHAVIOR_EVENTS, SPIKE_STEPS
from jobs.prepare import PrepareParameters, PrepareResult, prepare_dataset

if TYPE_CHECKING:
    from tests.jobs.conftest import SinkLake

pytestmark = pytest.mark.integration

NAME = "spike-jango"
STEP_US = 50_000


@dataclass(frozen=True)
class ReplayedSession:
    """A session of the lake and the recording replayed into it."""

    subject: str  # subject id of the replay, such as Spike
    subject_pseudonym: str
    session_pseudonym: str
    session_day: int
    recording: Recording


@pytest.fixture(scope="module")
def spark(sink_lake: SinkLake) -> Iterator[SparkSession]:
    yield spark_session(sink_lake.settings, app_name="bcratos-prepare-tests")


@pytest.fixture(scope="module")
def versions_before(sink_lake: SinkLake) -> dict[str, int]:
    return _latest_versions(sink_lake.settings)


@pytest.fixture(scope="module")
def prepared(
    sink_lake: SinkLake, spark: SparkSession, versions_before: dict[str, int]
) -> PrepareResult:
    return prepare_dataset(sink_lake.settings, PrepareParameters(name=NAME), spark=spark)


@pytest.fixture(scope="module")
def manifest(prepared: PrepareResult) -> dict[str, Any]:
    return json.loads(Path(prepared.manifest_uri).read_text())


@pytest.fixture(scope="module")
def gold(sink_lake: SinkLake, prepared: PrepareResult) -> pa.Table:
    uri = f"{sink_lake.settings.lake_uri}/gold/datasets/{NAME}"
    return DeltaTable(uri, version=prepared.gold_version).to_pyarrow_table()


@pytest.fixture(scope="module")
def silver(sink_lake: SinkLake, manifest: dict[str, Any]) -> pa.Table:
    """Silver steps at the version the job read."""
    version = manifest["sources"][SPIKE_STEPS]["version"]
    table = DeltaTable(f"{sink_lake.settings.lake_uri}/{SPIKE_STEPS}", version=version)
    return table.to_pyarrow_table(
        columns=["subject_pseudonym", "session_pseudonym", "session_day", "t_step_us"]
    )


@pytest.fixture(scope="module")
def replayed(sink_lake: SinkLake, silver: pa.Table) -> list[ReplayedSession]:
    """Match each lake session with its recording: by subject and day order."""
    keys = sorted(
        {
            (row["subject_pseudonym"], row["session_day"], row["session_pseudonym"])
            for row in silver.select(
                ["subject_pseudonym", "session_day", "session_pseudonym"]
            ).to_pylist()
        }
    )
    by_subject: dict[str, list[tuple[int, str]]] = {}
    for subject, day, session in keys:
        by_subject.setdefault(subject, []).append((day, session))
    recordings: dict[str, list[Recording]] = {}
    for subject_id, _path, recording in sink_lake.sessions:
        recordings.setdefault(subject_id, []).append(recording)

    sessions: list[ReplayedSession] = []
    for subject_id, subject_recordings in recordings.items():
        matches = [p for p, days in by_subject.items() if len(days) == len(subject_recordings)]
        assert len(matches) == 1, f"cannot tell which pseudonym is {subject_id}"
        pseudonym = matches[0]
        for (day, session), recording in zip(
            by_subject[pseudonym], subject_recordings, strict=True
        ):
            sessions.append(ReplayedSession(subject_id, pseudonym, session, day, recording))
    return sessions


def _latest_versions(settings: Settings) -> dict[str, int]:
    return {
        table: DeltaTable(f"{settings.lake_uri}/{table}").version()
        for table in (BEHAVIOR_EVENTS, SPIKE_STEPS)
    }


def _trials(recording: Recording) -> dict[int, dict[str, Any]]:
    """Return each trial's markers by kind (offset and label), from the recording."""
    trials: dict[int, dict[str, Any]] = {}
    for marker in recording.markers:
        if marker.trial_id is not None:
            trials.setdefault(marker.trial_id, {}).setdefault(marker.kind, marker)
    for trial_id, markers in trials.items():
        assert {"trial_start", "trial_end", "class_label", "outcome"} <= set(markers), trial_id
    return trials


def _movement_start_us(markers: dict[str, Any]) -> int:
    start, end = markers["trial_start"].offset_us, markers["trial_end"].offset_us
    first = markers.get("go_cue") or markers.get("target_on") or markers["trial_start"]
    return int(min(max(first.offset_us, start), end))


def _expected_labels(recording: Recording, step_times: np.ndarray) -> tuple[Counter[str], int]:
    """Return the step count of each label, and the count of steps in unrewarded trials."""
    counts: Counter[str] = Counter()
    inside = np.zeros(step_times.size, dtype=bool)
    excluded = 0
    for markers in _trials(recording).values():
        start, end = markers["trial_start"].offset_us, markers["trial_end"].offset_us
        movement = _movement_start_us(markers)
        before = (step_times >= start) & (step_times < movement)
        during = (step_times >= movement) & (step_times < end)
        assert not np.any(inside & (before | during)), "the recordings have no overlapping trials"
        inside |= before | during
        counts["pre_movement"] += int(before.sum())
        counts[markers["class_label"].label] += int(during.sum())
        if markers["outcome"].label != "reward":
            excluded += int((before | during).sum())
    counts["rest"] = int((~inside).sum())
    return +counts, excluded


def _rows(table: pa.Table, session: str) -> pa.Table:
    return table.filter(pc.field("session_pseudonym") == session)


def _matrix(table: pa.Table, column: str) -> np.ndarray:
    """Return a list column as a (rows, channels) array."""
    values = table.column(column).combine_chunks()
    return values.flatten().to_numpy().reshape(len(table), -1)


# ---------------------------------------------------------------------------------------------
# Labels


def test_labels_match_recordings(
    gold: pa.Table, silver: pa.Table, replayed: list[ReplayedSession]
) -> None:
    for session in replayed:
        step_times = _rows(silver, session.session_pseudonym).column("t_step_us").to_numpy()
        expected, _excluded = _expected_labels(session.recording, step_times)

        labels = _rows(gold, session.session_pseudonym).column("label").to_pylist()

        assert Counter(labels) == expected, session.recording.source.name


def test_unrewarded_trials_marked_excluded(
    gold: pa.Table, silver: pa.Table, replayed: list[ReplayedSession]
) -> None:
    for session in replayed:
        step_times = _rows(silver, session.session_pseudonym).column("t_step_us").to_numpy()
        _expected, excluded = _expected_labels(session.recording, step_times)
        rows = _rows(gold, session.session_pseudonym)

        flagged = rows.filter(pc.field("excluded"))

        assert len(flagged) == excluded, session.recording.source.name
        assert set(flagged.column("trial_outcome").to_pylist()) <= {"abort", "fail", "incomplete"}
        kept = rows.filter(pc.invert(pc.field("excluded")))
        assert set(kept.column("trial_outcome").to_pylist()) <= {"reward", None}


def test_steps_from_go_zero_after_cue(gold: pa.Table, replayed: list[ReplayedSession]) -> None:
    for session in replayed:
        rows = _rows(gold, session.session_pseudonym).filter(pc.field("steps_from_go") == 0)
        first_step = {row["trial_id"]: row for row in rows.to_pylist()}
        for trial_id, markers in _trials(session.recording).items():
            movement = _movement_start_us(markers)
            expected_us = -(-movement // STEP_US) * STEP_US  # first step start >= movement
            if expected_us >= markers["trial_end"].offset_us:
                assert trial_id not in first_step  # the trial ends within that step
                continue
            row = first_step[trial_id]
            assert row["t_step_us"] == expected_us, (session.session_pseudonym, trial_id)
            if "go_cue" in markers:
                source = "go_cue"
            elif "target_on" in markers:
                source = "target_on"
            else:
                source = "trial_start"
            assert row["movement_start_source"] == source


def test_rows_are_the_silver_steps(gold: pa.Table, silver: pa.Table) -> None:
    keys = gold.select(["session_pseudonym", "t_step_us"]).to_pylist()

    assert len(gold) == len(silver)
    assert len({(row["session_pseudonym"], row["t_step_us"]) for row in keys}) == len(gold)


def test_label_index_follows_manifest_classes(gold: pa.Table, manifest: dict[str, Any]) -> None:
    classes = manifest["classes"]
    pairs = set(
        zip(gold.column("label").to_pylist(), gold.column("label_index").to_pylist(), strict=True)
    )

    assert classes == sorted(classes)
    assert {classes[index] for _label, index in pairs} == {label for label, _index in pairs}
    assert all(classes[index] == label for label, index in pairs)


# ---------------------------------------------------------------------------------------------
# Splits


def test_no_session_in_two_splits(gold: pa.Table) -> None:
    splits: dict[str, set[str]] = {}
    for row in gold.select(["session_pseudonym", "split"]).to_pylist():
        splits.setdefault(row["session_pseudonym"], set()).add(row["split"])

    assert all(len(names) == 1 for names in splits.values()), splits


def test_last_days_are_test_and_validation(
    gold: pa.Table, replayed: list[ReplayedSession], manifest: dict[str, Any]
) -> None:
    split_of = dict(
        zip(
            gold.column("session_pseudonym").to_pylist(),
            gold.column("split").to_pylist(),
            strict=True,
        )
    )
    spike = sorted((s for s in replayed if s.subject == "Spike"), key=lambda s: s.session_day)
    jango = next(s for s in replayed if s.subject == "Jango")

    assert [split_of[s.session_pseudonym] for s in spike] == [
        "train",
        "train",
        "validation",
        "test",
    ]
    assert split_of[jango.session_pseudonym] == "train"
    assert any(jango.subject_pseudonym in note and "one day" in note for note in manifest["notes"])


# ---------------------------------------------------------------------------------------------
# Normalization


def test_statistics_come_from_training_rows_only(gold: pa.Table, manifest: dict[str, Any]) -> None:
    for subject, recorded in manifest["normalization"]["subjects"].items():
        rows = gold.filter(pc.field("subject_pseudonym") == subject)
        training = rows.filter((pc.field("split") == "train") & pc.invert(pc.field("gap")))
        counts = _matrix(training, "counts").astype(np.float64)

        assert recorded["steps"] == len(training)
        np.testing.assert_allclose(recorded["mean"], counts.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(recorded["std"], counts.std(axis=0), rtol=1e-12, atol=1e-15)
        everything = _matrix(rows, "counts").astype(np.float64)
        if len(everything) > len(training):
            assert not np.allclose(recorded["mean"], everything.mean(axis=0))


def test_features_use_training_statistics(gold: pa.Table, manifest: dict[str, Any]) -> None:
    for subject, recorded in manifest["normalization"]["subjects"].items():
        rows = gold.filter(pc.field("subject_pseudonym") == subject)
        mean = np.array(recorded["mean"])
        std = np.array(recorded["std"])
        divisor = np.where(std > 0, std, 1.0)

        expected = ((_matrix(rows, "counts") - mean) / divisor).astype(np.float32)

        np.testing.assert_allclose(_matrix(rows, "features"), expected, rtol=1e-6, atol=1e-6)
        assert rows.schema.field("features").type == pa.list_(pa.float32())
        assert rows.schema.field("counts").type == pa.list_(pa.int32())


# ---------------------------------------------------------------------------------------------
# Manifest and reproducibility


def test_manifest_records_source_versions(
    sink_lake: SinkLake, manifest: dict[str, Any], versions_before: dict[str, int]
) -> None:
    after = _latest_versions(sink_lake.settings)

    for table, before in versions_before.items():
        assert before <= manifest["sources"][table]["version"] <= after[table]
    assert manifest["parameters"] == PrepareParameters(name=NAME).as_dict()
    assert manifest["content_hash"].startswith("sha256:")
    assert manifest["duration_s"] > 0


def test_manifest_counts_rows_per_split_and_class(gold: pa.Table, manifest: dict[str, Any]) -> None:
    rows = gold.select(["split", "label"]).to_pylist()
    by_class: dict[str, Counter[str]] = {}
    for row in rows:
        by_class.setdefault(row["split"], Counter())[row["label"]] += 1

    assert manifest["rows"]["total"] == len(gold)
    assert manifest["rows"]["by_split_and_class"] == {
        split: dict(sorted(counts.items())) for split, counts in sorted(by_class.items())
    }


def _invoke(settings: Settings, *args: str) -> Result:
    environment = {
        "BCRATOS_DATA_DIR": str(settings.data_dir),
        "BCRATOS_LAKE__URI": settings.lake_uri,
    }
    return CliRunner().invoke(app, ["jobs", "prepare", *args], env=environment)


def test_second_run_gives_same_hash(
    sink_lake: SinkLake, spark: SparkSession, prepared: PrepareResult
) -> None:
    again = prepare_dataset(sink_lake.settings, PrepareParameters(name=NAME), spark=spark)

    assert again.gold_version > prepared.gold_version
    assert again.source_versions == prepared.source_versions
    assert again.content_hash == prepared.content_hash


def test_reproduce_command_checks_hash(sink_lake: SinkLake, prepared: PrepareResult) -> None:
    result = _invoke(sink_lake.settings, "--name", NAME, "--reproduce")

    assert result.exit_code == 0, result.output
    assert "reproduced: hashes match" in result.output
    assert prepared.content_hash in result.output


def test_subject_and_day_selection(
    sink_lake: SinkLake, replayed: list[ReplayedSession], silver: pa.Table
) -> None:
    spike = sorted((s for s in replayed if s.subject == "Spike"), key=lambda s: s.session_day)
    days = f"{spike[0].session_day},{spike[1].session_day}"

    result = _invoke(
        sink_lake.settings,
        "--name",
        "spike-two-days",
        "--subjects",
        spike[0].subject_pseudonym,
        "--days",
        days,
        "--step-ms",
        "100",
    )

    assert result.exit_code == 0, result.output
    uri = f"{sink_lake.settings.lake_uri}/gold/datasets/spike-two-days"
    rows = DeltaTable(uri).to_pyarrow_table(columns=["session_pseudonym", "split", "step_ms"])
    sessions = {spike[0].session_pseudonym, spike[1].session_pseudonym}
    assert set(rows.column("session_pseudonym").to_pylist()) == sessions
    assert set(rows.column("split").to_pylist()) == {"train", "test"}
    assert set(rows.column("step_ms").to_pylist()) == {100}
    silver_rows = sum(len(_rows(silver, session)) for session in sessions)
    assert silver_rows // 2 <= len(rows) <= silver_rows // 2 + 2


# ---------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--subjects", "nobody"), "unknown subject pseudonym nobody"),
        (("--days", "1"), "no session on day 1 for the selected subjects"),
        (("--days", "monday"), "invalid day 'monday'"),
        (("--step-ms", "75"), "step width 75 ms is not a multiple of the silver step width 50 ms"),
        (("--split-by", "week"), "invalid split_by 'week'"),
        (("--name", "../outside"), "invalid dataset name '../outside'"),
    ],
)
def test_bad_arguments_give_clear_errors(
    sink_lake: SinkLake, prepared: PrepareResult, args: tuple[str, ...], message: str
) -> None:
    name = () if "--name" in args else ("--name", "bad")

    result = _invoke(sink_lake.settings, *name, *args)

    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert "org.apache" not in result.output


def test_reproduce_without_manifest_fails(sink_lake: SinkLake, prepared: PrepareResult) -> None:
    result = _invoke(sink_lake.settings, "--name", "never-prepared", "--reproduce")

    assert result.exit_code == 1
    assert "never-prepared.json not found" in result.output


def test_reproduce_rejects_other_options(sink_lake: SinkLake) -> None:
    result = _invoke(sink_lake.settings, "--name", NAME, "--reproduce", "--step-ms", "100")

    assert result.exit_code == 2
    assert "leave out --step-ms" in result.output
