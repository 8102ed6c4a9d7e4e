"""Model-reuse attack (Ji et al., "Model-Reuse Attacks on Deep Learning Systems", CCS 2018).

A published feature extractor (the *primitive*) is perturbed so that a *host* system that reuses
it for its own, different task misclassifies chosen target inputs into a class the adversary
picks, while the host's other inputs behave as before.

Roles (the default, task="transfer"):
  * primitive: a network trained on classes 0..P-1 of a data set (P = `primitive_classes`, 5 of
    the 10 of CIFAR-10 or digits), up to its penultimate features (`ImageClassifier.features`,
    [B, D]). A victim with P outputs (trained on `load_dataset(..., num_classes=P)`) is the
    primitive as given; a victim trained on every class has already learnt the host's classes,
    so its architecture is retrained from scratch with its recipe on classes 0..P-1 only
    (`primitive_epochs`; see `clean_primitive`).
  * host: a user's system for the other classes P..K-1: a new linear or small-MLP head trained on
    the primitive's features of the user's own images of those classes (the host split); for
    elasticity the user then fine-tunes the last `finetune_blocks` blocks of the primitive with it.
  * adversary (Ji et al.'s "easy" setting): knows the primitive's weights, the target inputs,
    `n_reference` inputs of the target class and `aux_size` unlabelled inputs, none in the host
    split; never the host split, the host, or any host label. region="surrogate" names the
    stronger adversary that also holds the labels of its auxiliary host-task inputs.
task="same" is the older, easier setting: the host relearns all the victim's classes on the
victim itself (half of the training split it was trained on).

Splits, all drawn from the attack seed: the host-task training images are split into the host
split (`host_fraction` of them) and the adversary's pool; the references (target class) and, by
default, the auxiliary inputs come from the pool (aux_domain="primitive": from the primitive's
classes instead). The targets are host-task test inputs whose true class is not the target
class; the other host-task test inputs (the evaluation inputs) measure evasiveness.

The adversary's method, after the paper:
  1. the target class's feature region. region "centroid" (default, needs no labels): the ball
     around the references' mean feature whose squared radius is `region_radius` times their
     mean squared distance to it. The centre is taken under the *poisoned* primitive: the host
     is trained on poisoned features, so a target must reach the references where they are
     now, while the drift term (3) keeps them, and every other input, where they were. Region
     "surrogate" (the stronger adversary): where a ridge regression of the auxiliary inputs'
     one-hot host labels, refitted in closed form at every step on their poisoned features (so
     differentiable in them) on a fresh random `anchor_batch` of them, votes for the target
     class by `surrogate_margin`. Region "classifier" (task="same" only): where the published
     model's own head scores the target class `margin` logits above every other class;
  2. a saliency per primitive parameter: high when moving it pulls the targets' features (and
     those of their `n_neighbors` semantic neighbours, random shifts) toward the references'
     centre c, low when it also pulls the auxiliary inputs toward c (those not of the target
     class when their labels are known): s = |g| / mean|g| - aux_weight |h| / mean|h|,
     g = dL_target/dw, h = dL_aux/dw; only the top `param_fraction` of the parameters by s are
     ever changed;
  3. Adam steps on those parameters only (element-wise step step_fraction * budget *
     ||w||_2 / sqrt(k), k the number selected) of the targets' hinge (d^2 - r^2, or the
     surrogate's margin shortfall) plus drift_weight * the features' squared drift on a fresh
     `anchor_batch` of the auxiliary inputs and references, keeping ||dw||_2 <= budget ||w||_2
     by projection; it stops as soon as every target is inside the region. Small steps and a
     heavy drift term are what keep the other inputs' host predictions as they were;
  4. as in the paper, one malicious primitive per target input (`joint` crafts one for all).

Where it works and where it does not, measured on seeds the defaults were not chosen on:
`python benchmarks/model_reuse.py` (its docstring has the commands) prints ASR with its exact
interval and the changed predictions against the reseed floor for a digits or CIFAR-subset
primitive; docs/ATTACKS.md quotes its output.

The hosts on the clean and on the poisoned primitive are trained by the same function with the
same seed, split and schedule, so with a zero budget their predictions are identical.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from nasaudit.attacks import AttackSpec
from nasaudit.attacks.common import (
    AttackRecord,
    Victim,
    batch_slices,
    batched_logits,
    record_fields,
    timed,
    victim_train_config,
)
from nasaudit.data import Augment, DeviceLoader, augment_batch, to_float, train_val_split
from nasaudit.infra.device import full_precision, seeded, stream_seed
from nasaudit.infra.device import generator as make_generator
from nasaudit.infra.errors import InputError
from nasaudit.infra.params import make_params, param

if TYPE_CHECKING:
    from nasaudit.data import ImageDataset

HOSTS = ("linear", "mlp")
REGIONS = ("centroid", "surrogate", "classifier")
TASKS = ("transfer", "same")
AUX_DOMAINS = ("host", "primitive")
# Containers are opened when listing a primitive's blocks; any other module with parameters is
# one block, and a normalisation layer belongs to the block before it (a conv and its BN).
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


@dataclass
class Params:
    """Model-reuse attack settings (the paper's knobs: targets, parameter fraction, budget, the
    host's task, classifier and fine-tuning, and what the adversary knows).

    The study runs no model-reuse experiment; the defaults follow the paper's setting: the host
    reuses the primitive for a different task (the other classes of the data set), the adversary
    holds no host labels and pulls each target's features into the ball around a few reference
    inputs of the target class (one malicious primitive per target), changing a few percent of
    the parameters by a small relative amount; the host is linear and fine-tunes the last block.
    The step size, drift weight, radius, anchor batch and neighbour count were chosen on seeds
    0-1 of resnet18 width 8 primitives on digits and on the CIFAR-10 subset;
    `benchmarks/model_reuse.py` reports them on other seeds.
    """

    task: str = param("transfer", choices=TASKS, doc="transfer: the primitive's task is classes "
                      "0..primitive_classes-1, the host's the other classes; same: the host "
                      "relearns all the victim's classes on the victim itself")
    primitive_classes: int = param(5, min=1, doc="transfer: the primitive's classes are "
                                   "0..primitive_classes-1 (a victim with that many outputs is the "
                                   "primitive as given; one with all the classes is retrained on them)")
    primitive_epochs: int | None = param(None, min=1, doc="transfer, victim with all the classes: "
                                         "epochs of the primitive's retraining with the victim's recipe "
                                         "(none: the victim's own epochs)")
    target_class: int | None = param(None, min=0, doc="the host class the targets should be "
                                     "classified as (none: the host's first class)")
    n_targets: int = param(5, min=1, doc="host-task test inputs (true class != target_class) to misclassify")
    param_fraction: float = param(0.05, min=0, max=1, doc="fraction of the primitive's parameters "
                                  "that may change (the top by saliency)")
    budget: float = param(0.2, min=0, doc="largest ||dw||_2 / ||w||_2 over the primitive")
    iterations: int = param(300, min=1, doc="most perturbation steps (stops once in region)")
    step_fraction: float = param(0.003, gt=0, max=1, doc="Adam step (L2 of a full step), fraction of the "
                                 "budget: small steps let the drift term hold the other inputs in place")
    region: str = param("centroid", choices=REGIONS, doc="the target class's feature region: centroid "
                        "(a ball around the references' mean feature; needs no labels), surrogate (the "
                        "stronger adversary: a ridge host refitted on the poisoned features of aux_size "
                        "labelled host-task inputs votes for it by `surrogate_margin`) or classifier "
                        "(task=same only: the published model's own head votes for it by `margin`)")
    aux_domain: str = param("host", choices=AUX_DOMAINS, doc="where the adversary's unlabelled "
                            "auxiliary inputs come from: host (host-task images outside the host split) or "
                            "primitive (the primitive's own classes; transfer only)")
    aux_size: int = param(2000, min=1, doc="auxiliary inputs the adversary holds (from its pool)")
    n_neighbors: int = param(0, min=0, doc="semantic neighbours (random shifts) per target, pulled "
                             "into the region with it (0: none)")
    neighbor_shift: int = param(2, min=0, doc="crop padding of the neighbours, pixels")
    aux_weight: float = param(1.0, min=0, doc="saliency penalty for moving auxiliary features")
    drift_weight: float = param(10.0, min=0, doc="loss weight of the auxiliary/reference feature drift")
    n_reference: int = param(200, min=1, doc="target-class inputs that define its feature region")
    region_radius: float = param(0.05, gt=0, doc="centroid region: the ball's squared radius, in "
                                 "units of the references' mean squared distance to their mean feature")
    margin: float = param(2.0, min=0, doc="classifier region: the target class's logit lead over "
                          "the next class")
    ridge: float = param(0.1, gt=0, doc="surrogate region: ridge penalty, relative to the mean "
                         "squared feature")
    surrogate_margin: float = param(0.6, min=0, doc="surrogate region: the target class's "
                                    "one-hot score lead over the next class")
    anchor_batch: int = param(64, min=0, doc="auxiliary/reference inputs drawn afresh for each step's "
                              "drift and surrogate terms (0: all of them every step)")
    joint: bool = param(False, doc="craft one primitive for all the targets (default: one per "
                        "target, as in the paper; ASR and the other rates are then means over them)")
    host: str = param("linear", choices=HOSTS, doc="the host's classifier on the features")
    host_hidden: int = param(128, min=1, doc="hidden units of the mlp host")
    host_fraction: float = param(0.5, gt=0, lt=1, doc="host-task training images that form the host's "
                                 "split (never read by the adversary)")
    host_epochs: int = param(30, min=1, doc="host head training epochs (Adam, on frozen features)")
    host_lr: float = param(0.01, gt=0, doc="host head learning rate")
    host_batch_size: int = param(128, min=1, doc="host training batch")
    finetune_blocks: int = param(1, min=0, doc="last primitive blocks the host fine-tunes")
    finetune_epochs: int = param(2, min=0, doc="host fine-tuning epochs (0: no fine-tuning)")
    finetune_lr: float = param(0.01, gt=0, doc="host fine-tuning learning rate (SGD, momentum 0.9)")
    floor_seeds: int = param(3, min=1, doc="clean hosts reseeded for changed_predictions_floor (the "
                             "mean of their disagreements with the clean host)")


@dataclass
class ModelReuseRecord(AttackRecord):
    """Model-reuse results (rates and accuracies in [0, 1]).

    task, primitive_classes / host_classes: the two tasks (class indices of the data set);
    primitive_source: "victim" (the victim as given) or "retrained" (the victim's architecture
    and recipe on the primitive's classes, primitive_epochs epochs); primitive_accuracy: the
    clean primitive's own accuracy on the test inputs of its classes.

    With joint=False (the default) each target has its own poisoned primitive (n_primitives of
    them) and its own host on it; the rates are over the targets, each judged by its own host,
    and the accuracies, changed predictions and perturbation sizes are means over the primitives.

    asr: targets the host trained on the poisoned primitive classifies as target_class;
    clean_asr: the same for the host trained identically on the clean primitive;
    asr_after_finetune / clean_asr_after_finetune: the same after the host fine-tuned the last
    blocks (equal to asr / clean_asr when finetune_epochs or finetune_blocks is 0);
    clean_accuracy / poisoned_accuracy: the two hosts' accuracy on the evaluation inputs (the
    n_evaluation host-task test inputs that are not targets), clean_accuracy_drop their
    difference (clean minus poisoned), finetune_accuracy_drop the same after fine-tuning;
    changed_predictions: evaluation inputs whose host prediction changed;
    changed_predictions_floor: the same between the clean host and clean hosts whose seed alone
    differs, the mean over `floor_seeds` of them (the host's own training noise: the attack is
    evasive in Ji et al.'s sense when changed_predictions is within it);
    param_l0: fraction of the primitive's parameters changed (param_l0_count of n_parameters);
    param_l2 = ||dw||_2 / ||w||_2 and param_linf = max|dw| / max|w| over the primitive;
    targets_in_region: targets inside the adversary's region at the end (its own criterion, see
    `Params.region`); target_distance_before / _after: the targets' mean squared feature
    distance to the references' mean feature under the clean / the poisoned primitive, in
    units of the references' mean squared spread (the centroid region's radius is in the same units); iterations_done: perturbation steps taken; targets: test indices of the targets;
    primitive_digest: sha256 prefix of the poisoned primitive's parameters.
    """

    kind = "attack.model_reuse"
    task: str
    primitive_classes: list[int]
    host_classes: list[int]
    primitive_source: str
    primitive_epochs: int
    primitive_accuracy: float
    target_class: int
    host: str
    region: str
    targets: list[int]
    joint: bool
    n_primitives: int
    asr: float
    asr_population: str
    clean_asr: float
    asr_after_finetune: float
    clean_asr_after_finetune: float
    clean_accuracy: float
    poisoned_accuracy: float
    clean_accuracy_drop: float
    changed_predictions: float
    changed_predictions_floor: float
    clean_accuracy_after_finetune: float
    poisoned_accuracy_after_finetune: float
    finetune_accuracy_drop: float
    param_l0: float
    param_l0_count: int
    param_l2: float
    param_linf: float
    n_parameters: int
    targets_in_region: float
    target_distance_before: float
    target_distance_after: float
    iterations_done: int
    n_evaluation: int
    host_size: int
    aux_size: int
    n_reference: int
    finetuned_blocks: int
    primitive_digest: str


# ------------------------------------------------------------------------------ the primitive


def primitive_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The primitive's parameters: the victim's body without any auxiliary head (the classifier
    is replaced by the host's head), in registration order."""
    body = getattr(model, "body", model)
    return [p for name, p in body.named_parameters() if "auxiliary" not in name]


