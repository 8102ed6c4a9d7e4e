"""ResNet bodies (torchvision's definitions) adapted to 32x32: 3x3 stride-1 stem, no max-pool.

Covers resnet18 (BasicBlock [2, 2, 2, 2]), wide_resnet50_2 (Bottleneck [3, 4, 6, 3], inner
width 2x) and resnext50_32x4d (Bottleneck [3, 4, 6, 3], 32 groups of width 4). Apart from the
stem, blocks, channel counts, strides, downsample projections (1x1 conv + BN) and the
initialisation (Kaiming normal, fan_out, for convs; BN weight 1, bias 0) are torchvision's.
With the stem no longer downsampling, a 32x32 input ends at 4x4 before the global average pool.
"""

from __future__ import annotations

import torch
from torch import nn

from nasaudit.models.base import init_fan_out
from nasaudit.ops import StridedPointwiseConv

__all__ = ["BasicBlock", "Bottleneck", "ResNetBody"]


def _conv3x3(c_in: int, c_out: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, groups=groups, bias=False)


def _conv1x1(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return StridedPointwiseConv(c_in, c_out, stride=stride)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus shortcut: [B, c_in, H, W] -> [B, planes, H / stride, W / stride]."""

    expansion = 1

    def __init__(
        self,
        c_in: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
    ):
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock supports only groups=1 and base_width=64 (torchvision)")
        self.conv1 = _conv3x3(c_in, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, c_in, H, W] -> [B, planes, H', W']."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (grouped, strided) -> 1x1 with BN, plus shortcut (torchvision's ResNet v1.5).

    [B, c_in, H, W] -> [B, 4 * planes, H / stride, W / stride]; the inner width is
    int(planes * base_width / 64) * groups (2 * planes for wide_resnet50_2 and resnext50_32x4d).
    """

    expansion = 4

    def __init__(
        self,
        c_in: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
    ):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        if width < 1:
            raise ValueError(f"bottleneck width is 0 for planes={planes}: use a larger width")
        self.conv1 = _conv1x1(c_in, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, c_in, H, W] -> [B, 4 * planes, H', W']."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNetBody(nn.Module):
    """ResNet without its fc: images [B, 3, H, W] -> pooled features [B, 8 * width * expansion].

    block: BasicBlock or Bottleneck; layers: blocks per stage; width: stem channels and planes
    of the first stage (64 canonically; stages use width, 2, 4, 8 x width); groups and
    width_per_group as in torchvision (resnext50_32x4d: 32 and 4; wide_resnet50_2: 1 and 128).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        width: int = 64,
        groups: int = 1,
        width_per_group: int = 64,
        in_channels: int = 3,
    ):
        super().__init__()
        self.groups = groups
        self.base_width = width_per_group
        self.inplanes = width
        # The 32x32 adaptation: torchvision's 7x7 stride-2 conv and 3x3 max-pool become one
        # 3x3 stride-1 conv, so that 32x32 inputs are not reduced to 8x8 before the first stage.
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * width, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = 8 * width * block.expansion
        init_fan_out(self)

    def _make_layer(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        planes: int,
        blocks: int,
        stride: int = 1,
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width)]
        self.inplanes = planes * block.expansion
        layers += [
            block(self.inplanes, planes, groups=self.groups, base_width=self.base_width)
            for _ in range(1, blocks)
        ]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, feature_dim]."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)
