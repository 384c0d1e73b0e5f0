"""Exceptions of recording replay."""

from __future__ import annotations

from pathlib import Path


class RecordingFormatError(ValueError):
    """A recording file is not of a known kind or does not have the expected content.

    The message names the file, what was expected and what was found.
    """

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
