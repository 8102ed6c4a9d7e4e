"""DLA-34 body (Yu et al. 2018, "Deep Layer Aggregation"; structure as in timm's `dla34`).

levels (1, 1, 1, 2, 2, 1), channels (16, 32, 64, 128, 256, 512), BasicBlock, 1x1 roots without
residual. As in timm, a tree only has a projection (1x1 conv + BN for the shortcut) where it is
used, i.e. in the level-1 trees whose input and output widths differ; the original ucbdrive code
also builds projections in deeper trees that forward never calls.

32x32 adaptation, in line with the ResNets: the 7x7 base conv becomes 3x3 (stride 1 as before),
and the two stride-2 stages that stand for ResNet's stem downsampling (level1 and level2, the
ImageNet 224 -> 56 reduction) run at stride 1, so a 32x32 input ends at 4x4 like the adapted
ResNets (level3..level5 keep stride 2). Strides do not change the parameter count.
"""

from __future__ import annotations

import torch
from torch import nn

from nasaudit.models.base import init_fan_out

__all__ = ["DLABody"]


class _BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a shortcut given by the caller (the tree's projection)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor, shortcut: torch.Tensor | None = None) -> torch.Tensor:
        """[B, c_in, H, W] -> [B, c_out, H / stride, W / stride]; shortcut defaults to x."""
        shortcut = x if shortcut is None else shortcut
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class _Root(nn.Module):
    """Aggregation node: concat children -> 1x1 conv -> BN -> ReLU."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, children: list[torch.Tensor]) -> torch.Tensor:
        """Children [B, c_i, H, W] with sum c_i = c_in -> [B, c_out, H, W]."""
        return self.relu(self.bn(self.conv(torch.cat(children, 1))))


class _Tree(nn.Module):
    """A hierarchical deep aggregation tree of `levels` levels (see the DLA paper, Fig. 3)."""

    def __init__(
        self,
        levels: int,
        c_in: int,
        c_out: int,
        stride: int = 1,
        level_root: bool = False,
        root_dim: int = 0,
    ):
        super().__init__()
        if root_dim == 0:
            root_dim = 2 * c_out
        if level_root:
            root_dim += c_in
        self.levels = levels
        self.level_root = level_root
        self.downsample: nn.Module = (
            nn.MaxPool2d(stride, stride=stride) if stride > 1 else nn.Identity()
        )
        self.project: nn.Module = nn.Identity()
        if levels == 1:
            self.tree1: nn.Module = _BasicBlock(c_in, c_out, stride)
            self.tree2: nn.Module = _BasicBlock(c_out, c_out, 1)
            if c_in != c_out:
                self.project = nn.Sequential(
                    nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out)
                )
            self.root = _Root(root_dim, c_out)
        else:
            self.tree1 = _Tree(levels - 1, c_in, c_out, stride, root_dim=0)
            self.tree2 = _Tree(levels - 1, c_out, c_out, root_dim=root_dim + c_out)

    def forward(
        self,
        x: torch.Tensor,
        shortcut: torch.Tensor | None = None,
        children: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """[B, c_in, H, W] -> [B, c_out, H / stride, W / stride].

        `children` are earlier outputs that the deepest root also aggregates; `shortcut` is
        accepted for call compatibility with blocks and recomputed here.
        """
        children = [] if children is None else children
        bottom = self.downsample(x)
        shortcut = self.project(bottom)
        if self.level_root:
            children.append(bottom)
        x1 = self.tree1(x, shortcut)
        if self.levels == 1:
            x2 = self.tree2(x1)
            return self.root([x2, x1, *children])
        children.append(x1)
        return self.tree2(x1, None, children)


def _conv_level(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class DLABody(nn.Module):
    """DLA-34 without its classifier: images [B, 3, H, W] -> pooled features [B, 32 * width].

    width: base_layer channels (16 canonically; levels use 1, 2, 4, 8, 16, 32 x width, so the
    features are 512-dimensional canonically).
    """

    def __init__(self, width: int = 16, in_channels: int = 3):
        super().__init__()
        ch = [width * m for m in (1, 2, 4, 8, 16, 32)]
        # Adapted: 3x3 instead of 7x7 (stride 1 in both).
        self.base_layer = _conv_level(in_channels, ch[0], stride=1)
        self.level0 = _conv_level(ch[0], ch[0], stride=1)
        self.level1 = _conv_level(ch[0], ch[1], stride=1)  # canonical stride 2 (see module doc)
        self.level2 = _Tree(1, ch[1], ch[2], stride=1, level_root=False)  # canonical stride 2
        self.level3 = _Tree(2, ch[2], ch[3], stride=2, level_root=True)
        self.level4 = _Tree(2, ch[3], ch[4], stride=2, level_root=True)
        self.level5 = _Tree(1, ch[4], ch[5], stride=2, level_root=True)
        self.feature_dim = ch[5]
        # ucbdrive's init: normal with std sqrt(2 / (k * k * c_out)), i.e. Kaiming fan_out.
        init_fan_out(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, feature_dim]."""
        x = self.level1(self.level0(self.base_layer(x)))
        x = self.level5(self.level4(self.level3(self.level2(x))))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
