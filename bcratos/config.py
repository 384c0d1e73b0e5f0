"""Typed configuration of the whole platform, in one place.

Values come, highest priority first, from keyword arguments, environment variables with the
``BCRATOS_`` prefix (nested sections joined by ``__``, e.g. ``BCRATOS_KAFKA__PORT=19092``), and an
optional TOML file (``BCRATOS_CONFIG`` or ``bcratos.toml`` in the current directory). Unknown keys
are rejected by name in every source. The defaults describe the embedded single-machine stack.

Example ``bcratos.toml``::

    data_dir = "/srv/bcratos"

    [kafka]
    port = 19092

    [spark]
    master = "local[2]"
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
"""Repository root of an editable install; jar caches and the default data directory live here."""

CONFIG_FILE_ENV = "BCRATOS_CONFIG"
DEFAULT_CONFIG_FILE = "bcratos.toml"


class ConfigError(ValueError):
    """Raised when configuration is invalid, naming the key and the expected value."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaSettings(_Section):
    """The Kafka cluster, and the embedded broker when ``embedded`` is true."""

    embedded: bool = True
    """Start and stop a local single-node KRaft broker with ``bcratos stack``."""
    host: str = "127.0.0.1"
    """Listener address of the embedded broker; it binds to loopback only."""
    port: int = Field(default=9092, ge=1, le=65535)
    """Client (PLAINTEXT) port of the embedded broker."""
    controller_port: int = Field(default=9093, ge=1, le=65535)
    """KRaft controller port of the embedded broker."""
    bootstrap_servers: str | None = None
    """``host:port[,host:port]`` of an external cluster; default: the embedded broker."""
    topic_prefix: str = "bcratos."
    """Prefix of every platform topic name."""
    heap: str = "1g"
    """Java heap of the embedded broker (``-Xmx``/``-Xms``)."""
    start_timeout_s: float = Field(default=60.0, gt=0)
    """Seconds to wait for the embedded broker to answer after start."""

    @field_validator("host")
    @classmethod
    def _loopback_only(cls, host: str) -> str:
        if host not in {"127.0.0.1", "::1", "localhost"}:
            raise ValueError(
                f"embedded broker host {host!r} is not a loopback address; "
                "expected 127.0.0.1, ::1 or localhost (use bootstrap_servers for a remote cluster)"
            )
        return host

    @field_validator("topic_prefix")
    @classmethod
    def _valid_prefix(cls, prefix: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9._-]*", prefix):
            raise ValueError(
                f"topic prefix {prefix!r} has characters Kafka rejects; expected [A-Za-z0-9._-]"
            )
        return prefix

    @property
    def bootstrap(self) -> str:
        """Bootstrap servers clients connect to."""
        if self.bootstrap_servers:
            return self.bootstrap_servers
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class SparkSettings(_Section):
    """Spark sessions used by the dataset and lake jobs."""

    master: str = "local[2]"
    """``spark.master``: ``local[N]`` or a cluster URL."""
    driver_memory: str = "2g"
    """``spark.driver.memory``."""
    shuffle_partitions: int = Field(default=4, ge=1)
    """``spark.sql.shuffle.partitions``; small by default for one machine."""
    conf: dict[str, str] = Field(default_factory=dict)
    """Extra Spark configuration entries, applied last."""


class LakeSettings(_Section):
    """Where the Delta lake lives."""

    uri: str | None = None
    """Lake root: a local path or a delta-rs / Spark URI such as ``s3://bucket/lake``.
    Default: ``<data_dir>/lake``."""
    allowed_regions: list[str] = Field(default_factory=list)
    """Cloud regions a lake URI may be in; empty allows only local paths and unlisted schemes."""


class AnonymizationSettings(_Section):
    """Keys of the pseudonymization step (never logged, never written to the lake)."""

    key: SecretStr | None = None
    """HMAC key; prefer ``key_file``."""
    key_file: Path | None = None
    """File whose contents are the HMAC key."""
    key_id: str = "k1"
    """Identifier stored with each pseudonym so keys can be rotated."""


