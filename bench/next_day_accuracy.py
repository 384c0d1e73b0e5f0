"""Record the next-day protocol's accuracies: trial-level, on the limblab Spike sessions.

Runs ``training.nextday.run_next_day`` straight on the recording files, so no lake is needed.
For each day from the 4th to the last, the decoders train on all earlier days. They classify
the target of each rewarded trial of that day from the 10 steps after the go cue, in four
settings: supervised 5-fold within the day, pooled without adaptation, label-free per-day
z-scoring and label-free read-in alignment. The figures are means over the test days, next to
the published reference figures of a linear discriminant on summed counts. Data: monkey
Spike, 16 daily sessions, 96-channel Utah array, 50 ms bins; Miller lab, Northwestern
(limblab/deprecated_limblab_analysis), testing use only.

Run from the repository root (about 10 minutes with the default decoders on a 2-core
machine)::

    .venv/bin/python bench/next_day_accuracy.py
    .venv/bin/python bench/next_day_accuracy.py --decoders lda linear
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import harness
import torch

from bcratos.config import PROJECT_ROOT
from training.nextday import REFERENCE, SETTINGS, days_from_recordings, render_table, run_next_day

logger = logging.getLogger(__name__)

NAME = "next_day_accuracy"
DEFAULT_FOLDER = PROJECT_ROOT.parent / "shared" / "data" / "limblab-spike-wf"


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, default=DEFAULT_FOLDER, help="limblab .mat files")
    parser.add_argument(
        "--decoders", nargs="+", default=["lda", "linear", "gru", "tcn"], help="decoders to run"
    )
    parser.add_argument("--epochs", type=int, default=30, help="epochs of the neural decoders")
    parser.add_argument("--seed", type=int, default=0, help="seed of folds and training")
    parser.add_argument("--verbose", action="store_true", help="log library messages too")
    return parser.parse_args()


def main() -> None:
    arguments = parse_arguments()
    harness.configure_logging(arguments.verbose)
    start = harness.RunStart.now()
    trial_days = days_from_recordings(sorted(arguments.folder.glob("*.mat")))
    result = run_next_day(
        trial_days, arguments.decoders, epochs=arguments.epochs, seed=arguments.seed
    )
    print(render_table(result, per_day=True))

    means = result.as_dict()["mean"]
    figures = {
        "parameters": {
            "folder": arguments.folder.name,
            "decoders": arguments.decoders,
            "epochs": arguments.epochs,
            "seed": arguments.seed,
            "torch": torch.__version__,
        },
        "reference_lda": REFERENCE,
        **result.as_dict(),
    }
    cells = []
    for decoder, by_setting in means.items():
        values = "/".join(
            f"{by_setting[setting]:.3f}" for setting in SETTINGS if setting in by_setting
        )
        cells.append(f"{decoder} {values}")
    summary = (
        f"next-day trial accuracy, mean over {len(result.days)} test days of limblab Spike, "
        "supervised within day / pooled / per-day z-score / read-in aligned: "
        + "; ".join(cells)
        + f" (reference lda {REFERENCE['supervised']:.2f}/{REFERENCE['pooled']:.2f}/"
        f"{REFERENCE['zscore']:.2f}; seed {arguments.seed}, {arguments.epochs} epochs)"
    )
    harness.record_result(NAME, start, figures=figures, summary=summary)
    print(summary)


if __name__ == "__main__":
    main()
