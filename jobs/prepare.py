"""Dataset preparation: labelled, split and normalized model steps as a gold Delta table.

``bcratos jobs prepare --name NAME`` reads ``silver/spike_steps`` and
``bronze/behavior_events`` at pinned Delta versions and writes

- ``<lake>/gold/datasets/<NAME>``: one row per selected session and step (`GOLD_COLUMNS`),
  partitioned by ``split``, because a training job reads one split at a time;
- ``<lake>/gold/manifests/<NAME>.json``: source versions, parameters, row counts per split and
  class, classes, normalization statistics, label rules, timings and the content hash.

Labels follow `jobs.dataset.labels` (rest, pre_movement, the trial's class, release), splits
`jobs.dataset.splits` (whole days or sessions, the last ones of each subject for test) and
normalization `jobs.dataset.normalization` (per-channel mean and std of training steps only,
pooled per subject by default). The gold rows contain no timestamps and the job overwrites the
table, so two runs on the same source versions write the same rows and the same hash.
``--reproduce`` rebuilds the rows from the manifest's versions and parameters and compares the
hashes.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from pyspark import StorageLevel
from pyspark.sql import functions as F

from bcratos.config import Settings
from jobs.dataset.errors import (
    InvalidParameterError,
    ManifestError,
    SelectionError,
    SourceTableError,
    spark_step,
)
from jobs.dataset.labels import (
    LABEL_RULES,
    TRIAL_COLUMNS,
    build_trials,
    count_overlapping_trials,
    label_steps,
)
from jobs.dataset.manifest import FORMAT_VERSION, combine_hashes, read_manifest, write_manifest
from jobs.dataset.normalization import (
    NORMALIZATION_CHOICES,
    NormalizationMode,
    NormalizationPlan,
    plan_normalization,
)
from jobs.dataset.sources import (
    BEHAVIOR_EVENTS,
    GOLD_DATASETS,
    SOURCE_TABLES,
    SPIKE_STEPS,
    check_dataset_name,
    dataset_uri,
    latest_version,
    manifest_uri,
    read_version,
    table_uri,
)
from jobs.dataset.splits import SPLIT_BY_CHOICES, SessionKey, SplitBy, SplitPlan, assign_splits
from jobs.dataset.steps import (
    add_features,
    add_label_index,
    add_window_complete,
    rebin,
    session_hashes,
    statistics_frame,
    training_sums,
)
from streams.lake import check_lake_uri

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

logger = logging.getLogger(__name__)

DEFAULT_STEP_MS: Final = 50  # model step width in ms
DEFAULT_WINDOW: Final = 10  # steps in a decoder's input window, 500 ms at 50 ms steps

GOLD_COLUMNS: Final = (
    "subject_pseudonym",
    "session_pseudonym",
    "session_day",
    "split",
    "step_index",
    "t_step_us",
    "step_ms",
    "n_channels",
    "counts",  # (n_channels,) int32 spike counts
    "features",  # (n_channels,) float32 normalized counts
    "gap",
    "window_complete",
    "label",
    "label_index",
    "trial_id",
    "trial_class",
    "trial_outcome",
    "excluded",
    "exclusion_reason",
    "movement_start_source",
    "steps_from_go",
)
GOLD_PARTITION_COLUMNS: Final = ("split",)
_SORT_COLUMNS: Final = (
    "split",
    "subject_pseudonym",
    "session_day",
    "session_pseudonym",
    "step_index",
)
_MAX_LISTED: Final = 20  # values listed in an error message at most
SNAPSHOT_PARTITIONS_CONF: Final = "spark.databricks.delta.snapshotPartitions"


# ---------------------------------------------------------------------------------------------
# Parameters and results


@dataclass(frozen=True)
class PrepareParameters:
    """Parameters of a preparation: dataset name, selection, step width, splits, normalization."""

    name: str
    subjects: tuple[str, ...] | None = None  # subject pseudonyms; None selects all
    days: tuple[int, ...] | None = None  # shifted session days; None selects all
    step_ms: int = DEFAULT_STEP_MS  # a multiple of the silver step width
    window: int = DEFAULT_WINDOW  # steps that `window_complete` requires
    split_by: SplitBy = "day"
    test_days: int = 1  # last units (days or sessions) of each subject that are test
    validation_days: int = 1  # units before the test units that are validation
    normalization: NormalizationMode = "subject"

    def __post_init__(self) -> None:
        """Raise `InvalidParameterError` for a value out of range."""
        check_dataset_name(self.name)
        if self.subjects is not None and (
            not self.subjects or any(not subject for subject in self.subjects)
        ):
            raise InvalidParameterError(
                f"invalid subjects {self.subjects!r}: expected one or more pseudonyms"
            )
        if self.days is not None and not self.days:
            raise InvalidParameterError("invalid days (): expected one or more session days")
        for option, value, minimum in (
            ("step_ms", self.step_ms, 1),
            ("window", self.window, 1),
            ("test_days", self.test_days, 0),
            ("validation_days", self.validation_days, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise InvalidParameterError(
                    f"invalid {option} {value!r}: expected a whole number of at least {minimum}"
                )
        if self.split_by not in SPLIT_BY_CHOICES:
            raise InvalidParameterError(
                f"invalid split_by {self.split_by!r}: expected one of {', '.join(SPLIT_BY_CHOICES)}"
            )
        if self.normalization not in NORMALIZATION_CHOICES:
            raise InvalidParameterError(
                f"invalid normalization {self.normalization!r}: expected one of "
                f"{', '.join(NORMALIZATION_CHOICES)}"
            )

    def as_dict(self) -> dict[str, Any]:
        """Return the parameters as JSON-ready values."""
        values = asdict(self)
        for key in ("subjects", "days"):
            if values[key] is not None:
                values[key] = list(values[key])
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PrepareParameters:
        """Return parameters from `as_dict` output; raises `ManifestError` for bad values."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ManifestError(f"manifest parameters have unknown keys {unknown}")
        arguments = dict(values)
        for key in ("subjects", "days"):
            if arguments.get(key) is not None:
                arguments[key] = tuple(arguments[key])
        try:
            return cls(**arguments)
        except (InvalidParameterError, TypeError) as exc:
            raise ManifestError(f"manifest parameters are invalid: {exc}") from exc


