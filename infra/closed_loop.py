"""``bcratos loop``: the whole platform on the real recordings, from boards to installed decoders.

The loop is what ``make run`` runs. It drives the platform from the outside, the way an operator
and a rack of boards would, and watches its topics and tables:

1. **stack**: the embedded broker and the topics (``bcratos stack up``).
2. **services**: the stream processors with the retrain monitors, and the orchestrator, in the
   background (``bcratos streams start``, ``bcratos orchestrator start``).
3. **boards**: one model subscriber per replayed board, for the targets ``[subject pseudonym,
   global]``. The platform gives each board its subject pseudonym when it enrols, as a real
   deployment would.
4. **replay**: the first ``initial_days`` limblab Spike sessions in day order, then Jango, the
   Brochier grasp trials, the iCub tactile grasps and the Blackrock file.
5. **lake**: wait until the processors have written everything.
6. **retrain (volume)**: the volume monitor requests a retrain of ``global``; the orchestrator
   prepares, trains, gates, signs and announces. The loop follows ``registry/retrain_jobs``.
7. **install**: every board installs the announced decoder.
8. **replay (later days)**: the remaining Spike sessions, weeks later than the training data.
9. **lake**, then **retrain (drift)**: the drift monitor compares the new spike rates with the
   reference of the installed model and requests a retrain. The loop waits for a job whose
   reasons include drift and for its announcement.
10. **install**: the Spike board installs the retrained decoder.
11. **report**: ``bcratos report`` writes the HTML report.

Each stage prints its progress. A stage that fails or times out raises `LoopStageError`
naming it; the services keep running for inspection either way, unless ``stop_at_end``.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Final, TypeVar

from confluent_kafka import KafkaException
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError

from bcratos.config import Settings
from streams.exceptions import StreamsError
from training.errors import TrainingError

logger = logging.getLogger(__name__)

GLOBAL_TARGET: Final = "global"
SPIKE_BOARD: Final = "limblab-spike-board"
_SPIKE_DATE: Final = re.compile(r"_(\d{2})-(\d{2})-(\d{2})_")  # Spike_07-18-12_WF_001.mat

T = TypeVar("T")

# Errors that a stage's commands raise for a cause outside the loop, such as a missing key or
# file, an unreachable broker or an unreadable table. The loop reports them with the stage.
_STAGE_ERRORS: Final = (
    ValueError, OSError, RuntimeError, KafkaException, DeltaError, StreamsError, TrainingError,
)


class LoopStageError(RuntimeError):
    """A stage of the loop failed; ``stage`` names it."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(f"stage {stage} failed: {message}")
        self.stage = stage


@dataclass(frozen=True)
class BoardRecordings:
    """The recordings one board replays, in order, and the subject id it sends."""

    board_id: str
    subject_id: str | None  # None: each file's first word
    paths: tuple[Path, ...]


@dataclass(frozen=True)
class LoopOptions:
    """Options of the loop: what it replays and how long it waits."""

    recordings: Path
    speed: float | None = None  # times real time; None is as fast as possible
    initial_days: int = 6
    """Spike sessions replayed before the first model; the rest come after it."""
    stage_timeout_s: float = 1800.0
    """Maximum wait of one stage in seconds (lake idle, a retrain job, an install)."""
    stop_at_end: bool = False
    report: bool = True
    evaluate: bool = True
    """Run the next-day protocol on the Spike sessions of the last dataset, for the report."""
    evaluate_decoders: str = "lda,linear"
    fresh: bool = False
    """Stop the services and delete the data directory first, so the loop starts from nothing."""


@dataclass
class LoopSummary:
    """Figures that the loop prints at its end."""

    published: dict[str, int] = field(default_factory=dict)
    lake_rows: dict[str, int] = field(default_factory=dict)
    dead_lettered: int = 0
    datasets: list[str] = field(default_factory=list)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)
    installed: dict[str, str | None] = field(default_factory=dict)
    report: Path | None = None
    elapsed_s: float = 0.0


