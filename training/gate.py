"""The validation gate: a candidate decoder is announced only if it is at least as good.

The caller supplies `score(model_dir) -> float`, higher is better, such as balanced accuracy
on the test split of the candidate's dataset, the most recent held-out data. The gate scores
the candidate and the target's current model (`training.registry.current_model`) with that same
function, so both are measured on the same data, and passes the candidate when its score
matches or beats the current one. A target without a current model passes any candidate with a
finite score. `record_decision` writes the outcome and both scores to ``registry/models``.

>>> passed, reason = compare(0.81, 0.80, current_version="v2")
>>> passed
True
>>> reason
'candidate scores 0.8100, current model v2 scores 0.8000: the candidate matches or beats it'
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from schemas.artifacts import CONFIG_FILE, WEIGHTS_FILE, file_sha256
from training.errors import TrainingError
from training.registry import Decision, ModelEntry, current_model, record_model

if TYPE_CHECKING:
    from bcratos.config import Settings

logger = logging.getLogger(__name__)

Score = Callable[[Path], float]
"""Scores the artifact in a model directory on held-out data; higher is better."""


class GateError(TrainingError):
    """The gate cannot compare: the current model's artifact is gone or scores no number."""


@dataclass(frozen=True)
class GateDecision:
    """Outcome of the gate for one candidate."""

    target: str
    model_version: str
    decision: Decision
    reason: str
    candidate_score: float | None  # None when --force skipped scoring
    current_model_version: str | None  # model compared with; None for the target's first
    current_score: float | None

    @property
    def passed(self) -> bool:
        """True when the candidate may be announced."""
        return self.decision == "announced"


def compare(
    candidate_score: float, current_score: float, *, current_version: str | None = None
) -> tuple[bool, str]:
    """Return whether the candidate passes and why; a score that is not finite never passes."""
    current = f"current model {current_version}" if current_version else "current model"
    if not math.isfinite(candidate_score):
        return False, f"candidate score {candidate_score} is not a finite number"
    if candidate_score >= current_score:
        return True, (
            f"candidate scores {candidate_score:.4f}, {current} scores {current_score:.4f}: "
            "the candidate matches or beats it"
        )
    return False, (
        f"candidate scores {candidate_score:.4f}, {current} scores {current_score:.4f}: "
        "the candidate is worse"
    )


def decide(
    settings: Settings,
    candidate_dir: Path,
    *,
    target: str,
    model_version: str,
    score: Score | None,
    force: bool = False,
) -> GateDecision:
    """Score the candidate and the current model of `target`, and decide; nothing is written.

    With `force` the candidate is announced whatever its score; `score` may then be None to
    skip scoring. Raises `GateError` when the current model cannot be scored, unless `force`.
    """
    if score is None and not force:
        raise ValueError("the gate needs a score function unless force is set")
    current = current_model(settings, target)
    current_version = current.model_version if current is not None else None
    candidate_score = score(candidate_dir) if score is not None else None
    if current_version == model_version:
        # Announcing the current model again, such as after the models topic was recreated.
        return _log(
            GateDecision(
                target=target,
                model_version=model_version,
                decision="announced",
                reason=f"model {model_version} is already the current model of {target}",
                candidate_score=candidate_score,
                current_model_version=current_version,
                current_score=candidate_score,
            )
        )

    current_score = None
    if current is not None and score is not None:
        try:
            current_score = _score_current(current, score)
        except GateError:
            if not force:
                raise
            logger.warning(
                "current model %s of target %s cannot be scored; announcing %s anyway (forced)",
                current.model_version,
                target,
                model_version,
            )

    passed, reason = _judge(candidate_score, current_score, current_version)
    if force and not passed:
        passed, reason = True, f"forced by the operator: {reason}"
    return _log(
        GateDecision(
            target=target,
            model_version=model_version,
            decision="announced" if passed else "rejected",
            reason=reason,
            candidate_score=candidate_score,
            current_model_version=current_version,
            current_score=current_score,
        )
    )