def parse_subjects(text: str | None) -> tuple[str, ...] | None:
    """Return the pseudonyms of a comma-separated list, sorted and without repeats.

    >>> parse_subjects("b2, a1,b2")
    ('a1', 'b2')
    """
    if text is None:
        return None
    subjects = sorted({part.strip() for part in text.split(",") if part.strip()})
    if not subjects:
        raise InvalidParameterError(f"invalid subjects {text!r}: expected pseudonyms P1,P2")
    return tuple(subjects)


def parse_days(text: str | None) -> tuple[int, ...] | None:
    """Return the session days of a comma-separated list, sorted and without repeats.

    >>> parse_days("812,810, 812")
    (810, 812)
    """
    if text is None:
        return None
    days: set[int] = set()
    for part in text.split(","):
        if not part.strip():
            continue
        if not re.fullmatch(r"\s*-?\d+\s*", part):
            raise InvalidParameterError(
                f"invalid day {part.strip()!r} in --days {text!r}: expected whole session day "
                "numbers such as 812,813"
            )
        days.add(int(part))
    if not days:
        raise InvalidParameterError(f"invalid days {text!r}: expected day numbers D1,D2")
    return tuple(sorted(days))


@dataclass(frozen=True)
class PrepareResult:
    """Outcome of a preparation run: the tables it wrote and their figures."""

    name: str
    dataset_uri: str
    manifest_uri: str
    gold_version: int
    source_versions: dict[str, int]
    rows_by_split: dict[str, int]
    classes: list[str]
    content_hash: str
    duration_s: float
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ReproduceResult:
    """The hash of a manifest, of the rows rebuilt from its versions and of the stored rows."""

    name: str
    expected_hash: str
    rebuilt_hash: str
    stored_hash: str | None  # None when the recorded gold version cannot be read
    expected_rows: dict[str, int]
    rebuilt_rows: dict[str, int]
    notes: list[str] = field(default_factory=list)

    @property
    def matches(self) -> bool:
        """Whether the rebuilt rows, and the stored rows when readable, match the manifest."""
        stored_ok = self.stored_hash is None or self.stored_hash == self.expected_hash
        return self.rebuilt_hash == self.expected_hash and stored_ok


@dataclass(frozen=True)
class SessionInfo:
    """One selected session as the silver table describes it."""

    subject_pseudonym: str
    session_day: int
    session_pseudonym: str
    silver_step_ms: int
    n_channels: int
    silver_steps: int
    end_us: int  # end of the last silver step, microseconds since session start

    @property
    def key(self) -> SessionKey:
        return SessionKey(self.subject_pseudonym, self.session_day, self.session_pseudonym)


