"""The ``bcratos`` command line."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from bcratos.config import ConfigError, Settings, load_settings

app = typer.Typer(no_args_is_help=True, help="bcratos: streaming data platform for implanted BCIs.")
stack_app = typer.Typer(no_args_is_help=True, help="Run the embedded single-machine stack.")
app.add_typer(stack_app, name="stack")
topic_app = typer.Typer(no_args_is_help=True, help="Read platform topics.")
app.add_typer(topic_app, name="topic")
board_app = typer.Typer(no_args_is_help=True, help="Publish board events: replay and simulate.")
app.add_typer(board_app, name="board")
streams_app = typer.Typer(no_args_is_help=True, help="Run the stream processors.")
app.add_typer(streams_app, name="streams")


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@app.callback()
def _configure_logging(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at DEBUG level.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@stack_app.command("jars")
def stack_jars() -> None:
    """Resolve the Kafka broker and Delta jars with Maven (once; later calls do nothing)."""
    from infra import jars
    from infra.exceptions import StackError

    settings = _settings()
    try:
        for jar_set in ("kafka", "spark"):
            folder = jars.resolve(settings.jars_dir, jar_set)
            typer.echo(f"{jar_set} jars: {folder}")
    except StackError as exc:
        raise _fail(str(exc)) from exc


@stack_app.command("up")
def stack_up() -> None:
    """Start the embedded Kafka broker and provision the topics (idempotent)."""
    from infra import stack
    from infra.exceptions import StackError

    settings = _settings()
    try:
        plan = stack.up(settings)
    except StackError as exc:
        raise _fail(str(exc)) from exc
    if plan.created:
        typer.echo(f"created topics: {', '.join(plan.created)}")
    for name, configs in plan.altered.items():
        typer.echo(f"altered topic {name}: {configs}")
    for problem in plan.not_applied:
        typer.echo(f"not applied: {problem}", err=True)
    _print_status(settings)


@stack_app.command("status")
def stack_status() -> None:
    """Print the stack's health; exit 0 only when the broker answers and all topics exist."""
    if not _print_status(_settings()):
        raise typer.Exit(1)


@stack_app.command("down")
def stack_down(
    purge: Annotated[
        bool, typer.Option("--purge", help="Also delete the data directory (broker data, lake).")
    ] = False,
) -> None:
    """Stop what `bcratos stack up` started; data is kept unless --purge is given."""
    from infra import stack

    settings = _settings()
    stopped = stack.down(settings, purge=purge)
    typer.echo("stopped the embedded Kafka broker" if stopped else "no embedded broker was running")
    if purge:
        typer.echo(f"deleted {settings.data_dir}")


@topic_app.command("tail")
def topic_tail(
    topic: Annotated[str, typer.Argument(help="Topic name; short names such as raw.spikes work.")],
    count: Annotated[int, typer.Option("--count", "-n", min=1, help="Events to print.")] = 10,
    latest: Annotated[
        bool, typer.Option("--latest", help="Print the last events of each partition instead.")
    ] = False,
    timeout_s: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for the next event.")
    ] = 10.0,
) -> None:
    """Print decoded events of a topic as JSON lines."""
    from infra.tail import TailError, json_line, tail

    settings = _settings()
    try:
        for event in tail(
            settings.kafka.bootstrap,
            settings.topic(topic),
            count=count,
            start="latest" if latest else "earliest",
            timeout_s=timeout_s,
        ):
            typer.echo(json_line(event))
    except TailError as exc:
        raise _fail(str(exc)) from exc


