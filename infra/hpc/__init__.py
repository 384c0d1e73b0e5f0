"""HPC backends: run pre-approved command templates locally, on Slurm or through HEAppE.

Typical use::

    from infra.hpc import JobSpec, create_backend

    backend = create_backend(settings)  # hpc.backend: local, slurm or heappe
    job = JobSpec("train", {"dataset": "day12", "model": "gru", "target": "global"})
    job_id = backend.submit(job)
    status = backend.wait(job_id, timeout_s=3600)
"""

from infra.hpc.backend import (
    Backend,
    BackendJobId,
    JobState,
    JobStatus,
    backend_class,
    backend_for_job,
    backend_names,
    create_backend,
    register_backend,
)
from infra.hpc.exceptions import (
    BackendError,
    CommandFailedError,
    HpcError,
    InvalidParameterError,
    JobNotFoundError,
    TemplateError,
    WaitTimeoutError,
)
from infra.hpc.templates import Command, JobSpec, instantiate, parse_assignments

__all__ = [
    "Backend",
    "BackendError",
    "BackendJobId",
    "Command",
    "CommandFailedError",
    "HpcError",
    "InvalidParameterError",
    "JobNotFoundError",
    "JobSpec",
    "JobState",
    "JobStatus",
    "TemplateError",
    "WaitTimeoutError",
    "backend_class",
    "backend_for_job",
    "backend_names",
    "create_backend",
    "instantiate",
    "parse_assignments",
    "register_backend",
]
