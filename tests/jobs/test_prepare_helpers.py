"""Pure helpers of the dataset job: splits, statistics, parameters, manifests. No Spark."""

from __future__ import annotations

import doctest
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from py4j.protocol import Py4JError
from pyspark.errors import AnalysisException

import jobs.dataset.manifest
import jobs.dataset.normalization
import jobs.dataset.sources
import jobs.dataset.splits
import jobs.prepare
from jobs.dataset.errors import (
    InvalidParameterError,
    ManifestError,
    SparkJobError,
    spark_message,
    spark_step,
)
from jobs.dataset.manifest import FORMAT_VERSION, combine_hashes, read_manifest, write_manifest
from jobs.dataset.normalization import (
    SOURCE_IDENTITY,
    SOURCE_SESSION,
    SOURCE_SUBJECT,
    ChannelStats,
    ChannelSums,
    plan_normalization,
)
from jobs.dataset.sources import check_dataset_name, dataset_uri, manifest_uri
from jobs.dataset.splits import SessionKey, assign_splits
from jobs.prepare import PrepareParameters, parameters_from_options, parse_days, parse_subjects


@pytest.mark.parametrize(
    "module",
    [
        jobs.dataset.manifest,
        jobs.dataset.normalization,
        jobs.dataset.sources,
        jobs.dataset.splits,
        jobs.prepare,
    ],
)
def test_docstring_examples(module: ModuleType) -> None:
    result = doctest.testmod(module)
    assert result.failed == 0


# ---------------------------------------------------------------------------------------------
# Splits


def _sessions(subject: str, days: list[int]) -> list[SessionKey]:
    return [SessionKey(subject, day, f"{subject}-{day}") for day in days]


def test_splits_last_day_test_then_validation() -> None:
    plan = assign_splits(
        _sessions("s", [3, 1, 2, 5]), split_by="day", test_units=1, validation_units=1
    )

    assert plan.splits == {"s-1": "train", "s-2": "train", "s-3": "validation", "s-5": "test"}
    assert plan.notes == []


def test_splits_day_keeps_sessions_of_one_day_together() -> None:
    sessions = [SessionKey("s", 1, "a"), SessionKey("s", 2, "b"), SessionKey("s", 2, "c")]

    plan = assign_splits(sessions, split_by="day", test_units=1, validation_units=0)

    assert plan.splits == {"a": "train", "b": "test", "c": "test"}


def test_splits_by_session_orders_by_day_then_pseudonym() -> None:
    sessions = [SessionKey("s", 2, "b"), SessionKey("s", 2, "a"), SessionKey("s", 1, "z")]

    plan = assign_splits(sessions, split_by="session", test_units=1, validation_units=1)

    assert plan.splits == {"z": "train", "a": "validation", "b": "test"}


def test_splits_single_session_subject_is_train_with_note() -> None:
    plan = assign_splits(
        _sessions("one", [7]) + _sessions("many", [1, 2, 3]),
        split_by="day",
        test_units=1,
        validation_units=1,
    )

    assert plan.splits["one-7"] == "train"
    assert [plan.splits[f"many-{day}"] for day in (1, 2, 3)] == ["train", "validation", "test"]
    assert len(plan.notes) == 1
    assert "subject one has one day" in plan.notes[0]


def test_splits_two_days_fill_test_before_validation() -> None:
    plan = assign_splits(_sessions("s", [1, 2]), split_by="day", test_units=1, validation_units=1)

    assert plan.splits == {"s-1": "train", "s-2": "test"}
    assert "0 validation" in plan.notes[0]


def test_splits_zero_test_days() -> None:
    plan = assign_splits(
        _sessions("s", [1, 2, 3]), split_by="day", test_units=0, validation_units=1
    )

    assert sorted(plan.splits.values()) == ["train", "train", "validation"]


def test_splits_never_share_a_session() -> None:
    sessions = _sessions("a", list(range(6))) + _sessions("b", [10, 11])

    plan = assign_splits(sessions, split_by="session", test_units=2, validation_units=2)

    assert sorted(plan.splits) == sorted(session.session_pseudonym for session in sessions)
    assert [plan.splits[f"a-{day}"] for day in range(6)] == [
        "train",
        "train",
        "validation",
        "validation",
        "test",
        "test",
    ]


def test_splits_reject_unknown_unit() -> None:
    with pytest.raises(ValueError, match="invalid split_by 'week'"):
        assign_splits([], split_by="week", test_units=1, validation_units=1)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Normalization statistics


