"""Tests for nasaudit.ops: shapes, parameter counts and drop path of the DARTS operations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nasaudit.infra.device import generator, seeded
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
    subsample,
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


def test_factorized_reduce_matches_the_padded_darts_form_with_gradients_on_odd_sizes():
    """On odd sizes the reference is DARTS's shifted map padded by one zero row and column
    (`pad(x[:, :, 1:, 1:], (0, 1, 0, 1))`), both convs at stride 2: outputs, input gradients
    and weight gradients agree, in both memory formats."""
    gen = generator(1)
    for size, layout in ((7, torch.contiguous_format), (9, torch.channels_last), (8, torch.channels_last)):
        with seeded(0):
            fr = FactorizedReduce(4, 6).eval().to(memory_format=layout)
        x = torch.randn(3, 4, size, size + 2, generator=gen)
        a = x.clone().contiguous(memory_format=layout).requires_grad_()
        b = x.clone().requires_grad_()
        ya = fr(a)
        r = torch.relu(b)
        w1, w2 = fr.conv_1.weight.detach().clone(), fr.conv_2.weight.detach().clone()
        yb = fr.bn(torch.cat([
            torch.nn.functional.conv2d(r, w1, stride=2),
            torch.nn.functional.conv2d(torch.nn.functional.pad(r[:, :, 1:, 1:], (0, 1, 0, 1)), w2, stride=2),
        ], dim=1))
        assert ya.shape == yb.shape == (3, 6, -(-size // 2), -(-(size + 2) // 2))
        weights = torch.randn(ya.shape, generator=gen)
        (ya * weights).sum().backward()
        (yb * weights).sum().backward()
        torch.testing.assert_close(ya, yb)
        torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("start,stride", [(0, 2), (1, 2), (1, 3), (2, 2)])
def test_subsample_matches_slicing_and_keeps_the_gradient_layout(start, stride):
    """Values and gradients equal plain slicing (the oracle); the gradient reaching a
    channels_last intermediate is channels_last (torch's slicing backward gives NCHW)."""
    gen = generator(2)
    x = torch.randn(3, 5, 9, 8, generator=gen)
    out_grad = torch.randn(x[..., start::stride, start::stride].shape, generator=gen)
    grads = {}
    leaf = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    hidden = leaf * 1.0  # a non-leaf: a leaf's .grad is restrided by autograd's accumulation
    hidden.register_hook(lambda g: grads.__setitem__("ours", g))
    ours = subsample(hidden, start, stride)
    ours.backward(out_grad)
    ref_leaf = x.clone().requires_grad_()
    ref = ref_leaf[..., start::stride, start::stride]
    ref.backward(out_grad)
    torch.testing.assert_close(ours, ref.detach())
    torch.testing.assert_close(grads["ours"], ref_leaf.grad)
    assert grads["ours"].is_contiguous(memory_format=torch.channels_last)
    nonzero = grads["ours"] != 0
    assert int(nonzero.sum()) == int((out_grad != 0).sum())
    with torch.no_grad():
        assert subsample(hidden, start, stride).grad_fn is None
    assert subsample(hidden, 0, 1) is hidden


def test_subsample_under_vmap_and_fx():
    """Per-sample gradients through torch.func (the gradient-variance probe's path) equal the
    dense oracle, and torch.fx traces through it as one call (the inference rewrite)."""
    xs = torch.randn(4, 2, 3, 7, 6, generator=generator(3))
    per_sample = torch.func.vmap(torch.func.grad(lambda t: subsample(t, 1, 2).pow(2).sum()))(xs)
    expected = torch.zeros_like(xs)
    expected[..., 1::2, 1::2] = 2 * xs[..., 1::2, 1::2]
    torch.testing.assert_close(per_sample, expected)
    with seeded(0):
        fr = FactorizedReduce(4, 6).eval()
    traced = torch.fx.symbolic_trace(fr)
    assert "subsample" in traced.code
    x = torch.randn(2, 4, 7, 7, generator=generator(4))
    torch.testing.assert_close(traced(x), fr(x))


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


def test_strided_pointwise_conv_is_a_strided_1x1_conv():
    """StridedPointwiseConv (the shortcut and FactorizedReduce conv) gives exactly
    nn.Conv2d(C_in, C_out, 1, stride)'s outputs and input gradients, in channels_last, on odd
    and even sizes, with the same state dict."""
    from nasaudit.ops import StridedPointwiseConv

    gen = generator(0)
    for batch, size, c_in, c_out, stride in ((5, 16, 8, 4, 2), (3, 15, 4, 8, 2), (2, 9, 6, 6, 3)):
        with seeded(0):
            ours = StridedPointwiseConv(c_in, c_out, stride=stride)
        ref = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)
        ref.load_state_dict(ours.state_dict())
        ours = ours.to(memory_format=torch.channels_last)
        x = torch.randn(batch, c_in, size, size, generator=gen)
        a = x.contiguous(memory_format=torch.channels_last).requires_grad_()
        b = x.clone().requires_grad_()
        ya, yb = ours(a), ref(b)
        (ya * ya).sum().backward()
        (yb * yb).sum().backward()
        assert ya.shape == yb.shape == (batch, c_out, -(-size // stride), -(-size // stride))
        assert torch.allclose(ya, yb, atol=1e-6) and torch.allclose(a.grad, b.grad, atol=1e-5)
        assert torch.allclose(ours.weight.grad, ref.weight.grad, rtol=1e-5, atol=1e-5)


def test_channels_last_training_step_on_an_odd_batch_does_not_corrupt_memory(tmp_path):
    """torch 2.13's CPU weight gradient of a strided 1x1 conv in channels_last corrupts the heap
    on odd batches with few input channels (a plain nn.Conv2d(8, 4, 1, stride=2) dies with
    "double free" in a few steps at batch 5 on two threads). prepare_model puts every model in
    channels_last, so a resnet shortcut and a DARTS reduction must not reach that kernel: a
    subprocess with glibc's heap checks trains both on odd batches."""
    import os
    import subprocess
    import sys

    script = tmp_path / "odd_batch.py"
    script.write_text(
        "import torch, torch.nn.functional as F\n"
        "from nasaudit.infra.device import prepare_model\n"
        "from nasaudit.models.registry import build_model\n"
        "for name, kw in (('resnet18', {'width': 8}), ('darts_v2', {'C': 4, 'layers': 3})):\n"
        "    m = prepare_model(build_model(name, 10, **kw), torch.device('cpu')).train()\n"
        "    opt = torch.optim.SGD(m.parameters(), lr=0.01)\n"
        "    for batch in (5, 3, 67, 5, 3, 67):\n"
        "        out = m(torch.rand(batch, 3, 32, 32))\n"
        "        out = out[0] if isinstance(out, tuple) else out\n"
        "        opt.zero_grad(); F.cross_entropy(out, torch.zeros(batch, dtype=torch.long)).backward(); opt.step()\n"
        "print('ok')\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MALLOC_CHECK_": "3"}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-500:]
