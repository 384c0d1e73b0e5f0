"""The stream processors end to end: real broker, real processes, real Delta tables."""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pytest
from confluent_kafka import Consumer, Producer

from bcratos.config import Settings
from boards.publisher import BoardPublisher
from boards.replay import open_recording, replay
from schemas import codec
from schemas.counts import pack_counts
from streams.ingest import HEADER_REASON, HEADER_SOURCE_TOPIC, HEADER_STAGE
from tests.support.pipeline_env import PipelineEnv, make_pipeline_env

pytestmark = pytest.mark.integration

DATA = Path(os.environ.get("BCRATOS_SHARED_DATA", Path(__file__).parents[3] / "shared" / "data"))
LIMBLAB_SESSION = DATA / "limblab-spike-wf" / "Spike_07-18-12_WF_001.mat"
RECORDINGS = [
    LIMBLAB_SESSION,
    DATA / "brochier-grasp" / "Dataset2_old_b121bf7.mat",
    DATA / "icub-grasp",
    DATA / "blackrock" / "Han_20170516.nev",
]
BOARD_ID = "rig-Z9Q-board"
SUBJECT_ID = "subject-K4W-private"


@pytest.fixture(scope="module")
def pipeline(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PipelineEnv]:
    env = make_pipeline_env(settings, tmp_path_factory.mktemp("pipeline"))
    env.start("ingest")
    env.start("sink")
    yield env
    env.stop_all()


@pytest.fixture(scope="module")
def replayed(pipeline: PipelineEnv) -> dict[str, Any]:
    """Replay every recording kind once through the pipeline; return what was published."""
    published: Counter[str] = Counter()
    spike_counts = []
    for number, path in enumerate(RECORDINGS):
        board = f"{BOARD_ID}-{number}"
        recording = open_recording(path, board_id=board, subject_id=SUBJECT_ID)
        publisher = BoardPublisher(
            pipeline.settings.kafka.bootstrap,
            board,
            pipeline.settings.data_dir / "boards" / str(number),
            topic_prefix=pipeline.settings.kafka.topic_prefix,
        )
        result = replay([recording], publisher, speed=None)
        assert publisher.close() == 0
        published.update(result.published)
        if recording.spike_count:
            spike_counts.append(recording.spike_count)
    return {"published": published, "spike_counts": spike_counts}


def test_replay_rows_match_published(pipeline: PipelineEnv, replayed: dict[str, Any]) -> None:
    published = replayed["published"]
    expected = {
        "bronze/spike_frames": published["SpikeFrame"],
        "bronze/behavior_events": published["BehaviorEvent"],
        "bronze/eskin_frames": published["EskinFrame"],
    }
    for table, count in expected.items():
        rows = pipeline.wait_for_rows(table, count, check=pipeline.assert_running)
        assert rows.num_rows == count, table
        boards, seqs = rows["board_pseudonym"].to_pylist(), rows["seq"].to_pylist()
        keys = Counter(zip(boards, seqs, strict=True))
        assert max(keys.values()) == 1, f"duplicate (board, seq) in {table}"


def test_silver_counts_sum_per_session(pipeline: PipelineEnv, replayed: dict[str, Any]) -> None:
    frames = pipeline.wait_for_rows("bronze/spike_frames", replayed["published"]["SpikeFrame"])
    sessions = set(frames["session_pseudonym"].to_pylist())
    deadline_rows = 0
    for _ in range(120):
        steps = pipeline.table("silver/spike_steps")
        sums = _step_sums(steps) if steps is not None else {}
        if len(sums) == len(sessions) and sorted(sums.values()) == sorted(replayed["spike_counts"]):
            break
        deadline_rows = 0 if steps is None else steps.num_rows
        pipeline.assert_running()
        time.sleep(1)
    assert sorted(sums.values()) == sorted(replayed["spike_counts"]), deadline_rows
    assert set(sums) == sessions