def _sums(counts: np.ndarray) -> ChannelSums:
    """Return the exact sums of counts shaped (steps, channels)."""
    values = counts.astype(np.int64)
    return ChannelSums(
        values.shape[0],
        tuple(int(value) for value in values.sum(axis=0)),
        tuple(int(value) for value in (values * values).sum(axis=0)),
    )


def test_stats_match_numpy_population_std() -> None:
    counts = np.random.default_rng(3).poisson(4.0, (500, 6))

    stats = ChannelStats.from_sums(_sums(counts))

    assert stats.steps == 500
    np.testing.assert_allclose(stats.mean, counts.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats.std, counts.std(axis=0), rtol=1e-12)


def test_stats_of_added_sums_equal_pooled_stats() -> None:
    rng = np.random.default_rng(4)
    first, second = rng.poisson(2.0, (100, 3)), rng.poisson(9.0, (50, 3))

    pooled = ChannelStats.from_sums(_sums(first) + _sums(second))

    both = np.concatenate([first, second])
    np.testing.assert_allclose(pooled.mean, both.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(pooled.std, both.std(axis=0), rtol=1e-12)


def test_stats_constant_channel_divides_by_one() -> None:
    stats = ChannelStats.from_sums(_sums(np.array([[2, 1], [2, 3]])))

    assert stats.std == (0.0, 1.0)
    assert stats.divisors() == (1.0, 1.0)


def test_stats_of_no_steps_rejected() -> None:
    with pytest.raises(ValueError, match="no steps"):
        ChannelStats.from_sums(ChannelSums.zeros(3))


def test_sums_of_other_channel_count_rejected() -> None:
    with pytest.raises(ValueError, match="2 and 3 channels"):
        ChannelSums.zeros(2) + ChannelSums.zeros(3)


SESSIONS = [
    ("s", "train-1", "train", 2),
    ("s", "train-2", "train", 2),
    ("s", "test-1", "test", 2),
]
TRAINING = {
    "train-1": _sums(np.array([[1, 0], [3, 2]])),
    "train-2": _sums(np.array([[5, 4], [5, 4]])),
    "test-1": _sums(np.array([[100, 100], [0, 0]])),  # never used: test is not training
}


def test_subject_mode_pools_training_sessions_only() -> None:
    plan = plan_normalization("subject", training_sums=TRAINING, sessions=SESSIONS)

    expected = ChannelStats.from_sums(TRAINING["train-1"] + TRAINING["train-2"])
    assert plan.subjects == {"s": expected}
    assert plan.sessions == {}
    assert {name: source for name, (source, _stats) in plan.applied.items()} == {
        "train-1": SOURCE_SUBJECT,
        "train-2": SOURCE_SUBJECT,
        "test-1": SOURCE_SUBJECT,
    }
    assert all(stats == expected for _source, stats in plan.applied.values())


def test_session_mode_uses_own_stats_for_training_sessions() -> None:
    plan = plan_normalization("session", training_sums=TRAINING, sessions=SESSIONS)

    assert plan.applied["train-1"] == (
        SOURCE_SESSION,
        ChannelStats.from_sums(TRAINING["train-1"]),
    )
    assert plan.applied["test-1"] == (SOURCE_SUBJECT, plan.subjects["s"])
    assert set(plan.sessions) == {"train-1", "train-2"}


def test_subject_without_training_steps_gets_identity_with_note() -> None:
    plan = plan_normalization("subject", training_sums={}, sessions=[("s", "only", "train", 3)])

    assert plan.applied["only"] == (SOURCE_IDENTITY, ChannelStats.identity(3))
    assert "no training steps" in plan.notes[0]


# ---------------------------------------------------------------------------------------------
# Parameters


def test_parameters_defaults() -> None:
    parameters = PrepareParameters(name="d1")

    assert (parameters.step_ms, parameters.window, parameters.split_by) == (50, 10, "day")
    assert (parameters.test_days, parameters.validation_days) == (1, 1)
    assert parameters.normalization == "subject"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "../escape"}, "invalid dataset name '../escape'"),
        ({"name": "a/b"}, "invalid dataset name 'a/b'"),
        ({"name": ""}, "invalid dataset name ''"),
        ({"step_ms": 0}, "invalid step_ms 0"),
        ({"window": -1}, "invalid window -1"),
        ({"test_days": -1}, "invalid test_days -1"),
        ({"split_by": "week"}, "invalid split_by 'week'"),
        ({"normalization": "global"}, "invalid normalization 'global'"),
        ({"subjects": ()}, "invalid subjects"),
        ({"days": ()}, "invalid days"),
    ],
)
def test_parameters_reject_bad_values(changes: dict[str, object], message: str) -> None:
    values: dict[str, object] = {"name": "d1", **changes}
    with pytest.raises(InvalidParameterError, match=message.replace("(", r"\(")):
        PrepareParameters(**values)  # type: ignore[arg-type]