@dataclass
class BuiltDataset:
    """The gold rows of a dataset before they are written, and what the manifest needs."""

    frame: DataFrame  # GOLD_COLUMNS, clustered by session, sorted by split, subject, day, step
    sessions: list[SessionInfo]
    split_plan: SplitPlan
    normalization: NormalizationPlan
    classes: list[str]
    trials: dict[str, Any]
    notes: list[str]
    timings_s: dict[str, float]
    persisted: list[DataFrame] = field(default_factory=list)

    def release(self) -> None:
        """Drop the cached intermediate rows."""
        for frame in self.persisted:
            frame.unpersist()
        self.persisted.clear()


# ---------------------------------------------------------------------------------------------
# Entry points


def prepare_dataset(
    settings: Settings, parameters: PrepareParameters, *, spark: SparkSession | None = None
) -> PrepareResult:
    """Prepare dataset ``parameters.name`` from the latest source versions.

    Steps: 1. pin the latest version of each source table, 2. build the rows, 3. overwrite
    the gold table, 4. hash the written version, 5. write the manifest. Raises
    `InvalidParameterError`, `SelectionError`, `SourceTableError`, `ManifestError` and
    `SparkJobError`, all `DatasetJobError`, and `ResidencyError` for a lake URI outside
    ``lake.allowed_regions``.
    """
    started = time.monotonic()
    created_at = datetime.now(UTC)
    spark = spark if spark is not None else _session(settings)
    _configure(spark, settings)
    lake = _lake_root(settings)
    logger.info("preparing dataset %s from lake %s", parameters.name, lake)

    # 1. Source versions.
    versions = {table: latest_version(spark, table_uri(lake, table)) for table in SOURCE_TABLES}
    logger.info("reading source versions %s", versions)
    pin_s = round(time.monotonic() - started, 3)

    # 2. Rows.
    built = build_dataset(spark, lake, parameters, versions)
    built.timings_s = {"pin_versions_s": pin_s, **built.timings_s}
    try:
        # 3. Gold table.
        gold_uri = dataset_uri(lake, parameters.name)
        mark = time.monotonic()
        gold_version = _write_gold(spark, built.frame, gold_uri)
        built.timings_s["write_s"] = round(time.monotonic() - mark, 3)
        logger.info("committed version %d of gold table %s", gold_version, gold_uri)

        # 4. Hash and row counts of what was written.
        mark = time.monotonic()
        stored = read_version(spark, gold_uri, gold_version)
        with spark_step(f"hashing version {gold_version} of {gold_uri}"):
            content_hash = combine_hashes(
                _schema_line(stored), session_hashes(stored, GOLD_COLUMNS)
            )
            rows = _row_counts(stored)
        built.timings_s["hash_and_count_s"] = round(time.monotonic() - mark, 3)
    finally:
        built.release()

    # 5. Manifest.
    duration_s = round(time.monotonic() - started, 3)
    manifest = _manifest(
        parameters,
        built,
        versions=versions,
        gold_version=gold_version,
        rows=rows,
        content_hash=content_hash,
        created_at=created_at,
        duration_s=duration_s,
    )
    manifest_location = manifest_uri(lake, parameters.name)
    write_manifest(manifest_location, manifest)
    logger.info("wrote manifest %s in %.1f s", manifest_location, duration_s)
    return PrepareResult(
        name=parameters.name,
        dataset_uri=gold_uri,
        manifest_uri=manifest_location,
        gold_version=gold_version,
        source_versions=versions,
        rows_by_split=manifest["rows"]["by_split"],
        classes=built.classes,
        content_hash=content_hash,
        duration_s=duration_s,
        notes=manifest["notes"],
    )


