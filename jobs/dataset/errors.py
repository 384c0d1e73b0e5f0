"""Errors of the dataset preparation job, and the wrapping of Spark failures into them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from py4j.protocol import Py4JError, Py4JJavaError
from pyspark.errors import PySparkException

_MAX_SPARK_MESSAGE_CHARS: Final = 600


class DatasetJobError(Exception):
    """Base class of every error raised while preparing or reproducing a dataset."""


class InvalidParameterError(DatasetJobError, ValueError):
    """A job parameter is out of range or malformed, such as a dataset name with a slash."""


class SelectionError(DatasetJobError):
    """The subjects, days or step width select nothing, or select something the lake lacks."""


class SourceTableError(DatasetJobError):
    """A source Delta table is missing, or the requested version of it cannot be read."""


class ManifestError(DatasetJobError):
    """A dataset manifest is missing, unreadable or of an unsupported format."""


class SparkJobError(DatasetJobError):
    """A Spark action of the job failed; the message names the step and Spark's error."""


def spark_message(exc: BaseException) -> str:
    """Return the first lines of a Spark error, without the JVM stack trace."""
    java = isinstance(exc, Py4JJavaError)
    text = str(exc.java_exception.toString()) if java else str(exc)  # type: ignore[attr-defined]
    lines = [line for line in text.strip().splitlines() if line.strip()]
    message_lines = []
    for line in lines:
        if line.lstrip().startswith(("at ", "JVM stacktrace:", "Caused by:")):
            break
        message_lines.append(line.strip())
    message = " ".join(message_lines) or type(exc).__name__
    if len(message) > _MAX_SPARK_MESSAGE_CHARS:
        message = message[:_MAX_SPARK_MESSAGE_CHARS] + " ..."
    return message


@contextmanager
def spark_step(step: str) -> Iterator[None]:
    """Raise `SparkJobError` naming `step` for any PySpark or Py4J error raised inside."""
    try:
        yield
    except (PySparkException, Py4JError) as exc:
        raise SparkJobError(f"{step} failed: {spark_message(exc)}") from exc
