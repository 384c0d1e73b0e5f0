"""Errors of the HPC backends and of command templates."""

from __future__ import annotations


class HpcError(RuntimeError):
    """Base class of errors raised while validating, submitting or tracking an HPC job."""


class TemplateError(HpcError, ValueError):
    """A job names an undeclared template, or a template cannot be instantiated."""


class InvalidParameterError(TemplateError):
    """A parameter value does not meet its template's declaration."""

    def __init__(self, template: str, parameter: str, value: object, expected: str) -> None:
        self.template = template
        self.parameter = parameter
        self.value = value
        self.expected = expected
        super().__init__(
            f"template {template!r}: invalid value for parameter {parameter!r}: "
            f"received {value!r}, expected {expected}"
        )


class JobNotFoundError(HpcError):
    """No job folder or state file exists for the job id."""


class BackendError(HpcError):
    """A backend failed to submit, query, cancel or read a job."""


class CommandFailedError(BackendError):
    """A scheduler command exited with a non-zero code or timed out."""

    def __init__(self, argv: list[str], exit_code: int | None, stderr: str) -> None:
        self.argv = argv
        self.exit_code = exit_code
        self.stderr = stderr
        outcome = "timed out" if exit_code is None else f"failed with exit code {exit_code}"
        detail = stderr.strip()[-2000:] or "(no output on stderr)"
        super().__init__(f"command {argv!r} {outcome}: {detail}")


class WaitTimeoutError(HpcError, TimeoutError):
    """A job did not finish within the time a caller waited for it."""
