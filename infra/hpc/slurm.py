"""The ``slurm`` backend: jobs go to a Slurm cluster through ``sbatch``.

The job folder (under ``data_dir``, which must be on a file system that the compute nodes share)
contains a batch script, the launcher and ``spec.json`` with the command's argument list. The
script contains ``#SBATCH`` lines for the template's resources and one ``exec`` line that starts
the launcher with fixed paths; no parameter value ever appears in it, so no value is read by a
shell. This is simpler to trust than quoting each value with ``shlex.quote`` into the script: a
quoting mistake cannot turn into a command. The output paths and the working directory go to
``sbatch`` as arguments rather than ``#SBATCH`` lines, so they need no quoting either.

State: ``squeue`` for jobs that wait or run; for finished jobs ``sacct`` (needs accounting
storage) or ``scontrol show job`` (``hpc.slurm.final_state``). When Slurm no longer knows the
job, the exit code that the launcher wrote in the job folder decides.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bcratos.config import ResourceSettings, Settings
from infra.hpc.backend import Backend, BackendJobId, JobState, JobStatus
from infra.hpc.exceptions import BackendError, CommandFailedError
from infra.hpc.jobfiles import LAUNCHER, JobFolder, JobRecord, jobs_dir, utc_now_iso
from infra.hpc.templates import JobSpec, instantiate

logger = logging.getLogger(__name__)

SLURM_STATES: Final[Mapping[str, JobState]] = {
    "PENDING": JobState.PENDING,
    "CONFIGURING": JobState.PENDING,
    "REQUEUED": JobState.PENDING,
    "REQUEUE_HOLD": JobState.PENDING,
    "REQUEUE_FED": JobState.PENDING,
    "RESIZING": JobState.PENDING,
    "SUSPENDED": JobState.PENDING,
    "STOPPED": JobState.PENDING,
    "RUNNING": JobState.RUNNING,
    "COMPLETING": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING,
    "STAGE_OUT": JobState.RUNNING,
    "COMPLETED": JobState.SUCCEEDED,
    "FAILED": JobState.FAILED,
    "TIMEOUT": JobState.FAILED,
    "NODE_FAIL": JobState.FAILED,
    "OUT_OF_MEMORY": JobState.FAILED,
    "BOOT_FAIL": JobState.FAILED,
    "DEADLINE": JobState.FAILED,
    "PREEMPTED": JobState.FAILED,
    "REVOKED": JobState.FAILED,
    "SPECIAL_EXIT": JobState.FAILED,
    "CANCELLED": JobState.CANCELLED,
}
"""Slurm job state names (``squeue --format=%T``, ``sacct``, ``scontrol``) to job states."""

_UNKNOWN_JOB = "Invalid job id specified"
"""Error message of squeue and scontrol for a job that slurmctld no longer keeps."""

SCRIPT_NAME: Final = "job.sh"


@dataclass(frozen=True)
class SlurmJobInfo:
    """A job's state as a Slurm command printed it."""

    state_name: str
    exit_code: int | None = None


