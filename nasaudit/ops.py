"""The DARTS operations, shared by the search supernet and the genotype evaluation network.

Every operation maps a feature map [B, C, H, W] to [B, C, H', W'] with H' = ceil(H / stride)
(W likewise): stride 1 keeps the size, stride 2 halves it (rounding up for odd sizes), so the
ops of one cell edge can always be summed. Definitions follow the DARTS code base (Liu et al.
2019, `operations.py`); `sep_conv_7x7` and `conv_7x1_1x7` are the study's two extra ops.

`OPS[name](C, stride, affine)` builds one op. `affine=False` is what the DARTS supernet uses
(BatchNorm without learnable scale and shift, so that the architecture weights are not
absorbed by them); the evaluation network uses `affine=True`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

# Re-exported: the op facts live with the op names, which the torch-free analyzer also reads.
from nasaudit.search_space import OP_SHAPES, PARAMETER_FREE_OPS, OpShape

__all__ = [
    "OPS",
    "PARAMETER_FREE_OPS",
    "DilConv",
    "FactorizedReduce",
    "Identity",
    "ReLUConvBN",
    "SepConv",
    "StridedPointwiseConv",
    "Zero",
    "forward_after_relu",
    "starts_with_relu",
    "drop_path",
    "subsample",
]


class _Subsample(torch.autograd.Function):
    """`x[..., start::stride, start::stride]` whose gradient is built in `layout`.

    torch 2.13's slicing backward always builds an NCHW gradient; in a channels_last network
    every later op on it then runs a slow mixed-layout kernel (`benchmarks/memory_format.py`
    measures the difference). Written in the functorch form so that `torch.func.vmap` still works.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, start: int, stride: int, layout: torch.memory_format):
        return x[..., start::stride, start::stride]

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, ctx.start, ctx.stride, ctx.layout = inputs
        ctx.shape = x.shape

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if ctx.layout == torch.contiguous_format:
            full = grad.new_zeros(ctx.shape)  # batched too when the backward runs under vmap
        else:
            full = torch.empty(ctx.shape, dtype=grad.dtype, device=grad.device,
                               memory_format=ctx.layout).zero_()
        full[..., ctx.start::ctx.stride, ctx.start::ctx.stride] = grad
        return full, None, None, None


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    if x.dim() != 4 or x.is_contiguous():
        return torch.contiguous_format
    try:
        channels_last = x.is_contiguous(memory_format=torch.channels_last)
    except RuntimeError:  # inside torch.func.vmap the query is not implemented
        return torch.contiguous_format
    return torch.channels_last if channels_last else torch.contiguous_format


@torch.fx.wrap
def subsample(x: torch.Tensor, start: int, stride: int) -> torch.Tensor:
    """Every `stride`-th row and column from `start`: [B, C, H, W] -> [B, C, ceil((H - start) /
    stride), ceil((W - start) / stride)], with a gradient in the input's memory format."""
    if start == 0 and stride == 1:
        return x
    if not (torch.is_grad_enabled() and x.requires_grad):
        return x[..., start::stride, start::stride]
    return _Subsample.apply(x, start, stride, _memory_format(x))


@torch.fx.wrap
def _odd_positions(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, ceil(H / 2), ceil(W / 2)]: the odd rows and columns of `x`, with a
    zero row (column) at the end when H (W) is odd. The same numbers as DARTS's shifted map
    `pad(x[:, :, 1:, 1:], (0, 1, 0, 1))` subsampled at stride 2."""
    odd = subsample(x, 1, 2)
    pad_h, pad_w = -(-x.shape[-2] // 2) - odd.shape[-2], -(-x.shape[-1] // 2) - odd.shape[-1]
    return F.pad(odd, (0, pad_w, 0, pad_h)) if pad_h or pad_w else odd


def pointwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   stride: tuple[int, int], groups: int = 1) -> torch.Tensor:
    """An unpadded 1x1 conv at `stride`: [B, C_in, H, W] -> [B, C_out, ceil(H / s), ceil(W / s)].

    Computed as subsampling, then a stride-1 conv: the same numbers, but it never reaches
    torch 2.13's CPU kernel for the weight gradient of a strided 1x1 conv in channels_last, which
    corrupts the heap (a segfault or "double free") when the batch is odd and there are few
    input channels (measured with 4 and 8; 16 and more were fine).
    """
    if stride[0] == stride[1]:
        x = subsample(x, 0, stride[0])
    else:
        x = x[:, :, :: stride[0], :: stride[1]]
    return F.conv2d(x, weight, bias, 1, 0, 1, groups)


class StridedPointwiseConv(nn.Conv2d):
    """nn.Conv2d(C_in, C_out, 1, stride) (same parameters and state dict) computed by
    `pointwise_conv`, so a strided shortcut or reduction is safe in channels_last."""

    def __init__(self, C_in: int, C_out: int, stride: int = 1, bias: bool = False):
        super().__init__(C_in, C_out, 1, stride=stride, padding=0, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C_in, H, W] -> [B, C_out, ceil(H / stride), ceil(W / stride)]."""
        return pointwise_conv(x, self.weight, self.bias, self.stride, self.groups)


