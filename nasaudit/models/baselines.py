"""The study's seven manual baselines, adapted to 32x32 inputs, plus `tiny_cnn` for tests and demos.

Every factory has the registry signature `(num_classes, mean, std, *, width=None) ->
ImageClassifier`. The adaptation is the same for all: a 3x3 stride-1 stem and no stem max-pool;
otherwise the canonical layer structure (torchvision for resnet18, densenet121, vgg13_bn,
wide_resnet50_2, resnext50_32x4d; the DLA paper / timm for dla34; big_transfer / timm for
bit_m_r50x1). The final Linear is `ImageClassifier.classifier`. VGG13_bn's 4096-4096 head is
replaced by a single Linear(512, K) (see `nasaudit.models.vgg`).

`width` is the stem's channel count (canonical default: 64, or 16 for dla34); every other width
scales with it, so a small width builds the same structure cheaply (resnext50_32x4d needs
width >= 16 so that its 32 groups have at least one channel each).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from nasaudit.models.base import ImageClassifier, check_size
from nasaudit.models.bit import BiTBody
from nasaudit.models.densenet import DenseNetBody
from nasaudit.models.dla import DLABody
from nasaudit.models.resnet import BasicBlock, Bottleneck, ResNetBody
from nasaudit.models.vgg import VGGBody

__all__ = [
    "TinyCNNBody",
    "bit_m_r50x1",
    "densenet121",
    "dla34",
    "resnet18",
    "resnext50_32x4d",
    "tiny_cnn",
    "vgg13_bn",
    "wide_resnet50_2",
]

Floats = Sequence[float]

# name -> factory; nasaudit.models.registry reads this table (this module imports no registry,
# so the dependency runs one way: registry -> baselines).
BASELINES: dict[str, Callable[..., ImageClassifier]] = {}


def _baseline(name: str) -> Callable[[Callable[..., ImageClassifier]], Callable[..., ImageClassifier]]:
    """Decorator: list `factory` in BASELINES under `name`."""

    def decorate(factory: Callable[..., ImageClassifier]) -> Callable[..., ImageClassifier]:
        BASELINES[name] = factory
        return factory

    return decorate


def _width(width: int | None, default: int, model: str = "", minimum: int = 1) -> int:
    """The stem width: `default` (canonical) when None, else checked (InputError when < minimum)."""
    return default if width is None else check_size("width", width, minimum=minimum, model=model or None)


def _wrap(body: nn.Module, num_classes: int, mean: Floats, std: Floats) -> ImageClassifier:
    return ImageClassifier(body, body.feature_dim, num_classes, mean=mean, std=std)


@_baseline("resnet18")
def resnet18(
    num_classes: int, mean: Floats, std: Floats, *, width: int | None = None
) -> ImageClassifier:
    """ResNet-18 for 32x32 images [B, 3, 32, 32] in [0, 1] -> logits [B, num_classes]; 512-d features."""
    body = ResNetBody(BasicBlock, (2, 2, 2, 2), width=_width(width, 64), in_channels=len(mean))
    return _wrap(body, num_classes, mean, std)


@_baseline("wide_resnet50_2")
def wide_resnet50_2(
    num_classes: int, mean: Floats, std: Floats, *, width: int | None = None
) -> ImageClassifier:
    """Wide ResNet-50-2 (bottleneck width doubled) for 32x32 images -> logits; 2048-d features."""
    body = ResNetBody(
        Bottleneck, (3, 4, 6, 3), width=_width(width, 64), width_per_group=128, in_channels=len(mean)
    )
    return _wrap(body, num_classes, mean, std)


@_baseline("resnext50_32x4d")
def resnext50_32x4d(
    num_classes: int, mean: Floats, std: Floats, *, width: int | None = None
) -> ImageClassifier:
    """ResNeXt-50 (32 groups x 4 channels) for 32x32 images -> logits; 2048-d features."""
    body = ResNetBody(
        Bottleneck,
        (3, 4, 6, 3),
        width=_width(width, 64, "resnext50_32x4d", minimum=16),
        groups=32,
        width_per_group=4,
        in_channels=len(mean),
    )
    return _wrap(body, num_classes, mean, std)


@_baseline("densenet121")
def densenet121(
    num_classes: int, mean: Floats, std: Floats, *, width: int | None = None
) -> ImageClassifier:
    """DenseNet-121 (growth 32, blocks 6-12-24-16) for 32x32 images -> logits; 1024-d features."""
    body = DenseNetBody((6, 12, 24, 16), width=_width(width, 64), in_channels=len(mean))
    model = _wrap(body, num_classes, mean, std)
    nn.init.zeros_(model.classifier.bias)  # as torchvision's DenseNet
    return model


@_baseline("vgg13_bn")
def vgg13_bn(
    num_classes: int, mean: Floats, std: Floats, *, width: int | None = None
) -> ImageClassifier:
    """VGG-13 with BatchNorm for 32x32 images -> logits, one Linear(512, K) head; 512-d features."""
    body = VGGBody(width=_width(width, 64), in_channels=len(mean))
    model = _wrap(body, num_classes, mean, std)
    # torchvision's VGG initialisation for Linear layers.
    nn.init.normal_(model.classifier.weight, 0.0, 0.01)
    nn.init.zeros_(model.classifier.bias)
    return model


@_baseline("dla34")
def dla34(
    num_classes: int, mean: Floats, std: Floats, *, width: int | None = None
) -> ImageClassifier:
    """DLA-34 for 32x32 images -> logits; 512-d features (width is the base channel count, 16)."""
    body = DLABody(width=_width(width, 16), in_channels=len(mean))
    return _wrap(body, num_classes, mean, std)


@_baseline("bit_m_r50x1")
def bit_m_r50x1(
    num_classes: int, mean: Floats, std: Floats, *, width: int | None = None
) -> ImageClassifier:
    """BiT-M R50x1 (ResNetV2-50, GroupNorm, weight standardisation) for 32x32 images -> logits; 2048-d features.

    The architecture only: BiT-M's ImageNet-21k pretrained weights are not loaded.
    """
    body = BiTBody((3, 4, 6, 3), width=_width(width, 64), in_channels=len(mean))
    return _wrap(body, num_classes, mean, std)


class TinyCNNBody(nn.Module):
    """Three conv3x3-BN-ReLU blocks (width, 2 width, 4 width), 2x2 max-pools after the first two,
    global average pool: images [B, 3, H, W] -> features [B, 4 * width]."""

    def __init__(self, width: int = 16, in_channels: int = 3):
        super().__init__()

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]

        self.features = nn.Sequential(
            *block(in_channels, width),
            nn.MaxPool2d(2),
            *block(width, 2 * width),
            nn.MaxPool2d(2),
            *block(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.feature_dim = 4 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, feature_dim]."""
        return self.features(x)


@_baseline("tiny_cnn")
def tiny_cnn(
    num_classes: int, mean: Floats, std: Floats, *, width: int | None = None
) -> ImageClassifier:
    """A small fast plain CNN (not from the study) for tests and the demo; 4 * width features (64)."""
    return _wrap(TinyCNNBody(width=_width(width, 16), in_channels=len(mean)), num_classes, mean, std)
