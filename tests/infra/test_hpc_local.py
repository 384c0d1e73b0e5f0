"""Integration tests of the local backend: real processes on this machine."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from bcratos.config import Settings
from infra.hpc import JobSpec, JobState, create_backend
from infra.hpc.jobfiles import JobFolder
from tests.support.hpc_jobs import hpc_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return hpc_settings(tmp_path, "local", local={"cancel_grace_s": 5})


def test_local_job_succeeds_with_exit_code_zero(settings: Settings) -> None:
    backend = create_backend(settings)

    job_id = backend.submit(JobSpec("exit", {"code": "0"}))
    status = backend.wait(job_id, timeout_s=30, poll_s=0.1)

    assert status.state is JobState.SUCCEEDED
    assert status.exit_code == 0
    assert backend.logs(job_id) == "started\ndone\n--- stderr ---\nto stderr\n"


def test_local_job_failure_reports_exit_code(settings: Settings) -> None:
    backend = create_backend(settings)

    job_id = backend.submit(JobSpec("exit", {"code": "7"}))
    status = backend.wait(job_id, timeout_s=30, poll_s=0.1)

    assert status.state is JobState.FAILED
    assert status.exit_code == 7


def test_local_cancel_stops_sleeping_job(settings: Settings) -> None:
    backend = create_backend(settings)
    job_id = backend.submit(JobSpec("exit", {"code": "0", "sleep_s": "60"}))
    _wait_for_output(settings, job_id)
    assert backend.status(job_id).state is JobState.RUNNING

    started = time.monotonic()
    backend.cancel(job_id)

    assert time.monotonic() - started < 5
    status = backend.status(job_id)
    assert status.state is JobState.CANCELLED
    assert status.exit_code == 128 + signal.SIGTERM
    assert not _alive(int(status.native_id or 0))


def test_local_status_recovered_by_new_backend(settings: Settings) -> None:
    first = create_backend(settings)
    job_id = first.submit(JobSpec("exit", {"code": "3", "sleep_s": "1"}))

    # A second object is like an orchestrator restarted while the job runs.
    second = create_backend(settings)

    assert second.status(job_id).state is JobState.RUNNING
    assert first.wait(job_id, timeout_s=30, poll_s=0.1).exit_code == 3
    recovered = second.status(job_id)
    assert recovered.state is JobState.FAILED
    assert recovered.exit_code == 3


def test_local_job_killed_without_exit_record_is_lost(settings: Settings) -> None:
    backend = create_backend(settings)
    job_id = backend.submit(JobSpec("exit", {"code": "0", "sleep_s": "60"}))
    _wait_for_output(settings, job_id)
    pid = int(backend.status(job_id).native_id or 0)

    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while backend.status(job_id).state is JobState.RUNNING and time.monotonic() < deadline:
        time.sleep(0.1)

    status = backend.status(job_id)
    assert status.state is JobState.FAILED
    assert status.exit_code is None
    assert status.detail.startswith("lost")


def test_local_cancel_of_finished_job_keeps_state(settings: Settings) -> None:
    backend = create_backend(settings)
    job_id = backend.submit(JobSpec("exit", {"code": "0"}))
    backend.wait(job_id, timeout_s=30, poll_s=0.1)

    backend.cancel(job_id)

    assert backend.status(job_id).state is JobState.SUCCEEDED


def _wait_for_output(settings: Settings, job_id: str) -> None:
    stdout = JobFolder.existing(settings, job_id).stdout
    deadline = time.monotonic() + 30
    while "started" not in stdout.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