def _step_sums(steps: Any) -> dict[str, int]:
    sums: Counter[str] = Counter()
    for session, counts in zip(
        steps["session_pseudonym"].to_pylist(), steps["counts"].to_pylist(), strict=True
    ):
        sums[session] += sum(counts)
    return dict(sums)


def test_lake_holds_no_raw_identifier(pipeline: PipelineEnv, replayed: dict[str, Any]) -> None:
    pipeline.wait_for_rows("bronze/spike_frames", replayed["published"]["SpikeFrame"])
    forbidden = [
        SUBJECT_ID,
        BOARD_ID,
        "Spike_07-18-12_WF_001",
        "Dataset2_old_b121bf7",
        "Han_20170516",
        "David",
        "Desktop",
        "Documents and Settings",
    ]
    lake = Path(pipeline.settings.lake_uri)
    files = [path for path in lake.rglob("*") if path.is_file()]
    assert any(path.suffix == ".parquet" for path in files)
    assert any(path.suffix == ".json" for path in files)
    for path in files:
        content = path.read_bytes()
        for text in forbidden:
            assert text.encode() not in content, f"{text!r} found in {path}"
        assert SUBJECT_ID not in str(path)


def _frame(session: str, seq_time: datetime, counts: np.ndarray, **extra: Any) -> dict[str, Any]:
    return {
        "subject_id": "subject-dlq",
        "session_id": session,
        "event_time": seq_time,
        "session_start": datetime(2020, 1, 1, tzinfo=UTC),
        "metadata": {},
        "bin_ms": 50,
        "channel_ids": None,
        **pack_counts(counts),
        **extra,
    }


def _send_raw(settings: Settings, short: str, value: bytes, key: bytes = b"dlq-board") -> None:
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap})
    producer.produce(settings.topic(short), key=key, value=value)
    assert producer.flush(10) == 0


def test_invalid_events_dead_lettered(pipeline: PipelineEnv) -> None:
    settings = pipeline.settings
    start = datetime(2020, 1, 1, tzinfo=UTC)
    seq = iter(range(1_000_000, 2_000_000))
    ones = np.ones((1, 4), dtype=np.int16)

    def spike(session: str, offset_ms: int, counts: np.ndarray = ones) -> bytes:
        record = _frame(session, start + timedelta(milliseconds=offset_ms), counts)
        return codec.encode("SpikeFrame", {**record, "board_id": "dlq-board", "seq": next(seq)})

    # Decoding: random bytes and an unknown writer schema.
    _send_raw(settings, "raw.spikes", os.urandom(40))
    _send_raw(settings, "raw.spikes", b"\xc3\x01" + b"\x01" * 8 + b"\x00" * 20)
    # Semantic checks.
    _send_raw(settings, "raw.spikes", spike("s-negative", 0, -ones))
    _send_raw(settings, "raw.spikes", spike("s-layout", 0))
    _send_raw(settings, "raw.spikes", spike("s-layout", 50, np.ones((1, 5), dtype=np.int16)))
    future = datetime.now(UTC) + timedelta(days=1)
    future_frame = {**_frame("s-future", future, ones), "board_id": "dlq-board", "seq": next(seq)}
    _send_raw(settings, "raw.spikes", codec.encode("SpikeFrame", future_frame))
    eskin = {
        "board_id": "dlq-board",
        "subject_id": "subject-dlq",
        "session_id": "s-eskin",
        "seq": next(seq),
        "event_time": start,
        "metadata": {},
        "n_taxels": 2,
        "pressures": [1.0, float("nan")],
        "pressure_unit": "kpa",
        "contact_centroid": None,
        "total_force_n": None,
        "joint_positions": None,
        "label": None,
    }
    _send_raw(settings, "raw.eskin", codec.encode("EskinFrame", eskin))
    decoder = {
        "board_id": "dlq-board",
        "subject_id": "subject-dlq",
        "session_id": "s-decoder",
        "seq": next(seq),
        "event_time": start,
        "metadata": {},
        "step_index": 1,
        "step_ms": 50,
        "classes": ["rest", "grasp"],
        "probabilities": [0.9, 0.9],
        "command": "open",
        "model_version": None,
    }
    _send_raw(settings, "raw.decoder", codec.encode("DecoderOutput", decoder))
    # Windowing: a frame 5 s behind its session's newest frame is later than the grace period.
    for offset_ms in range(0, 6000, 50):
        _send_raw(settings, "raw.spikes", spike("s-late", offset_ms))
    _send_raw(settings, "raw.spikes", spike("s-late", 500))

    expected = {
        ("decode", "raw.spikes"): 2,
        ("validate", "raw.spikes"): 3,
        ("validate", "raw.eskin"): 1,
        ("validate", "raw.decoder"): 1,
        ("sink", "anon.spikes"): 1,
    }
    reasons = _read_dead_letters(settings, sum(expected.values()))
    prefix = settings.kafka.topic_prefix
    found = Counter((stage, topic.removeprefix(prefix)) for stage, topic, _ in reasons)
    assert found == expected
    codes = Counter(reason for _, _, reason in reasons)
    for code in (
        "counts_negative",
        "channel_count_changed",
        "event_time_skew",
        "pressure_not_finite",
        "probabilities_invalid",
        "late",
    ):
        assert codes[code] == 1, f"{code} in {codes}"


