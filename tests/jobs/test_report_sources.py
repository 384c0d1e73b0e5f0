"""Data shaping of `bcratos report` on small real Delta tables and files in a temporary folder."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable
from report_sources import (
    CLASSES,
    DAYS_A,
    MODEL_VERSION,
    SUBJECT_A,
    SUBJECT_B,
    model_config,
    write_evaluation,
    write_lake_tables,
    write_manifest,
    write_metrics_files,
    write_model,
)
from synthetic_lake import STEP_US, SyntheticSession

from jobs.catalog import Lake
from jobs.report.decoders import load_balances, load_models, load_next_day
from jobs.report.figures import commit_delays_ms, throughput
from jobs.report.neural import LEAD_S, load_rates, load_stretch
from jobs.report.pipeline import (
    Commit,
    dead_letters,
    load_commits,
    load_worker_metrics,
    parse_commit,
    read_commits,
)
from jobs.report.sections import Missing


@pytest.fixture(scope="module")
def lake_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[SyntheticSession]]:
    data_dir = tmp_path_factory.mktemp("report-sources")
    return data_dir, write_lake_tables(data_dir)


def _lake(data_dir: Path) -> Lake:
    return Lake.from_uri(str(data_dir / "lake"))


# ---------------------------------------------------------------------------------------------
# Raster


def test_stretch_picks_subject_with_most_days(
    lake_dir: tuple[Path, list[SyntheticSession]],
) -> None:
    stretch = load_stretch(_lake(lake_dir[0]))

    assert not isinstance(stretch, Missing)
    assert stretch.subject == SUBJECT_A
    assert stretch.session_day == DAYS_A[0]
    assert stretch.session == f"session-a-{DAYS_A[0]}"
    assert stretch.step_ms == 50


def test_stretch_counts_match_written_steps(lake_dir: tuple[Path, list[SyntheticSession]]) -> None:
    data_dir, sessions = lake_dir
    session = sessions[0]
    stretch = load_stretch(_lake(data_dir), stretch_s=3.0)
    assert not isinstance(stretch, Missing)

    # The first trial starts at 2.0 s, so the stretch covers 1.0 s to 4.0 s: steps 20 to 79.
    first = round((2.0 - LEAD_S) * 1e6 / STEP_US)
    expected = session.counts()[first : first + 60].copy()
    expected[30 - first] = 0  # step 30 is a gap, written with zero counts
    assert stretch.counts.shape == (60, session.n_channels)
    np.testing.assert_array_equal(stretch.counts, expected)
    np.testing.assert_allclose(stretch.t_s, (first + np.arange(60)) * STEP_US / 1e6)
    assert np.flatnonzero(stretch.gap).tolist() == [30 - first]


def test_stretch_markers_inside_window(lake_dir: tuple[Path, list[SyntheticSession]]) -> None:
    stretch = load_stretch(_lake(lake_dir[0]), stretch_s=3.0)
    assert not isinstance(stretch, Missing)

    markers = sorted((marker.t_s, marker.kind, marker.label or "") for marker in stretch.markers)
    # The window is [1.0 s, 4.0 s): the first trial's end at 4.0 s lies outside it.
    assert markers == [
        (2.0, "trial_start", ""),
        (2.5, "class_label", "target_1"),
        (2.5, "go_cue", ""),
    ]


def test_stretch_of_chosen_subject_and_day(lake_dir: tuple[Path, list[SyntheticSession]]) -> None:
    stretch = load_stretch(_lake(lake_dir[0]), subject=SUBJECT_B, session_day=200)

    assert not isinstance(stretch, Missing)
    assert stretch.session == "session-b-200"
    assert stretch.markers == []
    assert stretch.counts.shape == (200, 3)  # no trials: the first 15 s, all 10 s of it


def test_stretch_unknown_subject_names_known_ones(
    lake_dir: tuple[Path, list[SyntheticSession]],
) -> None:
    with pytest.raises(ValueError, match=SUBJECT_B):
        load_stretch(_lake(lake_dir[0]), subject="unknown")


def test_stretch_without_silver_table_is_missing(tmp_path: Path) -> None:
    (tmp_path / "lake").mkdir()

    stretch = load_stretch(_lake(tmp_path))

    assert isinstance(stretch, Missing)
    assert "silver.spike_steps" in stretch.note()
    assert "make run" in stretch.note()


# ---------------------------------------------------------------------------------------------
# Drift


def test_rates_are_gap_free_means_in_hz(lake_dir: tuple[Path, list[SyntheticSession]]) -> None:
    data_dir, sessions = lake_dir
    rates = load_rates(_lake(data_dir))
    assert not isinstance(rates, Missing)

    by_subject = {entry.subject: entry for entry in rates}
    subject_a = by_subject[SUBJECT_A]
    assert subject_a.days == list(DAYS_A)
    assert subject_a.steps == [199, 199, 199]
    for column, session in enumerate(sessions[:3]):
        counts = np.delete(session.counts(), 30, axis=0)  # (199, channels) without the gap
        np.testing.assert_allclose(subject_a.rate_hz[:, column], counts.mean(axis=0) / 0.05)


def test_rates_of_single_day_subject(lake_dir: tuple[Path, list[SyntheticSession]]) -> None:
    rates = load_rates(_lake(lake_dir[0]))
    assert not isinstance(rates, Missing)

    subject_b = next(entry for entry in rates if entry.subject == SUBJECT_B)
    assert subject_b.days == [200]
    assert subject_b.rate_hz.shape == (3, 1)


# ---------------------------------------------------------------------------------------------
# Manifests, models, evaluations


def test_balance_orders_splits_and_classes(tmp_path: Path) -> None:
    write_manifest(tmp_path)

    balances = load_balances(_lake(tmp_path))

    assert not isinstance(balances, Missing)
    (balance,) = balances
    assert balance.name == "demo"
    assert list(balance.rows) == ["train", "validation", "test"]
    assert balance.classes == CLASSES
    assert balance.rows["validation"] == {
        "pre_movement": 0,
        "rest": 20,
        "target_1": 0,
        "target_2": 0,
    }
    assert balance.excluded == 15


def test_balance_without_manifests_names_prepare(tmp_path: Path) -> None:
    (tmp_path / "lake").mkdir()

    balances = load_balances(_lake(tmp_path))

    assert isinstance(balances, Missing)
    assert "bcratos jobs prepare" in balances.note()


def test_models_keep_newest_in_training_order(tmp_path: Path) -> None:
    write_model(tmp_path, model_config("old", "2026-01-01T00:00:00+00:00"))
    write_model(tmp_path, model_config("newest", "2026-01-03T00:00:00+00:00"))
    write_model(tmp_path, model_config("middle", "2026-01-02T00:00:00+00:00"))

    runs = load_models(tmp_path / "models", limit=2)

    assert not isinstance(runs, Missing)
    assert [run.version for run in runs] == ["middle", "newest"]


def test_model_run_reads_exported_metrics(tmp_path: Path) -> None:
    write_model(tmp_path)

    runs = load_models(tmp_path / "models")

    assert not isinstance(runs, Missing)
    (run,) = runs
    assert run.version == MODEL_VERSION
    assert run.classes == CLASSES
    assert [record["epoch"] for record in run.history] == [1, 2, 3]
    assert run.confusion is not None
    assert np.asarray(run.confusion).sum() == 6
    # Days 102 and 104 are 1 and 3 days after day 101; JSON turned the keys into strings.
    assert run.trials_by_days == {1: (2, 1.0), 3: (4, 0.5)}


def test_models_without_exports_name_train(tmp_path: Path) -> None:
    runs = load_models(tmp_path / "models")

    assert isinstance(runs, Missing)
    assert "bcratos train" in runs.note()


def test_next_day_reads_protocol_output(tmp_path: Path) -> None:
    path = write_evaluation(tmp_path)

    evaluation = load_next_day(path)

    assert not isinstance(evaluation, Missing)
    assert [day.name for day in evaluation.days] == ["day 103", "day 104"]
    assert [day.days_since_training for day in evaluation.days] == [2, 1]
    assert evaluation.days[0].accuracy["lda"]["pooled"] == 0.5
    assert evaluation.classes == ["target_1", "target_2"]


def test_next_day_missing_file_names_evaluate(tmp_path: Path) -> None:
    evaluation = load_next_day(tmp_path / "evaluations" / "next-day.json")

    assert isinstance(evaluation, Missing)
    assert "bcratos evaluate --protocol next-day" in evaluation.note()


# ---------------------------------------------------------------------------------------------
# Commits and metrics files


def test_commits_of_written_table(lake_dir: tuple[Path, list[SyntheticSession]]) -> None:
    data_dir, sessions = lake_dir
    lake = _lake(data_dir)

    commits = read_commits(lake, lake.table("bronze", "behavior_events"))

    (commit,) = commits  # write_lake appends every event in one commit
    assert commit.rows == sum(len(session.events) for session in sessions)
    stamps = DeltaTable(str(data_dir / "lake" / "bronze" / "behavior_events")).to_pyarrow_table(
        columns=["ingested_at"]
    )
    ingested = pc.min(stamps.column(0)).as_py()
    # The Delta log keeps ingested_at statistics in milliseconds.
    assert commit.oldest_ingested_at is not None
    assert abs(commit.oldest_ingested_at - ingested) < timedelta(milliseconds=1)
    assert commit.committed_at >= commit.oldest_ingested_at - timedelta(milliseconds=1)


def test_commits_only_of_bronze_tables(lake_dir: tuple[Path, list[SyntheticSession]]) -> None:
    commits = load_commits(_lake(lake_dir[0]))

    assert not isinstance(commits, Missing)
    assert list(commits) == ["bronze.behavior_events"]


def test_parse_commit_skips_compaction() -> None:
    add = {"add": {"path": "a.parquet", "stats": json.dumps({"numRecords": 5})}}
    optimize = "\n".join(
        [json.dumps({"commitInfo": {"timestamp": 1000, "operation": "OPTIMIZE"}}), json.dumps(add)]
    )
    write = optimize.replace("OPTIMIZE", "WRITE")

    assert parse_commit(3, optimize) is None
    parsed = parse_commit(3, write)
    assert parsed is not None
    assert parsed.rows == 5
    assert parsed.committed_at == datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC)
    assert parsed.oldest_ingested_at is None


def test_throughput_bins_rows_per_second() -> None:
    origin = datetime(2026, 1, 1, tzinfo=UTC)
    commits = [
        Commit(1, origin, 100, None),
        Commit(2, origin + timedelta(seconds=1), 300, None),
        Commit(3, origin + timedelta(seconds=5), 50, None),
        Commit(4, origin + timedelta(seconds=8), 30, None),
    ]

    edges, rates = throughput(commits, origin, 4, 8.0)

    assert edges.tolist() == [0.0, 4.0, 8.0, 12.0]
    assert rates.tolist() == [100.0, 12.5, 7.5]


def test_commit_delays_skip_unknown_stamps() -> None:
    committed = datetime(2026, 1, 1, tzinfo=UTC)
    commits = [
        Commit(1, committed, 10, committed - timedelta(milliseconds=120)),
        Commit(2, committed, 10, None),
    ]

    assert commit_delays_ms(commits).tolist() == pytest.approx([120.0])


def test_dead_letters_sum_both_stages(tmp_path: Path) -> None:
    write_metrics_files(tmp_path)

    workers = load_worker_metrics(tmp_path / "streams")

    assert [worker.stage for worker in workers] == ["ingest", "sink"]
    assert dead_letters(workers) == 7


def test_dead_letters_unknown_without_files(tmp_path: Path) -> None:
    assert dead_letters(load_worker_metrics(tmp_path / "streams")) is None


def test_unreadable_metrics_file_is_skipped(tmp_path: Path) -> None:
    write_metrics_files(tmp_path)
    (tmp_path / "streams" / "sink-103.json").write_text("{not json")

    workers = load_worker_metrics(tmp_path / "streams")

    assert [worker.pid for worker in workers] == [101, 102]
