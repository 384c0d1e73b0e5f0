"""The embedded Apache Kafka broker: one KRaft node acting as broker and controller.

The broker runs from the jars that ``infra.jars`` resolved, with the machine's Java 17, and keeps
its storage under ``<data_dir>/kafka/data`` and its logs under ``<data_dir>/logs/kafka``. It binds
to a loopback address only. Its process id is recorded in ``<data_dir>/run/kafka.pid`` so that
``stop`` ends only a broker this module started.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient

from bcratos.config import KafkaSettings, Settings
from infra import jars
from infra.exceptions import BrokerStartError, PortInUseError

logger = logging.getLogger(__name__)
_probe_logger = logging.getLogger(f"{__name__}.probe")
_probe_logger.setLevel(logging.CRITICAL)

LOG4J_CONFIG = Path(__file__).resolve().parent / "kafka" / "log4j2.xml"
NODE_ID = 1


@dataclass(frozen=True)
class BrokerPaths:
    """Files and folders of the embedded broker under the data directory."""

    root: Path
    data: Path
    logs: Path
    properties: Path
    pid_file: Path
    stdout: Path

    @classmethod
    def under(cls, data_dir: Path) -> BrokerPaths:
        root = data_dir / "kafka"
        return cls(
            root=root,
            data=root / "data",
            logs=data_dir / "logs" / "kafka",
            properties=root / "server.properties",
            pid_file=data_dir / "run" / "kafka.pid",
            stdout=data_dir / "logs" / "kafka" / "stdout.log",
        )


def server_properties(kafka: KafkaSettings, paths: BrokerPaths) -> str:
    """Render ``server.properties`` of a single combined broker and controller."""
    host = kafka.host
    bracketed = f"[{host}]" if ":" in host else host
    lines = {
        "process.roles": "broker,controller",
        "node.id": str(NODE_ID),
        "controller.quorum.voters": f"{NODE_ID}@{bracketed}:{kafka.controller_port}",
        "listeners": (
            f"PLAINTEXT://{bracketed}:{kafka.port},CONTROLLER://{bracketed}:{kafka.controller_port}"
        ),
        "advertised.listeners": f"PLAINTEXT://{bracketed}:{kafka.port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(paths.data),
        # One node: internal topics cannot have more than one replica.
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "num.partitions": "1",
        # Faust creates its own internal topics; platform topics come from the topic spec.
        "auto.create.topics.enable": "false",
        "log.retention.check.interval.ms": "60000",
    }
    return "".join(f"{key}={value}\n" for key, value in lines.items())


def read_pid(paths: BrokerPaths) -> int | None:
    """Return the recorded broker pid when that process still runs our broker, else None."""
    try:
        pid = int(paths.pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    # A recycled pid that belongs to another program must never be signalled.
    if str(paths.properties).encode() not in cmdline:
        return None
    return pid


def check_port_free(host: str, port: int, purpose: str) -> None:
    """Raise ``PortInUseError`` naming ``port`` when something already listens on it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise PortInUseError(
                f"cannot start the embedded Kafka broker: {purpose} port {host}:{port} is "
                f"already in use by another process; stop it or choose another port "
                f"(BCRATOS_KAFKA__PORT / BCRATOS_KAFKA__CONTROLLER_PORT)"
            ) from exc


def broker_answers(bootstrap: str, timeout_s: float = 2.0) -> bool:
    """Tell whether a broker at ``bootstrap`` returns cluster metadata within ``timeout_s``."""
    # librdkafka reports every refused connection; while polling for start-up that is noise.
    config: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": _probe_logger}
    admin = AdminClient(config)
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except Exception:  # noqa: BLE001 - any failure here means "not answering"
        return False
    return bool(metadata.brokers)


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    candidate = Path(java_home) / "bin" / "java" if java_home else None
    if candidate is not None and candidate.is_file():
        return str(candidate)
    found = shutil.which("java")
    if found is None:
        raise BrokerStartError("Java is not on PATH; the embedded Kafka broker needs Java 17+")
    return found


def _classpath(settings: Settings) -> str:
    return os.pathsep.join(str(jar) for jar in jars.require(settings.jars_dir, "kafka"))


