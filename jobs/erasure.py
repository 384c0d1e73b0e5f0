"""Erasure of one subject from every table of the lake, down to the data files.

`erase_subject` deletes the subject's rows from every Delta table that has a
``subject_pseudonym`` column: bronze, silver, gold datasets, and registry tables that have one.
Then it vacuums each changed table with a retention of 0 hours, with Delta's retention check
disabled for that vacuum only, so that no data file with the subject's rows stays on disk:

- A table partitioned first by ``subject_pseudonym`` (all bronze and silver tables) gets a
  vacuum of the files its log removed, and the subject's partition folders are deleted with
  whatever they still contain. Files of other subjects that a writer has not committed yet
  are left alone, so the sink need not be stopped. A commit conflict with it fails the
  erasure, which can then be run again.
- Any other table gets a full vacuum, which also deletes files that no version mentions.
  Run it while no job writes that table.

Versions before the erasure can no longer be read (time travel) after the vacuum.

Gold manifests (``<lake>/gold/manifests/<name>.json``) are scrubbed and flagged, not rebuilt.
Every mention of the pseudonym is removed. That is a list item equal to it, a list item that is
an object with a member equal to it (such as the subject's entry in a list of sessions), an
object member keyed by it, and the text inside other strings. A manifest whose dataset lost rows or
that mentioned the subject gets ``"needs_rebuild": true`` and an entry in ``"erasures"``. Its
statistics (row counts, class balance, normalization) and content hash still describe the
erased rows until the dataset is prepared again.

A raw subject id is turned into its pseudonym with the current key (`subject_pseudonym`).
The raw id is never stored, logged or printed, and logs name no pseudonym either.

NOTE: the Delta log (commit files and checkpoints) still holds the pseudonym, in the DELETE
commit's predicate and in the partition values of removed files next to their column
statistics, until ``delta.logRetentionDuration`` (30 days by default) expires and a checkpoint
lets the log be cleaned. The Kafka ``anon.*`` topics keep the subject's events for their
retention too.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

import pyarrow.compute as pc
import pyarrow.fs as pafs
from deltalake import CommitProperties, DeltaTable, PostCommitHookProperties
from deltalake.exceptions import DeltaError

from bcratos.config import Settings
from jobs.catalog import GOLD_MANIFESTS, Lake, LakeTable, find_tables
from jobs.exceptions import ErasureError
from streams.anonymize import PSEUDONYM_HEX_CHARS, Pseudonymizer

logger = logging.getLogger(__name__)

SUBJECT_COLUMN: Final = "subject_pseudonym"
ERASURE_MARK: Final = "bcratos lake erase"
"""``userMetadata`` of the DELETE and VACUUM commits of an erasure, shown by ``lake history``."""

ERASED_TEXT: Final = "<erased subject>"
"""Replacement of the pseudonym inside the text of a manifest."""

PSEUDONYM_PATTERN: Final = re.compile(rf"[0-9a-f]{{{PSEUDONYM_HEX_CHARS}}}")

SubjectKind = Literal["auto", "pseudonym", "raw"]

# Erasure commits write no checkpoint: one written now would repeat the removed files'
# partition values, the pseudonym, in a Parquet file of the log.
_NO_CHECKPOINT: Final = PostCommitHookProperties(create_checkpoint=False)
_HISTORY_SCAN: Final = 100  # commits searched for an erasure that did not finish its vacuum


@dataclass(frozen=True)
class SubjectRef:
    """The pseudonym to erase and how it was obtained."""

    pseudonym: str
    from_raw_id: bool  # True when derived from a raw subject id with the current key
    key_id: str | None = None  # id of that key


@dataclass(frozen=True)
class TableErasure:
    """Outcome of an erasure, or of a dry run, for one table."""

    table: str
    rows_found: int | None  # None when the table has no subject column
    rows_deleted: int = 0
    files_vacuumed: int = 0
    version: int | None = None
    note: str = ""


@dataclass(frozen=True)
class ManifestUpdate:
    """A gold manifest that named the subject or whose dataset lost rows."""

    dataset: str
    path: str
    mentions_removed: int
    rows_removed: int


@dataclass
class ErasureReport:
    """Rows removed per table and manifests updated by one erasure."""

    subject: SubjectRef
    dry_run: bool
    tables: list[TableErasure] = field(default_factory=list)
    manifests: list[ManifestUpdate] = field(default_factory=list)

    @property
    def rows(self) -> int:
        """Rows of the subject found in the lake (deleted, unless a dry run)."""
        return sum(table.rows_found or 0 for table in self.tables)


def subject_pseudonym(settings: Settings, subject: str, kind: SubjectKind = "auto") -> SubjectRef:
    """Return the pseudonym of `subject`, a pseudonym or a raw subject id.

    With `kind` ``auto`` a value of exactly 20 lowercase hexadecimal characters is a pseudonym
    and anything else a raw id. A raw id is pseudonymized with the current key, from the
    settings or the embedded stack's key file. Raises `ErasureError` for a value that is not a
    pseudonym when `kind` is ``pseudonym``, and `AnonymizationKeyError` without a key. Messages
    never contain the value, since it may be a raw id.
    """
    if kind == "pseudonym" or (kind == "auto" and PSEUDONYM_PATTERN.fullmatch(subject)):
        if not PSEUDONYM_PATTERN.fullmatch(subject):
            raise ErasureError(
                f"the subject given as a pseudonym is not one: expected exactly "
                f"{PSEUDONYM_HEX_CHARS} lowercase hexadecimal characters, received "
                f"{len(subject)} characters; give a raw subject id with --raw instead"
            )
        return SubjectRef(subject, from_raw_id=False)
    if not subject.strip():
        raise ErasureError("the raw subject id is empty: expected the id the boards sent")

    from streams.processor import resolve_key

    key, key_id = resolve_key(settings)
    pseudonymizer = Pseudonymizer(key, key_id)
    return SubjectRef(pseudonymizer.subject(subject), from_raw_id=True, key_id=key_id)


def erase_subject(
    settings: Settings, subject: SubjectRef, *, dry_run: bool = False
) -> ErasureReport:
    """Delete one subject's rows from every lake table, vacuum them and update gold manifests.

    Steps per table: 1. skip it without a ``subject_pseudonym`` column, 2. count the subject's
    rows, 3. delete them, 4. vacuum, 5. check that none is left. Then 6. scrub and flag the
    gold manifests. A dry run counts rows and manifest mentions and changes nothing. Running
    it again after a failure finishes what the failed run left. Raises `ErasureError`, and
    `ResidencyError` for a lake outside the allowed regions.
    """
    lake = Lake.from_settings(settings)
    report = ErasureReport(subject, dry_run)
    gold_rows: dict[str, tuple[int, int | None]] = {}
    for table in find_tables(lake):
        outcome = _erase_from_table(lake, table, subject.pseudonym, dry_run=dry_run)
        report.tables.append(outcome)
        if table.layer == "gold" and outcome.rows_found:
            gold_rows[table.name.split(".", 1)[1]] = (outcome.rows_found, outcome.version)

    # 6. Manifests, last, so that a failure here leaves no rows behind.
    report.manifests = _update_manifests(lake, subject.pseudonym, gold_rows, dry_run=dry_run)
    if not dry_run:
        logger.info(
            "erased a subject from the lake %s: %d rows in %d tables, %d manifests updated",
            lake.uri,
            report.rows,
            sum(1 for table in report.tables if table.rows_found),
            len(report.manifests),
        )
    return report


def _erase_from_table(
    lake: Lake, table: LakeTable, pseudonym: str, *, dry_run: bool
) -> TableErasure:
    try:
        delta = lake.open(table)

        # 1. Subject column.
        if SUBJECT_COLUMN not in {column.name for column in delta.schema().fields}:
            return TableErasure(table.name, None, version=delta.version(), note="no subject column")
        by_subject = delta.metadata().partition_columns[:1] == [SUBJECT_COLUMN]

        # 2. Rows, and leftovers of an earlier erasure that stopped before its vacuum.
        rows = _subject_rows(delta, pseudonym)
        leftovers = _has_partition_folder(lake, table, pseudonym) if by_subject else False
        unfinished = leftovers or (not by_subject and _erasure_not_vacuumed(delta))
        if dry_run:
            note = "would vacuum files of an earlier erasure" if unfinished and not rows else ""
            return TableErasure(table.name, rows, version=delta.version(), note=note)
        if not rows and not unfinished:
            return TableErasure(table.name, 0, version=delta.version())

        # 3. Delete.
        deleted = 0
        if rows:
            metrics = delta.delete(
                f"{SUBJECT_COLUMN} = '{pseudonym}'",
                commit_properties=CommitProperties(custom_metadata={"userMetadata": ERASURE_MARK}),
                post_commithook_properties=_NO_CHECKPOINT,
            )
            deleted = int(metrics.get("num_deleted_rows", 0))

        # 4. Vacuum at 0 hours; a full vacuum only where no partition folder isolates the subject.
        vacuumed = delta.vacuum(
            retention_hours=0,
            dry_run=False,
            enforce_retention_duration=False,
            full=not by_subject,
            commit_properties=CommitProperties(custom_metadata={"userMetadata": ERASURE_MARK}),
            post_commithook_properties=_NO_CHECKPOINT,
        )
        if by_subject:
            _delete_partition_folder(lake, table, pseudonym)

        # 5. Check.
        delta.update_incremental()
        remaining = _subject_rows(delta, pseudonym)
    except (DeltaError, OSError) as exc:
        raise ErasureError(
            f"erasure from {table.name} ({table.uri}) failed: {exc}; tables listed before it "
            f"are done, and running the erasure again finishes the rest"
        ) from exc

    if remaining:
        raise ErasureError(
            f"{table.name} still has {remaining} rows of the subject after the erasure at "
            f"version {delta.version()}: a writer added them meanwhile; stop the subject's "
            f"boards or the sink and run the erasure again"
        )
    logger.info(
        "erased a subject from Delta table %s: %d rows deleted, %d files vacuumed, version %d",
        table.uri,
        deleted,
        len(vacuumed),
        delta.version(),
    )
    return TableErasure(table.name, rows, deleted, len(vacuumed), delta.version())


def _subject_rows(delta: DeltaTable, pseudonym: str) -> int:
    dataset = delta.to_pyarrow_dataset()
    return int(dataset.count_rows(filter=pc.field(SUBJECT_COLUMN) == pseudonym))


def _erasure_not_vacuumed(delta: DeltaTable) -> bool:
    """True when an erasure's DELETE is newer than the latest vacuum among recent commits."""
    for entry in delta.history(limit=_HISTORY_SCAN):
        operation = str(entry.get("operation", ""))
        if operation.startswith("VACUUM END"):
            return False
        if operation == "DELETE" and entry.get("userMetadata") == ERASURE_MARK:
            return True
    return False


