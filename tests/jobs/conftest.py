"""A lake written by the real stream processors, shared by the Spark job tests.

The fixture replays four days of the limblab "Spike" sessions and the "Jango" session through
a private pipeline on the test broker (`tests.support.pipeline_env`) and waits until the sink
has written every frame and closed every step. Building it takes about a minute, once per run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bcratos.config import Settings
from boards.publisher import BoardPublisher
from boards.replay import Recording, open_recording, replay
from tests.support.pipeline_env import DATA, PipelineEnv, make_pipeline_env

SPIKE_DAYS = sorted((DATA / "limblab-spike-wf").glob("Spike_*.mat"))[:4]
JANGO = next((DATA / "limblab-jango").glob("*.mat"))


@dataclass
class SinkLake:
    """A lake filled by the stream processors, and what was replayed into it."""

    settings: Settings
    env: PipelineEnv
    recordings: dict[str, Recording]  # subject id -> last recording replayed for it
    sessions: list[tuple[str, Path, Recording]]  # (subject id, file, recording) in replay order
    published: Counter[str] = field(default_factory=Counter)


@pytest.fixture(scope="session")
def sink_lake(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SinkLake]:
    """Replay four Spike days and the Jango session through the processors into a fresh lake."""
    env = make_pipeline_env(settings, tmp_path_factory.mktemp("sink-lake"))
    env.start("ingest")
    env.start("sink")
    sessions = [("Spike", path) for path in SPIKE_DAYS] + [("Jango", JANGO)]
    lake = SinkLake(env.settings, env, {}, [])
    try:
        for subject, path in sessions:
            board = f"{subject.lower()}-board"
            recording = open_recording(path, board_id=board, subject_id=subject)
            publisher = BoardPublisher(
                env.settings.kafka.bootstrap,
                board,
                env.settings.data_dir / "boards" / board,
                topic_prefix=env.settings.kafka.topic_prefix,
            )
            result = replay([recording], publisher, speed=None)
            assert publisher.close() == 0
            lake.published.update(result.published)
            lake.sessions.append((subject, path, recording))
            lake.recordings[subject] = recording

        env.wait_for_rows(
            "bronze/behavior_events", lake.published["BehaviorEvent"], check=env.assert_running
        )
        env.wait_for_rows(
            "bronze/spike_frames", lake.published["SpikeFrame"], check=env.assert_running
        )
        env.wait_for_rows(
            "silver/spike_steps", lake.published["SpikeFrame"], check=env.assert_running
        )
        yield lake
    finally:
        env.stop_all()
