"""Integration tests of the retrain orchestrator: real broker, real Delta table, local backend.

The prepare, train and announce templates are replaced by Python one-liners that append a line
to a runs file, so the tests check the orchestration and not the training.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from bcratos.config import Settings, load_settings
from infra import topics
from infra.orchestrator import Orchestrator, _Batch, publish_request
from infra.retrain_jobs import RetrainJob, list_jobs, record_job
from schemas import codec

pytestmark = pytest.mark.integration

PREPARE = (
    "import sys, time; open(sys.argv[1], 'a').write('prepare ' + sys.argv[2] + chr(10)); "
    "time.sleep(float(sys.argv[3]))"
)
# Writes an exported model folder whose config.json names the dataset; fails for target broken.
TRAIN = (
    "import json, os, sys; "
    "sys.exit('training failed for ' + sys.argv[6]) if sys.argv[6] == 'broken' else None; "
    "folder = os.path.join(sys.argv[1], sys.argv[3] + '-' + sys.argv[4]); os.makedirs(folder); "
    "open(os.path.join(folder, 'config.json'), 'w').write(json.dumps(dict(dataset=sys.argv[3]))); "
    "open(sys.argv[2], 'a').write('train ' + sys.argv[3] + chr(10))"
)
ANNOUNCE = "import sys; open(sys.argv[1], 'a').write('announce ' + sys.argv[2] + chr(10))"


def _config_text(data_dir: Path, runs_file: Path, prepare_sleep_s: float) -> str:
    python = sys.executable
    models_dir = data_dir / "models"
    return f"""
[hpc.templates.prepare]
executable = "{python}"
args = ["-c", "{PREPARE}", "{runs_file}", "{{dataset}}", "{prepare_sleep_s}"]
parameters.dataset = {{ type = "str" }}

[hpc.templates.train]
executable = "{python}"
args = ["-c", "{TRAIN}", "{models_dir}", "{runs_file}", "{{dataset}}", "{{model}}",
        "{{device}}", "{{target}}"]
parameters.dataset = {{ type = "str" }}
parameters.model = {{ type = "enum", choices = ["linear", "gru", "tcn"] }}
parameters.device = {{ type = "enum", choices = ["cpu", "cuda"] }}
parameters.target = {{ type = "str" }}