def test_parameters_round_trip_through_dict() -> None:
    parameters = PrepareParameters(
        name="d1", subjects=("a", "b"), days=(3, 4), step_ms=100, split_by="session"
    )

    assert PrepareParameters.from_dict(json.loads(json.dumps(parameters.as_dict()))) == parameters


def test_parameters_from_manifest_reject_unknown_key() -> None:
    with pytest.raises(ManifestError, match="unknown keys"):
        PrepareParameters.from_dict({"name": "d1", "colour": "red"})


def test_parameters_from_options_leave_none_at_default() -> None:
    parameters = parameters_from_options(
        {"name": "d1", "subjects": "b,a", "days": None, "step_ms": 100, "window": None}
    )

    assert parameters == PrepareParameters(name="d1", subjects=("a", "b"), step_ms=100)


def test_parse_days_rejects_words() -> None:
    with pytest.raises(InvalidParameterError, match="invalid day 'monday' in --days"):
        parse_days("812,monday")


def test_parse_lists_reject_empty_text() -> None:
    with pytest.raises(InvalidParameterError, match="invalid days"):
        parse_days(" , ")
    with pytest.raises(InvalidParameterError, match="invalid subjects"):
        parse_subjects(",")


def test_dataset_locations_under_gold() -> None:
    assert dataset_uri("/lake/", "d1") == "/lake/gold/datasets/d1"
    assert manifest_uri("s3://bucket/lake", "d1") == "s3://bucket/lake/gold/manifests/d1.json"
    with pytest.raises(InvalidParameterError):
        check_dataset_name("a..b")


# ---------------------------------------------------------------------------------------------
# Manifest and hash


def test_hash_changes_with_any_session_hash() -> None:
    sessions = [("train", "s1", 2, "ab"), ("test", "s2", 1, "cd")]

    base = combine_hashes("a int", sessions)

    assert combine_hashes("a int", [("train", "s1", 2, "ab"), ("test", "s2", 1, "ce")]) != base
    assert combine_hashes("a bigint", sessions) != base
    assert combine_hashes("a int", sessions[:1]) != base


def test_manifest_round_trip(tmp_path: Path) -> None:
    uri = str(tmp_path / "gold" / "manifests" / "d1.json")
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": "d1",
        "sources": {"silver/spike_steps": {"version": 3}},
        "parameters": {"name": "d1"},
        "content_hash": "sha256:00",
    }

    write_manifest(uri, manifest)

    assert read_manifest(uri) == manifest


def test_manifest_missing_names_the_command(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="not found: prepare the dataset first"):
        read_manifest(str(tmp_path / "none.json"))


def test_manifest_of_other_format_rejected(tmp_path: Path) -> None:
    path = tmp_path / "d1.json"
    path.write_text(
        json.dumps(
            {
                "format_version": 99,
                "name": "d1",
                "sources": {},
                "parameters": {},
                "content_hash": "x",
            }
        )
    )

    with pytest.raises(ManifestError, match="format version 99"):
        read_manifest(str(path))


def test_manifest_not_json_rejected(tmp_path: Path) -> None:
    path = tmp_path / "d1.json"
    path.write_text("{not json")

    with pytest.raises(ManifestError, match="not valid JSON"):
        read_manifest(str(path))


# ---------------------------------------------------------------------------------------------
# Spark errors


def test_spark_step_wraps_pyspark_errors_with_the_step() -> None:
    with pytest.raises(SparkJobError, match="^reading x failed: "), spark_step("reading x"):
        raise AnalysisException(message="[PATH_NOT_FOUND] Path does not exist: /x")


def test_spark_step_wraps_py4j_errors() -> None:
    with pytest.raises(SparkJobError, match="gateway down"), spark_step("writing y"):
        raise Py4JError("gateway down")


def test_spark_message_drops_jvm_stack_trace() -> None:
    error = AnalysisException(
        message="[DELTA_MISSING] table missing\n\tat org.apache.spark.Foo(Foo.scala:1)\n"
        "\tat org.apache.spark.Bar(Bar.scala:2)"
    )

    message = spark_message(error)

    assert message == "[DELTA_MISSING] table missing"
    assert "org.apache" not in message
