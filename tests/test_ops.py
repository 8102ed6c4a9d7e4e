"""Tests for nasaudit.ops: shapes, parameter counts and drop path of the DARTS operations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nasaudit.device import generator, seeded
from nasaudit.ops import (
    OPS,
    PARAMETER_FREE_OPS,
    DilConv,
    FactorizedReduce,
    Identity,
    ReLUConvBN,
    SepConv,
    Zero,
    drop_path,
)

ALL_OPS = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "sep_conv_7x7",
    "dil_conv_3x3",
    "dil_conv_5x5",
    "conv_7x1_1x7",
)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_op_names_are_the_study_ops():
    assert set(OPS) == set(ALL_OPS)
    assert PARAMETER_FREE_OPS == {"none", "max_pool_3x3", "avg_pool_3x3", "skip_connect"}


def test_search_space_ops_all_exist():
    from nasaudit.search_space import load_search_space

    for name in ("darts", "paper"):
        assert set(load_search_space(name).ops) <= set(OPS)


@pytest.mark.parametrize("name", ALL_OPS)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [8, 7])
@pytest.mark.parametrize("affine", [True, False])
def test_op_output_shape(name, stride, size, affine):
    C = 4
    op = OPS[name](C, stride, affine)
    x = torch.randn(2, C, size, size + 1)
    out = op(x)
    # Every op maps H to ceil(H / stride) so that the ops on one edge can be summed.
    assert out.shape == (2, C, -(-size // stride), -(-(size + 1) // stride))
    assert out.dtype == x.dtype


@pytest.mark.parametrize("name", sorted(PARAMETER_FREE_OPS))
def test_parameter_free_ops_have_no_weights_at_stride_1(name):
    assert n_params(OPS[name](8, 1, True)) == 0


def test_parameter_counts_follow_darts():
    C = 8
    bn = 2 * C  # affine BatchNorm: weight and bias
    for k in (3, 5, 7):
        # SepConv: two (depthwise k x k, pointwise 1x1, BN) blocks.
        assert n_params(OPS[f"sep_conv_{k}x{k}"](C, 1, True)) == 2 * (k * k * C + C * C + bn)
    for k in (3, 5):
        assert n_params(OPS[f"dil_conv_{k}x{k}"](C, 1, True)) == k * k * C + C * C + bn
    assert n_params(OPS["conv_7x1_1x7"](C, 1, True)) == 7 * C * C + 7 * C * C + bn
    # skip_connect at stride 2 is a FactorizedReduce: two C -> C/2 1x1 convs and a BN.
    assert n_params(OPS["skip_connect"](C, 2, True)) == C * C + bn
    # affine=False (the supernet) drops the BN scale and shift.
    assert n_params(OPS["sep_conv_3x3"](C, 1, False)) == 2 * (9 * C + C * C)


def test_op_classes():
    assert isinstance(OPS["skip_connect"](4, 1, True), Identity)
    assert isinstance(OPS["skip_connect"](4, 2, True), FactorizedReduce)
    assert isinstance(OPS["sep_conv_3x3"](4, 1, True), SepConv)
    assert isinstance(OPS["dil_conv_5x5"](4, 2, True), DilConv)
    assert isinstance(OPS["none"](4, 2, True), Zero)
    relu_conv_bn = ReLUConvBN(4, 6, 1, 1, 0)
    assert relu_conv_bn(torch.randn(2, 4, 5, 5)).shape == (2, 6, 5, 5)


def test_zero_returns_zeros_and_keeps_the_graph():
    x = torch.randn(2, 3, 7, 6, requires_grad=True)
    out = Zero(2)(x)
    assert out.shape == (2, 3, 4, 3)
    assert torch.count_nonzero(out) == 0
    out.sum().backward()
    assert x.grad is not None


def test_avg_pool_excludes_padding():
    out = OPS["avg_pool_3x3"](1, 1, True)(torch.ones(1, 1, 4, 4))
    torch.testing.assert_close(out, torch.ones(1, 1, 4, 4))


def test_factorized_reduce_matches_darts_on_even_sizes():
    with seeded(0):
        fr = FactorizedReduce(4, 6).eval()
    x = torch.randn(2, 4, 8, 8)
    # DARTS: cat(conv_1(relu(x)), conv_2(relu(x)[:, :, 1:, 1:])) then BN.
    r = torch.relu(x)
    expected = fr.bn(torch.cat([fr.conv_1(r), fr.conv_2(r[:, :, 1:, 1:])], dim=1))
    torch.testing.assert_close(fr(x), expected)
    with pytest.raises(ValueError):
        FactorizedReduce(4, 5)


def test_drop_path_is_per_sample_and_unbiased():
    x = torch.ones(4000, 3, 2, 2)
    out = drop_path(x, 0.25, generator=generator(0))
    per_sample = out.flatten(1)
    # Each sample is either dropped entirely or scaled by 1 / keep_prob.
    assert torch.all(
        (per_sample == 0).all(1) | torch.isclose(per_sample, torch.tensor(4 / 3)).all(1)
    )
    assert abs(out.mean().item() - 1.0) < 0.05
    assert torch.equal(x, torch.ones_like(x))  # not modified in place


def test_drop_path_determinism_and_identity():
    x = torch.randn(16, 2, 3, 3)
    a = drop_path(x, 0.5, generator=generator(7))
    b = drop_path(x, 0.5, generator=generator(7))
    torch.testing.assert_close(a, b)
    with seeded(3):
        c = drop_path(x, 0.5)
    with seeded(3):
        d = drop_path(x, 0.5)
    torch.testing.assert_close(c, d)
    assert drop_path(x, 0.0) is x
    with pytest.raises(ValueError):
        drop_path(x, 1.0)


@pytest.mark.parametrize("name", [n for n in ALL_OPS if n not in PARAMETER_FREE_OPS])
def test_gradients_reach_every_weight(name):
    op = OPS[name](4, 2, True)
    op(torch.randn(2, 4, 8, 8)).square().sum().backward()
    for pname, p in op.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
