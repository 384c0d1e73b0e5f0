"""The ``bcratos`` command line."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Literal

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
lake_app = typer.Typer(no_args_is_help=True, help="Query and maintain the Delta lake.")
app.add_typer(lake_app, name="lake")
jobs_app = typer.Typer(no_args_is_help=True, help="Run Spark jobs: dataset preparation.")
app.add_typer(jobs_app, name="jobs")
models_app = typer.Typer(no_args_is_help=True, help="Sign, verify, announce and list models.")
app.add_typer(models_app, name="models")
hpc_app = typer.Typer(no_args_is_help=True, help="Submit and track jobs of command templates.")
app.add_typer(hpc_app, name="hpc")
orchestrator_app = typer.Typer(no_args_is_help=True, help="Run the retrain orchestrator.")
app.add_typer(orchestrator_app, name="orchestrator")
retrain_app = typer.Typer(no_args_is_help=True, help="Request retraining of a decoder.")
app.add_typer(retrain_app, name="retrain")

OutputOption = Annotated[
    Literal["table", "json", "csv"], typer.Option("--format", help="Output format.")
]


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
    """Print the stack's health; exit 0 only when the broker is reachable and all topics exist."""
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
        str,
        typer.Option(
            help="What to run: all, ingest (validate and anonymize), sink or monitor (retrain "
            "triggers)."
        ),
    ] = "all",
) -> None:
    """Run the stream processors until interrupted (Ctrl-C or SIGTERM)."""
    from streams.exceptions import StreamsError
    from streams.runner import STAGES, run

    if stage not in STAGES:
        raise _fail(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}", code=2)
    try:
        run(_settings(), workers=workers, stage=stage)
    except StreamsError as exc:
        raise _fail(str(exc)) from exc


@streams_app.command("monitor")
def streams_monitor() -> None:
    """Publish retrain requests on volume, drift and schedule triggers until interrupted."""
    from deltalake.exceptions import DeltaError

    from streams.monitors import run_worker

    try:
        run_worker(_settings())
    except (DeltaError, OSError) as exc:
        raise _fail(
            f"the retrain monitors could not read the lake's registry tables: {exc}"
        ) from exc


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


@lake_app.command("tables")
def lake_tables(output: OutputOption = "table") -> None:
    """List the lake's Delta tables: version, rows, files, size and partition columns."""
    from jobs.catalog import Lake, find_tables, table_info
    from jobs.output import OutputFormat, render_tables
    from streams.exceptions import ResidencyError

    try:
        lake = Lake.from_settings(_settings())
    except ResidencyError as exc:
        raise _fail(str(exc), code=2) from exc
    infos = [table_info(lake, table) for table in find_tables(lake)]
    if not infos and output == "table":
        typer.echo(f"no Delta tables under {lake.uri}")
        return
    typer.echo(render_tables(infos, OutputFormat(output)))


@lake_app.command("history")
def lake_history(
    table: Annotated[
        str, typer.Argument(help="bronze.spike_frames, silver.spike_steps, gold.NAME or a path.")
    ],
    limit: Annotated[int | None, typer.Option(min=1, help="Newest versions to list.")] = None,
    output: OutputOption = "table",
) -> None:
    """List the versions of a Delta table with operation, parameters and metrics."""
    from jobs.catalog import Lake, resolve_table, table_history
    from jobs.exceptions import TableNotFoundError
    from jobs.output import OutputFormat, render_history
    from streams.exceptions import ResidencyError

    try:
        lake = Lake.from_settings(_settings())
        commits = table_history(lake, resolve_table(lake, table), limit=limit)
    except (ResidencyError, TableNotFoundError) as exc:
        raise _fail(str(exc), code=2) from exc
    typer.echo(render_history(commits, OutputFormat(output)))


