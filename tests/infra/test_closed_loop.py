"""The closed loop of ``bcratos loop`` (what ``make run`` runs).

The integration tests run the command on a reduced set of the real recordings, with a broker of
their own, on the ``local`` and the ``slurm`` backend. They check what every stage left behind:
lake rows, dataset manifests, retrain jobs with volume and drift evidence, signed and announced
models, and the decoder that the replayed Spike board installed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from deltalake import DeltaTable

from bcratos.config import load_settings
from infra.closed_loop import (
    LoopSummary,
    plan_replays,
    render_summary,
    spike_sessions,
)
from schemas.artifacts import SIGNATURE_FILE
from tests.support.pipeline_env import DATA, REPO

SPIKE = DATA / "limblab-spike-wf"
# Three sessions of July 2012 before the first model, three of late August after it: the
# later ones are a month away from the training data, so their spike rates have drifted.
INITIAL = ("Spike_07-18-12_WF_001.mat", "Spike_07-19-12_WF_001.mat", "Spike_07-20-12_WF_001.mat")
LATER = ("Spike_08-20-12_WF_001.mat", "Spike_08-21-12_WF_001.mat", "Spike_08-22-12_WF_001.mat")


def _touch(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


def test_spike_sessions_sorted_by_recording_day(tmp_path: Path) -> None:
    # Month-first names sort wrongly by name across years; the loop sorts by date.
    _touch(
        tmp_path / "limblab-spike-wf",
        ["Spike_01-05-13_WF_001.mat", "Spike_12-30-12_WF_001.mat", "Spike_07-18-12_WF_002.mat"],
    )

    names = [path.name for path in spike_sessions(tmp_path)]

    assert names == [
        "Spike_07-18-12_WF_002.mat",
        "Spike_12-30-12_WF_001.mat",
        "Spike_01-05-13_WF_001.mat",
    ]


def test_plan_splits_spike_sessions_and_adds_other_boards(tmp_path: Path) -> None:
    _touch(tmp_path / "limblab-spike-wf", [f"Spike_07-{day}-12_WF_001.mat" for day in (18, 19, 20)])
    _touch(tmp_path / "limblab-jango", ["Jango_20141203_default_offline_data.mat"])
    (tmp_path / "icub-grasp").mkdir()

    first, later = plan_replays(tmp_path, initial_days=2)

    assert [board.board_id for board in first] == [
        "limblab-spike-board",
        "limblab-jango-board",
        "icub-hand-board",
    ]
    assert [path.name for path in first[0].paths] == [
        "Spike_07-18-12_WF_001.mat",
        "Spike_07-19-12_WF_001.mat",
    ]
    assert [path.name for path in later.paths] == ["Spike_07-20-12_WF_001.mat"]
    assert later.board_id == first[0].board_id


def test_plan_needs_later_sessions(tmp_path: Path) -> None:
    _touch(tmp_path / "limblab-spike-wf", ["Spike_07-18-12_WF_001.mat"])

    with pytest.raises(ValueError, match="1 Spike sessions.*initial_days=1"):
        plan_replays(tmp_path, initial_days=1)


def test_plan_names_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"{tmp_path / 'nowhere'} does not exist"):
        plan_replays(tmp_path / "nowhere", initial_days=1)


def test_summary_lines_name_every_figure() -> None:
    summary = LoopSummary(
        published={"SpikeFrame": 10, "BehaviorEvent": 2},
        lake_rows={"bronze.spike_frames": 10},
        dead_lettered=1,
        datasets=["global-retrain-1"],
        jobs=[{"job_id": "j1", "target": "global", "reasons": ["drift"], "state": "succeeded"}],
        models=[
            {
                "model_version": "m1",
                "target": "global",
                "decision": "announced",
                "balanced_accuracy": 0.8,
                "previous_model_score": 0.5,
            }
        ],
        installed={"limblab-spike-board": "m1"},
        report=Path("/tmp/report.html"),
        elapsed_s=90.0,
    )

    text = "\n".join(render_summary(summary))

    assert "events published by boards: 12" in text
    assert "dead-lettered: 1" in text
    assert "retrain job j1 (global, drift): succeeded" in text
    assert "test balanced accuracy 0.800 (previous model on the same data: 0.500)" in text
    assert "board limblab-spike-board: decoder m1" in text


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _recordings(tmp_path: Path) -> Path:
    folder = tmp_path / "recordings" / "limblab-spike-wf"
    folder.mkdir(parents=True)
    for name in (*INITIAL, *LATER):
        source = SPIKE / name
        if not source.is_file():
            pytest.fail(f"recording {source} is missing; see ../shared/data/README.md")
        (folder / name).symlink_to(source)
    return folder.parent


@pytest.mark.integration
@pytest.mark.timeout(1500)
@pytest.mark.parametrize("backend", ["local", "slurm"])
def test_loop_retrains_on_drift_and_boards_install(tmp_path: Path, backend: str) -> None:
    if backend == "slurm" and shutil.which("sbatch") is None:
        pytest.fail("sbatch is not installed; run the tests with `make test` (it runs make slurm)")
    data_dir = tmp_path / "data"
    environment = {
        **os.environ,
        "BCRATOS_DATA_DIR": str(data_dir),
        "BCRATOS_KAFKA__PORT": str(_free_port()),
        "BCRATOS_KAFKA__CONTROLLER_PORT": str(_free_port()),
        "BCRATOS_KAFKA__HEAP": "512m",
        "BCRATOS_HPC__BACKEND": backend,
        "BCRATOS_ORCHESTRATOR__DEBOUNCE_S": "5",
        "BCRATOS_ORCHESTRATOR__POLL_INTERVAL_S": "1",
        "BCRATOS_MONITORS__CHECK_INTERVAL_S": "1",
        "BCRATOS_STREAMS__IDLE_FLUSH_S": "3",
        "BCRATOS_STREAMS__METRICS_INTERVAL_S": "2",
    }
    command = [
        sys.executable, "-m", "bcratos.cli", "loop",
        "--recordings", str(_recordings(tmp_path)),
        "--initial-days", str(len(INITIAL)),
        "--timeout", "600",
        "--stop",
    ]  # fmt: skip

    completed = subprocess.run(
        command, env=environment, cwd=REPO, capture_output=True, text=True, timeout=1400,
        check=False,
    )  # fmt: skip

    logs = "\n".join(
        f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
        for path in sorted((data_dir / "logs").glob("*.log"))
    )
    assert completed.returncode == 0, f"{completed.stdout}\n{completed.stderr}\n{logs}"
    output = completed.stdout
    settings = load_settings(data_dir=data_dir)
    lake = Path(settings.lake_uri)

    # Lake: every replayed frame of the six sessions is in bronze, and steps in silver.
    frames = DeltaTable(str(lake / "bronze" / "spike_frames")).to_pyarrow_table(
        columns=["session_day"]
    )
    assert frames.num_rows > 6 * 10_000
    assert len(set(frames.column("session_day").to_pylist())) == 6
    assert DeltaTable(str(lake / "silver" / "spike_steps")).to_pyarrow_table(
        columns=["step_index"]
    ).num_rows >= frames.num_rows

    # Jobs: one started by volume, one whose reasons include drift, both succeeded.
    jobs = DeltaTable(str(lake / "registry" / "retrain_jobs")).to_pyarrow_table().to_pylist()
    assert all(job["state"] == "succeeded" for job in jobs), jobs
    assert all(job["backend"] == backend for job in jobs)
    drift_jobs = [job for job in jobs if "drift" in json.loads(job["reasons"])]
    assert drift_jobs, jobs
    drift_requests = [
        request
        for request in json.loads(drift_jobs[-1]["evidence"]).values()
        if request["reason"] == "drift"
    ]
    assert drift_requests[0]["evidence"]["drift_score"] >= settings.monitors.drift_threshold

    # Datasets: a manifest for each job's dataset.
    for job in jobs:
        manifest = json.loads((lake / "gold" / "manifests" / f"{job['dataset']}.json").read_text())
        assert manifest["content_hash"]

    # Models: two announced and signed; the board installed the drift-retrained one.
    models = DeltaTable(str(lake / "registry" / "models")).to_pyarrow_table().to_pylist()
    announced = [row for row in models if row["decision"] == "announced"]
    assert len(announced) >= 2
    newest = max(announced, key=lambda row: row["decided_at"])
    assert newest["dataset"] == drift_jobs[-1]["dataset"]
    artifact = Path(newest["artifact_uri"].removeprefix("file://"))
    assert (artifact / SIGNATURE_FILE).is_file(), artifact
    installed = data_dir / "boards" / "limblab-spike-board" / "models"
    assert any(installed.glob(f"*/{newest['model_version']}")), list(installed.rglob("*"))[:20]
    assert f"board limblab-spike-board: decoder {newest['model_version']}" in output

    # The Spike board decoded the later sessions with the first model and published its outputs.
    first_model = min(announced, key=lambda row: row["decided_at"])["model_version"]
    outputs = DeltaTable(str(lake / "bronze" / "decoder_outputs")).to_pyarrow_table(
        columns=["model_version", "probabilities"]
    )
    assert outputs.num_rows > 3 * 10_000
    assert set(outputs.column("model_version").to_pylist()) == {first_model}
    assert "of which" in output
    assert "outputs of its decoder" in output

    # Report, and the stack stopped by --stop.
    assert (data_dir / "report" / "index.html").is_file()
    assert "stopped the orchestrator, the processors and the broker" in output
