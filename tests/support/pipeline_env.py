"""A private pipeline on the test broker: own topic prefix, consumer groups, lake and key.

Imported by integration tests as `tests.support.pipeline_env`.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
from confluent_kafka.admin import AdminClient
from deltalake import DeltaTable

from bcratos.config import Settings, load_settings
from infra import topics

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("BCRATOS_SHARED_DATA", REPO.parent / "shared" / "data"))
"""The real recordings; override with BCRATOS_SHARED_DATA."""


@dataclass
class PipelineEnv:
    """Settings and environment of one private pipeline, and its running processes."""

    settings: Settings
    environment: dict[str, str]
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, stage: str) -> subprocess.Popen[bytes]:
        """Start one stage (`ingest` or `sink`) as a child process."""
        log = (self.settings.data_dir / f"{stage}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "streams.runner", stage],
            env=self.environment,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.processes[stage] = process
        return process

    def kill(self, stage: str) -> None:
        """Kill a stage with SIGKILL, as a crash would."""
        process = self.processes.pop(stage)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)

    def stop_all(self) -> None:
        """Stop every stage with SIGTERM (SIGKILL after 60 s)."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        self.processes.clear()

    def table(self, name: str) -> pa.Table | None:
        """Return the rows of a lake table, or None while it does not exist."""
        uri = f"{self.settings.lake_uri}/{name}"
        if not DeltaTable.is_deltatable(uri):
            return None
        return DeltaTable(uri).to_pyarrow_table()

    def wait_for_rows(
        self,
        name: str,
        expected: int,
        timeout_s: float = 240,
        check: Callable[[], None] = lambda: None,
    ) -> pa.Table:
        """Wait until table `name` has at least `expected` rows; fail with the last count."""
        deadline = time.monotonic() + timeout_s
        rows = 0
        while time.monotonic() < deadline:
            check()
            table = self.table(name)
            rows = 0 if table is None else table.num_rows
            if rows >= expected:
                assert table is not None
                return table
            time.sleep(1)
        logs = "\n".join(
            path.read_text(errors="replace")[-3000:]
            for path in self.settings.data_dir.glob("*.log")
        )
        raise AssertionError(
            f"{name} has {rows} rows after {timeout_s} s, expected {expected}\n{logs}"
        )

    def assert_running(self) -> None:
        """Fail when a stage exited on its own."""
        for stage, process in self.processes.items():
            code = process.poll()
            if code is not None:
                log = (self.settings.data_dir / f"{stage}.log").read_text(errors="replace")
                raise AssertionError(f"{stage} exited with code {code}:\n{log[-4000:]}")


def make_pipeline_env(base: Settings, data_dir: Path) -> PipelineEnv:
    """Provision topics under a fresh prefix on the test broker and write a key file."""
    prefix = f"t{uuid.uuid4().hex[:8]}."
    key_file = data_dir / "pseudonymization.key"
    key_file.write_text(secrets.token_hex(32) + "\n")
    key_file.chmod(0o600)
    environment = {
        **os.environ,
        "BCRATOS_DATA_DIR": str(data_dir),
        "BCRATOS_KAFKA__PORT": str(base.kafka.port),
        "BCRATOS_KAFKA__CONTROLLER_PORT": str(base.kafka.controller_port),
        "BCRATOS_KAFKA__TOPIC_PREFIX": prefix,
        "BCRATOS_ANONYMIZATION__KEY_FILE": str(key_file),
        "BCRATOS_STREAMS__INGEST_GROUP": f"{prefix}ingest",
        "BCRATOS_STREAMS__SINK_GROUP": f"{prefix}sink",
        "BCRATOS_STREAMS__IDLE_FLUSH_S": "3",
        "BCRATOS_STREAMS__MAX_LATENCY_S": "0.5",
        "BCRATOS_STREAMS__METRICS_INTERVAL_S": "2",
    }
    settings = load_settings(
        data_dir=data_dir,
        kafka={
            "port": base.kafka.port,
            "controller_port": base.kafka.controller_port,
            "topic_prefix": prefix,
        },
        anonymization={"key_file": key_file},
        streams={"ingest_group": f"{prefix}ingest", "sink_group": f"{prefix}sink"},
    )
    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap})
    topics.apply(admin, topics.load_spec(prefix, broker_count=1))
    return PipelineEnv(settings, environment)