def spike_sessions(recordings: Path) -> list[Path]:
    """Return the limblab Spike sessions in ``recordings``, in recording-day order.

    The file names carry the date as MM-DD-YY (``Spike_07-18-12_WF_001.mat``); a name without
    one sorts after the dated ones, by name.
    """

    def day(path: Path) -> tuple[date, str]:
        match = _SPIKE_DATE.search(path.name)
        if match is None:
            return date.max, path.name
        month, day_of_month, year = (int(part) for part in match.groups())
        return date(2000 + year, month, day_of_month), path.name

    return sorted((recordings / "limblab-spike-wf").glob("*.mat"), key=day)


def plan_replays(
    recordings: Path, initial_days: int
) -> tuple[list[BoardRecordings], BoardRecordings]:
    """Return the boards of the first replay and the later Spike sessions.

    Raises `ValueError` when ``recordings`` has no Spike sessions or too few for a later part.
    """
    if not recordings.is_dir():
        raise ValueError(f"recordings folder {recordings} does not exist; see ../shared/data")
    spike = spike_sessions(recordings)
    if len(spike) <= initial_days:
        raise ValueError(
            f"{recordings / 'limblab-spike-wf'} has {len(spike)} Spike sessions; the loop needs "
            f"more than initial_days={initial_days}, so that later sessions can show drift"
        )
    first = [BoardRecordings(SPIKE_BOARD, "Spike", tuple(spike[:initial_days]))]
    others = (
        ("limblab-jango-board", "Jango", sorted((recordings / "limblab-jango").glob("*.mat"))),
        ("brochier-board", None, sorted((recordings / "brochier-grasp").glob("*.mat"))),
        (
            "icub-hand-board",
            "icub",
            [recordings / "icub-grasp"] if (recordings / "icub-grasp").is_dir() else [],
        ),
        ("blackrock-board", None, sorted((recordings / "blackrock").glob("*.nev"))),
    )
    first += [
        BoardRecordings(board, subject, tuple(paths)) for board, subject, paths in others if paths
    ]
    return first, BoardRecordings(SPIKE_BOARD, "Spike", tuple(spike[initial_days:]))


class _Board:
    """A replayed board's model subscriber, running in a thread."""

    def __init__(self, settings: Settings, board_id: str, pseudonym: str) -> None:
        from boards.commands import board_state_dir
        from boards.subscriber import ModelSubscriber
        from training.signing import public_key_path

        self.board_id = board_id
        self.pseudonym = pseudonym
        self.subscriber = ModelSubscriber(
            settings.kafka.bootstrap,
            targets=[pseudonym, GLOBAL_TARGET],
            data_dir=board_state_dir(settings, board_id),
            public_key=public_key_path(settings),
            subject=pseudonym,
            topic_prefix=settings.kafka.topic_prefix,
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"subscriber-{board_id}", daemon=True
        )
        self.error: BaseException | None = None
        self._thread.start()

    def _run(self) -> None:
        try:
            self.subscriber.run(self._stop)
        except Exception as exc:  # reported by the install stage
            logger.exception("model subscriber of board %s stopped", self.board_id)
            self.error = exc

    @property
    def model_version(self) -> str | None:
        return self.subscriber.runtime.model_version

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10.0)
        self.subscriber.close()