[hpc.templates.announce]
executable = "{python}"
args = ["-c", "{ANNOUNCE}", "{runs_file}", "{{dataset}}", "{{model_dir}}", "{{target}}"]
parameters.model_dir = {{ type = "path", base_dir = "models" }}
parameters.target = {{ type = "str" }}
parameters.dataset = {{ type = "str" }}
"""


class Env:
    """Settings of one test: own topic prefix, data directory and templates."""

    def __init__(self, settings: Settings, runs_file: Path, environ: dict[str, str]) -> None:
        self.settings = settings
        self.runs_file = runs_file
        self.environ = environ

    def runs(self) -> list[str]:
        if not self.runs_file.exists():
            return []
        return self.runs_file.read_text().splitlines()


@pytest.fixture
def make_env(
    bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Env]:
    def make(prepare_sleep_s: float = 0.0, debounce_s: float = 1.5) -> Env:
        prefix = f"test-orch-{uuid.uuid4().hex[:8]}."
        data_dir = tmp_path / "data"
        runs_file = tmp_path / "runs.log"
        config_file = tmp_path / "bcratos.toml"
        config_file.write_text(_config_text(data_dir, runs_file, prepare_sleep_s))
        environ = {
            "BCRATOS_CONFIG": str(config_file),
            "BCRATOS_DATA_DIR": str(data_dir),
            "BCRATOS_KAFKA__TOPIC_PREFIX": prefix,
            "BCRATOS_ORCHESTRATOR__DEBOUNCE_S": str(debounce_s),
            "BCRATOS_ORCHESTRATOR__POLL_INTERVAL_S": "0.3",
            "BCRATOS_ORCHESTRATOR__MODEL": "linear",
        }
        for name, value in environ.items():
            monkeypatch.setenv(name, value)
        specs = [
            spec
            for spec in topics.load_spec(prefix, broker_count=1)
            if spec.name in {f"{prefix}retrain", f"{prefix}jobs"}
        ]
        topics.apply(AdminClient({"bootstrap.servers": bootstrap}), specs)
        return Env(load_settings(), runs_file, environ)

    return make


@pytest.fixture
def run_in_thread() -> Iterator[Callable[[Settings], None]]:
    stops: list[tuple[threading.Event, threading.Thread]] = []

    def start(settings: Settings) -> None:
        stop = threading.Event()
        thread = threading.Thread(target=Orchestrator(settings).run, args=(stop,), daemon=True)
        thread.start()
        stops.append((stop, thread))

    yield start
    for stop, thread in stops:
        stop.set()
        thread.join(timeout=15)


def _wait_for_jobs(
    settings: Settings, done: Callable[[list[RetrainJob]], bool], timeout_s: float = 60.0
) -> list[RetrainJob]:
    deadline = time.monotonic() + timeout_s
    while True:
        jobs = list_jobs(settings)
        if done(jobs):
            return jobs
        if time.monotonic() > deadline:
            pytest.fail(f"jobs did not reach the expected state in {timeout_s} s: {jobs}")
        time.sleep(0.3)


def _all_finished(count: int) -> Callable[[list[RetrainJob]], bool]:
    return lambda jobs: len(jobs) == count and all(job.finished for job in jobs)


def _job_events(settings: Settings) -> list[dict[str, Any]]:
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap,
            "group.id": f"test-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([settings.topic("jobs")])
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is None:
            if events:
                break
            continue
        if message.error() is None:
            events.append(codec.decode(message.value()).record)
    consumer.close()
    return events


def test_duplicate_requests_start_one_job(
    make_env: Callable[..., Env], run_in_thread: Callable[[Settings], None]
) -> None:
    env = make_env()
    settings = env.settings
    request_ids = [publish_request(settings, "global", detail=f"request {n}") for n in range(3)]
    duplicate = codec.encode(
        "RetrainRequest",
        {
            "request_id": request_ids[0], "target": "global", "reason": "manual",
            "requested_at": 1_700_000_000_000_000, "requested_by": "test",
        },
    )
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap})
    producer.produce(settings.topic("retrain"), key=b"global", value=duplicate)
    producer.flush(10)

    run_in_thread(settings)
    jobs = _wait_for_jobs(settings, _all_finished(1))

    job = jobs[0]
    assert job.state == "succeeded", job.message
    assert sorted(job.request_ids) == sorted(request_ids)
    assert job.reasons == ("manual", "manual", "manual")
    assert set(job.backend_job_ids) == {"prepare", "train", "announce"}
    assert [line.split()[0] for line in env.runs()] == ["prepare", "train", "announce"]
    assert env.runs()[0] == f"prepare {job.dataset}"
    assert job.dataset == f"global-{job.job_id}"

    events = [event for event in _job_events(settings) if event["job_id"] == job.job_id]
    states = [event["state"] for event in events]
    assert states[0] == "submitted"
    assert "running" in states
    assert states[-1] == "succeeded"
    assert {event["stage"] for event in events} == {"prepare", "train", "announce"}


def test_request_during_job_joins_it(
    make_env: Callable[..., Env], run_in_thread: Callable[[Settings], None]
) -> None:
    env = make_env(prepare_sleep_s=3.0, debounce_s=0.5)
    settings = env.settings
    run_in_thread(settings)
    first = publish_request(settings, "global", reason="volume")
    _wait_for_jobs(settings, lambda jobs: len(jobs) == 1)

    second = publish_request(settings, "global", reason="drift")
    jobs = _wait_for_jobs(settings, _all_finished(1))

    job = jobs[0]
    assert job.state == "succeeded", job.message
    assert job.request_ids == (first, second)
    assert job.reasons == ("volume", "drift")
    assert [line.split()[0] for line in env.runs()] == ["prepare", "train", "announce"]


def test_concurrent_requests_start_one_job(
    make_env: Callable[..., Env], run_in_thread: Callable[[Settings], None]
) -> None:
    env = make_env(debounce_s=4.0)
    settings = env.settings
    run_in_thread(settings)
    senders = [
        threading.Thread(target=publish_request, args=(settings, "global"), daemon=True)
        for _ in range(4)
    ]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(timeout=30)

    jobs = _wait_for_jobs(settings, _all_finished(1))

    assert jobs[0].state == "succeeded", jobs[0].message
    assert len(jobs[0].request_ids) == 4
    assert len([line for line in env.runs() if line.startswith("prepare")]) == 1


def test_two_targets_run_independently(
    make_env: Callable[..., Env], run_in_thread: Callable[[Settings], None]
) -> None:
    env = make_env()
    settings = env.settings
    run_in_thread(settings)
    publish_request(settings, "subj-a", reason="volume")
    publish_request(settings, "subj-b", reason="drift")

    jobs = _wait_for_jobs(settings, _all_finished(2))

    assert sorted(job.target for job in jobs) == ["subj-a", "subj-b"]
    assert [job.state for job in jobs] == ["succeeded", "succeeded"]
    assert sorted(job.reasons for job in jobs) == [("drift",), ("volume",)]
    assert len([line for line in env.runs() if line.startswith("announce")]) == 2


def test_failing_step_marks_job_failed(
    make_env: Callable[..., Env], run_in_thread: Callable[[Settings], None]
) -> None:
    env = make_env()
    settings = env.settings
    run_in_thread(settings)
    publish_request(settings, "broken")

    jobs = _wait_for_jobs(settings, _all_finished(1))

    job = jobs[0]
    assert job.state == "failed"
    assert job.step == "train"
    assert "exit code 1" in job.message
    assert "training failed for broken" in job.message
    assert "announce" not in set(job.backend_job_ids)
    assert [line.split()[0] for line in env.runs()] == ["prepare"]


def test_interrupted_submission_fails_on_restart(make_env: Callable[..., Env]) -> None:
    env = make_env()
    settings = env.settings
    stale = RetrainJob(
        job_id="retrain-stale", target="global", dataset="global-stale", backend="local"
    )
    record_job(settings, stale)

    Orchestrator(settings).resume()

    (job,) = list_jobs(settings)
    assert job.state == "failed"
    assert "stopped while submitting step prepare" in job.message
    assert env.runs() == []


def _start_cli(env: Env) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "bcratos.cli", "orchestrator", "run"],
        env={**os.environ, **env.environ},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_killed_orchestrator_resumes_job(make_env: Callable[..., Env]) -> None:
    env = make_env(prepare_sleep_s=4.0, debounce_s=0.5)
    settings = env.settings
    first = _start_cli(env)
    try:
        publish_request(settings, "global")
        _wait_for_jobs(
            settings, lambda jobs: len(jobs) == 1 and "prepare" in jobs[0].backend_job_ids
        )
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)

    second = _start_cli(env)
    try:
        jobs = _wait_for_jobs(settings, _all_finished(1), timeout_s=90)
    finally:
        second.terminate()
        second.wait(timeout=20)

    job = jobs[0]
    assert job.state == "succeeded", job.message
    assert [line.split()[0] for line in env.runs()] == ["prepare", "train", "announce"]


class _Clock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def _waiting_batch() -> _Batch:
    return _Batch(first_seen_s=0.0)


def test_due_job_waits_for_processors_to_catch_up(tmp_path: Path) -> None:
    settings = load_settings(
        data_dir=tmp_path, orchestrator={"debounce_s": 10, "lake_wait_s": 100}
    )
    clock = _Clock()
    lags = [5000, 1000]
    orchestrator = Orchestrator(settings, clock=clock, lag_reader=lambda _s: lags.pop(0))
    batch = _waiting_batch()

    clock.now_s = 20.0
    assert not orchestrator._lake_caught_up("global", batch, clock.now_s)  # 5000 to go
    clock.now_s = 21.0  # the lag is read again at most every 2 s
    assert not orchestrator._lake_caught_up("global", batch, clock.now_s)
    clock.now_s = 23.0
    assert orchestrator._lake_caught_up("global", batch, clock.now_s)  # 1000: the default limit


def test_due_job_starts_after_lake_wait(tmp_path: Path) -> None:
    settings = load_settings(
        data_dir=tmp_path, orchestrator={"debounce_s": 10, "lake_wait_s": 100}
    )
    orchestrator = Orchestrator(settings, clock=_Clock(), lag_reader=lambda _s: 10**6)

    assert not orchestrator._lake_caught_up("global", _waiting_batch(), 50.0)
    assert orchestrator._lake_caught_up("global", _waiting_batch(), 110.0)


def test_unreadable_lag_does_not_block(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    orchestrator = Orchestrator(settings, clock=_Clock(), lag_reader=lambda _s: None)

    assert orchestrator._lake_caught_up("global", _waiting_batch(), 40.0)
