"""The CIFAR evaluation network built from a genotype (DARTS's NetworkCIFAR).

Structure (Liu et al. 2019, `model.py`): a stem of 3C channels (3x3 conv + BN), then `layers`
cells; the cells at layers // 3 and 2 * layers // 3 are reduction cells (stride 2, channels
doubled). Each cell preprocesses its two inputs to C channels (a FactorizedReduce for the input
from two cells back when the previous cell reduced, so both inputs have the same size; else
ReLU-Conv1x1-BN), computes its intermediate nodes as sums of two genotype ops, and concatenates
the `concat` nodes. An auxiliary head (AuxiliaryHeadCIFAR) reads the second reduction cell's
output during training. Global average pooling gives the features; `ImageClassifier` owns the
final Linear.

The module works for any number of intermediate nodes (NASNet and AmoebaNet have 5) and any
concat list, and for any input size (the spatial size halves, rounding up, at each reduction).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nasaudit.infra.errors import InputError
from nasaudit.models.base import ImageClassifier, check_size
from nasaudit.ops import OPS, FactorizedReduce, Identity, ReLUConvBN, drop_path

__all__ = ["AuxiliaryHeadCIFAR", "Cell", "NetworkCIFAR", "build_genotype_network"]

STEM_MULTIPLIER = 3  # the stem has 3C channels (DARTS)


class Cell(nn.Module):
    """One genotype cell: inputs s0 [B, C_prev_prev, H0, W0], s1 [B, C_prev, H, W] ->
    [B, len(concat) * C, H', W'] with H' = ceil(H / 2) for a reduction cell, else H.

    `ops` are the genotype's (op name, input index) pairs, two per intermediate node; input 0
    is s0, 1 is s1 and i >= 2 is intermediate node i - 2. In a reduction cell the ops reading
    s0 or s1 have stride 2.
    """

    def __init__(
        self,
        ops: Sequence[tuple[str, int]],
        concat: Sequence[int],
        C_prev_prev: int,
        C_prev: int,
        C: int,
        reduction: bool,
        reduction_prev: bool,
    ):
        super().__init__()
        if len(ops) == 0 or len(ops) % 2:
            raise ValueError(f"a cell needs two (op, input) pairs per node, got {len(ops)} pairs")
        self.reduction = reduction
        # s0 is twice the size of s1 after a reduction: halve it so that both match.
        if reduction_prev:
            self.preprocess0: nn.Module = FactorizedReduce(C_prev_prev, C)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0)

        self.steps = len(ops) // 2
        self.concat = tuple(int(i) for i in concat)
        self.multiplier = len(self.concat)
        self.indices = tuple(int(index) for _, index in ops)
        for k, index in enumerate(self.indices):
            # Op k feeds node k // 2, which may read the two inputs and the nodes before it.
            if not 0 <= index < 2 + k // 2:
                raise ValueError(f"op {k} reads state {index}, which is not computed yet")
        if not self.concat or any(not 0 <= i < 2 + self.steps for i in self.concat):
            raise ValueError(f"concat {self.concat} names a missing state (0..{self.steps + 1})")
        self.ops = nn.ModuleList(
            OPS[name](C, 2 if reduction and index < 2 else 1, True) for name, index in ops
        )

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float) -> torch.Tensor:
        """Cell output [B, multiplier * C, H', W']; drop path applies only in training mode."""
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        use_drop = self.training and drop_prob > 0.0
        for step in range(self.steps):
            total = 0
            for k in (2 * step, 2 * step + 1):
                op = self.ops[k]
                h = op(states[self.indices[k]])
                # Identity paths are never dropped (DARTS): dropping them would only add noise.
                if use_drop and not isinstance(op, Identity):
                    h = drop_path(h, drop_prob)
                total = total + h
            states.append(total)
        return torch.cat([states[i] for i in self.concat], dim=1)


class AuxiliaryHeadCIFAR(nn.Module):
    """DARTS's auxiliary classifier: [B, C, 8, 8] (32x32 images) -> logits [B, num_classes].

    ReLU, 5x5 average pool stride 3 (8x8 -> 2x2), 1x1 conv to 128, BN, ReLU, 2x2 conv to 768,
    BN, ReLU, Linear. For inputs other than 32x32 the pool adapts: maps smaller than 8x8 are
    average-pooled to 2x2, and maps larger than 2x2 after the 2x2 conv are averaged to 1x1,
    neither of which changes anything (or any parameter) at 32x32.
    """

    def __init__(self, C: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.BatchNorm2d(768),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> logits [B, num_classes]."""
        x = F.relu(x)  # not in place: x is also the next cells' input
        if min(x.shape[-2:]) >= 8:
            x = F.avg_pool2d(x, 5, stride=3, padding=0, count_include_pad=False)
        else:
            x = F.adaptive_avg_pool2d(x, 2)
        x = self.features(x)
        if x.shape[-2:] != (1, 1):
            x = F.adaptive_avg_pool2d(x, 1)
        return self.classifier(x.flatten(1))


