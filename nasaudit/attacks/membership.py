"""Label-only membership inference by decision-boundary distance (Choquette-Choo et al., 2021).

The score of an input is its L2 distance to the victim's decision boundary, estimated with a
batched torch HopSkipJump (Chen, Jordan and Wainwright, 2020) that sees only predicted labels.
Training members tend to sit farther from the boundary than unseen inputs; misclassified inputs
get distance 0 (as in ART's LabelOnlyDecisionBoundary). ART's HopSkipJump attacks one input at a
time with numpy round-trips per query batch; here every step runs on a whole batch of inputs at
once, on the device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from tqdm.auto import tqdm

from nasaudit.attacks import AttackSpec
from nasaudit.attacks.common import (
    AttackRecord,
    Victim,
    batched_logits,
    record_fields,
    timed,
)
from nasaudit.attacks.sampling import candidate_indices
from nasaudit.data import to_float
from nasaudit.infra.device import full_precision
from nasaudit.infra.device import generator as make_generator
from nasaudit.infra.errors import InputError
from nasaudit.infra.params import make_params, param
from nasaudit.models.inference import inference_model

if TYPE_CHECKING:
    from nasaudit.data import ImageDataset

LabelOracle = Callable[[torch.Tensor], torch.Tensor]


def label_oracle(model: nn.Module, device: torch.device, query_batch: int = 8192) -> LabelOracle:
    """Label-only access: images [N, C, H, W] in [0, 1] -> predicted classes int64 [N].

    Float32 even under autocast: HopSkipJump probes points about 0.01 of the boundary distance
    apart, where bf16 rounding of the logits would decide the label."""

    def predict(x: torch.Tensor) -> torch.Tensor:
        return batched_logits(model, x, device=device, batch_size=query_batch, fp32=True).argmax(1)

    return predict


def _bview(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample vector [B] to broadcast against images [B, ...]."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def _binary_search(
    oracle: LabelOracle, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, steps: int
) -> torch.Tensor:
    """Move x_adv towards x along the segment while it stays adversarial (fixed `steps` halvings).

    A fixed step count (ceil(log2(1/threshold))) instead of a per-sample "until converged" loop
    keeps the whole batch in lockstep with no host sync; it is exactly the number of halvings
    ART's while-loop performs. Returns the adversarial end of the final bracket [B, C, H, W].
    """
    lo = torch.zeros(x.shape[0], device=x.device)
    hi = torch.ones(x.shape[0], device=x.device)
    for _ in range(steps):
        mid = (lo + hi) / 2
        m = _bview(mid, x)
        adv = oracle((1 - m) * x + m * x_adv) != y
        hi = torch.where(adv, mid, hi)
        lo = torch.where(adv, lo, mid)
    h = _bview(hi, x)
    return (1 - h) * x + h * x_adv


@torch.no_grad()
def hop_skip_jump(
    oracle: LabelOracle,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    max_iter: int = 50,
    max_eval: int = 2500,
    init_eval: int = 100,
    init_size: int = 100,
    generator: torch.Generator | None = None,
    eval_batch: int = 8192,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batched untargeted L2 HopSkipJump with label-only access.

    Args:
        oracle: images in [0, 1] -> predicted labels [N].
        x: inputs float [B, C, H, W] in [0, 1]; y: int64 [B], the label to move away from
            (the model's prediction on x).
        max_iter, max_eval, init_eval, init_size: as in HopSkipJump / ART (gradient estimation
            uses min(init_eval * sqrt(t + 1), max_eval) queries at iteration t).
        eval_batch: images per oracle call while estimating gradients (memory bound).
    Returns:
        x_adv [B, C, H, W] near the boundary; found bool [B] (False: no random start was
        adversarial within init_size draws, x_adv = x); queries int64 [B].
    Constants follow ART (theta = 0.01 / sqrt(d), first delta 0.1, delta = sqrt(d) theta dist);
    the loop order follows the authors' code (estimate, step, then project back onto the
    boundary), so the returned point is always boundary-projected.
    """
    # Float32 throughout, also under autocast: the gradient estimate (an einsum) and the step
    # sizes work at ~0.01 of the boundary distance, below bf16's resolution.
    with full_precision(x.device):
        return _hop_skip_jump(oracle, x, y, max_iter=max_iter, max_eval=max_eval,
                              init_eval=init_eval, init_size=init_size, generator=generator,
                              eval_batch=eval_batch)


