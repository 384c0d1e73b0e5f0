"""Errors of the jobs package.

Every error is a `JobsError`. Messages name the table (``bronze.spike_frames``) or URI, what
was expected and what to do; none contains a raw subject id or the pseudonymization key.
"""

from __future__ import annotations


class JobsError(Exception):
    """Base class of every error raised by the jobs package."""


class TableNotFoundError(JobsError):
    """A table name or path that does not name a Delta table of the lake."""


class LakeQueryError(JobsError):
    """A SQL query that Spark rejected or could not run.

    `message` is the key part of Spark's message, on one line, and `hint` suggests what to try.
    `condition` is Spark's error condition, such as ``TABLE_OR_VIEW_NOT_FOUND``, when known.
    """

    def __init__(self, message: str, hint: str, condition: str | None = None) -> None:
        super().__init__(f"{message}\nhint: {hint}")
        self.message = message
        self.hint = hint
        self.condition = condition


class AsOfError(JobsError):
    """An ``--as-of`` value that is malformed or names a version the table does not have."""


class MaintenanceError(JobsError):
    """A compaction or vacuum that was rejected or failed, naming the table."""


class ErasureError(JobsError):
    """A subject erasure that was rejected or failed, naming the table it stopped at."""


class ReportError(JobsError):
    """A report that cannot be built at all, such as one for a lake folder that does not exist."""
