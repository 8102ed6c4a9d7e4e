"""BiT-M R50x1 body: ResNetV2-50 with GroupNorm and weight-standardised convs, adapted to 32x32.

Big Transfer (Kolesnikov et al. 2020; google-research/big_transfer, timm `resnetv2_50x1_bit`):
pre-activation bottlenecks (GN+ReLU -> conv1x1 -> GN+ReLU -> conv3x3 (strided) -> GN+ReLU ->
conv1x1, plus a shortcut taken from the pre-activated input through a 1x1 weight-standardised
conv where the shape changes), blocks (3, 4, 6, 3), stages of 256, 512, 1024, 2048 channels,
a final GN+ReLU before global pooling. Every conv is a `StdConv2d`; every norm is GroupNorm(32).
32x32 adaptation: the 7x7 stride-2 stem conv and its padded 3x3 max-pool become one 3x3
stride-1 conv, so a 32x32 input ends at 4x4.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nasaudit.models.base import init_fan_out
from nasaudit.ops import pointwise_conv

__all__ = ["BiTBody", "StdConv2d"]


class StdConv2d(nn.Conv2d):
    """Conv2d whose weight is standardised per output channel before use (Qiao et al. 2019).

    w_hat = (w - mean(w)) / sqrt(var(w) + eps) over (c_in, kh, kw), biased variance, no bias by
    default. eps = 1e-8 as timm's BiT models.
    """

    def __init__(self, *args, eps: float = 1e-8, bias: bool = False, **kwargs):
        super().__init__(*args, bias=bias, **kwargs)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, c_in, H, W] -> [B, c_out, H', W'] with the standardised weight."""
        w = self.weight
        var, mean = torch.var_mean(w, dim=(1, 2, 3), keepdim=True, unbiased=False)
        w = (w - mean) / torch.sqrt(var + self.eps)
        if self.kernel_size == (1, 1) and self.padding == (0, 0) and self.dilation == (1, 1):
            return pointwise_conv(x, w, self.bias, self.stride, self.groups)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


def _group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    # 32 groups canonically; reduced widths (tests) use the largest divisor so GN stays valid.
    return nn.GroupNorm(math.gcd(groups, channels), channels, eps=1e-5)


class _PreActBottleneck(nn.Module):
    """Pre-activation bottleneck: [B, c_in, H, W] -> [B, c_out, H / stride, W / stride]."""

    def __init__(self, c_in: int, c_out: int, c_mid: int, stride: int = 1):
        super().__init__()
        self.norm1 = _group_norm(c_in)
        self.conv1 = StdConv2d(c_in, c_mid, 1)
        self.norm2 = _group_norm(c_mid)
        self.conv2 = StdConv2d(c_mid, c_mid, 3, stride=stride, padding=1)
        self.norm3 = _group_norm(c_mid)
        self.conv3 = StdConv2d(c_mid, c_out, 1)
        # The projection shortcut has no norm of its own: it reads the pre-activated input.
        self.downsample = (
            StdConv2d(c_in, c_out, 1, stride=stride) if stride != 1 or c_in != c_out else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, c_in, H, W] -> [B, c_out, H', W']."""
        x_preact = F.relu(self.norm1(x))
        shortcut = x if self.downsample is None else self.downsample(x_preact)
        out = self.conv1(x_preact)
        out = self.conv2(F.relu(self.norm2(out)))
        out = self.conv3(F.relu(self.norm3(out)))
        return out + shortcut


class BiTBody(nn.Module):
    """ResNetV2 (BiT) without its head: images [B, 3, H, W] -> pooled features [B, 32 * width].

    width: stem channels (64 for R50x1); stage s has bottleneck width width * 2^s and output
    4 * width * 2^s channels, so features are 2048-dimensional canonically.
    """

    def __init__(
        self, layers: tuple[int, ...] = (3, 4, 6, 3), width: int = 64, in_channels: int = 3
    ):
        super().__init__()
        self.stem = StdConv2d(in_channels, width, 3, stride=1, padding=1)  # adapted stem
        stages = []
        c_in = width
        for s, blocks in enumerate(layers):
            c_mid = width * 2**s
            c_out = 4 * c_mid
            stride = 1 if s == 0 else 2
            stage = [_PreActBottleneck(c_in, c_out, c_mid, stride)]
            stage += [_PreActBottleneck(c_out, c_out, c_mid) for _ in range(1, blocks)]
            stages.append(nn.Sequential(*stage))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.norm = _group_norm(c_in)  # pre-activation nets end with a norm + ReLU
        self.feature_dim = c_in
        init_fan_out(self, nn.GroupNorm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, feature_dim]."""
        x = F.relu(self.norm(self.stages(self.stem(x))))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
