"""Knockoff Nets functionality stealing (Orekondy et al., CVPR 2019), adaptive strategy.

The attacker holds a pool of unlabelled-by-the-victim images with coarse labels (here: the
training split with its labels, as ART's KnockoffNets uses `y` of the pool) that define the
bandit's actions. A gradient bandit picks classes, images of those classes are sent to the
victim, and the reward "all" (certainty + diversity + loss, each standardised by its running
mean and variance, as in the paper and ART) steers the policy. The replica is then trained on
the victim's output probabilities for `epochs` epochs.

Why not ART's KnockoffNets: it queries one image per iteration, fits the thief on that single
image through its numpy-in/numpy-out estimator, and draws from numpy's global RNG, so 16K
queries mean 16K tiny fits with host round-trips and no seed control. Here the bandit runs in
rounds of `query_batch` actions: one batched victim query, one batched replica step and a
vectorised policy update per round, with explicit generators. Queries up to the largest budget
are collected once; each smaller budget uses the prefix of that sequence, which is exactly what
an attack stopped at that budget would have collected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from tqdm.auto import tqdm

from nasaudit.attacks import TEST, AttackSpec
from nasaudit.attacks.common import (
    AttackRecord,
    Victim,
    batched_logits,
    build_fresh,
    record_fields,
    soft_cross_entropy,
    timed,
)
from nasaudit.data import to_float
from nasaudit.infra.device import autocast
from nasaudit.infra.device import generator as make_generator
from nasaudit.infra.params import make_params, param
from nasaudit.models.inference import inference_model

if TYPE_CHECKING:
    from nasaudit.data import ImageDataset


REWARDS = ("all", "cert", "div", "loss")
SAMPLINGS = ("adaptive", "random")


@dataclass
class Params:
    """Knockoff Nets (the study's Table 5).

    budgets: query budgets, one replica per budget; replica: architecture of the replica
    ("" = the victim's, with its model kwargs; else any build_model name, with
    replica_kwargs); epochs, lr, batch_size, momentum, weight_decay: replica training (SGD,
    cosine); query_batch: bandit actions per round; bandit_lr: online replica step size during
    sampling; use_probability: train on the victim's probabilities (else its argmax labels);
    augment: random crop + flip while training the replica.
    """

    budgets: tuple[int, ...] = param(
        (1000, 2000, 4000, 8000, 16000), min=1, doc="query budgets, one replica each"
    )
    replica: str = param("", doc="replica architecture; empty: the victim's")
    replica_kwargs: dict | None = param(None, doc="build_model kwargs of the replica (JSON)")
    epochs: int = param(50, min=1, doc="replica training epochs")
    lr: float = param(0.01, gt=0, doc="replica learning rate")
    batch_size: int = param(64, min=1, doc="replica training batch")
    momentum: float = param(0.9, min=0, lt=1, doc="SGD momentum")
    weight_decay: float = param(5e-4, min=0, doc="SGD weight decay")
    query_batch: int = param(64, min=1, doc="bandit actions (queries) per round")
    bandit_lr: float = param(0.01, gt=0, doc="online replica step size during sampling")
    reward: str = param("all", choices=REWARDS, doc="bandit reward")
    sampling: str = param(
        "adaptive", choices=SAMPLINGS,
        doc="adaptive (the gradient bandit, the study's) or random (uniform pool images, "
        "Orekondy et al.'s baseline strategy)",
    )
    use_probability: bool = param(True, doc="train on probabilities (else argmax labels)")
    augment: bool = param(True, doc="random crop + flip while training the replica")


@dataclass
class KnockoffRecord(AttackRecord):
    """Per budget (aligned lists), on the test set: ace = mean CE(victim probs, replica probs)
    in nats; kl = ace - victim entropy; replica_accuracy; agreement (same top-1 as the victim).
    action_counts: how often the bandit chose each class over the largest budget."""

    kind = "attack.knockoff"
    replica: str
    budgets: list[int]
    ace: list[float]
    kl: list[float]
    replica_accuracy: list[float]
    agreement: list[float]
    victim_accuracy: float
    victim_entropy: float
    action_counts: list[int]


class _RunningStat:
    """Running mean and variance over reward vectors, updated one batch at a time (as ART's
    per-query recursion but for a whole round: Welford's batched update)."""

    def __init__(self, dim: int, device: torch.device):
        self.n = 0
        self.mean = torch.zeros(dim, device=device)
        self.m2 = torch.zeros(dim, device=device)

    def update(self, values: torch.Tensor) -> None:
        nb = values.shape[0]
        bmean = values.mean(0)
        bm2 = ((values - bmean) ** 2).sum(0)
        delta = bmean - self.mean
        total = self.n + nb
        self.mean = self.mean + delta * nb / total
        self.m2 = self.m2 + bm2 + delta**2 * self.n * nb / total
        self.n = total

    @property
    def std(self) -> torch.Tensor:
        return (self.m2 / max(1, self.n)).sqrt().clamp_min(1e-8)


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, target: torch.Tensor,
                device: torch.device) -> None:
    """One SGD step of `model` on images x against soft targets [B, K]."""
    model.train()
    with autocast(device):
        loss = soft_cross_entropy(model(x).float(), target).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random 4-pixel-padded crop and horizontal flip of float images [B, C, H, W], batched."""
    from nasaudit.data import Augment, augment_batch

    return augment_batch((x * 255).round().to(torch.uint8), Augment(4, True, 0), gen)


def adaptive_queries(
    victim: nn.Module,
    replica: nn.Module,
    pool: torch.Tensor,
    pool_labels: torch.Tensor,
    budget: int,
    *,
    params: Params,
    num_classes: int,
    device: torch.device,
    seed: int,
    progress: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Adaptive Knockoff sampling of `budget` pool images (uint8 [N, C, H, W], labels [N]).

    Each round: sample query_batch actions from softmax(H), one random pool image per action,
    query the victim (probabilities), take one replica step on them, compute the rewards and
    apply the gradient-bandit update H_a += lr_a (r - r_avg)(1[a = a_t] - pi_a), averaged over
    the round, with lr_a = 1 / (times a was chosen) as in ART.
    Returns (pool indices [budget], victim probabilities [budget, K], action counts [K]).
    """
    gen = make_generator(seed, device)
    labels = pool_labels.to(device)
    actions = int(labels.max()) + 1
    by_class = [torch.nonzero(labels == a).squeeze(1) for a in range(actions)]
    sizes = torch.tensor([len(c) for c in by_class], device=device)
    offsets = torch.cumsum(sizes, 0) - sizes
    flat = torch.cat(by_class)
    h = torch.zeros(actions, device=device)
    h[sizes == 0] = -math.inf  # an empty class is never chosen
    counts = torch.zeros(actions, device=device)
    y_avg = torch.zeros(num_classes, device=device)
    stats = _RunningStat(3, device)
    avg_reward = torch.zeros((), device=device)
    opt = torch.optim.SGD(replica.parameters(), lr=params.bandit_lr, momentum=params.momentum)
    chosen, outputs, n_seen = [], [], 0
    bar = tqdm(total=budget, desc="knockoff queries", disable=not progress)
    while n_seen < budget:
        nb = min(params.query_batch, budget - n_seen)
        probs = torch.softmax(h, 0)
        act = torch.multinomial(probs, nb, replacement=True, generator=gen)
        pick = (torch.rand(nb, generator=gen, device=device) * sizes[act]).long()
        idx = flat[offsets[act] + pick]
        x = to_float(pool[idx].to(device))
        with torch.no_grad():
            y_v = torch.softmax(batched_logits(victim, x, device=device), 1)
        target = y_v if params.use_probability else nn.functional.one_hot(y_v.argmax(1), num_classes).float()
        _train_step(replica, opt, x, target, device)
        replica.eval()
        with torch.no_grad():
            y_r = batched_logits(replica, x, device=device)
        # Rewards per query [nb, 3]: certainty (top-2 margin), diversity (excess over the
        # running mean output), loss (CE between victim and replica).
        top2 = y_v.topk(2, dim=1).values
        cert = top2[:, 0] - top2[:, 1]
        # y_avg evolves query by query within the round, exactly as ART's sequential update
        # (the running mean of all victim outputs so far, including the current one).
        steps = torch.arange(1, nb + 1, device=device, dtype=y_v.dtype).unsqueeze(1) + n_seen
        running = (n_seen * y_avg + torch.cumsum(y_v, 0)) / steps
        div = (y_v - running).clamp_min(0).sum(1)
        loss = soft_cross_entropy(y_r, y_v)
        raw = torch.stack([cert, div, loss], 1)
        y_avg = running[-1]
        if params.reward == "all":
            stats.update(raw)
            reward = ((raw - stats.mean) / stats.std).mean(1) if stats.n > 1 else raw.clamp(0, 1).mean(1)
        else:
            reward = raw[:, {"cert": 0, "div": 1, "loss": 2}[params.reward]]
        avg_reward = avg_reward + (reward.sum() - nb * avg_reward) / (n_seen + nb)
        one_hot = nn.functional.one_hot(act, actions).float()  # [nb, A]
        counts += one_hot.sum(0)
        adv = (reward - avg_reward).unsqueeze(1)  # [nb, 1]
        step = (adv * (one_hot - probs.unsqueeze(0))) / counts[act].unsqueeze(1)
        h = h + torch.where(sizes > 0, step.sum(0), torch.zeros_like(h))
        chosen.append(idx)
        outputs.append(y_v)
        n_seen += nb
        bar.update(nb)
    bar.close()
    return torch.cat(chosen).cpu(), torch.cat(outputs), counts.long().cpu()


def random_queries(
    victim: nn.Module, pool: torch.Tensor, pool_labels: torch.Tensor, budget: int, *,
    device: torch.device, seed: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Knockoff's random strategy: `budget` pool images drawn uniformly (without replacement
    while the pool lasts). Returns (pool indices [budget], victim probabilities [budget, K],
    counts of their coarse labels [A]) like `adaptive_queries`."""
    n = pool.shape[0]
    gen = make_generator(seed, "cpu")
    rounds = [torch.randperm(n, generator=gen) for _ in range(-(-budget // n))]
    idx = torch.cat(rounds)[:budget]
    probs = torch.softmax(batched_logits(victim, pool[idx], device=device), 1)
    counts = torch.bincount(pool_labels[idx], minlength=int(pool_labels.max()) + 1)
    return idx, probs, counts


def train_replica(
    replica: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    params: Params,
    device: torch.device,
    seed: int,
    progress: bool,
) -> nn.Module:
    """Train `replica` on uint8 images [M, C, H, W] against victim outputs [M, K] (soft CE)."""
    gen_cpu = make_generator(seed, "cpu")
    gen_dev = make_generator(seed + 1, device)
    x_all = images.to(device)
    t_all = targets.to(device)
    if not params.use_probability:
        t_all = nn.functional.one_hot(t_all.argmax(1), t_all.shape[1]).float()
    opt = torch.optim.SGD(replica.parameters(), lr=params.lr, momentum=params.momentum,
                          weight_decay=params.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, params.epochs))
    m = x_all.shape[0]
    n_batches = max(1, m // params.batch_size) if m >= params.batch_size else 1
    bar = tqdm(total=params.epochs * n_batches, desc=f"replica {m}", disable=not progress)
    for _ in range(params.epochs):
        order = torch.randperm(m, generator=gen_cpu).to(device)
        for b in range(n_batches):
            sel = order[b * params.batch_size : (b + 1) * params.batch_size]
            x = to_float(x_all[sel])
            if params.augment:
                x = _augment(x, gen_dev)
            _train_step(replica, opt, x, t_all[sel], device)
            bar.update()
        sched.step()
    bar.close()
    return replica.eval()


def run_knockoff(
    victim: Victim,
    data: ImageDataset,
    params: Params | dict | None = None,
    *,
    device: torch.device,
    seed: int = 0,
    progress: bool = True,
    work_dir: str | None = None,
) -> KnockoffRecord:
    """Steal the victim with adaptive Knockoff Nets at every budget; returns a KnockoffRecord."""
    params = make_params(Params, params, source="params")
    budgets = sorted(set(params.budgets))
    name = params.replica or victim.model_name
    kwargs = (params.replica_kwargs if params.replica_kwargs is not None
              else (victim.model_kwargs if not params.replica else {}))
    with timed() as elapsed:
        model = inference_model(victim.model)  # only queried for labels or probabilities
        if params.sampling == "random":
            idx, outputs, counts = random_queries(model, data.train_images, data.train_labels,
                                                  budgets[-1], device=device, seed=seed)
        else:
            # The bandit's online replica only guides sampling; each budget trains a fresh one.
            guide = build_fresh(name, data, seed, kwargs).to(device)
            idx, outputs, counts = adaptive_queries(
                model, guide, data.train_images, data.train_labels, budgets[-1], params=params,
                num_classes=data.num_classes, device=device, seed=seed, progress=progress,
            )
            del guide
        v_logits = batched_logits(model, data.test_images, device=device)
        v_probs = torch.softmax(v_logits, 1)
        y_test = data.test_labels.to(device)
        entropy = float(-(v_probs * v_probs.clamp_min(1e-30).log()).sum(1).mean())
        ace, kl, acc, agree = [], [], [], []
        for budget in budgets:
            replica = build_fresh(name, data, seed, kwargs).to(device)
            train_replica(replica, data.train_images[idx[:budget]], outputs[:budget],
                          params=params, device=device, seed=seed, progress=progress)
            r_logits = batched_logits(replica, data.test_images, device=device)
            ce = float(soft_cross_entropy(r_logits, v_probs).mean())
            ace.append(ce)
            kl.append(ce - entropy)
            acc.append(float((r_logits.argmax(1) == y_test).float().mean()))
            agree.append(float((r_logits.argmax(1) == v_logits.argmax(1)).float().mean()))
    return KnockoffRecord(
        **record_fields("knockoff", victim, data, seed, params, elapsed()),
        replica=name, budgets=budgets, ace=ace, kl=kl, replica_accuracy=acc, agreement=agree,
        victim_accuracy=float((v_logits.argmax(1) == y_test).float().mean()),
        victim_entropy=entropy, action_counts=counts.tolist(),
    )


ATTACK = AttackSpec(
    Params, run_knockoff,
    rates={"replica_accuracy": TEST, "agreement": TEST, "victim_accuracy": TEST},
    victim_accuracy="victim_accuracy", axis=("budgets", "budget"), retrains=True, model_param="replica",
    # each_model: every model is also a replica architecture (the cross-architecture table).
    demo={"budgets": [50, 100], "epochs": 1, "each_model": "replica"},
)
