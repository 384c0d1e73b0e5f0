"""``bcratos report``: build the sections from the lake and the data folder, write one HTML file.

Steps of `build_report`: 1. check the lake folder, 2. load the sources that several sections
share, 3. build each section, turning a missing source into a "no data" note and an
unreadable one into an error note, 4. write the HTML file and, when asked, every PNG.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.fs as pafs
from deltalake.exceptions import DeltaError

from bcratos.config import Settings
from jobs.catalog import Lake
from jobs.exceptions import ReportError
from jobs.report import figures
from jobs.report.decoders import (
    ClassBalance,
    ModelRun,
    load_balances,
    load_models,
    load_next_day,
)
from jobs.report.html import render_page
from jobs.report.neural import load_rates, load_stretch
from jobs.report.pipeline import (
    Registry,
    WorkerMetrics,
    dead_letters,
    load_commits,
    load_registry,
    load_worker_metrics,
    table_infos,
)
from jobs.report.sections import Missing, Section, Table

logger = logging.getLogger(__name__)

MAX_MODELS: Final = 6  # newest exported models that get training curves and confusion matrices
NEXT_DAY_FILE: Final = Path("evaluations") / "next-day.json"  # under the data directory
REPORT_FILE: Final = Path("report") / "index.html"  # under the data directory
_SECTION_ERRORS: Final = (DeltaError, OSError, ValueError, KeyError, TypeError, pa.ArrowException)


@dataclass(frozen=True)
class ReportResult:
    """Outcome of `build_report`: the file written, its figures, sections without data, failures."""

    path: Path
    size_bytes: int
    figures: int
    missing: list[str]  # titles of sections with a "no data" note
    failed: list[str]  # titles of sections that could not be built, with the error
    png_paths: list[Path] = field(default_factory=list)
    duration_s: float = 0.0


@dataclass
class _Sources:
    """Sources that several sections read, loaded once."""

    lake: Lake
    settings: Settings
    evaluation_path: Path
    balances: list[ClassBalance] | Missing
    runs: list[ModelRun] | Missing
    registry: Registry
    workers: list[WorkerMetrics]


def default_output(settings: Settings) -> Path:
    """Return ``<data_dir>/report/index.html``."""
    return settings.data_dir / REPORT_FILE


def default_evaluation(settings: Settings) -> Path:
    """Return ``<data_dir>/evaluations/next-day.json``, where the next-day protocol writes."""
    return settings.data_dir / NEXT_DAY_FILE


def build_report(
    settings: Settings,
    *,
    output: Path | None = None,
    png_dir: Path | None = None,
    evaluation: Path | None = None,
    max_models: int = MAX_MODELS,
) -> ReportResult:
    """Build the report and write it to `output` (default `default_output`).

    Raises `ReportError` when the lake folder does not exist, and `ResidencyError` when the
    lake URI lies outside the allowed regions.
    """
    started = time.perf_counter()

    # 1. The lake folder.
    lake = Lake.from_settings(settings)
    _check_lake(lake)

    # 2. Shared sources.
    sources = _Sources(
        lake=lake,
        settings=settings,
        evaluation_path=evaluation or default_evaluation(settings),
        balances=load_balances(lake),
        runs=load_models(settings.data_dir / "models", limit=None),
        registry=load_registry(lake),
        workers=load_worker_metrics(settings.data_dir / "streams"),
    )

    # 3. Sections.
    builders: list[tuple[str, str, Callable[[_Sources, Section, int], None]]] = [
        ("overview", "Lake at a glance", _overview),
        ("raster", "1. Spike counts of one session stretch", _raster),
        ("drift", "2. Firing-rate drift across days", _drift),
        ("balance", "3. Class balance per dataset", _balance),
        ("curves", "4. Training curves", _curves),
        ("confusion", "5. Confusion matrices (test split)", _confusion),
        ("accuracy", "6. Accuracy by days since training", _accuracy),
        ("ingestion", "7. Ingestion throughput and freshness", _ingestion),
    ]
    sections = []
    for key, title, builder in builders:
        section = Section(key, title)
        try:
            builder(sources, section, max_models)
        except _SECTION_ERRORS as exc:
            section.error = f"{type(exc).__name__}: {exc}"
            logger.warning("report section %r failed: %s", title, section.error)
        sections.append(section)

    # 4. Files.
    path = output or default_output(settings)
    generated = datetime.now(UTC)
    meta = [
        f"generated {generated:%Y-%m-%d %H:%M:%S} UTC",
        f"lake {lake.uri}",
        f"data directory {settings.data_dir}",
    ]
    page = render_page("bcratos report", meta, sections)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    png_paths = _write_pngs(sections, png_dir) if png_dir is not None else []
    return ReportResult(
        path=path,
        size_bytes=path.stat().st_size,
        figures=sum(len(section.figures) for section in sections),
        missing=[section.title for section in sections if section.notes and not section.figures],
        failed=[f"{section.title}: {section.error}" for section in sections if section.error],
        png_paths=png_paths,
        duration_s=time.perf_counter() - started,
    )


def _check_lake(lake: Lake) -> None:
    fs, root = lake.filesystem()
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        raise ReportError(
            f"lake folder {lake.uri} does not exist: fill it with `make run` or point "
            f"BCRATOS_DATA_DIR (or lake.uri) at an existing lake"
        )


def _write_pngs(sections: list[Section], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for section in sections:
        for figure in section.figures:
            path = folder / f"{_file_stem(figure.name)}.png"
            path.write_bytes(figure.png)
            paths.append(path)
    return paths


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


# ---------------------------------------------------------------------------------------------
# Sections


def _overview(sources: _Sources, section: Section, max_models: int) -> None:
    infos = table_infos(sources.lake)
    section.tables.append(
        Table(
            ["table", "version", "rows", "files", "size (MB)", "last commit (UTC)"],
            [
                [
                    info.name,
                    _text(info.version),
                    _text(info.rows),
                    _text(info.files),
                    "-" if info.size_bytes is None else f"{info.size_bytes / 1e6:.1f}",
                    "-" if info.last_commit is None else f"{info.last_commit:%Y-%m-%d %H:%M:%S}",
                ]
                for info in infos
            ],
            "Delta tables",
        )
    )
    section.tables.append(_pipeline_table(sources, infos))
    section.tables.append(_models_table(sources))
    jobs = sources.registry.retrain_jobs
    if jobs:
        section.tables.append(
            Table(
                ["job", "target", "state", "step", "dataset", "backend", "updated (UTC)"],
                [
                    [
                        _text(row["job_id"]),
                        _text(row["target"]),
                        _text(row["state"]),
                        _text(row["step"]),
                        _text(row["dataset"]),
                        _text(row["backend"]),
                        _time(row["updated_at"]),
                    ]
                    for row in jobs
                ],
                "Retrain jobs (registry.retrain_jobs), newest first",
            )
        )


def _pipeline_table(sources: _Sources, infos: list[Any]) -> Table:
    rows_of = {info.name: info.rows for info in infos}
    bronze = sum(rows for name, rows in rows_of.items() if name.startswith("bronze.") and rows)
    silver = sum(rows for name, rows in rows_of.items() if name.startswith("silver.") and rows)
    dead = dead_letters(sources.workers)
    datasets = sources.balances
    runs = sources.runs
    jobs = sources.registry.retrain_jobs
    states: dict[str, int] = {}
    for row in jobs or []:
        states[row["state"]] = states.get(row["state"], 0) + 1
    return Table(
        ["figure", "value"],
        [
            ["events in bronze tables", str(bronze)],
            [
                "dead-lettered events",
                str(dead)
                if dead is not None
                else f"unknown: no metrics files under {sources.settings.data_dir / 'streams'}",
            ],
            ["rows in silver tables", str(silver)],
            [
                "gold datasets",
                "0"
                if isinstance(datasets, Missing)
                else f"{len(datasets)}: {', '.join(item.name for item in datasets)}",
            ],
            ["exported models", "0" if isinstance(runs, Missing) else str(len(runs))],
            [
                "retrain jobs",
                "0"
                if not jobs
                else f"{len(jobs)}: " + ", ".join(f"{n} {s}" for s, n in sorted(states.items())),
            ],
        ],
        "Pipeline",
    )


def _models_table(sources: _Sources) -> Table:
    decided = {row["model_version"]: row for row in sources.registry.models or []}
    runs = [] if isinstance(sources.runs, Missing) else sources.runs
    rows = []
    for run in reversed(runs):
        decision = decided.pop(run.version, None)
        rows.append(
            [
                run.version,
                run.architecture,
                _text(run.dataset),
                _text(run.target),
                _score(run.balanced_accuracy),
                "not announced" if decision is None else _text(decision["decision"]),
                "-" if decision is None else _time(decision["decided_at"]),
            ]
        )
    for row in decided.values():  # decided models whose folder is not in this data directory
        rows.append(
            [
                _text(row["model_version"]),
                _text(row["architecture"]),
                _text(row["dataset"]),
                _text(row["target"]),
                _score(row["candidate_score"]),
                _text(row["decision"]),
                _time(row["decided_at"]),
            ]
        )
    return Table(
        [
            "model version",
            "architecture",
            "dataset",
            "target",
            "test score",
            "gate decision",
            "decided (UTC)",
        ],
        rows,
        "Models (models/*/config.json and registry.models); test score is the balanced "
        "accuracy on the test split, or the gate's candidate score",
    )


def _raster(sources: _Sources, section: Section, max_models: int) -> None:
    stretch = load_stretch(sources.lake)
    if isinstance(stretch, Missing):
        section.notes.append(stretch.note())
    elif stretch.counts.size == 0:
        section.notes.append(f"no data: session {stretch.session} has no steps in the stretch")
    else:
        section.figures.append(figures.raster_figure(stretch))


def _drift(sources: _Sources, section: Section, max_models: int) -> None:
    rates = load_rates(sources.lake)
    if isinstance(rates, Missing):
        section.notes.append(rates.note())
        return
    several = [subject for subject in rates if len(subject.days) > 1]
    for subject in several or rates:
        section.figures.append(figures.drift_figure(subject))
    single = [subject.subject for subject in rates if len(subject.days) == 1]
    if several and single:
        section.remarks.append(
            f"subjects with a single session day, so no drift to show: {', '.join(single)}"
        )


def _balance(sources: _Sources, section: Section, max_models: int) -> None:
    if isinstance(sources.balances, Missing):
        section.notes.append(sources.balances.note())
        return
    for balance in sources.balances:
        section.figures.append(figures.balance_figure(balance))


def _curves(sources: _Sources, section: Section, max_models: int) -> None:
    if isinstance(sources.runs, Missing):
        section.notes.append(sources.runs.note())
        return
    runs = [run for run in sources.runs[-max_models:] if run.history]
    if not runs:
        section.notes.append("no data: the exported models record no epochs")
        return
    section.figures.append(figures.curves_figure(runs))


def _confusion(sources: _Sources, section: Section, max_models: int) -> None:
    if isinstance(sources.runs, Missing):
        section.notes.append(sources.runs.note())
        return
    runs = [run for run in sources.runs[-max_models:] if run.confusion]
    if not runs:
        section.notes.append("no data: the exported models record no confusion matrix")
    for run in runs:
        section.figures.append(figures.confusion_figure(run))


def _accuracy(sources: _Sources, section: Section, max_models: int) -> None:
    evaluation = load_next_day(sources.evaluation_path)
    if isinstance(evaluation, Missing):
        section.notes.append(evaluation.note())
    runs = [] if isinstance(sources.runs, Missing) else sources.runs[-max_models:]
    figure = figures.accuracy_figure(None if isinstance(evaluation, Missing) else evaluation, runs)
    if figure is not None:
        section.figures.append(figure)
    elif isinstance(sources.runs, Missing):
        section.notes.append(sources.runs.note())


def _ingestion(sources: _Sources, section: Section, max_models: int) -> None:
    commits = load_commits(sources.lake)
    if isinstance(commits, Missing):
        section.notes.append(commits.note())
    else:
        section.figures.append(figures.ingestion_figure(commits))
        section.remarks.append(
            "The delay from a board's publish to ingestion cannot be read from the lake: "
            "anonymization replaces absolute event times with times since session start. "
            "`bench/` measures it."
        )
    if not sources.workers:
        section.notes.append(
            f"no data: no processor metrics files under "
            f"{sources.settings.data_dir / 'streams'}; run `bcratos streams start` first"
        )
        return
    section.tables.append(_workers_table(sources.workers))


def _workers_table(workers: list[WorkerMetrics]) -> Table:
    rows = []
    for worker in workers:
        values = worker.values
        if worker.stage == "ingest":
            topics = values.get("topics") or {}
            received = sum(int(counts.get("received", 0)) for counts in topics.values())
            counters = f"received {received}"
            dead = sum(int(v) for v in (values.get("dead_letter_reasons") or {}).values())
            latency = "-"
        else:
            read = sum(int(v) for v in (values.get("read") or {}).values())
            written = sum(int(v) for v in (values.get("written") or {}).values())
            counters = f"read {read}, written {written}, commits {values.get('commits', 0)}"
            dead = sum(int(v) for v in (values.get("dead_lettered") or {}).values())
            p50, largest = values.get("commit_latency_p50_s"), values.get("commit_latency_max_s")
            latency = (
                "-"
                if p50 is None
                else f"p50 {p50 * 1000:.0f} ms, max {(largest or 0) * 1000:.0f} ms"
            )
        rows.append(
            [
                worker.stage,
                str(worker.pid),
                "-" if worker.updated_at is None else f"{worker.updated_at:%Y-%m-%d %H:%M:%S}",
                counters,
                str(dead),
                latency,
                str(values.get("open_steps", "-")),
            ]
        )
    return Table(
        [
            "stage",
            "pid",
            "updated (UTC)",
            "counters",
            "dead-lettered",
            "commit latency",
            "open steps",
        ],
        rows,
        "Processor metrics files (<data_dir>/streams/*.json), last snapshot of each worker; "
        "consumer lag is read from the broker by `bcratos streams status`",
    )


def _text(value: Any) -> str:
    return "-" if value is None else str(value)


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _time(value: datetime | None) -> str:
    return "-" if value is None else f"{value:%Y-%m-%d %H:%M:%S}"
