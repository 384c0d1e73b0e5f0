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
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
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
    """Seconds to wait for the embedded broker to return metadata after start."""

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
    """Location of the Delta lake."""

    uri: str | None = None
    """Lake root: a local path or a delta-rs / Spark URI such as ``s3://bucket/lake``.
    Default: ``<data_dir>/lake``."""
    allowed_regions: list[str] = Field(default_factory=list)
    """Cloud regions an object-store lake URI may be in, declared by its ``?region=`` query;
    empty allows only local paths. URIs of other schemes are always rejected."""


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
    """Maximum time a row waits in the sink's buffer before a commit, in seconds."""
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


class ModelsSettings(_Section):
    """Signing and announcement of decoder models."""

    signing_key_file: Path | None = None
    """Ed25519 private key (PEM) that signs model artifacts; default
    ``<data_dir>/secrets/model-signing.key``, created with mode 0600 on first use."""
    public_key_file: Path | None = None
    """Public key (PEM) that verifies model artifacts and that boards get; default
    ``<data_dir>/secrets/model-signing.pub``."""


TEMPLATE_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")
"""A ``{name}`` placeholder in a template argument; ``{{`` and ``}}`` stand for literal braces."""

_TEMPLATE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,39}")
_SAFE_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}")


class StrParameter(_Section):
    """A text parameter whose whole value must match ``pattern``."""

    type: Literal["str"]
    pattern: str = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
    """Regular expression that the whole value must match (``re.fullmatch``)."""
    default: str | None = None
    """Value used when a job leaves the parameter out; unset makes the parameter required."""
    description: str = ""

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(
                f"pattern {pattern!r} is not a valid regular expression: {exc}"
            ) from exc
        return pattern


class IntParameter(_Section):
    """An integer parameter within ``[min, max]``."""

    type: Literal["int"]
    min: int | None = None
    """Smallest accepted value; unset: no lower bound."""
    max: int | None = None
    """Largest accepted value; unset: no upper bound."""
    default: int | None = None
    """Value used when a job leaves the parameter out; unset makes the parameter required."""
    description: str = ""

    @model_validator(mode="after")
    def _ordered_bounds(self) -> IntParameter:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        return self


class EnumParameter(_Section):
    """A parameter that takes one of a fixed list of values."""

    type: Literal["enum"]
    choices: list[str] = Field(min_length=1)
    """Accepted values; each is a word of letters, digits and ``._:+-``."""
    default: str | None = None
    """Value used when a job leaves the parameter out; unset makes the parameter required."""
    description: str = ""

    @field_validator("choices")
    @classmethod
    def _safe_choices(cls, choices: list[str]) -> list[str]:
        for choice in choices:
            if not _SAFE_WORD.fullmatch(choice):
                raise ValueError(
                    f"choice {choice!r} is not a plain word; expected {_SAFE_WORD.pattern}"
                )
        return choices


class PathParameter(_Section):
    """A file or folder path that must lie inside ``base_dir``."""

    type: Literal["path"]
    base_dir: Path
    """Folder that every value must lie in; a relative folder is taken relative to
    ``data_dir``. A relative value is taken relative to this folder."""
    must_exist: bool = False
    """Reject paths that do not exist on the submitting machine."""
    default: str | None = None
    """Value used when a job leaves the parameter out; unset makes the parameter required."""
    description: str = ""


TemplateParameter = Annotated[
    StrParameter | IntParameter | EnumParameter | PathParameter, Field(discriminator="type")
]


class ResourceSettings(_Section):
    """Resources that a template's job requests from the scheduler."""

    cpus: int = Field(default=1, ge=1)
    """CPU cores of the job's one task."""
    memory_mb: int = Field(default=2048, ge=1)
    """Memory of the job in MiB."""
    gpus: int = Field(default=0, ge=0)
    """GPUs of the job; the local backend does not reserve them."""
    time_limit_min: int = Field(default=60, ge=1)
    """Wall-clock limit in minutes; the scheduler ends the job after it."""
    partition: str | None = None
    """Slurm partition; default: the cluster's default partition."""

    @field_validator("partition")
    @classmethod
    def _plain_partition(cls, partition: str | None) -> str | None:
        if partition is not None and not _SAFE_WORD.fullmatch(partition):
            raise ValueError(f"partition {partition!r} is not a plain word")
        return partition


class TemplateSettings(_Section):
    """A pre-approved command: the only thing an HPC job can run.

    ``args`` contains the arguments after the executable; ``{name}`` in an argument is replaced by
    the validated value of parameter ``name``. The command is always run as an argument list,
    never through a shell.
    """

    executable: str
    """Absolute path of the program, or a name looked up on PATH when a job is validated."""
    args: list[str] = Field(default_factory=list)
    parameters: dict[str, TemplateParameter] = Field(default_factory=dict)
    resources: ResourceSettings = Field(default_factory=ResourceSettings)
    description: str = ""

    @field_validator("executable")
    @classmethod
    def _absolute_or_bare(cls, executable: str) -> str:
        if not executable or "\0" in executable or "\n" in executable:
            raise ValueError(f"executable {executable!r} is empty or contains NUL or newline")
        if "/" in executable and not Path(executable).is_absolute():
            raise ValueError(
                f"executable {executable!r} is a relative path; expected an absolute path or "
                "a program name looked up on PATH"
            )
        return executable

    @model_validator(mode="after")
    def _placeholders_declared(self) -> TemplateSettings:
        used: set[str] = set()
        for argument in self.args:
            used.update(m.group(1) for m in TEMPLATE_PLACEHOLDER.finditer(argument) if m.group(1))
        undeclared = sorted(used - self.parameters.keys())
        if undeclared:
            raise ValueError(
                f"arguments use undeclared parameters {undeclared}; declare them under "
                "parameters, or write {{ and }} for literal braces"
            )
        unused = sorted(self.parameters.keys() - used)
        if unused:
            raise ValueError(f"parameters {unused} appear in no argument")
        return self


def _python_module_template(
    args: list[str],
    parameters: dict[str, TemplateParameter],
    resources: ResourceSettings,
    description: str,
) -> TemplateSettings:
    return TemplateSettings(
        executable=sys.executable,
        args=["-m", "bcratos.cli", *args],
        parameters=parameters,
        resources=resources,
        description=description,
    )


_DATASET = StrParameter(
    type="str", pattern=r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", description="Gold dataset name."
)
_TARGET = StrParameter(
    type="str",
    pattern=r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}",
    description="Subject pseudonym the model is for, or global.",
)
_MODEL_DIR = PathParameter(
    type="path", base_dir=Path("models"), description="Exported model folder under the models dir."
)


def default_templates() -> dict[str, TemplateSettings]:
    """Return the templates of the platform's retraining steps."""
    return {
        "prepare": _python_module_template(
            ["jobs", "prepare", "--name", "{dataset}", "--split-by", "{split_by}"],
            {
                "dataset": _DATASET,
                "split_by": EnumParameter(type="enum", choices=["day", "session"], default="day"),
            },
            ResourceSettings(cpus=2, memory_mb=4096, time_limit_min=60),
            "Label, split and normalize silver steps into a gold dataset.",
        ),
        "train": _python_module_template(
            [
                "train", "--dataset", "{dataset}", "--model", "{model}",
                "--device", "{device}", "--target", "{target}",
            ],
            {
                "dataset": _DATASET,
                "model": EnumParameter(type="enum", choices=["linear", "gru", "tcn"]),
                "device": EnumParameter(type="enum", choices=["cpu", "cuda"], default="cpu"),
                "target": _TARGET,
            },
            ResourceSettings(cpus=2, memory_mb=8192, time_limit_min=240),
            "Train a decoder on a gold dataset.",
        ),
        "evaluate": _python_module_template(
            ["evaluate", "{model_dir}", "--dataset", "{dataset}"],
            {"model_dir": _MODEL_DIR, "dataset": _DATASET},
            ResourceSettings(cpus=2, memory_mb=4096, time_limit_min=60),
            "Score a trained model on a dataset's test split.",
        ),
        "announce": _python_module_template(
            ["models", "announce", "{model_dir}", "--target", "{target}", "--dataset", "{dataset}"],
            {"model_dir": _MODEL_DIR, "target": _TARGET, "dataset": _DATASET},
            ResourceSettings(cpus=1, memory_mb=2048, time_limit_min=30),
            "Gate, sign and announce a model on the models topic.",
        ),
    }


