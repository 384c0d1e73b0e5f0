"""The interface every HPC backend implements, job states, and the backend registry.

A backend runs validated template instances somewhere (this machine, a Slurm cluster, a HEAppE
instance) and reports on them by job id. ``create_backend`` picks the class registered under
``hpc.backend``; ``backend_for_job`` picks the one that a stored job was submitted with.
"""

from __future__ import annotations

import importlib
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, Final, NewType

from bcratos.config import Settings
from infra.hpc.exceptions import BackendError, HpcError, WaitTimeoutError
from infra.hpc.jobfiles import JobFolder
from infra.hpc.templates import JobSpec

BackendJobId = NewType("BackendJobId", str)
"""Id of a submitted job: the name of its folder under ``<data_dir>/jobs``, whatever the
backend. The scheduler's own id is ``JobStatus.native_id``."""


class JobState(StrEnum):
    """Lifecycle state of a job."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in _FINISHED


_FINISHED: Final = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


@dataclass(frozen=True)
class JobStatus:
    """A job's state as its backend reports it."""

    job_id: BackendJobId
    state: JobState
    exit_code: int | None = None
    """Exit status of the command once finished (128 + N after signal N); None while it runs
    or when the backend cannot tell."""
    native_id: str | None = None
    """The scheduler's id: process id, Slurm job id or HEAppE job id."""
    detail: str = ""
    """The scheduler's own state name or the reason for the state, for people."""


class Backend(ABC):
    """Runs template instances and reports on them; one instance per settings object."""

    name: ClassVar[str]

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @abstractmethod
    def submit(self, job: JobSpec) -> BackendJobId:
        """Validate ``job`` against its template, start it and return its id."""

    @abstractmethod
    def status(self, job_id: str) -> JobStatus:
        """Return the job's current state."""

    @abstractmethod
    def logs(self, job_id: str) -> str:
        """Return the job's standard output, then its standard error under a heading."""

    @abstractmethod
    def cancel(self, job_id: str) -> None:
        """Stop the job; a job that already finished is left as it is."""

    def wait(self, job_id: str, timeout_s: float, *, poll_s: float = 1.0) -> JobStatus:
        """Poll ``status`` until the job finishes; raise ``WaitTimeoutError`` after
        ``timeout_s`` seconds."""
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.status(job_id)
            if status.state.finished:
                return status
            if time.monotonic() >= deadline:
                raise WaitTimeoutError(
                    f"job {job_id} is still {status.state} after {timeout_s:.0f} s"
                )
            time.sleep(poll_s)


_REGISTRY: dict[str, str | type[Backend]] = {
    "local": "infra.hpc.local:LocalBackend",
    "slurm": "infra.hpc.slurm:SlurmBackend",
    "heappe": "infra.hpc.heappe:HeappeBackend",
}
"""Backend name to its class, or to ``module:class`` imported on first use (py4heappe is large,
and only the HEAppE backend needs it)."""


def register_backend(name: str, backend: type[Backend]) -> None:
    """Make ``backend`` available under ``name``, replacing any class of that name."""
    _REGISTRY[name] = backend


def backend_names() -> list[str]:
    return sorted(_REGISTRY)


def backend_class(name: str) -> type[Backend]:
    """Return the class registered under ``name``."""
    entry = _REGISTRY.get(name)
    if entry is None:
        raise HpcError(f"HPC backend {name!r} is unknown; expected one of {backend_names()}")
    if isinstance(entry, str):
        module_name, _, class_name = entry.partition(":")
        entry = getattr(importlib.import_module(module_name), class_name)
        if not (isinstance(entry, type) and issubclass(entry, Backend)):
            raise BackendError(f"{module_name}.{class_name} is not an HPC backend class")
        _REGISTRY[name] = entry
    return entry


def create_backend(settings: Settings, name: str | None = None, **options: Any) -> Backend:
    """Return the backend ``name``, by default the one in ``hpc.backend``.

    ``options`` go to the backend's constructor, such as the HEAppE backend's ``transport``.
    """
    return backend_class(name or settings.hpc.backend)(settings, **options)


def backend_for_job(settings: Settings, job_id: str, **options: Any) -> Backend:
    """Return the backend that the stored job ``job_id`` was submitted with."""
    record = JobFolder.existing(settings, job_id).read_record()
    return create_backend(settings, record.backend, **options)
