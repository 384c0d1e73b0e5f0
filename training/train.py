"""The training loop: CPU, one CUDA GPU with mixed precision, or several GPUs with DDP.

``train(model, train_set, validation_set, config)`` runs up to ``config.epochs`` passes over
the training windows with AdamW and class-weighted cross-entropy. It evaluates on the
validation windows after every epoch and stops early when the monitored metric has not
improved for ``config.patience`` epochs. The model comes back with its best epoch's weights.

Launch through the command line, from the repository root::

    # CPU
    .venv/bin/bcratos train --dataset spike-2012 --model gru --device cpu
    # one GPU: autocast in bfloat16 (float16 with a GradScaler where bf16 is unsupported)
    .venv/bin/bcratos train --dataset spike-2012 --model gru --device cuda
    # N GPUs on one node with DDP: torchrun starts one process per GPU
    .venv/bin/torchrun --standalone --nproc_per_node=N -m bcratos.cli train \\
        --dataset spike-2012 --model gru --device cuda

Under torchrun (``WORLD_SIZE`` > 1) each process trains on its share of every epoch through a
``DistributedSampler``, gradients are averaged by DDP, every process evaluates the whole
validation set (so all of them take the same early-stopping decision), and only rank 0 shows
progress, writes checkpoints and exports the model.

Determinism: python, numpy and torch generators are seeded from (seed, epoch, rank) at the
start of every epoch, the shuffling order comes from (seed, epoch), and
``torch.use_deterministic_algorithms(True, warn_only=True)`` is set. A run resumed from a
checkpoint therefore continues with the same random numbers as an uninterrupted run, and on
CPU it ends with the same weights. On CUDA some kernels (cuDNN GRU) have no deterministic
version; torch then warns instead of failing.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Sampler
from tqdm import tqdm

from training.data import WindowDataset, collate_windows
from training.errors import CheckpointError
from training.evaluate import balanced_accuracy, confusion_matrix

logger = logging.getLogger(__name__)

Monitor = Literal["val_loss", "balanced_accuracy"]
CHECKPOINT_FILE: Final = "checkpoint.pt"
_CHECKPOINT_FORMAT: Final = 1


@dataclass(frozen=True)
class TrainConfig:
    """Options of one training run; every default is sized for a CPU run of a few minutes."""

    epochs: int = 20  # maximum passes over the training windows
    batch_size: int = 256  # windows per optimizer step, per process
    learning_rate: float = 3e-3  # AdamW learning rate
    weight_decay: float = 1e-2  # AdamW decoupled weight decay
    patience: int = 4  # epochs without improvement before stopping; 0 never stops early
    monitor: Monitor = "val_loss"  # early-stopping metric on the validation windows
    class_weights: Literal["balanced", "none"] = "balanced"  # balanced: 1 / class frequency
    seed: int = 0  # seeds shuffling and dropout; build_decoder(seed=...) seeds initial weights
    device: str = "cpu"  # "cpu", "cuda" or "cuda:N"; under torchrun each rank uses its own GPU
    amp: bool = True  # autocast on CUDA; ignored on CPU
    checkpoint_dir: Path | None = None  # resume from and write checkpoint.pt here
    max_batches_per_epoch: int | None = None  # cap for smoke runs; None uses every window
    progress: bool = True  # tqdm bar on rank 0
    num_workers: int = 0  # DataLoader worker processes
    threads: int | None = None  # torch CPU threads for this process; None keeps torch's choice

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.patience < 0:
            raise ValueError(f"patience must be 0 or more epochs, got {self.patience}")
        if self.monitor not in ("val_loss", "balanced_accuracy"):
            raise ValueError(
                f"monitor {self.monitor!r} is unknown; expected val_loss or balanced_accuracy"
            )

    def fingerprint(self) -> dict[str, Any]:
        """Options that must match for a checkpoint to resume this run."""
        values = asdict(self)
        for free in (
            "epochs",
            "checkpoint_dir",
            "progress",
            "num_workers",
            "device",
            "patience",
            "threads",
        ):
            values.pop(free)
        return values


@dataclass
class EpochRecord:
    """Figures of one epoch."""

    epoch: int  # 1-based
    train_loss: float
    val_loss: float | None
    val_accuracy: float | None
    val_balanced_accuracy: float | None
    seconds: float
    samples_per_s: float


@dataclass
class TrainResult:
    """The trained model (best epoch's weights), one record per epoch and the final metrics."""

    model: nn.Module
    history: list[EpochRecord]
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class _EarlyStopping:
    monitor: Monitor
    patience: int
    best_value: float = math.nan
    best_epoch: int = 0
    epochs_without_improvement: int = 0

    def update(self, value: float, epoch: int) -> bool:
        """Record an epoch's value; return True when it is the best so far."""
        better = math.isnan(self.best_value) or (
            value < self.best_value if self.monitor == "val_loss" else value > self.best_value
        )
        if better:
            self.best_value, self.best_epoch, self.epochs_without_improvement = value, epoch, 0
        else:
            self.epochs_without_improvement += 1
        return better

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.epochs_without_improvement >= self.patience


# ---------------------------------------------------------------------------------------------
# Process setup


@dataclass(frozen=True)
class Runtime:
    """Device of this process, and its rank among ``world_size`` processes."""

    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_runtime(device: str) -> Runtime:
    """Return the runtime; under torchrun, join the process group first.

    torchrun sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``. With CUDA each rank uses GPU
    ``LOCAL_RANK`` and the NCCL backend, on CPU the gloo backend.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested, but torch finds no CUDA device")
    if world_size <= 1:
        return Runtime(torch.device(device))

    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        process_device = torch.device("cuda", local_rank)
        backend = "nccl"
    else:
        process_device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    logger.info("rank %d of %d trains on %s (%s)", rank, world_size, process_device, backend)
    return Runtime(process_device, rank=rank, world_size=world_size)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) and ask torch for deterministic kernels."""
    # cuBLAS needs this workspace setting for deterministic results. It must be set before
    # the first CUDA call, so a caller that already used CUDA may get a warning from torch.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def _epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    return (seed * 1_000_003 + epoch * 10_007 + rank) % 2**63


# ---------------------------------------------------------------------------------------------
# Training


def train(
    model: nn.Module,
    train_set: WindowDataset,
    validation_set: WindowDataset | None,
    config: TrainConfig,
    *,
    runtime: Runtime | None = None,
    on_epoch_end: Callable[[EpochRecord], None] | None = None,
) -> TrainResult:
    """Train ``model`` and return it with the weights of its best epoch.

    Steps:

    1. Seed and place the model.
    2. Resume from ``checkpoint_dir`` when it contains a checkpoint of the same run.
    3. Per epoch: reseed, train, evaluate, update early stopping, write a checkpoint (rank 0).
    4. Load the best weights.

    ``on_epoch_end`` is called on every rank after each epoch's checkpoint. Raises
    CheckpointError when the checkpoint belongs to another run.
    """
    runtime = runtime or setup_runtime(config.device)
    if len(train_set) == 0:
        raise ValueError("the training set has no windows; check the split selection")

    # (1) Seed and place the model.
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    model.to(runtime.device)
    weights = _class_weights(train_set, _n_classes(model), config).to(runtime.device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    amp_dtype = _amp_dtype(runtime.device, config.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    stopping = _EarlyStopping(config.monitor, config.patience)
    history: list[EpochRecord] = []
    best_state = _cpu_state(model)

    # (2) Resume.
    checkpoint_path = config.checkpoint_dir / CHECKPOINT_FILE if config.checkpoint_dir else None
    first_epoch = 1
    if checkpoint_path is not None and checkpoint_path.exists():
        resumed = load_checkpoint(checkpoint_path, config, runtime.device, _model_config(model))
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scaler.load_state_dict(resumed["scaler"])
        stopping = _EarlyStopping(config.monitor, config.patience, **resumed["stopping"])
        history = [EpochRecord(**record) for record in resumed["history"]]
        best_state = resumed["best_model"]
        first_epoch = int(resumed["epoch"]) + 1
        _restore_rng(resumed["rng"])
        if runtime.is_main:
            logger.info("resumed from %s after epoch %d", checkpoint_path, first_epoch - 1)

    wrapped = _wrap(model, runtime)

    # (3) Epochs.
    for epoch in range(first_epoch, config.epochs + 1):
        if stopping.should_stop:
            break
        _seed_epoch(config.seed, epoch, runtime.rank)
        bar = tqdm(
            desc=f"epoch {epoch}/{config.epochs}",
            unit="batch",
            disable=not (config.progress and runtime.is_main),
        )
        started = time.perf_counter()
        train_loss, samples = _train_epoch(
            wrapped, train_set, optimizer, scaler, weights, config, runtime, epoch, amp_dtype, bar
        )
        seconds = time.perf_counter() - started
        record = EpochRecord(
            epoch=epoch,
            train_loss=train_loss,
            val_loss=None,
            val_accuracy=None,
            val_balanced_accuracy=None,
            seconds=seconds,
            samples_per_s=samples * runtime.world_size / seconds if seconds > 0 else math.nan,
        )
        if validation_set is not None and len(validation_set):
            figures = validate(model, validation_set, weights, runtime.device, amp_dtype)
            record.val_loss = figures["loss"]
            record.val_accuracy = figures["accuracy"]
            record.val_balanced_accuracy = figures["balanced_accuracy"]
        history.append(record)
        bar.set_postfix(
            loss=f"{train_loss:.4f}",
            val_loss=_format(record.val_loss),
            val_bal_acc=_format(record.val_balanced_accuracy),
        )
        bar.close()

        monitored = _monitored_value(record, config.monitor)
        if stopping.update(monitored, epoch):
            best_state = _cpu_state(model)
        if runtime.is_main:
            logger.debug(
                "epoch %d: train loss %.4f, val loss %s, val balanced accuracy %s, %.0f samples/s",
                epoch,
                record.train_loss,
                _format(record.val_loss),
                _format(record.val_balanced_accuracy),
                record.samples_per_s,
            )
            if checkpoint_path is not None:
                save_checkpoint(
                    checkpoint_path,
                    model,
                    optimizer,
                    scaler,
                    epoch,
                    stopping,
                    history,
                    best_state,
                    config,
                )
        if runtime.distributed:
            dist.barrier()
        if on_epoch_end is not None:
            on_epoch_end(record)

    # (4) Best weights.
    model.load_state_dict(best_state)
    metrics = {
        "best_epoch": stopping.best_epoch,
        "monitor": config.monitor,
        "best_value": stopping.best_value,
        "epochs_run": len(history),
        "stopped_early": stopping.should_stop and len(history) < config.epochs,
        "train_samples_per_s": _median([record.samples_per_s for record in history]),
    }
    return TrainResult(model=model, history=history, metrics=metrics)


def _train_epoch(
    model: nn.Module,
    train_set: WindowDataset,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    weights: torch.Tensor,
    config: TrainConfig,
    runtime: Runtime,
    epoch: int,
    amp_dtype: torch.dtype | None,
    bar: tqdm[Any],
) -> tuple[float, int]:
    """Run one pass over this rank's share of the training windows; return mean loss, samples."""
    model.train()
    loader = DataLoader(
        train_set,
        batch_size=config.batch_size,
        sampler=_sampler(train_set, config.seed, epoch, runtime),
        collate_fn=collate_windows,
        num_workers=config.num_workers,
        pin_memory=runtime.device.type == "cuda",
    )
    total_batches = len(loader)
    if config.max_batches_per_epoch is not None:
        total_batches = min(total_batches, config.max_batches_per_epoch)
    bar.reset(total=total_batches)
    loss_sum = torch.zeros((), device=runtime.device)
    samples = 0
    for batch_number, (x, y, subject) in enumerate(loader):
        if batch_number >= total_batches:
            break
        x = x.to(runtime.device, non_blocking=True)  # (batch, time, channels)
        y = y.to(runtime.device, non_blocking=True)  # (batch,)
        subject = subject.to(runtime.device, non_blocking=True)  # (batch,)
        with _autocast(runtime.device, amp_dtype):
            logits = model(x, subject)  # (batch, classes)
        loss = nn.functional.cross_entropy(logits.float(), y, weight=weights)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
        scaler.step(optimizer)
        scaler.update()

        loss_sum += loss.detach() * y.shape[0]
        samples += int(y.shape[0])
        if batch_number % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
        bar.update()
    return float(loss_sum.item() / max(samples, 1)), samples


@torch.no_grad()
def validate(
    model: nn.Module,
    dataset: WindowDataset,
    weights: torch.Tensor,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    batch_size: int = 1024,
) -> dict[str, float]:
    """Return weighted loss, accuracy and balanced accuracy over every window of ``dataset``."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_windows)
    n_classes = int(weights.shape[0])
    loss_sum = 0.0
    weight_sum = 0.0
    true_labels, predicted = [], []
    for x, y, subject in loader:
        x, y, subject = x.to(device), y.to(device), subject.to(device)
        with _autocast(device, amp_dtype):
            logits = model(x, subject).float()  # (batch, classes)
        loss_sum += float(nn.functional.cross_entropy(logits, y, weight=weights, reduction="sum"))
        weight_sum += float(weights[y].sum())
        true_labels.append(y.cpu().numpy())
        predicted.append(logits.argmax(dim=1).cpu().numpy())
    y_true, y_pred = np.concatenate(true_labels), np.concatenate(predicted)
    matrix = confusion_matrix(y_true, y_pred, n_classes)
    return {
        "loss": loss_sum / weight_sum if weight_sum else math.nan,
        "accuracy": float(np.mean(y_true == y_pred)),
        "balanced_accuracy": balanced_accuracy(matrix),
    }


def _sampler(dataset: WindowDataset, seed: int, epoch: int, runtime: Runtime) -> Sampler[int]:
    if runtime.distributed:
        sampler: DistributedSampler[int] = DistributedSampler(
            dataset, num_replicas=runtime.world_size, rank=runtime.rank, shuffle=True, seed=seed
        )
        sampler.set_epoch(epoch)
        return sampler
    generator = torch.Generator().manual_seed(_epoch_seed(seed, epoch))
    return RandomSampler(dataset, generator=generator)


def _wrap(model: nn.Module, runtime: Runtime) -> nn.Module:
    if not runtime.distributed:
        return model
    # A batch without rows of some subject leaves that subject's read-in without gradients.
    several_subjects = len(getattr(getattr(model, "config", None), "channels", {})) > 1
    device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
    return DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=several_subjects
    )


def _amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _class_weights(dataset: WindowDataset, n_classes: int, config: TrainConfig) -> torch.Tensor:
    """Return per-class loss weights: 1 each, or n / (classes present x count) when balanced."""
    if config.class_weights == "none":
        return torch.ones(n_classes)
    counts = np.bincount(dataset.labels_of_targets(), minlength=n_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(n_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


def _n_classes(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    if config is None:
        raise TypeError("train() needs a decoder built by training.models.build_decoder")
    return len(config.classes)


def _monitored_value(record: EpochRecord, monitor: Monitor) -> float:
    if monitor == "val_loss":
        value = record.val_loss if record.val_loss is not None else record.train_loss
    else:
        value = record.val_balanced_accuracy if record.val_balanced_accuracy is not None else 0.0
    return float(value)


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}


def _median(values: list[float]) -> float:
    return float(np.median(values)) if values else math.nan


def _format(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


# ---------------------------------------------------------------------------------------------
# Random generators and checkpoints


def _seed_epoch(seed: int, epoch: int, rank: int) -> None:
    epoch_seed = _epoch_seed(seed, epoch, rank)
    random.seed(epoch_seed)
    np.random.seed(epoch_seed % 2**32)
    torch.manual_seed(epoch_seed)


def _rng_state() -> dict[str, Any]:
    numpy_state = np.random.get_state(legacy=True)
    assert isinstance(numpy_state, tuple)  # legacy=True always returns the tuple form
    python_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        # numpy and python states as JSON text, which torch.load(weights_only=True) accepts
        "numpy": json.dumps([numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]]),
        "python": json.dumps([python_state[0], list(python_state[1]), python_state[2]]),
    }


def _restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, position, has_gauss, cached = json.loads(state["numpy"])
    np.random.set_state((name, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    version, internal, gauss = json.loads(state["python"])
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    epoch: int,
    stopping: _EarlyStopping,
    history: list[EpochRecord],
    best_state: dict[str, torch.Tensor],
    config: TrainConfig,
) -> None:
    """Write the state after ``epoch`` to ``path`` atomically (a temporary file, then rename).

    The file contains tensors, numbers and strings only, so ``torch.load(weights_only=True)``
    reads it without unpickling arbitrary objects.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": _CHECKPOINT_FORMAT,
        "fingerprint": json.dumps(config.fingerprint(), sort_keys=True, default=str),
        "model_config": json.dumps(_model_config(model), sort_keys=True),
        "epoch": epoch,
        "model": _cpu_state(model),
        "best_model": best_state,
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "stopping": {
            "best_value": stopping.best_value,
            "best_epoch": stopping.best_epoch,
            "epochs_without_improvement": stopping.epochs_without_improvement,
        },
        "history": json.dumps([asdict(record) for record in history]),
        "rng": _rng_state(),
    }
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    os.replace(partial, path)


def load_checkpoint(
    path: Path, config: TrainConfig, device: torch.device, model_config: dict[str, Any]
) -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint`` for the same options and decoder."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    found = state.get("format") if isinstance(state, dict) else None
    if found != _CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"checkpoint {path} has format {found!r}, expected {_CHECKPOINT_FORMAT}; "
            "delete it to start over"
        )
    expected = json.dumps(config.fingerprint(), sort_keys=True, default=str)
    if state["fingerprint"] != expected:
        raise CheckpointError(
            f"checkpoint {path} belongs to a run with other options ({state['fingerprint']}); "
            f"this run has {expected}. Use another checkpoint folder or delete the file"
        )
    if state["model_config"] != json.dumps(model_config, sort_keys=True):
        raise CheckpointError(
            f"checkpoint {path} is of another decoder ({state['model_config']}); this run "
            f"trains {json.dumps(model_config, sort_keys=True)}"
        )
    state["history"] = json.loads(state["history"])
    state["rng"]["torch"] = state["rng"]["torch"].cpu()
    return state  # type: ignore[no-any-return]


def _model_config(model: nn.Module) -> dict[str, Any]:
    config = getattr(model, "config", None)
    return config.to_dict() if config is not None else {}
