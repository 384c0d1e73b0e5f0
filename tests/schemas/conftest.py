"""Sample records of every bcratos schema, shared by the schemas tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from schemas.counts import pack_counts

EVENT_TIME = datetime(2024, 5, 2, 9, 30, 15, 123456, tzinfo=UTC)
# 1.25 s before EVENT_TIME, matching t_session_us of the anonymized samples.
SESSION_START = EVENT_TIME - timedelta(microseconds=1_250_000)
BOARD_EVENTS = ("SpikeFrame", "BehaviorEvent", "EskinFrame", "DecoderOutput")


def board_fields(seq: int = 41) -> dict[str, Any]:
    """Return the fields common to every version of every board event, with identifying values.

    `session_start` is left out because the first versions of the board events lack it.
    """
    return {
        "board_id": "board-07",
        "subject_id": "P2",
        "session_id": "2024-05-02-am",
        "seq": seq,
        "event_time": EVENT_TIME,
        "metadata": {"file": "P2_2024-05-02_block3.ns5", "operator": "operator-3"},
    }


def raw_records() -> dict[str, dict[str, Any]]:
    """Return one valid record per contract record name, with every optional field set."""
    counts = np.arange(3 * 96, dtype=np.uint16).reshape(3, 96) % 7  # (n_bins, n_channels)
    return {
        "SpikeFrame": {
            **board_fields(),
            "session_start": SESSION_START,
            "bin_ms": 20,
            **pack_counts(counts),
            "channel_ids": [f"elec{i:03d}" for i in range(96)],
            "threshold_rms": -4.5,
        },
        "BehaviorEvent": {
            **board_fields(),
            "session_start": SESSION_START,
            "kind": "outcome",
            "trial_id": 17,
            "label": "reward",
            "value": 0.25,
        },
        "EskinFrame": {
            **board_fields(),
            "session_start": SESSION_START,
            "n_taxels": 4,
            "pressures": [0.0, 1.5, 12.25, 3.0],
            "pressure_unit": "kpa",
            "contact_centroid": [11.5, -2.25],
            "total_force_n": 2.5,
            "joint_positions": [0.5, 0.25, 1.0],
            "label": "mug",
        },
        "DecoderOutput": {
            **board_fields(),
            "session_start": SESSION_START,
            "step_index": 1200,
            "step_ms": 50,
            "classes": ["rest", "power_grip", "precision_grip", "release"],
            "probabilities": [0.125, 0.75, 0.0625, 0.0625],
            "command": "power_grip",
            "model_version": "P2-2024-05-01.3",
        },
        "ModelAnnouncement": {
            "target": "subj-5f1c2a",
            "model_version": "subj-5f1c2a-2024-05-02.1",
            "artifact_type": "decoder",
            "artifact_uri": "file:///var/lib/bcratos/models/subj-5f1c2a/2024-05-02.1",
            "sha256": "ab" * 32,
            "signature": bytes(range(64)),
            "key_id": "training-2024",
            "created_at": EVENT_TIME,
            "metrics": {"balanced_accuracy": 0.8125},
            "config": '{"hidden": 256}',
        },
        "RetrainRequest": {
            "request_id": "req-0001",
            "target": "global",
            "reason": "drift",
            "evidence": {"drift_score": 3.5},
            "detail": "firing rates moved on 31 channels",
            "requested_at": EVENT_TIME,
            "requested_by": "streams.drift",
        },
        "JobStatus": {
            "job_id": "job-0001",
            "target": "global",
            "state": "running",
            "stage": "train",
            "backend": "slurm",
            "backend_job_id": "123456",
            "message": "",
            "time": EVENT_TIME,
        },
    }


def anonymized(record: dict[str, Any]) -> dict[str, Any]:
    """Return `record` as its anonymized counterpart: pseudonyms and session-relative time."""
    identifying = {"board_id", "subject_id", "session_id", "event_time", "session_start"}
    return {
        "subject_pseudonym": "5f1c2a9be04d17c3a8e2",
        "board_pseudonym": "0d93be41c6a2f77e1b58",
        "session_pseudonym": "a1b2c3d4e5f60718293a",
        "key_id": "pseudonym-key-2024",
        "session_day": 19845,
        "t_session_us": 1_250_000,
        **{field: value for field, value in record.items() if field not in identifying},
        "metadata": {"block": "3"},
    }


def sample_records() -> dict[str, dict[str, Any]]:
    """Return one valid record per registered record name, raw and anonymized."""
    raw = raw_records()
    return {**raw, **{f"Anon{name}": anonymized(raw[name]) for name in BOARD_EVENTS}}


@pytest.fixture
def records() -> dict[str, dict[str, Any]]:
    """One fresh valid record per record name."""
    return sample_records()


@pytest.fixture
def board() -> dict[str, Any]:
    """Fresh values of the fields common to all board events."""
    return board_fields()