def record_decision(
    settings: Settings,
    decision: GateDecision,
    candidate_dir: Path,
    *,
    key_id: str | None = None,
    decided_at: datetime | None = None,
) -> ModelEntry:
    """Write the decision, both scores and the candidate's export facts to the registry."""
    config = read_decoder_config(candidate_dir)
    metrics = config.get("metrics")
    entry = ModelEntry(
        target=decision.target,
        model_version=decision.model_version,
        created_at=export_time(config, candidate_dir),
        decided_at=decided_at if decided_at is not None else datetime.now(UTC),
        artifact_uri=candidate_dir.resolve().as_uri(),
        weights_sha256=file_sha256(candidate_dir / WEIGHTS_FILE),
        decision=decision.decision,
        reason=decision.reason,
        dataset=_optional_text(config.get("dataset")),
        manifest_hash=_optional_text(config.get("manifest_hash")),
        architecture=_optional_text(config.get("architecture")),
        key_id=key_id,
        candidate_score=decision.candidate_score,
        current_model_version=decision.current_model_version,
        current_score=decision.current_score,
        metrics=metrics if isinstance(metrics, dict) else {},
    )
    record_model(settings, entry)
    return entry


def run_gate(
    settings: Settings,
    candidate_dir: Path,
    *,
    target: str,
    model_version: str,
    score: Score | None,
    force: bool = False,
) -> GateDecision:
    """Decide on a candidate as `decide` does and record the decision in the registry."""
    decision = decide(
        settings,
        candidate_dir,
        target=target,
        model_version=model_version,
        score=score,
        force=force,
    )
    record_decision(settings, decision, candidate_dir)
    return decision


def model_dir_of(entry: ModelEntry) -> Path:
    """Return the local directory of a registry entry's ``file://`` artifact URI."""
    parts = urlsplit(entry.artifact_uri)
    if parts.scheme != "file":
        raise GateError(
            f"current model {entry.model_version} of target {entry.target} is at "
            f"{entry.artifact_uri}; the gate scores local file:// artifacts only"
        )
    return Path(unquote(parts.path))


def _log(decision: GateDecision) -> GateDecision:
    logger.info(
        "gate %s model %s for target %s: %s",
        decision.decision,
        decision.model_version,
        decision.target,
        decision.reason,
    )
    return decision


def _score_current(current: ModelEntry, score: Score) -> float:
    directory = model_dir_of(current)
    if not (directory / WEIGHTS_FILE).is_file():
        raise GateError(
            f"current model {current.model_version} of target {current.target} has no "
            f"{WEIGHTS_FILE} in {directory}, so the candidate cannot be compared with it; "
            f"restore the artifact or announce with --force"
        )
    value = score(directory)
    if not math.isfinite(value):
        raise GateError(
            f"current model {current.model_version} of target {current.target} scores "
            f"{value}, expected a finite number; check the score function and its data"
        )
    return value


def _judge(
    candidate_score: float | None, current_score: float | None, current_version: str | None
) -> tuple[bool, str]:
    if candidate_score is None:
        return False, "gate skipped: the candidate was not scored"
    if current_score is None:
        if not math.isfinite(candidate_score):
            return False, f"candidate score {candidate_score} is not a finite number"
        if current_version is None:
            return True, f"candidate scores {candidate_score:.4f}; the target has no current model"
        return False, f"current model {current_version} was not scored"
    return compare(candidate_score, current_score, current_version=current_version)


def read_decoder_config(directory: Path) -> dict[str, Any]:
    """Read an artifact's ``config.json``, raising `GateError` when it is not a JSON object."""
    path = directory / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise GateError(f"cannot read the decoder config {path}: {exc}") from exc
    if not isinstance(config, dict):
        raise GateError(f"{path} must hold a JSON object, found {type(config).__name__}")
    return config


def export_time(config: dict[str, Any], directory: Path) -> datetime:
    """Return the export time from ``trained_at`` in config.json, else the weights' mtime."""
    stamp = config.get("trained_at")
    if isinstance(stamp, str):
        try:
            parsed = datetime.fromisoformat(stamp)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            return parsed.astimezone(UTC)
    return datetime.fromtimestamp((directory / WEIGHTS_FILE).stat().st_mtime, UTC)


def _optional_text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        return str(value["name"])
    return json.dumps(value, sort_keys=True)
