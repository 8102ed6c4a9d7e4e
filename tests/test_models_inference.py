"""Tests for nasaudit.models.inference: the folded, frozen copy the query attacks run on.

The oracle is the original network in eval mode: the copy must give the same logits and the
same input gradients to fp32 rounding, with BatchNorm statistics far from the identity (so a
wrong fold would show), and must leave the original exactly as it was.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nasaudit.infra.device import generator, seeded
from nasaudit.models import ImageClassifier, build_model
from nasaudit.models.inference import inference_model

CASES = [
    ("darts_v2", {"C": 8, "layers": 5}, 2),
    ("nasnet", {"C": 8, "layers": 3}, 2),
    ("resnet18", {"width": 8}, 3),
    ("tiny_cnn", {}, 0),
]


def _trained_looking(name: str, kwargs: dict) -> nn.Module:
    """A model whose BatchNorm running statistics and affine weights are far from (0, 1)."""
    with seeded(0):
        model = build_model(name, num_classes=10, **kwargs)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 1.0  # one batch sets the running statistics
                if m.affine:
                    m.weight.data.uniform_(0.5, 2.0)
                    m.bias.data.uniform_(-0.5, 0.5)
    model.train()
    gen = generator(1)
    with torch.no_grad():
        model(torch.rand(16, 3, 32, 32, generator=gen) * 0.7 + 0.2)
    return model.eval()


def _batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize(("name", "kwargs", "left"), CASES)
def test_same_logits_and_input_gradients_as_the_original(name, kwargs, left):
    """In float64, where rounding cannot move a max-pool or ReLU decision, the folded copy's
    logits and input gradients equal the original's to 1e-9; in float32 the logits agree to
    rounding (its gradients may differ where a max-pool window is tied to fp32 precision)."""
    model = _trained_looking(name, kwargs)
    x = torch.rand(6, 3, 32, 32, generator=generator(2))
    y = torch.arange(6) % 10

    fast32 = inference_model(model)
    assert _batchnorms(fast32) <= left < _batchnorms(model) or _batchnorms(model) == left == 0
    with torch.no_grad():
        ref32, out32 = model(x), fast32(x)
    assert ref32.abs().max() > 0.1  # a non-trivial output
    torch.testing.assert_close(out32, ref32, rtol=1e-4, atol=1e-5)

    def logits_and_grad(net):
        xa = x.double().requires_grad_(True)
        logits = net(xa)
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), xa)
        return logits.detach(), grad

    model = model.double()
    ref_logits, ref_grad = logits_and_grad(model)
    logits, grad = logits_and_grad(inference_model(model))
    assert ref_grad.abs().max() > 1e-3
    torch.testing.assert_close(logits, ref_logits, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-7, atol=1e-9)


def test_the_original_is_left_exactly_as_it_was():
    model = _trained_looking("darts_v2", {"C": 8, "layers": 5}).train()
    model.classifier.weight.requires_grad_(False)  # a caller's own freezing is kept too
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    fast = inference_model(model)
    assert model.training
    assert [p.requires_grad for p in model.parameters()] == flags
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not fast.training
    assert not any(p.requires_grad for p in fast.parameters())
    assert all(p.data_ptr() != q.data_ptr() for p in fast.parameters() for q in model.parameters())


class _DataDependent(nn.Module):
    """fx cannot trace a branch on a tensor's value."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        h = self.bn(self.conv(x))
        if h.mean() > 0:
            h = h * 2
        return h.flatten(1)


def test_an_untraceable_or_foreign_network_is_used_as_it_is_in_eval_mode():
    with seeded(0):
        body = _DataDependent()
        untraceable = ImageClassifier(body, feature_dim=4 * 8 * 8, num_classes=3)
    untraceable.train()
    assert inference_model(untraceable) is untraceable and not untraceable.training
    # A caller's wrapper is never traced: its Python side effects (here a call counter) stay.
    wrapper = _DataDependent().train()
    assert inference_model(wrapper) is wrapper and not wrapper.training
