"""Run one job's command from its JSON spec and record how it ended.

Usage: ``python launcher.py SPEC_JSON``. The spec contains ``argv`` (a list of strings, executable
first), ``cwd`` and ``exit_code_file``. The command runs as a child process without a shell;
SIGTERM, SIGINT, SIGHUP, SIGUSR1 and SIGUSR2 sent to the launcher are passed on to it. When the
child ends, the launcher writes ``{"exit_code": N, "signal": S}`` to ``exit_code_file``, where a
child ended by signal S gets exit code 128 + S, and exits with that code.

This file imports only the standard library: the Slurm backend copies it into the job folder
and runs it with the compute node's Python, where bcratos need not be installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from types import FrameType

FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
SPEC_ERROR_EXIT_CODE = 2
"""Exit code of the launcher itself when the spec is unreadable or the program cannot start."""


def read_spec(path: str) -> tuple[list[str], str, str]:
    """Return the argument list, working directory and exit code file of the spec at ``path``."""
    with open(path, encoding="utf-8") as spec_file:
        spec = json.load(spec_file)
    argv = spec["argv"]
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise ValueError(f"{path}: argv must be a non-empty list of strings, got {argv!r}")
    return argv, str(spec["cwd"]), str(spec["exit_code_file"])


def record_exit(path: str, exit_code: int, signal_number: int | None) -> None:
    """Write the exit record atomically, so a reader never sees a partial file."""
    folder = os.path.dirname(path) or "."
    descriptor, temporary = tempfile.mkstemp(prefix=".exit_code.", dir=folder)
    with os.fdopen(descriptor, "w") as out:
        json.dump({"exit_code": exit_code, "signal": signal_number}, out)
    os.replace(temporary, path)


def main(arguments: list[str]) -> int:
    if len(arguments) != 1:
        print("usage: launcher.py SPEC_JSON", file=sys.stderr)
        return SPEC_ERROR_EXIT_CODE
    try:
        argv, cwd, exit_code_file = read_spec(arguments[0])
    except (OSError, ValueError, KeyError) as exc:
        print(f"launcher: cannot read job spec {arguments[0]}: {exc}", file=sys.stderr)
        return SPEC_ERROR_EXIT_CODE

    # Handlers go in before the child starts; a signal that arrives in between is kept and
    # passed on as soon as the child exists.
    pending: list[int] = []
    children: list[subprocess.Popen[bytes]] = []

    def forward(signal_number: int, _frame: FrameType | None) -> None:
        if not children:
            pending.append(signal_number)
            return
        with contextlib.suppress(ProcessLookupError):
            children[0].send_signal(signal_number)

    for forwarded in FORWARDED_SIGNALS:
        signal.signal(forwarded, forward)

    try:
        child = subprocess.Popen(argv, cwd=cwd)
    except OSError as exc:
        print(f"launcher: cannot start {argv[0]!r} in {cwd}: {exc}", file=sys.stderr)
        record_exit(exit_code_file, SPEC_ERROR_EXIT_CODE, None)
        return SPEC_ERROR_EXIT_CODE
    children.append(child)
    for early_signal in pending:
        forward(early_signal, None)

    returncode = child.wait()
    signal_number = -returncode if returncode < 0 else None
    exit_code = 128 + signal_number if signal_number is not None else returncode
    record_exit(exit_code_file, exit_code, signal_number)
    return exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
