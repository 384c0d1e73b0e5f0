"""Training and evaluation on real limblab sessions (monkey Spike; Miller lab, Northwestern).

The gold dataset is built by the test helper ``gold.write_gold`` from three days of
recordings. Each day is cut into three consecutive sessions: train (first 60 %), validation
(next 20 %) and test (last 20 %). The test sessions are thus held out from days the decoders
train on. Accuracy thresholds are the figures measured with the fixed seeds below, minus a margin.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bcratos.cli import app
from tests.training.gold import SPIKE_FILES, SUBJECT, write_gold
from training.data import StepArrays, WindowDataset, load_gold, select_targets
from training.evaluate import evaluate_split
from training.export import load_model
from training.models import build_decoder, default_config
from training.nextday import (
    REFERENCE,
    days_from_arrays,
    days_from_recordings,
    run_next_day,
)
from training.train import TrainConfig, train

DATASET = "spike3"
DAYS = (0, 1, 3)  # 2012-07-18, 07-19 and 07-21; 07-20 has only 39 rewarded trials
WINDOW = 10
SEED = 0


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Small models train faster on one thread, and other tests share the cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lake")
    write_gold(root, DATASET, [SPIKE_FILES[day] for day in DAYS], window=WINDOW)
    return root


@pytest.fixture(scope="module")
def arrays(lake: Path, tmp_path_factory: pytest.TempPathFactory) -> StepArrays:
    return load_gold(str(lake), DATASET, tmp_path_factory.mktemp("cache"))


@dataclass(frozen=True)
class Trained:
    metrics: dict[str, Any]
    epochs_run: int


def _windows(arrays: StepArrays, split: str) -> WindowDataset:
    return WindowDataset.from_arrays(arrays, select_targets(arrays, WINDOW, splits=[split]), WINDOW)


def _train_and_test(arrays: StepArrays, architecture: str) -> Trained:
    config = default_config(
        architecture,  # type: ignore[arg-type]
        channels=arrays.info.channels,
        window=WINDOW,
        classes=arrays.info.classes,
    )
    result = train(
        build_decoder(config, seed=SEED),
        _windows(arrays, "train"),
        _windows(arrays, "validation"),
        TrainConfig(epochs=8, patience=2, seed=SEED, progress=False),
    )
    last_day = int(np.max(arrays.session_day))
    metrics = evaluate_split(
        result.model, arrays, _windows(arrays, "test"), last_training_day=last_day
    )
    return Trained(metrics, result.metrics["epochs_run"])


@pytest.fixture(scope="module")
def linear(arrays: StepArrays) -> Trained:
    return _train_and_test(arrays, "linear")


@pytest.fixture(scope="module")
def gru(arrays: StepArrays) -> Trained:
    return _train_and_test(arrays, "gru")


def test_gold_dataset_layout(arrays: StepArrays) -> None:
    assert arrays.info.subjects == [SUBJECT]
    assert arrays.info.channels == {SUBJECT: 96}
    assert len(arrays.info.sessions) == 9
    assert arrays.info.trial_classes == [f"target_{number}" for number in range(1, 9)]
    assert {int(code) for code in np.unique(arrays.split)} == {0, 1, 2}


# Measured with seed 0 on 118 test trials: linear trial accuracy 0.661 and balanced accuracy
# 0.681 over 10 step classes; GRU 0.814 and 0.717. Chance is 1/8 for trials, 1/10 for steps.


def test_linear_decoder_well_above_chance(linear: Trained) -> None:
    assert linear.metrics["trials"] == 118
    assert linear.metrics["trial_accuracy"] > 0.60
    assert linear.metrics["balanced_accuracy"] > 0.62


def test_gru_decoder_well_above_chance(gru: Trained) -> None:
    assert gru.metrics["trial_accuracy"] > 0.75
    assert gru.metrics["balanced_accuracy"] > 0.66


def test_gru_not_worse_than_linear(linear: Trained, gru: Trained) -> None:
    assert gru.metrics["trial_accuracy"] >= linear.metrics["trial_accuracy"]
    assert gru.metrics["balanced_accuracy"] >= linear.metrics["balanced_accuracy"] - 0.01


def test_metrics_report_classes_and_days(gru: Trained, arrays: StepArrays) -> None:
    metrics = gru.metrics
    assert set(metrics["f1"]) == set(arrays.info.classes)
    assert np.asarray(metrics["confusion_matrix"]).shape == (10, 10)
    # test sessions are parts of the training days, so every day is 0 or more days back
    by_days = metrics["by_days_since_training"]["trials"]
    assert set(by_days) == {-3, -2, 0}
    assert sum(entry["samples"] for entry in by_days.values()) == metrics["trials"]


def test_train_command_exports_model(
    lake: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BCRATOS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BCRATOS_LAKE__URI", str(lake))
    runner = CliRunner()

    trained = runner.invoke(
        app, ["train", "--dataset", DATASET, "--model", "linear", "--epochs", "2", "--seed", "1"]
    )
    assert trained.exit_code == 0, trained.output
    (directory,) = (tmp_path / "models").iterdir()
    config = json.loads((directory / "config.json").read_text())
    model, _ = load_model(directory)
    scored = runner.invoke(app, ["evaluate", str(directory), "--dataset", DATASET])

    assert "trial accuracy" in trained.output
    assert sorted(path.name for path in directory.iterdir()) == [
        "config.json",
        "model.safetensors",
        "reference.json",
    ]
    reference = json.loads((directory / "reference.json").read_text())
    assert len(reference["mean_rate_hz"]) == 96
    assert reference["steps"] > 0
    assert 0.0 < sum(reference["mean_rate_hz"]) / 96 < 500.0  # Hz, plausible cortical rates
    assert config["model_version"] == directory.name
    assert config["channels"] == {SUBJECT: 96}
    assert (config["window"], config["step_ms"]) == (WINDOW, 50)
    assert config["normalization"]["subjects"][SUBJECT]["mean"][:2] == pytest.approx(
        json.loads((lake / "gold" / "manifests" / f"{DATASET}.json").read_text())["normalization"][
            "subjects"
        ][SUBJECT]["mean"][:2]
    )
    assert config["manifest_hash"].startswith("sha256:")
    assert 0.0 < config["metrics"]["balanced_accuracy"] <= 1.0
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())
    assert model.config.architecture == "linear"
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.output)["balanced_accuracy"] == pytest.approx(
        config["metrics"]["balanced_accuracy"]
    )


def test_train_command_rejects_unknown_target(
    lake: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BCRATOS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BCRATOS_LAKE__URI", str(lake))
    result = CliRunner().invoke(app, ["train", "--dataset", DATASET, "--target", "nobody"])
    assert result.exit_code == 1
    assert "target 'nobody'" in result.output


# ---------------------------------------------------------------------------------------------
# Next-day protocol


@pytest.fixture(scope="module")
def five_days() -> Any:
    return days_from_recordings(SPIKE_FILES[:5])


def test_recording_days_in_date_order(five_days: Any) -> None:
    assert [day.day for day in five_days.days] == [0, 1, 2, 3, 6]
    assert [day.targets.size for day in five_days.days] == [192, 213, 39, 186, 217]
    assert five_days.days[0].windows.shape == (192, WINDOW, 96)
    # every rewarded trial of these days has a go cue (2012-08-24 has none)
    assert [day.fallback_trials for day in five_days.days] == [0, 0, 0, 0, 0]


def test_gold_trials_match_recording_trials(arrays: StepArrays, five_days: Any) -> None:
    from_gold = days_from_arrays(arrays)
    first_gold, first_file = from_gold.days[0], five_days.days[0]

    # Cutting a day into three sessions loses the trials that cross a cut.
    assert first_file.targets.size - 3 <= first_gold.targets.size <= first_file.targets.size
    assert from_gold.classes == five_days.classes
    gold_windows = {window.tobytes() for window in first_gold.windows}
    file_windows = {window.tobytes() for window in first_file.windows}
    assert gold_windows <= file_windows


def test_next_day_protocol_on_recordings(five_days: Any) -> None:
    result = run_next_day(five_days, ["lda", "gru"], epochs=20, seed=SEED)
    mean = result.as_dict()["mean"]

    assert [day.name for day in result.days] == ["2012-07-21", "2012-07-24"]
    assert [day.days_since_training for day in result.days] == [1, 3]
    # Measured with seed 0 (mean of the two test days): lda supervised 0.709, pooled 0.480,
    # z-scored 0.725; gru supervised 0.862, pooled 0.657, z-scored 0.800, read-in aligned 0.781.
    assert mean["lda"]["supervised"] == pytest.approx(REFERENCE["supervised"], abs=0.1)
    assert mean["lda"]["zscore"] > mean["lda"]["pooled"] + 0.15
    assert mean["gru"]["supervised"] > 0.80
    assert mean["gru"]["zscore"] > mean["gru"]["pooled"] + 0.05
    assert mean["gru"]["read_in"] > mean["gru"]["pooled"] + 0.05
    assert mean["gru"]["zscore"] > mean["lda"]["zscore"]


def test_evaluate_command_prints_protocol_table(tmp_path: Path) -> None:
    arguments = ["evaluate", "--protocol", "next-day", "--decoders", "lda", "--per-day"]
    for path in SPIKE_FILES[:4]:
        arguments += ["--recordings", str(path)]
    arguments += ["--json", str(tmp_path / "result.json")]

    result = CliRunner().invoke(app, arguments)

    assert result.exit_code == 0, result.output
    assert "1 test day (2012-07-21 to 2012-07-21)" in result.output
    assert "label-free: per-day z-scoring" in result.output
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["mean"]["lda"]["supervised"] == pytest.approx(0.731, abs=0.001)


def test_evaluate_command_needs_one_source() -> None:
    result = CliRunner().invoke(app, ["evaluate", "--protocol", "next-day"])
    assert result.exit_code == 1
    assert "either a dataset name or recording files" in result.output