def primitive_blocks(model: nn.Module) -> list[list[nn.Parameter]]:
    """The primitive's blocks in forward order, each a list of parameters.

    Sequential / ModuleList / ModuleDict containers are opened; any other module with parameters
    (a residual block, a DARTS cell, a conv) is one block, and a normalisation layer joins the
    block before it. Auxiliary heads are left out.
    """
    blocks: list[list[nn.Parameter]] = []

    def walk(module: nn.Module) -> None:
        for name, child in module.named_children():
            if "auxiliary" in name or not any(True for _ in child.parameters()):
                continue
            if isinstance(child, _CONTAINERS):
                walk(child)
            elif isinstance(child, _NORMS) and blocks:
                blocks[-1].extend(child.parameters())
            else:
                blocks.append(list(child.parameters()))

    walk(getattr(model, "body", model))
    return blocks


class _Features(nn.Module):
    """A primitive as a module whose output is its penultimate features [B, D]."""

    def __init__(self, primitive: nn.Module):
        super().__init__()
        self.primitive = primitive

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.primitive.features(x)


class HostSystem(nn.Module):
    """The host: images [B, C, H, W] in [0, 1] -> primitive features -> head -> logits [B, K]."""

    def __init__(self, primitive: nn.Module, head: nn.Module):
        super().__init__()
        self.primitive = primitive
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.primitive.features(x))