@lake_app.command("sql")
def lake_sql(
    query: Annotated[str, typer.Argument(help="One read-only Spark SQL statement.")],
    as_of: Annotated[
        list[str] | None,
        typer.Option(
            "--as-of",
            help="VERSION: read every lake table the query names at that version; "
            "TABLE=VERSION (repeatable): read that table at that version.",
        ),
    ] = None,
    limit: Annotated[int, typer.Option(min=0, help="Rows to print; 0 prints all.")] = 1000,
    output: OutputOption = "table",
) -> None:
    """Run Spark SQL over the lake; tables are named bronze.spike_frames, gold.NAME and so on."""
    from jobs.exceptions import AsOfError, LakeQueryError
    from jobs.output import OutputFormat, render
    from jobs.sql import AsOf, run_query
    from streams.exceptions import ResidencyError

    logging.getLogger("py4j").setLevel(logging.WARNING)  # one INFO line per gateway call
    try:
        result = run_query(_settings(), query, as_of=AsOf.parse(as_of or []), limit=limit or None)
    except (AsOfError, LakeQueryError, ResidencyError) as exc:
        raise _fail(str(exc), code=2) from exc
    for name, version in result.pinned.items():
        typer.echo(f"{name} read at version {version}", err=True)
    typer.echo(render(result.columns, result.rows, OutputFormat(output)))
    if result.truncated:
        typer.echo(f"showing the first {limit} rows; raise --limit, or 0 for all", err=True)


@lake_app.command("compact")
def lake_compact(
    table: Annotated[str | None, typer.Argument(help="Table name or path; default: all.")] = None,
    output: OutputOption = "table",
) -> None:
    """Compact small files into larger ones (Delta OPTIMIZE) and print files before and after."""
    from jobs.catalog import Lake
    from jobs.exceptions import MaintenanceError, TableNotFoundError
    from jobs.maintenance import compact_tables, select_tables
    from jobs.output import OutputFormat, render_compaction
    from streams.exceptions import ResidencyError

    try:
        lake = Lake.from_settings(_settings())
        results = compact_tables(lake, select_tables(lake, table))
    except (ResidencyError, TableNotFoundError) as exc:
        raise _fail(str(exc), code=2) from exc
    except MaintenanceError as exc:
        raise _fail(str(exc)) from exc
    typer.echo(render_compaction(results, OutputFormat(output)))


@lake_app.command("vacuum")
def lake_vacuum(
    table: Annotated[str | None, typer.Argument(help="Table name or path; default: all.")] = None,
    retain_hours: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Keep the files that versions of the last H hours need; default: the table's "
            "delta.deletedFileRetentionDuration, 168 hours unless set.",
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(help="Allow a retention below the table's; stop writers first."),
    ] = False,
    dry_run: Annotated[bool, typer.Option(help="List the files without deleting them.")] = False,
    output: OutputOption = "table",
) -> None:
    """Delete data files that no table version within the retention period needs."""
    from jobs.catalog import Lake
    from jobs.exceptions import MaintenanceError, TableNotFoundError
    from jobs.maintenance import select_tables, vacuum_tables
    from jobs.output import OutputFormat, render_vacuum
    from streams.exceptions import ResidencyError

    try:
        lake = Lake.from_settings(_settings())
        results = vacuum_tables(
            lake,
            select_tables(lake, table),
            retention_hours=retain_hours,
            force=force,
            dry_run=dry_run,
        )
    except (ResidencyError, TableNotFoundError) as exc:
        raise _fail(str(exc), code=2) from exc
    except MaintenanceError as exc:
        raise _fail(str(exc)) from exc
    typer.echo(render_vacuum(results, OutputFormat(output)))


