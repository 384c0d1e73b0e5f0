"""The validation gate: announce only a candidate that matches or beats the current model."""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from bcratos.config import Settings, load_settings
from tests.support.model_artifacts import write_artifact
from training.gate import GateDecision, GateError, decide, run_gate
from training.registry import current_model, list_models

TARGET = "p-3f9a0c"


@pytest.fixture
def lake_settings(tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path, lake={"uri": str(tmp_path / "lake")})


def _scores(values: dict[str, float]) -> Callable[[Path], float]:
    """Return a score function that looks the model directory's name up in `values`."""

    def score(directory: Path) -> float:
        return values[directory.name]

    return score


def _gate(
    settings: Settings, directory: Path, score: Callable[[Path], float], *, force: bool = False
) -> GateDecision:
    return run_gate(
        settings, directory, target=TARGET, model_version=directory.name, score=score, force=force
    )


def test_gate_passes_first_model(lake_settings: Settings, tmp_path: Path) -> None:
    first = write_artifact(tmp_path / "v1")

    decision = _gate(lake_settings, first, _scores({"v1": 0.6}))

    assert decision.passed
    assert decision.current_score is None
    assert decision.current_model_version is None
    entry = current_model(lake_settings, TARGET)
    assert entry is not None
    assert entry.model_version == "v1"
    assert entry.candidate_score == 0.6
    assert entry.architecture == "linear"
    assert entry.dataset == "grasp-2024-06"
    assert entry.artifact_uri == first.resolve().as_uri()


def test_gate_passes_better_candidate(lake_settings: Settings, tmp_path: Path) -> None:
    score = _scores({"v1": 0.70, "v2": 0.75})
    _gate(lake_settings, write_artifact(tmp_path / "v1"), score)

    decision = _gate(lake_settings, write_artifact(tmp_path / "v2"), score)

    assert decision.passed
    assert decision.candidate_score == 0.75
    assert decision.current_score == 0.70
    assert decision.current_model_version == "v1"
    entry = current_model(lake_settings, TARGET)
    assert entry is not None
    assert entry.model_version == "v2"
    assert entry.current_score == 0.70
    assert entry.current_model_version == "v1"


def test_gate_passes_equal_candidate(lake_settings: Settings, tmp_path: Path) -> None:
    score = _scores({"v1": 0.70, "v2": 0.70})
    _gate(lake_settings, write_artifact(tmp_path / "v1"), score)

    assert _gate(lake_settings, write_artifact(tmp_path / "v2"), score).passed


def test_gate_rejects_worse_candidate(lake_settings: Settings, tmp_path: Path) -> None:
    score = _scores({"v1": 0.70, "v2": 0.69})
    _gate(lake_settings, write_artifact(tmp_path / "v1"), score)

    decision = _gate(lake_settings, write_artifact(tmp_path / "v2"), score)

    assert not decision.passed
    assert "0.6900" in decision.reason
    assert "0.7000" in decision.reason
    entry = current_model(lake_settings, TARGET)
    assert entry is not None
    assert entry.model_version == "v1"
    rejected = list_models(lake_settings, TARGET)[-1]
    assert rejected.model_version == "v2"
    assert rejected.decision == "rejected"
    assert rejected.candidate_score == 0.69
    assert rejected.current_score == 0.70


def test_gate_scores_current_on_same_function(lake_settings: Settings, tmp_path: Path) -> None:
    scored: list[str] = []

    def score(directory: Path) -> float:
        scored.append(directory.name)
        return 0.5

    _gate(lake_settings, write_artifact(tmp_path / "v1"), score)
    scored.clear()
    _gate(lake_settings, write_artifact(tmp_path / "v2"), score)

    assert sorted(scored) == ["v1", "v2"]


def test_gate_force_announces_worse_candidate(lake_settings: Settings, tmp_path: Path) -> None:
    score = _scores({"v1": 0.70, "v2": 0.50})
    _gate(lake_settings, write_artifact(tmp_path / "v1"), score)

    decision = _gate(lake_settings, write_artifact(tmp_path / "v2"), score, force=True)

    assert decision.passed
    assert decision.reason.startswith("forced by the operator")
    assert decision.current_score == 0.70


def test_gate_rejects_nan_score(lake_settings: Settings, tmp_path: Path) -> None:
    decision = _gate(lake_settings, write_artifact(tmp_path / "v1"), _scores({"v1": math.nan}))

    assert not decision.passed
    assert "not a finite number" in decision.reason


def test_gate_missing_current_artifact_fails(lake_settings: Settings, tmp_path: Path) -> None:
    score = _scores({"v1": 0.70, "v2": 0.80})
    _gate(lake_settings, write_artifact(tmp_path / "v1"), score)
    shutil.rmtree(tmp_path / "v1")
    candidate = write_artifact(tmp_path / "v2")

    with pytest.raises(GateError, match="no model.safetensors"):
        decide(lake_settings, candidate, target=TARGET, model_version="v2", score=score)

    forced = decide(
        lake_settings, candidate, target=TARGET, model_version="v2", score=score, force=True
    )
    assert forced.passed
    assert forced.current_score is None


def test_gate_needs_score_unless_forced(lake_settings: Settings, tmp_path: Path) -> None:
    candidate = write_artifact(tmp_path / "v1")

    with pytest.raises(ValueError, match="score function"):
        decide(lake_settings, candidate, target=TARGET, model_version="v1", score=None)

    forced = decide(
        lake_settings, candidate, target=TARGET, model_version="v1", score=None, force=True
    )
    assert forced.passed
    assert forced.candidate_score is None
