"""Retrain trigger rules of the monitors, apart from Kafka and the lake.

- **volume**: class_label behaviour events per target (see ``monitors.volume_targets``) whose
  Kafka timestamp is after the target's last retrain job. At ``monitors.volume_threshold``
  events a request is due and the count starts again from zero.
- **drift**: per-channel mean spike rates of each subject over tumbling windows of
  ``monitors.drift_min_bins`` bins, compared with the reference of the model the subject runs
  (see `TriggerState.reference_for`). The score is the mean over channels of
  ``|rate - reference mean| / (reference spread + 1 Hz)``, where the spread is the standard
  deviation of one-minute mean rates in the training data (``window_sd_hz``, 0 when unknown).
  So a channel counts as far as it moved, in units of how much it varied across the days the
  model was trained on. A window at or above ``monitors.drift_threshold``
  makes a request unless the subject had one within ``monitors.drift_cooldown_s``.
- **schedule**: every ``monitors.schedule_interval_s`` seconds after the target's last retrain
  job, a request for each of ``monitors.schedule_targets``.

Volume counts live in a mapping that the faust app replaces with a table whose changelog
survives restarts. Each count stores the last offset it counted per partition, so an event
read again after a restart is not counted twice, and a volume request stays in the count as
``pending`` until the app has delivered it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

from bcratos.config import MonitorSettings

logger = logging.getLogger(__name__)

GLOBAL_TARGET: Final = "global"
RATE_FLOOR_HZ: Final = 1.0
"""Added to the reference spread in the drift score, so that channels that never varied in the
training data, such as silent ones, do not dominate it."""
_DTYPES: Final = {"uint8": "<u1", "uint16": "<u2", "int16": "<i2", "int32": "<i4"}

Reason = Literal["volume", "drift", "schedule"]
RateArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class ModelReference:
    """The ``reference.json`` of one target's current model."""

    target: str
    model_version: str
    decided_s: float
    """Time the validation gate announced the model, in Unix seconds."""
    mean_rate_hz: RateArray | None
    """Mean rate per channel over the whole training split, or None when the file has none."""
    subjects: Mapping[str, RateArray] = field(default_factory=dict)
    """Mean rate per channel of each subject pseudonym in the training split."""
    spread_hz: RateArray | None = None
    """Standard deviation of one-minute mean rates per channel, beside ``mean_rate_hz``."""
    subject_spreads: Mapping[str, RateArray] = field(default_factory=dict)
    """The same spread for each subject pseudonym, beside ``subjects``."""


@dataclass(frozen=True)
class SubjectReference:
    """Reference rates that one subject's spike rates are compared with."""

    target: str
    """Target of the model that the reference belongs to: the subject itself or ``global``."""
    model_version: str
    since_s: float
    """Spikes with an older Kafka timestamp predate the model and are not compared."""
    mean_rate_hz: RateArray  # (channels,)
    spread_hz: RateArray | None = None  # (channels,); None when the reference has none

    @property
    def key(self) -> tuple[str, str]:
        return (self.target, self.model_version)


@dataclass(frozen=True)
class RetrainTrigger:
    """Retrain request of one trigger, which the app encodes as a RetrainRequest event."""

    request_id: str
    target: str
    reason: Reason
    evidence: dict[str, float]
    detail: str
    requested_s: float

    def to_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "target": self.target,
            "reason": self.reason,
            "evidence": dict(self.evidence),
            "detail": self.detail,
            "requested_s": self.requested_s,
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> RetrainTrigger:
        return cls(
            request_id=str(value["request_id"]),
            target=str(value["target"]),
            reason=value["reason"],
            evidence={str(name): float(number) for name, number in value["evidence"].items()},
            detail=str(value["detail"]),
            requested_s=float(value["requested_s"]),
        )


@dataclass(frozen=True)
class VolumeCount:
    """Labelled events of one target since its last retrain job or request."""

    count: int = 0
    since_s: float = 0.0
    """Creation time of the target's last retrain job. Older events do not count."""
    offsets: Mapping[str, int] = field(default_factory=dict)
    """Offset of the last counted event, by partition of the behaviour topic."""
    pending: RetrainTrigger | None = None
    """Volume request made from this count and not yet delivered."""

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "since_s": self.since_s,
            "offsets": dict(self.offsets),
            "pending": None if self.pending is None else self.pending.to_json(),
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> VolumeCount:
        pending = value.get("pending")
        return cls(
            count=int(value["count"]),
            since_s=float(value["since_s"]),
            offsets={str(key): int(offset) for key, offset in value["offsets"].items()},
            pending=None if pending is None else RetrainTrigger.from_json(pending),
        )


@dataclass
class _DriftWindow:
    reference: SubjectReference
    counts: RateArray  # (channels,) spike counts summed over the window's bins
    seconds: float = 0.0
    bins: int = 0


@dataclass(frozen=True)
class _DriftScore:
    reference: SubjectReference
    score: float
    bins: int


