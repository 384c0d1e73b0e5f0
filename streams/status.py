"""``bcratos streams status``: worker counters, consumer lag and lake commit figures."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from bcratos.config import Settings
from infra.lag import group_lag
from streams.processor import RAW_TOPICS
from streams.sink import ROUTES


def collect(settings: Settings) -> dict[str, Any]:
    """Gather the metrics files of running workers and the lag of both consumer groups."""
    streams = settings.streams
    return {
        "workers": _workers(settings),
        "lag": {
            streams.ingest_group: group_lag(settings, streams.ingest_group, RAW_TOPICS),
            streams.sink_group: group_lag(settings, streams.sink_group, tuple(ROUTES)),
        },
    }


def wait_until_idle(settings: Settings, *, timeout_s: float, poll_s: float = 2.0) -> bool:
    """Wait until no group lags and the sink has no open steps; return False on timeout.

    Two checks in a row must agree, because a sink may be between its read and its commit.
    """
    deadline = time.monotonic() + timeout_s
    quiet_checks = 0
    while time.monotonic() < deadline:
        status = collect(settings)
        lagging = any(
            figures.get("lag", 1) > 0 or "error" in figures
            for topics in status["lag"].values()
            for figures in topics.values()
        )
        open_steps = any(worker.get("open_steps") for worker in status["workers"])
        quiet_checks = 0 if lagging or open_steps else quiet_checks + 1
        if quiet_checks >= 2:
            return True
        time.sleep(poll_s)
    return False


def _workers(settings: Settings) -> list[dict[str, Any]]:
    folder = settings.data_dir / "streams"
    workers = []
    for path in sorted(folder.glob("*.json")):
        try:
            snapshot = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        # Files of stopped workers stay for inspection; status shows the running ones.
        if _alive(int(snapshot.get("pid", 0))):
            workers.append(snapshot)
    return workers


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def render(status: dict[str, Any]) -> str:
    """Render the status as text for a terminal."""
    lines = []
    for worker in status["workers"]:
        lines.append(f"{worker['stage']} worker pid {worker['pid']}:")
        if worker["stage"] == "ingest":
            for topic, counts in sorted(worker.get("topics", {}).items()):
                lines.append(f"  {topic}: {_counts(counts)}")
            reasons = worker.get("dead_letter_reasons") or {}
            if reasons:
                lines.append(f"  dead-letter reasons: {_counts(reasons)}")
            warnings = worker.get("warnings") or {}
            if warnings:
                lines.append(f"  warnings: {_counts(warnings)}")
        elif worker["stage"] == "monitor":
            for name in ("read", "skipped", "requests"):
                values = worker.get(name) or {}
                if values:
                    lines.append(f"  {name}: {_counts(values)}")
            lines.append(f"  undelivered volume requests: {worker.get('undelivered', 0)}")
        else:
            for name in ("read", "written", "duplicates", "dead_lettered"):
                values = worker.get(name) or {}
                if values:
                    lines.append(f"  {name.replace('_', '-')}: {_counts(values)}")
            latency = worker.get("commit_latency_p50_s")
            latency_text = f"{latency:.3f} s" if latency is not None else "n/a"
            lines.append(
                f"  commits: {worker.get('commits', 0)}, commit latency p50 {latency_text}, "
                f"open steps {worker.get('open_steps', 0)}"
            )
    if not status["workers"]:
        lines.append("no stream worker is running (start them with `bcratos streams run`)")
    for group, topics in status["lag"].items():
        lines.append(f"consumer group {group}:")
        for topic, figures in topics.items():
            if "error" in figures:
                lines.append(f"  {topic}: {figures['error']}")
            else:
                lines.append(
                    f"  {topic}: lag {figures['lag']} of {figures['end_offsets']} messages"
                )
    return "\n".join(lines)


def _counts(values: dict[str, Any]) -> str:
    return ", ".join(f"{key} {value}" for key, value in sorted(values.items()))
