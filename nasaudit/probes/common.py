"""What every probe shares: eval-mode scoping, seeded sampling, untrained-model detection and the
Agg plot / npz writers.

Kept apart from the probe modules so that gradvar, contour and curvature import it and never
each other (no import cycle).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from nasaudit.models.base import eval_mode as eval_mode  # re-exported: every probe's scope


def sample_indices(n_total: int, n: int, seed: int) -> Tensor:
    """n distinct indices in [0, n_total), seeded (CPU generator, so identical on any device)."""
    from nasaudit.infra.device import generator

    return torch.randperm(n_total, generator=generator(seed))[: min(n, n_total)]


def is_untrained(model: nn.Module) -> bool | None:
    """Whether `model` has never taken a training step: True when it has batch norm layers and
    none has counted a batch (num_batches_tracked == 0 everywhere), False when one has, None
    when it has no batch norm with running statistics (e.g. GroupNorm-only BiT: cannot tell).

    A model trained in train mode always advances num_batches_tracked, and checkpoints carry
    the counter, so this separates a fresh constructor output from a trained network without
    the caller having to say which it passes.
    """
    counters = [
        m.num_batches_tracked
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        and m.track_running_stats
        and m.num_batches_tracked is not None
    ]
    if not counters:
        return None
    return all(int(c) == 0 for c in counters)


def new_figure(figsize: tuple[float, float] = (5.0, 4.0), ncols: int = 1) -> tuple[Any, Any]:
    """(Figure, axes) on an Agg canvas, without pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=True)
    return fig, axes


def save_figure(fig: Any, path: str | Path, dpi: int = 120) -> Path:
    """Write `fig` as PNG to `path` atomically; returns the path."""
    from nasaudit.infra.io import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return atomic_write_bytes(path, buf.getvalue())


def save_npz(path: str | Path, **arrays: Any) -> Path:
    """Write numpy arrays to an .npz file atomically (np.load(..., allow_pickle=False) reads it)."""
    from nasaudit.infra.io import atomic_write_bytes

    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return atomic_write_bytes(path, buf.getvalue())