class LocalBackendSettings(_Section):
    """The ``local`` backend: jobs run as processes on this machine."""

    cancel_grace_s: float = Field(default=10.0, gt=0)
    """Seconds between SIGTERM and SIGKILL when a job is cancelled."""


class SlurmSettings(_Section):
    """The ``slurm`` backend: jobs go to a Slurm cluster through ``sbatch``."""

    bin_dir: Path | None = None
    """Folder of ``sbatch``, ``squeue``, ``sacct``, ``scontrol`` and ``scancel``; default: PATH."""
    final_state: Literal["auto", "sacct", "scontrol"] = "auto"
    """Source of a finished job's state. ``sacct`` needs accounting storage. ``scontrol`` works
    without it, but slurmctld drops a job MinJobAge seconds after it ends. ``auto`` uses sacct
    and switches to scontrol for good when sacct fails the first time."""
    python: str = sys.executable
    """Python interpreter on the compute nodes that runs the job launcher."""
    account: str | None = None
    """Slurm account charged for the jobs (``--account``)."""
    command_timeout_s: float = Field(default=60.0, gt=0)
    """Seconds a Slurm command may take before it counts as failed."""

    @field_validator("account")
    @classmethod
    def _plain_account(cls, account: str | None) -> str | None:
        if account is not None and not _SAFE_WORD.fullmatch(account):
            raise ValueError(f"account {account!r} is not a plain word")
        return account


class HeappeTemplateSettings(_Section):
    """Mapping of one of our templates onto a command template of a HEAppE instance."""

    command_template_id: int = Field(ge=1)
    """Id of the HEAppE command template that runs the step on the cluster."""
    cluster_node_type_id: int = Field(ge=1)
    """HEAppE cluster node type (queue) of the task."""
    parameters: dict[str, str] = Field(default_factory=dict)
    """Our parameter name to the HEAppE command parameter identifier; unlisted parameters keep
    their name."""
    upload: list[str] = Field(default_factory=list)
    """Path parameters whose files are uploaded to the job's execution directory before submit;
    HEAppE then receives the file name instead of the local path."""
    download: list[str] = Field(default_factory=list)
    """Files, relative to the job's execution directory, fetched into the job folder."""


class HeappeSettings(_Section):
    """The ``heappe`` backend: jobs go to a HEAppE middleware instance (py4heappe client)."""

    url: str | None = None
    """Base URL of the HEAppE instance, e.g. ``https://heappe.example.org/production``."""
    project_id: int | None = Field(default=None, ge=1)
    """HEAppE project (accounting) id of the jobs."""
    cluster_id: int | None = Field(default=None, ge=1)
    file_transfer_method_id: int | None = Field(default=None, ge=1)
    username: str | None = None
    password: SecretStr | None = None
    """Password of ``username``; give either this pair or ``openid_token``."""
    openid_token: SecretStr | None = None
    """OpenID access token, used instead of username and password."""
    templates: dict[str, HeappeTemplateSettings] = Field(default_factory=dict)
    """Our template name to its HEAppE command template."""
    request_timeout_s: float = Field(default=60.0, gt=0)
    """Seconds one HTTP request to HEAppE may take."""

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", url):
            raise ValueError(f"url {url!r} is not an http(s) URL")
        return url.rstrip("/") if url is not None else None