@lake_app.command("erase")
def lake_erase(
    subject: Annotated[
        str,
        typer.Option(
            help="Pseudonym (20 lowercase hex characters) or raw subject id; '-' reads it "
            "from standard input, which keeps a raw id out of the process list."
        ),
    ],
    pseudonym: Annotated[
        bool, typer.Option("--pseudonym", help="Treat --subject as a pseudonym.")
    ] = False,
    raw: Annotated[
        bool, typer.Option("--raw", help="Treat --subject as a raw subject id.")
    ] = False,
    dry_run: Annotated[bool, typer.Option(help="Count the rows without deleting them.")] = False,
    output: OutputOption = "table",
) -> None:
    """Delete a subject's rows from every lake table and vacuum them off the disk."""
    from jobs.erasure import SubjectKind, erase_subject, subject_pseudonym
    from jobs.exceptions import ErasureError
    from jobs.output import OutputFormat, render_erasure
    from streams.exceptions import AnonymizationKeyError, ResidencyError

    if pseudonym and raw:
        raise _fail("--pseudonym and --raw exclude each other: give one or neither", code=2)
    value = sys.stdin.readline().strip() if subject == "-" else subject
    settings = _settings()
    kind: SubjectKind = "auto"
    if pseudonym:
        kind = "pseudonym"
    elif raw:
        kind = "raw"
    try:
        reference = subject_pseudonym(settings, value, kind)
    except (AnonymizationKeyError, ErasureError) as exc:
        raise _fail(str(exc), code=2) from exc
    try:
        report = erase_subject(settings, reference, dry_run=dry_run)
    except ResidencyError as exc:
        raise _fail(str(exc), code=2) from exc
    except ErasureError as exc:
        raise _fail(str(exc)) from exc
    typer.echo(render_erasure(report, OutputFormat(output)))


@jobs_app.command("prepare")
def jobs_prepare(
    name: Annotated[
        str, typer.Option(help="Dataset name: gold/datasets/NAME and gold/manifests/NAME.json.")
    ],
    subjects: Annotated[
        str | None, typer.Option(help="Subject pseudonyms, comma-separated; default: all.")
    ] = None,
    days: Annotated[
        str | None, typer.Option(help="Shifted session days, comma-separated; default: all.")
    ] = None,
    step_ms: Annotated[
        int | None,
        typer.Option(help="Step width in ms, a multiple of the silver step; default 50."),
    ] = None,
    window: Annotated[
        int | None, typer.Option(help="Steps of history that window_complete requires; default 10.")
    ] = None,
    split_by: Annotated[
        str | None, typer.Option(help="Unit of the splits: day (default) or session.")
    ] = None,
    test_days: Annotated[
        int | None, typer.Option(help="Last units of each subject that are test; default 1.")
    ] = None,
    validation_days: Annotated[
        int | None, typer.Option(help="Units before the test units that are validation; default 1.")
    ] = None,
    normalization: Annotated[
        str | None,
        typer.Option(
            help="Statistics of the features: subject (default, pooled training) or session."
        ),
    ] = None,
    reproduce: Annotated[
        bool,
        typer.Option(
            "--reproduce",
            help="Rebuild NAME from its manifest's source versions and parameters, write "
            "nothing, and exit 1 unless the content hash matches.",
        ),
    ] = False,
) -> None:
    """Label, split and normalize silver spike steps into a gold dataset with a manifest."""
    from jobs.dataset.errors import DatasetJobError, InvalidParameterError, SelectionError
    from jobs.prepare import (
        describe_reproduction,
        describe_result,
        parameters_from_options,
        prepare_dataset,
        reproduce_dataset,
    )
    from streams.exceptions import ResidencyError

    options = {
        "subjects": subjects,
        "days": days,
        "step_ms": step_ms,
        "window": window,
        "split_by": split_by,
        "test_days": test_days,
        "validation_days": validation_days,
        "normalization": normalization,
    }
    settings = _settings()
    try:
        if reproduce:
            given = [
                f"--{key.replace('_', '-')}" for key, value in options.items() if value is not None
            ]
            if given:
                raise _fail(
                    f"--reproduce takes every parameter from the manifest: leave out "
                    f"{', '.join(given)}",
                    code=2,
                )
            reproduction = reproduce_dataset(settings, name)
            for line in describe_reproduction(reproduction):
                typer.echo(line)
            if not reproduction.matches:
                raise typer.Exit(1)
            return
        result = prepare_dataset(settings, parameters_from_options({"name": name, **options}))
    except (InvalidParameterError, SelectionError, ResidencyError) as exc:
        raise _fail(str(exc), code=2) from exc
    except DatasetJobError as exc:
        raise _fail(str(exc)) from exc
    for line in describe_result(result):
        typer.echo(line)


