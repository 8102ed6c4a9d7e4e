"""The optimised supernet path (shared ReLU per edge, channels_last) against the plain one.

`Supernet(fast=False)` runs every op on its own, in NCHW, exactly as DARTS's MixedOp: it is the
reference. The fast path must give the same loss (fp32 tolerance), the same gradients for every
weight and alpha, and the same search step, on a fixed real batch.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nasaudit.infra.device import seeded
from nasaudit.ops import OPS, forward_after_relu, starts_with_relu
from nasaudit.search import Architect, Supernet
from nasaudit.search_space import load_search_space


def _batch(data, n: int = 8):
    x = data.train_images[:n].float() / 255.0
    return x, data.train_labels[:n]


def _loss_and_grads(model: Supernet, x, y) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _pair(space: str, partial: int = 1) -> tuple[Supernet, Supernet]:
    ops = load_search_space(space).ops
    models = []
    for fast in (False, True):
        with seeded(3):
            models.append(Supernet(ops, 10, C=8, layers=3, partial_channels=partial, fast=fast))
    return models[0], models[1]


@pytest.mark.parametrize("space,partial", [("darts", 1), ("paper", 1), ("darts", 2)])
def test_fast_supernet_gives_the_reference_loss_and_gradients(cifar_subset, space, partial):
    reference, fast = _pair(space, partial)
    # Same parameters under the same names: checkpoints move between the two paths.
    assert list(reference.state_dict()) == list(fast.state_dict())
    for (_, a), (_, b) in zip(reference.state_dict().items(), fast.state_dict().items(), strict=True):
        assert torch.equal(a, b)
    x, y = _batch(cifar_subset)
    loss_ref, grads_ref = _loss_and_grads(reference, x, y)
    loss_fast, grads_fast = _loss_and_grads(fast, x, y)
    # Independent oracle: the reference path in float64.
    exact = _pair(space, partial)[0].double()
    loss_64, grads_64 = _loss_and_grads(exact, x.double(), y)
    assert loss_64 > 1.0  # an untrained 10-class net: about ln 10
    assert loss_ref == pytest.approx(loss_64, rel=1e-6)
    assert loss_fast == pytest.approx(loss_64, rel=1e-6)
    assert set(grads_fast) == set(grads_ref) == set(grads_64)
    assert {"alpha_normal", "alpha_reduce"} <= set(grads_64)
    for name, g in grads_64.items():
        norm = g.norm().item()
        assert norm > 0, name
        # Relative error in norm per tensor. Both fp32 paths round (batch-norm gradients sum over
        # the batch and the image, with cancellation); oneDNN's channels_last kernels round
        # several times more than NCHW, hence a looser bound for the fast path.
        # The alpha gradient, which steers the search, sums over everything and stays tight.
        tol = 1e-3 if name.startswith("alpha") else 1e-2
        assert (grads_ref[name].double() - g).norm().item() <= tol * norm, name
        assert (grads_fast[name].double() - g).norm().item() <= 3 * tol * norm, name


def test_fast_search_step_moves_weights_and_alpha_like_the_reference(cifar_subset):
    reference, fast = _pair("darts")
    exact = _pair("darts")[0].double()
    alpha_before = reference.alpha_normal.detach().clone().double()
    x, y = _batch(cifar_subset, 16)
    for model, xx in ((reference, x), (fast, x), (exact, x.double())):
        # SGD for alpha too: Adam's first step is lr * sign(g), which turns rounding-level
        # differences of near-zero gradient entries into full-size steps.
        arch = Architect(
            model, torch.optim.SGD(model.weight_parameters(), lr=0.1, momentum=0.9),
            torch.optim.SGD(model.arch_parameters(), lr=1.0), mode="first_order", n_step=1)
        arch.step([(xx[:8], y[:8])], (xx[8:], y[8:]))
    step_64 = exact.alpha_normal.detach() - alpha_before
    errors = {name: ((m.alpha_normal.detach().double() - alpha_before - step_64).norm()
                     / step_64.norm()).item() for name, m in (("ref", reference), ("fast", fast))}
    assert step_64.norm() > 1e-3
    # After a weight step on 8 images (train-mode BN), the alpha gradient amplifies rounding:
    # NCHW fp32 lands a few % from float64. The fast path must be as close, within a factor.
    assert errors["ref"] < 0.1
    assert errors["fast"] <= 3 * errors["ref"] + 0.02, errors
    for (name, a), (_, b) in zip(exact.state_dict().items(), fast.state_dict().items(), strict=True):
        if a.is_floating_point() and not name.startswith("alpha"):  # alpha: checked above
            assert (a - b.double()).norm() <= 1e-2 * a.norm() + 1e-6, name


@pytest.mark.parametrize("name", [n for n in OPS if n != "none"])
@pytest.mark.parametrize("stride", [1, 2])
def test_forward_after_relu_is_the_op_on_a_relu_input(name, stride):
    with seeded(0):
        op = OPS[name](6, stride, False)
    x = torch.randn(2, 6, 9, 9, generator=torch.Generator().manual_seed(1))
    if not starts_with_relu(op):
        assert name in ("max_pool_3x3", "avg_pool_3x3") or (name, stride) == ("skip_connect", 1)
        return
    # Bitwise: the same modules run in the same order on the same relu(x).
    assert torch.equal(forward_after_relu(op, torch.relu(x)), op(x))
