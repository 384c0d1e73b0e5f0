"""Topic provisioning from the declarative spec in ``infra/topics.toml``.

``apply`` is idempotent. Missing topics are created, changed configs are altered in place, and a
partition count that grew is extended. What Kafka cannot change in place (fewer partitions,
another replication factor) is reported in the returned plan rather than forced.
"""

from __future__ import annotations

import logging
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
)

from infra.exceptions import TopicSpecError

logger = logging.getLogger(__name__)

SPEC_FILE = Path(__file__).resolve().parent / "topics.toml"
_FIELDS = {
    "partitions",
    "replication_factor",
    "min_insync_replicas",
    "cleanup_policy",
    "retention_ms",
}
_CLEANUP_POLICIES = {"delete", "compact", "compact,delete", "delete,compact"}


@dataclass(frozen=True)
class TopicSpec:
    """Desired state of one topic."""

    name: str
    partitions: int
    replication_factor: int
    min_insync_replicas: int
    cleanup_policy: str
    retention_ms: int

    def configs(self) -> dict[str, str]:
        """Topic-level configs Kafka stores for this topic."""
        return {
            "cleanup.policy": self.cleanup_policy,
            "retention.ms": str(self.retention_ms),
            "min.insync.replicas": str(self.min_insync_replicas),
        }


@dataclass
class TopicPlan:
    """Changes that ``apply`` made, and those it could not make."""

    created: list[str] = field(default_factory=list)
    altered: dict[str, dict[str, str]] = field(default_factory=dict)
    extended: dict[str, int] = field(default_factory=dict)
    unchanged: list[str] = field(default_factory=list)
    not_applied: list[str] = field(default_factory=list)


def load_spec(prefix: str, broker_count: int, path: Path = SPEC_FILE) -> list[TopicSpec]:
    """Read the spec, prefix the names and cap replication at ``broker_count``."""
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise TopicSpecError(f"cannot read topic spec {path}: {exc}") from exc

    defaults = raw.get("defaults", {})
    _check_keys(defaults, f"{path} [defaults]")
    specs = []
    for short_name, overrides in raw.get("topics", {}).items():
        _check_keys(overrides, f"{path} [topics.{short_name!r}]")
        merged: dict[str, Any] = {**defaults, **overrides}
        missing = _FIELDS - merged.keys()
        if missing:
            raise TopicSpecError(
                f"topic {short_name!r} in {path} has no value for {sorted(missing)}; "
                "set them in [defaults] or in the topic's table"
            )
        replication = min(int(merged["replication_factor"]), broker_count)
        spec = TopicSpec(
            name=f"{prefix}{short_name}",
            partitions=int(merged["partitions"]),
            replication_factor=replication,
            min_insync_replicas=min(int(merged["min_insync_replicas"]), replication),
            cleanup_policy=str(merged["cleanup_policy"]),
            retention_ms=int(merged["retention_ms"]),
        )
        _check_values(spec, path)
        specs.append(spec)
    return specs


def _check_keys(table: dict[str, Any], where: str) -> None:
    unknown = set(table) - _FIELDS
    if unknown:
        raise TopicSpecError(
            f"unknown keys {sorted(unknown)} in {where}; expected only {sorted(_FIELDS)}"
        )


def _check_values(spec: TopicSpec, path: Path) -> None:
    if spec.partitions < 1:
        raise TopicSpecError(f"topic {spec.name} in {path}: partitions {spec.partitions} < 1")
    if spec.cleanup_policy not in _CLEANUP_POLICIES:
        raise TopicSpecError(
            f"topic {spec.name} in {path}: cleanup_policy {spec.cleanup_policy!r} is not one of "
            f"{sorted(_CLEANUP_POLICIES)}"
        )
    if spec.retention_ms < -1 or spec.retention_ms == 0:
        raise TopicSpecError(
            f"topic {spec.name} in {path}: retention_ms {spec.retention_ms} must be -1 "
            "(keep forever) or a positive number of milliseconds"
        )