def _partition_folder(lake: Lake, table: LakeTable, pseudonym: str) -> tuple[pafs.FileSystem, str]:
    fs, path = lake.filesystem(table.uri)
    return fs, f"{path.rstrip('/')}/{SUBJECT_COLUMN}={pseudonym}"


def _has_partition_folder(lake: Lake, table: LakeTable, pseudonym: str) -> bool:
    fs, folder = _partition_folder(lake, table, pseudonym)
    return bool(fs.get_file_info(folder).type != pafs.FileType.NotFound)


def _delete_partition_folder(lake: Lake, table: LakeTable, pseudonym: str) -> None:
    fs, folder = _partition_folder(lake, table, pseudonym)
    if fs.get_file_info(folder).type != pafs.FileType.NotFound:
        fs.delete_dir(folder)


# ---------------------------------------------------------------------------------------------
# Gold manifests


def _update_manifests(
    lake: Lake,
    pseudonym: str,
    gold_rows: Mapping[str, tuple[int, int | None]],
    *,
    dry_run: bool,
) -> list[ManifestUpdate]:
    fs, root = lake.filesystem()
    folder = f"{root}/{GOLD_MANIFESTS}"
    selector = pafs.FileSelector(folder, allow_not_found=True)
    updates = []
    for info in sorted(fs.get_file_info(selector), key=lambda info: info.path):
        if info.type != pafs.FileType.File or not info.base_name.endswith(".json"):
            continue
        dataset = info.base_name.removesuffix(".json")
        manifest = _read_manifest(fs, info.path)
        scrubbed, mentions = scrub(manifest, pseudonym)
        rows, version = gold_rows.get(dataset, (0, None))
        if not mentions and not rows:
            continue
        if not dry_run:
            _flag(scrubbed, rows, version)
            _write_manifest(fs, info.path, scrubbed)
        updates.append(ManifestUpdate(dataset, info.path, mentions, rows))
    return updates