def _java_command(settings: Settings, paths: BrokerPaths, main_class: str, *args: str) -> list[str]:
    heap = settings.kafka.heap
    return [
        _java(),
        f"-Xmx{heap}",
        f"-Xms{heap}",
        "-XX:+UseG1GC",
        "-Djava.awt.headless=true",
        f"-Dkafka.logs.dir={paths.logs}",
        f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
        "-cp",
        _classpath(settings),
        main_class,
        *args,
    ]


def _format_storage(settings: Settings, paths: BrokerPaths) -> None:
    if (paths.data / "meta.properties").is_file():
        return
    cluster_id = _cluster_id()
    command = _java_command(
        settings,
        paths,
        "kafka.tools.StorageTool",
        "format",
        "--cluster-id",
        cluster_id,
        "--config",
        str(paths.properties),
        "--ignore-formatted",
    )
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BrokerStartError(
            f"formatting the KRaft storage in {paths.data} failed (exit code "
            f"{result.returncode}):\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
        )
    logger.info("formatted KRaft storage in %s", paths.data)


def _cluster_id() -> str:
    # Kafka expects a URL-safe base64 form of a random UUID (22 characters). One in 64 of those
    # starts with "-", which the storage tool reads as an option instead of the id's value, so
    # such an id is drawn again.
    import base64

    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def start(settings: Settings) -> bool:
    """Start the embedded broker unless ours already runs; return True when it was started now.

    Steps: (1) reuse a running broker of ours. (2) Check that both ports are free. (3) Write the
    properties, and format storage on first start. (4) Launch Java detached. (5) Wait until the
    broker returns metadata, or fail with the tail of its log.
    """
    kafka = settings.kafka
    paths = BrokerPaths.under(settings.data_dir)

    # (1)
    if read_pid(paths) is not None:
        logger.info("embedded Kafka broker already running at %s", kafka.bootstrap)
        return False

    # (2)
    check_port_free(kafka.host, kafka.port, "client")
    check_port_free(kafka.host, kafka.controller_port, "controller")

    # (3)
    for folder in (paths.root, paths.data, paths.logs, paths.pid_file.parent):
        folder.mkdir(parents=True, exist_ok=True)
    paths.properties.write_text(server_properties(kafka, paths))
    _format_storage(settings, paths)

    # (4)
    command = _java_command(settings, paths, "kafka.Kafka", str(paths.properties))
    with paths.stdout.open("ab") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    paths.pid_file.write_text(f"{process.pid}\n")
    logger.info("started embedded Kafka broker, pid %d, logs in %s", process.pid, paths.logs)

    # (5)
    deadline = time.monotonic() + kafka.start_timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            paths.pid_file.unlink(missing_ok=True)
            raise BrokerStartError(
                f"the embedded Kafka broker exited with code {process.returncode} during start; "
                f"last lines of {paths.stdout}:\n{_tail(paths.stdout)}"
            )
        if broker_answers(kafka.bootstrap, timeout_s=1.0):
            return True
        time.sleep(0.5)
    stop(settings)
    raise BrokerStartError(
        f"the embedded Kafka broker did not return metadata at {kafka.bootstrap} within "
        f"{kafka.start_timeout_s:.0f} s; see {paths.logs / 'server.log'}"
    )


def stop(settings: Settings, timeout_s: float = 30.0) -> bool:
    """Stop the broker recorded in the pid file; return True when one was stopped."""
    paths = BrokerPaths.under(settings.data_dir)
    pid = read_pid(paths)
    if pid is None:
        paths.pid_file.unlink(missing_ok=True)
        return False

    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.2)
    if _alive(pid):
        logger.warning("Kafka broker pid %d ignored SIGTERM for %.0f s; killing it", pid, timeout_s)
        os.kill(pid, signal.SIGKILL)
    paths.pid_file.unlink(missing_ok=True)
    logger.info("stopped embedded Kafka broker, pid %d", pid)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of this process still accepts signal 0, so reap it if it is ours.
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        status = Path(f"/proc/{pid}/stat")
        return status.exists() and ") Z " not in status.read_text()
    return finished == 0


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no output)"
