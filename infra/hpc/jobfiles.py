"""The folder of one HPC job: ``<data_dir>/jobs/<job id>/``.

Every backend keeps the same files there, so a job can be inspected, and its status recovered
after the orchestrator restarts, without knowing which backend ran it:

- ``state.json``: the job record (backend, template, argument list, native id, pid)
- ``spec.json``: what the launcher runs (argument list, working directory, exit code file)
- ``stdout.log``, ``stderr.log``: output of the command
- ``exit_code.json``: written by the launcher when the command ends
"""

from __future__ import annotations

import json
import os
import re
import secrets
import tempfile
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from bcratos.config import Settings
from infra.hpc.exceptions import JobNotFoundError

JOB_ID_PATTERN: Final = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,39}-[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}")
"""``<template>-<UTC submit time>-<6 random hex digits>``, as in
``train-20250301T120000Z-3fa9c1``."""

LAUNCHER: Final = Path(__file__).resolve().parent / "launcher.py"


@dataclass(frozen=True)
class JobRecord:
    """Record of a submitted job, stored by its backend in ``state.json``."""

    job_id: str
    backend: str
    template: str
    argv: list[str]
    parameters: dict[str, str]
    submitted_at: str
    """ISO 8601 time in UTC."""
    native_id: str | None = None
    """The scheduler's id: a process id, a Slurm job id or a HEAppE job id."""
    pid_start_ticks: int | None = None
    """Start time of the local process in clock ticks since boot, to detect a reused pid."""
    cancel_requested: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    """Backend-specific facts, such as HEAppE task ids."""


@dataclass(frozen=True)
class ExitRecord:
    """The command's end as the launcher recorded it."""

    exit_code: int
    """The exit status, or 128 + N when signal N ended the command."""
    signal: int | None = None


@dataclass(frozen=True)
class JobFolder:
    """Paths of one job's files."""

    job_id: str
    root: Path

    @classmethod
    def create(cls, settings: Settings, template: str) -> JobFolder:
        """Make the folder of a new job named after ``template`` and the current time."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        job_id = f"{template}-{stamp}-{secrets.token_hex(3)}"
        folder = cls(job_id, jobs_dir(settings) / job_id)
        folder.root.mkdir(parents=True, exist_ok=False)
        return folder

    @classmethod
    def existing(cls, settings: Settings, job_id: str) -> JobFolder:
        """Return the folder of a submitted job; raise ``JobNotFoundError`` when there is none."""
        # The id comes from users and other processes: its pattern keeps it inside jobs/.
        if not JOB_ID_PATTERN.fullmatch(job_id):
            raise JobNotFoundError(
                f"job id {job_id!r} is invalid; expected <template>-<YYYYMMDDTHHMMSSZ>-<6 hex "
                "digits> as printed by `bcratos hpc submit`"
            )
        folder = cls(job_id, jobs_dir(settings) / job_id)
        if not folder.state_file.is_file():
            raise JobNotFoundError(f"job {job_id} not found: {folder.state_file} does not exist")
        return folder

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def spec_file(self) -> Path:
        return self.root / "spec.json"

    @property
    def stdout(self) -> Path:
        return self.root / "stdout.log"

    @property
    def stderr(self) -> Path:
        return self.root / "stderr.log"

    @property
    def exit_code_file(self) -> Path:
        return self.root / "exit_code.json"

    def read_record(self) -> JobRecord:
        """Return the job record from ``state.json``."""
        try:
            data = json.loads(self.state_file.read_text())
        except FileNotFoundError as exc:
            raise JobNotFoundError(f"job {self.job_id} has no {self.state_file}") from exc
        return JobRecord(**data)

    def write_record(self, record: JobRecord) -> None:
        """Replace ``state.json`` atomically, so a reader never sees half a record."""
        write_json_atomically(self.state_file, asdict(record))

    def update_record(self, **changes: Any) -> JobRecord:
        """Change fields of the stored record and return the new record."""
        record = replace(self.read_record(), **changes)
        self.write_record(record)
        return record

    def write_spec(self, argv: list[str] | tuple[str, ...], cwd: Path) -> None:
        """Write the launcher's input: the argument list, never a shell string."""
        spec = {"argv": list(argv), "cwd": str(cwd), "exit_code_file": str(self.exit_code_file)}
        write_json_atomically(self.spec_file, spec)

    def read_exit(self) -> ExitRecord | None:
        """Return the recorded end of the command, or None while none is recorded."""
        try:
            data = json.loads(self.exit_code_file.read_text())
        except FileNotFoundError:
            return None
        return ExitRecord(exit_code=int(data["exit_code"]), signal=data.get("signal"))

    def read_logs(self) -> str:
        """Return the command's standard output, then its standard error under a heading."""
        stdout = _read_text(self.stdout)
        stderr = _read_text(self.stderr)
        if not stderr:
            return stdout
        separator = "" if not stdout or stdout.endswith("\n") else "\n"
        return f"{stdout}{separator}--- stderr ---\n{stderr}"


def jobs_dir(settings: Settings) -> Path:
    """Return the folder that contains every job folder."""
    return settings.data_dir / "jobs"


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_json_atomically(path: Path, data: object) -> None:
    """Write ``data`` as JSON to a temporary file beside ``path``, then rename it over ``path``."""
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w") as out:
            json.dump(data, out, indent=2)
            out.write("\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