def scrub(value: Any, pseudonym: str) -> tuple[Any, int]:
    """Return a JSON value without any mention of `pseudonym`, and how many were removed."""
    if isinstance(value, dict):
        result: dict[str, Any] = {}
        removed = 0
        for key, item in value.items():
            if key == pseudonym:
                removed += 1
                continue
            clean_key, key_mentions = scrub(key, pseudonym)
            clean_item, item_mentions = scrub(item, pseudonym)
            result[clean_key] = clean_item
            removed += key_mentions + item_mentions
        return result, removed
    if isinstance(value, list):
        items = []
        removed = 0
        for item in value:
            if item == pseudonym or (isinstance(item, dict) and pseudonym in item.values()):
                removed += 1
                continue
            clean_item, item_mentions = scrub(item, pseudonym)
            items.append(clean_item)
            removed += item_mentions
        return items, removed
    if isinstance(value, str) and pseudonym in value:
        return value.replace(pseudonym, ERASED_TEXT), value.count(pseudonym)
    return value, 0


def _flag(manifest: Any, rows: int, version: int | None) -> None:
    if not isinstance(manifest, dict):
        raise ErasureError(
            "a gold manifest is not a JSON object, so it cannot be flagged for rebuilding"
        )
    manifest["needs_rebuild"] = True
    erasures = manifest.setdefault("erasures", [])
    erasures.append(
        {
            "erased_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "rows_removed": rows,
            "dataset_version": version,
        }
    )


def _read_manifest(fs: pafs.FileSystem, path: str) -> Any:
    try:
        with fs.open_input_stream(path) as stream:
            return json.loads(stream.read())
    except (OSError, ValueError) as exc:
        raise ErasureError(
            f"cannot read the gold manifest {path}: {exc}; the subject's rows are erased, so "
            f"fix or remove the manifest and run the erasure again to finish the manifests"
        ) from exc


def _write_manifest(fs: pafs.FileSystem, path: str, manifest: Any) -> None:
    """Write through a temporary file and a rename, so readers never see half a manifest."""
    temporary = f"{path}.erasure-tmp"
    with fs.open_output_stream(temporary) as stream:
        stream.write(json.dumps(manifest, indent=2).encode("utf-8") + b"\n")
    fs.move(temporary, path)
