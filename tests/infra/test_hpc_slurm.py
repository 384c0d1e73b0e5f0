"""Integration tests of the Slurm backend against the single-node cluster of infra/slurm/setup.sh.

`make test` starts the cluster (`make slurm`). It has no accounting storage, so these tests read
finished jobs through `scontrol show job` and check that the `sacct` mode reports its failure.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from bcratos.config import Settings
from infra.hpc import CommandFailedError, JobSpec, JobState, create_backend
from infra.hpc.jobfiles import JobFolder
from tests.support.hpc_jobs import hpc_settings

pytestmark = pytest.mark.integration

TIMEOUT_S = 45


@pytest.fixture(scope="module", autouse=True)
def slurm_cluster() -> None:
    """Fail, never skip, when no Slurm controller responds."""
    sinfo = shutil.which("sinfo")
    if sinfo is None:
        pytest.fail("sinfo is not installed; run the tests with `make test` (it runs make slurm)")
    result = subprocess.run(
        [sinfo, "--noheader", "--format=%T"], capture_output=True, text=True, timeout=30,
        check=False,
    )
    if result.returncode != 0 or not result.stdout.strip():
        pytest.fail(
            f"no Slurm cluster responds (sinfo exit code {result.returncode}: "
            f"{result.stderr.strip()}); start it with `make slurm`"
        )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return hpc_settings(tmp_path, "slurm", slurm={"final_state": "scontrol"})


def test_slurm_job_succeeds_and_logs_collected(settings: Settings) -> None:
    backend = create_backend(settings)

    job_id = backend.submit(JobSpec("exit", {"code": "0"}))
    status = backend.wait(job_id, timeout_s=TIMEOUT_S, poll_s=0.5)

    assert status.state is JobState.SUCCEEDED
    assert status.exit_code == 0
    assert status.native_id is not None and status.native_id.isdigit()
    assert status.detail == "COMPLETED"
    assert backend.logs(job_id) == "started\ndone\n--- stderr ---\nto stderr\n"


def test_slurm_job_failure_reports_exit_code(settings: Settings) -> None:
    backend = create_backend(settings)

    job_id = backend.submit(JobSpec("exit", {"code": "5"}))
    status = backend.wait(job_id, timeout_s=TIMEOUT_S, poll_s=0.5)

    assert status.state is JobState.FAILED
    assert status.exit_code == 5
    assert status.detail == "FAILED"


def test_slurm_job_runs_then_cancel_stops_it(settings: Settings) -> None:
    backend = create_backend(settings)
    job_id = backend.submit(JobSpec("exit", {"code": "0", "sleep_s": "60"}))
    assert backend.status(job_id).state in {JobState.PENDING, JobState.RUNNING}
    _wait_for_output(settings, job_id)
    assert backend.status(job_id).state is JobState.RUNNING

    backend.cancel(job_id)
    status = backend.wait(job_id, timeout_s=TIMEOUT_S, poll_s=0.5)

    assert status.state is JobState.CANCELLED
    assert status.exit_code == 128 + signal.SIGTERM
    assert "done" not in backend.logs(job_id)


def test_slurm_status_falls_back_to_exit_file(settings: Settings) -> None:
    backend = create_backend(settings)
    job_id = backend.submit(JobSpec("exit", {"code": "4"}))
    backend.wait(job_id, timeout_s=TIMEOUT_S, poll_s=0.5)
    # A Slurm job id that slurmctld never issued behaves like one that it has forgotten.
    JobFolder.existing(settings, job_id).update_record(native_id="999999")

    status = backend.status(job_id)

    assert status.state is JobState.FAILED
    assert status.exit_code == 4
    assert status.detail == "from exit_code.json"


def test_sacct_without_accounting_names_command_and_error(tmp_path: Path) -> None:
    settings = hpc_settings(tmp_path, "slurm", slurm={"final_state": "sacct"})
    backend = create_backend(settings)
    job_id = backend.submit(JobSpec("exit", {"code": "0"}))
    _wait_for_exit_file(settings, job_id)

    with pytest.raises(CommandFailedError) as caught:
        _status_once_finished(settings, job_id)

    assert caught.value.argv[0] == "sacct"
    assert caught.value.exit_code == 1
    assert "accounting storage is disabled" in str(caught.value)


def test_auto_final_state_uses_scontrol(tmp_path: Path) -> None:
    settings = hpc_settings(tmp_path, "slurm")
    assert settings.hpc.slurm.final_state == "auto"
    backend = create_backend(settings)
    job_id = backend.submit(JobSpec("exit", {"code": "3"}))

    status = backend.wait(job_id, timeout_s=TIMEOUT_S, poll_s=0.5)

    # The cluster has no accounting storage, so the state comes from scontrol, not the exit
    # file: its detail is Slurm's state name.
    assert status.state is JobState.FAILED
    assert status.exit_code == 3
    assert status.detail == "FAILED"


def _status_once_finished(settings: Settings, job_id: str) -> None:
    backend = create_backend(settings)
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        backend.status(job_id)
        time.sleep(0.5)
    pytest.fail(f"job {job_id} still listed by squeue after {TIMEOUT_S} s")


def _wait_for_output(settings: Settings, job_id: str) -> None:
    stdout = JobFolder.existing(settings, job_id).stdout
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        if stdout.is_file() and "started" in stdout.read_text():
            return
        time.sleep(0.2)
    pytest.fail(f"job {job_id} printed nothing to {stdout} within {TIMEOUT_S} s")


def _wait_for_exit_file(settings: Settings, job_id: str) -> None:
    exit_file = JobFolder.existing(settings, job_id).exit_code_file
    deadline = time.monotonic() + TIMEOUT_S
    while not exit_file.is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
