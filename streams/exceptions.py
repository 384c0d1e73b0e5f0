"""Errors of the streams package.

Every error is a `StreamsError`. A frame that fails a semantic check is not an error: the
validator returns a verdict for it, and the processor routes it to the dead-letter topic.
Errors are kept for what a processor cannot decide per frame: bad settings at startup and
records that the anonymizer has no rule for. Two more kinds follow: a frame that the windower
cannot place into its session's steps (the caller sends it to the dead-letter topic with the
error's `reason`), and a failure of the Delta lake sink.
"""

from __future__ import annotations

from typing import ClassVar


class StreamsError(Exception):
    """Base class of every error raised by the streams package."""


class AnonymizationKeyError(StreamsError):
    """The pseudonymization key or key id is missing, too short, unreadable or invalid.

    Raised at startup. The message names the setting to fix and never contains the key.
    """


class MetadataPolicyError(StreamsError):
    """A metadata field policy names an action that does not exist."""


class AnonymizationError(StreamsError):
    """A record that the anonymizer has no rule for, such as an undeclared field."""


class StateError(StreamsError):
    """Exported processor state that cannot be imported: malformed or of another version."""


class WindowError(StreamsError):
    """A spike or e-skin frame that cannot be placed into the model steps of its session.

    `reason` is a short code that a dead-letter router can put in a header.
    """

    reason: ClassVar[str] = "window_error"


class StepWidthError(WindowError):
    """A bin width that is not positive or does not divide the model step width."""

    reason = "step_not_multiple_of_bin"


class SessionMismatchError(WindowError):
    """A frame whose bin width, channel or taxel count or partition differs from its session's."""

    reason = "session_mismatch"


class LakeError(StreamsError):
    """A failure of the Delta lake sink, naming the table URI."""


class UnknownTableError(LakeError):
    """A table name that is not part of the lake layout."""


class LakeSchemaError(LakeError):
    """Rows whose columns or values do not match the schema of their Delta table."""


class OffsetRegressionError(LakeError):
    """An app transaction version (Kafka offset) lower than the one the table stores."""


class LakeCommitError(LakeError):
    """A Delta commit that failed, after retries where the failure was a commit conflict."""


class ResidencyError(LakeError):
    """A lake URI outside the allowed regions, or one whose region cannot be determined."""