def reproduce_dataset(
    settings: Settings, name: str, *, spark: SparkSession | None = None
) -> ReproduceResult:
    """Rebuild dataset `name` from its manifest's source versions and parameters, and compare.

    Nothing is written. The rebuilt rows are hashed like the written ones, and the stored
    gold table is hashed at the version the manifest records. Raises `ManifestError` for a
    missing or malformed manifest, `SourceTableError` when a recorded source version can no
    longer be read, and `ResidencyError` like `prepare_dataset`.
    """
    spark = spark if spark is not None else _session(settings)
    _configure(spark, settings)
    lake = _lake_root(settings)
    manifest = read_manifest(manifest_uri(lake, name))
    parameters = PrepareParameters.from_dict(manifest["parameters"])
    if parameters.name != name:
        raise ManifestError(
            f"manifest of dataset {name!r} names dataset {parameters.name!r} in its parameters"
        )
    versions = _recorded_versions(manifest)

    built = build_dataset(spark, lake, parameters, versions)
    try:
        with spark_step(f"hashing the rebuilt rows of dataset {name}"):
            rebuilt_hash = combine_hashes(
                _schema_line(built.frame), session_hashes(built.frame, GOLD_COLUMNS)
            )
            rebuilt_rows = _row_counts(built.frame)["by_split"]
    finally:
        built.release()

    notes: list[str] = []
    stored_hash: str | None = None
    gold_version = manifest.get("gold", {}).get("version")
    if isinstance(gold_version, int):
        try:
            stored = read_version(spark, dataset_uri(lake, name), gold_version)
            with spark_step(f"hashing version {gold_version} of dataset {name}"):
                stored_hash = combine_hashes(
                    _schema_line(stored), session_hashes(stored, GOLD_COLUMNS)
                )
        except SourceTableError as exc:
            notes.append(f"stored rows not checked: {exc}")
    return ReproduceResult(
        name=name,
        expected_hash=manifest["content_hash"],
        rebuilt_hash=rebuilt_hash,
        stored_hash=stored_hash,
        expected_rows=dict(manifest.get("rows", {}).get("by_split", {})),
        rebuilt_rows=rebuilt_rows,
        notes=notes,
    )


def _session(settings: Settings) -> SparkSession:
    from infra.spark import spark_session

    return spark_session(settings, app_name="bcratos-prepare")


def _lake_root(settings: Settings) -> str:
    """Return the lake URI after the residency check, without its ``region`` query."""
    return check_lake_uri(settings.lake_uri, settings.lake.allowed_regions).uri


def _configure(spark: SparkSession, settings: Settings) -> None:
    """Reconstruct Delta snapshots with as many tasks as a shuffle, unless the settings set it.

    Delta's default of 50 snapshot partitions makes each of the job's dozen log reads run 50
    small tasks, which dominates the run time of a small dataset on two cores.
    """
    if SNAPSHOT_PARTITIONS_CONF not in settings.spark.conf:
        spark.conf.set(SNAPSHOT_PARTITIONS_CONF, str(settings.spark.shuffle_partitions))


def _recorded_versions(manifest: Mapping[str, Any]) -> dict[str, int]:
    sources = manifest["sources"]
    versions: dict[str, int] = {}
    for table in SOURCE_TABLES:
        version = sources.get(table, {}).get("version") if isinstance(sources, dict) else None
        if isinstance(version, bool) or not isinstance(version, int):
            raise ManifestError(
                f"manifest of dataset {manifest.get('name')!r} records no version of {table}"
            )
        versions[table] = version
    return versions


# ---------------------------------------------------------------------------------------------
# Building the rows


