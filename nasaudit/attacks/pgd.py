"""L-inf projected gradient descent (Madry et al. 2018) in pixel space [0, 1].

The PGD step itself (`pgd_untargeted`, projection, random start) lives in
`nasaudit.adversarial`, below the trainer that uses it for adversarial training; this module
adds the study's targeted PGD with restarts; `nasaudit.attacks.pgd_sweep` reuses its batching.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from nasaudit.adversarial import pgd_untargeted as pgd_untargeted  # re-exported: public API
from nasaudit.adversarial import project_linf, uniform_start
from nasaudit.attacks import AttackSpec
from nasaudit.attacks.common import (
    CPU_GRADIENT_CHUNK,
    AttackRecord,
    Victim,
    batch_slices,
    cat_batches,
    record_fields,
    timed,
)
from nasaudit.attacks.sampling import (
    CASES,
    by_case,
    case_iters,
    select_correct,
    selection_fields,
    target_classes,
)
from nasaudit.data import to_float
from nasaudit.infra.device import autocast, autocast_enabled, full_precision, stream_seed
from nasaudit.infra.device import generator as make_generator
from nasaudit.infra.params import make_params, param
from nasaudit.models.inference import inference_model

if TYPE_CHECKING:
    from nasaudit.data import ImageDataset


def _pgd_run(
    model: nn.Module,
    x: torch.Tensor,
    label: torch.Tensor,
    *,
    targeted: bool,
    eps: float,
    step: float,
    iters: int,
    random_start: bool,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One PGD run with per-sample early stopping.

    A sample succeeds as soon as the model predicts `label` (targeted) or anything but `label`
    (untargeted); from then on it is frozen at that point. On an accelerator frozen samples stay
    in the batch (masked with torch.where) so the loop never synchronises with the host; on the
    CPU, where a sync is free and every sample costs a full pass, they leave the batch.
    Under bf16 autocast success is still decided on float32 logits: the samples the bf16
    forward calls successful are confirmed by a float32 forward of those samples only, and the
    final check is a float32 forward of all the rest (a sample bf16 misses is only stopped later).
    Returns (x_adv [B, C, H, W], success bool [B], iteration of first success int64 [B], -1 if none).
    """
    x = x.detach()
    x_adv = uniform_start(x, eps, generator) if random_start and eps > 0 else x.clone()
    done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    first = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
    sign = -1.0 if targeted else 1.0  # descend the target's loss, ascend the true label's
    reduced = autocast_enabled(x.device)  # gradients may be bf16; success checks are not
    compact = x.device.type == "cpu"
    chunk = CPU_GRADIENT_CHUNK if compact else None
    rows = torch.arange(x.shape[0], device=x.device)
    for t in range(iters + 1):
        last = t == iters
        if compact:
            rows = (~done).nonzero().squeeze(1)
            if rows.numel() == 0:
                break
        xa, lab = x_adv[rows], label[rows]
        if not (last and reduced):  # the last pass only checks success: float32 below
            logits, grad = _logits_and_grad(model, xa, lab, grad=not last, chunk=chunk)
        if not reduced:
            hit = _hits(logits.argmax(1), lab, targeted)
        elif last or not compact:
            # Float32 for every sample: the final check, and on an accelerator (no host sync).
            hit = _hits(_fp32_predict(model, xa), lab, targeted)
        else:
            # On the CPU a float32 pass costs more per sample than the bf16 step itself (AVX-512 BF16),
            # so only the samples bf16 calls successful are confirmed in float32.
            hit = _confirmed_hits(model, xa, logits, lab, targeted)
        newly = hit & ~done[rows]
        first[rows] = torch.where(newly, torch.full_like(lab, t), first[rows])
        done[rows] = done[rows] | hit
        if last:
            break
        stepped = project_linf(xa + sign * step * grad.sign(), x[rows], eps)
        x_adv[rows] = torch.where(done[rows].view(-1, 1, 1, 1), xa, stepped)
    return x_adv.detach(), done, first


