"""Seeded input selection shared by the evasion attacks (PGD, NES).

The candidates depend on the seed only, never on the model, so two models attacked with the same
seed see the same candidate inputs; each model then keeps those it classifies correctly, and the
record lists the kept indices so results can be compared input by input (the study's Figure 4).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nasaudit.attacks.common import batched_logits
from nasaudit.infra.device import generator as make_generator

CASES = ("most_likely", "least_likely")


def candidate_indices(n_pool: int, n: int, seed: int) -> torch.Tensor:
    """The first min(n, n_pool) entries of a seeded permutation of range(n_pool) (int64, CPU).

    Drawn on a CPU generator so the choice is the same on every device and for every model.
    """
    perm = torch.randperm(n_pool, generator=make_generator(seed, "cpu"))
    return perm[: min(n, n_pool)]


def select_correct(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    n: int,
    seed: int,
    *,
    device: torch.device,
    batch_size: int = 512,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded candidates, filtered to those the model classifies correctly.

    Args:
        images: uint8 [N, C, H, W] (any device); labels: int64 [N].
        n: number of candidates drawn (the study's 1,000 test inputs).
    Returns:
        candidates: int64 [n] (CPU) indices into `images`, in seeded order;
        kept: int64 [n_kept] (CPU) the candidates the model gets right, same order;
        logits: float [n_kept, K] on `device`, the clean logits of the kept inputs.
    """
    candidates = candidate_indices(images.shape[0], n, seed)
    # float32 even under --bf16: which inputs are attacked must not depend on the precision.
    logits = batched_logits(model, images[candidates], device=device, batch_size=batch_size,
                            fp32=True)
    correct = (logits.argmax(1) == labels[candidates].to(device)).cpu()
    return candidates, candidates[correct], logits[correct.to(device)]


def selection_fields(candidates: torch.Tensor, kept: torch.Tensor) -> dict[str, Any]:
    """The record fields describing a `select_correct` choice: candidates, indices (the kept
    test-set indices) and clean_accuracy (kept / candidates, in [0, 1])."""
    return {
        "candidates": candidates.tolist(),
        "indices": kept.tolist(),
        "clean_accuracy": len(kept) / max(1, len(candidates)),
    }


def case_iters(params: Any) -> dict[str, int]:
    """Max iterations per target case, from a Params with iters_most_likely / iters_least_likely."""
    return {"most_likely": params.iters_most_likely, "least_likely": params.iters_least_likely}


def by_case(results: dict[str, dict[str, Any]], keys: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """{case: {key: value}} -> {key: {case: value}} for each of `keys` (record field layout)."""
    return {key: {case: res[key] for case, res in results.items()} for key in keys}


def target_classes(logits: torch.Tensor, case: str) -> torch.Tensor:
    """Target labels [B] from clean logits [B, K]: c2 ("most_likely") or c_m ("least_likely").

    Classes are ranked by the model's own scores f_c(x): c1 is the current class, c2 the
    runner-up, c_m the least likely.
    """
    if case == "most_likely":
        return logits.topk(2, dim=1).indices[:, 1]
    if case == "least_likely":
        return logits.argmin(dim=1)
    raise ValueError(f"unknown target case {case!r}; expected one of {CASES}")
