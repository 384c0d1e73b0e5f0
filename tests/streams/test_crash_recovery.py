"""Killing stream workers with SIGKILL loses no event and writes none twice."""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from bcratos.config import Settings
from boards.publisher import BoardPublisher
from boards.replay import open_recording, replay
from tests.support.pipeline_env import PipelineEnv, make_pipeline_env

pytestmark = pytest.mark.integration

DATA = Path(os.environ.get("BCRATOS_SHARED_DATA", Path(__file__).parents[3] / "shared" / "data"))
SESSIONS = [
    DATA / "limblab-spike-wf" / "Spike_07-18-12_WF_001.mat",
    DATA / "limblab-spike-wf" / "Spike_07-19-12_WF_001.mat",
]


def test_sigkill_during_replay_exactly_once(settings: Settings, tmp_path: Path) -> None:
    env = make_pipeline_env(settings, tmp_path)
    recordings = [
        open_recording(path, board_id="crash-board", subject_id="crash-subject")
        for path in SESSIONS
    ]
    expected_frames = sum(recording.n_bins for recording in recordings)
    expected_spikes = sorted(recording.spike_count for recording in recordings)
    published: Counter[str] = Counter()

    def publish() -> None:
        publisher = BoardPublisher(
            env.settings.kafka.bootstrap,
            "crash-board",
            tmp_path / "board",
            topic_prefix=env.settings.kafka.topic_prefix,
        )
        result = replay(recordings, publisher, speed=None)
        publisher.close()
        published.update(result.published)

    env.start("ingest")
    env.start("sink")
    publisher_thread = threading.Thread(target=publish)
    publisher_thread.start()
    chooser = random.Random(20121018)
    try:
        for _ in range(4):
            time.sleep(chooser.uniform(3.0, 8.0))
            victim = chooser.choice(["ingest", "sink", "both"])
            for stage in ("ingest", "sink") if victim == "both" else (victim,):
                env.kill(stage)
                env.start(stage)
        publisher_thread.join(timeout=120)
        assert published["SpikeFrame"] == expected_frames

        frames = env.wait_for_rows(
            "bronze/spike_frames", expected_frames, timeout_s=300, check=env.assert_running
        )
        events = env.wait_for_rows(
            "bronze/behavior_events", published["BehaviorEvent"], check=env.assert_running
        )
        sums = _wait_for_step_sums(env, expected_spikes)
    finally:
        env.stop_all()

    assert frames.num_rows == expected_frames
    assert events.num_rows == published["BehaviorEvent"]
    seqs = Counter(frames["seq"].to_pylist())
    assert max(seqs.values()) == 1, "a spike frame was written twice"
    assert sorted(sums.values()) == expected_spikes

    steps = env.table("silver/spike_steps")
    assert steps is not None
    keys = Counter(
        zip(steps["session_pseudonym"].to_pylist(), steps["step_index"].to_pylist(), strict=True)
    )
    assert max(keys.values()) == 1, "a step was written twice"


def _wait_for_step_sums(
    env: PipelineEnv, expected: list[int], timeout_s: float = 120
) -> dict[str, int]:
    deadline = time.monotonic() + timeout_s
    sums: dict[str, int] = {}
    while time.monotonic() < deadline:
        steps = env.table("silver/spike_steps")
        if steps is not None:
            counter: Counter[str] = Counter()
            for session, counts in zip(
                steps["session_pseudonym"].to_pylist(), steps["counts"].to_pylist(), strict=True
            ):
                counter[session] += sum(counts)
            sums = dict(counter)
            if sorted(sums.values()) == expected:
                return sums
        env.assert_running()
        time.sleep(1)
    return sums
