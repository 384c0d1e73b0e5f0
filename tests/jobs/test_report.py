"""`bcratos report` end to end: a lake and data folder in a temporary directory, CLI, HTML."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from report_sources import MODEL_VERSION, SUBJECT_B, write_all, write_lake_tables
from typer.testing import CliRunner

from bcratos.cli import app
from bcratos.config import Settings, load_settings
from infra.retrain_jobs import RetrainJob, record_job
from jobs.report import build_report
from tests.training.gold import SPIKE_FILES
from training.registry import ModelEntry, record_model

IMAGE: str = '<img src="data:image/png;base64,'
PNG_SIGNATURE: bytes = b"\x89PNG\r\n\x1a\n"
SECTIONS: tuple[str, ...] = (
    "raster",
    "drift",
    "balance",
    "curves",
    "confusion",
    "accuracy",
    "ingestion",
)


def _environment(data_dir: Path) -> dict[str, str]:
    # The lake URI too, so that a lake.uri from the environment or bcratos.toml does not apply.
    return {"BCRATOS_DATA_DIR": str(data_dir), "BCRATOS_LAKE__URI": str(data_dir / "lake")}


def _run_report(data_dir: Path, *arguments: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["report", *arguments], env=_environment(data_dir))
    return result.exit_code, result.output


def _sections(html: str) -> dict[str, str]:
    """Return the HTML of each section by its id."""
    parts = re.split(r'<section id="([a-z]+)">', html)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


@pytest.fixture(scope="module")
def full_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A data folder with every source, and the report's HTML."""
    data_dir = tmp_path_factory.mktemp("report-full")
    write_all(data_dir)
    output = data_dir / "out" / "report.html"
    code, text = _run_report(data_dir, "--output", str(output), "--png-dir", str(data_dir / "png"))
    assert code == 0, text
    return data_dir, output.read_text(encoding="utf-8")


def test_report_has_image_per_section(full_report: tuple[Path, str]) -> None:
    _data_dir, html = full_report
    sections = _sections(html)

    assert html.count(IMAGE) == len(SECTIONS)
    for key in SECTIONS:
        assert IMAGE in sections[key], f"section {key} has no image"
        assert "<figcaption>" in sections[key]
    assert "no data" not in html


def test_report_is_self_contained(full_report: tuple[Path, str]) -> None:
    _data_dir, html = full_report

    assert "http://" not in html
    assert "https://" not in html
    assert "<script" not in html
    assert "<link" not in html
    sources = re.findall(r'src="([^"]*)"', html)
    assert len(sources) == len(SECTIONS)
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1]).startswith(PNG_SIGNATURE)


def test_report_png_dir_has_each_figure(full_report: tuple[Path, str]) -> None:
    data_dir, _html = full_report
    files = sorted(path.name for path in (data_dir / "png").iterdir())

    assert len(files) == len(SECTIONS)
    assert "raster.png" in files
    assert f"confusion-{MODEL_VERSION}.png" in files
    for name in files:
        assert (data_dir / "png" / name).read_bytes().startswith(PNG_SIGNATURE)


def test_report_header_counts(full_report: tuple[Path, str]) -> None:
    _data_dir, html = full_report
    overview = _sections(html)["overview"]

    assert "<td>bronze.behavior_events</td>" in overview
    assert "<td>silver.spike_steps</td>" in overview
    assert '<td>dead-lettered events</td><td class="number">7</td>' in overview
    assert "<td>1: demo</td>" in overview
    assert f"<td>{MODEL_VERSION}</td>" in overview
    assert "<td>not announced</td>" in overview


def test_report_remarks_single_day_subject(full_report: tuple[Path, str]) -> None:
    _data_dir, html = full_report

    assert f"no drift to show: {SUBJECT_B}" in _sections(html)["drift"]


def test_report_notes_missing_sources(tmp_path: Path) -> None:
    write_lake_tables(tmp_path)

    code, text = _run_report(tmp_path)

    assert code == 0, text
    html = (tmp_path / "report" / "index.html").read_text(encoding="utf-8")
    sections = _sections(html)
    assert html.count(IMAGE) == 3  # raster, drift, ingestion
    for key in ("curves", "confusion"):
        assert IMAGE not in sections[key]
        assert "no data: no exported models under" in sections[key]
        assert "run `bcratos train --dataset NAME` first" in sections[key]
    assert "run `bcratos jobs prepare --name NAME` first" in sections["balance"]
    assert "run `bcratos evaluate --protocol next-day --dataset NAME` first" in sections["accuracy"]
    assert "no processor metrics files" in sections["ingestion"]
    assert "no data for section '4. Training curves'" in text


def test_report_without_lake_exits_2(tmp_path: Path) -> None:
    code, text = _run_report(tmp_path)

    assert code == 2
    assert f"lake folder {tmp_path / 'lake'} does not exist" in text
    assert not (tmp_path / "report").exists()


def test_report_shows_gate_and_jobs(tmp_path: Path) -> None:
    write_all(tmp_path)
    settings = load_settings(data_dir=tmp_path, lake={"uri": str(tmp_path / "lake")})
    decided = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    record_model(
        settings,
        ModelEntry(
            target="global",
            model_version=MODEL_VERSION,
            created_at=decided,
            decided_at=decided,
            artifact_uri=str(tmp_path / "models" / MODEL_VERSION),
            weights_sha256="0" * 64,
            decision="rejected",
            reason="candidate 0.30 below current 0.40",
            architecture="linear",
        ),
    )
    record_job(
        settings,
        RetrainJob(
            job_id="job-1",
            target="global",
            dataset="demo",
            backend="local",
            state="running",
            step="train",
        ),
    )

    result = build_report(settings)

    overview = _sections(result.path.read_text(encoding="utf-8"))["overview"]
    assert "<td>rejected</td><td>2026-01-02 03:04:05</td>" in overview
    assert "<td>job-1</td><td>global</td><td>running</td><td>train</td>" in overview
    assert "<td>1: 1 running</td>" in overview
    assert result.failed == []


def test_next_day_output_feeds_report(tmp_path: Path) -> None:
    write_lake_tables(tmp_path)
    arguments = ["evaluate", "--protocol", "next-day", "--decoders", "lda"]
    for path in SPIKE_FILES[:4]:
        arguments += ["--recordings", str(path)]

    evaluated = CliRunner().invoke(app, arguments, env=_environment(tmp_path))

    assert evaluated.exit_code == 0, evaluated.output
    assert (tmp_path / "evaluations" / "next-day.json").exists()
    settings: Settings = load_settings(data_dir=tmp_path, lake={"uri": str(tmp_path / "lake")})
    accuracy = _sections(build_report(settings).path.read_text(encoding="utf-8"))["accuracy"]
    assert IMAGE in accuracy
    assert "next-day.json: trial accuracy of the next-day protocol on 4 limblab" in accuracy
