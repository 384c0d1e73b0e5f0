"""The registry/models Delta table: rows per model version, the current model of a target."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from deltalake import DeltaTable

from bcratos.config import Settings, load_settings
from training.registry import (
    ModelEntry,
    RegistryError,
    current_model,
    list_models,
    record_model,
    table_uri,
)

DECIDED = datetime(2024, 6, 2, 12, 0, tzinfo=UTC)


@pytest.fixture
def lake_settings(tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path, lake={"uri": str(tmp_path / "lake")})


def _entry(
    version: str,
    *,
    target: str = "p-3f9a0c",
    decision: str = "announced",
    minutes: int = 0,
    score: float | None = 0.8,
) -> ModelEntry:
    return ModelEntry(
        target=target,
        model_version=version,
        created_at=DECIDED - timedelta(hours=1),
        decided_at=DECIDED + timedelta(minutes=minutes),
        artifact_uri=f"file:///models/{version}",
        weights_sha256="0" * 64,
        decision=decision,  # type: ignore[arg-type]
        reason="test",
        dataset="grasp-2024-06",
        manifest_hash="sha256:" + "ab" * 32,
        architecture="linear",
        key_id="ed25519:0123456789abcdef",
        candidate_score=score,
        metrics={"balanced_accuracy": 0.8, "f1": {"rest": 0.9}},
    )


def test_registry_empty_without_table(lake_settings: Settings) -> None:
    assert list_models(lake_settings) == []
    assert current_model(lake_settings, "p-3f9a0c") is None


def test_registry_round_trips_entry(lake_settings: Settings) -> None:
    entry = _entry("v1")

    record_model(lake_settings, entry)

    assert list_models(lake_settings) == [entry]


def test_registry_partitioned_by_target(lake_settings: Settings) -> None:
    record_model(lake_settings, _entry("v1"))

    table = DeltaTable(table_uri(lake_settings))
    assert table.metadata().partition_columns == ["target"]
    assert table_uri(lake_settings).endswith("/lake/registry/models")


def test_current_model_is_latest_announced(lake_settings: Settings) -> None:
    record_model(lake_settings, _entry("v1", minutes=0))
    record_model(lake_settings, _entry("v2", minutes=10))
    record_model(lake_settings, _entry("v3", minutes=20, decision="rejected"))
    record_model(lake_settings, _entry("g1", minutes=30, target="global"))

    current = current_model(lake_settings, "p-3f9a0c")

    assert current is not None
    assert current.model_version == "v2"
    assert [entry.model_version for entry in list_models(lake_settings, "p-3f9a0c")] == [
        "v1",
        "v2",
        "v3",
    ]


def test_same_version_replaces_row(lake_settings: Settings) -> None:
    record_model(lake_settings, _entry("v1", decision="rejected", minutes=0))
    record_model(lake_settings, _entry("v1", decision="announced", minutes=5))

    entries = list_models(lake_settings)

    assert len(entries) == 1
    assert entries[0].decision == "announced"


def test_invalid_decision_is_rejected() -> None:
    with pytest.raises(ValueError, match="invalid decision 'maybe'"):
        _entry("v1", decision="maybe")


def test_foreign_table_layout_is_rejected(lake_settings: Settings) -> None:
    import pyarrow as pa

    DeltaTable.create(table_uri(lake_settings), schema=pa.schema([("model_version", pa.string())]))

    with pytest.raises(RegistryError, match="does not match the layout"):
        list_models(lake_settings)