def _hop_skip_jump(oracle: LabelOracle, x: torch.Tensor, y: torch.Tensor, *, max_iter: int,
                   max_eval: int, init_eval: int, init_size: int,
                   generator: torch.Generator | None, eval_batch: int
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b = x.shape[0]
    dev = x.device
    if dev.type == "cpu":
        # On CPU the forward pass is chunked at a few hundred images anyway; materialising
        # thousands of perturbed images at once only adds memory traffic, with identical results.
        eval_batch = min(eval_batch, 1024)
    d = x[0].numel()
    theta = 0.01 / math.sqrt(d)
    search_steps = math.ceil(math.log2(1.0 / theta))
    queries = torch.zeros(b, dtype=torch.long, device=dev)

    # Initialisation: uniform noise images until one is misclassified, then a coarse binary
    # search (threshold 0.001 as in ART). One host sync per draw round; almost every input is
    # done after the first round.
    x_init = x.clone()
    found = torch.zeros(b, dtype=torch.bool, device=dev)
    for _ in range(init_size):
        todo = (~found).nonzero().squeeze(1)
        if todo.numel() == 0:
            break
        rnd = torch.rand((todo.numel(), *x.shape[1:]), generator=generator, device=dev)
        ok = oracle(rnd) != y[todo]
        queries[todo] += 1
        x_init[todo[ok]] = rnd[ok]
        found[todo[ok]] = True
    # Fallback for inputs whose class swallows all the noise (a small model may map every
    # uniform-noise image to one class): start from another input of the batch that the model
    # labels differently, a natural adversarial start under label-only access.
    lost = (~found).nonzero().squeeze(1)
    if lost.numel():
        order = torch.randperm(b, generator=generator, device=dev)
        differs = y[order].unsqueeze(0) != y[lost].unsqueeze(1)  # [n_lost, b]
        has = differs.any(1)
        j = order[differs.float().argmax(1)]
        x_init[lost[has]] = x[j[has]]
        found[lost[has]] = True
    idx = found.nonzero().squeeze(1)
    x_adv = x.clone()
    if idx.numel() == 0:
        return x_adv, found, queries
    x0, y0 = x[idx], y[idx]
    cur = _binary_search(oracle, x0, x_init[idx], y0, math.ceil(math.log2(1000.0)))
    spent = math.ceil(math.log2(1000.0))

    halvings = torch.pow(2.0, -torch.arange(1, 13, device=dev, dtype=x.dtype))  # 2^-1..2^-12
    queries_extra = torch.zeros(len(idx), dtype=torch.long, device=dev)
    cur = _binary_search(oracle, x0, cur, y0, search_steps)
    spent += search_steps
    for t in range(max_iter):
        dist = (cur - x0).flatten(1).norm(dim=1)  # [n]
        delta = torch.full_like(dist, 0.1) if t == 0 else math.sqrt(d) * theta * dist
        num_eval = min(int(init_eval * math.sqrt(t + 1)), max_eval)

        # Gradient direction at the boundary point from num_eval label queries per input,
        # in input chunks so that chunk * num_eval images fit in memory.
        chunk = max(1, eval_batch // num_eval)
        updates = []
        for s in range(0, cur.shape[0], chunk):
            c, dl, yy = cur[s : s + chunk], _bview(delta[s : s + chunk], cur[:1]), y0[s : s + chunk]
            rnd = torch.randn((c.shape[0], num_eval, *c.shape[1:]), generator=generator, device=dev)
            rnd = rnd / rnd.flatten(2).norm(dim=2).view(c.shape[0], num_eval, *([1] * (c.dim() - 1)))
            ev = (c.unsqueeze(1) + dl.unsqueeze(1) * rnd).clamp_(0.0, 1.0)
            rnd = (ev - c.unsqueeze(1)) / dl.unsqueeze(1)
            sat = oracle(ev.flatten(0, 1)).view(c.shape[0], num_eval) != yy.unsqueeze(1)
            f = sat.to(x.dtype) * 2 - 1
            mean = f.mean(1, keepdim=True)
            # Baseline subtraction, except when all samples agree (then plain mean, as in ART).
            f = f - torch.where(mean.abs() == 1, torch.zeros_like(mean), mean)
            grad = torch.einsum("bn,bn...->b...", f, rnd) / num_eval
            updates.append(grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (grad.dim() - 1))))
        update = torch.cat(updates)
        spent += num_eval

        # Geometric step-size search (ART halves until the point is adversarial): the first
        # 3 sizes for every input in one batch, then 9 smaller ones for the inputs none of those
        # fitted (rare). Keep the largest adversarial size (none -> stay put).
        eps0 = 2.0 * dist / math.sqrt(t + 1)
        chosen = cur.clone()
        todo = torch.arange(cur.shape[0], device=dev)
        for sizes_k in (halvings[:3], halvings[3:]):
            if todo.numel() == 0:
                break
            c, u = cur[todo], update[todo]
            sizes = eps0[todo].unsqueeze(1) * sizes_k.unsqueeze(0)  # [m, k]
            pot = (c.unsqueeze(1) + sizes.view(*sizes.shape, *([1] * (c.dim() - 1))) * u.unsqueeze(1)).clamp_(0.0, 1.0)
            ok = oracle(pot.flatten(0, 1)).view(-1, len(sizes_k)) != y0[todo].unsqueeze(1)
            queries_extra[todo] += len(sizes_k)
            hit = ok.any(1)
            pick = pot[torch.arange(pot.shape[0], device=dev), ok.float().argmax(1)]
            chosen[todo[hit]] = pick[hit]
            todo = todo[~hit]
        cur = chosen

        cur = _binary_search(oracle, x0, cur, y0, search_steps)
        spent += search_steps
    x_adv[idx] = cur
    queries[idx] += spent + queries_extra
    return x_adv, found, queries