class NetworkCIFAR(nn.Module):
    """The body of a genotype network: normalised images [B, 3, H, W] -> features [B, D].

    In training mode with an auxiliary head it returns (features [B, D], aux logits [B, K]).
    `drop_path_prob` (settable; the trainer ramps it) is the per-op drop-path probability
    used in training. `feature_dim` is D = len(concat of the last cell) * 4C.
    """

    def __init__(
        self,
        genotype: Any,
        num_classes: int,
        C: int = 36,
        layers: int = 20,
        auxiliary: bool = True,
        drop_path_prob: float = 0.2,
        in_channels: int = 3,
    ):
        super().__init__()
        if layers < 1 or C < 1:
            raise ValueError(f"need layers >= 1 and C >= 1, got layers={layers}, C={C}")
        self.genotype = genotype
        self.layers = layers
        self.drop_path_prob = float(drop_path_prob)
        self.aux_position = 2 * layers // 3  # the second reduction cell
        reductions = {layers // 3, 2 * layers // 3}

        C_curr = STEM_MULTIPLIER * C
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr)
        )
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        C_aux = C_prev
        for i in range(layers):
            reduction = i in reductions
            if reduction:
                C_curr *= 2
            ops, concat = (
                (genotype.reduce, genotype.reduce_concat)
                if reduction
                else (genotype.normal, genotype.normal_concat)
            )
            cell = Cell(ops, concat, C_prev_prev, C_prev, C_curr, reduction, reduction_prev)
            self.cells.append(cell)
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
            if i == self.aux_position:
                C_aux = C_prev
        # The name contains "auxiliary", so count_parameters leaves it out (DARTS convention).
        self.auxiliary_head = AuxiliaryHeadCIFAR(C_aux, num_classes) if auxiliary else None
        self.feature_dim = C_prev

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """[B, 3, H, W] -> features [B, D], or (features, aux logits) when training with aux."""
        aux = None
        s0 = s1 = self.stem(x)
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_position and self.auxiliary_head is not None and self.training:
                aux = self.auxiliary_head(s1)
        features = F.adaptive_avg_pool2d(s1, 1).flatten(1)
        return features if aux is None else (features, aux)


def _check_ops(genotype: Any, space: Any) -> None:
    """Raise InputError when the genotype uses an op this module (or `space`) does not have."""
    allowed = set(OPS)
    source = "genotype"
    if space is not None:
        if isinstance(space, str):
            from nasaudit.search_space import load_search_space

            space = load_search_space(space)
        allowed &= set(space.ops)
        source = f"genotype (search space {space.name!r})"
    for cell in ("normal", "reduce"):
        for name, _ in getattr(genotype, cell):
            if name not in allowed:
                raise InputError(source, f"unknown operation {name!r} in the {cell} cell")


def build_genotype_network(
    genotype: Any,
    num_classes: int,
    *,
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
    C: int = 36,
    layers: int = 20,
    auxiliary: bool = True,
    drop_path_prob: float = 0.2,
    space: Any = None,
) -> ImageClassifier:
    """The DARTS CIFAR evaluation network for `genotype`: images [B, 3, H, W] in [0, 1] -> logits.

    genotype: a `nasaudit.genotype.Genotype` (or anything with normal, normal_concat, reduce,
    reduce_concat). C: initial channels; layers: number of cells; auxiliary: add the auxiliary
    head (its logits come from `forward_train` in training mode); drop_path_prob: per-op drop
    probability in training. space: optional search space (name or SearchSpace) whose op set
    the genotype must use. Defaults give DARTS's CIFAR setting (darts_v2: 3.3M parameters
    without the auxiliary head). Raises InputError for an unknown op or a bad size.
    """
    _check_ops(genotype, space)
    C = check_size("C", C)
    layers = check_size("layers", layers)
    if isinstance(drop_path_prob, bool) or not isinstance(drop_path_prob, (int, float)) or not (
        0 <= drop_path_prob < 1
    ):
        raise InputError("drop_path_prob", f"drop_path_prob must be a number in [0, 1), got {drop_path_prob!r}")
    if not isinstance(auxiliary, bool):
        raise InputError("auxiliary", f"auxiliary must be true or false, got {auxiliary!r}")
    body = NetworkCIFAR(
        genotype,
        num_classes,
        C=C,
        layers=layers,
        auxiliary=auxiliary,
        drop_path_prob=drop_path_prob,
        in_channels=len(mean),
    )
    return ImageClassifier(body, body.feature_dim, num_classes, mean=mean, std=std)