def apply(admin: AdminClient, specs: list[TopicSpec], timeout_s: float = 30.0) -> TopicPlan:
    """Bring the cluster's topics in line with ``specs`` and return what was done."""
    plan = TopicPlan()
    metadata = admin.list_topics(timeout=timeout_s)
    existing = metadata.topics

    to_create = [spec for spec in specs if spec.name not in existing]
    if to_create:
        _create(admin, to_create, timeout_s)
        plan.created.extend(spec.name for spec in to_create)

    current = [spec for spec in specs if spec.name in existing]
    for spec in current:
        partitions = len(existing[spec.name].partitions)
        replicas = len(next(iter(existing[spec.name].partitions.values())).replicas)
        if spec.partitions > partitions:
            _extend(admin, spec, timeout_s)
            plan.extended[spec.name] = spec.partitions
        elif spec.partitions < partitions:
            plan.not_applied.append(
                f"{spec.name}: spec has {spec.partitions} partitions but the topic has "
                f"{partitions}; Kafka cannot remove partitions, recreate the topic to shrink it"
            )
        if replicas != spec.replication_factor:
            plan.not_applied.append(
                f"{spec.name}: spec has replication factor {spec.replication_factor} but the "
                f"topic has {replicas}; change it with a partition reassignment"
            )

    changes = _config_changes(admin, current, timeout_s)
    if changes:
        _alter(admin, changes, timeout_s)
        plan.altered.update(changes)

    touched = set(plan.created) | set(plan.altered) | set(plan.extended)
    plan.unchanged.extend(spec.name for spec in specs if spec.name not in touched)
    return plan


def missing_topics(admin: AdminClient, specs: list[TopicSpec], timeout_s: float = 5.0) -> list[str]:
    """Return the names in ``specs`` that do not exist on the cluster."""
    existing = admin.list_topics(timeout=timeout_s).topics
    return [spec.name for spec in specs if spec.name not in existing]


def _create(admin: AdminClient, specs: list[TopicSpec], timeout_s: float) -> None:
    new_topics = [
        NewTopic(
            spec.name,
            num_partitions=spec.partitions,
            replication_factor=spec.replication_factor,
            config=spec.configs(),
        )
        for spec in specs
    ]
    futures = admin.create_topics(new_topics, request_timeout=timeout_s)
    for name, future in futures.items():
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].name() == "TOPIC_ALREADY_EXISTS":
                continue
            raise TopicSpecError(f"creating topic {name} failed: {exc}") from exc
        logger.info("created topic %s", name)


def _extend(admin: AdminClient, spec: TopicSpec, timeout_s: float) -> None:
    futures = admin.create_partitions(
        [NewPartitions(spec.name, spec.partitions)], request_timeout=timeout_s
    )
    for name, future in futures.items():
        try:
            future.result()
        except KafkaException as exc:
            raise TopicSpecError(
                f"extending topic {name} to {spec.partitions} partitions failed: {exc}"
            ) from exc
        logger.info("extended topic %s to %d partitions", name, spec.partitions)


def _config_changes(
    admin: AdminClient, specs: list[TopicSpec], timeout_s: float
) -> dict[str, dict[str, str]]:
    if not specs:
        return {}
    resources = [ConfigResource(ConfigResource.Type.TOPIC, spec.name) for spec in specs]
    futures = admin.describe_configs(resources, request_timeout=timeout_s)
    by_name = {spec.name: spec for spec in specs}
    changes: dict[str, dict[str, str]] = {}
    for resource, future in futures.items():
        try:
            described = future.result()
        except KafkaException as exc:
            raise TopicSpecError(f"describing topic {resource.name} failed: {exc}") from exc
        wanted = by_name[resource.name].configs()
        differing = {
            key: value
            for key, value in wanted.items()
            if key not in described or described[key].value != value
        }
        if differing:
            changes[resource.name] = differing
    return changes


def _alter(admin: AdminClient, changes: dict[str, dict[str, str]], timeout_s: float) -> None:
    resources = [
        ConfigResource(
            ConfigResource.Type.TOPIC,
            name,
            incremental_configs=[
                ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)
                for key, value in configs.items()
            ],
        )
        for name, configs in changes.items()
    ]
    futures = admin.incremental_alter_configs(resources, request_timeout=timeout_s)
    for resource, future in futures.items():
        try:
            future.result()
        except KafkaException as exc:
            raise TopicSpecError(
                f"altering configs of topic {resource.name} failed: {exc}"
            ) from exc
        logger.info("altered topic %s: %s", resource.name, changes[resource.name])
