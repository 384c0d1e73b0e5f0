"""Shared parts of the benchmarks: a private Kafka stack, child processes and result records.

Every benchmark starts a broker of its own on free loopback ports, with its data in a new
temporary folder, and stops it and deletes the folder when it ends, also on failure. It never
uses the stack of ``make run`` (``.bcratos/``, ports 9092 and 9093) or of ``make test``
(``.bcratos-test/``, ports 19092 and 19093).

Each benchmark writes ``bench/results/<name>.json`` and appends one row to
``docs/benchmarks.md``, creating that page with its header on first use.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Final, TextIO
from urllib.parse import unquote

from confluent_kafka import Consumer, TopicPartition

from bcratos.config import PROJECT_ROOT, Settings, load_settings
from infra import broker, stack

logger = logging.getLogger(__name__)

BENCH_DIR: Final = Path(__file__).resolve().parent
RESULTS_DIR: Final = BENCH_DIR / "results"
BENCHMARKS_PAGE: Final = PROJECT_ROOT / "docs" / "benchmarks.md"

# Ports of the `make run` and `make test` stacks, which a benchmark must never bind.
RESERVED_PORTS: Final = frozenset({9092, 9093, 19092, 19093})

CHILD_STOP_TIMEOUT_S: Final = 30.0

_PAGE_INTRODUCTION: Final = """\
# Benchmarks

Figures measured by the scripts in `bench/` on the machine named in each row. They describe
that machine on that day and are not targets. The targets are in the design document, under
"Performance targets". Each script starts a Kafka broker of its own on free loopback ports
with its data in a temporary folder, writes its full result to `bench/results/<name>.json`
and appends one row to the table at the end of this page. Run them from the repository root
with the project's virtual environment, for example `.venv/bin/python bench/ingest_throughput.py`.

"""

_BENCHMARK_DESCRIPTIONS: Final = (
    (
        "publish_throughput.py",
        "Spike frames per second that one gateway `BoardPublisher` (1,000 simulated boards, "
        "96 channels) publishes into the broker as fast as it can, final flush included, next "
        "to the simulator alone and the simulator plus Avro encoding, so that the publisher's "
        "share is visible.",
    ),
    (
        "ingest_throughput.py",
        "A bare confluent-kafka consume loop over a preloaded `raw.spikes` topic (no decoding), "
        "then the real processors (`python -m streams.runner ingest`, one or more workers, and "
        "`python -m streams.runner sink`) over the same data: spike frames per second from "
        "their start until every frame is a row of `bronze/spike_frames`, the ingest stage "
        "alone (until `anon.spikes` contains every frame) and, in the staged run, the sink alone. "
        "Ratios are to the bare loop.",
    ),
    (
        "freshness.py",
        "Time from publish to the row being visible in `bronze/spike_frames`, p50 and p99, at "
        "a paced load while both processors run, split into the ingest stage (until the "
        "`anon.spikes` message) and the sink. Visibility is the modification time of the "
        "Delta commit file that added the row.",
    ),
    (
        "profile_stages.py",
        "cProfile of `IngestPipeline.process` and of the lake sink's poll loop, both in the "
        "benchmark's own process without Kafka between them, and of one faust ingest worker "
        "process, with the functions that take the most time. Rates and CPU time per message "
        "come from a run without the profiler.",
    ),
    (
        "train_samples.py",
        "Decoder training throughput (windows per second through `training.train.train`) for "
        "the linear, GRU and TCN decoders on the windows of one limblab session, on CPU with "
        "torch's default thread count and with one thread, and on CUDA with autocast where a "
        "GPU is present. No broker.",
    ),
    (
        "decode_latency.py",
        "Board-side decode of one step on one CPU core (`torch.set_num_threads(1)`): window "
        "update, normalization, forward pass on (1, window, channels) and softmax; p50, p99 "
        "and maximum per decoder, against the 1 ms target. No broker.",
    ),
    (
        "next_day_accuracy.py",
        "Trial-level accuracy of the next-day protocol on the limblab Spike sessions (train "
        "on all earlier days, test on each day from the 4th): supervised within the day, "
        "pooled without adaptation, label-free per-day z-scoring and label-free read-in "
        "alignment, next to the published linear-discriminant reference. No broker.",
    ),
)

_PAGE_NOTES: Final = """
Throughput figures count spike frames only. The simulator also publishes about one behaviour
event per 17 frames, which the processors handle too. All processes share the machine's cores
with the broker, so the per-process CPU seconds in the JSON results show where the time went.