@models_app.command("list")
def models_list(
    target: Annotated[str | None, typer.Option(help="Only this target's models.")] = None,
    output: OutputOption = "table",
) -> None:
    """List the models of the registry table, oldest decision first."""
    from jobs.output import OutputFormat, render
    from training.registry import RegistryError, list_models

    try:
        entries = list_models(_settings(), target)
    except RegistryError as exc:
        raise _fail(str(exc)) from exc
    columns = [
        "target",
        "model_version",
        "decision",
        "candidate_score",
        "current_model_version",
        "current_score",
        "decided_at",
        "dataset",
        "architecture",
        "reason",
    ]
    rows = [[getattr(entry, column) for column in columns] for entry in entries]
    typer.echo(render(columns, rows, OutputFormat(output)))


@models_app.command("verify")
def models_verify(
    path: Annotated[Path, typer.Argument(help="Model directory with signature.json.")],
    public_key: Annotated[
        Path | None,
        typer.Option(help="Public key PEM file; default: models.public_key_file or the stack's."),
    ] = None,
) -> None:
    """Verify a model's signature and file hashes; print its signed description."""
    from training.signing import ArtifactError, load_public_key, public_key_path, verify_artifact

    key_path = public_key if public_key is not None else public_key_path(_settings())
    try:
        description = verify_artifact(path, load_public_key(key_path))
    except ArtifactError as exc:
        raise _fail(f"{type(exc).__name__}: {exc}") from exc
    typer.echo(json_dumps(description.to_dict()))


@models_app.command("announce")
def models_announce(
    path: Annotated[
        Path, typer.Argument(help="Exported model directory: model.safetensors and config.json.")
    ],
    target: Annotated[str, typer.Option(help="Subject pseudonym the model is for, or global.")],
    model_version: Annotated[
        str | None, typer.Option(help="Model version; default: the directory name.")
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            help="Gold dataset whose test split scores the candidate and the current model; "
            "default: the dataset named in config.json."
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Announce even when the candidate scores below the current model, or "
            "unscored when no dataset is known.",
        ),
    ] = False,
) -> None:
    """Sign a model if unsigned, gate it, announce it on the models topic and record it."""
    from training.announce import release
    from training.errors import TrainingError
    from training.scoring import dataset_of, scorer_for_dataset
    from training.signing import ArtifactError

    settings = _settings()
    version = model_version or path.resolve().name
    try:
        dataset = dataset or dataset_of(path)
        if dataset is None and not force:
            raise _fail(
                f"{path}/config.json names no dataset to score the model on; pass --dataset, "
                "or --force to announce it unscored",
                code=2,
            )
        score = scorer_for_dataset(settings, dataset) if dataset is not None else None
        result = release(
            settings, path, target=target, model_version=version, score=score, force=force
        )
    except (ArtifactError, TrainingError) as exc:
        raise _fail(f"{type(exc).__name__}: {exc}") from exc
    decision = result.decision
    if result.delivery is None:
        raise _fail(f"the gate rejected model {version} for target {target}: {decision.reason}")
    where = f"{result.delivery.topic}[{result.delivery.partition}]@{result.delivery.offset}"
    typer.echo(f"announced model {version} for target {target} at {where}: {decision.reason}")


@hpc_app.command("submit")
def hpc_submit(
    template: Annotated[str, typer.Argument(help="Name of a template in hpc.templates.")],
    parameters: Annotated[
        list[str] | None, typer.Argument(help="Parameter values as key=value words.")
    ] = None,
    backend: Annotated[
        str | None, typer.Option(help="local, slurm or heappe; default: hpc.backend.")
    ] = None,
) -> None:
    """Validate the parameters against the template, submit the job and print its id."""
    from infra.hpc import HpcError, JobSpec, TemplateError, create_backend, parse_assignments

    settings = _settings()
    try:
        job = JobSpec(template, parse_assignments(parameters or []))
        job_id = create_backend(settings, backend).submit(job)
    except TemplateError as exc:
        raise _fail(str(exc), code=2) from exc
    except HpcError as exc:
        raise _fail(str(exc)) from exc
    typer.echo(job_id)


