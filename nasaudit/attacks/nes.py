"""NES black-box targeted attack (Ilyas et al., ICML 2018) with the study's PGD budgets.

The victim is reached only through `ProbabilityOracle`, which returns softmax probabilities
under torch.no_grad: the attack never sees logits or gradients of the victim. The gradient of
log p_target(x) is estimated from antithetic Gaussian samples (the study's Eq. 10):

    g = 1 / (n sigma) * sum_{i=1}^{n/2} [f(x + sigma u_i) - f(x - sigma u_i)] u_i,  u_i ~ N(0, I)

and followed with L-inf PGD steps (sign of g, projection onto the eps-ball and [0, 1]).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from tqdm.auto import tqdm

from nasaudit.adversarial import project_linf, uniform_start
from nasaudit.attacks import AttackSpec
from nasaudit.attacks.common import (
    AttackRecord,
    Victim,
    batch_slices,
    batched_logits,
    cat_batches,
    forward_chunk,
    record_fields,
    timed,
)
from nasaudit.attacks.pgd import INPUT_COUNTS
from nasaudit.attacks.sampling import (
    CASES,
    by_case,
    case_iters,
    select_correct,
    selection_fields,
    target_classes,
)
from nasaudit.data import to_float
from nasaudit.infra.device import full_precision
from nasaudit.infra.device import generator as make_generator
from nasaudit.infra.params import make_params, param
from nasaudit.models.inference import inference_model

if TYPE_CHECKING:
    from nasaudit.data import ImageDataset


class ProbabilityOracle:
    """Black-box access to a classifier: images [N, C, H, W] in [0, 1] -> probabilities [N, K].

    Runs under torch.no_grad (no autograd graph ever reaches the victim) and in chunks of
    `query_batch` images, always in float32 (also under autocast): NES's finite differences at
    sigma 1e-3 change log-probabilities by less than bf16 can resolve, and success is decided on
    these same float32 outputs.
    """

    def __init__(self, model: nn.Module, device: torch.device, query_batch: int = 4096):
        self.model = model
        self.device = device
        self.query_batch = forward_chunk(device, query_batch)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        logits = batched_logits(self.model, x, device=self.device, batch_size=self.query_batch, fp32=True)
        return torch.softmax(logits, dim=1)


@torch.no_grad()
def nes_gradient(
    oracle: ProbabilityOracle,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    n_query: int,
    sigma: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """NES estimate [B, C, H, W] of grad_x log p_target(x) from n_query oracle calls per input.

    Uses n_query // 2 antithetic pairs (x + sigma u, x - sigma u), so n_query must be even.
    Perturbed queries are not clipped to [0, 1]: sigma is tiny and clipping would bias the
    symmetric difference.
    """
    if n_query < 2 or n_query % 2:
        raise ValueError(f"n_query must be an even number >= 2, got {n_query}")
    # The whole estimate in float32, also under autocast: the sums of differences of
    # log-probabilities at sigma 1e-3 are below bf16's resolution (einsum would autocast).
    with full_precision(x.device):
        return _nes_estimate(oracle, x, target, n_query, sigma, generator)


def _nes_estimate(oracle: ProbabilityOracle, x: torch.Tensor, target: torch.Tensor, n_query: int,
                  sigma: float, generator: torch.Generator | None) -> torch.Tensor:
    b = x.shape[0]
    half = n_query // 2
    u = torch.randn((b, half, *x.shape[1:]), generator=generator, device=x.device, dtype=x.dtype)
    xq = torch.cat([x.unsqueeze(1) + sigma * u, x.unsqueeze(1) - sigma * u], dim=1)
    probs = oracle(xq.flatten(0, 1)).view(b, 2 * half, -1)
    idx = target.view(b, 1, 1).expand(b, 2 * half, 1)
    f = probs.gather(2, idx).squeeze(2).clamp_min(1e-30).log()  # [b, 2 * half]
    diff = f[:, :half] - f[:, half:]  # [b, half]
    return torch.einsum("bh,bh...->b...", diff, u) / (2 * half * sigma)


@torch.no_grad()
def nes_attack(
    oracle: ProbabilityOracle,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    eps: float,
    step: float,
    iters: int,
    restarts: int,
    n_query: int,
    sigma: float,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batched targeted NES-PGD with per-sample early stopping and restarts for unsolved inputs.

    Args:
        x: clean images float [B, C, H, W] in [0, 1]; target: int64 [B].
        eps, step: pixel units; iters: max steps per restart; n_query: oracle calls per gradient
            estimate.
    Returns:
        x_adv [B, C, H, W]; success bool [B]; iterations int64 [B] (steps in the successful
        restart, -1 if none); queries int64 [B] (oracle calls spent on each input, including
        the one-image success checks).
    Unlike white-box PGD, solved samples are dropped from the batch after every step: a step
    costs n_query forward passes per sample, so one host sync per step is cheap by comparison.
    """
    b = x.shape[0]
    x_adv = x.clone()
    success = torch.zeros(b, dtype=torch.bool, device=x.device)
    iterations = torch.full((b,), -1, dtype=torch.long, device=x.device)
    queries = torch.zeros(b, dtype=torch.long, device=x.device)
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    for r in range(restarts):
        active = (~success).nonzero().squeeze(1)
        if active.numel() == 0:
            break
        x0 = x[active]
        cur = uniform_start(x0, eps, generator) if (random_start or r > 0) and eps > 0 else x0.clone()
        for t in range(iters + 1):
            hit = oracle(cur).argmax(1) == target[active]
            queries[active] += 1
            solved = active[hit]
            x_adv[solved] = cur[hit]
            success[solved] = True
            iterations[solved] = t
            if t == iters:
                x_adv[active[~hit]] = cur[~hit]
                break
            keep = ~hit
            active, cur, x0 = active[keep], cur[keep], x0[keep]
            if active.numel() == 0:
                break
            grad = nes_gradient(
                oracle, cur, target[active], n_query=n_query, sigma=sigma, generator=generator
            )
            queries[active] += 2 * (n_query // 2)
            cur = project_linf(cur + step * grad.sign(), x0, eps)
    return x_adv, success, iterations, queries


@dataclass
class Params:
    """NES black box with the PGD budgets of the study (Table 5).

    n_inputs: seeded test candidates drawn before keeping the correctly classified ones;
    n_query: oracle calls per gradient estimate (antithetic pairs: n_query / 2, so even);
    sigma: sampling scale in pixel units (the artifact's 1e-3); batch_size: inputs attacked at
    once (each costs n_query images per step); query_batch: images per victim forward pass.
    """

    n_inputs: int = param(
        1000, min=1, doc="seeded test candidates, counted before keeping the correctly "
        "classified ones (only those are attacked)",
    )
    eps: float = param(8 / 255, gt=0, max=1, doc="L-inf radius, pixel units")
    step: float = param(2 / 255, gt=0, max=1, doc="step size, pixel units")
    restarts: int = param(5, min=1, doc="random restarts per input")
    iters_most_likely: int = param(3, min=1, doc="max iterations, target = runner-up class c2")
    iters_least_likely: int = param(7, min=1, doc="max iterations, target = least likely c_m")
    cases: tuple[str, ...] = param(CASES, choices=CASES, unique=True, doc="target cases to run")
    n_query: int = param(400, min=2, even=True, doc="oracle queries per gradient estimate (antithetic pairs)")
    sigma: float = param(1e-3, gt=0, max=1, doc="NES sampling scale, pixel units")
    random_start: bool = param(True, doc="uniform random start in the eps ball")
    batch_size: int = param(16, min=1, doc="inputs attacked at once")
    query_batch: int = param(4096, min=1, doc="images per victim forward pass")


@dataclass
class NESRecord(AttackRecord):
    """NES results; per-case vectors are aligned with `indices` (test-set indices).

    queries: case -> oracle calls per input; mean_queries: case -> mean over inputs;
    mean_queries_success: case -> mean over successful inputs (0 when none).
    """

    kind = "attack.nes"
    candidates: list[int]
    indices: list[int]
    clean_accuracy: float
    asr: dict[str, float]
    success: dict[str, list[bool]]
    targets: dict[str, list[int]]
    iterations: dict[str, list[int]]
    queries: dict[str, list[int]]
    mean_queries: dict[str, float]
    mean_queries_success: dict[str, float]


def run_nes(
    victim: Victim,
    data: ImageDataset,
    params: Params | dict | None = None,
    *,
    device: torch.device,
    seed: int = 0,
    progress: bool = True,
    work_dir: str | None = None,
) -> NESRecord:
    """Targeted NES on seeded, correctly classified test inputs; returns an NESRecord."""
    params = make_params(Params, params, source="params")
    with timed() as elapsed:
        model = inference_model(victim.model)
        oracle = ProbabilityOracle(model, device, params.query_batch)
        candidates, kept, logits = select_correct(
            model, data.test_images, data.test_labels, params.n_inputs, seed, device=device
        )
        x_all = data.test_images[kept]
        gen = make_generator(seed, device)
        iters = case_iters(params)
        chunks = batch_slices(len(kept), params.batch_size)
        bar = tqdm(total=len(chunks) * len(params.cases), desc="nes", disable=not progress)
        res: dict[str, dict] = {}
        for case in params.cases:
            targets = target_classes(logits, case)
            parts = []
            for sl in chunks:
                _, ok, it, q = nes_attack(
                    oracle, to_float(x_all[sl].to(device)), targets[sl], eps=params.eps,
                    step=params.step, iters=iters[case], restarts=params.restarts,
                    n_query=params.n_query, sigma=params.sigma,
                    random_start=params.random_start, generator=gen,
                )
                parts.append((ok, it, q))
                bar.update()
            ok, it, q = cat_batches(parts, (torch.bool, torch.long, torch.long))
            res[case] = {
                "asr": float(ok.float().mean()) if ok.numel() else 0.0,
                "success": ok.tolist(), "targets": targets.cpu().tolist(),
                "iterations": it.tolist(), "queries": q.tolist(),
                "mean_queries": float(q.float().mean()) if q.numel() else 0.0,
                "mean_queries_success": float(q[ok].float().mean()) if ok.any() else 0.0,
            }
        bar.close()
    return NESRecord(
        **record_fields("nes", victim, data, seed, params, elapsed()),
        **selection_fields(candidates, kept),
        **by_case(res, ("asr", "success", "targets", "iterations", "queries", "mean_queries",
                        "mean_queries_success")),
    )


ATTACK = AttackSpec(
    Params, run_nes, rates={"asr": "indices", "clean_accuracy": "candidates"},
    counts=INPUT_COUNTS, victim_accuracy="clean_accuracy",
    demo={"n_inputs": 6, "n_query": 60, "restarts": 1},
)
