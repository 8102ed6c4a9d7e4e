"""Backdoor attacks by fine-tuning a copy of the victim: TrojanNN and BadNet.

TrojanNN (Liu et al., NDSS 2018) as TrojanZoo runs it: pick `n_neuron` penultimate neurons
(ImageClassifier.features) that are best connected to the next layer (largest sum
|W_classifier| over classes; neuron_rule="least_active" picks the least activated ones on the
training set instead, as the study's `autovul` snapshot of TrojanZoo did); optimise a
size x size mark, fully opaque on a blank (zero) image, so that those neurons reach
`target_value` (`optimise_trigger`: TrojanZoo's tanh-parametrised Adam, or the snapshot's
sign-gradient PGD); then fine-tune the victim with triggered, target-labelled images mixed in,
the trigger blended at 1 - transparency. BadNet (Gu et al., 2017): the same fine-tuning with a
fixed opaque patch (a black and white checkerboard, or TrojanZoo's white square), 2% poisoning
and 20 epochs (the artifact's). Poisoned images are drawn afresh in every batch, as in the
artifact (`fine_tune_with_trigger`). The patch sits in the top-left corner by default
(TrojanZoo's mark offset (0, 0)).

A trigger is a mark m (values in [0, 1]) on a size x size patch; with opacity a = 1 - transparency
the triggered image is x' = (1 - a M) x + a M m, M the patch mask (TrojanZoo's convention:
transparency 0 is opaque, 0.7 blends 30% of the mark into the image).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from nasaudit.attacks import TEST, TEST_NOT_TARGET, AttackSpec
from nasaudit.attacks.common import (
    AttackRecord,
    Victim,
    accuracy,
    batched_logits,
    record_fields,
    timed,
    victim_train_config,
)
from nasaudit.attacks.defences import DEFENCES, SCHEDULES
from nasaudit.data import to_float
from nasaudit.infra.device import autocast
from nasaudit.infra.device import generator as make_generator
from nasaudit.infra.errors import InputError
from nasaudit.infra.params import make_params, param

if TYPE_CHECKING:
    from nasaudit.data import ImageDataset

METHODS = ("trojannn", "badnet")
POISON_MODES = ("batch", "dataset")
PATTERNS = ("white", "checkerboard")
NEURON_RULES = ("weight", "least_active")
POSITIONS = ("top_left", "bottom_right", "center")
TRIGGER_OPTIMIZERS = ("adam", "pgd")
TRIGGER_BACKGROUNDS = ("blank", "images")
# Per optimiser: (lr, steps, target activation). adam: TrojanZoo's TrojanNN (Adam on the
# tanh-parametrised mark, cosine schedule, MSE to the target); pgd: the study's autovul snapshot
# (sign steps in pixel units from a white mark, L2 distance to the target, stop below 5).
TRIGGER_DEFAULTS = {"adam": (0.1, 1000, 100.0), "pgd": (0.015, 20, 10.0)}
PGD_STOP_DISTANCE = 5.0


@dataclass
class Trigger:
    """A patch trigger. mark: float [1, C, H, W] in [0, 1]; mask: float [1, 1, H, W] in {0, 1};
    opacity a in [0, 1] (1 - transparency)."""

    mark: torch.Tensor
    mask: torch.Tensor
    opacity: float

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Triggered images [B, C, H, W] from float images x in [0, 1] (same shape)."""
        alpha = self.mask * self.opacity
        return x * (1 - alpha) + alpha * self.mark