class ReLUConvBN(nn.Module):
    """ReLU -> Conv(k, stride, padding, no bias) -> BatchNorm: [B, C_in, H, W] -> [B, C_out, H', W']."""

    def __init__(
        self,
        C_in: int,
        C_out: int,
        kernel_size: int,
        stride: int,
        padding: int,
        affine: bool = True,
    ):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C_in, H, W] -> [B, C_out, H', W']."""
        return self.op(x)


class DilConv(nn.Module):
    """ReLU -> dilated depthwise conv -> pointwise 1x1 conv -> BatchNorm (one separable block)."""

    def __init__(
        self,
        C_in: int,
        C_out: int,
        kernel_size: int,
        stride: int,
        padding: int,
        dilation: int,
        affine: bool = True,
    ):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(
                C_in,
                C_in,
                kernel_size,
                stride=stride,
                padding=padding,
                dilation=dilation,
                groups=C_in,
                bias=False,
            ),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C_in, H, W] -> [B, C_out, ceil(H / stride), ceil(W / stride)]."""
        return self.op(x)


class SepConv(nn.Module):
    """Two stacked separable blocks (DilConv with dilation 1), the first carrying the stride.

    DARTS applies the separable convolution twice, which is why `sep_conv_3x3` has twice the
    parameters of `dil_conv_3x3`; only the first block is strided, and the channel change (if
    any) happens in the last pointwise conv.
    """

    def __init__(
        self,
        C_in: int,
        C_out: int,
        kernel_size: int,
        stride: int,
        padding: int,
        affine: bool = True,
    ):
        super().__init__()
        self.op = nn.Sequential(
            DilConv(C_in, C_in, kernel_size, stride, padding, 1, affine=affine),
            DilConv(C_in, C_out, kernel_size, 1, padding, 1, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C_in, H, W] -> [B, C_out, ceil(H / stride), ceil(W / stride)]."""
        return self.op(x)


class Identity(nn.Module):
    """The identity (skip_connect at stride 1). Its own class so cells can exempt it from drop path."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns x unchanged, [B, C, H, W]."""
        return x


class Zero(nn.Module):
    """The `none` op: zeros of the output shape [B, C, ceil(H / stride), ceil(W / stride)].

    A supernet should skip it rather than compute it (`isinstance(op, Zero)`): its output is
    all zeros and contributes nothing but its architecture weight. It is still a valid op, so
    that a genotype containing `none` builds and runs.
    """

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Zeros shaped like the stride-`stride` output; keeps dtype, device and the graph."""
        if self.stride == 1:
            return x.mul(0.0)
        # Strided slicing gives ceil(H / stride), the same size as the strided convs and pools.
        return subsample(x, 0, self.stride).mul(0.0)


class FactorizedReduce(nn.Module):
    """Halve the spatial size with two offset stride-2 1x1 convs whose outputs are concatenated.

    [B, C_in, H, W] -> [B, C_out, ceil(H / 2), ceil(W / 2)]; C_out must be even. The second conv
    sees the input shifted by one pixel so that together the two convs cover every position.
    DARTS slices `x[:, :, 1:, 1:]`, which breaks on odd sizes; padding the shifted map by one
    zero row/column at the bottom/right gives identical results on even sizes (the pad is never
    sampled) and the matching size ceil(H / 2) on odd ones.
    """

    def __init__(self, C_in: int, C_out: int, affine: bool = True):
        super().__init__()
        if C_out % 2:
            raise ValueError(f"FactorizedReduce needs an even C_out, got {C_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = StridedPointwiseConv(C_in, C_out // 2, stride=2)
        self.conv_2 = StridedPointwiseConv(C_in, C_out // 2, stride=2)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C_in, H, W] -> [B, C_out, ceil(H / 2), ceil(W / 2)]."""
        return self.after_relu(self.relu(x))

    def after_relu(self, x: torch.Tensor) -> torch.Tensor:
        """The op on an input that already went through the ReLU (see `after_leading_relu`)."""
        odd = _odd_positions(x)
        conv_1, conv_2 = self.conv_1, self.conv_2
        return self.bn(torch.cat([
            pointwise_conv(x, conv_1.weight, conv_1.bias, conv_1.stride, conv_1.groups),
            pointwise_conv(odd, conv_2.weight, conv_2.bias, (1, 1), conv_2.groups),
        ], dim=1))


def _conv_7x1_1x7(C: int, stride: int, affine: bool) -> nn.Module:
    # As in DARTS: a 1x7 conv strided along the width, then a 7x1 conv strided along the height.
    return nn.Sequential(
        nn.ReLU(inplace=False),
        nn.Conv2d(C, C, (1, 7), stride=(1, stride), padding=(0, 3), bias=False),
        nn.Conv2d(C, C, (7, 1), stride=(stride, 1), padding=(3, 0), bias=False),
        nn.BatchNorm2d(C, affine=affine),
    )


def _build_op(shape: OpShape, C: int, stride: int, affine: bool) -> nn.Module:
    """The module of an op of `shape` on C channels; padding keeps H' = ceil(H / stride)."""
    family, k, d = shape
    pad = d * (k - 1) // 2
    if family == "zero":
        return Zero(stride)
    if family == "max_pool":
        return nn.MaxPool2d(k, stride=stride, padding=pad)
    if family == "avg_pool":
        # count_include_pad=False: border outputs average only real pixels (as DARTS).
        return nn.AvgPool2d(k, stride=stride, padding=pad, count_include_pad=False)
    if family == "skip":
        return Identity() if stride == 1 else FactorizedReduce(C, C, affine=affine)
    if family == "sep_conv":
        return SepConv(C, C, k, stride, pad, affine=affine)
    if family == "dil_conv":
        return DilConv(C, C, k, stride, pad, d, affine=affine)
    if family == "conv_7x1_1x7":
        return _conv_7x1_1x7(C, stride, affine)
    raise ValueError(f"no module for op family {family!r}")


OPS: dict[str, Callable[[int, int, bool], nn.Module]] = {
    name: functools.partial(_build_op, shape) for name, shape in OP_SHAPES.items()
}
"""Op name (every name of `nasaudit.search_space.OP_SHAPES`) -> `factory(C, stride, affine) ->
nn.Module`, mapping [B, C, H, W] to [B, C, ceil(H / stride), ceil(W / stride)]."""

def starts_with_relu(op: nn.Module) -> bool:
    """Whether `op` computes f(relu(x)): ReLUConvBN, DilConv, SepConv, FactorizedReduce and
    conv_7x1_1x7 do (see `forward_after_relu`)."""
    # The module itself is checked, not only the class: a caller may swap the activation
    # (e.g. Softplus for a smooth loss), and then the op no longer starts with a ReLU.
    if isinstance(op, (ReLUConvBN, DilConv)):
        return isinstance(op.op[0], nn.ReLU)
    if isinstance(op, SepConv):
        return starts_with_relu(op.op[0])
    if isinstance(op, FactorizedReduce):
        return isinstance(op.relu, nn.ReLU)
    return isinstance(op, nn.Sequential) and len(op) > 1 and isinstance(op[0], nn.ReLU)


def forward_after_relu(op: nn.Module, relu_x: torch.Tensor) -> torch.Tensor:
    """f(relu_x) for an op computing f(relu(x)) (`starts_with_relu(op)`), so that the ops of a
    supernet edge can share one relu(x): `forward_after_relu(op, torch.relu(x))` runs the same
    modules in the same order as `op(x)` and gives the same result. [B, C, H, W] -> op's shape.
    """
    if isinstance(op, SepConv):
        return op.op[1](forward_after_relu(op.op[0], relu_x))
    if isinstance(op, FactorizedReduce):
        return op.after_relu(relu_x)
    # ReLUConvBN, DilConv (their .op) and conv_7x1_1x7: a Sequential whose first module is the
    # ReLU. It stays there (state_dict keys unchanged); only the modules after it run.
    seq = op.op if isinstance(op, (ReLUConvBN, DilConv)) else op
    if not starts_with_relu(op):
        raise TypeError(f"{type(op).__name__} does not start with a ReLU")
    x = relu_x
    for module in list(seq)[1:]:
        x = module(x)
    return x


def drop_path(
    x: torch.Tensor, drop_prob: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Drop whole samples of a path: zero x[b] with probability `drop_prob`, scale the rest.

    x: [B, ...]; returns a new tensor of the same shape (x is not modified), equal to
    x * mask / (1 - drop_prob) with one Bernoulli(1 - drop_prob) draw per sample, so the
    expectation is unchanged. Returns x itself when drop_prob <= 0.

    Randomness: the mask is drawn from `generator` when given (it must live on x's device),
    otherwise from torch's default RNG for x's device. The evaluation network uses the default
    RNG, so training is deterministic when the trainer seeds it (`nasaudit.infra.device.seeded`) around
    the training loop. Raises ValueError for drop_prob >= 1.
    """
    if drop_prob <= 0.0:
        return x
    if drop_prob >= 1.0:
        raise ValueError(f"drop_prob must be below 1, got {drop_prob}")
    keep_prob = 1.0 - drop_prob
    mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device)
    mask.bernoulli_(keep_prob, generator=generator)
    return x * mask / keep_prob
