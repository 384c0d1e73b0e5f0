"""Gate scores on a gold dataset's test split, with a dataset built in memory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.model_artifacts import (
    GOLD_MANIFEST,
    gold_table,
    write_artifact,
    write_reader_artifact,
)
from training.data import StepArrays, arrays_from_arrow
from training.gate import GateError
from training.scoring import score_test_split


@pytest.fixture
def arrays() -> StepArrays:
    return arrays_from_arrow(gold_table(), name="grasp-test", manifest=GOLD_MANIFEST)


def test_reading_decoder_scores_perfectly(arrays: StepArrays, tmp_path: Path) -> None:
    assert score_test_split(write_reader_artifact(tmp_path / "reader"), arrays) == pytest.approx(
        1.0
    )


def test_constant_decoder_scores_chance(arrays: StepArrays, tmp_path: Path) -> None:
    # Always grasp: recall 1 for grasp and 0 for rest; release never occurs, so it is left out.
    constant = write_artifact(tmp_path / "constant", favoured="grasp")

    assert score_test_split(constant, arrays) == pytest.approx(0.5)


def test_other_classes_are_rejected(arrays: StepArrays, tmp_path: Path) -> None:
    directory = write_artifact(tmp_path / "other")
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    config["classes"] = ["rest", "release", "grasp"]
    config_path.write_text(json.dumps(config))

    with pytest.raises(GateError, match="predicts classes"):
        score_test_split(directory, arrays)