@hpc_app.command("status")
def hpc_status(
    job_id: Annotated[str, typer.Argument(help="Job id printed by `bcratos hpc submit`.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print a job's state, exit code and scheduler id."""
    from dataclasses import asdict

    from infra.hpc import HpcError, backend_for_job

    try:
        status = backend_for_job(_settings(), job_id).status(job_id)
    except HpcError as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        typer.echo(json_dumps(asdict(status)))
        return
    exit_code = "-" if status.exit_code is None else str(status.exit_code)
    typer.echo(f"job: {status.job_id}")
    typer.echo(f"state: {status.state}")
    typer.echo(f"exit code: {exit_code}")
    typer.echo(f"scheduler id: {status.native_id or '-'}")
    if status.detail:
        typer.echo(f"detail: {status.detail}")


@hpc_app.command("logs")
def hpc_logs(
    job_id: Annotated[str, typer.Argument(help="Job id printed by `bcratos hpc submit`.")],
) -> None:
    """Print a job's standard output, then its standard error."""
    from infra.hpc import HpcError, backend_for_job

    try:
        text = backend_for_job(_settings(), job_id).logs(job_id)
    except HpcError as exc:
        raise _fail(str(exc)) from exc
    typer.echo(text, nl=False)


@hpc_app.command("cancel")
def hpc_cancel(
    job_id: Annotated[str, typer.Argument(help="Job id printed by `bcratos hpc submit`.")],
) -> None:
    """Cancel a job; a finished job is left as it is."""
    from infra.hpc import HpcError, backend_for_job

    try:
        backend = backend_for_job(_settings(), job_id)
        backend.cancel(job_id)
        status = backend.status(job_id)
    except HpcError as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"job {job_id} is {status.state}")


@orchestrator_app.command("run")
def orchestrator_run() -> None:
    """Turn retrain requests into prepare, train and announce jobs until interrupted."""
    import signal
    import threading

    from infra.exceptions import OrchestratorError
    from infra.orchestrator import Orchestrator

    stop = threading.Event()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signal_number, lambda _number, _frame: stop.set())
    try:
        Orchestrator(_settings()).run(stop)
    except OrchestratorError as exc:
        raise _fail(str(exc)) from exc


@orchestrator_app.command("start")
def orchestrator_start() -> None:
    """Start the orchestrator in the background (log in <data_dir>/logs/orchestrator.log)."""
    from infra.orchestrator import SERVICE
    from infra.processes import start_detached

    typer.echo(f"orchestrator running, pid {start_detached(_settings(), SERVICE)}")


@orchestrator_app.command("stop")
def orchestrator_stop() -> None:
    """Stop an orchestrator started with `bcratos orchestrator start`.

    Its running jobs go on, and the next start follows them again.
    """
    from infra.orchestrator import SERVICE
    from infra.processes import stop_detached

    stopped = stop_detached(_settings(), SERVICE)
    typer.echo("stopped the orchestrator" if stopped else "no orchestrator was running")


@retrain_app.command("request")
def retrain_request(
    target: Annotated[str, typer.Option(help="Subject pseudonym to retrain for, or global.")],
    reason: Annotated[
        Literal["volume", "drift", "schedule", "manual"],
        typer.Option(help="Trigger of the request."),
    ] = "manual",
    detail: Annotated[str, typer.Option(help="Explanation for operators.")] = "",
) -> None:
    """Publish a retrain request for TARGET on the retrain topic and print its request id."""
    from infra.exceptions import OrchestratorError
    from infra.orchestrator import publish_request

    try:
        request_id = publish_request(_settings(), target, reason=reason, detail=detail)
    except OrchestratorError as exc:
        raise _fail(str(exc)) from exc
    typer.echo(request_id)


@app.command("loop")
def loop_command(
    recordings: Annotated[
        Path, typer.Option(help="Folder of the recordings, laid out as ../shared/data.")
    ] = Path("../shared/data"),
    speed: Annotated[
        float | None,
        typer.Option(help="Replay at this many times real time; default: as fast as possible."),
    ] = None,
    initial_days: Annotated[
        int, typer.Option(min=1, help="Spike sessions replayed before the first model.")
    ] = 6,
    timeout: Annotated[
        float, typer.Option(min=1, help="Maximum wait of one stage, in seconds.")
    ] = 1800.0,
    stop: Annotated[
        bool, typer.Option("--stop", help="Stop the services and the broker at the end.")
    ] = False,
    report: Annotated[bool, typer.Option(help="Write the HTML report at the end.")] = True,
    fresh: Annotated[
        bool,
        typer.Option(
            "--fresh", help="Stop everything and delete the data directory first (lake included)."
        ),
    ] = False,
    evaluate: Annotated[
        bool, typer.Option(help="Run the next-day protocol on the Spike sessions at the end.")
    ] = True,
    evaluate_decoders: Annotated[
        str, typer.Option(help="Decoders of that next-day run: lda, linear, gru, tcn.")
    ] = "lda,linear",
) -> None:
    """Run the closed loop on the real recordings: replay, lake, retrain, announce, install."""
    from infra.closed_loop import ClosedLoop, LoopOptions, LoopStageError, render_summary

    options = LoopOptions(
        recordings=recordings,
        speed=speed,
        initial_days=initial_days,
        stage_timeout_s=timeout,
        stop_at_end=stop,
        report=report,
        fresh=fresh,
        evaluate=evaluate,
        evaluate_decoders=evaluate_decoders,
    )
    try:
        summary = ClosedLoop(_settings(), options, echo=typer.echo).run()
    except LoopStageError as exc:
        raise _fail(str(exc)) from exc
    for line in render_summary(summary):
        typer.echo(line)


@app.command("train")
def train_command(
    dataset: Annotated[str, typer.Option(help="Gold dataset name (<lake>/gold/datasets/NAME).")],
    model: Annotated[
        Literal["linear", "gru", "tcn"], typer.Option(help="Decoder architecture.")
    ] = "gru",
    device: Annotated[
        str, typer.Option(help="cpu, cuda or cuda:N; under torchrun each rank uses its own GPU.")
    ] = "cpu",
    target: Annotated[
        str, typer.Option(help="Subject pseudonym to train for, or global for all subjects.")
    ] = "global",
    epochs: Annotated[
        int, typer.Option(min=1, help="Maximum epochs; early stopping may end sooner.")
    ] = 20,
    seed: Annotated[
        int, typer.Option(help="Random seed; on CPU the same seed gives the same model.")
    ] = 0,
    threads: Annotated[
        int | None,
        typer.Option(min=1, help="torch CPU threads; default: torch's choice (one per core)."),
    ] = None,
) -> None:
    """Train a decoder, test it on the test split, export it to <data_dir>/models/VERSION/."""
    from training.commands import train_dataset
    from training.errors import TrainingError

    try:
        outcome = train_dataset(
            _settings(), dataset, architecture=model, device=device, target=target,
            epochs=epochs, seed=seed, threads=threads,
        )
    except (TrainingError, RuntimeError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    if outcome.directory is None:  # a torchrun rank other than 0
        return
    metrics = outcome.metrics
    typer.echo(f"model {outcome.model_version}: {outcome.directory}")
    typer.echo(
        f"test split: balanced accuracy {metrics['balanced_accuracy']:.3f}, "
        f"macro F1 {metrics['macro_f1']:.3f}, trial accuracy {metrics['trial_accuracy']:.3f} "
        f"({metrics['trials']} trials)"
    )


@app.command("evaluate")
def evaluate_command(
    model_dir: Annotated[
        Path | None, typer.Argument(help="Exported model to score on --dataset's test split.")
    ] = None,
    protocol: Annotated[
        Literal["next-day"] | None,
        typer.Option(help="Run a protocol instead of scoring a model: next-day."),
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="Gold dataset name.")] = None,
    recordings: Annotated[
        list[Path] | None,
        typer.Option(help="Limblab .mat file or folder of them, instead of a dataset; repeat."),
    ] = None,
    subject: Annotated[
        str | None, typer.Option(help="Subject pseudonym of a dataset with several subjects.")
    ] = None,
    decoders: Annotated[
        str, typer.Option(help="Comma-separated decoders for the protocol: lda, linear, gru, tcn.")
    ] = "lda,linear,gru",
    epochs: Annotated[
        int, typer.Option(min=1, help="Training epochs of the neural decoders.")
    ] = 30,
    seed: Annotated[int, typer.Option(help="Random seed of folds and training.")] = 0,
    per_day: Annotated[
        bool, typer.Option("--per-day", help="Also print every test day.")
    ] = False,
    json_path: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "--json",
            help="Also write the full result to this JSON file; the next-day protocol writes "
            "<data_dir>/evaluations/next-day.json (which `bcratos report` reads) unless given.",
        ),
    ] = None,
) -> None:
    """Score a model on a dataset's test split, or run the next-day protocol and print its table."""
    from training.commands import evaluate_model, next_day_protocol
    from training.errors import TrainingError
    from training.nextday import render_table

    settings = _settings()
    if (model_dir is None) == (protocol is None):
        raise _fail("give either MODEL_DIR or --protocol next-day", code=2)
    try:
        if model_dir is not None:
            if dataset is None:
                raise _fail("scoring a model needs --dataset", code=2)
            result: dict[str, object] = evaluate_model(settings, model_dir, dataset)
            typer.echo(json_dumps(result))
        else:
            outcome = next_day_protocol(
                settings, dataset=dataset, recordings=recordings or [], subject=subject,
                decoders=[name.strip() for name in decoders.split(",") if name.strip()],
                epochs=epochs, seed=seed,
            )
            result = outcome.as_dict()
            typer.echo(render_table(outcome, per_day=per_day))
    except (TrainingError, FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    if json_path is None and protocol is not None:
        from jobs.report import default_evaluation

        json_path = default_evaluation(settings)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json_dumps(result) + "\n")
        typer.echo(f"wrote {json_path}", err=True)


