"""Label-flipping poisoning: retrain the victim's architecture on partly mislabelled data.

A fraction p of the training labels is changed to a uniformly random *wrong* class (seeded);
the architecture is retrained from scratch with the victim's recipe (the trainer, 50 epochs by
default) and the clean accuracy drop CAD(p) = acc(p = 0) - acc(p) is reported on the test set.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from nasaudit.attacks import TEST, AttackSpec
from nasaudit.attacks.common import (
    AttackRecord,
    Victim,
    accuracy,
    build_fresh,
    record_fields,
    timed,
    victim_train_config,
)
from nasaudit.infra.device import generator as make_generator
from nasaudit.infra.errors import InputError
from nasaudit.infra.params import make_params, param

if TYPE_CHECKING:
    from nasaudit.data import ImageDataset


def flip_labels(labels: torch.Tensor, fraction: float, num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Change round(fraction * N) labels (int64 [N]) to a random wrong class.

    The flipped indices come from a seeded permutation, and the new class is y + U{1..K-1}
    mod K, so it always differs from y and is uniform over the wrong classes.
    Returns (new labels int64 [N], flipped indices int64 [M]); `labels` is not modified.
    """
    if not 0.0 <= fraction <= 1.0:
        raise InputError("--param fractions", f"fractions must be in [0, 1], got {fraction}")
    gen = make_generator(seed, "cpu")
    n = labels.shape[0]
    flipped = torch.randperm(n, generator=gen)[: round(fraction * n)]
    shift = torch.randint(1, num_classes, (flipped.numel(),), generator=gen)
    out = labels.clone()
    out[flipped] = (labels[flipped] + shift) % num_classes
    return out, flipped


@dataclass
class Params:
    """Poisoning (the study's Table 5): fractions p of flipped labels, retrain `epochs` epochs.

    p = 0 (the clean reference) is always trained even if not listed. Other training settings
    come from the victim's TrainConfig (its seed too, so every p starts from the same weights).
    """

    fractions: tuple[float, ...] = param(
        (0.0, 0.1, 0.2, 0.3, 0.4), min=0, lt=1, doc="fractions of flipped training labels"
    )
    epochs: int = param(50, min=1, doc="retraining epochs per fraction")


@dataclass
class PoisonRecord(AttackRecord):
    """Per fraction (aligned lists): test accuracy of the retrained model, CAD against p = 0
    (accuracy points in [0, 1]; positive = poisoning hurt), and the number of flipped labels."""

    kind = "attack.poison"
    fractions: list[float]
    test_accuracy: list[float]
    cad: list[float]
    n_flipped: list[int]
    victim_test_accuracy: float


def run_poisoning(
    victim: Victim,
    data: ImageDataset,
    params: Params | dict | None = None,
    *,
    device: torch.device,
    seed: int = 0,
    progress: bool = True,
    work_dir: str | None = None,
) -> PoisonRecord:
    """Retrain the victim's architecture on label-flipped data for every fraction p.

    With `work_dir`, each retraining checkpoints to work_dir/poison_p{p}.pth and resumes from it.
    """
    from nasaudit.data import train_val_split
    from nasaudit.training import train_model

    params = make_params(Params, params, source="params")
    fractions = sorted({0.0, *map(float, params.fractions)})
    config = dataclasses.replace(victim_train_config(victim), epochs=int(params.epochs))
    n = data.train_images.shape[0]
    # The victim's own train/validation split: poison only what the model trains on.
    if config.val_fraction > 0:
        train_idx, val_idx = train_val_split(n, config.val_fraction, config.seed)
        val = (data.train_images[val_idx], data.train_labels[val_idx])
    else:
        train_idx, val = torch.arange(n), (None, None)
    images, clean = data.train_images[train_idx], data.train_labels[train_idx]
    accs, flips = [], []
    with timed() as elapsed:
        for p in tqdm(fractions, desc="poison", disable=not progress):
            labels, flipped = flip_labels(clean, p, data.num_classes, seed)
            model = build_fresh(victim.model_name, data, config.seed, victim.model_kwargs)
            ckpt = Path(work_dir) / f"poison_p{p:g}.pth" if work_dir else None
            result = train_model(
                model, images, labels, config, device=device, val_images=val[0],
                val_labels=val[1], checkpoint_path=ckpt, resume=ckpt is not None,
                sidecar={"model": victim.model_name, "model_kwargs": victim.model_kwargs,
                         "attack": "poison", "fraction": p},
                progress=progress,
            )
            accs.append(accuracy(result.model, data.test_images, data.test_labels, device=device))
            flips.append(int(flipped.numel()))
        victim_acc = accuracy(victim.model.eval(), data.test_images, data.test_labels, device=device)
    return PoisonRecord(
        **record_fields("poison", victim, data, seed, params, elapsed()),
        fractions=fractions, test_accuracy=accs,
        cad=[accs[0] - a for a in accs], n_flipped=flips, victim_test_accuracy=victim_acc,
    )


ATTACK = AttackSpec(
    Params, run_poisoning, rates={"test_accuracy": TEST, "victim_test_accuracy": TEST},
    victim_accuracy="victim_test_accuracy", axis=("fractions", "p"), retrains=True,
    demo={"fractions": [0.0, 0.3], "epochs": 1},
    import_note=("poison retrains {spec} from scratch with the victim recipe ({fmt} training code: lr {lr}, "
                 "batch {batch_size}, weight decay {weight_decay}; epochs from [attacks.poison])"),
)
