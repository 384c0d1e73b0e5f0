"""Assembly of the report's single HTML file: inline CSS, base64 PNG images, escaped text.

The page refers to nothing outside itself, so it opens the same from a laptop, a mail
attachment or a cluster's file browser.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from html import escape
from typing import Final

from jobs.report.sections import Figure, Section, Table

STYLE: Final = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1250px; color: #222; }
h1 { margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
nav ol { columns: 2; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
caption { caption-side: top; text-align: left; font-weight: bold; padding-bottom: 0.3em; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #444; margin-top: 0.3em; }
p.missing { background: #fff8e1; border-left: 4px solid #ffb300; padding: 0.5em 0.8em; }
p.error { background: #ffebee; border-left: 4px solid #c62828; padding: 0.5em 0.8em; }
p.remark { color: #444; font-size: 0.9em; }
p.meta { color: #555; margin-top: 0; }
"""


def render_page(title: str, meta: Sequence[str], sections: Sequence[Section]) -> str:
    """Return the whole HTML document of the report."""
    contents = "".join(
        f'<li><a href="#{escape(section.key)}">{escape(section.title)}</a></li>'
        for section in sections
    )
    body = "\n".join(render_section(section) for section in sections)
    meta_lines = "<br>".join(escape(line) for line in meta)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f'<h1>{escape(title)}</h1>\n<p class="meta">{meta_lines}</p>\n'
        f"<nav><ol>{contents}</ol></nav>\n{body}\n</body>\n</html>\n"
    )


def render_section(section: Section) -> str:
    """Return one section: heading, error and notes, figures, remarks, then tables."""
    parts = [f'<section id="{escape(section.key)}">', f"<h2>{escape(section.title)}</h2>"]
    if section.error is not None:
        parts.append(f'<p class="error">could not build this section: {escape(section.error)}</p>')
    parts += [f'<p class="missing">{escape(note)}</p>' for note in section.notes]
    parts += [render_figure(figure) for figure in section.figures]
    parts += [f'<p class="remark">{escape(remark)}</p>' for remark in section.remarks]
    parts += [render_table(table) for table in section.tables]
    parts.append("</section>")
    return "\n".join(parts)


def render_table(table: Table) -> str:
    """Return a table; cells that read as numbers are right-aligned."""
    head = "".join(f"<th>{escape(column)}</th>" for column in table.columns)
    rows = []
    for row in table.rows:
        cells = "".join(
            f'<td class="number">{escape(cell)}</td>'
            if _is_number(cell)
            else f"<td>{escape(cell)}</td>"
            for cell in row
        )
        rows.append(f"<tr>{cells}</tr>")
    caption = f"<caption>{escape(table.caption)}</caption>" if table.caption else ""
    return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def render_figure(figure: Figure) -> str:
    """Return a figure with its PNG inline as a base64 data URI, and its caption."""
    data = base64.b64encode(figure.png).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{escape(figure.title)}">'
        f"<figcaption>{escape(figure.caption)}</figcaption></figure>"
    )


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True
