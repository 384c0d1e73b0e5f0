"""Raw board events with realistic identifiers, shared by the streams tests.

Imported by the test modules of this folder, which pytest puts on `sys.path`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np

from schemas.counts import pack_counts

# Identifying values as a replay of the 2012 limblab recordings would send them.
BOARD_ID = "cerebus-rig-2"
SUBJECT_ID = "monkey-spike"
SESSION_ID = "Spike_07-18-12_WF_001"
FILE_NAME = "Spike_07-18-12_WF_001.mat"
OPERATOR_PATH = "C:\\Users\\operator\\Desktop"
ORIGINAL_PATH = "C:\\Users\\operator\\Desktop\\Spike Data\\07-18-12\\Spike_07-18-12_WF_001.nev"
IMPLANT_SERIAL = "SN-1025-000417"
SITE = "Northwestern Feinberg lab 7"
EVENT_TIME = datetime(2012, 7, 18, 14, 0, 46, 750000, tzinfo=UTC)

RAW_STRINGS = [
    BOARD_ID,
    SUBJECT_ID,
    SESSION_ID,
    FILE_NAME,
    OPERATOR_PATH,
    "operator",
    IMPLANT_SERIAL,
    SITE,
    "07-18-12",
    "7/18/2012",
    "2012-07-18",
]
"""Strings of the raw events that no anonymized record may contain."""


def common_fields(seq: int = 1, event_time: datetime = EVENT_TIME) -> dict[str, Any]:
    """Return the fields every raw board event has, with identifying values."""
    return {
        "board_id": BOARD_ID,
        "subject_id": SUBJECT_ID,
        "session_id": SESSION_ID,
        "seq": seq,
        "event_time": event_time,
        "schema_version": 1,
        "metadata": {
            "source_file": FILE_NAME,
            "source_kind": "limblab_binned",
            "meta.filename": ORIGINAL_PATH,
            "meta.datetime": "7/18/2012 14:0:46.750",
            "operator": OPERATOR_PATH,
            "implant_serial": IMPLANT_SERIAL,
            "recording_start": "2012-07-18T14:00:46.750+00:00",
            "site": SITE,
            "notes": "re-zeroed force sensor before trial 40",
            "task": "wrist_force",
        },
    }


def spike_frame(seq: int = 1, **changes: Any) -> dict[str, Any]:
    """Return a valid raw SpikeFrame of 2 bins x 96 channels, with `changes` applied."""
    counts = (np.arange(2 * 96, dtype=np.uint8) % 5).reshape(2, 96)  # (n_bins, n_channels)
    record = {
        **common_fields(seq),
        "schema_version": 2,
        "bin_ms": 50,
        **pack_counts(counts),
        "channel_ids": [f"ee{channel:02d}u0" for channel in range(1, 97)],
        "threshold_rms": -4.5,
    }
    record.update(changes)
    return record


def behavior_event(seq: int = 1, **changes: Any) -> dict[str, Any]:
    """Return a valid raw BehaviorEvent (an outcome), with `changes` applied."""
    record = {
        **common_fields(seq),
        "kind": "outcome",
        "trial_id": 17,
        "label": "reward",
        "value": 0.25,
    }
    record.update(changes)
    return record


def eskin_frame(seq: int = 1, **changes: Any) -> dict[str, Any]:
    """Return a valid raw EskinFrame of 4 taxels, with `changes` applied."""
    record = {
        **common_fields(seq),
        "n_taxels": 4,
        "pressures": [0.0, 1.5, 12.25, 3.0],
        "pressure_unit": "kpa",
        "contact_centroid": [11.5, -2.25],
        "total_force_n": 2.5,
        "joint_positions": [0.5, 0.25, 1.0],
        "label": "mug",
    }
    record.update(changes)
    return record


def decoder_output(seq: int = 1, **changes: Any) -> dict[str, Any]:
    """Return a valid raw DecoderOutput of 4 classes, with `changes` applied."""
    record = {
        **common_fields(seq),
        "step_index": 1200,
        "step_ms": 50,
        "classes": ["rest", "power_grip", "precision_grip", "release"],
        "probabilities": [0.125, 0.75, 0.0625, 0.0625],
        "command": "power_grip",
        "model_version": "subj-5f1c2a-2024-05-01.3",
    }
    record.update(changes)
    return record


RAW_EVENTS = {
    "SpikeFrame": spike_frame,
    "BehaviorEvent": behavior_event,
    "EskinFrame": eskin_frame,
    "DecoderOutput": decoder_output,
}
