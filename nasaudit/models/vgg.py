"""VGG-13 with BatchNorm (torchvision's `vgg13_bn` features), adapted to 32x32.

The convolutional part is torchvision's configuration "B" unchanged: VGG's first conv is
already 3x3 stride 1, so the stem needs no change. On 32x32 inputs the five max-pools end at
1x1 with 512 channels, so torchvision's AdaptiveAvgPool2d(7) + 25088-4096-4096-K head is
replaced, as in the common CIFAR VGGs, by a global average pool (a no-op at 1x1, kept so other
input sizes work) and a single Linear(512, K), which `ImageClassifier.classifier` provides.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["VGG13_CONFIG", "VGGBody"]

VGG13_CONFIG: tuple[int | str, ...] = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    "M",
    512,
    512,
    "M",
    512,
    512,
    "M",
)
"""torchvision's cfg "B": conv widths (for width 64) and "M" for a 2x2 max-pool."""


class VGGBody(nn.Module):
    """VGG features: images [B, 3, H, W] -> pooled features [B, 8 * width] (512 canonically).

    Each conv is 3x3 padding 1 with bias, then BatchNorm and ReLU. width scales all widths
    (64 canonically). Initialisation as torchvision: Kaiming normal (fan_out) convs, zero
    biases, BN weight 1 and bias 0.
    """

    def __init__(
        self, config: tuple[int | str, ...] = VGG13_CONFIG, width: int = 64, in_channels: int = 3
    ):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for v in config:
            if v == "M":
                layers.append(nn.MaxPool2d(2, stride=2))
            else:
                out = int(v) * width // 64
                layers += [
                    nn.Conv2d(channels, out, 3, padding=1),
                    nn.BatchNorm2d(out),
                    nn.ReLU(inplace=True),
                ]
                channels = out
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] (H, W >= 32) -> [B, feature_dim]."""
        return torch.flatten(self.avgpool(self.features(x)), 1)
