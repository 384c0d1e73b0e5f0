"""Sample anonymized records and lake row batches, shared by the lake tests."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa

from streams.lake import (
    BEHAVIOR_EVENTS,
    DECODER_OUTPUTS,
    ESKIN_FRAMES,
    ESKIN_STEPS,
    SPIKE_FRAMES,
    SPIKE_STEPS,
    bronze_table,
    offset_app_id,
    silver_table,
)
from streams.window import EskinWindower, SpikeWindower

APP_ID = offset_app_id("bcratos-sink", "bcratos.anon.spikes", 0)
INGESTED_AT = datetime(2024, 5, 2, 9, 30, tzinfo=UTC)


def event_fields(seq: int, *, subject: str = "subj-1", day: int = 812) -> dict[str, Any]:
    """Return the fields common to all anonymized records."""
    return {
        "subject_pseudonym": subject,
        "board_pseudonym": "board-1",
        "session_pseudonym": f"ses-{subject}",
        "key_id": "k1",
        "seq": seq,
        "session_day": day,
        "t_session_us": seq * 50_000,
        "metadata": {"task": "center_out"},
    }


def spike_record(seq: int, **fields: Any) -> dict[str, Any]:
    counts = np.full((2, 3), seq % 7, dtype=np.uint16)
    return {
        **event_fields(seq, **fields),
        "bin_ms": 25,
        "n_bins": 2,
        "n_channels": 3,
        "dtype": "uint16",
        "counts": counts.tobytes(),
        "channel_ids": ["e1", "e2", "e3"],
        "threshold_rms": -4.5,
    }


def behavior_record(seq: int, **fields: Any) -> dict[str, Any]:
    return {
        **event_fields(seq, **fields),
        "kind": "go_cue",
        "trial_id": 3,
        "label": None,
        "value": 1.5,
    }


def eskin_record(seq: int, **fields: Any) -> dict[str, Any]:
    return {
        **event_fields(seq, **fields),
        "n_taxels": 2,
        "pressures": [1.5, 2.5],
        "pressure_unit": "kpa",
        "contact_centroid": None,
        "total_force_n": 0.75,
        "joint_positions": [0.1, 0.2],
        "label": "cup",
    }


def decoder_record(seq: int, **fields: Any) -> dict[str, Any]:
    return {
        **event_fields(seq, **fields),
        "step_index": seq,
        "step_ms": 50,
        "classes": ["rest", "grasp"],
        "probabilities": [0.25, 0.75],
        "command": "grasp",
        "model_version": None,
    }


RECORD_BUILDERS: dict[str, Callable[..., dict[str, Any]]] = {
    SPIKE_FRAMES: spike_record,
    BEHAVIOR_EVENTS: behavior_record,
    ESKIN_FRAMES: eskin_record,
    DECODER_OUTPUTS: decoder_record,
}


def bronze_rows(table_name: str, first_offset: int, n_rows: int, **fields: Any) -> pa.Table:
    build = RECORD_BUILDERS[table_name]
    offsets = range(first_offset, first_offset + n_rows)
    records = [build(offset, **fields) for offset in offsets]
    return bronze_table(
        table_name, records, partitions=0, offsets=list(offsets), ingested_at=INGESTED_AT
    )


def spike_step_rows() -> pa.Table:
    windower = SpikeWindower(step_ms=50, grace_ms=0)
    records = [spike_record(seq) for seq in range(6)]
    steps = []
    for offset, record in enumerate(records):
        record["t_session_us"] = offset * 50_000
        steps += windower.add(record, partition=0, offset=offset).steps
    steps += windower.flush()
    return silver_table(SPIKE_STEPS, steps, ingested_at=INGESTED_AT)


def eskin_step_rows() -> pa.Table:
    windower = EskinWindower(step_ms=50, grace_ms=0)
    steps = []
    for offset, t_us in enumerate((0, 20_000, 160_000)):
        record = eskin_record(offset)
        record["t_session_us"] = t_us
        steps += windower.add(record, partition=0, offset=offset).steps
    steps += windower.flush()
    return silver_table(ESKIN_STEPS, steps, ingested_at=INGESTED_AT)


def sample_rows(table_name: str) -> pa.Table:
    if table_name == SPIKE_STEPS:
        return spike_step_rows()
    if table_name == ESKIN_STEPS:
        return eskin_step_rows()
    return bronze_rows(table_name, 0, 5)