def build_dataset(
    spark: SparkSession,
    lake_uri: str,
    parameters: PrepareParameters,
    versions: Mapping[str, int],
) -> BuiltDataset:
    """Build the gold rows at the given source versions, without writing them.

    Steps: 1. read the sources, 2. select and check sessions, 3. split the sessions,
    4. re-bin the steps, 5. build trials and label the steps, 6. compute the normalization
    statistics from training steps, 7. add features, label index and windows. Call
    `BuiltDataset.release` when done with the rows.
    """
    timings: dict[str, float] = {}
    mark = time.monotonic()

    # 1. Sources at their pinned versions.
    steps_uri = table_uri(lake_uri, SPIKE_STEPS)
    events_uri = table_uri(lake_uri, BEHAVIOR_EVENTS)
    all_steps = read_version(spark, steps_uri, versions[SPIKE_STEPS])
    all_events = read_version(spark, events_uri, versions[BEHAVIOR_EVENTS])

    # 2. Sessions.
    with spark_step(f"selecting sessions of {steps_uri}"):
        sessions = _select_sessions(all_steps, parameters, versions[SPIKE_STEPS])
    session_names = [session.session_pseudonym for session in sessions]
    selected = F.col("session_pseudonym").isin(session_names)
    steps = _filter_partitions(all_steps, sessions).where(selected)
    events = _filter_partitions(all_events, sessions).where(selected)

    # 3. Splits.
    split_plan = assign_splits(
        [session.key for session in sessions],
        split_by=parameters.split_by,
        test_units=parameters.test_days,
        validation_units=parameters.validation_days,
    )

    # 4. Steps at the requested width.
    silver_widths = {session.silver_step_ms for session in sessions}
    rebinned = rebin(steps, step_ms=parameters.step_ms, silver_step_ms=silver_widths)

    # 5 and 6. Trials, labels and statistics; cached rows are dropped if a step fails.
    persisted: list[DataFrame] = []
    try:
        with spark_step(f"building trials from {events_uri}"):
            labelled, trial_summary = _label(
                spark, events, rebinned, sessions, split_plan, parameters.step_ms, persisted
            )
        timings["select_and_trials_s"] = round(time.monotonic() - mark, 3)
        mark = time.monotonic()
        with spark_step("computing normalization statistics from the training steps"):
            sums = training_sums(labelled)
            classes = _classes(labelled)
    except BaseException:
        for frame in persisted:
            frame.unpersist()
        raise
    normalization = plan_normalization(
        parameters.normalization,
        training_sums=sums,
        sessions=[
            (
                s.subject_pseudonym,
                s.session_pseudonym,
                split_plan.splits[s.session_pseudonym],
                s.n_channels,
            )
            for s in sessions
        ],
    )
    timings["label_and_statistics_s"] = round(time.monotonic() - mark, 3)

    # 7. Features, label index, windows; deterministic layout.
    statistics = statistics_frame(spark, normalization.applied)
    gold = add_window_complete(
        add_label_index(add_features(labelled, statistics), classes), parameters.window
    )
    # The window of step 7 already clusters rows by session, so no shuffle is needed. Sorting
    # by split first lets the partitioned Delta write keep this order without another sort.
    frame = gold.select(*GOLD_COLUMNS).sortWithinPartitions(*_SORT_COLUMNS)
    notes = [*split_plan.notes, *normalization.notes, *trial_summary.pop("notes")]
    return BuiltDataset(
        frame=frame,
        sessions=sessions,
        split_plan=split_plan,
        normalization=normalization,
        classes=classes,
        trials=trial_summary,
        notes=notes,
        timings_s=timings,
        persisted=persisted,
    )


