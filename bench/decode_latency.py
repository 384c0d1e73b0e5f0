"""Benchmark board-side decoding: latency of one step on one CPU core.

A board decodes every model step: it appends the step's counts to its window, normalizes the
window and runs the decoder on (1, window, channels), then takes the softmax. This script
times exactly that for each architecture, with ``torch.set_num_threads(1)`` and
``torch.inference_mode``. The counts are real: one limblab session (monkey Spike, 96 channels,
50 ms bins; Miller lab, Northwestern, limblab/deprecated_limblab_analysis, testing use only).
It reports p50, p99 and the maximum over ``--steps`` steps after ``--warmup`` untimed steps.
The design target is a p99 under 1 ms against the 50 ms step budget. The decoders have
untrained weights of the default sizes, which cost the same time as trained ones.

Run from the repository root::

    .venv/bin/python bench/decode_latency.py
    .venv/bin/python bench/decode_latency.py --steps 5000
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import harness
import numpy as np
import torch

from bcratos.config import PROJECT_ROOT
from boards.replay import open_recording
from training.adapt import ChannelStats
from training.models import build_decoder, default_config

logger = logging.getLogger(__name__)

NAME = "decode_latency"
DEFAULT_RECORDING = (
    PROJECT_ROOT.parent / "shared" / "data" / "limblab-spike-wf" / "Spike_07-18-12_WF_001.mat"
)
CLASSES = ["rest", "pre_movement"] + [f"target_{number}" for number in range(1, 9)]


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recording", type=Path, default=DEFAULT_RECORDING, help="limblab file")
    parser.add_argument("--steps", type=int, default=3000, help="timed steps per decoder")
    parser.add_argument("--warmup", type=int, default=200, help="untimed steps first")
    parser.add_argument("--window", type=int, default=10, help="steps per window")
    parser.add_argument(
        "--architectures", nargs="+", default=["linear", "gru", "tcn"], help="decoders to time"
    )
    parser.add_argument("--verbose", action="store_true", help="log library messages too")
    return parser.parse_args()


def time_decoder(
    architecture: str, counts: np.ndarray, arguments: argparse.Namespace
) -> dict[str, Any]:
    """Decode ``warmup + steps`` consecutive steps one at a time; return latency percentiles."""
    channels = counts.shape[1]
    decoder = build_decoder(
        default_config(
            architecture,  # type: ignore[arg-type]
            channels={"board": channels},
            window=arguments.window,
            classes=CLASSES,
        ),
        seed=0,
    ).eval()
    stats = ChannelStats.of(counts)
    mean = torch.tensor(stats.mean, dtype=torch.float32)
    std = torch.tensor(stats.std, dtype=torch.float32)
    window = torch.zeros(arguments.window, channels)  # (time, channels), newest last

    latencies_us = []
    with torch.inference_mode():
        for step in range(arguments.warmup + arguments.steps):
            started = time.perf_counter_ns()
            step_counts = torch.from_numpy(counts[step % counts.shape[0]].astype(np.float32))
            window = torch.roll(window, shifts=-1, dims=0)
            window[-1] = (step_counts - mean) / std
            logits = decoder(window.unsqueeze(0))  # (1, classes)
            probabilities = torch.softmax(logits[0], dim=0)
            elapsed_ns = time.perf_counter_ns() - started
            if step >= arguments.warmup:
                latencies_us.append(elapsed_ns / 1000)
    assert probabilities.shape == (len(CLASSES),)

    latencies = np.asarray(latencies_us)
    figure = {
        "architecture": architecture,
        "parameters": sum(parameter.numel() for parameter in decoder.parameters()),
        "steps": int(latencies.size),
        "p50_us": round(_percentile(latencies, 50), 1),
        "p99_us": round(_percentile(latencies, 99), 1),
        "max_us": round(float(latencies.max()), 1),
        "mean_us": round(float(latencies.mean()), 1),
    }
    logger.info("%s: p50 %.1f µs, p99 %.1f µs", architecture, figure["p50_us"], figure["p99_us"])
    return figure


def _percentile(values: np.ndarray, percent: float) -> float:
    """Return the nearest-rank percentile: a measured value, never an interpolated one."""
    return float(np.percentile(values, percent, method="inverted_cdf"))


def main() -> None:
    arguments = parse_arguments()
    harness.configure_logging(arguments.verbose)
    start = harness.RunStart.now()
    torch.set_num_threads(1)
    recording = open_recording(arguments.recording, board_id="bench", subject_id="bench")
    counts = np.asarray(recording.segments[0].counts)  # (steps, channels)

    runs = [time_decoder(name, counts, arguments) for name in arguments.architectures]
    figures = {
        "parameters": {
            "recording": arguments.recording.name,
            "window": arguments.window,
            "channels": int(counts.shape[1]),
            "classes": len(CLASSES),
            "warmup_steps": arguments.warmup,
            "timed_steps": arguments.steps,
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "runs": runs,
    }
    summary = (
        f"single-step decode on 1 thread (window {arguments.window} × {counts.shape[1]} ch, "
        f"{len(CLASSES)} classes, normalization + forward + softmax, {arguments.steps} steps): "
        + ", ".join(
            f"{run['architecture']} p50 {run['p50_us']:.0f} µs p99 {run['p99_us']:.0f} µs"
            for run in runs
        )
        + " (target p99 < 1 ms)"
    )
    harness.record_result(NAME, start, figures=figures, summary=summary)
    print(summary)


if __name__ == "__main__":
    main()