"""

_TABLE_HEADER: Final = (
    "| date (UTC) | machine | command | figures |\n| --- | --- | --- | --- |\n"
)


# ---------------------------------------------------------------------------------------------
# Private stack


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago, never a reserved one."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port not in RESERVED_PORTS:
            return port


def run_settings(
    settings: Settings, name: str, *, lake_uri: str | None = None
) -> Settings:
    """Return `settings` with topics, consumer groups and a lake of their own for run `name`.

    Several runs can then share one broker without reading each other's data. The topics
    still have to be created, with `provision_topics`.
    """
    kafka = settings.kafka.model_copy(update={"topic_prefix": f"{name}."})
    streams = settings.streams.model_copy(
        update={"ingest_group": f"{name}-ingest", "sink_group": f"{name}-lake-sink"}
    )
    lake = settings.lake.model_copy(
        update={"uri": lake_uri or str(settings.data_dir / f"lake-{name}")}
    )
    return settings.model_copy(update={"kafka": kafka, "streams": streams, "lake": lake})


@contextlib.contextmanager
def private_stack(name: str, *, heap: str = "1g") -> Iterator[Settings]:
    """Start a broker with every topic in a new temporary folder, and delete both afterwards.

    The pseudonymization key file that `stack.up` creates is in the same folder.
    """
    data_dir = Path(tempfile.mkdtemp(prefix=f"bcratos-bench-{name}-"))
    settings = load_settings(
        data_dir=data_dir,
        kafka={"port": free_port(), "controller_port": free_port(), "heap": heap},
    )
    try:
        started = time.monotonic()
        stack.up(settings)
        logger.info(
            "private stack up at %s in %.1f s, data in %s",
            settings.kafka.bootstrap,
            time.monotonic() - started,
            data_dir,
        )
        yield settings
    finally:
        stopping = time.monotonic()
        try:
            stack.down(settings)
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)
            logger.info(
                "private stack stopped and %s deleted in %.1f s",
                data_dir,
                time.monotonic() - stopping,
            )


def provision_topics(settings: Settings) -> None:
    """Create the topics of `settings` on the private broker, which must already run.

    `stack.up` finds the running broker of the same data directory and starts no second one.
    """
    stack.up(settings)


def parse_environment(assignments: Sequence[str]) -> dict[str, str]:
    """Return ``NAME=VALUE`` command-line assignments as a dict, rejecting malformed ones."""
    environment = {}
    for assignment in assignments:
        name, separator, value = assignment.partition("=")
        if not separator or not name or name.startswith("BCRATOS_"):
            raise ValueError(
                f"invalid environment assignment {assignment!r}: expected NAME=VALUE with a "
                "name that does not start with BCRATOS_ (the benchmark sets those itself)"
            )
        environment[name] = value
    return environment


def child_environment(
    settings: Settings, extra: Mapping[str, str] | None = None, **bcratos: str
) -> dict[str, str]:
    """Return the environment of a child process that must use the private stack of `settings`.

    `bcratos` maps setting names after ``BCRATOS_`` (``STREAMS__METRICS_INTERVAL_S``) to
    values. `extra` contains other variables, which are set as they are.
    """
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("BCRATOS_")  # the caller's own stack must not leak in
    }
    environment.update(
        BCRATOS_DATA_DIR=str(settings.data_dir),
        BCRATOS_KAFKA__PORT=str(settings.kafka.port),
        BCRATOS_KAFKA__CONTROLLER_PORT=str(settings.kafka.controller_port),
        BCRATOS_KAFKA__TOPIC_PREFIX=settings.kafka.topic_prefix,
        BCRATOS_LAKE__URI=settings.lake_uri,
        BCRATOS_STREAMS__INGEST_GROUP=settings.streams.ingest_group,
        BCRATOS_STREAMS__SINK_GROUP=settings.streams.sink_group,
    )
    environment.update({f"BCRATOS_{key}": value for key, value in bcratos.items()})
    environment.update(extra or {})
    return environment


def broker_pid(settings: Settings) -> int | None:
    """Return the process id of the private broker, or None when it does not run."""
    return broker.read_pid(broker.BrokerPaths.under(settings.data_dir))


def process_cpu_seconds(pid: int | None) -> float | None:
    """Return the user plus system CPU seconds of a running process, or None."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name, which is in brackets and may contain spaces.
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])  # utime and stime, fields 14 and 15 of stat
    return ticks / os.sysconf("SC_CLK_TCK")


