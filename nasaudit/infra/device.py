"""Device selection and the per-device speed settings (AMP bf16 on CUDA, channels_last everywhere)."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import torch

from nasaudit.infra.errors import InputError


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """Turn "auto" | "cpu" | "cuda" | "cuda:N" | "mps" into a torch.device ("auto" prefers CUDA)."""
    if isinstance(spec, torch.device):
        return spec
    if spec in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise InputError("--device", f"unknown device {spec!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device", f"{spec!r} requested but CUDA is not available")
    return device


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; a no-op elsewhere so CPU runs stay exact and deterministic."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def autocast_enabled(device: torch.device) -> bool:
    """Whether an autocast region (ours on CUDA, or one the caller opened) is active for
    `device`'s type, i.e. whether a forward pass there would run in reduced precision."""
    return torch.is_autocast_enabled(torch.device(device).type)


@contextlib.contextmanager
def full_precision(device: torch.device | None = None) -> Iterator[None]:
    """Switch autocast off (CPU, and `device`'s type) inside the block, so float32 tensors are
    computed in float32 even within a caller's bf16 autocast region.

    For the queries whose signal is below bf16's resolution (8 bits of mantissa, a relative
    step of about 4e-3): NES finite differences at sigma 1e-3, HopSkipJump's boundary steps,
    the finite-difference Hessian-vector product of the search, and attack success checks.
    """
    types = {"cpu"} | ({torch.device(device).type} if device is not None else set())
    if torch.cuda.is_available():
        types.add("cuda")
    with contextlib.ExitStack() as stack:
        for kind in sorted(types):
            stack.enter_context(torch.autocast(kind, enabled=False))
        yield


def prepare_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Move a model to `device`, its 4-d weights in channels_last memory format.

    A channels_last weight makes every conv (oneDNN on CPU, cuDNN on CUDA) run and return
    channels_last, so the whole network follows, whatever the input's format. On this project's
    2-core CPU (`benchmarks/memory_format.py`, batch 64) a training step was 1.63x faster for
    darts_v2 (C=16, 8 cells), 1.24x for resnet18 at width 8 and 1.53x for tiny_cnn, and an eval
    forward 2.0-2.7x faster for DARTS networks; nowhere slower by more than 1%. Results agree
    with NCHW to fp32 rounding.
    """
    return model.to(device).to(memory_format=torch.channels_last)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a host tensor to `device`: pinned and non-blocking when the target is CUDA."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Seed torch's global RNG inside the block only (for layer initialisation), then restore it.

    nasaudit keeps no global random state: every other random draw takes an explicit Generator.
    """
    devices = [device.index or 0] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def stream_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed for the random stream named by `keys` under `seed` (sha256 of their text),
    so that independent parts of one run never share, or shift, each other's draws."""
    text = ":".join(str(k) for k in ("nasaudit", seed, *keys)).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 1


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch.Generator on `device` seeded with `seed`."""
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen
