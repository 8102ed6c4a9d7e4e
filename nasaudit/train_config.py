"""The training recipe as settings: `TrainConfig`, without torch.

Its fields declare their defaults (the study's), ranges and one-line descriptions with
`nasaudit.infra.params.param`, so that an audit config's [train] table, a checkpoint's sidecar
and the `nasaudit train` flags (and their --help) are all read and checked from this one
declaration. The trainer itself is `nasaudit.training`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from nasaudit.infra.errors import InputError
from nasaudit.infra.limits import MAX_SEED
from nasaudit.infra.params import param

ADV_TRAIN_METHODS = ("pgd",)


@dataclasses.dataclass
class TrainConfig:
    """Training hyper-parameters; the defaults are the study's (paper) settings.

    Paper: SGD with momentum 0.9, lr 0.025 with cosine annealing (to `lr_min` = 0, stepped once
    per epoch as in DARTS), gradient-norm clipping 5, batch 96, weight decay 3e-4, auxiliary loss
    weight 0.4, drop path 0.2 (increased linearly per epoch: drop_path_prob * epoch / epochs),
    600 epochs, no cutout. The study's public artifact uses instead 200 epochs, weight decay
    5e-4 and cutout 16: `TrainConfig.artifact()`.

    Units: `lr`, `weight_decay` per step; `cutout`, `crop_padding` in pixels; `val_fraction` of
    the training set held out for model selection (0 disables validation); `adv_eps` and
    `adv_step` in pixel units of [0, 1] images (8/255 and 2/255, L-inf), `adv_iters` PGD steps.
    `adv_train="pgd"` turns on Madry et al.'s PGD adversarial training (see `train_model`).
    """

    epochs: int = param(600, min=1, max=100_000, doc="training epochs")
    batch_size: int = param(96, min=1, max=1 << 20, doc="images per SGD step")
    lr: float = param(0.025, gt=0, max=100, doc="initial learning rate (cosine-annealed to lr_min)")
    momentum: float = param(0.9, min=0, max=1, doc="SGD momentum")
    weight_decay: float = param(3e-4, min=0, max=1, doc="L2 weight decay per step")
    grad_clip: float = param(5.0, min=0, doc="gradient-norm clip (0: none)")
    auxiliary_weight: float = param(0.4, min=0, max=100, doc="weight of the auxiliary head's loss")
    drop_path_prob: float = param(0.2, min=0, lt=1, doc="final drop-path probability (linear ramp)")
    cutout: int = param(0, min=0, max=1024, doc="cutout side in pixels (0: none)")
    val_fraction: float = param(0.1, min=0, lt=1, doc="training images held out for model selection")
    seed: int = param(0, min=0, max=MAX_SEED, doc="seed of initialisation, order and augmentation")
    adv_train: str | None = param(None, choices=ADV_TRAIN_METHODS, doc="pgd: PGD adversarial training")
    adv_eps: float = param(8 / 255, min=0, max=1, doc="adversarial training's L-inf radius, pixel units")
    adv_step: float = param(2 / 255, gt=0, max=1, doc="adversarial training's PGD step, pixel units")
    adv_iters: int = param(7, min=1, max=10_000, doc="adversarial training's PGD steps")
    # Additions beyond the contract (all with the conventional values).
    lr_min: float = param(0.0, min=0, doc="learning rate at the end of the cosine schedule")
    crop_padding: int = param(4, min=0, max=1024, doc="random-crop padding in pixels")
    flip: bool = param(True, doc="random horizontal flips")
    adv_random_start: bool = param(True, doc="adversarial training starts PGD at a random point")

    @classmethod
    def artifact(cls, **overrides: Any) -> TrainConfig:
        """The study's artifact scripts: 200 epochs, weight decay 5e-4, cutout 16."""
        return cls(**{"epochs": 200, "weight_decay": 5e-4, "cutout": 16, **overrides})

    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "train config") -> TrainConfig:
        """Rebuild from `to_dict()` output (e.g. a sidecar's "config"); unknown keys are ignored.

        Raises InputError(source, ...) naming the first key whose value has the wrong type.
        """
        if not isinstance(data, dict):
            raise InputError(source, f"train config must be a table, not {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        config = cls(**{k: v for k, v in data.items() if k in names})
        config.validate(source)
        return config

    def validate(self, source: str = "train config") -> None:
        """Raise InputError(source, ...) for a wrongly typed setting (e.g. a string from a TOML
        file where a number belongs; ints are accepted for floats) or one outside the range its
        field declares."""
        from nasaudit.infra.params import make_params

        make_params(type(self), self, source=source, typed=True)