class MachineCpu:
    """CPU seconds that the whole machine spent busy (not idle or waiting) since creation.

    Comparing it with the CPU seconds of the benchmark's own processes shows how much other
    work ran on the machine during a measurement.
    """

    def __init__(self) -> None:
        self._wall_start = time.monotonic()
        self._busy_start = self._busy_seconds()

    def snapshot(self, own_cpu_s: float | None = None) -> dict[str, float | None]:
        """Return busy CPU seconds, average busy cores and, given `own_cpu_s`, other work."""
        busy = self._busy_seconds() - self._busy_start
        wall = time.monotonic() - self._wall_start
        return {
            "wall_s": round(wall, 1),
            "machine_busy_cpu_s": round(busy, 1),
            "machine_busy_cores": round(busy / wall, 2) if wall > 0 else None,
            "other_processes_cpu_s": (
                round(busy - own_cpu_s, 1) if own_cpu_s is not None else None
            ),
        }

    @staticmethod
    def _busy_seconds() -> float:
        # First line of /proc/stat: cpu user nice system idle iowait irq softirq steal ...
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        ticks = [int(value) for value in fields[:8]]
        busy = sum(ticks) - ticks[3] - ticks[4]
        return busy / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------
# Kafka topics


class TopicSizes:
    """Reader of the high watermarks of topics on one broker."""

    def __init__(self, bootstrap: str) -> None:
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": "bcratos-bench-watermarks",
                "enable.auto.commit": False,
                "logger": logging.getLogger(f"{__name__}.librdkafka"),
            }
        )
        self._partitions: dict[str, list[int]] = {}

    def messages(self, topic: str, timeout_s: float = 5.0) -> int:
        """Return the number of messages in `topic`: the sum of its partitions' high watermarks.

        The topics of a benchmark are new and nothing expires from them during a run, so the
        high watermark of a partition is its message count.
        """
        partitions = self._partitions.get(topic)
        if partitions is None:
            metadata = self._consumer.list_topics(topic, timeout=timeout_s)
            partitions = sorted(metadata.topics[topic].partitions)
            self._partitions[topic] = partitions
        total = 0
        for partition in partitions:
            _low, high = self._consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=timeout_s, cached=False
            )
            total += high
        return total

    def close(self) -> None:
        """Close the consumer."""
        self._consumer.close()


# ---------------------------------------------------------------------------------------------
# Child processes


@dataclass
class Child:
    """A child process of a benchmark and the file its output goes to."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log: TextIO

    def tail(self, lines: int = 15) -> str:
        """Return the last lines of the child's output."""
        self.log.flush()
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no output)"
        return "\n".join(text.splitlines()[-lines:])


class ChildProcessError(RuntimeError):
    """A child process of a benchmark exited while it should have been running."""