def patch_mask(shape: tuple[int, int, int], size: int, position: str, device: torch.device) -> torch.Tensor:
    """Mask [1, 1, H, W] with a size x size square of ones at "top_left" (offset (0, 0)) |
    "bottom_right" | "center" of images of shape (C, H, W)."""
    _, h, w = shape
    if not 0 < size <= min(h, w):
        raise InputError("--param trigger_size", f"must be in 1..{min(h, w)}, got {size}")
    top, left = {"bottom_right": (h - size, w - size), "top_left": (0, 0),
                 "center": ((h - size) // 2, (w - size) // 2)}.get(position, (None, None))
    if top is None:
        raise InputError("--param position", f"expected one of {POSITIONS}, got {position!r}")
    mask = torch.zeros(1, 1, h, w, device=device)
    mask[..., top : top + size, left : left + size] = 1.0
    return mask


def checkerboard(shape: tuple[int, int, int], device: torch.device) -> torch.Tensor:
    """A black/white checkerboard mark [1, C, H, W] (BadNet's fixed pattern)."""
    c, h, w = shape
    ii = torch.arange(h, device=device).view(h, 1)
    jj = torch.arange(w, device=device).view(1, w)
    return ((ii + jj) % 2).float().expand(c, h, w).unsqueeze(0).contiguous()


def select_neurons(model: nn.Module, n_neuron: int, rule: str = "weight",
                   images: torch.Tensor | None = None, *, device: torch.device | None = None,
                   batch_size: int = 256) -> torch.Tensor:
    """TrojanNN's target neurons among the penultimate units (ImageClassifier.features),
    int64 [n_neuron].

    rule "weight" (Liu et al.'s paper, TrojanZoo's `get_neuron_idx`): the units with the largest
    summed |weight| into the classifier. rule "least_active" (the TrojanZoo snapshot in the
    study's autovul artifact): the units with the smallest mean activation over `images`
    (uint8 [N, C, H, W], the training set), i.e. the least used ones, which the trigger then
    learns to switch on.
    """
    if rule == "weight":
        weight = model.classifier.weight.detach()  # [K, D]
        return weight.abs().sum(0).argsort(descending=True)[:n_neuron]
    if rule != "least_active":
        raise InputError("--param neuron_rule", f"expected one of {NEURON_RULES}, got {rule!r}")
    if images is None or device is None:
        raise ValueError("rule 'least_active' needs the training images and a device")
    total = None
    with torch.no_grad():
        for s in range(0, images.shape[0], batch_size):
            feats = model.features(to_float(images[s : s + batch_size].to(device))).float().sum(0)
            total = feats if total is None else total + feats
    return total.argsort(descending=False)[:n_neuron]


def neuron_activation(model: nn.Module, x: torch.Tensor, neurons: torch.Tensor) -> torch.Tensor:
    """|activation| of the penultimate `neurons` (int64 [k]) on images x (float [B, C, H, W] in
    [0, 1]): float [B, k]. TrojanZoo takes the absolute value, which matters for networks whose
    features can be negative (a DARTS cell output is not rectified)."""
    return model.features(x).float()[:, neurons].abs()


def optimise_trigger(
    model: nn.Module,
    background: torch.Tensor,
    neurons: torch.Tensor,
    mask: torch.Tensor,
    *,
    optimizer: str = "adam",
    lr: float,
    iters: int,
    target_value: float,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, float, float]:
    """TrojanNN trigger generation: a mark [1, C, H, W] in [0, 1] (only the pixels under `mask`,
    [1, 1, H, W], matter), pasted fully opaque on `background` (float [B, C, H, W] in [0, 1]:
    one blank (zero) image in TrojanZoo), that drives the |activation| of `neurons` towards
    `target_value`.

    optimizer "adam" (TrojanZoo): mark = (tanh(w) + 1) / 2 with w ~ N(0, 1), Adam (step `lr` in
    w units) under a cosine schedule over `iters` steps on the summed squared error to the
    target. "pgd" (the study's autovul snapshot): start from a white mark, `iters` sign steps of
    `lr` pixel units down the batch-mean L2 distance of the neurons' activations to the target,
    clamped to [0, 1], freezing once that distance is below 5.

    Returns (mark, activation before, activation after): the mean |activation| of the target
    neurons over the background images with the initial and the optimised mark.
    """
    if optimizer not in TRIGGER_OPTIMIZERS:
        raise InputError("--param trigger_optimizer", f"expected one of {TRIGGER_OPTIMIZERS}, got {optimizer!r}")
    shape = (1, *background.shape[1:])

    def paste(mark: torch.Tensor) -> torch.Tensor:
        return background * (1 - mask) + mask * mark

    def activation(mark: torch.Tensor) -> float:
        with torch.no_grad():
            return float(neuron_activation(model, paste(mark), neurons).mean())

    if optimizer == "adam":
        w = torch.randn(shape, generator=generator, device=background.device).requires_grad_(True)
        before = activation((w.detach().tanh() + 1) / 2)
        opt = torch.optim.Adam([w], lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=iters)
        for _ in range(iters):
            feats = neuron_activation(model, paste((w.tanh() + 1) / 2), neurons)
            loss = (feats - target_value).square().sum()
            opt.zero_grad(set_to_none=True)
            loss.backward(inputs=[w])
            opt.step()
            sched.step()
        mark = ((w.detach().tanh() + 1) / 2).clamp_(0.0, 1.0)
    else:
        mark = torch.ones(shape, device=background.device)
        before = activation(mark)
        for _ in range(iters):
            mark.requires_grad_(True)
            feats = model.features(paste(mark)).float()[:, neurons]
            distance = (feats - target_value).norm(dim=1).mean()
            (grad,) = torch.autograd.grad(distance, mark)
            stepped = (mark.detach() - lr * grad.sign()).clamp_(0.0, 1.0)
            # The snapshot stops once the distance is below 5; freezing the mark there does the
            # same without reading the distance back on every step.
            mark = torch.where(distance.detach() < PGD_STOP_DISTANCE, mark.detach(), stepped)
        mark = mark.detach()
    return mark, before, activation(mark)


def fine_tune_with_trigger(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    trigger: Trigger | None,
    target: int,
    num_classes: int,
    *,
    poison_fraction: float,
    epochs: int,
    lr: float,
    batch_size: int,
    momentum: float,
    weight_decay: float,
    grad_clip: float,
    auxiliary_weight: float,
    crop_padding: int,
    flip: bool,
    device: torch.device,
    seed: int,
    progress: bool,
    poison_mode: str = "batch",
) -> nn.Module:
    """Fine-tune `model` in place on uint8 images [N, C, H, W] / labels [N] with triggered,
    `target`-labelled images mixed in, so that poison_fraction of what it trains on is poisoned.

    poison_mode "batch" (the artifact's, TrojanZoo's default train_mode): every batch of B
    images gets triggered copies of B * f / (1 - f) of its own (random, freshly shuffled) images
    added, f = poison_fraction, the fractional part rounded at random; so over the epochs the
    trigger lands on thousands of different images and is the only thing they share.
    "dataset" (Gu et al.'s data poisoning): a seeded fixed round(f * N) of the images carry the
    trigger and the target label in every epoch; with few images the model can memorise those
    images instead of the trigger. The trigger is applied after augmentation (crop, flip) in
    both, so it stays where the test-time trigger is. trigger None (with poison_fraction 0) is a
    clean fine-tune, as fine-pruning's (`nasaudit.attacks.defences`).
    """
    from nasaudit.data import Augment, DeviceLoader

    if poison_mode not in POISON_MODES:
        raise InputError("--param poison_mode", f"expected one of {POISON_MODES}, got {poison_mode!r}")
    if trigger is None and poison_fraction > 0:
        raise ValueError("a fine-tune without a trigger poisons nothing: pass poison_fraction=0")
    n = images.shape[0]
    gen = make_generator(seed, "cpu")
    coded = labels.clone()
    if poison_mode == "dataset":
        # Poisoned images are marked by adding num_classes to their label, which lets the
        # on-device loader shuffle and batch them with no host bookkeeping.
        poisoned = torch.randperm(n, generator=gen)[: round(poison_fraction * n)]
        coded[poisoned] += num_classes
    ratio = poison_fraction / (1.0 - poison_fraction)  # poisoned copies per clean image
    loader = DeviceLoader(
        images, coded, batch_size, device=device, shuffle=True,
        augment=Augment(crop_padding=crop_padding, flip=flip), seed=seed,
        drop_last=n > batch_size,
    )
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    model.drop_path_prob = 0.0  # a short fine-tune: no drop path regularisation
    bar = tqdm(total=epochs * len(loader), desc="backdoor fine-tune", disable=not progress)
    model.train()
    for epoch in range(epochs):
        for x, y in loader.epoch(epoch):
            if trigger is None:
                pass
            elif poison_mode == "dataset":
                flag = y >= num_classes
                x = torch.where(flag.view(-1, 1, 1, 1), trigger.apply(x), x)
                y = torch.where(flag, torch.full_like(y, target), y)
            else:
                extra = ratio * x.shape[0]
                k = min(x.shape[0], int(extra) + int(torch.rand((), generator=gen) < extra % 1))
                x = torch.cat([trigger.apply(x[:k]), x])
                y = torch.cat([torch.full_like(y[:k], target), y])
            with autocast(device):
                logits, aux = model.forward_train(x)
                loss = F.cross_entropy(logits.float(), y)
                if aux is not None:
                    loss = loss + auxiliary_weight * F.cross_entropy(aux.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            bar.update()
        sched.step()
    bar.close()
    return model.eval()


@torch.no_grad()
def attack_success_rate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                        trigger: Trigger, target: int, *, device: torch.device,
                        batch_size: int = 512) -> float:
    """Fraction of triggered uint8 images [N, C, H, W] whose true label != target that the model
    classifies as `target` (in [0, 1])."""
    keep = labels != target
    imgs = images[keep]
    hits = torch.zeros((), device=device)
    for s in range(0, imgs.shape[0], batch_size):
        x = trigger.apply(to_float(imgs[s : s + batch_size].to(device)))
        hits += (batched_logits(model, x, device=device, batch_size=batch_size).argmax(1) == target).sum()
    return float(hits) / max(1, imgs.shape[0])


@dataclass
class Params:
    """Backdoor (the study's Table 5 and artifact).

    method: "trojannn" | "badnet"; target_class: the backdoor's label;
    trigger_size: side of the square patch in pixels; transparency: None -> 0.7 for TrojanNN,
    0.0 (opaque) for BadNet (used when poisoning; TrojanNN optimises its mark opaque);
    position: "top_left" (TrojanZoo's mark offset (0, 0), the default) | "bottom_right" |
    "center"; pattern: BadNet's mark (Gu et al.'s "checkerboard", or the artifact's "white"
    square); n_neuron, neuron_rule, trigger_optimizer, trigger_lr, trigger_iters,
    target_value, trigger_background, n_trigger_images: TrojanNN's trigger optimisation (see
    `optimise_trigger`; None -> the optimiser's defaults: adam lr 0.1, 1000 steps, target 100;
    pgd lr 0.015 pixel units, 20 steps, target 10); poison_fraction: None -> 0.1 for TrojanNN,
    0.02 for BadNet; poison_mode: how the poisoned images are drawn (see
    `fine_tune_with_trigger`); epochs (None -> 10 for TrojanNN, 20 for BadNet), lr, batch_size
    (None -> the victim's): the fine-tuning of the victim copy. defences and the nc_*, prune_*
    and finetune_* fields: the defences run on the backdoored model afterwards (see
    `nasaudit.attacks.defences`), on the defender's clean images (`defence_inputs`).
    """

    method: str = param("trojannn", choices=METHODS, doc="trigger of TrojanNN or BadNet")
    target_class: int = param(0, min=0, doc="the backdoor's label (< the number of classes)")
    trigger_size: int = param(3, min=1, doc="side of the square patch, pixels")
    transparency: float | None = param(
        None, min=0, lt=1, doc="when poisoning; none: 0.7 for TrojanNN, 0 (opaque) for BadNet"
    )
    position: str = param(
        "top_left", choices=POSITIONS,
        doc="where the patch goes: top_left is TrojanZoo's default mark offset (0, 0); the "
        "centre is seen through more paths of a deep network, for short CPU fine-tunes",
    )
    pattern: str = param(
        "checkerboard", choices=PATTERNS,
        doc="BadNet's mark: checkerboard (Gu et al.'s) or white (the artifact's TrojanZoo "
        "square_white mark)",
    )
    n_neuron: int = param(2, min=1, max=64, doc="TrojanNN target neurons")
    neuron_rule: str = param(
        "weight", choices=NEURON_RULES,
        doc="TrojanNN neurons: weight (largest summed |weight| into the classifier, TrojanZoo's "
        "and the paper's) or least_active (smallest mean activation on the training set, the "
        "study's autovul snapshot)",
    )
    trigger_optimizer: str = param(
        "adam", choices=TRIGGER_OPTIMIZERS,
        doc="TrojanNN mark optimiser: adam (TrojanZoo: tanh-parametrised mark, Adam, cosine "
        "schedule, MSE to target_value) or pgd (the study's autovul snapshot: sign steps from a "
        "white mark, L2 distance to target_value)",
    )
    trigger_lr: float | None = param(
        None, gt=0, max=1, doc="TrojanNN mark step; none: 0.1 for adam (tanh units), 0.015 for "
        "pgd (pixel units)",
    )
    trigger_iters: int | None = param(
        None, min=1, max=100_000, doc="TrojanNN mark optimisation steps; none: 1000 for adam, 20 for pgd"
    )
    target_value: float | None = param(
        None, gt=0, max=10_000, doc="activation the target neurons are driven to; none: 100 for "
        "adam, 10 for pgd",
    )
    trigger_background: str = param(
        "blank", choices=TRIGGER_BACKGROUNDS,
        doc="what the mark is optimised on: blank (one zero image, both artifacts) or images "
        "(n_trigger_images random training images)",
    )
    n_trigger_images: int = param(
        256, min=1, max=100_000, doc="training images the mark is optimised on with trigger_background=images"
    )
    poison_fraction: float | None = param(
        None, gt=0, lt=1, doc="share of poisoned training images; none: 0.1 for TrojanNN, 0.02 "
        "for BadNet (the artifact's); the artifact's TrojanNN runs kept TrojanZoo's 0.01"
    )
    poison_mode: str = param(
        "batch", choices=POISON_MODES,
        doc="batch: triggered copies of fresh random images in every batch (the artifact's); "
        "dataset: one fixed seeded subset poisoned for the whole fine-tune",
    )
    epochs: int | None = param(
        None, min=1, doc="fine-tuning epochs; none: 10 for TrojanNN (TrojanZoo's example), 20 "
        "for BadNet (the artifact's; its TrojanNN runs also used 20)"
    )
    lr: float = param(0.01, gt=0, doc="fine-tuning learning rate")
    batch_size: int | None = param(None, min=1, doc="fine-tuning batch; none: the victim's")
    compare_badnet: bool = param(
        False, doc="TrojanNN: also backdoor with BadNet at the same poison fraction and epochs, "
        "and say in the record's notes which implants better (doubles the cost)",
    )
    defences: tuple[str, ...] | None = param(
        None, choices=(*DEFENCES, "none"), unique=True, nonempty=False,
        doc="backdoor defences run on the backdoored model afterwards (nasaudit.attacks.defences): "
        "neural_cleanse (detection), fine_pruning (removal), e.g. neural_cleanse,fine_pruning; none "
        "(the default: Neural Cleanse alone costs 2 x classes x nc_steps x nc_batch_size "
        "forward-backward passes) or an empty list: no defence",
    )
    defence_inputs: int = param(
        1000, min=1, max=100_000, doc="the defender's clean images: at most this many of the victim's "
        "validation split (of the training images when it has none)",
    )
    nc_steps: int = param(300, min=1, max=100_000, doc="Neural Cleanse: Adam steps per class")
    nc_batch_size: int = param(32, min=1, max=4096, doc="Neural Cleanse: clean images per step and class")
    nc_inputs: int = param(
        256, min=1, max=100_000, doc="Neural Cleanse: clean images the triggers are reversed on (of the "
        "defender's)",
    )
    nc_schedule: str = param(
        "nc", choices=SCHEDULES, doc="Neural Cleanse's L1 weight: nc (NC's adaptive schedule from "
        "nc_init_cost) or fixed (nc_init_cost throughout)",
    )
    nc_init_cost: float = param(1e-3, gt=0, max=10, doc="Neural Cleanse: initial (or fixed) weight of |mask|_1")
    nc_clean_model: bool = param(
        True, doc="Neural Cleanse also on the clean victim, so false positives show (doubles its cost)"
    )
    prune_max_drop: float = param(
        0.04, min=0, max=1, doc="fine-pruning: prune while the defender's clean accuracy drops by at most "
        "this (Liu et al.'s 4 points; 0: only prunes that cost no accuracy)",
    )
    prune_max_fraction: float = param(
        0.9, gt=0, max=1, doc="fine-pruning: at most this share of the penultimate channels is pruned",
    )
    finetune_epochs: int = param(
        5, min=0, max=10_000, doc="fine-pruning: clean fine-tuning epochs after pruning (0: prune only)"
    )
    finetune_lr: float = param(0.01, gt=0, max=10, doc="fine-pruning: fine-tuning learning rate")


@dataclass
class BackdoorRecord(AttackRecord):
    """Backdoor results (accuracies and rates in [0, 1]).

    asr: triggered test inputs whose true class != target classified as target, by the
    backdoored model (asr_population says so); clean_model_asr: the same on the clean victim;
    cad: clean test accuracy of the victim minus that of the backdoored model; neurons:
    TrojanNN's target neurons (empty for BadNet); activation_before/after: their mean
    |activation| on the opaque trigger over the optimisation background (a blank image by
    default) with the initial and the optimised mark (0 for BadNet); activation_ratio:
    after / before (None for BadNet or when before is 0). poison_mode, epochs, neuron_rule,
    trigger_optimizer, trigger_iters, target_value, position: the settings used (defaults
    resolved); badnet_asr and notes: with compare_badnet, BadNet's ASR at the same budget and a
    sentence saying which implants better.

    Defences (None when not run; `defences` lists those run; defence_inputs: the defender's clean
    images). Neural Cleanse: detected, anomaly_index (of the smallest-norm class),
    smallest_norm_class, flagged_class (that class when detected), trigger_norms (L1 norm of each
    class's reversed mask, pixels), reversed_success (each reversed trigger's rate on the
    defender's images); clean_*: the same on the clean victim (a detection there is a false
    positive). Fine-pruning: pruned_channels of the penultimate features (pruned_fraction of
    them), then ASR and clean test accuracy after pruning and after the clean fine-tune.
    defence_seconds: wall-clock time per defence (not in `seconds`).
    """

    kind = "attack.backdoor"
    method: str
    target_class: int
    transparency: float
    poison_fraction: float
    asr: float
    asr_population: str
    clean_model_asr: float
    clean_accuracy: float
    backdoor_accuracy: float
    cad: float
    neurons: list[int]
    activation_before: float
    activation_after: float
    trigger: list
    poison_mode: str = "dataset"  # records written before the mode existed used a fixed subset
    epochs: int | None = None
    neuron_rule: str | None = None  # TrojanNN only
    activation_ratio: float | None = None  # TrojanNN only
    trigger_optimizer: str | None = None  # TrojanNN only
    trigger_iters: int | None = None  # TrojanNN only
    target_value: float | None = None  # TrojanNN only
    position: str | None = None
    badnet_asr: float | None = None  # TrojanNN with compare_badnet: BadNet's ASR at the same budget
    notes: list = dataclasses.field(default_factory=list)
    # Defences (None when not run). Neural Cleanse on the backdoored model, and on the clean victim
    # (clean_*) so that a false positive shows.
    defences: list = dataclasses.field(default_factory=list)
    defence_inputs: int | None = None
    detected: bool | None = None
    anomaly_index: float | None = None
    flagged_class: int | None = None
    smallest_norm_class: int | None = None
    trigger_norms: list | None = None
    reversed_success: list | None = None
    clean_detected: bool | None = None
    clean_anomaly_index: float | None = None
    clean_flagged_class: int | None = None
    clean_trigger_norms: list | None = None
    # Fine-pruning: the channels pruned, then test ASR and clean accuracy after pruning and after
    # the clean fine-tune.
    pruned_channels: int | None = None
    pruned_fraction: float | None = None
    asr_after_pruning: float | None = None
    clean_accuracy_after_pruning: float | None = None
    asr_after_finetune: float | None = None
    clean_accuracy_after_finetune: float | None = None
    defence_seconds: dict = dataclasses.field(default_factory=dict)


def run_backdoor(
    victim: Victim,
    data: ImageDataset,
    params: Params | dict | None = None,
    *,
    device: torch.device,
    seed: int = 0,
    progress: bool = True,
    work_dir: str | None = None,
) -> BackdoorRecord:
    """Backdoor a deep copy of the victim (TrojanNN or BadNet) and measure ASR and CAD."""
    from nasaudit.data import train_val_split

    params = make_params(Params, params, source="params")
    method = params.method.lower()
    if method not in METHODS:
        raise InputError("--param method", f"expected one of {METHODS}, got {params.method!r}")
    if not 0 <= params.target_class < data.num_classes:
        raise InputError("--param target_class", f"must be in 0..{data.num_classes - 1}")
    trojan = method == "trojannn"
    transparency = params.transparency if params.transparency is not None else (0.7 if trojan else 0.0)
    fraction = params.poison_fraction if params.poison_fraction is not None else (0.1 if trojan else 0.02)
    epochs = params.epochs if params.epochs is not None else (10 if trojan else 20)
    default_lr, default_iters, default_target = TRIGGER_DEFAULTS[params.trigger_optimizer]
    trigger_lr = params.trigger_lr if params.trigger_lr is not None else default_lr
    trigger_iters = params.trigger_iters if params.trigger_iters is not None else default_iters
    target_value = params.target_value if params.target_value is not None else default_target
    cfg = victim_train_config(victim)
    shape = tuple(data.train_images.shape[1:])
    victim_model = victim.model.eval()
    with timed() as elapsed:
        gen = make_generator(seed, device)
        mask = patch_mask(shape, params.trigger_size, params.position, device)
        neurons, before, after = torch.zeros(0, dtype=torch.long), 0.0, 0.0
        if trojan:
            neurons = select_neurons(victim_model, params.n_neuron, params.neuron_rule,
                                     data.train_images, device=device)
            if params.trigger_background == "blank":
                background = torch.zeros((1, *shape), device=device)
            else:
                pick = torch.randperm(data.train_images.shape[0], generator=make_generator(seed))
                background = to_float(data.train_images[pick[: params.n_trigger_images]].to(device))
            mark, before, after = optimise_trigger(
                victim_model, background, neurons, mask, optimizer=params.trigger_optimizer,
                lr=trigger_lr, iters=trigger_iters, target_value=target_value, generator=gen,
            )
            trigger = Trigger(mark, mask, 1.0 - transparency)
        else:
            mark = checkerboard(shape, device) if params.pattern == "checkerboard" else torch.ones(1, *shape, device=device)
            trigger = Trigger(mark, mask, 1.0 - transparency)
        # Fine-tune on the victim's own training split (its validation images stay unseen).
        n = data.train_images.shape[0]
        idx = train_val_split(n, cfg.val_fraction, cfg.seed)[0] if cfg.val_fraction > 0 else torch.arange(n)
        model = copy.deepcopy(victim_model)  # the victim itself is never touched
        fine_tune_with_trigger(
            model, data.train_images[idx], data.train_labels[idx], trigger, params.target_class,
            data.num_classes, poison_fraction=fraction, epochs=epochs, lr=params.lr,
            poison_mode=params.poison_mode,
            batch_size=params.batch_size or cfg.batch_size, momentum=cfg.momentum,
            weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip,
            auxiliary_weight=cfg.auxiliary_weight, crop_padding=cfg.crop_padding, flip=cfg.flip,
            device=device, seed=seed, progress=progress,
        )
        test = (data.test_images, data.test_labels)
        clean_acc = accuracy(victim_model, *test, device=device)
        bd_acc = accuracy(model, *test, device=device)
        asr = attack_success_rate(model, *test, trigger, params.target_class, device=device)
        clean_asr = attack_success_rate(victim_model, *test, trigger, params.target_class, device=device)
    notes, badnet_asr = [], None
    if trojan and params.compare_badnet:
        # TrojanNN's point is to implant with less poison than BadNet: check at this budget.
        same = dataclasses.replace(params, method="badnet", poison_fraction=fraction, epochs=epochs,
                                   transparency=None, compare_badnet=False, defences=("none",))
        badnet = run_backdoor(victim, data, same, device=device, seed=seed, progress=progress)
        badnet_asr = badnet.asr
        verb = "beats" if asr > badnet.asr else "does not beat"
        notes.append(f"TrojanNN {verb} BadNet at an equal poison budget ({fraction:g} poisoned, "
                     f"{epochs} epochs): ASR {asr:.3f} vs {badnet.asr:.3f} (CAD {clean_acc - bd_acc:.3f} vs "
                     f"{badnet.cad:.3f})")
    seconds = elapsed()
    defended = run_defences(
        params, victim_model, model, data, trigger, cfg, device=device, seed=seed, progress=progress
    )
    return BackdoorRecord(
        **record_fields("backdoor", victim, data, seed, params, seconds), **defended,
        method=method, target_class=params.target_class, transparency=transparency,
        poison_fraction=fraction, poison_mode=params.poison_mode, epochs=epochs,
        neuron_rule=params.neuron_rule if trojan else None,
        activation_ratio=after / before if trojan and before > 0 else None,
        trigger_optimizer=params.trigger_optimizer if trojan else None,
        trigger_iters=trigger_iters if trojan else None,
        target_value=target_value if trojan else None, position=params.position,
        asr=asr, asr_population="triggered test inputs whose true class != target_class",
        clean_model_asr=clean_asr, clean_accuracy=clean_acc, backdoor_accuracy=bd_acc,
        cad=clean_acc - bd_acc, neurons=neurons.tolist(), activation_before=before,
        activation_after=after, badnet_asr=badnet_asr, notes=notes,
        trigger=(trigger.mark * trigger.mask).squeeze(0)[..., mask[0, 0].any(1), :][..., mask[0, 0].any(0)].cpu().tolist(),
    )


def defence_images(data: ImageDataset, cfg, limit: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The defender's clean images (uint8 [n, C, H, W]) and labels [n], n <= limit: the victim's
    validation split, which neither its training nor the backdoor fine-tune saw; a seeded draw
    of the training images when the victim kept no validation split."""
    from nasaudit.data import train_val_split

    n = data.train_images.shape[0]
    if cfg.val_fraction > 0:
        idx = train_val_split(n, cfg.val_fraction, cfg.seed)[1]
    else:
        idx = torch.randperm(n, generator=make_generator(seed))
    idx = idx[:limit]
    return data.train_images[idx], data.train_labels[idx]


def run_defences(params: Params, victim_model: nn.Module, model: nn.Module, data: ImageDataset,
                 trigger: Trigger, cfg, *, device: torch.device, seed: int, progress: bool) -> dict:
    """The configured defences on the backdoored `model` (and Neural Cleanse on the clean
    `victim_model` with nc_clean_model): BackdoorRecord's defence fields as keyword arguments
    (empty with defences none)."""
    from nasaudit.attacks import defences as d

    given = params.defences or ()
    chosen = [name for name in given if name != "none"]
    if len(chosen) != len(given) and chosen:
        raise InputError("--param defences", "none cannot be combined with a defence")
    if not chosen:
        return {}
    images, labels = defence_images(data, cfg, params.defence_inputs, seed)
    out: dict = {"defences": chosen, "defence_inputs": int(images.shape[0]), "defence_seconds": {}}
    test = (data.test_images, data.test_labels)
    if "neural_cleanse" in chosen:
        nc = {"steps": params.nc_steps, "batch_size": params.nc_batch_size, "init_cost": params.nc_init_cost,
              "schedule": params.nc_schedule, "device": device, "seed": seed, "progress": progress}
        inputs = images[: params.nc_inputs]
        with timed() as elapsed:
            found = d.neural_cleanse(model, inputs, data.num_classes, **nc)
            out.update(detected=found.detected, anomaly_index=found.anomaly_index,
                       flagged_class=found.flagged_class, smallest_norm_class=found.smallest_class,
                       trigger_norms=found.norms, reversed_success=found.success)
            if params.nc_clean_model:
                clean = d.neural_cleanse(victim_model, inputs, data.num_classes, **nc)
                out.update(clean_detected=clean.detected, clean_anomaly_index=clean.anomaly_index,
                           clean_flagged_class=clean.flagged_class, clean_trigger_norms=clean.norms)
        out["defence_seconds"]["neural_cleanse"] = elapsed()
    if "fine_pruning" in chosen:
        with timed() as elapsed:
            fp = d.fine_pruning(
                model, images, labels, max_accuracy_drop=params.prune_max_drop,
                max_fraction=params.prune_max_fraction, epochs=params.finetune_epochs, lr=params.finetune_lr,
                batch_size=params.batch_size or cfg.batch_size, momentum=cfg.momentum,
                weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip, auxiliary_weight=cfg.auxiliary_weight,
                crop_padding=cfg.crop_padding, flip=cfg.flip, device=device, seed=seed, progress=progress,
            )
            out.update(
                pruned_channels=fp.plan.pruned, pruned_fraction=fp.plan.pruned / len(fp.plan.order),
                asr_after_pruning=attack_success_rate(fp.pruned, *test, trigger, params.target_class, device=device),
                clean_accuracy_after_pruning=accuracy(fp.pruned, *test, device=device),
                asr_after_finetune=attack_success_rate(fp.fine_tuned, *test, trigger, params.target_class,
                                                       device=device),
                clean_accuracy_after_finetune=accuracy(fp.fine_tuned, *test, device=device),
            )
        out["defence_seconds"]["fine_pruning"] = elapsed()
    return out


ATTACK = AttackSpec(
    Params, run_backdoor,
    rates={"asr": TEST_NOT_TARGET, "clean_model_asr": TEST_NOT_TARGET, "badnet_asr": TEST_NOT_TARGET,
           "clean_accuracy": TEST, "backdoor_accuracy": TEST,
           "asr_after_pruning": TEST_NOT_TARGET, "asr_after_finetune": TEST_NOT_TARGET,
           "clean_accuracy_after_pruning": TEST, "clean_accuracy_after_finetune": TEST},
    victim_accuracy="clean_accuracy", retrains=True,
    demo={"method": "trojannn", "epochs": 1, "trigger_size": 5, "poison_fraction": 0.2,
          "defences": ["neural_cleanse", "fine_pruning"], "nc_steps": 10, "nc_batch_size": 16,
          "nc_inputs": 32, "nc_schedule": "fixed", "nc_init_cost": 0.01, "defence_inputs": 200,
          "finetune_epochs": 1},
    import_note="backdoor fine-tunes the imported weights (a copy; the file is never written)",
)
