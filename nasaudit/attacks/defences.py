"""Backdoor defences run on a backdoored model: Neural Cleanse (detection) and fine-pruning (removal).

Neural Cleanse (Wang et al., S&P 2019): for every class k, reverse-engineer the smallest trigger
that sends clean images to k, x' = (1 - m) x + m p with a mask m [1, H, W] and a pattern p
[C, H, W], both in [0, 1] (tanh-parametrised: m = tanh(w_m) / (2 - eps) + 1/2, likewise p).
Adam (lr 0.1, betas (0.5, 0.9), as NC's code) minimises cross-entropy to k plus
lambda_k * |m|_1. lambda follows NC's schedule ("nc", the default): it starts at init_cost and,
once per window of steps (NC's "mini-batches per epoch": the inputs divided by the batch size),
is multiplied by `cost_multiplier` after `patience` windows in a row whose mean success rate is
at least `success_threshold` and divided by `cost_multiplier ** 1.5` after `patience` windows in
a row below it; the kept trigger is the one of smallest |m|_1 at the end of a window that
reached the threshold (the last one when none did). NC's early stop is left out: the step
budget is fixed, so the cost is known in advance. schedule "fixed" keeps lambda = init_cost and
the final trigger, the minimiser of that one objective whatever its success rate: every class
is then priced alike, which separates a backdoor better than the schedule does on a weakly
trained model whose hard classes need large masks for NC's 99% success. All
classes are optimised at once (`class_chunk` at a time): each class's loss depends only on its
own mask and pattern and Adam is elementwise, so this is the same as one run per class, sharing
the batches. A backdoored class needs a much smaller mask than the others; the anomaly index of
the class with the smallest norm, |L1 - median| / (1.4826 * MAD) over the classes, above 2 flags
the model (NC's outlier rule with its consistency constant; `anomaly_indices`).

Fine-pruning (Liu et al., RAID 2018): prune the penultimate feature channels least active on
clean inputs, in order of mean activation, while the clean accuracy (on the defender's clean
images) stays within `max_accuracy_drop` of the unpruned model's and at most `max_fraction` of
the channels are gone; then fine-tune on the clean images. The channels pruned are those of
ImageClassifier.features, the pooled output of the last feature map (the last conv layer of a
plain CNN, the last block or cell of a residual or DARTS network): they feed only the
classifier, so pruning them is masking the classifier's input columns
(torch.nn.utils.prune.custom_from_mask, which keeps them at zero during the fine-tune).

Images are uint8 [N, C, H, W] at rest and floats in [0, 1] when fed to the model.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune
from tqdm.auto import tqdm

from nasaudit.attacks.common import batched_logits, forward_chunk
from nasaudit.data import to_float
from nasaudit.infra.device import autocast
from nasaudit.infra.device import generator as make_generator

DEFENCES = ("neural_cleanse", "fine_pruning")
SCHEDULES = ("nc", "fixed")
MAD_CONSISTENCY = 1.4826  # MAD -> standard deviation of a normal distribution
ANOMALY_THRESHOLD = 2.0  # NC's: an anomaly index above 2 is an outlier at about 95% confidence
_TANH_EPS = 1e-7  # keeps tanh(w) / (2 - eps) + 1/2 strictly inside (0, 1), as NC's code


def _squash(w: torch.Tensor) -> torch.Tensor:
    return torch.tanh(w) / (2 - _TANH_EPS) + 0.5


def _unsquash(v: torch.Tensor) -> torch.Tensor:
    return torch.atanh((v - 0.5) * (2 - _TANH_EPS))


# ---------------------------------------------------------------------------- Neural Cleanse


@dataclass
class ReversedTriggers:
    """Neural Cleanse's reverse-engineered triggers, one per class in `classes`.

    masks: float [K, 1, H, W] in [0, 1]; patterns: float [K, C, H, W] in [0, 1]; norms: float [K],
    the L1 norm of each mask (in pixels: a fully opaque 3x3 patch has norm 9); success: float
    [K], the fraction of the inputs each trigger sends to its class (measured once at the end).
    """

    classes: list[int]
    masks: torch.Tensor
    patterns: torch.Tensor
    norms: torch.Tensor
    success: torch.Tensor


def reverse_triggers(
    model: nn.Module,
    images: torch.Tensor,
    classes: Sequence[int],
    *,
    steps: int,
    batch_size: int = 32,
    lr: float = 0.1,
    init_cost: float = 1e-3,
    schedule: str = "nc",
    patience: int = 5,
    cost_multiplier: float = 2.0,
    success_threshold: float = 0.99,
    class_chunk: int = 10,
    device: torch.device,
    seed: int = 0,
    progress: bool = False,
) -> ReversedTriggers:
    """Neural Cleanse's trigger reverse engineering (see the module docstring) for every class in
    `classes` on clean uint8 `images` [N, C, H, W]: `steps` Adam steps per class, each on a
    seeded batch of `batch_size` images (the same batches for every class), `class_chunk` classes
    per forward pass ([class_chunk * batch_size] images). Defaults are NC's code's (lr 0.1, init
    cost 1e-3, patience 5, multiplier 2, success threshold 0.99)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    model.eval()
    classes = [int(k) for k in classes]
    n, c, h, w = images.shape
    batch_size = min(batch_size, n)
    window = max(1, n // batch_size)
    gen = make_generator(seed, "cpu")
    # One batch schedule for all classes, drawn up front so a class chunk cannot change it.
    order = torch.cat([torch.randperm(n, generator=gen) for _ in range(math.ceil(steps * batch_size / n))])
    init_mask = torch.rand(len(classes), 1, h, w, generator=gen)
    init_pattern = torch.rand(len(classes), c, h, w, generator=gen)
    masks, patterns = [], []
    bar = tqdm(total=steps * math.ceil(len(classes) / class_chunk), desc="neural cleanse", disable=not progress)
    for start in range(0, len(classes), class_chunk):
        chunk = classes[start : start + class_chunk]
        part = slice(start, start + len(chunk))
        mask, pattern = _reverse_chunk(
            model, images, order, chunk, _unsquash(init_mask[part]).to(device),
            _unsquash(init_pattern[part]).to(device), steps=steps, batch_size=batch_size, window=window,
            lr=lr, init_cost=init_cost, schedule=schedule, patience=patience,
            cost_multiplier=cost_multiplier, success_threshold=success_threshold, device=device, bar=bar,
        )
        masks.append(mask)
        patterns.append(pattern)
    bar.close()
    masks_t, patterns_t = torch.cat(masks), torch.cat(patterns)
    success = trigger_success(model, images, masks_t, patterns_t, classes, device=device)
    return ReversedTriggers(classes, masks_t, patterns_t, masks_t.abs().sum((1, 2, 3)), success)


def _reverse_chunk(model, images, order, chunk, w_mask, w_pattern, *, steps, batch_size, window, lr,
                   init_cost, schedule, patience, cost_multiplier, success_threshold, device, bar):
    """One chunk of classes of `reverse_triggers`: (masks [k, 1, H, W], patterns [k, C, H, W])."""
    k = len(chunk)
    target = torch.tensor(chunk, device=device)
    labels = target.repeat_interleave(batch_size)
    w_mask.requires_grad_(True)
    w_pattern.requires_grad_(True)
    opt = torch.optim.Adam([w_mask, w_pattern], lr=lr, betas=(0.5, 0.9))
    cost = torch.full((k,), float(init_cost), device=device)
    up = torch.zeros(k, device=device)
    down = torch.zeros(k, device=device)
    best_norm = torch.full((k,), math.inf, device=device)
    best_mask = _squash(w_mask.detach())
    best_pattern = _squash(w_pattern.detach())
    hits = torch.zeros(k, device=device)
    for step in range(steps):
        idx = order[step * batch_size : (step + 1) * batch_size]
        x = to_float(images[idx].to(device))  # [B, C, H, W]
        mask, pattern = _squash(w_mask), _squash(w_pattern)
        triggered = (1 - mask[:, None]) * x[None] + (mask * pattern)[:, None]  # [k, B, C, H, W]
        with autocast(device):
            logits = model(triggered.flatten(0, 1)).float()
        ce = F.cross_entropy(logits, labels, reduction="none").view(k, -1).mean(1)
        l1 = mask.abs().sum((1, 2, 3))
        loss = (ce + cost * l1).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward(inputs=[w_mask, w_pattern])
        opt.step()
        hits += (logits.detach().argmax(1) == labels).float().view(k, -1).mean(1)
        bar.update()
        if (step + 1) % window and step + 1 < steps:
            continue
        # End of a window: keep the smallest successful mask, then NC's cost update.
        success = hits / (step % window + 1)
        hits.zero_()
        mask, pattern = _squash(w_mask.detach()), _squash(w_pattern.detach())
        norm = mask.sum((1, 2, 3))
        ok = success >= success_threshold
        better = ok & (norm < best_norm)
        best_norm = torch.where(better, norm, best_norm)
        best_mask = torch.where(better.view(-1, 1, 1, 1), mask, best_mask)
        best_pattern = torch.where(better.view(-1, 1, 1, 1), pattern, best_pattern)
        if schedule == "nc":
            up = torch.where(ok, up + 1, torch.zeros_like(up))
            down = torch.where(ok, torch.zeros_like(down), down + 1)
            raise_, lower = up >= patience, down >= patience
            cost = torch.where(raise_, cost * cost_multiplier, cost)
            cost = torch.where(lower, cost / cost_multiplier**1.5, cost)
            up = torch.where(raise_, torch.zeros_like(up), up)
            down = torch.where(lower, torch.zeros_like(down), down)
    # Fixed lambda: the trigger is the minimiser of the one objective, whatever its success rate.
    # NC's schedule: a class whose trigger never reached the threshold keeps its last mask (as
    # NC's code).
    never = torch.isinf(best_norm).view(-1, 1, 1, 1) | (schedule == "fixed")
    best_mask = torch.where(never, _squash(w_mask.detach()), best_mask)
    best_pattern = torch.where(never, _squash(w_pattern.detach()), best_pattern)
    return best_mask, best_pattern


@torch.no_grad()
def trigger_success(model: nn.Module, images: torch.Tensor, masks: torch.Tensor, patterns: torch.Tensor,
                    classes: Sequence[int], *, device: torch.device, batch_size: int = 256) -> torch.Tensor:
    """Per class, the fraction of uint8 `images` [N, C, H, W] that (1 - m) x + m p (masks [K, 1, H,
    W], patterns [K, C, H, W]) sends to that class: float [K] on the CPU."""
    out = torch.zeros(len(classes), device=device)
    for i, k in enumerate(classes):
        for s in range(0, images.shape[0], batch_size):
            x = to_float(images[s : s + batch_size].to(device))
            x = (1 - masks[i]) * x + masks[i] * patterns[i]
            out[i] += (batched_logits(model, x, device=device, batch_size=batch_size).argmax(1) == k).sum()
    return (out / max(1, images.shape[0])).cpu()


def anomaly_indices(norms: Sequence[float] | np.ndarray | torch.Tensor) -> np.ndarray:
    """NC's anomaly index per class: |L1 - median| / (1.4826 * MAD), MAD the median of
    |L1 - median| over the classes (norms: [K] mask L1 norms). float64 [K]; where MAD is 0 an
    index is 0 at the median and inf elsewhere."""
    values = np.asarray(norms.tolist() if isinstance(norms, torch.Tensor) else norms, dtype=np.float64)
    deviation = np.abs(values - np.median(values))
    mad = MAD_CONSISTENCY * np.median(deviation)
    if mad > 0:
        return deviation / mad
    return np.where(deviation > 0, np.inf, 0.0)


@dataclass
class CleanseResult:
    """Neural Cleanse's verdict on one model.

    norms: L1 norm (pixels) of each class's reversed mask, in class order; success: each reversed
    trigger's success rate on the inputs; anomaly_index: that of the smallest-norm class (see
    `anomaly_indices`); smallest_class: that class; detected: anomaly_index > threshold;
    flagged_class: smallest_class when detected, else None.
    """

    classes: list[int]
    norms: list[float]
    success: list[float]
    anomaly_index: float
    smallest_class: int
    detected: bool
    flagged_class: int | None


def judge(triggers: ReversedTriggers, threshold: float = ANOMALY_THRESHOLD) -> CleanseResult:
    """The outlier test on reversed triggers: is the smallest-norm class's anomaly index above
    `threshold` (NC's 2)? Only the small side counts, as in NC (a large mask is no backdoor)."""
    norms = triggers.norms.cpu().double().numpy()
    smallest = int(np.argmin(norms))
    index = float(anomaly_indices(norms)[smallest])
    detected = index > threshold
    return CleanseResult(
        classes=list(triggers.classes), norms=norms.tolist(), success=triggers.success.tolist(),
        anomaly_index=index, smallest_class=triggers.classes[smallest], detected=detected,
        flagged_class=triggers.classes[smallest] if detected else None,
    )


def neural_cleanse(model: nn.Module, images: torch.Tensor, num_classes: int, *,
                   classes: Sequence[int] | None = None, threshold: float = ANOMALY_THRESHOLD,
                   device: torch.device, seed: int = 0, progress: bool = False, **kwargs) -> CleanseResult:
    """Neural Cleanse on `model` with clean uint8 `images` [N, C, H, W]: reverse a trigger per
    class (all `num_classes`, or `classes`; keyword arguments go to `reverse_triggers`), then
    `judge`."""
    chosen = list(range(num_classes)) if classes is None else list(classes)
    triggers = reverse_triggers(model, images, chosen, device=device, seed=seed, progress=progress, **kwargs)
    return judge(triggers, threshold)


# ------------------------------------------------------------------------------ fine-pruning


@dataclass
class PrunePlan:
    """Which penultimate channels fine-pruning removes.

    order: every channel, least active on the clean images first; pruned: how many of `order`
    go; accuracy_curve: clean accuracy on the defender's images after pruning the first 0, 1, ...
    channels of `order` (index 0 unpruned), up to the fraction cap.
    """

    order: list[int]
    pruned: int
    accuracy_curve: list[float]

    @property
    def channels(self) -> list[int]:
        """The pruned channels, in pruning order."""
        return self.order[: self.pruned]


@torch.no_grad()
def feature_matrix(model: nn.Module, images: torch.Tensor, *, device: torch.device,
                   batch_size: int = 256) -> torch.Tensor:
    """Penultimate features (ImageClassifier.features) of uint8 images [N, C, H, W]: float [N, D]
    on `device`."""
    batch_size = forward_chunk(torch.device(device), batch_size)
    parts = []
    for s in range(0, images.shape[0], batch_size):
        with autocast(device):
            parts.append(model.features(to_float(images[s : s + batch_size].to(device))).float())
    return torch.cat(parts)


@torch.no_grad()
def plan_pruning(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, max_accuracy_drop: float,
                 max_fraction: float, device: torch.device) -> PrunePlan:
    """Liu et al.'s pruning order and stopping point on clean uint8 `images` [N, C, H, W] with
    `labels` [N]: channels by increasing mean activation; prune while the accuracy stays within
    `max_accuracy_drop` (a fraction, e.g. 0.04 for 4 points) of the unpruned accuracy and at most
    floor(max_fraction * D) channels are pruned. The features are computed once: pruning channel
    c removes W[:, c] * f_c from the logits, so every step of the curve is one subtraction."""
    feats = feature_matrix(model, images, device=device)
    weight = model.classifier.weight.detach().float()  # [K, D]
    labels = labels.to(device)
    order = feats.mean(0).argsort()
    cap = int(max_fraction * feats.shape[1])
    logits = model.classifier(feats).float()
    curve = torch.zeros(cap + 1, device=device)
    curve[0] = (logits.argmax(1) == labels).float().mean()
    for i in range(cap):
        c = order[i]
        logits = logits - feats[:, c, None] * weight[None, :, c]
        curve[i + 1] = (logits.argmax(1) == labels).float().mean()
    accs = curve.cpu().tolist()
    pruned = 0
    while pruned < cap and accs[0] - accs[pruned + 1] <= max_accuracy_drop:
        pruned += 1
    return PrunePlan(order=order.cpu().tolist(), pruned=pruned, accuracy_curve=accs)


def prune_features(model: nn.Module, channels: Sequence[int]) -> nn.Module:
    """Prune penultimate feature `channels` of an ImageClassifier in place: the classifier's input
    columns are masked (torch.nn.utils.prune), so they stay zero through later training."""
    layer = model.classifier
    mask = torch.ones_like(layer.weight)
    mask[:, list(channels)] = 0.0
    prune.custom_from_mask(layer, "weight", mask)
    return model


@dataclass
class FinePruned:
    """Fine-pruning's outputs: the plan, the pruned model and the pruned model after the clean
    fine-tune (two models, both in eval mode)."""

    plan: PrunePlan
    pruned: nn.Module
    fine_tuned: nn.Module


def fine_pruning(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    max_accuracy_drop: float,
    max_fraction: float,
    epochs: int,
    lr: float,
    batch_size: int,
    momentum: float = 0.9,
    weight_decay: float = 3e-4,
    grad_clip: float = 5.0,
    auxiliary_weight: float = 0.4,
    crop_padding: int = 4,
    flip: bool = True,
    device: torch.device,
    seed: int = 0,
    progress: bool = False,
) -> FinePruned:
    """Fine-pruning of a copy of `model` (never modified) with the defender's clean uint8 `images`
    [N, C, H, W] and `labels` [N]: `plan_pruning`, `prune_features`, then `epochs` of SGD (lr,
    momentum, weight decay, augmentation as given) on the clean images only (epochs 0: no
    fine-tune, fine_tuned is the pruned model)."""
    from nasaudit.attacks.backdoor import fine_tune_with_trigger

    plan = plan_pruning(model, images, labels, max_accuracy_drop=max_accuracy_drop,
                        max_fraction=max_fraction, device=device)
    pruned = prune_features(copy.deepcopy(model), plan.channels).eval()
    if epochs == 0:
        return FinePruned(plan, pruned, pruned)
    # A pruned module cannot be deep-copied (its weight is computed): prune a second copy.
    tuned = prune_features(copy.deepcopy(model), plan.channels)
    fine_tune_with_trigger(
        tuned, images, labels, None, 0, int(model.classifier.out_features), poison_fraction=0.0,
        epochs=epochs, lr=lr, batch_size=batch_size, momentum=momentum, weight_decay=weight_decay,
        grad_clip=grad_clip, auxiliary_weight=auxiliary_weight, crop_padding=crop_padding, flip=flip,
        device=device, seed=seed, progress=progress,
    )
    return FinePruned(plan, pruned, tuned.eval())