class StreamsSettings(_Section):
    """Stream processors: validation, anonymization, windowing and the lake sink."""

    ingest_group: str = "bcratos-ingest"
    """Faust application id (consumer group) of the validate-and-anonymize stage."""
    sink_group: str = "bcratos-lake-sink"
    """Consumer group of the lake sink; its Kafka offsets also live in the Delta tables."""
    step_ms: int = Field(default=50, gt=0)
    """Width of one model step in ms; a multiple of each board's bin width."""
    grace_ms: int = Field(default=1000, ge=0)
    """How long a step stays open for out-of-order frames, in ms of event time."""
    idle_flush_s: float = Field(default=5.0, gt=0)
    """Seconds without new frames after which a session's open steps are written."""
    batch_rows: int = Field(default=20_000, gt=0)
    """Rows buffered per Delta table before a commit."""
    max_latency_s: float = Field(default=1.0, gt=0)
    """Longest time a row waits in the sink's buffer before a commit, in seconds."""
    max_future_skew_s: float | None = Field(default=300.0, gt=0)
    """Seconds an event time may lie ahead of the processor clock; unset disables the check."""
    max_past_skew_s: float | None = Field(default=None, gt=0)
    """Seconds an event time may lie behind the processor clock; unset (default) allows replays
    of old recordings."""
    metrics_interval_s: float = Field(default=10.0, gt=0)
    """Seconds between metric log lines and metric file updates."""
    metadata_policy: dict[str, str] = Field(default_factory=dict)
    """Metadata fields and their action (keep, pseudonymize, shift, drop), added to the
    declared policy; undeclared fields are dropped."""


class Settings(BaseSettings):
    """All platform settings."""

    model_config = SettingsConfigDict(
        env_prefix="BCRATOS_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    data_dir: Path = PROJECT_ROOT / ".bcratos"
    """Root of the embedded stack's state: broker storage and logs, the lake, process ids."""
    jars_dir: Path = PROJECT_ROOT / ".cache" / "jars"
    """Jars resolved by Maven (``kafka/`` for the broker, ``spark/`` for Delta)."""
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    spark: SparkSettings = Field(default_factory=SparkSettings)
    lake: LakeSettings = Field(default_factory=LakeSettings)
    anonymization: AnonymizationSettings = Field(default_factory=AnonymizationSettings)
    streams: StreamsSettings = Field(default_factory=StreamsSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = _config_file()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    @property
    def lake_uri(self) -> str:
        """Root URI of the Delta lake."""
        return self.lake.uri or str(self.data_dir / "lake")

    @property
    def embedded_key_file(self) -> Path:
        """Pseudonymization key file that ``bcratos stack up`` creates for the embedded stack."""
        return self.data_dir / "secrets" / "pseudonymization.key"

    def topic(self, short_name: str) -> str:
        """Return the full topic name of ``short_name`` such as ``raw.spikes``."""
        if short_name.startswith(self.kafka.topic_prefix) and self.kafka.topic_prefix:
            return short_name
        return f"{self.kafka.topic_prefix}{short_name}"


def _config_file() -> Path | None:
    named = os.environ.get(CONFIG_FILE_ENV)
    if named:
        path = Path(named)
        if not path.is_file():
            raise ConfigError(
                f"{CONFIG_FILE_ENV}={named!r} does not name a readable file; "
                "expected the path of a TOML configuration file"
            )
        return path
    default = Path.cwd() / DEFAULT_CONFIG_FILE
    return default if default.is_file() else None


def load_settings(**overrides: Any) -> Settings:
    """Load settings from the environment and the TOML file, raising ``ConfigError`` on bad keys."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from exc


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "<root>"
        if error["type"] == "extra_forbidden":
            lines.append(f"unknown configuration key {key!r}; check its spelling and section")
        elif "anonymization" in key:
            # The value may be a key or part of one: never echo it.
            lines.append(f"invalid value for {key!r}: {error['msg']}")
        else:
            lines.append(f"invalid value for {key!r}: {error['msg']} (received {error['input']!r})")
    return "invalid configuration:\n  " + "\n  ".join(lines)
