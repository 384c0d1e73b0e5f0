"""The ``local`` backend: each job is a process group on this machine.

The launcher (``infra/hpc/launcher.py``) runs the command in a new session, with standard output
and error in the job folder, and records the exit code when it ends. The job record stores the
launcher's pid and start time, so a restarted orchestrator can still tell whether the job runs,
how it ended, or that it was lost (the process is gone and no exit code was recorded, e.g. after
SIGKILL or a reboot).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bcratos.config import Settings
from infra.hpc.backend import Backend, BackendJobId, JobState, JobStatus
from infra.hpc.exceptions import BackendError
from infra.hpc.jobfiles import LAUNCHER, JobFolder, JobRecord, utc_now_iso
from infra.hpc.templates import JobSpec, instantiate

logger = logging.getLogger(__name__)

_POLL_S = 0.1
_KILL_TIMEOUT_S = 5.0


class LocalBackend(Backend):
    """Runs jobs as local processes; cancellation sends SIGTERM, then SIGKILL, to the group."""

    name = "local"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        # Launchers started by this object; their exit status is collected here, so no zombie
        # is left behind.
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def submit(self, job: JobSpec) -> BackendJobId:
        command = instantiate(self.settings, job)
        folder = JobFolder.create(self.settings, command.template)
        folder.write_spec(command.argv, Path.cwd())
        record = JobRecord(
            job_id=folder.job_id,
            backend=self.name,
            template=command.template,
            argv=list(command.argv),
            parameters=dict(command.parameters),
            submitted_at=utc_now_iso(),
        )
        folder.write_record(record)

        with folder.stdout.open("ab") as stdout, folder.stderr.open("ab") as stderr:
            process = subprocess.Popen(
                [sys.executable, str(LAUNCHER), str(folder.spec_file)],
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
            )
        self._children[process.pid] = process
        folder.update_record(native_id=str(process.pid), pid_start_ticks=_start_ticks(process.pid))
        logger.info(
            "submitted job %s (template %s) as local process %d", folder.job_id,
            command.template, process.pid,
        )
        return BackendJobId(folder.job_id)

    def status(self, job_id: str) -> JobStatus:
        folder = JobFolder.existing(self.settings, job_id)
        record = folder.read_record()
        pid = _pid_of(record)
        if self._running(pid, record):
            return JobStatus(BackendJobId(job_id), JobState.RUNNING, native_id=record.native_id)
        return _final_status(folder, record)

    def logs(self, job_id: str) -> str:
        return JobFolder.existing(self.settings, job_id).read_logs()

    def cancel(self, job_id: str) -> None:
        folder = JobFolder.existing(self.settings, job_id)
        record = folder.read_record()
        pid = _pid_of(record)
        if not self._running(pid, record):
            return
        folder.update_record(cancel_requested=True)

        # start_new_session made the launcher the leader of its own process group.
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.hpc.local.cancel_grace_s
        while time.monotonic() < deadline and self._running(pid, record):
            time.sleep(_POLL_S)
        if self._running(pid, record):
            logger.warning(
                "job %s (pid %d) ignored SIGTERM for %.0f s; sending SIGKILL",
                job_id, pid, self.settings.hpc.local.cancel_grace_s,
            )
            _signal_group(pid, signal.SIGKILL)
            deadline = time.monotonic() + _KILL_TIMEOUT_S
            while time.monotonic() < deadline and self._running(pid, record):
                time.sleep(_POLL_S)
            if self._running(pid, record):
                raise BackendError(
                    f"job {job_id}: process {pid} still runs {_KILL_TIMEOUT_S:.0f} s after SIGKILL"
                )
        logger.info("cancelled job %s (pid %d)", job_id, pid)

    def _running(self, pid: int, record: JobRecord) -> bool:
        child = self._children.get(pid)
        if child is not None:
            return child.poll() is None
        # Started by another process, e.g. an orchestrator before its restart: trust the pid
        # only while its start time matches, because pids are reused.
        ticks = _start_ticks(pid)
        return ticks is not None and ticks == record.pid_start_ticks


def _pid_of(record: JobRecord) -> int:
    if record.native_id is None:
        raise BackendError(
            f"job {record.job_id} has no process id in its record; its start was interrupted"
        )
    return int(record.native_id)


def _final_status(folder: JobFolder, record: JobRecord) -> JobStatus:
    job_id = BackendJobId(record.job_id)
    ended = folder.read_exit()
    if record.cancel_requested:
        exit_code = ended.exit_code if ended is not None else None
        return JobStatus(
            job_id, JobState.CANCELLED, exit_code, record.native_id, "cancel requested"
        )
    if ended is None:
        return JobStatus(
            job_id,
            JobState.FAILED,
            None,
            record.native_id,
            "lost: the process ended without recording an exit code (killed with SIGKILL, "
            "or the machine restarted)",
        )
    state = JobState.SUCCEEDED if ended.exit_code == 0 else JobState.FAILED
    detail = f"ended by signal {ended.signal}" if ended.signal is not None else ""
    return JobStatus(job_id, state, ended.exit_code, record.native_id, detail)


def _start_ticks(pid: int) -> int | None:
    """Return the start time of a live, non-zombie process in clock ticks since boot."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and brackets; the fields after it do not.
    fields = stat[stat.rindex(")") + 2 :].split()
    state, start_ticks = fields[0], fields[19]
    if state in {"Z", "X"}:
        return None
    return int(start_ticks)


def _signal_group(pid: int, signal_number: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal_number)