class SlurmBackend(Backend):
    """Submits jobs with ``sbatch`` and tracks them with ``squeue`` and ``sacct``/``scontrol``."""

    name = "slurm"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._final_state_readers: Mapping[str, Callable[[str], SlurmJobInfo | None]] = {
            "sacct": self._final_from_sacct,
            "scontrol": self._final_from_scontrol,
            "auto": self._final_from_sacct_or_scontrol,
        }
        self._sacct_works: bool | None = None  # None until ``auto`` has tried sacct

    def submit(self, job: JobSpec) -> BackendJobId:
        command = instantiate(self.settings, job)
        _reject_output_patterns(jobs_dir(self.settings))
        folder = JobFolder.create(self.settings, command.template)
        folder.write_spec(command.argv, Path.cwd())
        launcher = folder.root / LAUNCHER.name
        shutil.copyfile(LAUNCHER, launcher)
        script = folder.root / SCRIPT_NAME
        script.write_text(
            batch_script(folder.job_id, command.resources, self.settings, launcher, folder)
        )
        folder.write_record(
            JobRecord(
                job_id=folder.job_id,
                backend=self.name,
                template=command.template,
                argv=list(command.argv),
                parameters=dict(command.parameters),
                submitted_at=utc_now_iso(),
            )
        )

        output = self._run(
            [
                self._command("sbatch"),
                "--parsable",
                f"--output={folder.stdout}",
                f"--error={folder.stderr}",
                f"--chdir={Path.cwd()}",
                str(script),
            ]
        )
        native_id = _parse_sbatch_output(output)
        folder.update_record(native_id=native_id)
        logger.info(
            "submitted job %s (template %s) as Slurm job %s", folder.job_id, command.template,
            native_id,
        )
        return BackendJobId(folder.job_id)

    def status(self, job_id: str) -> JobStatus:
        folder = JobFolder.existing(self.settings, job_id)
        record = folder.read_record()
        native_id = _native_id(record)
        info = self._active_from_squeue(native_id)
        if info is None:
            reader = self._final_state_readers[self.settings.hpc.slurm.final_state]
            info = reader(native_id)
        if info is None:
            return _status_from_exit_file(folder, record)
        state = _job_state(info.state_name, job_id)
        if record.cancel_requested and state.finished:
            state = JobState.CANCELLED
        return JobStatus(BackendJobId(job_id), state, info.exit_code, native_id, info.state_name)

    def logs(self, job_id: str) -> str:
        return JobFolder.existing(self.settings, job_id).read_logs()

    def cancel(self, job_id: str) -> None:
        folder = JobFolder.existing(self.settings, job_id)
        record = folder.read_record()
        if self.status(job_id).state.finished:
            return
        folder.update_record(cancel_requested=True)
        self._run([self._command("scancel"), _native_id(record)])
        logger.info("cancelled job %s (Slurm job %s)", job_id, record.native_id)

    def _active_from_squeue(self, native_id: str) -> SlurmJobInfo | None:
        result = self._run_raw(
            [self._command("squeue"), "--noheader", f"--jobs={native_id}", "--format=%T"]
        )
        if result.returncode != 0:
            if _UNKNOWN_JOB in result.stderr:
                return None
            raise CommandFailedError(list(result.args), result.returncode, result.stderr)
        state_name = result.stdout.strip()
        # squeue lists waiting and running jobs only; a finished one prints nothing.
        return SlurmJobInfo(state_name) if state_name else None

    def _final_from_sacct(self, native_id: str) -> SlurmJobInfo | None:
        output = self._run(
            [
                self._command("sacct"),
                f"--jobs={native_id}",
                "--allocations",
                "--parsable2",
                "--noheader",
                "--format=JobID,State,ExitCode",
            ]
        )
        return parse_sacct(output, native_id)

    def _final_from_sacct_or_scontrol(self, native_id: str) -> SlurmJobInfo | None:
        # sacct reports a job for as long as accounting keeps it, and scontrol only until
        # MinJobAge seconds after it ends. So sacct comes first, and scontrol is the fallback
        # on clusters without accounting storage.
        if self._sacct_works is not False:
            try:
                info = self._final_from_sacct(native_id)
            except CommandFailedError as exc:
                if self._sacct_works:
                    raise
                logger.warning(
                    "sacct failed (%s); reading finished Slurm jobs with scontrol from now on. "
                    "Set hpc.slurm.final_state to sacct or scontrol to choose.",
                    exc,
                )
                self._sacct_works = False
            else:
                self._sacct_works = True
                return info
        return self._final_from_scontrol(native_id)

    def _final_from_scontrol(self, native_id: str) -> SlurmJobInfo | None:
        result = self._run_raw([self._command("scontrol"), "show", "job", "--oneliner", native_id])
        if result.returncode != 0:
            if _UNKNOWN_JOB in result.stderr:
                return None
            raise CommandFailedError(list(result.args), result.returncode, result.stderr)
        return parse_scontrol(result.stdout)

    def _command(self, name: str) -> str:
        bin_dir = self.settings.hpc.slurm.bin_dir
        return str(bin_dir / name) if bin_dir is not None else name

    def _run(self, argv: list[str]) -> str:
        result = self._run_raw(argv)
        if result.returncode != 0:
            raise CommandFailedError(argv, result.returncode, result.stderr)
        return result.stdout

    def _run_raw(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        timeout_s = self.settings.hpc.slurm.command_timeout_s
        try:
            return subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired as exc:
            stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
            detail = stderr or f"timed out after {timeout_s:.0f} s"
            raise CommandFailedError(argv, None, detail) from exc
        except FileNotFoundError as exc:
            raise BackendError(
                f"Slurm command {argv[0]!r} not found; install Slurm's client commands or set "
                "hpc.slurm.bin_dir"
            ) from exc


def batch_script(
    job_id: str,
    resources: ResourceSettings,
    settings: Settings,
    launcher: Path,
    folder: JobFolder,
) -> str:
    """Return the batch script of a job: resource directives and the launcher call.

    Every value in it comes from the configuration, which validates them as plain words and
    integers, or is a path of ours quoted with ``shlex.quote``. Parameter values stay in
    ``spec.json``.
    """
    directives = [
        f"--job-name=bcratos-{job_id}",
        "--ntasks=1",
        f"--cpus-per-task={resources.cpus}",
        f"--mem={resources.memory_mb}M",
        f"--time={resources.time_limit_min}",
    ]
    if resources.gpus:
        directives.append(f"--gres=gpu:{resources.gpus}")
    if resources.partition:
        directives.append(f"--partition={resources.partition}")
    if settings.hpc.slurm.account:
        directives.append(f"--account={settings.hpc.slurm.account}")
    launch = shlex.join([settings.hpc.slurm.python, str(launcher), str(folder.spec_file)])
    lines = [
        "#!/bin/bash",
        *(f"#SBATCH {directive}" for directive in directives),
        f"# bcratos job {job_id}: the command's argument list is in spec.json.",
        f"exec {launch}",
    ]
    return "\n".join(lines) + "\n"


def parse_sacct(output: str, native_id: str) -> SlurmJobInfo | None:
    """Read the allocation line of ``sacct --parsable2 --noheader
    --format=JobID,State,ExitCode``; sacct prints nothing for a job it does not know."""
    for line in output.splitlines():
        fields = line.split("|")
        if len(fields) == 3 and fields[0] == native_id:
            # A cancelled job's state reads "CANCELLED by <uid>".
            return SlurmJobInfo(fields[1].split()[0], _parse_exit_code(fields[2]))
    return None


def parse_scontrol(output: str) -> SlurmJobInfo:
    """Read ``JobState`` and ``ExitCode`` from ``scontrol show job --oneliner`` output."""
    fields = dict(
        token.split("=", 1) for token in output.split() if "=" in token
    )
    if "JobState" not in fields:
        raise BackendError(f"scontrol printed no JobState: {output[:500]!r}")
    return SlurmJobInfo(fields["JobState"], _parse_exit_code(fields.get("ExitCode", "")))


def _parse_exit_code(text: str) -> int | None:
    """Turn Slurm's ``<exit status>:<signal>`` into an exit code (128 + signal if signalled)."""
    status, _, signal_number = text.partition(":")
    if not status.isdigit() or not signal_number.isdigit():
        return None
    return 128 + int(signal_number) if int(signal_number) else int(status)


def _parse_sbatch_output(output: str) -> str:
    # --parsable prints "<job id>" or "<job id>;<cluster>".
    native_id = output.strip().split(";", 1)[0]
    if not native_id.isdigit():
        raise BackendError(f"sbatch --parsable printed {output!r}; expected a job id")
    return native_id


def _job_state(state_name: str, job_id: str) -> JobState:
    state = SLURM_STATES.get(state_name)
    if state is None:
        raise BackendError(
            f"job {job_id}: Slurm reports the unknown state {state_name!r}; expected one of "
            f"{sorted(SLURM_STATES)}"
        )
    return state


def _native_id(record: JobRecord) -> str:
    if record.native_id is None:
        raise BackendError(
            f"job {record.job_id} has no Slurm job id in its record; sbatch did not complete"
        )
    return record.native_id


def _status_from_exit_file(folder: JobFolder, record: JobRecord) -> JobStatus:
    job_id = BackendJobId(record.job_id)
    ended = folder.read_exit()
    if record.cancel_requested:
        exit_code = ended.exit_code if ended is not None else None
        return JobStatus(job_id, JobState.CANCELLED, exit_code, record.native_id, "cancelled")
    if ended is None:
        return JobStatus(
            job_id,
            JobState.FAILED,
            None,
            record.native_id,
            "lost: Slurm no longer knows the job and the launcher recorded no exit code",
        )
    state = JobState.SUCCEEDED if ended.exit_code == 0 else JobState.FAILED
    return JobStatus(job_id, state, ended.exit_code, record.native_id, "from exit_code.json")


def _reject_output_patterns(folder: Path) -> None:
    # sbatch expands %j, %u and the like in --output and --error.
    if "%" in str(folder):
        raise BackendError(
            f"jobs folder {folder} contains '%', which sbatch reads as a file name pattern; "
            "choose a data_dir without '%'"
        )