@dataclass
class Children:
    """Child processes of one benchmark run, stopped together with SIGTERM."""

    log_dir: Path
    started: list[Child] = field(default_factory=list)

    def start(
        self, name: str, arguments: Sequence[str], environment: Mapping[str, str], cwd: Path
    ) -> Child:
        """Start `arguments` (after the Python interpreter) with its output in a log file."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        log = log_path.open("w")
        process = subprocess.Popen(
            [sys.executable, *arguments],
            env=dict(environment),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        child = Child(name, process, log_path, log)
        self.started.append(child)
        logger.info("started %s as process %d", name, process.pid)
        return child

    def check_running(self) -> None:
        """Raise `ChildProcessError` with the output tail of a child that has exited."""
        for child in self.started:
            code = child.process.poll()
            if code is not None:
                raise ChildProcessError(
                    f"{child.name} (process {child.process.pid}) exited with code {code} during "
                    f"the benchmark; last lines of {child.log_path}:\n{child.tail()}"
                )

    def cpu_seconds(self) -> dict[str, float | None]:
        """Return the CPU seconds each running child has used so far."""
        return {child.name: process_cpu_seconds(child.process.pid) for child in self.started}

    def stop(self, timeout_s: float = CHILD_STOP_TIMEOUT_S) -> dict[str, Any]:
        """Stop every child with SIGTERM, kill any that outlives the timeout, report exit codes."""
        stopping = time.monotonic()
        for child in self.started:
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = stopping + timeout_s
        outcomes: dict[str, Any] = {}
        for child in self.started:
            remaining = max(0.1, deadline - time.monotonic())
            killed = False
            try:
                child.process.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "%s (process %d) did not stop within %.0f s of SIGTERM; killing it",
                    child.name,
                    child.process.pid,
                    timeout_s,
                )
                child.process.kill()
                child.process.wait()
                killed = True
            child.log.close()
            outcomes[child.name] = {
                "pid": child.process.pid,
                "exit_code": child.process.returncode,
                "killed_after_timeout": killed,
            }
        if self.started:
            logger.info(
                "stopped %s in %.1f s", ", ".join(outcomes), time.monotonic() - stopping
            )
        self.started.clear()
        return outcomes


# ---------------------------------------------------------------------------------------------
# Delta log


@dataclass(frozen=True)
class Commit:
    """One commit of a Delta table: its version, when its log file appeared and what it added."""

    version: int
    visible_at: float  # modification time of the commit file, seconds since the epoch
    rows: int
    files: tuple[Path, ...]


class DeltaLog:
    """Incremental reader of a local Delta table's commit files.

    Reading the log is much cheaper than reading the table, so a benchmark can poll it often
    without taking CPU from the processors it measures. Row counts come from the ``numRecords``
    statistics that delta-rs writes with every data file.
    """

    def __init__(self, table_path: Path) -> None:
        self.table_path = table_path
        self._log_dir = table_path / "_delta_log"
        self._next_version = 0
        self.rows = 0
        self.commits: list[Commit] = []

    def poll(self) -> list[Commit]:
        """Read the commits written since the last call, in version order."""
        new: list[Commit] = []
        while True:
            path = self._log_dir / f"{self._next_version:020d}.json"
            try:
                visible_at = path.stat().st_mtime
                text = path.read_text()
            except FileNotFoundError:
                break
            commit = self._parse(self._next_version, visible_at, text)
            new.append(commit)
            self.rows += commit.rows
            self._next_version += 1
        self.commits.extend(new)
        return new

    def _parse(self, version: int, visible_at: float, text: str) -> Commit:
        rows = 0
        files: list[Path] = []
        for line in text.splitlines():
            action = json.loads(line)
            add = action.get("add")
            if add is None:
                continue
            files.append(self.table_path / unquote(add["path"]))
            stats = json.loads(add.get("stats") or "{}")
            if "numRecords" not in stats:
                raise ValueError(
                    f"Delta commit {version} of {self.table_path} adds {add['path']} without "
                    "numRecords statistics; expected delta-rs to write them"
                )
            rows += int(stats["numRecords"])
        return Commit(version, visible_at, rows, tuple(files))


# ---------------------------------------------------------------------------------------------
# Results


def machine_info() -> dict[str, Any]:
    """Describe this machine: cores, CPU model, memory, Python and the current load average."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory_gib = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 1024**2, 1)
                break
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "memory_gib": memory_gib,
        "python": platform.python_version(),
        "load_average_at_start_1m_5m_15m": [round(value, 2) for value in os.getloadavg()],
    }


def machine_label(machine: Mapping[str, Any]) -> str:
    """Return a short description of a machine for the benchmarks table."""
    return f"{machine['nproc']} × {machine['cpu_model']}, {machine['memory_gib']} GiB"


def git_revision() -> str | None:
    """Return the checked-out commit, with ``+changes`` when the work tree differs from it."""
    try:
        revision = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{revision}+changes" if changes else revision


