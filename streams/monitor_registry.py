"""Lake tables of the retrain monitors: model references and the last retrain jobs.

The Delta tables ``registry/models`` (written by the validation gate) and
``registry/retrain_jobs`` (written by the orchestrator) are read with delta-rs, never through
the code of the stages that write them. `RegistryWatch` reads a table again only when its
Delta version changed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import numpy as np
from deltalake import DeltaTable

from bcratos.config import Settings
from streams.triggers import ModelReference, RateArray

logger = logging.getLogger(__name__)

MODELS_TABLE: Final = "registry/models"
RETRAIN_JOBS_TABLE: Final = "registry/retrain_jobs"
REFERENCE_FILE: Final = "reference.json"


@dataclass(frozen=True)
class RegistryUpdate:
    """Contents of the tables whose Delta version changed since the last poll, or None."""

    references: dict[str, ModelReference] | None = None
    last_jobs: dict[str, float] | None = None


class RegistryWatch:
    """Reader of the two registry tables that reads a table again when its Delta version
    changes."""

    def __init__(self, settings: Settings) -> None:
        root = settings.lake_uri.rstrip("/")
        self._models_uri = f"{root}/{MODELS_TABLE}"
        self._jobs_uri = f"{root}/{RETRAIN_JOBS_TABLE}"
        self._versions: dict[str, int | None] = {}

    def poll(self) -> RegistryUpdate:
        """Read each table whose version changed since the last poll. The first poll reads both.

        Raises ``deltalake.exceptions.DeltaError`` or ``OSError`` when a table cannot be read.
        The version is recorded only after a successful read, so a failed read is tried again.
        """
        update = RegistryUpdate()
        models_version = _version(self._models_uri)
        if self._changed(self._models_uri, models_version):
            update = RegistryUpdate(references=load_references(self._models_uri))
            self._versions[self._models_uri] = models_version
        jobs_version = _version(self._jobs_uri)
        if self._changed(self._jobs_uri, jobs_version):
            update = RegistryUpdate(update.references, last_jobs=load_last_jobs(self._jobs_uri))
            self._versions[self._jobs_uri] = jobs_version
        return update

    def _changed(self, uri: str, version: int | None) -> bool:
        return uri not in self._versions or self._versions[uri] != version


def _version(uri: str) -> int | None:
    if not DeltaTable.is_deltatable(uri):
        return None
    return DeltaTable(uri).version()


def load_last_jobs(uri: str) -> dict[str, float]:
    """Return the creation time (Unix seconds) of each target's newest retrain job that did not
    fail, from the Delta table at ``uri``."""
    if not DeltaTable.is_deltatable(uri):
        return {}
    rows = DeltaTable(uri).to_pyarrow_table(columns=["target", "state", "created_at"]).to_pylist()
    last: dict[str, float] = {}
    for row in rows:
        if row["state"] != "failed":
            created_s = row["created_at"].timestamp()
            last[row["target"]] = max(created_s, last.get(row["target"], 0.0))
    return last


def load_references(uri: str) -> dict[str, ModelReference]:
    """Return the drift reference of each target's current model, for the models whose folder
    has a readable ``reference.json``.

    The current model of a target is its most recently decided row with decision
    ``announced`` in the Delta table at ``uri``.
    """
    if not DeltaTable.is_deltatable(uri):
        return {}
    columns = ["target", "model_version", "decided_at", "decision", "artifact_uri"]
    rows = DeltaTable(uri).to_pyarrow_table(columns=columns).to_pylist()
    current: dict[str, Mapping[str, Any]] = {}
    for row in sorted(rows, key=lambda row: row["decided_at"]):
        if row["decision"] == "announced":
            current[row["target"]] = row
    references: dict[str, ModelReference] = {}
    for target, row in current.items():
        reference = _read_reference(target, row)
        if reference is not None:
            references[target] = reference
    return references


def _read_reference(target: str, row: Mapping[str, Any]) -> ModelReference | None:
    parts = urlsplit(row["artifact_uri"])
    path = Path(unquote(parts.path)) / REFERENCE_FILE
    if parts.scheme != "file" or not path.is_file():
        logger.info(
            "no drift reference for model %s of target %s: %s not found",
            row["model_version"],
            target,
            path,
        )
        return None
    try:
        content = json.loads(path.read_text())
        top_level = content.get("mean_rate_hz")
        top_spread = content.get("window_sd_hz")
        entries = content.get("subjects", {}).items()
        subjects = {str(subject): _rates(entry["mean_rate_hz"]) for subject, entry in entries}
        spreads = {
            str(subject): _rates(entry["window_sd_hz"])
            for subject, entry in entries
            if entry.get("window_sd_hz") is not None
        }
        return ModelReference(
            target=target,
            model_version=row["model_version"],
            decided_s=row["decided_at"].timestamp(),
            mean_rate_hz=None if top_level is None else _rates(top_level),
            subjects=subjects,
            spread_hz=None if top_spread is None else _rates(top_spread),
            subject_spreads=spreads,
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        logger.warning(
            "skipping the invalid drift reference %s of model %s (target %s): %s; expected "
            '{"mean_rate_hz": [...], "subjects": {pseudonym: {"mean_rate_hz": [...]}}}',
            path,
            row["model_version"],
            target,
            exc,
        )
        return None


def _rates(values: Any) -> RateArray:
    rates = np.asarray(values, dtype=np.float64)
    if rates.ndim != 1:
        raise ValueError(f"rates have shape {rates.shape}, expected one value per channel")
    return rates
