"""Unit tests of the backend registry and of the Slurm backend's script and output parsing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bcratos.config import ConfigError, Settings, load_settings
from infra.hpc import (
    Backend,
    BackendJobId,
    HpcError,
    JobNotFoundError,
    JobSpec,
    JobState,
    JobStatus,
    backend_class,
    backend_for_job,
    create_backend,
    instantiate,
    register_backend,
)
from infra.hpc import backend as backend_module
from infra.hpc.jobfiles import JobFolder, JobRecord
from infra.hpc.local import LocalBackend
from infra.hpc.slurm import SlurmBackend, batch_script, parse_sacct, parse_scontrol


class RecordingBackend(Backend):
    name = "recording"

    def submit(self, job: JobSpec) -> BackendJobId:
        return BackendJobId(job.template)

    def status(self, job_id: str) -> JobStatus:
        return JobStatus(BackendJobId(job_id), JobState.SUCCEEDED, 0)

    def logs(self, job_id: str) -> str:
        return ""

    def cancel(self, job_id: str) -> None:
        return None


@pytest.mark.parametrize(("name", "expected"), [("local", LocalBackend), ("slurm", SlurmBackend)])
def test_registry_chooses_configured_backend(
    tmp_path: Path, name: str, expected: type[Backend]
) -> None:
    settings = load_settings(data_dir=tmp_path, hpc={"backend": name})

    assert type(create_backend(settings)) is expected


def test_registry_backend_name_overrides_settings(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, hpc={"backend": "slurm"})

    assert isinstance(create_backend(settings, "local"), LocalBackend)


def test_registry_rejects_unknown_backend() -> None:
    with pytest.raises(HpcError, match=r"'pbs' is unknown; expected one of \["):
        backend_class("pbs")


def test_settings_reject_unknown_backend(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="hpc.backend"):
        load_settings(data_dir=tmp_path, hpc={"backend": "pbs"})


def test_registered_backend_is_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # setitem first, so that the registry loses the test backend again afterwards.
    monkeypatch.setitem(backend_module._REGISTRY, "recording", RecordingBackend)
    register_backend("recording", RecordingBackend)
    settings = load_settings(data_dir=tmp_path)

    backend = create_backend(settings, "recording")

    assert backend.wait("j", timeout_s=1).state is JobState.SUCCEEDED


def test_backend_for_job_reads_backend_from_record(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    folder = JobFolder.create(settings, "train")
    folder.write_record(
        JobRecord(folder.job_id, "slurm", "train", ["x"], {}, "2025-01-01T00:00:00+00:00")
    )

    assert isinstance(backend_for_job(settings, folder.job_id), SlurmBackend)


@pytest.mark.parametrize("job_id", ["../../etc/passwd", "train", "train-20250101T000000Z-zzzzzz"])
def test_job_lookup_rejects_invalid_or_unknown_ids(tmp_path: Path, job_id: str) -> None:
    settings = load_settings(data_dir=tmp_path)

    with pytest.raises(JobNotFoundError):
        backend_for_job(settings, job_id)


def _settings_with_echo(tmp_path: Path) -> Settings:
    template = {
        "executable": sys.executable,
        "args": ["-c", "print({n})"],
        "parameters": {"n": {"type": "int"}},
        "resources": {
            "cpus": 4, "memory_mb": 1024, "gpus": 2, "time_limit_min": 30, "partition": "gpu",
        },
    }
    return load_settings(
        data_dir=tmp_path, hpc={"templates": {"echo": template}, "slurm": {"account": "bci"}}
    )


def test_batch_script_has_resources_not_values(tmp_path: Path) -> None:
    settings = _settings_with_echo(tmp_path)
    command = instantiate(settings, JobSpec("echo", {"n": "424242"}))
    folder = JobFolder.create(settings, "echo")

    script = batch_script(
        folder.job_id, command.resources, settings, folder.root / "launcher.py", folder
    )

    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    for directive in [
        "--cpus-per-task=4", "--mem=1024M", "--gres=gpu:2", "--time=30", "--partition=gpu",
        "--account=bci", f"--job-name=bcratos-{folder.job_id}",
    ]:
        assert f"#SBATCH {directive}" in lines
    assert lines[-1].startswith("exec ")
    assert lines[-1].endswith(f"{folder.root / 'launcher.py'} {folder.spec_file}")
    assert "424242" not in script


def test_spec_file_contains_argv_list(tmp_path: Path) -> None:
    settings = _settings_with_echo(tmp_path)
    command = instantiate(settings, JobSpec("echo", {"n": "7"}))
    folder = JobFolder.create(settings, "echo")

    folder.write_spec(command.argv, tmp_path)

    spec = json.loads(folder.spec_file.read_text())
    assert spec["argv"] == [sys.executable, "-c", "print(7)"]
    assert spec["exit_code_file"] == str(folder.exit_code_file)


def test_parse_sacct_reads_allocation_line() -> None:
    output = "41|CANCELLED by 0|0:15\n41.batch|CANCELLED|0:15\n"

    info = parse_sacct(output, "41")

    assert info is not None
    assert info.state_name == "CANCELLED"
    assert info.exit_code == 128 + 15


def test_parse_sacct_unknown_job_returns_none() -> None:
    assert parse_sacct("", "41") is None


def test_parse_scontrol_reads_state_and_exit_code() -> None:
    output = "JobId=7 JobName=x UserId=root(0) JobState=FAILED Reason=NonZeroExitCode ExitCode=3:0"

    info = parse_scontrol(output)

    assert info.state_name == "FAILED"
    assert info.exit_code == 3


def test_parse_scontrol_without_state_raises() -> None:
    with pytest.raises(HpcError, match="no JobState"):
        parse_scontrol("JobId=7")
