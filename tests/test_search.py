"""Unit tests of nasaudit.search: supernet, alpha hooks, derivation, architect gradients.

The gradient checks run a tiny supernet (C=4, 3 cells, 2 nodes, 8x8 inputs) in float64 and
compare the architect's alpha gradient with a central finite difference of the very function
it differentiates: alpha -> L_val(w_n(alpha), alpha), where w_n comes from n_step real
torch.optim.SGD steps on a deep copy of the model (an independent implementation).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from nasaudit.genotype import genotype_from_nni, genotype_to_nni
from nasaudit.infra.errors import InputError
from nasaudit.search import Architect, Supernet, derive_genotype, parse_hook, skip_penalty
from nasaudit.search.supernet import MixedOp, edge_list, num_edges
from nasaudit.search_space import load_search_space

DARTS_OPS = load_search_space("darts").ops
SMALL_OPS = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3")
LR, MOMENTUM, WD = 0.025, 0.9, 3e-4


def _supernet(ops=SMALL_OPS, nodes=2, layers=3, partial=1, seed=0, **kw) -> Supernet:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return Supernet(ops, 3, C=4, layers=layers, nodes=nodes, partial_channels=partial, **kw)


def _batches(n: int, size: int = 8, batch: int = 4, dtype=torch.float64, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(batch, 3, size, size, generator=g, dtype=dtype),
             torch.randint(0, 3, (batch,), generator=g)) for _ in range(n)]


# -- supernet -------------------------------------------------------------------------------


def test_mixed_op_skips_zero_and_mixes_the_rest():
    op = MixedOp(4, 1, SMALL_OPS)
    assert len(op.ops) == len(SMALL_OPS) - 1  # no module for "none"
    x = torch.rand(2, 4, 6, 6)
    w = torch.softmax(torch.randn(len(SMALL_OPS)), 0)
    expected = sum(w[c] * m(x) for c, m in zip(op.columns, op.ops, strict=True))
    torch.testing.assert_close(op(x, w), expected)
    assert MixedOp(4, 2, SMALL_OPS)(x, w).shape == (2, 4, 3, 3)
    # Partial channels: same shapes, and the bypassed half is carried through (shuffled).
    pc = MixedOp(4, 1, SMALL_OPS, partial=2)
    assert pc(x, w).shape == x.shape and MixedOp(4, 2, SMALL_OPS, partial=2)(x, w).shape == (2, 4, 3, 3)
    torch.testing.assert_close(pc(x, w)[:, 1::2], x[:, 2:])


def test_supernet_shapes_parameters_and_pc_edges():
    m = _supernet(DARTS_OPS, nodes=4, layers=3)
    assert m(torch.rand(2, 3, 16, 16)).shape == (2, 3)
    assert m.alpha_normal.shape == (14, len(DARTS_OPS)) and num_edges(4) == 14
    assert {id(p) for p in m.arch_parameters()}.isdisjoint(id(p) for p in m.weight_parameters())
    pc = _supernet(DARTS_OPS, nodes=3, partial=2)
    assert len(pc.arch_parameters()) == 4  # alphas and betas
    ew = pc.edge_weights("normal")
    # Edge normalisation: each node's incoming edge weights sum to 1.
    torch.testing.assert_close(torch.stack([ew[:2].sum(), ew[2:5].sum()]), torch.ones(2))
    assert edge_list(2) == [(2, 0), (2, 1), (3, 0), (3, 1), (3, 2)]


# -- hooks ----------------------------------------------------------------------------------


def test_skip_penalty_is_the_scaled_renormalised_softmax():
    alpha = torch.randn(5, len(DARTS_OPS))
    s = DARTS_OPS.index("skip_connect")
    out = skip_penalty(0.3)(torch.softmax(alpha, -1), "normal", DARTS_OPS)
    shifted = alpha.clone()
    shifted[:, s] += torch.log(torch.tensor(0.3))  # gamma exp(a_skip) / Z' in closed form
    torch.testing.assert_close(out, torch.softmax(shifted, -1))
    w = torch.softmax(alpha, -1)
    assert skip_penalty(1.0)(w, "normal", DARTS_OPS) is w  # identity, bit for bit
    assert parse_hook("skip_penalty:0.5")(w, "reduce", DARTS_OPS)[:, s].lt(w[:, s]).all()
    for bad in ("skip_penalty:0", "skip_penalty:2", "skip_penalty", "nope:1", "skip_penalty:x"):
        with pytest.raises(InputError):
            parse_hook(bad)


def test_python_hooks_run_on_every_forward_and_can_be_removed():
    m = _supernet()
    calls = []

    def only_convs(weights, cell, ops):
        calls.append(cell)
        keep = torch.tensor([op.startswith(("sep", "dil")) for op in ops], dtype=weights.dtype)
        return weights * keep / (weights * keep).sum(-1, keepdim=True)

    handle = m.register_alpha_hook(only_convs)
    x = torch.rand(2, 3, 8, 8)
    m(x)
    assert sorted(calls) == ["normal", "reduce"]  # once per cell type per forward
    g = m.genotype()
    assert all(op.startswith(("sep", "dil")) for op, _ in g.normal + g.reduce)
    handle.remove()
    calls.clear()
    m(x)
    assert calls == []


# -- derivation -----------------------------------------------------------------------------


def test_derivation_follows_the_darts_rule():
    ops = ("none", "skip_connect", "sep_conv_3x3")
    # node 2: inputs 0, 1; node 3: inputs 0, 1, 2. "none" is strongest on edge (3<-0) but ignored.
    w = torch.tensor([[0.1, 0.2, 0.7], [0.1, 0.6, 0.3], [0.9, 0.02, 0.08], [0.2, 0.3, 0.5], [0.2, 0.4, 0.4]])
    g = derive_genotype(w, w, ops, nodes=2)
    assert g.normal == (("sep_conv_3x3", 0), ("skip_connect", 1), ("sep_conv_3x3", 1), ("skip_connect", 2))
    assert g.normal_concat == (2, 3)
    # PC-DARTS: edge weights rescale the edges' strengths (here they demote input 1 of node 3).
    g_pc = derive_genotype(w, w, ops, 2, torch.tensor([0.5, 0.5, 0.8, 0.01, 0.19]), None)
    assert g_pc.normal[2:] == (("skip_connect", 2), ("sep_conv_3x3", 0))


def _skip_dominated(model: Supernet, margin: float = 2.0) -> None:
    with torch.no_grad():
        for a in (model.alpha_normal, model.alpha_reduce):
            a[:, model.ops.index("skip_connect")] += margin


def test_strong_skip_penalty_removes_skips_and_gamma_one_does_not():
    plain, g1, strong = (_supernet(DARTS_OPS, nodes=4, hooks=h)
                         for h in ((), [skip_penalty(1.0)], [skip_penalty(1e-3)]))
    for m in (plain, g1, strong):
        _skip_dominated(m)
    assert plain.genotype() == g1.genotype()
    assert all(op == "skip_connect" for op, _ in g1.genotype().normal)
    g = strong.genotype()
    assert not any(op == "skip_connect" for op, _ in g.normal + g.reduce)


def test_short_search_under_strong_penalty_derives_no_skip():
    """A few real first-order iterations from a skip-dominated start: the penalty holds."""
    batches = _batches(6, size=8, dtype=torch.float32)
    genotypes = {}
    for gamma in (1.0, 1e-3):
        m = _supernet(DARTS_OPS, nodes=2, hooks=[skip_penalty(gamma)])
        _skip_dominated(m)
        arch = Architect(m, torch.optim.SGD(m.weight_parameters(), lr=LR, momentum=MOMENTUM),
                         torch.optim.Adam(m.arch_parameters(), lr=3e-4, betas=(0.5, 0.999)))
        for i in range(3):
            arch.step([batches[2 * i]], batches[2 * i + 1])
        genotypes[gamma] = m.genotype()
    skips = {k: sum(op == "skip_connect" for op, _ in g.normal + g.reduce) for k, g in genotypes.items()}
    assert skips[1.0] > 0 and skips[1e-3] == 0


def test_nni_export_of_a_search_result_parses_back():
    m = _supernet(DARTS_OPS, nodes=4)
    with torch.no_grad():
        m.alpha_normal.normal_(generator=torch.Generator().manual_seed(3))
    g = m.genotype()
    assert genotype_from_nni(genotype_to_nni(g)) == g


# -- architect ------------------------------------------------------------------------------


def _setup(n_step: int, partial: int = 1, ops=SMALL_OPS, smooth: bool = False):
    m = _supernet(ops, partial=partial).double()
    if smooth:
        # FD Hessian-vector products need a smooth loss at the scale R = 0.01 / ||v||; ReLU
        # kinks of a 4-channel net are crossed at that scale, so the FD check uses softplus.
        for mod in list(m.modules()):
            for name, child in mod.named_children():
                if isinstance(child, torch.nn.ReLU):
                    setattr(mod, name, torch.nn.Softplus(beta=2.0))
    w_opt = torch.optim.SGD(m.weight_parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
    a_opt = torch.optim.Adam(m.arch_parameters(), lr=3e-4)
    *train, val, warm = _batches(n_step + 2)
    Architect(m, w_opt, a_opt).weight_step(*warm)  # momentum buffers exist from here on
    return m, w_opt, a_opt, train, val


def _val_loss_after_steps(m, w_opt, train, val, alphas) -> float:
    """L_val after n real SGD steps of a deep copy whose alpha is set to `alphas`."""
    mc = copy.deepcopy(m)
    with torch.no_grad():
        for p, v in zip(mc.arch_parameters(), alphas, strict=True):
            p.copy_(v)
    opt = torch.optim.SGD(mc.weight_parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
    opt.load_state_dict(copy.deepcopy(w_opt.state_dict()))  # copies: SGD updates buffers in place
    for x, y in train:
        opt.zero_grad()
        F.cross_entropy(mc(x), y).backward()
        opt.step()
    with torch.no_grad():
        return F.cross_entropy(mc(val[0]), val[1]).item()


def _check_against_numerical(m, w_opt, train, val, grads, rtol, eps=1e-6, directions=2):
    alphas = [p.detach().clone() for p in m.arch_parameters()]
    g = torch.Generator().manual_seed(7)
    for _ in range(directions):
        d = [torch.randn(a.shape, generator=g, dtype=a.dtype) for a in alphas]
        f = [_val_loss_after_steps(m, w_opt, train, val,
                                   [a + s * eps * v for a, v in zip(alphas, d, strict=True)])
             for s in (1.0, -1.0)]
        numerical = (f[0] - f[1]) / (2 * eps)
        analytic = sum((gi * v).sum() for gi, v in zip(grads, d, strict=True)).item()
        assert analytic == pytest.approx(numerical, rel=rtol, abs=1e-9)


@pytest.mark.parametrize("n_step,partial", [(1, 1), (3, 1), (2, 2)])
def test_unrolled_gradient_matches_numerical_derivative(n_step, partial):
    m, w_opt, a_opt, train, val = _setup(n_step, partial)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    arch = Architect(m, w_opt, a_opt, mode="unrolled", n_step=n_step)
    grads, _ = arch.unrolled_grads(train, val)
    # No model copy and no side effect: weights, alpha and BN buffers are untouched.
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert arch.virtual_steps == n_step
    _check_against_numerical(m, w_opt, train, val, grads, rtol=1e-5)


def test_finite_difference_gradient_matches_numerical_derivative():
    ops = ("none", "avg_pool_3x3", "skip_connect", "sep_conv_3x3")  # smooth ops only
    m, w_opt, a_opt, train, val = _setup(1, ops=ops, smooth=True)
    fd, _ = Architect(m, w_opt, a_opt, mode="finite_difference").finite_difference_grads(train, val)
    exact, _ = Architect(m, w_opt, a_opt, mode="unrolled").unrolled_grads(train, val)
    # FD's error is O(R^2) with R = 0.01 / ||v||: well under 1% of the gradient here.
    err = torch.cat([(a - b).flatten() for a, b in zip(fd, exact, strict=True)]).norm()
    assert err < 5e-3 * torch.cat([b.flatten() for b in exact]).norm()
    _check_against_numerical(m, w_opt, train, val, fd, rtol=1e-2)


@pytest.mark.parametrize("mode,n_step", [("first_order", 3), ("unrolled", 2), ("finite_difference", 1)])
def test_n_step_semantics_counts_steps(mode, n_step):
    m = _supernet(SMALL_OPS)
    w_opt = torch.optim.SGD(m.weight_parameters(), lr=LR, momentum=MOMENTUM)
    a_opt = torch.optim.Adam(m.arch_parameters(), lr=3e-4)
    arch = Architect(m, w_opt, a_opt, mode=mode, n_step=n_step)
    batches = _batches(n_step + 1, dtype=torch.float32)
    alpha0 = m.alpha_normal.detach().clone()
    for it in range(1, 3):
        stats = arch.step(batches[:n_step], batches[-1])
        assert (arch.weight_steps, arch.arch_steps) == (n_step * it, it)
        assert arch.virtual_steps == (0 if mode == "first_order" else n_step * it)
        assert int(stats["train_n"]) == 4 * n_step and int(stats["val_n"]) == 4
    assert not torch.equal(alpha0, m.alpha_normal)
    with pytest.raises(ValueError):
        arch.step(batches[: n_step + 1], batches[-1])
    with pytest.raises(ValueError):
        Architect(m, w_opt, a_opt, mode="finite_difference", n_step=2)
