"""What every attack shares: the `Victim`, the record base, parameter parsing and batched queries.

Kept apart from `nasaudit.attacks.__init__`, which must not import torch.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import nn

from nasaudit.data import to_float
from nasaudit.infra.device import autocast, full_precision
from nasaudit.infra.errors import InputError
from nasaudit.infra.records import Record

if TYPE_CHECKING:  # the trainer is only needed by the retraining attacks, at call time
    from nasaudit.training import TrainConfig

P = TypeVar("P")


@dataclasses.dataclass
class Victim:
    """What an attack is pointed at.

    model: an ImageClassifier in eval mode on the attack's device; attacks never write it to disk
        and never change its weights (fine-tuning attacks work on a deep copy).
    model_name: registry name / genotype spec, to rebuild the architecture for retraining.
    train_config: how the victim was trained (poisoning retrains with it; None -> TrainConfig()).
    model_kwargs: extra `build_model` keyword arguments (C, layers, ...).
    """

    model: nn.Module
    model_name: str
    train_config: TrainConfig | None = None
    model_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class AttackRecord(Record):
    """Fields every attack record starts with; subclasses add their metrics.

    params: the attack's Params as a plain dict (every setting that produced the metrics).
    seconds: wall-clock time of the attack.
    """

    attack: str
    model_name: str
    dataset: str
    seed: int
    params: dict[str, Any]
    seconds: float


def record_fields(
    attack: str, victim: Victim, data: Any, seed: int, params: Any, seconds: float
) -> dict[str, Any]:
    """The `AttackRecord` fields every attack fills the same way, as keyword arguments.

    `data` is the ImageDataset attacked (its name is recorded); `params` the Params dataclass.
    """
    return {
        "attack": attack, "model_name": victim.model_name, "dataset": data.name, "seed": seed,
        "params": params_dict(params), "seconds": seconds,
    }


def params_dict(params: Any) -> dict[str, Any]:
    """Params dataclass -> JSON-ready dict (tuples become lists)."""
    return {f.name: _plain_value(getattr(params, f.name)) for f in dataclasses.fields(params)}


def _plain_value(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain_value(v) for v in value]
    return value


@contextmanager
def timed() -> Iterator[Callable[[], float]]:
    """`with timed() as elapsed: ...; elapsed()` -> seconds since the block started."""
    start = time.perf_counter()
    yield lambda: time.perf_counter() - start


def batch_slices(n: int, batch_size: int) -> list[slice]:
    """Consecutive slices of at most `batch_size` covering range(n)."""
    return [slice(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def cat_batches(
    parts: list[tuple[torch.Tensor, ...]], dtypes: tuple[torch.dtype, ...]
) -> tuple[torch.Tensor, ...]:
    """Per-batch result tuples -> one CPU tensor per field, concatenated over the batches.

    With no batches (no input to attack) every field is an empty tensor of its `dtypes` entry.
    """
    if not parts:
        return tuple(torch.zeros(0, dtype=dtype) for dtype in dtypes)
    return tuple(torch.cat([p[i] for p in parts]).cpu() for i in range(len(dtypes)))


# CPU passes are fastest on chunks small enough for the activations to stay in cache
# (`benchmarks/attacks.py` times the attacks built on it); GPUs want big chunks.
CPU_FORWARD_CHUNK = 64
CPU_GRADIENT_CHUNK = 128


def forward_chunk(device: torch.device, requested: int) -> int:
    """Images per forward pass on `device`: `requested`, capped at CPU_FORWARD_CHUNK on the CPU."""
    return min(requested, CPU_FORWARD_CHUNK) if device.type == "cpu" else requested


@torch.no_grad()
def batched_logits(
    model: nn.Module,
    x: torch.Tensor,
    *,
    device: torch.device,
    batch_size: int = 512,
    fp32: bool = False,
) -> torch.Tensor:
    """Logits [N, K] (float32, on `device`) of images x ([N, C, H, W], uint8 or float in [0, 1]).

    x may live on the CPU; each chunk is moved to the device and converted there. fp32: compute
    in float32 even under autocast (oracles whose signal is below bf16's resolution); otherwise
    bf16 autocast on CUDA.
    """
    outputs = []
    batch_size = forward_chunk(torch.device(device), batch_size)
    for start in range(0, x.shape[0], batch_size):
        chunk = to_float(x[start : start + batch_size].to(device, non_blocking=True))
        with full_precision(device) if fp32 else autocast(device):
            outputs.append(model(chunk).float())
    if not outputs:
        return torch.empty(0, 0, device=device)
    return torch.cat(outputs)


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, device: torch.device,
             batch_size: int = 512) -> float:
    """Top-1 accuracy in [0, 1] of `model` on uint8 images [N, C, H, W] with labels [N]."""
    preds = batched_logits(model, images, device=device, batch_size=batch_size).argmax(1)
    return float((preds == labels.to(device)).float().mean())


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Per-sample cross entropy -sum_k p_k log q_k [N] of logits [N, K] against probabilities [N, K]."""
    return -(target_probs * torch.log_softmax(logits, dim=1)).sum(1)


def victim_train_config(victim: Victim) -> TrainConfig:
    """The victim's TrainConfig (the study's defaults when the checkpoint did not record one)."""
    from nasaudit.training import TrainConfig

    cfg = victim.train_config
    if cfg is None:
        return TrainConfig()
    if isinstance(cfg, dict):
        return TrainConfig.from_dict(cfg)
    return cfg


def build_fresh(model_name: str, data: Any, seed: int, model_kwargs: dict | None = None) -> nn.Module:
    """A freshly initialised `model_name` for `data` (its classes and normalisation), seeded."""
    from nasaudit.infra.device import seeded
    from nasaudit.models.registry import build_model

    with seeded(seed):
        try:
            return build_model(
                model_name, data.num_classes, mean=data.mean, std=data.std, **(model_kwargs or {})
            )
        except TypeError as exc:
            raise InputError("--model", f"{model_name!r} does not take {sorted(model_kwargs or {})}: {exc}") from None
