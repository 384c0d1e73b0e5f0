"""Dataset and decoder figures for the report: class balance, training runs, evaluations.

Sources are JSON files: the gold manifests (``<lake>/gold/manifests/<name>.json``), the
``config.json`` of every exported model (``<data_dir>/models/<version>/``) and the result file
of ``bcratos evaluate --protocol next-day`` (``<data_dir>/evaluations/next-day.json``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pyarrow.fs as pafs

from jobs.catalog import GOLD_MANIFESTS, Lake
from jobs.report.sections import Missing

logger = logging.getLogger(__name__)

PREPARE: Final = "bcratos jobs prepare --name NAME"
TRAIN: Final = "bcratos train --dataset NAME"
NEXT_DAY: Final = "bcratos evaluate --protocol next-day --dataset NAME"
SPLIT_ORDER: Final = ("train", "validation", "test")


@dataclass(frozen=True)
class ClassBalance:
    """Rows per split and class of one gold dataset, from its manifest."""

    name: str
    classes: list[str]  # in label_index order
    rows: dict[str, dict[str, int]]  # split -> class -> rows, excluded rows included
    excluded: int  # rows of excluded trials, all splits
    created_at: str | None


@dataclass(frozen=True)
class ModelRun:
    """Training history and test metrics of one exported model, from its config.json."""

    version: str
    architecture: str
    dataset: str | None
    target: str | None
    trained_at: str | None
    classes: list[str]
    history: list[dict[str, Any]]  # one record per epoch
    confusion: list[list[int]] | None  # rows: true class, columns: predicted class
    balanced_accuracy: float | None
    trial_accuracy: float | None
    trials_by_days: dict[int, tuple[int, float]] = field(default_factory=dict)
    """days since the last training day -> (test trials, trial accuracy)."""


@dataclass(frozen=True)
class EvaluationDay:
    """One test day of a next-day evaluation."""

    name: str
    days_since_training: int
    trials: int
    accuracy: dict[str, dict[str, float]]  # decoder -> setting -> trial accuracy


@dataclass(frozen=True)
class NextDayEvaluation:
    """A saved next-day evaluation."""

    path: Path
    source: str
    classes: list[str]
    days: list[EvaluationDay]


# ---------------------------------------------------------------------------------------------
# Manifests


def load_balances(lake: Lake) -> list[ClassBalance] | Missing:
    """Read the class balance of every gold dataset's manifest, sorted by name."""
    fs, root = lake.filesystem()
    folder = f"{root.rstrip('/')}/{GOLD_MANIFESTS}"
    infos = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    balances = []
    for info in sorted(infos, key=lambda item: item.base_name):
        if info.type != pafs.FileType.File or not info.base_name.endswith(".json"):
            continue
        with fs.open_input_stream(info.path) as stream:
            manifest = json.loads(stream.read().decode("utf-8"))
        balances.append(balance_of(manifest, default_name=info.base_name[: -len(".json")]))
    if not balances:
        return Missing(f"no gold manifests under {lake.uri}/{GOLD_MANIFESTS}", PREPARE)
    return balances


def balance_of(manifest: dict[str, Any], *, default_name: str) -> ClassBalance:
    """Return the class balance that a manifest records."""
    rows_info = manifest.get("rows") or {}
    by_split = rows_info.get("by_split_and_class") or {}
    classes = list(manifest.get("classes") or [])
    for counts in by_split.values():
        classes += [name for name in counts if name not in classes]
    ordered = sorted(by_split, key=_split_key)
    rows = {
        split: {name: int(by_split[split].get(name, 0)) for name in classes} for split in ordered
    }
    excluded = sum(int(value) for value in (rows_info.get("excluded_by_split") or {}).values())
    return ClassBalance(
        name=str(manifest.get("name", default_name)),
        classes=classes,
        rows=rows,
        excluded=excluded,
        created_at=manifest.get("created_at"),
    )


def _split_key(split: str) -> tuple[int, str]:
    position = SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER)
    return position, split


# ---------------------------------------------------------------------------------------------
# Exported models


def load_models(models_dir: Path, *, limit: int | None = None) -> list[ModelRun] | Missing:
    """Read the exported models' config.json files (the newest `limit`), oldest first."""
    configs = []
    for path in sorted(models_dir.glob("*/config.json")):
        try:
            configs.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            logger.warning("skipped model config %s: %s", path, exc)
    if not configs:
        return Missing(f"no exported models under {models_dir}", TRAIN)
    configs.sort(key=lambda config: (str(config.get("trained_at", "")), config["model_version"]))
    if limit is not None:
        configs = configs[-limit:]
    return [model_run(config) for config in configs]


def model_run(config: dict[str, Any]) -> ModelRun:
    """Return what the report shows of one model's config.json."""
    metrics = config.get("metrics") or {}
    by_days = (metrics.get("by_days_since_training") or {}).get("trials") or {}
    return ModelRun(
        version=str(config.get("model_version", "unknown")),
        architecture=str(config.get("architecture", "unknown")),
        dataset=config.get("dataset"),
        target=config.get("target"),
        trained_at=config.get("trained_at"),
        classes=list(config.get("classes") or []),
        history=list(metrics.get("history") or []),
        confusion=metrics.get("confusion_matrix"),
        balanced_accuracy=metrics.get("balanced_accuracy"),
        trial_accuracy=metrics.get("trial_accuracy"),
        trials_by_days={
            int(days): (int(entry["samples"]), float(entry["accuracy"]))
            for days, entry in by_days.items()
        },
    )


# ---------------------------------------------------------------------------------------------
# Next-day evaluation


def load_next_day(path: Path) -> NextDayEvaluation | Missing:
    """Read the JSON file that ``bcratos evaluate --protocol next-day`` wrote."""
    if not path.exists():
        return Missing(f"no next-day evaluation at {path}", NEXT_DAY)
    saved = json.loads(path.read_text())
    days = [
        EvaluationDay(
            name=str(day["day"]),
            days_since_training=int(day["days_since_training"]),
            trials=int(day["trials"]),
            accuracy=day["accuracy"],
        )
        for day in saved.get("days", [])
    ]
    if not days:
        return Missing(f"the next-day evaluation at {path} has no test days", NEXT_DAY)
    return NextDayEvaluation(
        path=path,
        source=str(saved.get("source", "unknown source")),
        classes=list(saved.get("classes") or []),
        days=days,
    )