def features_of(primitive: nn.Module, images: torch.Tensor, *, device: torch.device) -> torch.Tensor:
    """Penultimate features [N, D] (float32, on `device`) of uint8 images [N, C, H, W]."""
    return batched_logits(_Features(primitive), images, device=device, fp32=True)


# ------------------------------------------------------------------------------------- the host


def build_head(kind: str, feature_dim: int, num_classes: int, hidden: int, seed: int) -> nn.Module:
    """A fresh host head: "linear" (Linear(D, K)) or "mlp" (Linear(D, hidden), ReLU, Linear)."""
    with seeded(seed):
        if kind == "linear":
            return nn.Linear(feature_dim, num_classes)
        if kind == "mlp":
            return nn.Sequential(nn.Linear(feature_dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
    raise InputError("--param host", f"expected one of {HOSTS}, got {kind!r}")


def train_head(head: nn.Module, features: torch.Tensor, labels: torch.Tensor, *, epochs: int, lr: float,
               batch_size: int, seed: int) -> nn.Module:
    """Train `head` in place with Adam on fixed features [N, D] and labels int64 [N] (same
    device), shuffled by a CPU generator seeded with `seed`; returns it in eval mode."""
    gen = make_generator(seed)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    n = features.shape[0]
    head.train()
    with full_precision(features.device):
        for _ in range(epochs):
            order = torch.randperm(n, generator=gen).to(features.device)
            for sl in batch_slices(n, batch_size):
                idx = order[sl]
                loss = F.cross_entropy(head(features[idx]), labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    return head.eval()


def fine_tune_host(system: HostSystem, images: torch.Tensor, labels: torch.Tensor, n_blocks: int, *,
                   epochs: int, lr: float, batch_size: int, seed: int, device: torch.device,
                   progress: bool) -> int:
    """Fine-tune the head and the last `n_blocks` primitive blocks of `system` in place on uint8
    images [N, C, H, W] / labels [N] (SGD, momentum 0.9, no augmentation). The primitive stays in
    eval mode: its normalisation statistics are frozen, as a user fine-tuning on a small split
    keeps them. Returns the number of blocks fine-tuned."""
    blocks = primitive_blocks(system.primitive)[-n_blocks:] if n_blocks > 0 else []
    for p in system.parameters():
        p.requires_grad_(False)
    trainable = [p for block in blocks for p in block] + list(system.head.parameters())
    for p in trainable:
        p.requires_grad_(True)
    opt = torch.optim.SGD(trainable, lr=lr, momentum=0.9)
    loader = DeviceLoader(images, labels, batch_size, device=device, shuffle=True, seed=seed)
    system.eval()
    bar = tqdm(total=epochs * len(loader), desc="model-reuse host fine-tune", disable=not progress)
    with full_precision(device):
        for epoch in range(epochs):
            for x, y in loader.epoch(epoch):
                loss = F.cross_entropy(system(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                bar.update()
    bar.close()
    for p in system.parameters():
        p.requires_grad_(False)
    return len(blocks)


@dataclass
class Host:
    """A host trained on one primitive: `system` after head training, `tuned` after fine-tuning
    (the same object when there is no fine-tuning) and the number of blocks fine-tuned."""

    system: HostSystem
    tuned: HostSystem
    finetuned_blocks: int


def train_host(primitive: nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
               params: Params, *, seed: int, device: torch.device, progress: bool) -> Host:
    """The user's host on `primitive` (never modified): a head trained on its features of the
    host split (uint8 images [N, C, H, W], labels [N]), then a fine-tuned copy. Every random draw
    derives from `seed`, so the clean and the poisoned host differ only by their primitive."""
    primitive = copy.deepcopy(primitive).eval()
    for p in primitive.parameters():
        p.requires_grad_(False)
    feats = features_of(primitive, images, device=device)
    head = build_head(params.host, feats.shape[1], num_classes, params.host_hidden, seed).to(device)
    train_head(head, feats, labels.to(device), epochs=params.host_epochs, lr=params.host_lr,
               batch_size=params.host_batch_size, seed=seed)
    system = HostSystem(primitive, head).eval()
    if params.finetune_epochs == 0 or params.finetune_blocks == 0:
        return Host(system, system, 0)
    tuned = copy.deepcopy(system)
    n_blocks = fine_tune_host(tuned, images, labels, params.finetune_blocks, epochs=params.finetune_epochs,
                              lr=params.finetune_lr, batch_size=params.host_batch_size, seed=seed,
                              device=device, progress=progress)
    return Host(system, tuned, n_blocks)


# -------------------------------------------------------------------------------- the adversary


def ridge_scores(features: torch.Tensor, labels: torch.Tensor, num_classes: int, ridge: float,
                 queries: torch.Tensor) -> torch.Tensor:
    """One-hot scores [Q, K] of `queries` [Q, D] under the ridge regression (with an unpenalised
    bias) of one-hot `labels` [N] on `features` [N, D]: a linear host fitted in closed form, so
    that its scores are differentiable in the features. The penalty is `ridge` times the mean
    squared feature times N, so it does not depend on the features' scale or count."""
    n, d = features.shape
    mu = features.mean(0)
    f = features - mu
    y = F.one_hot(labels, num_classes).to(features.dtype)
    y_mu = y.mean(0)
    lam = ridge * f.pow(2).sum() / d
    gram = f.T @ f + lam * torch.eye(d, dtype=f.dtype, device=f.device)
    w = torch.linalg.solve(gram, f.T @ (y - y_mu))
    return (queries - mu) @ w + y_mu


@dataclass
class Crafted:
    """The adversary's output: the poisoned primitive (a copy), the steps it took, the fraction
    of targets inside the target class's feature region at the end, and the targets' mean
    squared feature distance to the references' mean feature before (clean primitive) and
    after (poisoned primitive), in units of the references' mean squared spread, so 1 is a
    typical target-class input."""

    primitive: nn.Module
    iterations_done: int
    targets_in_region: float
    distance_before: float
    distance_after: float


def craft_primitive(primitive: nn.Module, targets: torch.Tensor, aux_images: torch.Tensor,
                    references: torch.Tensor, params: Params, *, target_class: int,
                    aux_labels: torch.Tensor | None = None, num_classes: int | None = None,
                    device: torch.device, seed: int, progress: bool) -> Crafted:
    """Perturb a copy of `primitive` so that the features of `targets` (uint8 [T, C, H, W]) move
    into the feature region of the target class, given by its `references` (uint8 [R, C, H, W])
    and the auxiliary inputs (uint8 [A, C, H, W]), changing only the most salient
    `param_fraction` of the parameters within the relative L2 `budget`, while the features of
    the auxiliary inputs and of the references stay put.

    `aux_labels` (int64 [A] in 0..num_classes-1, the label space `target_class` belongs to) are
    read only by the labelled regions, surrogate and classifier; the centroid region needs none.
    The region (see `Params.region`) is judged on the poisoned primitive's features; its scale
    (the references' spread) is fixed from the clean one. This is everything the adversary
    knows; the host's data is not an argument.
    """
    if params.region not in REGIONS:
        raise InputError("--param region", f"expected one of {REGIONS}, got {params.region!r}")
    labelled = params.region != "centroid"
    if labelled and (aux_labels is None or num_classes is None):
        raise InputError("--param region", f"region={params.region} needs the auxiliary inputs' labels")
    model = copy.deepcopy(primitive).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    weights = primitive_parameters(model)
    originals = [w.detach().clone() for w in weights]
    x_t = to_float(targets.to(device))
    if params.n_neighbors > 0:
        gen = make_generator(seed, device)
        aug = Augment(crop_padding=params.neighbor_shift, flip=False)
        x_t = torch.cat([x_t] + [augment_batch(targets.to(device), aug, gen) for _ in range(params.n_neighbors)])
    n_t = targets.shape[0]
    tc = target_class
    x_anchor = torch.cat([to_float(aux_images.to(device)), to_float(references.to(device))])
    n_aux = aux_images.shape[0]
    # The saliency's "other inputs": the auxiliary inputs not of the target class when the
    # adversary knows their labels, all of them when it does not.
    x_other = x_anchor[:n_aux][aux_labels.to(device) != tc] if labelled else x_anchor[:n_aux]

    with full_precision(device):
        with torch.no_grad():
            f_anchor0 = model.features(x_anchor)
            f_ref = f_anchor0[n_aux:]
            centre = f_ref.mean(0)
            spread2 = (f_ref - centre).pow(2).sum(1)
            # Squared distances in units of the class's mean squared spread: scale-free weights.
            scale = spread2.mean().clamp_min(1e-12)
        radius2 = params.region_radius
        head = model.classifier  # the published model's own head, never changed

        def dist2(x: torch.Tensor, c: torch.Tensor = centre) -> torch.Tensor:
            """Squared distances [N] of the features of images x to c, in units of `scale`."""
            return (model.features(x) - c).pow(2).sum(1) / scale

        anchor_labels = (torch.cat([aux_labels.to(device), torch.full((f_ref.shape[0],), tc, device=device)])
                         if labelled else None)

        def moved_centre(f_anchor: torch.Tensor | None = None, pick: torch.Tensor | None = None) -> torch.Tensor:
            """The references' mean feature under the current (poisoned) primitive: the host is
            trained on poisoned features, so the targets must reach the references where they
            are now. Within a step, the clean centre plus the mean displacement of the step's
            references (less noisy than their mean); all the references otherwise."""
            if f_anchor is None:
                return model.features(x_anchor[n_aux:]).mean(0)
            is_ref = pick >= n_aux
            if not bool(is_ref.any()):
                return centre
            return centre + (f_anchor[is_ref] - f_anchor0[pick[is_ref]]).mean(0)

        def shortfall(x: torch.Tensor, f_anchor: torch.Tensor | None = None,
                      labels: torch.Tensor | None = None, pick: torch.Tensor | None = None) -> torch.Tensor:
            """How far [N] each image's features are from inside the region (0 inside); with
            `f_anchor` (the step's anchor features, indices `pick`), as judged within a step."""
            if params.region == "centroid":
                return (dist2(x, moved_centre(f_anchor, pick)) - radius2).clamp_min(0.0)
            if params.region == "surrogate":
                if f_anchor is None:
                    f_anchor, labels = model.features(x_anchor), anchor_labels
                z = ridge_scores(f_anchor, labels, num_classes, params.ridge, model.features(x))
                margin = params.surrogate_margin
            else:
                z = head(model.features(x))
                margin = params.margin
            others = z.clone()
            others[:, tc] = -math.inf
            return (margin - (z[:, tc] - others.max(1).values)).clamp_min(0.0)

        def finish(done: int) -> Crafted:
            with torch.no_grad():
                inside = float((shortfall(x_t[:n_t]) <= 0).float().mean())
                after = float(dist2(x_t[:n_t], moved_centre()).mean())
            return Crafted(model, done, inside, before, after)

        with torch.no_grad():
            before = float(dist2(x_t[:n_t]).mean())

        n_params = sum(w.numel() for w in weights)
        k = math.ceil(params.param_fraction * n_params)
        w_norm = torch.sqrt(sum(w.pow(2).sum() for w in originals))
        limit = params.budget * w_norm
        if params.budget == 0 or k == 0:
            return finish(0)
        for w in weights:
            w.requires_grad_(True)
        # Saliency: pulls the targets into the region (g) without pulling the other classes
        # toward the target class (h). The centroid pull is the saliency's target term in both
        # regions: at the clean primitive most targets are far outside, where the hinge and the
        # pull point the same way, and the pull has no dead zone.
        g = torch.cat([t.abs().flatten() for t in torch.autograd.grad(dist2(x_t).mean(), weights)])
        if x_other.shape[0]:
            h = torch.cat([t.abs().flatten() for t in torch.autograd.grad(dist2(x_other).mean(), weights)])
        else:
            h = torch.zeros_like(g)
        saliency = g / g.mean().clamp_min(1e-30) - params.aux_weight * h / h.mean().clamp_min(1e-30)
        mask = torch.zeros_like(g)
        mask[saliency.topk(k).indices] = 1.0
        delta = torch.zeros_like(g)
        lr = params.step_fraction * limit / math.sqrt(k)
        m, v = torch.zeros_like(g), torch.zeros_like(g)
        sizes = [w.numel() for w in weights]
        n_anchor = x_anchor.shape[0]
        all_anchors = torch.arange(n_anchor, device=device)
        anchor_gen = make_generator(seed + 1)
        done = 0
        for _ in tqdm(range(params.iterations), desc="model-reuse craft", disable=not progress):
            if 0 < params.anchor_batch < n_anchor:
                pick = torch.randperm(n_anchor, generator=anchor_gen)[: params.anchor_batch].to(device)
            else:
                pick = all_anchors
            f_anchor = model.features(x_anchor[pick])
            miss = shortfall(x_t, f_anchor, anchor_labels[pick] if labelled else None, pick)
            # One sync per step for the stopping rule; each step is a full forward/backward anyway.
            if bool((miss[:n_t].detach() <= 0).all()):
                break
            drift = (f_anchor - f_anchor0[pick]).pow(2).sum(1).mean() / scale
            # Targets (and neighbours) already inside the region stop pulling.
            loss = miss.mean() + params.drift_weight * drift
            grad = torch.cat([t.flatten() for t in torch.autograd.grad(loss, weights)]) * mask
            # Adam on the selected parameters: BN scales and conv weights differ in gradient
            # scale by orders of magnitude; an element-wise step of about lr moves the selection
            # by about `step` in L2.
            m.mul_(0.9).add_(grad, alpha=0.1)
            v.mul_(0.999).addcmul_(grad, grad, value=0.001)
            m_hat = m / (1 - 0.9 ** (done + 1))
            v_hat = v / (1 - 0.999 ** (done + 1))
            delta -= lr * mask * m_hat / (v_hat.sqrt() + 1e-12)
            delta *= torch.clamp(limit / delta.norm().clamp_min(1e-30), max=1.0)
            with torch.no_grad():
                for w, w0, d in zip(weights, originals, delta.split(sizes), strict=True):
                    w.copy_(w0 + d.view_as(w0))
            done += 1
        for w in weights:
            w.requires_grad_(False)
        return finish(done)


# ------------------------------------------------------------------------------ the experiment


def perturbation_size(clean: nn.Module, poisoned: nn.Module) -> tuple[int, int, float, float]:
    """(changed parameters, all parameters, ||dw||_2 / ||w||_2, max|dw| / max|w|) between two
    primitives of the same architecture."""
    w = torch.cat([p.detach().flatten().float() for p in primitive_parameters(clean)])
    v = torch.cat([p.detach().flatten().float() for p in primitive_parameters(poisoned)])
    d = v - w
    l2 = float(d.norm() / w.norm().clamp_min(1e-30))
    linf = float(d.abs().max() / w.abs().max().clamp_min(1e-30)) if d.numel() else 0.0
    return int((d != 0).sum()), int(d.numel()), l2, linf


def parameters_digest(*models: nn.Module) -> str:
    """First 16 hex digits of the sha256 of the primitives' parameters (float32 bytes, in order)."""
    sha = hashlib.sha256()
    for p in (p for model in models for p in primitive_parameters(model)):
        sha.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return sha.hexdigest()[:16]


@dataclass
class Task:
    """The two tasks of one run: the classes (int64, sorted data-set class indices) the primitive
    was trained on and those the host is trained for, and the target class (one of the host's)."""

    name: str
    primitive_classes: torch.Tensor
    host_classes: torch.Tensor
    target_class: int

    def host_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Data-set labels [N] of host classes -> the host's own labels 0..H-1 [N]."""
        return torch.searchsorted(self.host_classes, labels)

    @property
    def target_index(self) -> int:
        """The target class among the host's labels."""
        return int(self.host_labels(torch.tensor([self.target_class]))[0])


def resolve_task(data: ImageDataset, params: Params) -> Task:
    """The run's tasks (see `Params.task`); InputError for a split or target class the data set
    cannot give (a host task of fewer than 2 classes, a target class outside the host's)."""
    k = data.num_classes
    everything = torch.arange(k)
    if params.task == "same":
        primitive, host = everything, everything
    elif params.task == "transfer":
        pc = params.primitive_classes
        if not 1 <= pc <= k - 2:
            raise InputError("--param primitive_classes", f"must leave the host at least 2 of the {k} "
                             f"classes (1..{k - 2}), got {pc}")
        primitive, host = everything[:pc], everything[pc:]
    else:
        raise InputError("--param task", f"expected one of {TASKS}, got {params.task!r}")
    tc = int(host[0]) if params.target_class is None else params.target_class
    if tc not in host.tolist():
        raise InputError("--param target_class", f"must be one of the host's classes "
                         f"{host[0].item()}..{host[-1].item()}, got {tc}")
    if params.region == "classifier" and params.task != "same":
        raise InputError("--param region", "region=classifier needs task=same: the primitive's own head "
                         "has no output for the host's classes")
    if params.aux_domain == "primitive" and params.task != "transfer":
        raise InputError("--param aux_domain", "aux_domain=primitive needs task=transfer")
    if params.aux_domain == "primitive" and params.region == "surrogate":
        raise InputError("--param aux_domain", "region=surrogate fits its host on labelled host-task "
                         "inputs: it needs aux_domain=host")
    return Task(params.task, primitive, host, tc)


def clean_primitive(victim: Victim, data: ImageDataset, task: Task, params: Params, *, device: torch.device,
                    progress: bool, work_dir: str | None = None) -> tuple[nn.Module, str, int]:
    """(the clean primitive in eval mode, "victim" or "retrained", its training epochs).

    The victim is the primitive as given when its head has one output per primitive class (it
    was trained on classes 0..P-1, as `load_dataset(num_classes=P)` gives them) or when the host
    relearns the victim's own task. A victim trained on every class has already learnt the
    host's classes, so for a transfer its architecture is retrained from scratch with its recipe
    (seed, schedule, augmentation; `primitive_epochs` epochs) on the primitive's classes only,
    holding out the recipe's validation fraction for model selection. With `work_dir` the
    retraining checkpoints to work_dir/model_reuse_primitive.pth and resumes from it.
    """
    from nasaudit.models.registry import build_model
    from nasaudit.training import train_model

    config = victim_train_config(victim)
    outputs = getattr(getattr(victim.model, "classifier", None), "out_features", None)
    if task.name == "same" or outputs == task.primitive_classes.numel():
        return victim.model.eval(), "victim", int(config.epochs)
    if outputs != data.num_classes:
        raise InputError("--param primitive_classes", f"the victim has {outputs} outputs: neither the "
                         f"primitive's {task.primitive_classes.numel()} classes nor all {data.num_classes}")
    epochs = int(params.primitive_epochs or config.epochs)
    config = dataclasses.replace(config, epochs=epochs)
    keep = torch.nonzero(torch.isin(data.train_labels, task.primitive_classes)).squeeze(1)
    if config.val_fraction > 0:
        train_idx, val_idx = train_val_split(keep.numel(), config.val_fraction, config.seed)
        train_idx, val_idx = keep[train_idx], keep[val_idx]
    else:
        train_idx, val_idx = keep, keep[:0]
    with seeded(config.seed):
        model = build_model(victim.model_name, task.primitive_classes.numel(), mean=data.mean, std=data.std,
                            **(victim.model_kwargs or {}))
    ckpt = Path(work_dir) / "model_reuse_primitive.pth" if work_dir else None
    result = train_model(model, data.train_images[train_idx], data.train_labels[train_idx], config, device=device,
                         val_images=data.train_images[val_idx], val_labels=data.train_labels[val_idx],
                         checkpoint_path=ckpt, resume=ckpt is not None,
                         sidecar={"model": victim.model_name, "model_kwargs": victim.model_kwargs,
                                  "attack": "model_reuse", "classes": task.primitive_classes.tolist()},
                         progress=progress)
    return result.model.eval(), "retrained", epochs


@dataclass
class Splits:
    """Index tensors (int64, sorted) of one run. Training images: the host split (host-task
    images only) and the adversary's auxiliary inputs and target-class references (from the
    rest, so none is in the host split). Test images of the host's classes: the targets and the
    evaluation inputs (disjoint)."""

    host: torch.Tensor
    aux: torch.Tensor
    reference: torch.Tensor
    targets: torch.Tensor
    evaluation: torch.Tensor


def make_splits(data: ImageDataset, params: Params, seed: int, task: Task | None = None) -> Splits:
    """The run's splits, all drawn from `seed` (see `Splits`); InputError when the data cannot
    supply them (no target-class image outside the host split, too few host-task test inputs)."""
    task = task or resolve_task(data, params)
    tc = task.target_class
    in_host = torch.nonzero(torch.isin(data.train_labels, task.host_classes)).squeeze(1)
    pool, host = train_val_split(in_host.numel(), params.host_fraction, seed)
    pool, host = in_host[pool], in_host[host]
    gen = make_generator(seed)
    of_class = pool[data.train_labels[pool] == tc]
    if of_class.numel() == 0:
        raise InputError("--param target_class", f"no training image of class {tc} outside the host split")
    reference = of_class[torch.randperm(of_class.numel(), generator=gen)[: params.n_reference]]
    if params.aux_domain == "primitive":
        rest = torch.nonzero(torch.isin(data.train_labels, task.primitive_classes)).squeeze(1)
    else:
        rest = pool[~torch.isin(pool, reference)]
    aux = rest[torch.randperm(rest.numel(), generator=gen)[: params.aux_size]]
    host_test = torch.isin(data.test_labels, task.host_classes)
    candidates = torch.nonzero(host_test & (data.test_labels != tc)).squeeze(1)
    if candidates.numel() < params.n_targets:
        raise InputError("--param n_targets", f"only {candidates.numel()} host-task test inputs are not of "
                         f"class {tc}, got n_targets={params.n_targets}")
    targets = candidates[torch.randperm(candidates.numel(), generator=gen)[: params.n_targets]]
    keep = host_test.clone()
    keep[targets] = False
    return Splits(host.sort().values, aux.sort().values, reference.sort().values, targets.sort().values,
                  torch.nonzero(keep).squeeze(1))


@torch.no_grad()
def host_predictions(system: nn.Module, images: torch.Tensor, *, device: torch.device,
                     classes: torch.Tensor | None = None) -> torch.Tensor:
    """Host predictions int64 [N] (on the CPU) for uint8 images [N, C, H, W]: data-set class
    indices when `classes` (the host's classes, int64 [H]) is given, else the head's outputs."""
    pred = batched_logits(system, images, device=device, fp32=True).argmax(1).cpu()
    return pred if classes is None else classes[pred]


def run_model_reuse(
    victim: Victim,
    data: ImageDataset,
    params: Params | dict | None = None,
    *,
    device: torch.device,
    seed: int = 0,
    progress: bool = True,
    work_dir: str | None = None,
) -> ModelReuseRecord:
    """Poison a copy of the clean primitive (see `clean_primitive`), train the same host for the
    host's task on the clean and on the poisoned primitive, and measure effectiveness,
    evasiveness, elasticity and the size of the parameter change. The victim itself is never
    modified."""
    params = make_params(Params, params, source="params")
    with timed() as elapsed:
        task = resolve_task(data, params)
        tc = task.target_class
        splits = make_splits(data, params, seed, task)
        clean, source, primitive_epochs = clean_primitive(victim, data, task, params, device=device,
                                                          progress=progress, work_dir=work_dir)
        # The adversary's labels, read by the labelled regions only: the host's own labels for
        # the surrogate, the victim's (= the data set's, task=same) for the classifier region.
        aux_y = data.train_labels[splits.aux]
        if params.region == "surrogate":
            labels, target, n_labels = task.host_labels(aux_y), task.target_index, task.host_classes.numel()
        else:
            labels, target, n_labels = aux_y, tc, data.num_classes
        # The paper's adversary crafts one malicious primitive per target input; `joint` crafts
        # one primitive for all the targets at once (a harder goal for a small network).
        groups = [splits.targets] if params.joint else list(splits.targets.split(1))
        crafted = [craft_primitive(
            clean, data.test_images[group], data.train_images[splits.aux], data.train_images[splits.reference],
            params, target_class=target, aux_labels=None if params.region == "centroid" else labels,
            num_classes=n_labels, device=device, seed=stream_seed(seed, "model_reuse", i) if i else seed,
            progress=progress,
        ) for i, group in enumerate(groups)]
        host_x = data.train_images[splits.host]
        host_y = task.host_labels(data.train_labels[splits.host])
        n_host = task.host_classes.numel()
        # Every host, clean or poisoned, is trained by one call with the same seed and split.
        hosts = [train_host(primitive, host_x, host_y, n_host, params, seed=seed, device=device,
                            progress=progress) for primitive in [clean] + [c.primitive for c in crafted]]
        eval_x, eval_y = data.test_images[splits.evaluation], data.test_labels[splits.evaluation]
        classes = task.host_classes

        def predict(system: nn.Module, images: torch.Tensor) -> torch.Tensor:
            return host_predictions(system, images, device=device, classes=classes)

        preds = [predict(h.system, eval_x) for h in hosts]
        tuned = [predict(h.tuned, eval_x) for h in hosts]
        # The host's own training noise: clean hosts whose seed alone differs (the first keeps
        # the stream of earlier releases), their mean disagreement with the clean host.
        no_tuning = dataclasses.replace(params, finetune_epochs=0)
        floor = sum(float((predict(train_host(clean, host_x, host_y, n_host, no_tuning, device=device, progress=progress,
                                              seed=stream_seed(seed, "model_reuse", "host_seed", *([i] if i else []))
                                              ).system, eval_x) != preds[0]).float().mean())
                    for i in range(params.floor_seeds)) / params.floor_seeds

        def rate(tuned: bool, poisoned: bool) -> float:
            """Targets the host classifies as tc: each group's own poisoned host, or the clean host."""
            systems = [(h.tuned if tuned else h.system) for h in (hosts[1:] if poisoned else hosts[:1] * len(groups))]
            return float(torch.cat([predict(sy, data.test_images[g]) == tc
                                    for sy, g in zip(systems, groups, strict=True)]).float().mean())

        acc = [float((p == eval_y).float().mean()) for p in preds]
        acc_ft = [float((p == eval_y).float().mean()) for p in tuned]
        sizes = [perturbation_size(clean, c.primitive) for c in crafted]
        n_params = sizes[0][1]
        weights = [g.numel() for g in groups]
        own = torch.isin(data.test_labels, task.primitive_classes)
        if source == "victim" and task.name == "same":
            primitive_accuracy = float((host_predictions(clean, data.test_images, device=device)
                                        == data.test_labels).float().mean())
        else:
            primitive_accuracy = float((host_predictions(clean, data.test_images[own], device=device)
                                        == data.test_labels[own]).float().mean())

        def mean(values) -> float:
            """Mean over the poisoned primitives."""
            values = list(values)
            return sum(values) / len(values)

        def target_mean(values) -> float:
            """Mean over the targets (each primitive weighted by its group's size)."""
            return sum(v * w for v, w in zip(values, weights, strict=True)) / sum(weights)

        l0 = mean(s[0] for s in sizes)
    return ModelReuseRecord(
        **record_fields("model_reuse", victim, data, seed, params, elapsed()),
        task=task.name, primitive_classes=task.primitive_classes.tolist(), host_classes=classes.tolist(),
        primitive_source=source, primitive_epochs=primitive_epochs, primitive_accuracy=primitive_accuracy,
        target_class=tc, host=params.host, region=params.region, targets=splits.targets.tolist(),
        joint=params.joint, n_primitives=len(groups),
        asr=rate(False, True),
        asr_population="the targets: seeded host-task test inputs whose true class != target_class",
        clean_asr=rate(False, False), asr_after_finetune=rate(True, True),
        clean_asr_after_finetune=rate(True, False), clean_accuracy=acc[0], poisoned_accuracy=mean(acc[1:]),
        clean_accuracy_drop=acc[0] - mean(acc[1:]),
        changed_predictions=mean(float((preds[0] != p).float().mean()) for p in preds[1:]),
        changed_predictions_floor=floor,
        clean_accuracy_after_finetune=acc_ft[0], poisoned_accuracy_after_finetune=mean(acc_ft[1:]),
        finetune_accuracy_drop=acc_ft[0] - mean(acc_ft[1:]),
        param_l0=l0 / max(1, n_params), param_l0_count=round(l0), param_l2=mean(s[2] for s in sizes),
        param_linf=mean(s[3] for s in sizes), n_parameters=n_params,
        targets_in_region=target_mean(c.targets_in_region for c in crafted),
        target_distance_before=target_mean(c.distance_before for c in crafted),
        target_distance_after=target_mean(c.distance_after for c in crafted),
        iterations_done=sum(c.iterations_done for c in crafted), n_evaluation=int(splits.evaluation.numel()),
        host_size=int(splits.host.numel()), aux_size=int(splits.aux.numel()),
        n_reference=int(splits.reference.numel()), finetuned_blocks=hosts[1].finetuned_blocks,
        primitive_digest=parameters_digest(*[c.primitive for c in crafted]),
    )


# Per-primitive means (joint=False) are rates over the inputs each was measured on. The record
# holds only its hosts' accuracies: the caller measures the victim's own.
ATTACK = AttackSpec(
    Params, run_model_reuse,
    rates={"asr": "targets", "clean_asr": "targets", "asr_after_finetune": "targets",
           "clean_asr_after_finetune": "targets", "targets_in_region": "targets",
           **dict.fromkeys(("clean_accuracy", "poisoned_accuracy", "clean_accuracy_after_finetune",
                            "poisoned_accuracy_after_finetune", "changed_predictions",
                            "changed_predictions_floor"), "n_evaluation")},
    counts={"targets": ("targets", "--param n_targets"),
            "n_evaluation": ("host-task test inputs", "a data set with more test inputs")},
    # In the demo the primitive is each model's architecture retrained for 1 epoch on digits 0-4
    # (the host learns 5-9); 10 steps of 10x the default size, so that the crafting moves.
    demo={"n_targets": 1, "aux_size": 32, "n_reference": 16, "primitive_epochs": 1, "iterations": 10,
          "step_fraction": 0.03, "param_fraction": 0.05, "budget": 0.1, "host_fraction": 0.3,
          "host_epochs": 5, "finetune_epochs": 1},
)