def command_line() -> str:
    """Return how this benchmark was started, as a command relative to the repository root."""
    script = Path(sys.argv[0]).resolve()
    with contextlib.suppress(ValueError):
        script = script.relative_to(PROJECT_ROOT)
    return " ".join([".venv/bin/python", str(script), *sys.argv[1:]])


@dataclass(frozen=True)
class RunStart:
    """When a benchmark started, the machine as it was then, and its busy time since."""

    started_at: datetime
    machine: dict[str, Any]
    machine_cpu: MachineCpu

    @classmethod
    def now(cls) -> RunStart:
        """Record the start of a benchmark."""
        return cls(datetime.now(UTC), machine_info(), MachineCpu())


def own_cpu_seconds() -> float:
    """Return the CPU seconds of this process and of every child process it has waited for.

    After the private stack is down this covers the broker and the processors as well.
    """
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def record_result(
    name: str, start: RunStart, *, figures: Mapping[str, Any], summary: str
) -> Path:
    """Write ``bench/results/<name>.json`` and append a row to ``docs/benchmarks.md``.

    `figures` is the benchmark's full result, `summary` the short text of the table row.
    """
    machine = start.machine
    started_at = start.started_at
    whole_run = start.machine_cpu.snapshot(own_cpu_seconds())
    command = command_line()
    result = {
        "benchmark": name,
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "git_revision": git_revision(),
        "machine": machine,
        "load_average_at_end_1m_5m_15m": [round(value, 2) for value in os.getloadavg()],
        "machine_cpu_whole_run": whole_run,
        **figures,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")

    if not BENCHMARKS_PAGE.exists():
        BENCHMARKS_PAGE.parent.mkdir(parents=True, exist_ok=True)
        BENCHMARKS_PAGE.write_text(_page_header(machine))
    row = " | ".join(
        _table_cell(value)
        for value in (
            started_at.strftime("%Y-%m-%d %H:%M"),
            machine_label(machine),
            f"`{command}`",
            f"{summary} [{_other_work(whole_run, machine)}]",
        )
    )
    with BENCHMARKS_PAGE.open("a") as page:
        page.write(f"| {row} |\n")
    logger.info("wrote %s and a row of %s", path, BENCHMARKS_PAGE)
    return path


def _other_work(whole_run: Mapping[str, Any], machine: Mapping[str, Any]) -> str:
    other_s, wall_s = whole_run["other_processes_cpu_s"], whole_run["wall_s"]
    if other_s is None or not wall_s:
        return "CPU use of other processes unknown"
    cores = max(0.0, other_s / wall_s)
    return f"other processes used {cores:.2f} of {machine['nproc']} cores on average"


def _page_header(machine: Mapping[str, Any]) -> str:
    descriptions = "".join(
        f"| `{script}` | {text} |\n" for script, text in _BENCHMARK_DESCRIPTIONS
    )
    return (
        _PAGE_INTRODUCTION
        + "| benchmark | what it measures |\n| --- | --- |\n"
        + descriptions
        + _PAGE_NOTES
        + _machine_section(machine)
        + _TABLE_HEADER
    )


def _machine_section(machine: Mapping[str, Any]) -> str:
    return (
        "The first rows come from this machine: "
        f"`nproc` {machine['nproc']}, CPU model `{machine['cpu_model']}` (from /proc/cpuinfo), "
        f"{machine['memory_gib']} GiB of memory, Python {machine['python']}. "
        "Other processes may run on it at the same time. Each row ends with the average "
        "number of cores they used during the run: the machine's busy time from /proc/stat "
        "minus the CPU time of the benchmark and its children, the broker included. Each JSON "
        "result has the same figure per measurement.\n\n"
    )


def _table_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# ---------------------------------------------------------------------------------------------
# Process setup


def configure_logging(verbose: bool) -> None:
    """Log benchmark progress at INFO, and library messages at WARNING unless `verbose`."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("bench").setLevel(logging.INFO)
    for name in ("harness", "__main__"):
        logging.getLogger(name).setLevel(logging.INFO)


def raise_on_sigterm() -> None:
    """Turn SIGTERM into `SystemExit`, so that the benchmark's cleanup runs."""

    def stop(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(f"benchmark stopped by signal {signum}")

    signal.signal(signal.SIGTERM, stop)