def _label(
    spark: SparkSession,
    events: DataFrame,
    steps: DataFrame,
    sessions: Sequence[SessionInfo],
    split_plan: SplitPlan,
    step_ms: int,
    persisted: list[DataFrame],
) -> tuple[DataFrame, dict[str, Any]]:
    """Return the labelled steps with their split, cached, and the trial summary.

    Cached frames are appended to `persisted`, so the caller can drop them.
    """
    session_ends = spark.createDataFrame(
        [(session.session_pseudonym, session.end_us) for session in sessions],
        "session_pseudonym string, session_end_us long",
    )
    trials = build_trials(events, session_ends).persist(StorageLevel.MEMORY_AND_DISK)
    persisted.append(trials)
    overlapping = count_overlapping_trials(trials)
    trial_summary = _summarize_trials(trials, sessions, overlapping)

    split_frame = spark.createDataFrame(
        sorted(split_plan.splits.items()), "session_pseudonym string, split string"
    )
    labelled = (
        label_steps(steps, trials, step_us=step_ms * 1000, resolve_overlaps=overlapping > 0)
        .join(F.broadcast(split_frame), on="session_pseudonym", how="inner")
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    persisted.append(labelled)
    return labelled, trial_summary


def _classes(labelled: DataFrame) -> list[str]:
    """Return the sorted labels and trial classes of the steps.

    A trial class whose trials cover no step start (a trial shorter than one step) is listed
    too, so every ``trial_class`` value has a ``label_index``.
    """
    names = labelled.select(F.col("label").alias("name")).union(
        labelled.select(F.col("trial_class").alias("name"))
    )
    rows = names.where(F.col("name").isNotNull()).distinct().collect()
    return sorted(row["name"] for row in rows)


def _filter_partitions(frame: DataFrame, sessions: Sequence[SessionInfo]) -> DataFrame:
    """Keep the (subject, day) partitions of `sessions`, so Spark reads only their files."""
    subjects = sorted({session.subject_pseudonym for session in sessions})
    days = sorted({session.session_day for session in sessions})
    return frame.where(F.col("subject_pseudonym").isin(subjects) & F.col("session_day").isin(days))


def _select_sessions(
    steps: DataFrame, parameters: PrepareParameters, version: int
) -> list[SessionInfo]:
    """Return the sessions that the parameters select, or raise `SelectionError`.

    Checks, in this order: every requested subject has steps, every requested day has steps
    of a requested subject, the selection is not empty, each session's silver step width
    divides the requested width, and each subject has one channel count.
    """
    where = f"{SPIKE_STEPS} version {version}"
    available = {
        (row["subject_pseudonym"], int(row["session_day"]))
        for row in steps.select("subject_pseudonym", "session_day").distinct().collect()
    }
    known_subjects = sorted({subject for subject, _day in available})
    if parameters.subjects is not None:
        unknown = [subject for subject in parameters.subjects if subject not in known_subjects]
        if unknown:
            raise SelectionError(
                f"unknown subject pseudonym {_listing(unknown)} in {where}: expected one of "
                f"{_listing(known_subjects)}"
            )
    selected_subjects = set(parameters.subjects or known_subjects)
    days_of_subjects = sorted({day for subject, day in available if subject in selected_subjects})
    if parameters.days is not None:
        unknown_days = [day for day in parameters.days if day not in days_of_subjects]
        if unknown_days:
            raise SelectionError(
                f"no session on day {_listing(unknown_days)} for the selected subjects in "
                f"{where}: days with sessions are {_listing(days_of_subjects)}"
            )

    selected = steps.where(F.col("subject_pseudonym").isin(sorted(selected_subjects)))
    if parameters.days is not None:
        selected = selected.where(F.col("session_day").isin(list(parameters.days)))
    rows = (
        selected.groupBy(
            "subject_pseudonym", "session_day", "session_pseudonym", "step_ms", "n_channels"
        )
        .agg(F.count(F.lit(1)).alias("steps"), F.max("t_step_us").alias("last_step_us"))
        .collect()
    )
    if not rows:
        raise SelectionError(
            f"no steps in {where} for subjects {_listing(sorted(selected_subjects))} and days "
            f"{_listing(list(parameters.days or days_of_subjects))}"
        )
    sessions = [
        SessionInfo(
            subject_pseudonym=row["subject_pseudonym"],
            session_day=int(row["session_day"]),
            session_pseudonym=row["session_pseudonym"],
            silver_step_ms=int(row["step_ms"]),
            n_channels=int(row["n_channels"]),
            silver_steps=int(row["steps"]),
            end_us=int(row["last_step_us"]) + int(row["step_ms"]) * 1000,
        )
        for row in rows
    ]
    _check_sessions(sessions, parameters.step_ms, where)
    return sorted(sessions, key=lambda session: session.key)


def _check_sessions(sessions: Sequence[SessionInfo], step_ms: int, where: str) -> None:
    counts = Counter(session.session_pseudonym for session in sessions)
    mixed = sorted(name for name, count in counts.items() if count > 1)
    if mixed:
        raise SelectionError(
            f"sessions {_listing(mixed)} in {where} mix step widths or channel counts: "
            "expected one of each per session"
        )
    for session in sessions:
        if step_ms % session.silver_step_ms:
            raise SelectionError(
                f"step width {step_ms} ms is not a multiple of the silver step width "
                f"{session.silver_step_ms} ms of session {session.session_pseudonym} (subject "
                f"{session.subject_pseudonym}, day {session.session_day}) in {where}: choose "
                f"--step-ms {session.silver_step_ms} or a multiple of it"
            )
    channels: dict[str, set[int]] = {}
    for session in sessions:
        channels.setdefault(session.subject_pseudonym, set()).add(session.n_channels)
    for subject, counts_of_subject in sorted(channels.items()):
        if len(counts_of_subject) > 1:
            raise SelectionError(
                f"subject {subject} has sessions with {sorted(counts_of_subject)} channels in "
                f"{where}: per-channel statistics need one channel count; select days with the "
                "same array layout"
            )


def _summarize_trials(
    trials: DataFrame, sessions: Sequence[SessionInfo], overlapping: int
) -> dict[str, Any]:
    """Return trial counts by outcome, class, movement start source and exclusion reason."""
    rows = (
        trials.groupBy(
            "session_pseudonym",
            "trial_outcome",
            "trial_class",
            "movement_start_source",
            "exclusion_reason",
            F.col("release_us").isNotNull().alias("has_release"),
        )
        .count()
        .collect()
    )
    by: dict[str, Counter[str]] = {
        key: Counter() for key in ("outcome", "class", "movement_start_source", "exclusion_reason")
    }
    total = 0
    with_release = 0
    sessions_with_trials: set[str] = set()
    for row in rows:
        count = int(row["count"])
        total += count
        with_release += count if row["has_release"] else 0
        sessions_with_trials.add(row["session_pseudonym"])
        by["outcome"][row["trial_outcome"] or "none"] += count
        by["class"][row["trial_class"] or "none"] += count
        by["movement_start_source"][row["movement_start_source"]] += count
        by["exclusion_reason"][row["exclusion_reason"] or "included"] += count

    notes: list[str] = []
    without = sorted(
        s.session_pseudonym for s in sessions if s.session_pseudonym not in sessions_with_trials
    )
    if without:
        notes.append(
            f"{len(without)} sessions have no trials in the behaviour events, so all their "
            f"steps are rest: {_listing(without)}"
        )
    fallback = total - by["movement_start_source"]["go_cue"]
    if fallback:
        notes.append(
            f"{fallback} trials have no go cue: their movement starts at the target_on event "
            f"({by['movement_start_source']['target_on']}) or at the trial start "
            f"({by['movement_start_source']['trial_start']})"
        )
    if overlapping:
        notes.append(
            f"{overlapping} trials start before the previous trial of their session ends; a "
            "step inside both belongs to the later trial"
        )
    return {
        "count": total,
        "with_release": with_release,
        "overlapping": overlapping,
        "by_outcome": dict(sorted(by["outcome"].items())),
        "by_class": dict(sorted(by["class"].items())),
        "by_movement_start_source": dict(sorted(by["movement_start_source"].items())),
        "by_exclusion_reason": dict(sorted(by["exclusion_reason"].items())),
        "notes": notes,
    }


# ---------------------------------------------------------------------------------------------
# Writing and describing


def _write_gold(spark: SparkSession, frame: DataFrame, uri: str) -> int:
    """Overwrite the gold table at `uri` with `frame` and return the committed version.

    NOTE: the version is read back as the table's latest one, so a second job writing the same
    dataset at the same moment could make this return the other job's version.
    """
    with spark_step(f"writing gold table {uri}"):
        (
            frame.write.format("delta")
            .mode("overwrite")
            .option("overwriteSchema", "true")
            .partitionBy(*GOLD_PARTITION_COLUMNS)
            .save(uri)
        )
    return latest_version(spark, uri)


def _schema_line(frame: DataFrame) -> str:
    return ", ".join(
        f"{column.name} {column.dataType.simpleString()}"
        for column in frame.select(*GOLD_COLUMNS).schema
    )


def _row_counts(frame: DataFrame) -> dict[str, Any]:
    """Return row counts by split, by split and label, and of excluded and gap rows."""
    rows = frame.groupBy("split", "label", "excluded", "gap", "window_complete").count().collect()
    by_split: Counter[str] = Counter()
    by_class: dict[str, Counter[str]] = {}
    included: dict[str, Counter[str]] = {}
    excluded: Counter[str] = Counter()
    gaps: Counter[str] = Counter()
    complete: Counter[str] = Counter()
    for row in rows:
        split, label, count = row["split"], row["label"], int(row["count"])
        by_split[split] += count
        by_class.setdefault(split, Counter())[label] += count
        if row["excluded"]:
            excluded[split] += count
        else:
            included.setdefault(split, Counter())[label] += count
        if row["gap"]:
            gaps[split] += count
        if row["window_complete"]:
            complete[split] += count
    return {
        "total": sum(by_split.values()),
        "by_split": dict(sorted(by_split.items())),
        "by_split_and_class": {s: dict(sorted(c.items())) for s, c in sorted(by_class.items())},
        "included_by_split_and_class": {
            s: dict(sorted(c.items())) for s, c in sorted(included.items())
        },
        "excluded_by_split": dict(sorted(excluded.items())),
        "gap_by_split": dict(sorted(gaps.items())),
        "window_complete_by_split": dict(sorted(complete.items())),
    }


def _manifest(
    parameters: PrepareParameters,
    built: BuiltDataset,
    *,
    versions: Mapping[str, int],
    gold_version: int,
    rows: Mapping[str, Any],
    content_hash: str,
    created_at: datetime,
    duration_s: float,
) -> dict[str, Any]:
    """Return the manifest of a written dataset as JSON-ready values."""
    plan = built.normalization
    sessions = [
        {
            "subject_pseudonym": s.subject_pseudonym,
            "session_day": s.session_day,
            "session_pseudonym": s.session_pseudonym,
            "split": built.split_plan.splits[s.session_pseudonym],
            "silver_step_ms": s.silver_step_ms,
            "silver_steps": s.silver_steps,
            "n_channels": s.n_channels,
            "normalization": plan.applied[s.session_pseudonym][0],
        }
        for s in built.sessions
    ]
    return {
        "format_version": FORMAT_VERSION,
        "name": parameters.name,
        "created_at": created_at.isoformat(timespec="seconds"),
        "duration_s": duration_s,
        "timings_s": built.timings_s,
        "gold": {
            "path": f"{GOLD_DATASETS}/{parameters.name}",
            "version": gold_version,
            "partition_by": list(GOLD_PARTITION_COLUMNS),
            "columns": list(GOLD_COLUMNS),
        },
        "sources": {table: {"version": version} for table, version in sorted(versions.items())},
        "parameters": parameters.as_dict(),
        "classes": built.classes,
        "rows": dict(rows),
        "sessions": sessions,
        "splits": {"units": built.split_plan.units},
        "trials": built.trials,
        "normalization": {
            "mode": plan.mode,
            "statistic": "per-channel mean and population std of counts over training steps "
            "without a gap; features = (count - mean) / std, with std 0 replaced by 1",
            "subjects": {name: stats.as_dict() for name, stats in sorted(plan.subjects.items())},
            "sessions": {name: stats.as_dict() for name, stats in sorted(plan.sessions.items())},
        },
        "label_rules": list(LABEL_RULES),
        "trial_columns": list(TRIAL_COLUMNS),
        "notes": built.notes,
        "content_hash": content_hash,
    }


def describe_result(result: PrepareResult) -> list[str]:
    """Return the lines that `bcratos jobs prepare` prints for a written dataset."""
    splits = ", ".join(f"{split} {rows}" for split, rows in result.rows_by_split.items())
    versions = ", ".join(f"{table} v{version}" for table, version in result.source_versions.items())
    lines = [
        f"dataset {result.name}: version {result.gold_version} of {result.dataset_uri}",
        f"rows: {splits}",
        f"classes: {', '.join(result.classes)}",
        f"sources: {versions}",
        f"manifest: {result.manifest_uri}",
        f"content hash: {result.content_hash}",
        f"took {result.duration_s:.1f} s",
    ]
    lines.extend(f"note: {note}" for note in result.notes)
    return lines


def describe_reproduction(result: ReproduceResult) -> list[str]:
    """Return the lines that `bcratos jobs prepare --reproduce` prints."""
    lines = [
        f"dataset {result.name}: manifest hash {result.expected_hash}",
        f"rebuilt from the recorded source versions: {result.rebuilt_hash}",
        f"stored gold rows: {result.stored_hash or 'not checked'}",
    ]
    if result.rebuilt_rows != result.expected_rows:
        lines.append(f"rows: manifest {result.expected_rows}, rebuilt {result.rebuilt_rows}")
    lines.extend(f"note: {note}" for note in result.notes)
    lines.append("reproduced: hashes match" if result.matches else "NOT reproduced: hashes differ")
    return lines


def _listing(values: Sequence[object]) -> str:
    """Return values as a comma-separated list, cut after `_MAX_LISTED` of them."""
    listed = ", ".join(str(value) for value in values[:_MAX_LISTED])
    rest = len(values) - _MAX_LISTED
    return f"{listed} and {rest} more" if rest > 0 else listed


def parameters_from_options(options: Mapping[str, Any]) -> PrepareParameters:
    """Return parameters from command-line values; None leaves an option at its default.

    `options` has the `PrepareParameters` field names; ``subjects`` and ``days`` are the
    comma-separated text of the command line.
    """
    values = {key: value for key, value in options.items() if value is not None}
    if "subjects" in values:
        values["subjects"] = parse_subjects(values["subjects"])
    if "days" in values:
        values["days"] = parse_days(values["days"])
    return PrepareParameters(**values)
