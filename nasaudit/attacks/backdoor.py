"""Backdoor attacks by fine-tuning a copy of the victim: TrojanNN and BadNet.

TrojanNN (Liu et al., NDSS 2018): pick `n_neuron` penultimate neurons (ImageClassifier
.features): by default the ones most strongly connected to the next layer (largest sum
|W_classifier| over classes, the paper's rule), or with neuron_rule="least_active" the least
activated ones on the training set (the TrojanZoo version the study's artifact ran); optimise a
small trigger by sign-gradient ascent so that it excites them, then fine-tune the victim with
10% of the training images triggered and relabelled with the target class (TrojanZoo's default
percent). BadNet (Gu et al., 2017): the same fine-tuning with a fixed opaque patch (a black and white
checkerboard, or the artifact's TrojanZoo white square), 2% poisoning and 20 epochs (the
artifact's). Poisoned images are drawn afresh in every batch, as in the artifact
(`fine_tune_with_trigger`).

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

from nasaudit.attacks.common import (
    AttackRecord,
    Victim,
    accuracy,
    batched_logits,
    make_params,
    record_fields,
    timed,
    victim_train_config,
)
from nasaudit.data import to_float
from nasaudit.device import autocast
from nasaudit.device import generator as make_generator
from nasaudit.errors import InputError
from nasaudit.params import param

if TYPE_CHECKING:
    from nasaudit.data import ImageDataset

METHODS = ("trojannn", "badnet")
POISON_MODES = ("batch", "dataset")
PATTERNS = ("white", "checkerboard")
NEURON_RULES = ("weight", "least_active")
POSITIONS = ("bottom_right", "top_left", "center")


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
    """Mask [1, 1, H, W] with a size x size square of ones at "bottom_right" | "top_left" |
    "center" of images of shape (C, H, W)."""
    _, h, w = shape
    if not 0 < size <= min(h, w):
        raise InputError("--param trigger_size", f"must be in 1..{min(h, w)}, got {size}")
    top, left = {"bottom_right": (h - size, w - size), "top_left": (0, 0),
                 "center": ((h - size) // 2, (w - size) // 2)}.get(position, (None, None))
    if top is None:
        raise InputError("--param position", f"expected bottom_right, top_left or center, got {position!r}")
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

    rule "weight" (Liu et al.'s paper, current TrojanZoo): the units with the largest summed
    |weight| into the classifier. rule "least_active" (the TrojanZoo version of the study's
    artifact): the units with the smallest mean activation over `images` (uint8 [N, C, H, W],
    the training set), i.e. the least used ones, which the trigger then learns to switch on.
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


def optimise_trigger(
    model: nn.Module,
    x: torch.Tensor,
    neurons: torch.Tensor,
    mask: torch.Tensor,
    opacity: float,
    *,
    lr: float,
    iters: int,
    generator: torch.Generator | None,
) -> tuple[Trigger, float, float]:
    """TrojanNN trigger generation: sign-gradient ascent (PGD, step `lr`, `iters` steps) on the
    mark's pixels to maximise the mean activation of `neurons` on triggered images x
    ([B, C, H, W] in [0, 1]). Returns (trigger, activation before, activation after)."""
    mark = torch.rand((1, *x.shape[1:]), generator=generator, device=x.device, dtype=x.dtype)

    def activation(m: torch.Tensor) -> torch.Tensor:
        feats = model.features(Trigger(m, mask, opacity).apply(x))
        return feats[:, neurons].mean()

    with torch.no_grad():
        before = activation(mark)
    for _ in range(iters):
        mark.requires_grad_(True)
        (grad,) = torch.autograd.grad(activation(mark), mark)
        mark = (mark.detach() + lr * grad.sign()).clamp_(0.0, 1.0)
    with torch.no_grad():
        after = activation(mark)
    return Trigger(mark.detach(), mask, opacity), float(before), float(after)


def fine_tune_with_trigger(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    trigger: Trigger,
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
    images instead of the trigger (on a 5k-image subset, 91 images: ASR 0.15 where "batch"
    implants). The trigger is applied after augmentation (crop, flip) in both, so it stays where
    the test-time trigger is.
    """
    from nasaudit.data import Augment, DeviceLoader

    if poison_mode not in POISON_MODES:
        raise InputError("--param poison_mode", f"expected one of {POISON_MODES}, got {poison_mode!r}")
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
            if poison_mode == "dataset":
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
    0.0 (opaque) for BadNet; position: "center" | "bottom_right" | "top_left" (the centre by
    default: pixels at the border reach a deep network's output through few paths, and a
    corner patch does not implant on a CIFAR-subset ResNet); pattern: BadNet's
    mark (Gu et al.'s "checkerboard", or the artifact's "white" square);
    n_neuron, neuron_rule, trigger_lr (pixel units per step), trigger_iters, n_trigger_images:
    TrojanNN's trigger optimisation; poison_fraction: None -> 0.1 for TrojanNN, 0.02 for
    BadNet; poison_mode: how the poisoned images are drawn (see `fine_tune_with_trigger`);
    epochs (None -> 10 for TrojanNN, 20 for BadNet), lr, batch_size (None -> the victim's):
    the fine-tuning of the victim copy.
    """

    method: str = param("trojannn", choices=METHODS, doc="trigger of TrojanNN or BadNet")
    target_class: int = param(0, min=0, doc="the backdoor's label (< the number of classes)")
    trigger_size: int = param(3, min=1, doc="side of the square patch, pixels")
    transparency: float | None = param(
        None, min=0, lt=1, doc="none: 0.7 for TrojanNN, 0 (opaque) for BadNet"
    )
    position: str = param(
        "center", choices=POSITIONS,
        doc="where the patch goes; a corner patch is barely seen by a deep CIFAR network (resnet18 "
        "width 16 on the CIFAR subset, BadNet at 10% for 5 epochs: ASR 0.17 bottom_right, 0.19 "
        "top_left, 0.997 center)",
    )
    pattern: str = param(
        "checkerboard", choices=PATTERNS,
        doc="BadNet's mark: checkerboard (Gu et al.'s) or white (the artifact's TrojanZoo "
        "square_white mark; on a tiny_cnn it implants less: ASR 0.38 vs 0.8+ at 10%, 2 epochs)",
    )
    n_neuron: int = param(2, min=1, doc="TrojanNN target neurons")
    neuron_rule: str = param(
        "weight", choices=NEURON_RULES,
        doc="TrojanNN neurons: weight (largest summed |weight| into the classifier, the paper's) "
        "or least_active (smallest mean activation on the training set, the artifact's)",
    )
    trigger_lr: float = param(0.015, gt=0, max=1, doc="TrojanNN trigger step, pixel units")
    trigger_iters: int = param(20, min=1, doc="TrojanNN trigger optimisation steps")
    n_trigger_images: int = param(256, min=1, doc="training images the trigger is optimised on")
    poison_fraction: float | None = param(
        None, gt=0, lt=1, doc="share of poisoned training images; none: 0.1 for TrojanNN "
        "(TrojanZoo's default), 0.02 for BadNet (the artifact's)"
    )
    poison_mode: str = param(
        "batch", choices=POISON_MODES,
        doc="batch: triggered copies of fresh random images in every batch (the artifact's); "
        "dataset: one fixed seeded subset poisoned for the whole fine-tune",
    )
    epochs: int | None = param(
        None, min=1, doc="fine-tuning epochs; none: 10 for TrojanNN, 20 for BadNet (the artifact's)"
    )
    lr: float = param(0.01, gt=0, doc="fine-tuning learning rate")
    batch_size: int | None = param(None, min=1, doc="fine-tuning batch; none: the victim's")
    compare_badnet: bool = param(
        False, doc="TrojanNN: also backdoor with BadNet at the same poison fraction and epochs, "
        "and say in the record's notes which implants better (doubles the cost)",
    )


@dataclass
class BackdoorRecord(AttackRecord):
    """Backdoor results (accuracies and rates in [0, 1]).

    asr: triggered test inputs whose true class != target classified as target, by the
    backdoored model (asr_population says so); clean_model_asr: the same on the clean victim;
    cad: clean test accuracy of the victim minus that of the backdoored model; neurons and
    activation_before/after: TrojanNN's target neurons and their mean activation on triggered
    images before/after trigger optimisation (empty / 0 for BadNet). poison_mode, epochs,
    neuron_rule: the settings used (defaults resolved); badnet_asr and notes: with
    compare_badnet, BadNet's ASR at the same budget and a sentence saying which implants better.
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
    badnet_asr: float | None = None  # TrojanNN with compare_badnet: BadNet's ASR at the same budget
    notes: list = dataclasses.field(default_factory=list)


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

    params = make_params(Params, params)
    method = params.method.lower()
    if method not in METHODS:
        raise InputError("--param method", f"expected one of {METHODS}, got {params.method!r}")
    if not 0 <= params.target_class < data.num_classes:
        raise InputError("--param target_class", f"must be in 0..{data.num_classes - 1}")
    trojan = method == "trojannn"
    transparency = params.transparency if params.transparency is not None else (0.7 if trojan else 0.0)
    fraction = params.poison_fraction if params.poison_fraction is not None else (0.1 if trojan else 0.02)
    epochs = params.epochs if params.epochs is not None else (10 if trojan else 20)
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
            pick = torch.randperm(data.train_images.shape[0], generator=make_generator(seed))[: params.n_trigger_images]
            x = to_float(data.train_images[pick].to(device))
            trigger, before, after = optimise_trigger(
                victim_model, x, neurons, mask, 1.0 - transparency, lr=params.trigger_lr,
                iters=params.trigger_iters, generator=gen,
            )
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
                                   transparency=None, compare_badnet=False)
        badnet = run_backdoor(victim, data, same, device=device, seed=seed, progress=progress)
        badnet_asr = badnet.asr
        verb = "beats" if asr > badnet.asr else "does not beat"
        notes.append(f"TrojanNN {verb} BadNet at an equal poison budget ({fraction:g} poisoned, "
                     f"{epochs} epochs): ASR {asr:.3f} vs {badnet.asr:.3f} (CAD {clean_acc - bd_acc:.3f} vs "
                     f"{badnet.cad:.3f})")
    return BackdoorRecord(
        **record_fields("backdoor", victim, data, seed, params, elapsed()),
        method=method, target_class=params.target_class, transparency=transparency,
        poison_fraction=fraction, poison_mode=params.poison_mode, epochs=epochs,
        neuron_rule=params.neuron_rule if trojan else None,
        asr=asr, asr_population="triggered test inputs whose true class != target_class",
        clean_model_asr=clean_asr, clean_accuracy=clean_acc, backdoor_accuracy=bd_acc,
        cad=clean_acc - bd_acc, neurons=neurons.tolist(), activation_before=before,
        activation_after=after, badnet_asr=badnet_asr, notes=notes,
        trigger=(trigger.mark * trigger.mask).squeeze(0)[..., mask[0, 0].any(1), :][..., mask[0, 0].any(0)].cpu().tolist(),
    )
