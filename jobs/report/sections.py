"""Values shared by the report's loaders, plots and HTML: missing sources and finished sections."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

PSEUDONYM_CHARS: Final = 8
"""Leading characters of a pseudonym shown in plot labels, where the full 20 do not fit."""


@dataclass(frozen=True)
class Missing:
    """A source that does not exist yet, and the command that creates it."""

    reason: str  # such as "no exported models under /data/models"
    command: str  # such as "bcratos train --dataset NAME"

    def note(self) -> str:
        """Return the line the report shows in place of the section's figures."""
        return f"no data: {self.reason}; run `{self.command}` first"


@dataclass(frozen=True)
class Figure:
    """One rendered figure: a PNG and a one-line caption that names the data shown."""

    name: str  # file stem for --png-dir, such as "raster"
    title: str
    caption: str
    png: bytes


@dataclass(frozen=True)
class Table:
    """A small table of the report, as column names and rows of display strings."""

    columns: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Section:
    """One heading of the report with its figures, tables and notes."""

    key: str  # anchor in the HTML, such as "raster"
    title: str
    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # "no data" notes
    remarks: list[str] = field(default_factory=list)  # what the figures cannot show, and why
    error: str | None = None  # why the section could not be built


def short_pseudonym(pseudonym: str) -> str:
    """Return the first characters of a pseudonym for a plot label."""
    if len(pseudonym) <= PSEUDONYM_CHARS:
        return pseudonym
    return pseudonym[:PSEUDONYM_CHARS] + "…"
