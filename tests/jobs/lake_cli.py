"""Helpers of the lake command tests: run `bcratos lake`, copy a lake, read its tables.

Imported by the tests of this folder as `lake_cli`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
from click.testing import Result
from deltalake import DeltaTable
from typer.testing import CliRunner

from bcratos.cli import app
from bcratos.config import Settings, load_settings

SINK_TABLES = ("bronze.behavior_events", "bronze.spike_frames", "silver.spike_steps")
"""Tables that the replayed Spike and Jango sessions fill; they have no e-skin or decoder data."""


def cli_env(settings: Settings) -> dict[str, str]:
    """Environment that points the command line at the lake and key of `settings`."""
    key_file = settings.anonymization.key_file
    assert key_file is not None
    return {
        "BCRATOS_DATA_DIR": str(settings.data_dir),
        "BCRATOS_LAKE__URI": settings.lake_uri,
        "BCRATOS_ANONYMIZATION__KEY_FILE": str(key_file),
    }


def invoke(settings: Settings, *args: str, input_text: str | None = None) -> Result:
    """Run ``bcratos lake ARGS`` in this process against the lake of `settings`."""
    return CliRunner().invoke(app, ["lake", *args], env=cli_env(settings), input=input_text)


def invoke_json(settings: Settings, *args: str) -> Any:
    """Run ``bcratos lake ARGS --format json``, check that it succeeded and parse its output."""
    result = invoke(settings, *args, "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def copy_lake(settings: Settings, destination: Path) -> Settings:
    """Copy the lake and key of `settings` to `destination` and return settings for the copy."""
    key_file = settings.anonymization.key_file
    assert key_file is not None
    shutil.copytree(settings.lake_uri, destination / "lake")
    shutil.copy2(key_file, destination / "pseudonymization.key")
    return load_settings(
        data_dir=destination,
        lake={"uri": str(destination / "lake")},
        anonymization={"key_file": destination / "pseudonymization.key"},
    )


def table_uri(settings: Settings, name: str) -> str:
    """Return the folder of ``layer.table`` (gold tables are under ``gold/datasets``)."""
    layer, table = name.split(".", 1)
    folder = "gold/datasets" if layer == "gold" else layer
    return f"{settings.lake_uri}/{folder}/{table}"


def count_rows(settings: Settings, name: str, subject: str | None = None) -> int:
    """Count the rows of a table, or of one subject's rows, by reading them with delta-rs."""
    dataset = DeltaTable(table_uri(settings, name)).to_pyarrow_dataset()
    if subject is None:
        return dataset.count_rows()
    return dataset.count_rows(filter=pc.field("subject_pseudonym") == subject)