class TriggerState:
    """Counters and windows of the three triggers; ``*_s`` times are Unix seconds.

    ``volume`` maps a target to `VolumeCount.to_json` values. Every change assigns a new value,
    so that a faust table sends it to its changelog.
    """

    def __init__(
        self,
        settings: MonitorSettings,
        *,
        volume: MutableMapping[str, Any] | None = None,
        started_s: float = 0.0,
    ) -> None:
        self.settings = settings
        self.volume: MutableMapping[str, Any] = {} if volume is None else volume
        self.started_s = started_s
        self.last_job_s: dict[str, float] = {}
        """Creation time of each target's last retrain job that did not fail."""
        self.models: dict[str, ModelReference] = {}
        """Reference of each target's current model."""
        self.last_drift_request_s: dict[str, float] = {}
        """Time of each subject's last drift request."""
        self._last_schedule_s: dict[str, float] = {}
        self._windows: dict[str, _DriftWindow] = {}
        self._scores: dict[str, _DriftScore] = {}
        self._channel_warnings: set[tuple[str, str, str]] = set()

    # -- volume ---------------------------------------------------------------------------------

    def volume_targets(self, subject: str) -> list[str]:
        """Return the targets whose volume count an event of ``subject`` adds to."""
        mode = self.settings.volume_targets
        if mode == "global":
            return [GLOBAL_TARGET]
        if mode == "subjects":
            return [subject]
        return [subject, GLOBAL_TARGET]

    def volume_count(self, target: str) -> VolumeCount:
        value = self.volume.get(target)
        return VolumeCount() if value is None else VolumeCount.from_json(value)

    def add_behavior(
        self, record: Mapping[str, Any], *, timestamp_s: float, partition: int, offset: int
    ) -> None:
        """Count a class_label event once per target, unless it predates the target's last job
        or its offset was counted before."""
        if record["kind"] != "class_label":
            return
        for target in self.volume_targets(record["subject_pseudonym"]):
            current = self.volume_count(target)
            if offset <= current.offsets.get(str(partition), -1):
                continue  # read again after a restart: counted already
            since_s = max(current.since_s, self.last_job_s.get(target, 0.0))
            if timestamp_s <= since_s:
                continue
            offsets = {**current.offsets, str(partition): offset}
            counted = replace(current, count=current.count + 1, offsets=offsets)
            self.volume[target] = counted.to_json()

    def set_last_jobs(self, last_job_s: Mapping[str, float]) -> None:
        """Replace the last job times. A count older than its target's new job starts again."""
        self.last_job_s = dict(last_job_s)
        for target in list(self.volume):
            job_s = self.last_job_s.get(target)
            current = self.volume_count(target)
            if job_s is not None and job_s > current.since_s:
                # NOTE: a count keeps no event times, so this also drops events counted here
                # that are newer than the job. The target's next job covers them.
                self.volume[target] = replace(current, count=0, since_s=job_s).to_json()

    def undelivered(self) -> list[RetrainTrigger]:
        """Return the volume requests that were made but not delivered yet."""
        pending = (self.volume_count(target).pending for target in list(self.volume))
        return [trigger for trigger in pending if trigger is not None]

    def mark_delivered(self, trigger: RetrainTrigger) -> None:
        """Record that ``trigger`` reached the retrain topic."""
        if trigger.reason != "volume":
            return
        current = self.volume_count(trigger.target)
        if current.pending is not None and current.pending.request_id == trigger.request_id:
            self.volume[trigger.target] = replace(current, pending=None).to_json()

    # -- drift ----------------------------------------------------------------------------------

    def set_references(self, models: Mapping[str, ModelReference]) -> None:
        """Replace the model references. A subject whose reference changed starts a new
        window, so that drift is measured on data since the new model only."""
        self.models = dict(models)
        for subject, window in list(self._windows.items()):
            reference = self.reference_for(subject)
            if reference is None or reference.key != window.reference.key:
                logger.info(
                    "drift reference of subject %s changed from model %s; its window starts again",
                    subject,
                    window.reference.model_version,
                )
                del self._windows[subject]
        for subject, result in list(self._scores.items()):
            reference = self.reference_for(subject)
            if reference is None or reference.key != result.reference.key:
                del self._scores[subject]  # scored against a model that is no longer current

    def reference_for(self, subject: str) -> SubjectReference | None:
        """Return the reference of ``subject``: that of its own current model when the model
        has one, else its entry in the current ``global`` model."""
        own = self.models.get(subject)
        if own is not None:
            rates: RateArray | None
            if subject in own.subjects:
                rates, spread = own.subjects[subject], own.subject_spreads.get(subject)
            else:
                rates, spread = own.mean_rate_hz, own.spread_hz
            if rates is not None:
                return SubjectReference(
                    subject, own.model_version, own.decided_s, rates, _same_shape(spread, rates)
                )
        shared = self.models.get(GLOBAL_TARGET)
        if shared is not None and subject in shared.subjects:
            rates = shared.subjects[subject]
            spread = _same_shape(shared.subject_spreads.get(subject), rates)
            return SubjectReference(
                GLOBAL_TARGET, shared.model_version, shared.decided_s, rates, spread
            )
        return None

    def add_spikes(self, record: Mapping[str, Any], *, timestamp_s: float) -> None:
        """Add a spike frame to its subject's window, and score the window once it is full."""
        subject = record["subject_pseudonym"]
        reference = self.reference_for(subject)
        if reference is None or timestamp_s < reference.since_s:
            return
        n_bins, n_channels = record["n_bins"], record["n_channels"]
        if n_channels != reference.mean_rate_hz.shape[0]:
            self._warn_channels(subject, reference, n_channels)
            return
        counts = np.frombuffer(record["counts"], dtype=_DTYPES[record["dtype"]])
        counts = counts.reshape(n_bins, n_channels)  # (bins, channels)
        window = self._windows.get(subject)
        if window is None or window.reference.key != reference.key:
            window = self._windows[subject] = _DriftWindow(reference, np.zeros(n_channels))
        window.counts += counts.sum(axis=0)  # (channels,)
        window.seconds += n_bins * record["bin_ms"] / 1000.0
        window.bins += n_bins
        if window.bins >= self.settings.drift_min_bins:
            del self._windows[subject]
            if window.seconds > 0:
                self._scores[subject] = _DriftScore(reference, _score(window), window.bins)

    def _warn_channels(self, subject: str, reference: SubjectReference, n_channels: int) -> None:
        warning_key = (subject, *reference.key)
        if warning_key in self._channel_warnings:
            return
        self._channel_warnings.add(warning_key)
        logger.warning(
            "drift of subject %s not checked: its frames have %d channels, but the reference "
            "of model %s (target %s) has %d",
            subject,
            n_channels,
            reference.model_version,
            reference.target,
            reference.mean_rate_hz.shape[0],
        )

    # -- requests -------------------------------------------------------------------------------

    def due_requests(self, now_s: float) -> list[RetrainTrigger]:
        """Return the requests of every trigger that fired since the last call, and reset them.

        A volume request is also stored as its count's ``pending`` request, in the same change
        that sets the count to zero.
        """
        return [
            *self._volume_requests(now_s),
            *self._drift_requests(now_s),
            *self._schedule_requests(now_s),
        ]

    def _volume_requests(self, now_s: float) -> list[RetrainTrigger]:
        requests = []
        for target in list(self.volume):
            current = self.volume_count(target)
            if current.pending is not None or current.count < self.settings.volume_threshold:
                continue
            trigger = _trigger(
                target,
                "volume",
                {"new_labelled_events": float(current.count)},
                f"{current.count} new labelled behaviour events since the last retrain job",
                now_s,
            )
            self.volume[target] = replace(current, count=0, pending=trigger).to_json()
            requests.append(trigger)
        return requests

    def _drift_requests(self, now_s: float) -> list[RetrainTrigger]:
        requests = []
        scores, self._scores = self._scores, {}
        for subject, result in scores.items():
            if result.score < self.settings.drift_threshold:
                continue
            last_s = self.last_drift_request_s.get(subject)
            if last_s is not None and now_s - last_s < self.settings.drift_cooldown_s:
                continue
            reference = result.reference
            evidence = {
                "drift_score": result.score,
                "bins": float(result.bins),
                "channels": float(reference.mean_rate_hz.shape[0]),
            }
            detail = (
                f"spike-rate drift of subject {subject} against model "
                f"{reference.model_version} of target {reference.target}"
            )
            requests.append(_trigger(reference.target, "drift", evidence, detail, now_s))
            self.last_drift_request_s[subject] = now_s
        return requests

    def _schedule_requests(self, now_s: float) -> list[RetrainTrigger]:
        interval_s = self.settings.schedule_interval_s
        if interval_s is None:
            return []
        requests = []
        for target in self.settings.schedule_targets:
            since_s = max(
                self.last_job_s.get(target, self.started_s),
                self._last_schedule_s.get(target, self.started_s),
            )
            if now_s - since_s >= interval_s:
                evidence = {"seconds_since_last_job": now_s - since_s}
                detail = f"scheduled every {interval_s:g} s"
                requests.append(_trigger(target, "schedule", evidence, detail, now_s))
                self._last_schedule_s[target] = now_s
        return requests


def _score(window: _DriftWindow) -> float:
    reference = window.reference.mean_rate_hz
    spread = window.reference.spread_hz
    scale = RATE_FLOOR_HZ + (0.0 if spread is None else spread)  # (channels,)
    mean_rate_hz = window.counts / window.seconds  # (channels,)
    return float(np.mean(np.abs(mean_rate_hz - reference) / scale))


def _same_shape(spread: RateArray | None, rates: RateArray) -> RateArray | None:
    # A spread that does not fit the rates is ignored rather than trusted.
    return spread if spread is not None and spread.shape == rates.shape else None


def _trigger(
    target: str, reason: Reason, evidence: dict[str, float], detail: str, now_s: float
) -> RetrainTrigger:
    return RetrainTrigger(uuid.uuid4().hex, target, reason, evidence, detail, now_s)