def _read_dead_letters(settings: Settings, expected: int) -> list[tuple[str, str, str]]:
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap,
            "group.id": uuid.uuid4().hex,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([settings.topic("dlq")])
    found: list[tuple[str, str, str]] = []
    deadline = time.monotonic() + 120
    try:
        while len(found) < expected and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error() is not None:
                continue
            headers = dict(message.headers() or [])
            found.append(
                (
                    headers[HEADER_STAGE].decode(),
                    headers[HEADER_SOURCE_TOPIC].decode(),
                    headers[HEADER_REASON].decode(),
                )
            )
    finally:
        consumer.close()
    return found


def test_out_of_order_frames_same_steps(pipeline: PipelineEnv) -> None:
    settings = pipeline.settings
    rng = np.random.default_rng(7)
    counts = rng.poisson(3, size=(200, 8)).astype(np.int16)
    start = datetime(2020, 3, 1, tzinfo=UTC)
    order = np.arange(200)
    for block in range(0, 200, 10):  # shuffle within 500 ms, inside the 1000 ms grace period
        rng.shuffle(order[block : block + 10])

    publisher = BoardPublisher(
        settings.kafka.bootstrap,
        "board-order",
        settings.data_dir / "boards" / "order",
        topic_prefix=settings.kafka.topic_prefix,
    )
    for session, indexes in (("ordered", range(200)), ("shuffled", order)):
        for index in indexes:
            event_time = start + timedelta(milliseconds=50 * int(index))
            frame = _frame(session, event_time, counts[index : index + 1])
            publisher.publish("SpikeFrame", {**frame, "subject_id": "subject-order"})
    assert publisher.close() == 0

    steps = None
    for _ in range(120):
        table = pipeline.table("silver/spike_steps")
        if table is not None:
            order_rows = table.filter(pc.equal(table["bins_present"], 1))
            by_session = _steps_by_session(order_rows)
            if len(by_session) >= 2 and all(len(v) == 200 for v in by_session.values()):
                steps = by_session
                break
        pipeline.assert_running()
        time.sleep(1)
    assert steps is not None, "steps of both sessions did not arrive"
    complete = [value for value in steps.values() if len(value) == 200]
    assert complete[0] == complete[1]


def _steps_by_session(table: Any) -> dict[str, dict[int, tuple[int, ...]]]:
    result: dict[str, dict[int, tuple[int, ...]]] = {}
    for session, index, counts, bin_ms in zip(
        table["session_pseudonym"].to_pylist(),
        table["step_index"].to_pylist(),
        table["counts"].to_pylist(),
        table["bin_ms"].to_pylist(),
        strict=True,
    ):
        if len(counts) == 8 and bin_ms == 50:
            result.setdefault(session, {})[index] = tuple(counts)
    return result
