"""Architecture objectives (nasaudit.search.objectives) and their use by the architect.

Values are checked against independent computations (a closed form for a linear model, the
probes' streaming per-sample variance, a per-sample loop); alpha gradients against central
finite differences, both of the term alone and of the whole alpha objective in every mode.
The supernet is tiny (C=4, 3 cells, 2 nodes, 8x8 inputs) and runs in float64.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from nasaudit.infra.errors import InputError
from nasaudit.search import Architect, Supernet
from nasaudit.search.objectives import (
    ObjectiveContext,
    input_curvature,
    parse_objective,
    weight_grad_variance,
)

OPS = ("none", "avg_pool_3x3", "skip_connect", "sep_conv_3x3")
LR, MOMENTUM, WD = 0.025, 0.9, 3e-4


def _supernet(smooth: bool = True) -> Supernet:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        m = Supernet(OPS, 3, C=4, layers=3, nodes=2).double()
        with torch.no_grad():  # alpha away from uniform, so every term has a real gradient
            for a in m.arch_parameters():
                a.normal_(0, 0.5)
    if smooth:
        # Softplus instead of ReLU: the curvature term differentiates twice, and finite
        # differences must not cross ReLU kinks.
        for mod in list(m.modules()):
            for name, child in mod.named_children():
                if isinstance(child, torch.nn.ReLU):
                    setattr(mod, name, torch.nn.Softplus(beta=2.0))
    return m


def _batches(n: int, batch: int = 4, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(batch, 3, 8, 8, generator=g, dtype=torch.float64),
             torch.randint(0, 3, (batch,), generator=g)) for _ in range(n)]


def _ctx(m: Supernet, x, y, epoch: int = 0, epochs: int = 1) -> ObjectiveContext:
    weights = {k: p.detach() for k, p in m.named_weights().items()}
    # Running statistics as constants: a train-mode forward would make them depend on alpha,
    # which the terms (like the architect) treat as fixed.
    buffers = {k: b.clone() for k, b in m.named_buffers()}
    forward = lambda images: functional_call(  # noqa: E731
        m, (weights, {k: b.clone() for k, b in buffers.items()}), (images,))
    logits = forward(x)
    return ObjectiveContext(m, forward, weights, buffers, x, y, logits, F.cross_entropy(logits, y), epoch, epochs)


def _numeric_alpha_check(m: Supernet, fn, analytic, eps=1e-6, rtol=1e-4, directions=2):
    """<analytic, d> against (fn(alpha + eps d) - fn(alpha - eps d)) / 2 eps, fn on a copy."""
    alphas = [p.detach().clone() for p in m.arch_parameters()]
    g = torch.Generator().manual_seed(7)
    for _ in range(directions):
        d = [torch.randn(a.shape, generator=g, dtype=a.dtype) for a in alphas]
        f = []
        for s in (1.0, -1.0):
            mc = copy.deepcopy(m)
            with torch.no_grad():
                for p, a, v in zip(mc.arch_parameters(), alphas, d, strict=True):
                    p.copy_(a + s * eps * v)
            f.append(float(fn(mc)))
        numerical = (f[0] - f[1]) / (2 * eps)
        got = sum(float((ga * v).sum()) for ga, v in zip(analytic, d, strict=True))
        assert got == pytest.approx(numerical, rel=rtol, abs=1e-10)
        assert abs(numerical) > 1e-8  # a real gradient, not 0 == 0


# -- values ---------------------------------------------------------------------------------


def test_input_curvature_of_a_linear_model_is_its_softmax_curvature_and_zero_when_linear():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(3, 12, generator=g, dtype=torch.float64)
    x = torch.rand(5, 12, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (5,), generator=g)
    linear = lambda v: v @ W.T  # noqa: E731
    # A loss linear in x (the negative true-class logit): no curvature at all.
    margin = lambda logits, labels: -logits.gather(1, labels[:, None]).sum()  # noqa: E731
    assert float(input_curvature(linear, x, y, h=0.1, loss_fn=margin)) == 0.0
    # Cross entropy of a linear model: grad_x = W^T (p(x) - e_y), so the closed form is
    # mean ||W^T (p(x + h z) - p(x))||^2 with z = sign(W^T (p(x) - e_y)).
    h = 0.05
    onehot = F.one_hot(y, 3).double()
    z = ((torch.softmax(linear(x), 1) - onehot) @ W).sign()
    diff = (torch.softmax(linear(x + h * z), 1) - torch.softmax(linear(x), 1)) @ W
    expected = diff.square().sum(1).mean()
    got = input_curvature(linear, x, y, h=h)
    torch.testing.assert_close(got, expected)
    assert float(got.detach()) > 0
    # A nonlinear network (the supernet): positive, and equal to a per-sample loop.
    m = _supernet(smooth=False)
    (xb, yb), = _batches(1)
    ctx = _ctx(m, xb, yb)
    value = parse_objective("input_curvature:1:h=0.02").value(ctx)
    assert float(value.detach()) > 0
    per_sample = []
    for i in range(xb.shape[0]):
        xi = xb[i : i + 1].clone().requires_grad_()
        m.eval()  # one sample: batch statistics are degenerate, so compare in eval mode
        g0 = torch.autograd.grad(F.cross_entropy(m(xi), yb[i : i + 1], reduction="sum"), xi)[0]
        x1 = (xb[i : i + 1] + 0.02 * g0.sign()).requires_grad_()
        g1 = torch.autograd.grad(F.cross_entropy(m(x1), yb[i : i + 1], reduction="sum"), x1)[0]
        per_sample.append(float((g1 - g0).square().sum()))
    m.eval()
    ctx_eval = _ctx(m, xb, yb)
    loop_mean = sum(per_sample) / len(per_sample)
    assert float(input_curvature(ctx_eval.forward, xb, yb, h=0.02)) == pytest.approx(loop_mean, rel=1e-9)


def test_gradvar_term_equals_the_probe_and_beta_is_mean_logsumexp():
    from nasaudit.probes.gradvar import per_sample_grad_variance

    m = _supernet(smooth=False)
    (x, y), = _batches(1, batch=6)
    ctx = _ctx(m, x, y)
    v = weight_grad_variance(m, ctx.weights, ctx.buffers, x, y)
    probe = per_sample_grad_variance(m, m.named_weights(), x, y, chunk_size=6)
    assert float(v) == pytest.approx(probe["variance"], rel=1e-6)
    term = parse_objective("gradvar:1:samples=6,target=1e-2")
    assert float(term.value(ctx)) == pytest.approx((torch.log(v) - torch.log(torch.tensor(1e-2))).item() ** 2)
    beta = parse_objective("beta:2")
    rows = torch.cat([m.alpha_normal, m.alpha_reduce]).detach()
    expected = sum(torch.log(torch.exp(r).sum()) for r in rows) / rows.shape[0]
    assert float(beta.value(ctx)) == pytest.approx(float(expected), rel=1e-12)
    # beta-DARTS's linear schedule: 0 at the first epoch, the full weight at the last.
    assert [beta.weight_at(e, 5) for e in range(5)] == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])
    assert parse_objective("beta:2:start=1,end=3").weight_at(0, 3) == 2.0


@pytest.mark.parametrize("spec,problem", [
    ("nope:1", "unknown objective"), ("beta", "needs a weight"), ("beta:x", "finite"),
    ("beta:1:bogus=2", "unknown option"), ("input_curvature:1:h=0", "h must be > 0"),
    ("gradvar:1:samples=1", "samples"), ("beta:1:start", "KEY=NUMBER"),
])
def test_bad_objective_specs_are_input_errors(spec, problem):
    with pytest.raises(InputError, match=problem):
        parse_objective(spec)


# -- alpha gradients of each term -----------------------------------------------------------


@pytest.mark.parametrize("spec", ["input_curvature:1:h=0.05", "beta:1", "gradvar:1:samples=4",
                                  "gradvar:1:samples=4,target=1e-3"])
def test_each_term_alpha_gradient_matches_numerical_derivative(spec):
    m = _supernet()
    (x, y), = _batches(1)
    term = parse_objective(spec)
    value = term.value(_ctx(m, x, y))
    analytic = torch.autograd.grad(value, m.arch_parameters(), allow_unused=True)
    analytic = [torch.zeros_like(p) if g is None else g for p, g in zip(m.arch_parameters(), analytic, strict=True)]
    _numeric_alpha_check(m, lambda mc: term.value(_ctx(mc, x, y)), analytic)


# -- the architect: the objective enters the alpha gradient in all three modes ---------------


def _objective_after_steps(m, w_opt, train, val, term, weight):
    """L_val + weight * R after len(train) real SGD steps of `m` (a copy), the oracle."""
    opt = torch.optim.SGD(m.weight_parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
    opt.load_state_dict(copy.deepcopy(w_opt.state_dict()))
    for x, y in train:
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        opt.step()
    ctx = _ctx(m, *val)
    return float(ctx.loss + weight * term.value(ctx))


def _setup(n_step: int):
    m = _supernet()
    w_opt = torch.optim.SGD(m.weight_parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
    a_opt = torch.optim.Adam(m.arch_parameters(), lr=3e-4)
    *train, val, warm = _batches(n_step + 2)
    Architect(m, w_opt, a_opt).weight_step(*warm)  # momentum buffers exist from here on
    return m, w_opt, a_opt, train, val


@pytest.mark.parametrize("mode,n_step,spec", [
    ("first_order", 1, "input_curvature:3:h=0.05"),
    ("unrolled", 2, "input_curvature:-2:h=0.05"),  # the opposite sign works the same way
    ("unrolled", 1, "beta:0.5"),
])
def test_architect_alpha_gradient_with_objective_matches_numerical(mode, n_step, spec):
    m, w_opt, a_opt, train, val = _setup(n_step)
    term = parse_objective(spec)
    arch = Architect(m, w_opt, a_opt, mode=mode, n_step=n_step, objectives=[term])
    grads, _ = arch.first_order_grads(val) if mode == "first_order" else arch.unrolled_grads(train, val)
    assert set(arch.last_terms) == {term.name}
    steps = [] if mode == "first_order" else train
    _numeric_alpha_check(m, lambda mc: _objective_after_steps(mc, w_opt, steps, val, term, term.weight),
                         grads, rtol=1e-4)


def test_finite_difference_mode_carries_the_objective_like_unrolled():
    """With n_step 1, DARTS's finite-difference gradient is the unrolled one up to the central
    difference's error (the virtual step is linear in the Hessian-vector product), with or
    without a term. Measured: relative error 1.4e-4 without, 1.2e-3 with input_curvature;
    the term itself moves the gradient by about the gradient's size."""
    m, w_opt, a_opt, train, val = _setup(1)
    term = parse_objective("input_curvature:1:h=0.05")
    flat = lambda gs: torch.cat([g.flatten() for g in gs])  # noqa: E731
    grads = {}
    for name, terms in (("plain", []), ("term", [term])):
        fd, _ = Architect(m, w_opt, a_opt, mode="finite_difference", objectives=terms).finite_difference_grads(train, val)
        exact, _ = Architect(m, w_opt, a_opt, mode="unrolled", objectives=terms).unrolled_grads(train, val)
        grads[name] = flat(fd), flat(exact)
    for name, tol in (("plain", 1e-3), ("term", 1e-2)):
        fd, exact = grads[name]
        assert (fd - exact).norm() < tol * exact.norm(), name
    assert (grads["term"][1] - grads["plain"][1]).norm() > 0.5 * grads["term"][1].norm()


def test_step_reports_each_term_and_search_cli_accepts_objectives(tmp_path):
    m, w_opt, a_opt, train, val = _setup(1)
    arch = Architect(m, w_opt, a_opt, objectives=[parse_objective("beta:1"), parse_objective("gradvar:0:samples=2")])
    stats = arch.step(train, val)
    assert {"objective/beta", "objective/gradvar"} <= set(stats)
    assert float(stats["objective/beta"]) == pytest.approx(float(arch.last_terms["beta"]) * 4)

    from nasaudit.cli import main

    assert main(["search", "--dataset", "digits", "--out", str(tmp_path / "bad"), "--objective", "nope:1"]) == 2
    assert main(["search", "--dataset", "digits", "--out", str(tmp_path / "bad"), "--early-stop", "darts-es:0"]) == 2
    assert not (tmp_path / "bad" / "checkpoint.pt").exists()