def _logits_and_grad(model: nn.Module, xa: torch.Tensor, lab: torch.Tensor, *, grad: bool,
                     chunk: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits [B, K] (detached) of xa [B, C, H, W] and, when `grad`, the gradient of the summed
    cross-entropy against lab [B] with respect to xa, in chunks of `chunk` rows (None: one
    pass). Samples are independent (a summed loss), so chunking changes only the speed."""
    logits_parts, grad_parts = [], []
    for sl in batch_slices(xa.shape[0], chunk or max(xa.shape[0], 1)):
        xs = xa[sl].detach().requires_grad_(grad)
        with torch.set_grad_enabled(grad):
            logits = model(xs)
        if grad:
            loss = F.cross_entropy(logits.float(), lab[sl], reduction="sum")
            grad_parts.append(torch.autograd.grad(loss, xs)[0])
        logits_parts.append(logits.detach())
    return torch.cat(logits_parts), torch.cat(grad_parts) if grad else None


def _fp32_predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Float32 argmax int64 [B] of images x [B, C, H, W], also inside an autocast region."""
    with torch.no_grad(), full_precision(x.device):
        return model(x.detach()).argmax(1)


def _hits(pred: torch.Tensor, lab: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Success bool [B]: pred == lab when targeted, pred != lab otherwise."""
    return pred == lab if targeted else pred != lab


def _confirmed_hits(model: nn.Module, xa: torch.Tensor, logits: torch.Tensor, lab: torch.Tensor,
                    targeted: bool) -> torch.Tensor:
    """Success bool [B]: the samples the bf16 logits [B, K] call successful, each confirmed by a
    float32 forward of those samples only."""
    hit = _hits(logits.detach().argmax(1), lab, targeted)
    claimed = hit.nonzero().squeeze(1)
    if claimed.numel():
        hit[claimed] = _hits(_fp32_predict(model, xa[claimed]), lab[claimed], targeted)
    return hit


def pgd_attack(
    model: nn.Module,
    x: torch.Tensor,
    label: torch.Tensor,
    *,
    targeted: bool,
    eps: float,
    step: float,
    iters: int,
    restarts: int = 1,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batched L-inf PGD with random restarts run only for the samples not yet broken.

    Args:
        x: clean images float [B, C, H, W] in [0, 1]; label: int64 [B], the target class when
            `targeted`, else the true class.
        eps, step: pixel units; iters: max gradient steps per restart; restarts >= 1.
    Returns:
        x_adv [B, C, H, W] (the first successful point, or the last restart's end point),
        success bool [B], iterations int64 [B] (steps taken in the successful restart, -1 if
        none), restart int64 [B] (0-based restart that succeeded, -1 if none).
    A restart only adds successes, so ASR never decreases with more restarts (for a fixed
    generator the first restart is identical whatever `restarts` is).
    """
    x_adv = x.detach().clone()
    success = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    iterations = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
    restart_of = torch.full_like(iterations, -1)
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    for r in range(restarts):
        # One host sync per restart (not per step) to drop the samples already broken.
        todo = (~success).nonzero().squeeze(1)
        if todo.numel() == 0:
            break
        adv, hit, first = _pgd_run(
            model, x[todo], label[todo], targeted=targeted, eps=eps, step=step, iters=iters,
            random_start=random_start or r > 0, generator=generator,
        )
        x_adv[todo] = adv
        success[todo] = hit
        iterations[todo] = first
        restart_of[todo] = torch.where(hit, torch.full_like(first, r), first.new_full((), -1))
    return x_adv, success, iterations, restart_of


# --------------------------------------------------------------------------- attack entry points


@dataclass
class Params:
    """Targeted PGD (the study's Table 5).

    n_inputs: seeded test candidates drawn *before* keeping the correctly classified ones (only
    those are attacked, so the record's `indices` may be fewer); eps, step: pixel units in
    (0, 1]; iters_most_likely / iters_least_likely: max iterations for target c2 / c_m;
    restarts: random restarts (>= 1); cases: which target cases to run; batch_size: inputs per
    batch on the device.
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
    random_start: bool = param(True, doc="uniform random start in the eps ball")
    batch_size: int = param(256, min=1, doc="inputs per batch on the device")


@dataclass
class PGDRecord(AttackRecord):
    """Targeted PGD results. Per-case vectors are aligned with `indices` (test-set indices).

    asr: case -> successes / trials; success: case -> per-input bool; targets: case -> target
    class per input; iterations: case -> steps to success (-1 = failed); restart: case -> the
    0-based restart that succeeded (-1 = failed); clean_accuracy: on the candidates.
    """

    kind = "attack.pgd"
    candidates: list[int]
    indices: list[int]
    clean_accuracy: float
    asr: dict[str, float]
    success: dict[str, list[bool]]
    targets: dict[str, list[int]]
    iterations: dict[str, list[int]]
    restart: dict[str, list[int]]


def pgd_batches(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    device: torch.device,
    batch_size: int,
    bar: tqdm,
    seed: int,
    stream: str,
    **attack_kwargs,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`pgd_attack` over uint8 images [n, C, H, W] in batches, against labels [n] (on `device`).

    Each batch draws its random starts from its own generator, seeded by (seed, stream, batch
    index): how many restarts one batch or one case used never shifts another's draws, so with
    more restarts every input keeps its first restart and can only gain successes.
    attack_kwargs go to pgd_attack (targeted, eps, step, iters, restarts, random_start).
    Returns (success bool [n], iterations int64 [n], restart int64 [n]) on the CPU.
    """
    parts = []
    for i, sl in enumerate(batch_slices(images.shape[0], batch_size)):
        x = to_float(images[sl].to(device))
        gen = make_generator(stream_seed(seed, stream, i), device)
        with autocast(device):
            _, ok, it, rs = pgd_attack(model, x, labels[sl], generator=gen, **attack_kwargs)
        parts.append((ok, it, rs))
        bar.update()
    return cat_batches(parts, (torch.bool, torch.long, torch.long))


def run_pgd(
    victim: Victim,
    data: ImageDataset,
    params: Params | dict | None = None,
    *,
    device: torch.device,
    seed: int = 0,
    progress: bool = True,
    work_dir: str | None = None,
) -> PGDRecord:
    """Targeted PGD on seeded, correctly classified test inputs; returns a PGDRecord."""
    params = make_params(Params, params, source="params")
    with timed() as elapsed:
        model = inference_model(victim.model)
        candidates, kept, logits = select_correct(
            model, data.test_images, data.test_labels, params.n_inputs, seed, device=device,
            batch_size=params.batch_size,
        )
        x_all = data.test_images[kept]
        iters = case_iters(params)
        out: dict[str, dict[str, list | float]] = {}
        n_batches = len(batch_slices(len(kept), params.batch_size))
        bar = tqdm(total=n_batches * len(params.cases), desc="pgd", disable=not progress)
        for case in params.cases:
            targets = target_classes(logits, case)
            ok, it, rs = pgd_batches(
                model, x_all, targets, device=device, batch_size=params.batch_size, bar=bar,
                targeted=True, eps=params.eps, step=params.step, iters=iters[case],
                restarts=params.restarts, random_start=params.random_start, seed=seed, stream=case,
            )
            out[case] = {
                "success": ok.tolist(),
                "targets": targets.cpu().tolist(),
                "iterations": it.tolist(),
                "restart": rs.tolist(),
                "asr": float(ok.float().mean()) if ok.numel() else 0.0,
            }
        bar.close()
    return PGDRecord(
        **record_fields("pgd", victim, data, seed, params, elapsed()),
        **selection_fields(candidates, kept),
        **by_case(out, ("asr", "success", "targets", "iterations", "restart")),
    )


INPUT_COUNTS = {"indices": ("attacked inputs", "--param n_inputs"),
                "candidates": ("candidates", "--param n_inputs")}
ATTACK = AttackSpec(Params, run_pgd, rates={"asr": "indices", "clean_accuracy": "candidates"},
                    counts=INPUT_COUNTS, victim_accuracy="clean_accuracy",
                    demo={"n_inputs": 40, "restarts": 2})
