"""Label, window, re-binning and version rules of `jobs.prepare` on a hand-made lake.

The replayed limblab sessions have no release markers, no overlapping trials and no trial
without an end, so these cases use a small lake written with `LakeWriter` (`synthetic_lake`).
They need Spark and Delta, but no Kafka broker.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from deltalake import DeltaTable
from pyspark.sql import SparkSession
from synthetic_lake import SyntheticSession, trial, write_lake

from bcratos.config import Settings
from infra.spark import spark_session
from jobs.dataset.errors import SelectionError
from jobs.dataset.sources import BEHAVIOR_EVENTS, SPIKE_STEPS
from jobs.prepare import PrepareParameters, PrepareResult, prepare_dataset, reproduce_dataset

pytestmark = pytest.mark.integration

CENTER_DAYS = (1, 2, 3)
CENTER_GAPS = (30, 31)

# Centre-out trials, times in seconds. Steps are 50 ms, so step k starts at k * 0.05 s.
CENTER_EVENTS = (
    # go cue: pre_movement 10-20, movement 21-39 (gaps at 30 and 31)
    trial(1, start_s=0.5, target_on_s=0.8, go_s=1.02, end_s=2.0, label="target_2")
    # no go cue: movement from target_on; pre_movement 50-53, movement 54-69
    + trial(2, start_s=2.5, target_on_s=2.7, end_s=3.5, label="target_4")
    # no class label: pre_movement 80-83, unknown_class 84-99, excluded
    + trial(3, start_s=4.0, go_s=4.2, end_s=5.0, label=None)
    # no trial end: ends at the next trial start (7.0 s); pre 110-111, movement 112-139
    + trial(4, start_s=5.5, go_s=5.6, end_s=None, label="target_1")
    # failed, and overlapped from 8.0 s by trial 6: pre 140-141, movement 142-159
    + trial(5, start_s=7.0, go_s=7.1, end_s=8.5, label="target_3", outcome="fail")
    # starts inside trial 5, so steps 160-169 belong to it: pre 160-163, movement 164-179
    + trial(6, start_s=8.0, go_s=8.2, end_s=9.0, label="target_5")
)

# Brochier-style grasp trials: no go cue, no outcome; trial 2 has a release marker.
GRASP_EVENTS = trial(1, start_s=1.0, end_s=2.5, label="precision_grip", outcome=None) + trial(
    2, start_s=3.0, release_s=4.0, end_s=4.5, label="side_grip", outcome=None
)


def _expected_center() -> dict[int, tuple[str, int | None, str | None]]:
    """Return (label, trial_id, exclusion_reason) of every step of a centre-out session."""
    expected: dict[int, tuple[str, int | None, str | None]] = {
        index: ("rest", None, None) for index in range(200)
    }

    def put(steps: range, label: str, trial_id: int, reason: str | None = None) -> None:
        for index in steps:
            expected[index] = (label, trial_id, reason)

    put(range(10, 21), "pre_movement", 1)
    put(range(21, 40), "target_2", 1)
    put(range(50, 54), "pre_movement", 2)
    put(range(54, 70), "target_4", 2)
    put(range(80, 84), "pre_movement", 3, "no_class_label")
    put(range(84, 100), "unknown_class", 3, "no_class_label")
    put(range(110, 112), "pre_movement", 4, "no_trial_end")
    put(range(112, 140), "target_1", 4, "no_trial_end")
    put(range(140, 142), "pre_movement", 5, "outcome_fail")
    put(range(142, 160), "target_3", 5, "outcome_fail")
    put(range(160, 164), "pre_movement", 6)
    put(range(164, 180), "target_5", 6)
    return expected


GO_STEP = {1: 21, 2: 54, 3: 84, 4: 112, 5: 142, 6: 164}  # first step at or after movement start
MOVEMENT_START_SOURCE = {
    1: "go_cue",
    2: "target_on",
    3: "go_cue",
    4: "go_cue",
    5: "go_cue",
    6: "go_cue",
}


@pytest.fixture(scope="module")
def spark(settings: Settings) -> Iterator[SparkSession]:
    yield spark_session(settings, app_name="bcratos-prepare-rules-tests")


def _sessions() -> list[SyntheticSession]:
    center = [
        SyntheticSession(
            "center", day, f"center-{day}", events=list(CENTER_EVENTS), gap_steps=CENTER_GAPS
        )
        for day in CENTER_DAYS
    ]
    grasp = SyntheticSession("grasp", 100, "grasp-100", n_channels=3, events=list(GRASP_EVENTS))
    return [*center, grasp]


@pytest.fixture(scope="module")
def rules_settings(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    root = tmp_path_factory.mktemp("rules-lake")
    write_lake(root / "lake", _sessions())
    lake = settings.lake.model_copy(update={"uri": str(root / "lake")})
    return settings.model_copy(update={"lake": lake})


@pytest.fixture(scope="module")
def prepared(rules_settings: Settings, spark: SparkSession) -> PrepareResult:
    return prepare_dataset(rules_settings, PrepareParameters(name="rules"), spark=spark)


def _gold(settings: Settings, name: str) -> list[dict[str, Any]]:
    table = DeltaTable(f"{settings.lake_uri}/gold/datasets/{name}").to_pyarrow_table()
    return sorted(table.to_pylist(), key=lambda row: (row["session_pseudonym"], row["step_index"]))


def _manifest(result: PrepareResult) -> dict[str, Any]:
    return json.loads(Path(result.manifest_uri).read_text())


def test_center_labels_follow_trial_phases(
    prepared: PrepareResult, rules_settings: Settings
) -> None:
    expected = _expected_center()
    rows = [row for row in _gold(rules_settings, "rules") if row["subject_pseudonym"] == "center"]

    assert len(rows) == 200 * len(CENTER_DAYS)
    for row in rows:
        label, trial_id, reason = expected[row["step_index"]]
        where = f"{row['session_pseudonym']} step {row['step_index']}"
        assert row["label"] == label, where
        assert row["trial_id"] == trial_id, where
        assert row["exclusion_reason"] == reason, where
        assert row["excluded"] is (reason is not None), where


def test_center_steps_from_go(prepared: PrepareResult, rules_settings: Settings) -> None:
    rows = [row for row in _gold(rules_settings, "rules") if row["subject_pseudonym"] == "center"]

    for row in rows:
        trial_id = row["trial_id"]
        if trial_id is None:
            assert row["steps_from_go"] is None
            assert row["movement_start_source"] is None
        else:
            assert row["steps_from_go"] == row["step_index"] - GO_STEP[trial_id]
            assert row["movement_start_source"] == MOVEMENT_START_SOURCE[trial_id]


def test_grasp_trials_movement_then_release(
    prepared: PrepareResult, rules_settings: Settings
) -> None:
    rows = [row for row in _gold(rules_settings, "rules") if row["subject_pseudonym"] == "grasp"]
    labels = {row["step_index"]: row["label"] for row in rows}

    assert {labels[index] for index in range(20, 50)} == {"precision_grip"}
    assert {labels[index] for index in range(60, 80)} == {"side_grip"}
    assert {labels[index] for index in range(80, 90)} == {"release"}
    assert labels[19] == labels[50] == labels[90] == "rest"
    assert not any(row["excluded"] for row in rows)
    first = next(row for row in rows if row["step_index"] == 20)
    assert first["steps_from_go"] == 0
    assert first["movement_start_source"] == "trial_start"
    assert first["trial_outcome"] is None


def test_manifest_counts_trials_and_fallbacks(prepared: PrepareResult) -> None:
    trials = _manifest(prepared)["trials"]

    assert trials["count"] == 6 * len(CENTER_DAYS) + 2
    assert trials["overlapping"] == len(CENTER_DAYS)
    assert trials["with_release"] == 1
    assert trials["by_movement_start_source"] == {
        "go_cue": 5 * len(CENTER_DAYS),
        "target_on": len(CENTER_DAYS),
        "trial_start": 2,
    }
    assert trials["by_exclusion_reason"] == {
        "included": 3 * len(CENTER_DAYS) + 2,
        "no_class_label": len(CENTER_DAYS),
        "no_trial_end": len(CENTER_DAYS),
        "outcome_fail": len(CENTER_DAYS),
    }


def test_window_complete_needs_clean_history(
    prepared: PrepareResult, rules_settings: Settings
) -> None:
    rows = [row for row in _gold(rules_settings, "rules") if row["session_pseudonym"] == "center-1"]
    complete = {row["step_index"]: row["window_complete"] for row in rows}

    # window 10: steps 0-8 lack history; steps 30-40 have a gap (30, 31) among their last 10.
    assert [index for index in range(60) if not complete[index]] == [*range(9), *range(30, 41)]


def test_classes_sorted_and_indexed(prepared: PrepareResult, rules_settings: Settings) -> None:
    classes = _manifest(prepared)["classes"]

    assert classes == sorted(classes)
    assert {"rest", "pre_movement", "release", "unknown_class", "side_grip"} <= set(classes)
    for row in _gold(rules_settings, "rules"):
        assert classes[row["label_index"]] == row["label"]


def test_coarser_steps_sum_silver_counts(rules_settings: Settings, spark: SparkSession) -> None:
    prepare_dataset(
        rules_settings,
        PrepareParameters(name="rules-100", subjects=("center",), days=(1,), step_ms=100),
        spark=spark,
    )
    rows = {row["step_index"]: row for row in _gold(rules_settings, "rules-100")}
    silver = SyntheticSession("center", 1, "center-1").counts()

    assert sorted(rows) == list(range(100))
    np.testing.assert_array_equal(rows[7]["counts"], silver[14] + silver[15])
    assert rows[15]["gap"]  # silver steps 30 and 31 are gaps
    assert not rows[16]["gap"]
    assert rows[7]["t_step_us"] == 700_000
    assert rows[7]["step_ms"] == 100
    # go cue at 1.02 s: the first 100 ms step at or after it starts at 1.1 s
    assert rows[11]["steps_from_go"] == 0
    assert rows[10]["label"] == "pre_movement"


def test_session_normalization_uses_own_stats_for_training(
    rules_settings: Settings, spark: SparkSession
) -> None:
    result = prepare_dataset(
        rules_settings,
        PrepareParameters(name="rules-session", subjects=("center",), normalization="session"),
        spark=spark,
    )
    manifest = _manifest(result)
    rows = _gold(rules_settings, "rules-session")

    assert set(manifest["normalization"]["sessions"]) == {"center-1"}
    by_session = {entry["session_pseudonym"]: entry for entry in manifest["sessions"]}
    assert by_session["center-1"]["normalization"] == "session"
    assert by_session["center-3"]["normalization"] == "subject_training"
    own = manifest["normalization"]["sessions"]["center-1"]
    clean = np.array(
        [row["counts"] for row in rows if row["session_pseudonym"] == "center-1" and not row["gap"]]
    )
    np.testing.assert_allclose(own["mean"], clean.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(own["std"], clean.std(axis=0), rtol=1e-12)


def test_step_width_not_a_multiple_rejected(rules_settings: Settings, spark: SparkSession) -> None:
    with pytest.raises(
        SelectionError, match="step width 75 ms is not a multiple of the silver step width 50 ms"
    ):
        prepare_dataset(rules_settings, PrepareParameters(name="bad", step_ms=75), spark=spark)


def test_reproduce_reads_recorded_versions_after_new_commits(
    prepared: PrepareResult, rules_settings: Settings, spark: SparkSession
) -> None:
    extra = SyntheticSession("center", 4, "center-4", events=list(CENTER_EVENTS))
    write_lake(Path(rules_settings.lake_uri), [extra])  # new versions of both source tables

    reproduction = reproduce_dataset(rules_settings, "rules", spark=spark)
    fresh = prepare_dataset(rules_settings, PrepareParameters(name="rules-later"), spark=spark)

    assert reproduction.matches, reproduction
    assert reproduction.rebuilt_hash == prepared.content_hash
    assert reproduction.stored_hash == prepared.content_hash
    latest = {
        table: DeltaTable(f"{rules_settings.lake_uri}/{table}").version()
        for table in (BEHAVIOR_EVENTS, SPIKE_STEPS)
    }
    assert fresh.source_versions == latest
    assert all(fresh.source_versions[table] > prepared.source_versions[table] for table in latest)
    assert fresh.content_hash != prepared.content_hash
