"""The interface every nasaudit model has: pixels in [0, 1] in, logits out, normalisation inside."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from nasaudit.infra.errors import InputError


def check_size(key: str, value: Any, *, minimum: int = 1, model: str | None = None) -> int:
    """`value` as a network size (width, C, layers): an int >= `minimum`, else InputError.

    The error's source is the command-line flag ("--width"); callers building from a config
    file or a sidecar re-raise it naming their file (the problem text names `key` itself).
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        where = f" for {model}" if model else ""
        raise InputError(f"--{key}", f"{key} must be an integer >= {minimum}{where}, got {value!r}")
    return value


class Normalize(nn.Module):
    """Per-channel (x - mean) / std as the model's first layer, so attacks work in pixel space."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class ImageClassifier(nn.Module):
    """An image classifier: `normalize` -> `body` (to pooled features) -> `classifier` (linear).

    Subclasses or instances provide:
      * body(x_normalised) -> features [B, D] (the penultimate layer, used by TrojanNN), or
        (features, aux_logits) when it has an auxiliary head and is training;
      * classifier: nn.Linear(D, num_classes).
    Inputs are images in [0, 1], shape [B, C, H, W]; outputs are logits [B, num_classes].
    """

    def __init__(
        self,
        body: nn.Module,
        feature_dim: int,
        num_classes: int,
        mean: Sequence[float] = (0.0, 0.0, 0.0),
        std: Sequence[float] = (1.0, 1.0, 1.0),
    ):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.body = body
        self.classifier = nn.Linear(feature_dim, num_classes)
        self.num_classes = num_classes
        self.feature_dim = feature_dim

    @property
    def drop_path_prob(self) -> float:
        """Drop-path probability used by genotype networks (0 for other models)."""
        return float(getattr(self.body, "drop_path_prob", 0.0))

    @drop_path_prob.setter
    def drop_path_prob(self, value: float) -> None:
        if hasattr(self.body, "drop_path_prob"):
            self.body.drop_path_prob = float(value)

    def _body(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.body(self.normalize(x))
        if isinstance(out, tuple):
            return out[0], out[1]
        return out, None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features [B, feature_dim] for images x in [0, 1]."""
        return self._body(x)[0]

    def forward_train(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits [B, K], auxiliary logits [B, K] or None) for the trainer's auxiliary loss."""
        feats, aux = self._body(x)
        return self.classifier(feats), aux

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, num_classes] for images x in [0, 1], shape [B, C, H, W]."""
        return self.classifier(self._body(x)[0])


def count_parameters(model: nn.Module, exclude_auxiliary: bool = True) -> int:
    """Number of trainable parameters; by default without any auxiliary head (DARTS convention)."""
    return sum(
        p.numel()
        for name, p in model.named_parameters()
        if p.requires_grad and not (exclude_auxiliary and "auxiliary" in name)
    )


def init_fan_out(module: nn.Module, norm_type: type[nn.Module] = nn.BatchNorm2d) -> None:
    """torchvision's ResNet initialisation of `module`'s layers, in `module.modules()` order.

    Every nn.Conv2d weight: Kaiming normal, fan_out, ReLU gain (conv biases are left alone);
    every `norm_type` layer: weight 1, bias 0.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, norm_type):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode (BN uses running stats, no dropout / drop path) and
    restore each submodule's own training flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag
