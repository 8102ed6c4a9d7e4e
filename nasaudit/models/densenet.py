"""DenseNet-121 body (torchvision's definition) adapted to 32x32: 3x3 stride-1 stem, no max-pool.

Growth rate 32, blocks (6, 12, 24, 16), 64 initial features, bottleneck size 4, compression
0.5 in the transitions, no dropout. The stem keeps torchvision's conv0 -> norm0 -> relu0 but the
conv is 3x3 stride 1 and pool0 is gone; a 32x32 input ends at 4x4 after three transitions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DenseNetBody"]


class _DenseLayer(nn.Module):
    """BN-ReLU-Conv1x1 (bn_size * growth) -> BN-ReLU-Conv3x3 (growth); its output is concatenated."""

    def __init__(self, c_in: int, growth_rate: int, bn_size: int):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(c_in)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(c_in, bn_size * growth_rate, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, c_in, H, W] -> new features [B, growth_rate, H, W]."""
        out = self.conv1(self.relu1(self.norm1(x)))
        return self.conv2(self.relu2(self.norm2(out)))


class _DenseBlock(nn.Module):
    """`num_layers` dense layers, each fed the concatenation of the input and all earlier outputs."""

    def __init__(self, num_layers: int, c_in: int, growth_rate: int, bn_size: int):
        super().__init__()
        self.layers = nn.ModuleList(
            _DenseLayer(c_in + i * growth_rate, growth_rate, bn_size) for i in range(num_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, c_in, H, W] -> [B, c_in + num_layers * growth_rate, H, W]."""
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, 1)))
        return torch.cat(features, 1)


class _Transition(nn.Sequential):
    """BN-ReLU-Conv1x1 (c_in -> c_out) then 2x2 average pool: halves channels and size."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(
            nn.BatchNorm2d(c_in),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.AvgPool2d(2, stride=2),
        )


class DenseNetBody(nn.Module):
    """DenseNet without its classifier: images [B, 3, H, W] -> pooled features [B, feature_dim].

    width: initial feature count (64 canonically); the growth rate is width // 2 (32), so a small
    width shrinks the whole network with the same structure. feature_dim is 1024 for DenseNet-121.
    """

    def __init__(
        self,
        block_config: tuple[int, ...] = (6, 12, 24, 16),
        width: int = 64,
        bn_size: int = 4,
        in_channels: int = 3,
    ):
        super().__init__()
        growth_rate = max(1, width // 2)
        # 32x32 adaptation of torchvision's 7x7 stride-2 conv0 + 3x3 stride-2 pool0.
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        channels = width
        for i, num_layers in enumerate(block_config):
            layers.append(_DenseBlock(num_layers, channels, growth_rate, bn_size))
            channels += num_layers * growth_rate
            if i != len(block_config) - 1:
                layers.append(_Transition(channels, channels // 2))
                channels //= 2
        layers.append(nn.BatchNorm2d(channels))  # torchvision's norm5
        self.features = nn.Sequential(*layers)
        self.feature_dim = channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, feature_dim]."""
        out = F.relu(self.features(x))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
