from pathlib import Path

import pytest

from infra.exceptions import TopicSpecError
from infra.topics import load_spec


def test_spec_names_every_design_topic() -> None:
    names = {spec.name for spec in load_spec("bcratos.", broker_count=1)}
    expected = {
        f"bcratos.{short}"
        for short in (
            "raw.spikes", "raw.behavior", "raw.eskin", "raw.decoder",
            "anon.spikes", "anon.behavior", "anon.eskin", "anon.decoder",
            "dlq", "models", "retrain", "jobs",
        )
    }
    assert names == expected


def test_models_topic_compacted() -> None:
    specs = {spec.name: spec for spec in load_spec("x.", broker_count=1)}
    assert specs["x.models"].cleanup_policy == "compact"
    assert specs["x.raw.spikes"].retention_ms < specs["x.anon.spikes"].retention_ms


def test_replication_capped_by_brokers() -> None:
    one = load_spec("bcratos.", broker_count=1)
    three = load_spec("bcratos.", broker_count=5)
    assert {spec.replication_factor for spec in one} == {1}
    assert {spec.min_insync_replicas for spec in one} == {1}
    assert {spec.replication_factor for spec in three} == {3}
    assert {spec.min_insync_replicas for spec in three} == {2}


def test_unknown_spec_key_named(tmp_path: Path) -> None:
    spec = tmp_path / "topics.toml"
    spec.write_text(
        "[defaults]\npartitions = 1\nreplication_factor = 1\nmin_insync_replicas = 1\n"
        "cleanup_policy = 'delete'\nretention_ms = 1000\n[topics.a]\nretension_ms = 5\n"
    )
    with pytest.raises(TopicSpecError, match="retension_ms"):
        load_spec("p.", 1, spec)


def test_bad_cleanup_policy_named(tmp_path: Path) -> None:
    spec = tmp_path / "topics.toml"
    spec.write_text(
        "[defaults]\npartitions = 1\nreplication_factor = 1\nmin_insync_replicas = 1\n"
        "cleanup_policy = 'delete'\nretention_ms = 1000\n[topics.a]\ncleanup_policy = 'purge'\n"
    )
    with pytest.raises(TopicSpecError, match="'purge'"):
        load_spec("p.", 1, spec)


def test_missing_value_named(tmp_path: Path) -> None:
    spec = tmp_path / "topics.toml"
    spec.write_text("[topics.a]\npartitions = 2\n")
    with pytest.raises(TopicSpecError, match="retention_ms"):
        load_spec("p.", 1, spec)
