"""The JSON manifest of a prepared dataset, and the content hash of its rows.

A manifest sits next to the gold table, at ``<lake>/gold/manifests/<name>.json``. It records
what a later run needs to rebuild the dataset and check that it got the same rows: the Delta
version of every source table, the job parameters and the content hash. It also records what a
reader of the dataset needs to use it: classes, row counts, normalization statistics and the
label rules.

The content hash covers the column names and types and every row: it is the SHA-256 of the
schema line followed by one line per session (split, session pseudonym, row count, session
hash), in sorted order. `jobs.dataset.steps.session_hashes` computes the session hashes.

>>> sessions = [("train", "s1", 2, "ab"), ("test", "s2", 1, "cd")]
>>> combine_hashes("a int", sessions) == combine_hashes("a int", sessions[::-1])
True
>>> combine_hashes("a int", sessions)[:15]
'sha256:2a09c4f7'
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any, Final
from urllib.parse import urlsplit

from pyarrow import fs

from jobs.dataset.errors import ManifestError

FORMAT_VERSION: Final = 1
REQUIRED_KEYS: Final = ("format_version", "name", "sources", "parameters", "content_hash")


def combine_hashes(schema: str, sessions: Iterable[tuple[str, str, int, str]]) -> str:
    """Return the dataset hash from its schema line and (split, session, rows, hash) tuples."""
    digest = hashlib.sha256()
    digest.update(schema.encode() + b"\n")
    for split, session, rows, session_hash in sorted(sessions):
        digest.update(f"{split}\t{session}\t{rows}\t{session_hash}\n".encode())
    return f"sha256:{digest.hexdigest()}"


def _filesystem(uri: str) -> tuple[fs.FileSystem, str]:
    """Return the pyarrow filesystem and path of a local path or object-store URI."""
    scheme = urlsplit(uri).scheme
    if scheme in ("", "file") or len(scheme) == 1:
        local = uri[len("file://") :] if uri.startswith("file://") else uri
        return fs.LocalFileSystem(), os.path.abspath(local)
    filesystem, path = fs.FileSystem.from_uri(uri)
    return filesystem, path


def write_manifest(uri: str, manifest: Mapping[str, Any]) -> None:
    """Write `manifest` as indented JSON to `uri`, creating its folder.

    Raises `ManifestError` when the file cannot be written.
    """
    filesystem, path = _filesystem(uri)
    text = json.dumps(manifest, indent=2, sort_keys=False) + "\n"
    try:
        filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with filesystem.open_output_stream(path) as stream:
            stream.write(text.encode())
    except OSError as exc:
        raise ManifestError(f"cannot write dataset manifest {uri}: {exc}") from exc


def read_manifest(uri: str) -> dict[str, Any]:
    """Read and check a manifest.

    Raises `ManifestError` when it is missing, is not JSON, lacks a required key or has
    another format version.
    """
    filesystem, path = _filesystem(uri)
    try:
        with filesystem.open_input_stream(path) as stream:
            text = stream.read().decode()
    except FileNotFoundError as exc:
        raise ManifestError(
            f"dataset manifest {uri} not found: prepare the dataset first with "
            "`bcratos jobs prepare --name NAME`"
        ) from exc
    except OSError as exc:
        raise ManifestError(f"cannot read dataset manifest {uri}: {exc}") from exc
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"dataset manifest {uri} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise ManifestError(f"dataset manifest {uri} must be a JSON object")
    missing = [key for key in REQUIRED_KEYS if key not in manifest]
    if missing:
        raise ManifestError(f"dataset manifest {uri} lacks the keys {missing}")
    if manifest["format_version"] != FORMAT_VERSION:
        raise ManifestError(
            f"dataset manifest {uri} has format version {manifest['format_version']!r}: "
            f"this version of bcratos reads format {FORMAT_VERSION}"
        )
    return manifest