class HpcSettings(_Section):
    """Backend of the retraining jobs and the commands they may run."""

    backend: Literal["local", "slurm", "heappe"] = "local"
    """Backend that ``bcratos hpc submit`` and the orchestrator use."""
    templates: dict[str, TemplateSettings] = Field(default_factory=default_templates)
    """Pre-approved commands by name. Templates in the configuration are added to the default
    ones (prepare, train, evaluate, announce) and replace a default of the same name."""
    local: LocalBackendSettings = Field(default_factory=LocalBackendSettings)
    slurm: SlurmSettings = Field(default_factory=SlurmSettings)
    heappe: HeappeSettings = Field(default_factory=HeappeSettings)

    @field_validator("templates", mode="before")
    @classmethod
    def _merge_with_defaults(cls, declared: Any) -> Any:
        if not isinstance(declared, dict):
            return declared
        return {**default_templates(), **declared}

    @field_validator("templates")
    @classmethod
    def _template_names(cls, templates: dict[str, TemplateSettings]) -> dict[str, TemplateSettings]:
        for name in templates:
            if not _TEMPLATE_NAME.fullmatch(name):
                raise ValueError(
                    f"template name {name!r} is invalid; expected {_TEMPLATE_NAME.pattern}"
                )
        return templates


class OrchestratorSettings(_Section):
    """The retrain orchestrator: debouncing of retrain requests and its pipeline's jobs."""

    group: str = "bcratos-orchestrator"
    """Consumer group that reads the retrain topic."""
    debounce_s: float = Field(default=30.0, ge=0)
    """Seconds after a target's first pending request during which further requests for it
    join the same job."""
    poll_interval_s: float = Field(default=5.0, gt=0)
    """Seconds between status queries of running jobs."""
    model: Literal["linear", "gru", "tcn"] = "gru"
    """Decoder architecture that the train step trains."""
    device: Literal["cpu", "cuda"] = "cpu"
    """Device of the train step."""
    max_pipeline_lag: int | None = Field(default=1000, ge=0)
    """A job whose requests are debounced starts once ingest and the lake sink together lag
    by at most this many messages, so that its dataset contains what the boards sent before
    the requests. None starts it without checking."""
    lake_wait_s: float = Field(default=600.0, ge=0)
    """Maximum wait for that lag, in seconds after the debounce; then the job starts anyway."""


class MonitorSettings(_Section):
    """Retrain triggers of ``streams.monitors``: volume, drift and schedule."""

    group: str = "bcratos-monitors"
    """Consumer group and faust application id of the monitors. It also names their changelog
    topic (``<group>-volume-changelog``)."""
    volume_threshold: int = Field(default=500, ge=1)
    """New class_label behaviour events of a target since its last retrain job that trigger a
    volume request."""
    volume_targets: Literal["global", "subjects", "both"] = "global"
    """Targets that count class_label events: ``global`` only, each subject's pseudonym, or
    both."""
    drift_threshold: float = Field(default=0.6, gt=0)
    """Drift score that triggers a drift request: the mean over channels of |rate - reference
    mean| / (reference spread + 1 Hz), the spread being the standard deviation of one-minute
    mean rates in the model's training data."""
    drift_min_bins: int = Field(default=1200, ge=1)
    """Spike bins in one drift window of a subject (1200 bins of 50 ms are one minute). The
    window's score is computed when it is full, and the next window starts empty."""
    drift_cooldown_s: float = Field(default=3600.0, ge=0)
    """Seconds after a drift request for a subject before that subject can cause another one."""
    schedule_interval_s: float | None = Field(default=None, gt=0)
    """Seconds between scheduled requests of each of ``schedule_targets``; unset turns the
    schedule off."""
    schedule_targets: list[str] = Field(default_factory=lambda: ["global"])
    check_interval_s: float = Field(default=5.0, gt=0)
    """Seconds between evaluations of the triggers. The monitors also check the Delta versions
    of ``registry/models`` and ``registry/retrain_jobs`` at this interval."""


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
    models: ModelsSettings = Field(default_factory=ModelsSettings)
    hpc: HpcSettings = Field(default_factory=HpcSettings)
    orchestrator: OrchestratorSettings = Field(default_factory=OrchestratorSettings)
    monitors: MonitorSettings = Field(default_factory=MonitorSettings)

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
        elif "anonymization" in key or key.startswith("hpc.heappe"):
            # The value may be a key, a password or a token: never echo it.
            lines.append(f"invalid value for {key!r}: {error['msg']}")
        else:
            lines.append(f"invalid value for {key!r}: {error['msg']} (received {error['input']!r})")
    return "invalid configuration:\n  " + "\n  ".join(lines)
