"""``bcratos report``: one self-contained HTML page of plots about the lake, datasets and models.

`neural`, `pipeline` and `decoders` load the data, `figures` plots it with matplotlib,
`html` assembles the page, and `build` ties them together (`build_report`).
"""

from jobs.report.build import ReportResult, build_report, default_evaluation, default_output

__all__ = ["ReportResult", "build_report", "default_evaluation", "default_output"]
