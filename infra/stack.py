"""The embedded single-machine stack: Kafka broker, topics, lake folder and Spark jars."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from dataclasses import dataclass, field

from confluent_kafka.admin import AdminClient

from bcratos.config import Settings
from infra import broker, jars, topics

logger = logging.getLogger(__name__)


@dataclass
class StackStatus:
    """Health of the stack as ``bcratos stack status`` prints it."""

    bootstrap_servers: str
    lake_uri: str
    broker_answers: bool
    broker_pid: int | None
    missing_topics: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        """True when the broker returns metadata and every topic of the spec exists."""
        return self.broker_answers and not self.missing_topics


def admin_client(settings: Settings) -> AdminClient:
    """Return an admin client for the configured cluster."""
    return AdminClient({"bootstrap.servers": settings.kafka.bootstrap})


def topic_specs(settings: Settings, admin: AdminClient) -> list[topics.TopicSpec]:
    """Return the topic spec for the cluster behind ``admin``."""
    broker_count = max(1, len(admin.list_topics(timeout=10).brokers))
    return topics.load_spec(settings.kafka.topic_prefix, broker_count)


def up(settings: Settings) -> topics.TopicPlan:
    """Resolve jars, start the embedded broker when configured, and provision topics."""
    jars.resolve(settings.jars_dir, "kafka")
    jars.resolve(settings.jars_dir, "spark")
    if settings.kafka.embedded:
        broker.start(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    ensure_key_file(settings)
    if "://" not in settings.lake_uri:
        (settings.data_dir / "lake").mkdir(parents=True, exist_ok=True)

    admin = admin_client(settings)
    plan = topics.apply(admin, topic_specs(settings, admin))
    for problem in plan.not_applied:
        logger.warning("topic spec not applied: %s", problem)
    return plan


def ensure_key_file(settings: Settings) -> None:
    """Create the embedded stack's pseudonymization key (64 hex digits, mode 0600) once.

    Only when no key is configured: a deployment sets ``anonymization.key_file`` instead.
    """
    anonymization = settings.anonymization
    path = settings.embedded_key_file
    if anonymization.key is not None or anonymization.key_file is not None or path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secrets.token_hex(32) + "\n")
    logger.info("created pseudonymization key file %s", path)


def status(settings: Settings) -> StackStatus:
    """Check whether the broker returns metadata and the topics of the spec exist."""
    paths = broker.BrokerPaths.under(settings.data_dir)
    result = StackStatus(
        bootstrap_servers=settings.kafka.bootstrap,
        lake_uri=settings.lake_uri,
        broker_answers=broker.broker_answers(settings.kafka.bootstrap, timeout_s=3.0),
        broker_pid=broker.read_pid(paths),
    )
    if result.broker_answers:
        admin = admin_client(settings)
        result.missing_topics = topics.missing_topics(admin, topic_specs(settings, admin))
    return result


def down(settings: Settings, *, purge: bool = False) -> bool:
    """Stop what ``up`` started; with ``purge`` also delete the data directory."""
    stopped = broker.stop(settings)
    if purge and settings.data_dir.exists():
        shutil.rmtree(settings.data_dir)
        logger.info("purged data directory %s", settings.data_dir)
    return stopped
