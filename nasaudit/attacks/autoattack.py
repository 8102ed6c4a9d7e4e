"""AutoAttack robust accuracy (Croce & Hein, ICML 2020), L-inf, as RobustBench reports it.

The ensemble runs these attacks in order, each only on the inputs every earlier one left robust:

    apgd-ce  APGD on the cross-entropy, untargeted, `apgd_restarts` random starts;
    apgd-t   APGD on the targeted DLR loss, one run per target class: the classes the clean
             logits rank 2nd, 3rd, ... (`n_targets` of them);
    fab-t    targeted FAB (the minimal-norm boundary attack), the same targets, no random start;
    square   Square Attack, the black-box random search on the margin, `square_queries` queries.

Version "standard" runs all four (RobustBench's setting: 100 iterations, 9 targets, 5000
queries); "apgd" runs the two APGD attacks only (cheaper, white-box only). An input counts as
robust when it is classified correctly and no attack finds a misclassified point in its eps-ball.
Every claimed break is confirmed the same way: the attack's point, projected into the ball and
the image box, is classified wrong by a float32 forward pass. At eps = 0 that point is the input
itself, so robust accuracy equals clean accuracy exactly.

Written from the papers and the authors' reference code (fra31/auto-attack); the algorithms and
their constants follow it. Differences, none of which changes what is measured:
  * an input leaves an attack's batch once it is broken (on the CPU; on an accelerator it stays
    in the batch, masked) and FAB stops once it has a point within eps: only robust / not robust
    is reported, never the smallest perturbation;
  * Square draws a window and its signs per input (as Andriushchenko et al.'s own code does),
    not one shared by the batch, and may place it at the last row and column;
  * random draws come from explicit generators, one per (seed, attack, batch).

Sanity checks recorded with the result: the study's untargeted PGD on the same inputs and eps
(`nasaudit.attacks.pgd.pgd_attack`, the eps sweep's settings); `pgd_only` counts inputs PGD
broke that the ensemble did not. `square_only` counts inputs only the black-box Square broke
after every white-box attack failed. Either one sets `gradient_masking`: white-box gradients
that mislead attacks are the usual reason a weaker or gradient-free attack beats APGD.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from nasaudit.adversarial import project_linf
from nasaudit.attacks import AttackSpec
from nasaudit.attacks.common import (
    CPU_GRADIENT_CHUNK,
    AttackRecord,
    Victim,
    batch_slices,
    batched_logits,
    record_fields,
    timed,
)
from nasaudit.attacks.pgd import pgd_attack
from nasaudit.attacks.sampling import candidate_indices
from nasaudit.data import to_float
from nasaudit.infra.device import full_precision, stream_seed
from nasaudit.infra.device import generator as make_generator
from nasaudit.infra.errors import InputError
from nasaudit.infra.params import make_params, param
from nasaudit.models.inference import inference_model

if TYPE_CHECKING:
    from nasaudit.data import ImageDataset

VERSIONS: dict[str, tuple[str, ...]] = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "apgd": ("apgd-ce", "apgd-t"),
}
WHITE_BOX = ("apgd-ce", "apgd-t", "fab-t")

# APGD's constants (Croce & Hein 2020, Sec. 3): the first checkpoint after 22% of the
# iterations, checkpoint spacing shrinking by 3% down to 6%, momentum 0.75, the step halved
# when fewer than rho = 75% of the steps since the last checkpoint raised the loss.
APGD_FIRST_CHECK, APGD_MIN_CHECK, APGD_CHECK_DECAY = 0.22, 0.06, 0.03
APGD_MOMENTUM, APGD_RHO = 0.75, 0.75
# FAB's constants (Croce & Hein 2019): largest weight of the step from the clean input,
# overshoot of the projection, backward step towards the clean input after a success.
FAB_ALPHA_MAX, FAB_ETA, FAB_BETA = 0.1, 1.05, 0.9
# Square's schedule of the window area (fraction p of the image, halved at these queries).
SQUARE_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


@dataclass
class Params:
    """AutoAttack (L-inf). Defaults are RobustBench's standard evaluation.

    n_inputs: seeded test inputs (all count: a misclassified input is not robust); eps: L-inf
    radius in pixel units; version: "standard" (APGD-CE, APGD-T, FAB-T, Square) or "apgd"
    (APGD-CE, APGD-T); the per-attack budgets; pgd_*: the untargeted PGD sanity check (the
    study's eps-sweep settings); batch_size: inputs per batch on the device.
    """

    n_inputs: int = param(1000, min=1, doc="seeded test inputs (misclassified ones count as not robust)")
    eps: float = param(8 / 255, min=0, max=1, doc="L-inf radius, pixel units (0: clean accuracy)")
    version: str = param("standard", choices=tuple(VERSIONS),
                         doc="standard: apgd-ce, apgd-t, fab-t, square; apgd: apgd-ce, apgd-t")
    apgd_iters: int = param(100, min=1, doc="APGD iterations per run (APGD-CE, each APGD-T target)")
    apgd_restarts: int = param(1, min=1, doc="APGD-CE random starts")
    n_targets: int = param(9, min=1, doc="target classes of APGD-T and FAB-T (at most classes - 1)")
    fab_iters: int = param(100, min=1, doc="FAB-T iterations per target")
    square_queries: int = param(5000, min=1, doc="Square Attack queries per input")
    square_p_init: float = param(0.8, gt=0, max=1, doc="Square's first window area, fraction of the image")
    pgd_iters: int = param(7, min=1, doc="sanity check, untargeted PGD: iterations")
    pgd_restarts: int = param(1, min=1, doc="sanity check, untargeted PGD: random restarts")
    pgd_step_fraction: float = param(1 / 3, gt=0, max=1,
                                     doc="sanity check, untargeted PGD: step = eps * this")
    batch_size: int = param(256, min=1, doc="inputs per batch on the device")


@dataclass
class AutoAttackRecord(AttackRecord):
    """AutoAttack results. Per-input lists are aligned with `indices` (test-set indices).

    attacks: the attacks run, in order; correct: clean prediction right; robust: correct and
    no attack broke it; broken_by: "clean" (misclassified), the attack that broke the input
    first, or "" (robust); broken: attack -> inputs it broke first (in order);
    attack_seconds: attack (and "pgd", the sanity check) -> wall-clock seconds;
    clean_accuracy / robust_accuracy: fractions of len(indices); pgd_robust_accuracy: the same
    under untargeted PGD alone; pgd_only: inputs PGD broke that the ensemble left robust;
    square_only: inputs only Square broke (0 when Square did not run); gradient_masking:
    pgd_only or square_only is above 0.
    """

    kind = "attack.autoattack"
    version: str
    eps: float
    attacks: list[str]
    indices: list[int]
    correct: list[bool]
    robust: list[bool]
    broken_by: list[str]
    broken: dict[str, int]
    attack_seconds: dict[str, float]
    clean_accuracy: float
    robust_accuracy: float
    pgd_robust_accuracy: float
    pgd_only: int
    square_only: int
    gradient_masking: bool


# --------------------------------------------------------------------------------- losses


def _margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z_y - max_{k != y} z_k [B] of logits [B, K]: negative once the input is misclassified."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return true - others


def _dlr_targeted(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The targeted difference-of-logits-ratio loss [B] (maximised): -(z_y - z_t) over
    z_pi1 - (z_pi3 + z_pi4) / 2, with z sorted in decreasing order. The ratio makes the loss
    invariant to shifting and rescaling the logits, which defeats logit-scaling defences."""
    z = logits.sort(1, descending=True).values
    scale = z[:, 0] - 0.5 * (z[:, 2] + z[:, 3]) + 1e-12
    gap = logits.gather(1, y[:, None]).squeeze(1) - logits.gather(1, target[:, None]).squeeze(1)
    return -gap / scale


def _loss_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """APGD's per-input loss [B], its gradient [B, C, H, W] and the predicted class [B] at x.

    Cross-entropy when target is None, else the targeted DLR loss. Computed in chunks
    (CPU_GRADIENT_CHUNK on the CPU): inputs are independent, so chunking changes only speed.
    """
    chunk = CPU_GRADIENT_CHUNK if x.device.type == "cpu" else max(x.shape[0], 1)
    losses, grads, preds = [], [], []
    for sl in batch_slices(x.shape[0], chunk):
        xs = x[sl].detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(xs).float()
            if target is None:
                loss = F.cross_entropy(logits, y[sl], reduction="none")
            else:
                loss = _dlr_targeted(logits, y[sl], target[sl])
            (grad,) = torch.autograd.grad(loss.sum(), xs)
        losses.append(loss.detach())
        grads.append(grad)
        preds.append(logits.detach().argmax(1))
    return torch.cat(losses), torch.cat(grads), torch.cat(preds)


# ----------------------------------------------------------------------------------- APGD


def apgd_run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, iters: int,
             target: torch.Tensor | None = None, generator: torch.Generator | None = None,
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """One APGD run (L-inf) from a random start on the eps-ball's surface.

    Args:
        x: clean images float [B, C, H, W] in [0, 1]; y: true labels int64 [B]; target: int64
            [B] for the targeted DLR loss (APGD-T), None for the cross-entropy (APGD-CE).
        eps: pixel units; iters: gradient steps; generator: the random start's, on x's device.
    Returns:
        x_adv [B, C, H, W] (the first misclassified iterate, else the start) and broken bool [B]
        (some iterate, the start included, was misclassified).
    The step size starts at 2 eps and is halved per input at checkpoints where the loss rose in
    fewer than rho of the steps since the last one, or where the best loss did not improve
    since a checkpoint that did not halve it; a halving restarts from the best point so far.
    """
    b = x.shape[0]
    compact = x.device.type == "cpu"  # broken inputs leave the forward pass (a sync is free)
    first = max(int(APGD_FIRST_CHECK * iters), 1)
    floor = max(int(APGD_MIN_CHECK * iters), 1)
    decay = max(int(APGD_CHECK_DECAY * iters), 1)
    noise = 2 * torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) - 1
    # Scaled so the largest coordinate reaches eps: the start lies on the ball's surface.
    noise = noise / (noise.flatten(1).abs().amax(1).view(-1, 1, 1, 1) + 1e-12)
    x_adv = (x + eps * noise).clamp(0.0, 1.0)
    loss, grad, pred = _loss_grad(model, x_adv, y, target)
    broken = pred != y
    found = x_adv.clone()
    x_best, grad_best, loss_best = x_adv.clone(), grad.clone(), loss.clone()
    step = torch.full((b, 1, 1, 1), 2.0 * eps, device=x.device, dtype=x.dtype)
    x_old = x_adv
    history = torch.zeros(iters, b, device=x.device)
    best_at_check = loss_best.clone()
    halved_at_check = torch.ones(b, dtype=torch.bool, device=x.device)
    period, since_check = first, 0
    for i in range(iters):
        with torch.no_grad():
            momentum = APGD_MOMENTUM if i > 0 else 1.0
            z = project_linf(x_adv + step * grad.sign(), x, eps)
            moved = project_linf(x_adv + momentum * (z - x_adv) + (1 - momentum) * (x_adv - x_old), x, eps)
            x_old, x_adv = x_adv, moved
        if compact:
            rows = (~broken).nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            loss_r, grad_r, pred_r = _loss_grad(model, x_adv[rows], y[rows],
                                                None if target is None else target[rows])
            loss[rows], grad[rows] = loss_r, grad_r  # the broken rows keep stale values: unused
            hit = torch.zeros_like(broken)
            hit[rows] = pred_r != y[rows]
        else:
            loss, grad, pred = _loss_grad(model, x_adv, y, target)
            hit = pred != y
        newly = hit & ~broken
        found = torch.where(newly.view(-1, 1, 1, 1), x_adv, found)
        broken = broken | hit
        history[i] = loss
        improved = loss > loss_best
        x_best = torch.where(improved.view(-1, 1, 1, 1), x_adv, x_best)
        grad_best = torch.where(improved.view(-1, 1, 1, 1), grad, grad_best)
        loss_best = torch.where(improved, loss, loss_best)
        since_check += 1
        if since_check == period:
            # Steps since the last checkpoint that raised the loss. Index i - c - 1 may be -1:
            # the reference reads the (still zero) last slot there, and so do we.
            rises = sum((history[i - c] > history[i - c - 1]).float() for c in range(period))
            oscillating = rises <= period * APGD_RHO
            stalled = ~halved_at_check & (best_at_check >= loss_best)
            halve = oscillating | stalled
            halved_at_check, best_at_check = halve, loss_best.clone()
            step = torch.where(halve.view(-1, 1, 1, 1), step / 2, step)
            x_adv = torch.where(halve.view(-1, 1, 1, 1), x_best, x_adv)
            grad = torch.where(halve.view(-1, 1, 1, 1), grad_best, grad)
            period, since_check = max(period - decay, floor), 0
    return found, broken


