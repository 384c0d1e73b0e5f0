"""Benchmark decoder training: windows (samples) per second through ``training.train.train``.

The windows come from one real limblab session (monkey Spike, 96 channels, 50 ms bins; Miller
lab, Northwestern, limblab/deprecated_limblab_analysis, testing use only): every step with a
full window is a sample, its counts z-scored with the session's own statistics. Labels are
the step's trial target (rest outside movement), as a dataset would give them, although the
figure does not depend on them. Each architecture trains for ``--epochs`` epochs on CPU with
torch's default thread count and with one thread, and on CUDA (autocast) when a GPU is
present. The figure is the median of the epochs' samples per second. On a machine busy with
other processes the default thread count can be many times slower than one thread, because
OpenMP threads spin while they wait for each other. ``OMP_WAIT_POLICY=PASSIVE`` avoids that.

Run from the repository root::

    .venv/bin/python bench/train_samples.py
    .venv/bin/python bench/train_samples.py --epochs 3 --architectures gru
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

import harness
import numpy as np
import torch

from bcratos.config import PROJECT_ROOT
from boards.replay import open_recording
from training.adapt import ChannelStats
from training.data import WindowDataset
from training.models import build_decoder, default_config
from training.train import TrainConfig, train

logger = logging.getLogger(__name__)

NAME = "train_samples"
DEFAULT_RECORDING = (
    PROJECT_ROOT.parent / "shared" / "data" / "limblab-spike-wf" / "Spike_07-18-12_WF_001.mat"
)


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recording", type=Path, default=DEFAULT_RECORDING, help="limblab file")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per measurement")
    parser.add_argument("--batch-size", type=int, default=256, help="windows per batch")
    parser.add_argument("--window", type=int, default=10, help="steps per window")
    parser.add_argument(
        "--architectures", nargs="+", default=["linear", "gru", "tcn"], help="decoders to train"
    )
    parser.add_argument("--verbose", action="store_true", help="log library messages too")
    return parser.parse_args()


def session_windows(path: Path, window: int) -> tuple[WindowDataset, list[str]]:
    """Return the windows of every full-window step of one session, and the class names."""
    recording = open_recording(path, board_id="bench", subject_id="bench")
    counts = recording.segments[0].counts  # (steps, channels)
    bin_us = (recording.bin_ms or 50) * 1000
    labels = np.zeros(counts.shape[0], dtype=np.int64)
    trials: dict[int, dict[str, Any]] = {}
    for marker in recording.markers:
        if marker.trial_id is not None:
            trials.setdefault(marker.trial_id, {})[marker.kind] = marker
    for markers in trials.values():
        if {"go_cue", "trial_end", "class_label"} <= markers.keys():
            first = -(-markers["go_cue"].offset_us // bin_us)
            last = markers["trial_end"].offset_us // bin_us
            labels[first:last] = int(markers["class_label"].label.split("_")[-1])
    features = ChannelStats.of(counts).apply(counts)
    indexes = np.arange(window - 1, counts.shape[0], dtype=np.int64)
    subjects = np.zeros(counts.shape[0], dtype=np.int32)
    classes = ["rest"] + [f"target_{number}" for number in range(1, int(labels.max()) + 1)]
    return WindowDataset(features, labels, subjects, indexes, window), classes


def measure(
    dataset: WindowDataset,
    classes: list[str],
    architecture: str,
    *,
    device: str,
    threads: int | None,
    arguments: argparse.Namespace,
) -> dict[str, Any]:
    """Train one decoder and return its samples per second."""
    config = default_config(
        architecture,  # type: ignore[arg-type]
        channels={"bench": dataset.features.shape[1]},
        window=dataset.window,
        classes=classes,
    )
    result = train(
        build_decoder(config, seed=0),
        dataset,
        None,
        TrainConfig(
            epochs=arguments.epochs,
            batch_size=arguments.batch_size,
            patience=0,
            device=device,
            threads=threads,
            progress=False,
        ),
    )
    rates = [record.samples_per_s for record in result.history]
    figure = {
        "architecture": architecture,
        "device": device,
        "threads": torch.get_num_threads() if device == "cpu" else None,
        "samples_per_epoch": len(dataset),
        "epochs": len(rates),
        "samples_per_s_each_epoch": [round(rate) for rate in rates],
        "samples_per_s": round(float(np.median(rates))),
    }
    logger.info("%s on %s: %s samples/s", architecture, device, figure["samples_per_s"])
    return figure


def main() -> None:
    arguments = parse_arguments()
    harness.configure_logging(arguments.verbose)
    start = harness.RunStart.now()
    dataset, classes = session_windows(arguments.recording, arguments.window)
    default_threads = torch.get_num_threads()

    runs = []
    for architecture in arguments.architectures:
        for threads in (default_threads, 1):
            runs.append(
                measure(
                    dataset,
                    classes,
                    architecture,
                    device="cpu",
                    threads=threads,
                    arguments=arguments,
                )
            )
        if torch.cuda.is_available():
            runs.append(
                measure(
                    dataset, classes, architecture, device="cuda", threads=None, arguments=arguments
                )
            )
    torch.set_num_threads(default_threads)

    figures = {
        "parameters": {
            "recording": arguments.recording.name,
            "epochs": arguments.epochs,
            "batch_size": arguments.batch_size,
            "window": arguments.window,
            "channels": int(dataset.features.shape[1]),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch": torch.__version__,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        },
        "runs": runs,
    }
    parts = [
        f"{run['architecture']} {run['device']}"
        + (f" {run['threads']} thr" if run["threads"] else "")
        + f" {run['samples_per_s']:,}"
        for run in runs
    ]
    gpu = "" if torch.cuda.is_available() else "; no GPU on this machine"
    if "OMP_WAIT_POLICY" in os.environ:
        gpu += f"; OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}"
    summary = (
        f"training samples/s (window {arguments.window} × {dataset.features.shape[1]} ch, batch "
        f"{arguments.batch_size}, one limblab session of {len(dataset):,} windows): "
        + ", ".join(parts)
        + gpu
    )
    harness.record_result(NAME, start, figures=figures, summary=summary)
    print(summary)


if __name__ == "__main__":
    main()