def boundary_distances(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    device: torch.device,
    seed: int,
    max_iter: int = 50,
    max_eval: int = 2500,
    init_eval: int = 100,
    init_size: int = 100,
    batch_size: int = 100,
    eval_batch: int = 8192,
    progress: bool = True,
    desc: str = "hopskipjump",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L2 distance to the decision boundary of each uint8 image [N, C, H, W] (labels [N]).

    Misclassified inputs get 0; inputs where no adversarial start was found get sqrt(d) (the
    largest possible distance in [0, 1]^d). Returns (distances float [N], correct bool [N],
    queries int64 [N]), all on the CPU.
    """
    oracle = label_oracle(model, device, eval_batch)
    gen = make_generator(seed, device)
    dists, corrects, queries = [], [], []
    starts = range(0, images.shape[0], batch_size)
    for s in tqdm(starts, desc=desc, disable=not progress):
        x = to_float(images[s : s + batch_size].to(device))
        y = labels[s : s + batch_size].to(device)
        pred = oracle(x)
        correct = pred == y
        x_adv, found, q = hop_skip_jump(
            oracle, x, pred, max_iter=max_iter, max_eval=max_eval, init_eval=init_eval,
            init_size=init_size, generator=gen, eval_batch=eval_batch,
        )
        dist = (x_adv - x).flatten(1).norm(dim=1)
        dist = torch.where(found, dist, torch.full_like(dist, math.sqrt(x[0].numel())))
        dists.append(torch.where(correct, dist, torch.zeros_like(dist)))
        corrects.append(correct)
        queries.append(q + 1)
    return torch.cat(dists).cpu(), torch.cat(corrects).cpu(), torch.cat(queries).cpu()


@dataclass
class Params:
    """Label-only membership inference (the study's Table 5).

    n_members / n_nonmembers: inputs per side. members_from: "train" (un-augmented images the
    victim was trained on, excluding its validation split) or "test" (a null experiment:
    members and non-members are disjoint test images, so AUC should be about 0.5).
    norm: only "l2". fpr: the low false-positive rate at which TPR and advantage are reported.
    batch_size: inputs attacked at once; eval_batch: images per victim forward pass.
    """

    n_members: int = param(1000, min=1, doc="member inputs")
    n_nonmembers: int = param(1000, min=1, doc="non-member (test) inputs")
    members_from: str = param("train", choices=("train", "test"), doc="test: a null experiment")
    norm: str = param("l2", choices=("l2", "L2", "2"), doc="boundary distance norm (L2 only)")
    max_iter: int = param(50, min=1, doc="HopSkipJump iterations")
    max_eval: int = param(2500, min=1, doc="max queries per gradient estimate")
    init_eval: int = param(100, min=1, doc="initial queries per estimate")
    init_size: int = param(100, min=1, doc="random draws to find an adversarial start")
    fpr: float = param(0.01, gt=0, lt=1, doc="false-positive rate for TPR and advantage")
    batch_size: int = param(100, min=1, doc="inputs attacked at once")
    eval_batch: int = param(8192, min=1, doc="images per victim forward pass")


@dataclass
class MembershipRecord(AttackRecord):
    """Membership results. Scores are boundary distances (L2, pixel units in [0, 1]).

    auc: ROC AUC with members as positives; tpr_at_fpr: TPR at false-positive rate `fpr`;
    advantage_at_fpr: tpr_at_fpr - fpr; max_advantage: max over thresholds of TPR - FPR;
    member_indices index the training split (or the test split when members_from == "test").
    """

    kind = "attack.membership"
    auc: float
    fpr: float
    tpr_at_fpr: float
    advantage_at_fpr: float
    max_advantage: float
    member_accuracy: float
    nonmember_accuracy: float
    mean_queries: float
    member_indices: list[int]
    nonmember_indices: list[int]
    member_distances: list[float]
    nonmember_distances: list[float]


def membership_metrics(member_scores, nonmember_scores, fpr: float) -> dict[str, float]:
    """AUC, TPR at `fpr`, advantage at `fpr` and max advantage (members = positives)."""
    import numpy as np
    from sklearn.metrics import roc_auc_score, roc_curve

    scores = np.concatenate([np.asarray(member_scores), np.asarray(nonmember_scores)])
    truth = np.concatenate([np.ones(len(member_scores)), np.zeros(len(nonmember_scores))])
    fprs, tprs, _ = roc_curve(truth, scores)
    tpr_at = float(tprs[fprs <= fpr].max()) if (fprs <= fpr).any() else 0.0
    return {
        "auc": float(roc_auc_score(truth, scores)),
        "tpr_at_fpr": tpr_at,
        "advantage_at_fpr": tpr_at - fpr,
        "max_advantage": float((tprs - fprs).max()),
    }


def member_pool(victim: Victim, data: ImageDataset) -> torch.Tensor:
    """Indices of the training images the victim was actually fitted on (its val split removed)."""
    n = data.train_images.shape[0]
    cfg = victim.train_config
    val_fraction = float(getattr(cfg, "val_fraction", 0.0) or 0.0) if cfg is not None else 0.0
    if val_fraction <= 0:
        return torch.arange(n)
    from nasaudit.data import train_val_split

    train_idx, _ = train_val_split(n, val_fraction, int(getattr(cfg, "seed", 0)))
    return torch.as_tensor(train_idx, dtype=torch.long)


def run_membership(
    victim: Victim,
    data: ImageDataset,
    params: Params | dict | None = None,
    *,
    device: torch.device,
    seed: int = 0,
    progress: bool = True,
    work_dir: str | None = None,
) -> MembershipRecord:
    """Label-only decision-boundary membership inference; returns a MembershipRecord."""
    params = make_params(Params, params, source="params")
    if params.norm.lower() not in ("l2", "2"):
        raise InputError("--param norm", f"only the L2 boundary distance is implemented, got {params.norm!r}")
    with timed() as elapsed:
        model = inference_model(victim.model)
        if params.members_from == "train":
            pool = member_pool(victim, data)
            members = pool[candidate_indices(len(pool), params.n_members, seed)]
            m_img, m_lab = data.train_images[members], data.train_labels[members]
            nonmembers = candidate_indices(data.test_images.shape[0], params.n_nonmembers, seed + 1)
        elif params.members_from == "test":
            perm = candidate_indices(data.test_images.shape[0], params.n_members + params.n_nonmembers, seed)
            half = min(params.n_members, len(perm) // 2)
            members, nonmembers = perm[:half], perm[half:]
            m_img, m_lab = data.test_images[members], data.test_labels[members]
        else:
            raise InputError("--param members_from", f"expected 'train' or 'test', got {params.members_from!r}")
        kw = dict(
            device=device, max_iter=params.max_iter, max_eval=params.max_eval,
            init_eval=params.init_eval, init_size=params.init_size, batch_size=params.batch_size,
            eval_batch=params.eval_batch, progress=progress,
        )
        m_dist, m_ok, m_q = boundary_distances(model, m_img, m_lab, seed=seed, desc="members", **kw)
        n_dist, n_ok, n_q = boundary_distances(
            model, data.test_images[nonmembers], data.test_labels[nonmembers], seed=seed + 1,
            desc="non-members", **kw,
        )
        metrics = membership_metrics(m_dist.numpy(), n_dist.numpy(), params.fpr)
    return MembershipRecord(
        **record_fields("membership", victim, data, seed, params, elapsed()),
        fpr=params.fpr, **metrics,
        member_accuracy=float(m_ok.float().mean()), nonmember_accuracy=float(n_ok.float().mean()),
        mean_queries=float(torch.cat([m_q, n_q]).float().mean()),
        member_indices=members.tolist(), nonmember_indices=nonmembers.tolist(),
        member_distances=m_dist.tolist(), nonmember_distances=n_dist.tolist(),
    )


ATTACK = AttackSpec(
    Params, run_membership,
    rates={"member_accuracy": "member_indices", "nonmember_accuracy": "nonmember_indices",
           "tpr_at_fpr": "member_indices"},
    counts={"member_indices": ("members", "--param n_members"),
            "nonmember_indices": ("non-members", "--param n_nonmembers")},
    victim_accuracy="nonmember_accuracy", members=True,
    demo={"n_members": 16, "n_nonmembers": 16, "max_iter": 3, "max_eval": 80, "init_eval": 10,
          "init_size": 10},
)
