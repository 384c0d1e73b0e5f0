"""Decoders: a window of recent steps in, class logits out.

Every decoder is a per-subject read-in followed by a shared core::

    features (batch, time, channels) --read-in of each row's subject--> (batch, time, latent)
                                     --core--> logits (batch, classes)

The read-in is one linear map per subject, from that subject's channels to a latent width
shared by all subjects, so one core serves several subjects and a new day can be aligned by
changing the read-in only (``training.adapt``). With ``latent`` unset the read-in is the
identity and every subject must have the same channel count.

Cores, chosen by ``architecture``:

- ``linear``: logistic regression over the flattened window (``pooling="flatten"``) or over
  the window's sum (``pooling="sum"``). With the identity read-in this is the linear baseline.
- ``gru``: a GRU over the window; the last step's hidden state gives the logits.
- ``tcn``: causal temporal convolutions with dilations 1, 2, 4, ...; the last step's output
  gives the logits.

``build_decoder(config)`` rebuilds a decoder from a JSON-able dict, so a board can recreate the
module from an artifact's ``config.json`` and load its safetensors weights without pickle.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Final, Literal, get_args

import torch
from torch import Tensor, nn

from training.errors import DecoderConfigError

Architecture = Literal["linear", "gru", "tcn"]
Pooling = Literal["flatten", "sum"]

ARCHITECTURES: Final[tuple[str, ...]] = get_args(Architecture)

# Keys an exported artifact's config.json may carry next to the decoder's own keys. They
# describe the artifact (where it came from, how inputs are normalized), not the module.
ARTIFACT_KEYS: Final = frozenset(
    {
        "format",
        "format_version",
        "model_version",
        "dataset",
        "target",
        "normalization",
        "manifest_hash",
        "source_versions",
        "metrics",
        "trained_at",
        "training",
    }
)


@dataclass(frozen=True)
class DecoderConfig:
    """Everything needed to rebuild a decoder module, as plain JSON-able values."""

    architecture: Architecture
    channels: dict[str, int]
    """Channel count of each subject (pseudonym), in read-in order."""
    window: int
    """Steps per input window, the newest last."""
    classes: list[str]
    """Class names in logit order."""
    step_ms: int = 50
    """Width of one step in ms; the board must bin its counts the same way."""
    latent: int | None = None
    """Width of the shared latent after the read-in; None makes the read-in the identity."""
    hidden: int = 64
    """GRU hidden size or TCN channels."""
    layers: int = 1
    """GRU layers or TCN blocks."""
    kernel_size: int = 3
    """TCN kernel size in steps."""
    dropout: float = 0.0
    """Dropout probability before the output layer (and between GRU layers)."""
    pooling: Pooling = "flatten"
    """Window pooling of the linear core: flattened, or summed over time."""

    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """Artifact keys found in the source dict (see ``ARTIFACT_KEYS``); the module ignores them."""

    def __post_init__(self) -> None:
        self._validate()

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> DecoderConfig:
        """Read a config dict; keys that are neither decoder nor artifact keys are rejected."""
        own = {item.name for item in fields(cls)} - {"extra"}
        unknown = sorted(set(config) - own - ARTIFACT_KEYS)
        if unknown:
            raise DecoderConfigError(
                f"unknown decoder config keys {unknown}; expected some of {sorted(own)} "
                f"or artifact keys {sorted(ARTIFACT_KEYS)}"
            )
        missing = sorted({"architecture", "channels", "window", "classes"} - set(config))
        if missing:
            raise DecoderConfigError(f"decoder config lacks required keys {missing}")

        values = {key: config[key] for key in own if key in config}
        values["channels"] = dict(values["channels"])
        values["classes"] = list(values["classes"])
        extra = {key: config[key] for key in ARTIFACT_KEYS if key in config}
        return cls(**values, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """Return the decoder keys as a JSON-able dict (artifact keys left out)."""
        values = asdict(self)
        del values["extra"]
        return values

    @property
    def max_channels(self) -> int:
        """Channel width of the input tensor: the largest channel count of any subject."""
        return max(self.channels.values())

    @property
    def latent_width(self) -> int:
        """Width of the read-in's output."""
        return self.latent if self.latent is not None else self.max_channels

    def subject_index(self, subject: str) -> int:
        """Return the read-in index of a subject pseudonym."""
        try:
            return list(self.channels).index(subject)
        except ValueError:
            raise DecoderConfigError(
                f"subject {subject!r} has no read-in in this decoder; it has "
                f"{len(self.channels)} subjects"
            ) from None

    def _validate(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise DecoderConfigError(
                f"architecture {self.architecture!r} is unknown; expected one of {ARCHITECTURES}"
            )
        if not self.channels:
            raise DecoderConfigError("channels must name at least one subject, got {}")
        bad_channels = {name: n for name, n in self.channels.items() if not _positive(n)}
        if bad_channels:
            raise DecoderConfigError(
                f"channel counts must be positive integers, got {bad_channels}"
            )
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise DecoderConfigError(
                f"classes must list at least 2 distinct names, got {self.classes}"
            )
        for name in ("window", "step_ms", "hidden", "layers", "kernel_size"):
            if not _positive(getattr(self, name)):
                raise DecoderConfigError(
                    f"{name} must be a positive integer, got {getattr(self, name)!r}"
                )
        if self.latent is not None and not _positive(self.latent):
            raise DecoderConfigError(
                f"latent must be a positive integer or null, got {self.latent!r}"
            )
        if self.latent is None and len(set(self.channels.values())) > 1:
            raise DecoderConfigError(
                f"subjects with different channel counts {self.channels} need a latent width "
                "for their read-in layers; set latent"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise DecoderConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.pooling not in get_args(Pooling):
            raise DecoderConfigError(
                f"pooling {self.pooling!r} is unknown; expected one of {get_args(Pooling)}"
            )


def _positive(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


class ReadIn(nn.Module):
    """One linear map per subject from its channels to the shared latent (or the identity)."""

    def __init__(self, channels: Mapping[str, int], latent: int | None) -> None:
        super().__init__()
        self.channel_counts = list(channels.values())
        self.identity = latent is None
        self.maps = nn.ModuleList(
            [] if latent is None else [nn.Linear(n, latent) for n in self.channel_counts]
        )

    def forward(self, x: Tensor, subject: Tensor | None = None) -> Tensor:
        """Map (batch, time, channels) to (batch, time, latent); ``subject`` is (batch,) int."""
        if self.identity:
            return x
        if subject is None:
            if len(self.maps) > 1:
                raise ValueError(
                    f"this decoder serves {len(self.maps)} subjects, so forward() needs a "
                    "subject index per row"
                )
            return self.maps[0](x[..., : self.channel_counts[0]])  # type: ignore[no-any-return]

        out: Tensor | None = None
        for index, layer in enumerate(self.maps):
            rows = (subject == index).nonzero(as_tuple=True)[0]  # (rows,)
            if rows.numel() == 0:
                continue
            mapped = layer(x[rows, :, : self.channel_counts[index]])  # (rows, time, latent)
            if out is None:
                out = mapped.new_zeros((x.shape[0], x.shape[1], mapped.shape[-1]))
            out[rows] = mapped
        if out is None:
            raise ValueError(
                f"subject indexes {sorted(set(subject.tolist()))} are outside "
                f"0..{len(self.maps) - 1}"
            )
        return out


class LinearCore(nn.Module):
    """Logistic regression over the flattened or summed window."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.pooling = config.pooling
        width = config.latent_width * (config.window if config.pooling == "flatten" else 1)
        self.dropout = nn.Dropout(config.dropout)
        self.output = nn.Linear(width, len(config.classes))

    def forward(self, latent: Tensor) -> Tensor:
        # (batch, latent) when summed, (batch, time * latent) when flattened
        pooled = latent.sum(dim=1) if self.pooling == "sum" else latent.flatten(start_dim=1)
        return self.output(self.dropout(pooled))  # type: ignore[no-any-return]


class GRUCore(nn.Module):
    """A GRU over the window; logits from the hidden state after the newest step."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.gru = nn.GRU(
            config.latent_width,
            config.hidden,
            num_layers=config.layers,
            batch_first=True,
            dropout=config.dropout if config.layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(config.dropout)
        self.output = nn.Linear(config.hidden, len(config.classes))

    def forward(self, latent: Tensor) -> Tensor:
        states, _ = self.gru(latent)  # (batch, time, hidden)
        return self.output(self.dropout(states[:, -1]))  # type: ignore[no-any-return]


class CausalBlock(nn.Module):
    """Dilated causal convolution with a residual connection: step t depends on steps <= t."""

    def __init__(self, width_in: int, width_out: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.left_pad = (kernel_size - 1) * dilation
        self.conv = nn.Conv1d(width_in, width_out, kernel_size, dilation=dilation)
        self.skip = nn.Conv1d(width_in, width_out, 1) if width_in != width_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        padded = nn.functional.pad(x, (self.left_pad, 0))  # (batch, width_in, pad + time)
        residual: Tensor = self.skip(x)
        return torch.relu(self.conv(padded)) + residual  # (batch, width_out, time)


class TCNCore(nn.Module):
    """Causal temporal convolutions with doubling dilation; logits from the newest step."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        widths = [config.latent_width] + [config.hidden] * config.layers
        self.blocks = nn.Sequential(
            *(
                CausalBlock(widths[i], widths[i + 1], config.kernel_size, dilation=2**i)
                for i in range(config.layers)
            )
        )
        self.dropout = nn.Dropout(config.dropout)
        self.output = nn.Linear(config.hidden, len(config.classes))

    def forward(self, latent: Tensor) -> Tensor:
        hidden = self.blocks(latent.transpose(1, 2))  # (batch, hidden, time)
        return self.output(self.dropout(hidden[:, :, -1]))  # type: ignore[no-any-return]


CORES: Final[dict[str, Callable[[DecoderConfig], nn.Module]]] = {
    "linear": LinearCore,
    "gru": GRUCore,
    "tcn": TCNCore,
}


class Decoder(nn.Module):
    """A read-in per subject followed by a shared core; returns class logits."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.config = config
        self.read_in = ReadIn(config.channels, config.latent)
        self.core = CORES[config.architecture](config)

    def forward(self, x: Tensor, subject: Tensor | None = None) -> Tensor:
        """Map a window batch (batch, time, channels) to logits (batch, classes).

        ``subject`` contains each row's read-in index (``DecoderConfig.subject_index``); it may
        be None for a decoder of one subject.
        """
        if x.ndim != 3 or x.shape[1] != self.config.window:
            raise ValueError(
                f"decoder input must have shape (batch, {self.config.window}, channels), "
                f"got {tuple(x.shape)}"
            )
        return self.core(self.read_in(x, subject))  # type: ignore[no-any-return]


def build_decoder(config: Mapping[str, Any] | DecoderConfig, *, seed: int | None = None) -> Decoder:
    """Build a decoder, with freshly initialised weights, from a config dict or DecoderConfig.

    With ``seed`` the initial weights depend on the seed only, and torch's global generator is
    left as it was. Raises DecoderConfigError naming the bad key. Artifact keys such as
    ``normalization`` and ``metrics`` may be present and are kept in ``decoder.config.extra``.
    """
    decoder_config = (
        config if isinstance(config, DecoderConfig) else DecoderConfig.from_dict(config)
    )
    if seed is None:
        return Decoder(decoder_config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Decoder(decoder_config)


def default_config(
    architecture: Architecture,
    *,
    channels: Mapping[str, int],
    window: int,
    classes: list[str],
    step_ms: int = 50,
) -> DecoderConfig:
    """Return the project's default sizes for an architecture (small enough for CPU training).

    The linear baseline reads the flattened window with the identity read-in when every
    subject has the same channel count, which makes it plain logistic regression. The neural
    decoders use a 64-wide latent and 64 hidden units.
    """
    same_width = len(set(channels.values())) == 1
    if architecture == "linear":
        return DecoderConfig(
            architecture="linear",
            channels=dict(channels),
            window=window,
            classes=list(classes),
            step_ms=step_ms,
            latent=None if same_width else 64,
        )
    return DecoderConfig(
        architecture=architecture,
        channels=dict(channels),
        window=window,
        classes=list(classes),
        step_ms=step_ms,
        latent=64,
        hidden=64,
        layers=1 if architecture == "gru" else 2,
        dropout=0.2,
    )