@board_app.command("replay")
def board_replay(
    paths: Annotated[list[Path], typer.Argument(help="Recording files; each is one session.")],
    board_id: Annotated[str, typer.Option(help="Board id sent with every event.")] = "replay-1",
    subject_id: Annotated[
        str | None,
        typer.Option(help="Subject id sent with every event; default: each file's first word."),
    ] = None,
    speed: Annotated[
        float | None,
        typer.Option(help="Times real time (1.0: as recorded); default: as fast as possible."),
    ] = None,
    bin_ms: Annotated[
        int | None, typer.Option(help="Bin width in ms for 1 ms spike trains and NEV files.")
    ] = None,
) -> None:
    """Replay real recordings as a board publishing to the raw topics."""
    from boards.commands import replay_files
    from boards.replay import RecordingFormatError

    settings = _settings()
    try:
        result = replay_files(
            settings, paths, board_id=board_id, subject_id=subject_id, speed=speed, bin_ms=bin_ms
        )
    except (RecordingFormatError, FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    for report in result.reports:
        typer.echo(report.summary())
    published = ", ".join(f"{name} {count}" for name, count in sorted(result.published.items()))
    typer.echo(f"published {result.total} events in {result.elapsed_s:.1f} s: {published}")
    if result.unflushed:
        raise _fail(f"{result.unflushed} events are still spooled; they are sent on the next run")


@board_app.command("simulate")
def board_simulate(
    boards: Annotated[int, typer.Option(min=1, help="Number of boards.")] = 10,
    rate: Annotated[float, typer.Option(min=0.1, help="Spike frames per second per board.")] = 20,
    duration: Annotated[float, typer.Option(min=0.1, help="Seconds of simulated data.")] = 10,
    channels: Annotated[int, typer.Option(min=1, help="Channels per board.")] = 96,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same data.")] = 0,
    speed: Annotated[
        float | None, typer.Option(help="Times real time; default: as fast as possible.")
    ] = None,
) -> None:
    """Publish synthetic spike frames and class labels from many boards (load generator)."""
    from boards.commands import simulate_load

    result = simulate_load(
        _settings(),
        boards=boards,
        rate_hz=rate,
        duration_s=duration,
        channels=channels,
        seed=seed,
        speed=speed,
    )
    typer.echo(
        f"published {result.frames} spike frames ({result.events} events) in "
        f"{result.elapsed_s:.1f} s: {result.frames_per_s:.0f} frames/s"
    )
    if result.unflushed:
        raise _fail(f"{result.unflushed} events are still spooled")


@streams_app.command("run")
def streams_run(
    workers: Annotated[
        int, typer.Option(min=1, help="Ingest worker processes sharing the raw partitions.")
    ] = 1,
    stage: Annotated[
        str, typer.Option(help="What to run: all, ingest (validate and anonymize) or sink.")
    ] = "all",
) -> None:
    """Run the stream processors until interrupted (Ctrl-C or SIGTERM)."""
    from streams.exceptions import StreamsError
    from streams.runner import run

    if stage not in {"all", "ingest", "sink"}:
        raise _fail(f"unknown stage {stage!r}; expected all, ingest or sink", code=2)
    try:
        run(_settings(), workers=workers, stage=stage)
    except StreamsError as exc:
        raise _fail(str(exc)) from exc


@streams_app.command("start")
def streams_start(
    workers: Annotated[
        int, typer.Option(min=1, help="Ingest worker processes sharing the raw partitions.")
    ] = 1,
) -> None:
    """Start the stream processors in the background (logs in <data_dir>/logs/streams.log)."""
    from streams.exceptions import StreamsError
    from streams.processor import build_pipeline
    from streams.runner import start_detached

    settings = _settings()
    try:
        build_pipeline(settings)  # a missing key fails here, not in the background
    except StreamsError as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"stream processors running, pid {start_detached(settings, workers=workers)}")


@streams_app.command("stop")
def streams_stop() -> None:
    """Stop stream processors started with `bcratos streams start`."""
    from streams.runner import stop_detached

    stopped = stop_detached(_settings())
    typer.echo("stopped the stream processors" if stopped else "no stream processors were running")


@streams_app.command("status")
def streams_status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    wait_idle: Annotated[
        float | None,
        typer.Option(
            help="Wait up to this many seconds until both consumer groups have no lag and the "
            "sink has no open steps; exit 1 if they do not."
        ),
    ] = None,
) -> None:
    """Print the processors' counters, consumer lag and lake commit figures."""
    from streams.status import collect, render, wait_until_idle

    settings = _settings()
    idle = True if wait_idle is None else wait_until_idle(settings, timeout_s=wait_idle)
    status = collect(settings)
    typer.echo(json_dumps(status) if as_json else render(status))
    if not idle:
        raise _fail(f"the stream processors still had work after {wait_idle:.0f} s")


def json_dumps(value: object) -> str:
    import json

    return json.dumps(value, indent=2, default=str)


def _print_status(settings: Settings) -> bool:
    from infra import stack

    status = stack.status(settings)
    typer.echo(f"bootstrap servers: {status.bootstrap_servers}")
    typer.echo(f"lake: {status.lake_uri}")
    pid = f" (embedded, pid {status.broker_pid})" if status.broker_pid else ""
    typer.echo(f"broker: {'answering' if status.broker_answers else 'not answering'}{pid}")
    if status.missing_topics:
        typer.echo(f"missing topics: {', '.join(status.missing_topics)}")
    typer.echo(f"status: {'healthy' if status.healthy else 'unhealthy'}")
    return status.healthy


def main() -> None:
    """Entry point of the ``bcratos`` console script."""
    app()
