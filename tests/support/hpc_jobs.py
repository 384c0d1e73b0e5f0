"""Settings with a small Python template for the integration tests of the HPC backends."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from bcratos.config import Settings, load_settings

# Prints a line on each stream, sleeps, then exits with the requested code.
EXIT_PROGRAM = (
    "import sys, time; print('started', flush=True); print('to stderr', file=sys.stderr); "
    "time.sleep({sleep_s}); print('done'); sys.exit({code})"
)


def exit_template() -> dict[str, Any]:
    """Return the ``exit`` template: a Python one-liner with two validated int parameters."""
    return {
        "executable": sys.executable,
        "args": ["-c", EXIT_PROGRAM],
        "parameters": {
            "code": {"type": "int", "min": 0, "max": 255},
            "sleep_s": {"type": "int", "min": 0, "max": 120, "default": 0},
        },
        "resources": {"cpus": 1, "memory_mb": 256, "time_limit_min": 5},
    }


def hpc_settings(data_dir: Path, backend: str, **sections: Any) -> Settings:
    """Return settings whose only added template is ``exit``, on ``backend``."""
    hpc = {"backend": backend, "templates": {"exit": exit_template()}, **sections}
    return load_settings(data_dir=data_dir, hpc=hpc)