class ClosedLoop:
    """Runs the stages in order; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        options: LoopOptions,
        *,
        echo: Callable[[str], None] = print,
    ) -> None:
        self.settings = settings
        self.options = options
        self.echo = echo
        self.summary = LoopSummary()
        self._boards: dict[str, _Board] = {}
        self._stage_number = 0
        self._started = time.monotonic()

    # -----------------------------------------------------------------------------------------

    def run(self) -> LoopSummary:
        """Run every stage; raise `LoopStageError` at the first failure."""
        try:
            first, later = self._stage("recordings", self._plan)
            self._stage("data directory", self._check_fresh)
            self._stage("stack", self._stack_up)
            self._stage("services", self._start_services)
            self._stage("boards", lambda: self._start_boards([*first, later]))
            started_at = datetime.now(UTC)
            self._stage("replay", lambda: self._replay(first))
            self._stage("lake", self._wait_lake)
            job = self._stage(
                "retrain (volume)", lambda: self._wait_job(since=started_at, reason="volume")
            )
            self._stage(
                "install", lambda: self._wait_install(job, [board.board_id for board in first])
            )
            later_at = datetime.now(UTC)
            self._stage("replay (later days)", lambda: self._replay([later]))
            self._stage("lake", self._wait_lake)
            job = self._stage(
                "retrain (drift)", lambda: self._wait_job(since=later_at, reason="drift")
            )
            self._stage("install", lambda: self._wait_install(job, [later.board_id]))
            if self.options.evaluate:
                self._stage("evaluate (next day)", lambda: self._evaluate(job.dataset))
            if self.options.report:
                self._stage("report", self._report)
            self._stage("summary", self._summarize)
        finally:
            for board in self._boards.values():
                board.close()
            if self.options.stop_at_end:
                self._stop_services()
        self.summary.elapsed_s = time.monotonic() - self._started
        return self.summary

    def _stage(self, name: str, action: Callable[[], T]) -> T:
        self._stage_number += 1
        self.echo(f"[{self._stage_number:2d}] {name}")
        started = time.monotonic()
        try:
            result = action()
        except LoopStageError:
            raise
        except _STAGE_ERRORS as exc:
            raise LoopStageError(name, f"{type(exc).__name__}: {exc}") from exc
        self.echo(f"     {name} done in {time.monotonic() - started:.0f} s")
        return result

    # Stages ----------------------------------------------------------------------------------

    def _plan(self) -> tuple[list[BoardRecordings], BoardRecordings]:
        first, later = plan_replays(self.options.recordings, self.options.initial_days)
        for board in [*first, later]:
            self.echo(f"     {board.board_id}: {len(board.paths)} recordings")
        return first, later

    def _check_fresh(self) -> None:
        """Start from an empty data directory: a second replay of the same recordings would add
        every event again under new board sequence numbers."""
        if self.options.fresh:
            self._stop_services()
            from infra import stack

            stack.down(self.settings, purge=True)
            self.echo(f"     deleted {self.settings.data_dir}")
            return
        frames = f"{self.settings.lake_uri.rstrip('/')}/bronze/spike_frames"
        if DeltaTable.is_deltatable(frames):
            raise LoopStageError(
                "data directory",
                f"the lake {self.settings.lake_uri} already holds replayed frames, and replaying "
                "the recordings again would add them twice. Run `bcratos loop --fresh` (or `make "
                "run LOOP_ARGS=--fresh`) to delete the data directory "
                f"{self.settings.data_dir} and start again, or set BCRATOS_DATA_DIR to another one",
            )
        self.echo(f"     {self.settings.data_dir}")

    def _stack_up(self) -> None:
        from infra import stack

        plan = stack.up(self.settings)
        if plan.created:
            self.echo(f"     created topics: {', '.join(plan.created)}")
        status = stack.status(self.settings)
        if not status.healthy:
            raise LoopStageError(
                "stack",
                f"broker at {status.bootstrap_servers} answers: {status.broker_answers}, "
                f"missing topics: {status.missing_topics}",
            )

    def _start_services(self) -> None:
        from infra.orchestrator import SERVICE as ORCHESTRATOR
        from infra.processes import start_detached
        from streams.processor import build_pipeline
        from streams.runner import start_detached as start_streams
        from training.signing import ensure_signing_key

        build_pipeline(self.settings)  # a missing pseudonymization key fails here
        ensure_signing_key(self.settings)  # boards need the public key before any model
        self.echo(f"     stream processors and monitors: pid {start_streams(self.settings)}")
        pid = start_detached(self.settings, ORCHESTRATOR)
        self.echo(
            f"     orchestrator ({self.settings.hpc.backend} backend): pid {pid}, log "
            f"{ORCHESTRATOR.log_file(self.settings)}"
        )

    def _start_boards(self, boards: Sequence[BoardRecordings]) -> None:
        from boards.commands import default_subject_id
        from streams.anonymize import Pseudonymizer
        from streams.processor import resolve_key

        pseudonymizer = Pseudonymizer(*resolve_key(self.settings))
        for board in boards:
            if board.board_id in self._boards:
                continue
            subject = board.subject_id or default_subject_id(board.paths[0])
            self._boards[board.board_id] = _Board(
                self.settings, board.board_id, pseudonymizer.subject(subject)
            )
        self.echo(f"     {len(self._boards)} boards subscribed to the models topic")

    def _replay(self, boards: Sequence[BoardRecordings]) -> None:
        from boards.commands import replay_files

        for board in boards:
            result = replay_files(
                self.settings,
                list(board.paths),
                board_id=board.board_id,
                subject_id=board.subject_id,
                speed=self.options.speed,
                runtime=self._boards[board.board_id].subscriber.runtime,
            )
            for name, count in result.published.items():
                self.summary.published[name] = self.summary.published.get(name, 0) + count
            decoded = result.published.get("DecoderOutput", 0)
            self.echo(
                f"     {board.board_id}: {result.total} events from {len(board.paths)} "
                f"recordings in {result.elapsed_s:.0f} s"
                + (f", of which {decoded} outputs of its decoder" if decoded else "")
            )
            if result.unflushed:
                raise LoopStageError(
                    "replay",
                    f"{result.unflushed} events of board {board.board_id} are still spooled; "
                    f"is the broker at {self.settings.kafka.bootstrap} up?",
                )

    def _wait_lake(self) -> None:
        from streams.runner import detached_pid
        from streams.status import wait_until_idle

        if detached_pid(self.settings) is None:
            raise LoopStageError(
                "lake",
                "the stream processors are not running; see "
                f"{self.settings.data_dir / 'logs' / 'streams.log'}",
            )
        if not wait_until_idle(self.settings, timeout_s=self.options.stage_timeout_s):
            raise LoopStageError(
                "lake",
                f"the processors still had lag or open steps after "
                f"{self.options.stage_timeout_s:.0f} s; see `bcratos streams status`",
            )
        rows = lake_rows(self.settings)
        self.echo("     " + ", ".join(f"{name} {count}" for name, count in rows.items()))

    def _wait_job(self, *, since: datetime, reason: str) -> Any:
        """Wait for a job created after ``since`` with ``reason`` among its reasons to succeed,
        printing its steps; return it."""
        from infra.orchestrator import SERVICE as ORCHESTRATOR
        from infra.processes import detached_pid, log_tail
        from infra.retrain_jobs import list_jobs

        stage = f"retrain ({reason})"
        deadline = time.monotonic() + self.options.stage_timeout_s
        seen: dict[str, tuple[str, str]] = {}
        while time.monotonic() < deadline:
            jobs = [job for job in list_jobs(self.settings) if job.created_at >= since]
            for job in jobs:
                if seen.get(job.job_id) != (job.state, job.step):
                    seen[job.job_id] = (job.state, job.step)
                    reasons = ", ".join(sorted(set(job.reasons)))
                    self.echo(
                        f"     job {job.job_id} ({job.target}, {reasons}): {job.step} {job.state}"
                    )
            matching = [job for job in jobs if reason in job.reasons]
            for job in matching:
                if job.state == "succeeded":
                    self._describe_evidence(job, reason)
                    return job
                if job.state == "failed":
                    raise LoopStageError(stage, f"job {job.job_id} failed: {job.message}")
            if detached_pid(self.settings, ORCHESTRATOR) is None:
                tail = " | ".join(log_tail(self.settings, ORCHESTRATOR, lines=5))
                raise LoopStageError(
                    stage, f"the orchestrator is not running; its log ends: {tail}"
                )
            time.sleep(2.0)
        raise LoopStageError(
            stage,
            f"no retrain job with reason {reason} succeeded within "
            f"{self.options.stage_timeout_s:.0f} s; check `bcratos streams status`, the monitors "
            f"in {self.settings.data_dir / 'logs' / 'streams.log'} and `bcratos lake sql "
            '"SELECT * FROM registry.retrain_jobs"`',
        )

    def _describe_evidence(self, job: Any, reason: str) -> None:
        for request in job.evidence.values():
            if request.get("reason") == reason:
                figures = ", ".join(
                    f"{key} {value:.3g}"
                    for key, value in sorted(request.get("evidence", {}).items())
                )
                self.echo(f"     {reason} evidence: {figures}; {request.get('detail', '')}")
                return

    def _wait_install(self, job: Any, board_ids: Sequence[str]) -> None:
        from training.registry import list_models

        entries = [
            entry
            for entry in list_models(self.settings, job.target)
            if entry.dataset == job.dataset
        ]
        announced = [entry for entry in entries if entry.decision == "announced"]
        if not announced:
            decisions = "; ".join(f"{entry.decision}: {entry.reason}" for entry in entries)
            raise LoopStageError(
                "install",
                f"job {job.job_id} announced no model for target {job.target}"
                + (f" ({decisions})" if decisions else ""),
            )
        version = announced[-1].model_version
        self.echo(
            f"     announced {version} for {job.target}: score {announced[-1].candidate_score:.3f}"
            f" ({announced[-1].reason})"
        )
        # A decoder serves only the subjects it has read-in layers for. A board of another
        # subject, such as the e-skin-only iCub hand, rejects it and keeps its decoder.
        served = model_subjects(announced[-1].artifact_uri)
        waiting = []
        for board_id in board_ids:
            if self._boards[board_id].pseudonym in served:
                waiting.append(board_id)
            else:
                self.echo(f"     board {board_id}: its subject has no read-in in {version}")
        if not waiting:
            raise LoopStageError("install", f"model {version} serves none of {list(board_ids)}")
        deadline = time.monotonic() + min(self.options.stage_timeout_s, 300.0)
        while waiting and time.monotonic() < deadline:
            for board_id in list(waiting):
                board = self._boards[board_id]
                if board.error is not None:
                    raise LoopStageError("install", f"board {board_id}: {board.error}")
                if board.model_version == version:
                    self.echo(f"     board {board_id} installed {version}")
                    waiting.remove(board_id)
            time.sleep(0.5)
        if waiting:
            states = ", ".join(f"{b}: {self._boards[b].model_version}" for b in waiting)
            raise LoopStageError(
                "install", f"boards without model {version} after waiting: {states}"
            )

    def _evaluate(self, dataset: str) -> None:
        output = self.settings.data_dir / "evaluations" / "next-day.json"
        subject = self._boards[SPIKE_BOARD].pseudonym
        self._run_command(
            "evaluate (next day)",
            [
                "evaluate", "--protocol", "next-day", "--dataset", dataset, "--subject", subject,
                "--decoders", self.options.evaluate_decoders, "--epochs", "10",
                "--output", str(output),
            ],
        )  # fmt: skip
        self.echo(f"     {output}")

    def _run_command(self, stage: str, arguments: list[str]) -> None:
        command = [sys.executable, "-m", "bcratos.cli", *arguments]
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            tail = " ".join((completed.stderr or completed.stdout).split()[-60:])
            raise LoopStageError(
                stage, f"bcratos {arguments[0]} exited with code {completed.returncode}: {tail}"
            )
        for line in completed.stdout.splitlines():
            self.echo(f"     {line}")

    def _report(self) -> None:
        output = self.settings.data_dir / "report" / "index.html"
        self._run_command("report", ["report", "--output", str(output)])
        self.summary.report = output

    def _summarize(self) -> None:
        from infra.lag import topic_messages
        from infra.retrain_jobs import list_jobs
        from training.registry import list_models

        summary = self.summary
        summary.lake_rows = lake_rows(self.settings)
        summary.dead_lettered = topic_messages(self.settings, "dlq")
        manifests = Path(self.settings.lake_uri) / "gold" / "manifests"
        summary.datasets = sorted(path.stem for path in manifests.glob("*.json"))
        summary.jobs = [
            {
                "job_id": job.job_id,
                "target": job.target,
                "reasons": sorted(set(job.reasons)),
                "state": job.state,
            }
            for job in list_jobs(self.settings)
        ]
        summary.models = [
            {
                "model_version": entry.model_version,
                "target": entry.target,
                "decision": entry.decision,
                "balanced_accuracy": entry.candidate_score,
                "previous_model_score": entry.current_score,
            }
            for entry in list_models(self.settings)
        ]
        summary.installed = {
            board_id: board.model_version for board_id, board in self._boards.items()
        }

    def _stop_services(self) -> None:
        from infra import stack
        from infra.orchestrator import SERVICE as ORCHESTRATOR
        from infra.processes import stop_detached
        from streams.runner import stop_detached as stop_streams

        stop_detached(self.settings, ORCHESTRATOR)
        stop_streams(self.settings)
        stack.down(self.settings)
        self.echo("     stopped the orchestrator, the processors and the broker")


def model_subjects(artifact_uri: str) -> set[str]:
    """Return the subject pseudonyms that the exported model at ``artifact_uri`` (``file://``)
    has read-in layers for, from the ``channels`` of its ``config.json``."""
    from urllib.parse import unquote, urlsplit

    from schemas.artifacts import CONFIG_FILE

    path = Path(unquote(urlsplit(artifact_uri).path)) / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
        return set(config["channels"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"cannot read the subjects of model config {path}: {exc}") from exc


def lake_rows(settings: Settings) -> dict[str, int]:
    """Return the row count of every bronze and silver table that exists, read from the Delta
    logs (`jobs.catalog.table_info`)."""
    from jobs.catalog import Lake, find_tables, table_info

    lake = Lake.from_settings(settings)
    rows: dict[str, int] = {}
    for table in find_tables(lake):
        if table.layer in ("bronze", "silver"):
            info = table_info(lake, table)
            if info.rows is not None:
                rows[table.name] = info.rows
    return rows


def render_summary(summary: LoopSummary) -> Iterator[str]:
    """Yield the lines of the final summary."""
    published = sum(summary.published.values())
    yield f"loop finished in {summary.elapsed_s / 60:.1f} min"
    yield f"  events published by boards: {published} ({_counts(summary.published)})"
    yield f"  dead-lettered: {summary.dead_lettered}"
    yield f"  lake rows: {_counts(summary.lake_rows)}"
    yield f"  datasets: {', '.join(summary.datasets) or 'none'}"
    for job in summary.jobs:
        reasons = ", ".join(job["reasons"])
        yield f"  retrain job {job['job_id']} ({job['target']}, {reasons}): {job['state']}"
    for model in summary.models:
        score = model["balanced_accuracy"]
        previous = model["previous_model_score"]
        yield (
            f"  model {model['model_version']} ({model['target']}): {model['decision']}, "
            f"test balanced accuracy {'n/a' if score is None else f'{score:.3f}'}"
            + ("" if previous is None else f" (previous model on the same data: {previous:.3f})")
        )
    for board_id, version in summary.installed.items():
        yield f"  board {board_id}: decoder {version or 'none'}"
    if summary.report is not None:
        yield f"  report: {summary.report}"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(counts.items())) or "none"