# ------------------------------------------------------------------------------------ FAB


def linf_projection(p: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The smallest-L-inf move d [N, D] taking each point p [N, D] (in [0, 1]) onto its
    hyperplane w . z = b (w [N, D], b [N]) while p + d stays in the box [0, 1].

    With room r_i to move coordinate i in the direction that changes w . z towards b, a
    radius t changes it by g(t) = sum_i |w_i| min(t, r_i): increasing, piecewise linear with
    breakpoints at the sorted r_i, so the smallest t with g(t) = |b - w . p| is found by one
    sort and cumulative sums. When the box leaves the hyperplane out of reach, every coordinate
    moves as far as it can (the box corner nearest the hyperplane).
    """
    gap = b - (w * p).sum(1)
    direction = torch.sign(w) * torch.where(gap >= 0, 1.0, -1.0).unsqueeze(1)
    room = torch.where(direction > 0, 1 - p, torch.where(direction < 0, p, torch.zeros_like(p)))
    r_sorted, order = room.sort(1)
    weight = w.abs().gather(1, order)
    done_below = (weight * r_sorted).cumsum(1)  # sum_{j <= k} |w_j| r_j
    above = weight.flip(1).cumsum(1).flip(1)  # sum_{j >= k} |w_j|
    g_at_break = done_below - weight * r_sorted + r_sorted * above  # g(r_(k))
    need = gap.abs()
    k = (g_at_break < need.unsqueeze(1)).sum(1)  # the breakpoints g has not reached need by
    kc = k.clamp(max=p.shape[1] - 1).unsqueeze(1)
    before = torch.where(kc > 0, done_below.gather(1, (kc - 1).clamp(min=0)),
                         torch.zeros_like(kc, dtype=p.dtype))
    t = (need.unsqueeze(1) - before) / above.gather(1, kc).clamp_min(1e-30)
    t = torch.where(k.unsqueeze(1) >= p.shape[1], r_sorted[:, -1:], t)
    return direction * torch.minimum(t, room)


def _logit_gap_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """z_t - z_y [B] at x [B, C, H, W] and its input gradient [B, C, H, W] (chunked on the CPU)."""
    chunk = CPU_GRADIENT_CHUNK if x.device.type == "cpu" else max(x.shape[0], 1)
    gaps, grads = [], []
    for sl in batch_slices(x.shape[0], chunk):
        xs = x[sl].detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(xs).float()
            gap = (logits.gather(1, target[sl, None]) - logits.gather(1, y[sl, None])).squeeze(1)
            (grad,) = torch.autograd.grad(gap.sum(), xs)
        gaps.append(gap.detach())
        grads.append(grad)
    return torch.cat(gaps), torch.cat(grads)


def fab_targeted_run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor, *,
                     eps: float, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One targeted FAB run (L-inf), from the clean input (no random start).

    Each step linearises the boundary between y and `target` at the current point, projects
    both the current point and the clean input onto it (linf_projection), and moves to a convex
    combination of the two projections (the clean one weighted at most FAB_ALPHA_MAX), with an
    overshoot FAB_ETA; after a misclassified point it steps back towards the clean input by
    FAB_BETA, looking for a closer one.
    Args: x float [B, C, H, W] in [0, 1]; y, target int64 [B]; eps pixel units (an input stops
        once it has a misclassified point within eps); iters steps.
    Returns: the closest misclassified point found [B, C, H, W] (the clean input if none) and
        its L-inf distance [B] (inf if none).
    """
    compact = x.device.type == "cpu"
    b = x.shape[0]
    x0 = x.flatten(1)
    x1 = x0.clone()
    adv = x0.clone()
    best = torch.full((b,), float("inf"), device=x.device)
    rows = torch.arange(b, device=x.device)
    for _ in range(iters):
        if compact:
            rows = (best > eps).nonzero().squeeze(1)
            if rows.numel() == 0:
                break
        xr, x0r = x1[rows], x0[rows]
        gap, grad = _logit_gap_grad(model, xr.view(-1, *x.shape[1:]), y[rows], target[rows])
        w = grad.flatten(1)
        plane = (w * xr).sum(1) - gap  # the linearised boundary: w . z = plane
        n = rows.numel()
        d = linf_projection(torch.cat((xr, x0r)), torch.cat((w, w)), torch.cat((plane, plane)))
        d1, d2 = d[:n], d[n:]
        a1 = d1.abs().amax(1, keepdim=True).clamp_min(1e-8)
        a2 = d2.abs().amax(1, keepdim=True).clamp_min(1e-8)
        alpha = (a1 / (a1 + a2)).clamp(0.0, FAB_ALPHA_MAX)
        z = ((xr + FAB_ETA * d1) * (1 - alpha) + (x0r + FAB_ETA * d2) * alpha).clamp(0.0, 1.0)
        with torch.no_grad():
            hit = model(z.view(-1, *x.shape[1:])).argmax(1) != y[rows]
        dist = (z - x0r).abs().amax(1)
        closer = hit & (dist < best[rows])
        adv[rows] = torch.where(closer.unsqueeze(1), z, adv[rows])
        best[rows] = torch.where(closer, dist, best[rows])
        x1[rows] = torch.where(hit.unsqueeze(1), x0r + (z - x0r) * FAB_BETA, z)
    return adv.view_as(x), best


# --------------------------------------------------------------------------------- Square


def square_fraction(i: int, p_init: float) -> float:
    """Square's window area at query i, a fraction of the image: p_init halved at each of
    SQUARE_HALVINGS passed (the reference schedule, not rescaled to the query budget, as
    RobustBench's standard evaluation runs it)."""
    return p_init / 2 ** sum(i > q for q in SQUARE_HALVINGS)


def _signs(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Uniform random signs (+-1.0) of `shape`."""
    return torch.randint(0, 2, shape, generator=generator, device=device).float() * 2 - 1


@torch.no_grad()
def square_run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, queries: int,
               p_init: float = 0.8, generator: torch.Generator | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Square Attack (L-inf, untargeted, margin loss): black-box random search, logits only.

    Starts from vertical stripes of +-eps per column and channel, then per query moves one
    random square window per input to a random corner of the ball (one sign per channel) and
    keeps the change when the margin z_y - max_{k != y} z_k falls. Stops an input once its
    margin is <= 0.
    Args: x float [B, C, H, W] in [0, 1]; y int64 [B]; eps pixel units; queries after the
        initial point; p_init the first window area (fraction of the image).
    Returns: the best point [B, C, H, W] and broken bool [B] (margin <= 0).
    """
    compact = x.device.type == "cpu"
    b, c, h, w = x.shape
    x_best = (x + eps * _signs((b, c, 1, w), generator, x.device)).clamp(0.0, 1.0)
    margin = _margin(model(x_best).float(), y)
    rows = torch.arange(b, device=x.device)
    lines_h = torch.arange(h, device=x.device)
    lines_w = torch.arange(w, device=x.device)
    for i in range(queries):
        if compact:
            rows = (margin > 0).nonzero().squeeze(1)
            if rows.numel() == 0:
                break
        n = rows.numel()
        side = min(max(int(round(math.sqrt(square_fraction(i, p_init) * h * w))), 1), h, w)
        top = torch.randint(0, h - side + 1, (n, 1), generator=generator, device=x.device)
        left = torch.randint(0, w - side + 1, (n, 1), generator=generator, device=x.device)
        window = (((lines_h >= top) & (lines_h < top + side))[:, None, :, None]
                  & ((lines_w >= left) & (lines_w < left + side))[:, None, None, :])
        signs = _signs((n, c, 1, 1), generator, x.device)
        # +-2 eps then projection: the window lands on a corner of the ball, whatever it held.
        candidate = project_linf(x_best[rows] + window * (2 * eps) * signs, x[rows], eps)
        m = _margin(model(candidate).float(), y[rows])
        better = (m < margin[rows]) & (margin[rows] > 0)
        x_best[rows] = torch.where(better.view(-1, 1, 1, 1), candidate, x_best[rows])
        margin[rows] = torch.where(better, m, margin[rows])
    return x_best, margin <= 0


# ------------------------------------------------------------------------------- ensemble


@torch.no_grad()
def _verify(model: nn.Module, x_adv: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
            eps: float) -> torch.Tensor:
    """Broken bool [B]: x_adv projected into the eps-ball of x and [0, 1] is misclassified
    (float32). The one test every attack's claim passes through."""
    return model(project_linf(x_adv, x, eps)).float().argmax(1) != y


def _attack_passes(name: str, params: Params, order: torch.Tensor) -> list[torch.Tensor | None]:
    """The runs of one attack: a target per input int64 [B] per run (APGD-T, FAB-T: the
    classes ranked 2nd, 3rd, ... by the clean logits, `order` = their argsort [B, K]), or None
    per random start (APGD-CE) or for the single Square run."""
    if name in ("apgd-t", "fab-t"):
        n_targets = min(params.n_targets, order.shape[1] - 1)
        return [order[:, -k] for k in range(2, n_targets + 2)]
    return [None] * (params.apgd_restarts if name == "apgd-ce" else 1)


def autoattack_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, params: Params, *,
                     seed: int, batch: int = 0, logits: torch.Tensor | None = None,
                     seconds: dict[str, float] | None = None, attacks: tuple[str, ...] | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The ensemble on one batch, float32 throughout.

    Args: x float [B, C, H, W] in [0, 1]; y int64 [B]; params (eps, version, budgets);
        seed, batch: name the random streams (one generator per seed, attack and batch);
        logits: the clean float32 logits [B, K] when already computed (else computed here);
        seconds: attack -> seconds, added to when given; attacks: run these (names from
        VERSIONS["standard"], in the order given) instead of the version's, e.g. one alone.
    Returns: correct bool [B] (clean prediction right) and broken_by int64 [B]: the index in
        `attacks` of the first attack that broke the input, -1 if none did (misclassified
        inputs are not attacked: -1 and not correct).
    """
    attacks = VERSIONS[params.version] if attacks is None else attacks
    unknown = set(attacks) - set(VERSIONS["standard"])
    if unknown:
        raise ValueError(f"unknown attack(s) {sorted(unknown)}; known: {VERSIONS['standard']}")
    with full_precision(x.device):
        # float32 throughout: the DLR ratio and FAB's projections are below bf16's resolution.
        if logits is None:
            logits = model(x).float()
        correct = logits.argmax(1) == y
        order = logits.argsort(1)
        robust = correct.clone()
        broken_by = torch.full_like(y, -1)
        for a, name in enumerate(attacks):
            start = time.perf_counter()
            gen = make_generator(stream_seed(seed, "autoattack", name, batch), x.device)
            for target in _attack_passes(name, params, order):
                rows = robust.nonzero().squeeze(1)  # one host sync per run, never per step
                if rows.numel() == 0:
                    break
                xs, ys = x[rows], y[rows]
                ts = None if target is None else target[rows]
                if name == "apgd-ce" or name == "apgd-t":
                    adv, _ = apgd_run(model, xs, ys, eps=params.eps, iters=params.apgd_iters, target=ts,
                                      generator=gen)
                elif name == "fab-t":
                    adv, _ = fab_targeted_run(model, xs, ys, ts, eps=params.eps, iters=params.fab_iters)
                else:
                    adv, _ = square_run(model, xs, ys, eps=params.eps, queries=params.square_queries,
                                        p_init=params.square_p_init, generator=gen)
                hit = _verify(model, adv, xs, ys, params.eps)
                robust[rows[hit]] = False
                broken_by[rows[hit]] = a
            if seconds is not None:
                seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
    return correct, broken_by


def _pgd_check(model: nn.Module, x: torch.Tensor, y: torch.Tensor, correct: torch.Tensor,
               params: Params, *, seed: int, batch: int) -> torch.Tensor:
    """Broken bool [B] under the study's untargeted PGD (random start, float32) on the
    correctly classified inputs of the batch."""
    broken = torch.zeros_like(correct)
    rows = correct.nonzero().squeeze(1)
    if rows.numel() == 0:
        return broken
    gen = make_generator(stream_seed(seed, "autoattack", "pgd", batch), x.device)
    with full_precision(x.device):
        _, ok, _, _ = pgd_attack(model, x[rows], y[rows], targeted=False, eps=params.eps,
                                 step=params.eps * params.pgd_step_fraction, iters=params.pgd_iters,
                                 restarts=params.pgd_restarts, random_start=True, generator=gen)
    broken[rows] = ok
    return broken


def run_autoattack(
    victim: Victim,
    data: ImageDataset,
    params: Params | dict | None = None,
    *,
    device: torch.device,
    seed: int = 0,
    progress: bool = True,
    work_dir: str | None = None,
) -> AutoAttackRecord:
    """AutoAttack robust accuracy of the victim on seeded test inputs; returns an AutoAttackRecord."""
    params = make_params(Params, params, source="params")
    if data.num_classes < 4:
        raise InputError("autoattack", f"APGD-T's DLR loss needs at least 4 classes; "
                         f"{data.name} has {data.num_classes}")
    attacks = VERSIONS[params.version]
    with timed() as elapsed:
        model = inference_model(victim.model)
        indices = candidate_indices(data.test_images.shape[0], params.n_inputs, seed)
        images, labels = data.test_images[indices], data.test_labels[indices]
        # Which inputs are correct is decided once, in float32, as `select_correct` does.
        clean = batched_logits(model, images, device=device, batch_size=params.batch_size, fp32=True)
        seconds: dict[str, float] = {}
        parts = []
        slices = batch_slices(len(indices), params.batch_size)
        bar = tqdm(total=len(slices), desc="autoattack", disable=not progress)
        for i, sl in enumerate(slices):
            x, y = to_float(images[sl].to(device)), labels[sl].to(device)
            correct, broken_by = autoattack_batch(model, x, y, params, seed=seed, batch=i, logits=clean[sl],
                                                  seconds=seconds)
            start = time.perf_counter()
            pgd_broken = _pgd_check(model, x, y, correct, params, seed=seed, batch=i)
            seconds["pgd"] = seconds.get("pgd", 0.0) + time.perf_counter() - start
            parts.append((correct, broken_by, pgd_broken))
            bar.update()
        bar.close()
        correct, broken_by, pgd_broken = (torch.cat([p[k] for p in parts]).cpu() for k in range(3))
    robust = correct & (broken_by < 0)
    n = max(len(indices), 1)
    names = ["clean" if not ok else (attacks[k] if k >= 0 else "")
             for ok, k in zip(correct.tolist(), broken_by.tolist(), strict=True)]
    broken = {name: int((broken_by == a).sum()) for a, name in enumerate(attacks)}
    pgd_only = int((pgd_broken & robust).sum())
    square_only = broken.get("square", 0)
    return AutoAttackRecord(
        **record_fields("autoattack", victim, data, seed, params, elapsed()),
        version=params.version, eps=params.eps, attacks=list(attacks), indices=indices.tolist(),
        correct=correct.tolist(), robust=robust.tolist(), broken_by=names, broken=broken,
        attack_seconds=seconds, clean_accuracy=int(correct.sum()) / n,
        robust_accuracy=int(robust.sum()) / n,
        pgd_robust_accuracy=int((correct & ~pgd_broken).sum()) / n,
        pgd_only=pgd_only, square_only=square_only, gradient_masking=pgd_only > 0 or square_only > 0,
    )


ATTACK = AttackSpec(
    Params, run_autoattack,
    rates={"clean_accuracy": "indices", "robust_accuracy": "indices", "pgd_robust_accuracy": "indices"},
    counts={"indices": ("attacked inputs", "--param n_inputs")}, victim_accuracy="clean_accuracy",
    demo={"n_inputs": 16, "version": "apgd", "apgd_iters": 10, "n_targets": 3},
)