@app.command("report")
def report_command(
    output: Annotated[
        Path | None,
        typer.Option(help="HTML file to write; default: <data_dir>/report/index.html."),
    ] = None,
    png_dir: Annotated[
        Path | None, typer.Option(help="Also write every figure as a PNG file to this folder.")
    ] = None,
    evaluation: Annotated[
        Path | None,
        typer.Option(
            help="JSON result of `bcratos evaluate --protocol next-day`; default: "
            "<data_dir>/evaluations/next-day.json."
        ),
    ] = None,
) -> None:
    """Write one self-contained HTML page of plots about the lake, datasets and models."""
    from jobs.exceptions import ReportError
    from jobs.report import build_report
    from streams.exceptions import ResidencyError

    try:
        result = build_report(_settings(), output=output, png_dir=png_dir, evaluation=evaluation)
    except (ReportError, ResidencyError) as exc:
        raise _fail(str(exc), code=2) from exc
    typer.echo(
        f"wrote {result.path}: {result.figures} figures, {result.size_bytes / 1e3:.0f} kB, "
        f"in {result.duration_s:.1f} s"
    )
    if result.png_paths:
        typer.echo(f"wrote {len(result.png_paths)} PNG files to {png_dir}")
    for title in result.missing:
        typer.echo(f"no data for section {title!r}; the page says what to run", err=True)
    if result.failed:
        raise _fail("sections that could not be built: " + "; ".join(result.failed))


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


# `python -m bcratos.cli`, as the default HPC templates run it.
if __name__ == "__main__":
    main()
