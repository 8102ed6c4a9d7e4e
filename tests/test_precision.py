"""Oracle-precision paths run in float32 even under bf16 autocast.

NES's finite differences (sigma 1e-3), HopSkipJump's label queries near the boundary, the
search's finite-difference Hessian-vector product (a weight shift of ~0.01 / sqrt(P)) and the
success checks of PGD and NES are below bf16's resolution. On CUDA the package itself opens bf16
autocast; on the CPU a caller can, so these tests open `torch.autocast("cpu", bfloat16)` around
each path and check that (a) reduced precision really was active around it, and (b) the
oracle's own forward passes ran in float32 (their results equal the no-autocast results).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from nasaudit.infra.device import generator

CPU = torch.device("cpu")


def _bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


class _DtypeLog:
    """Records the dtype of every Conv2d/Linear output of `model` while active."""

    def __init__(self, model: nn.Module):
        self.dtypes: list[torch.dtype] = []
        self.handles = [m.register_forward_hook(self._hook) for m in model.modules()
                        if isinstance(m, (nn.Conv2d, nn.Linear))]

    def _hook(self, module, inputs, output):
        self.dtypes.append(output.dtype)

    def close(self):
        for h in self.handles:
            h.remove()


@contextlib.contextmanager
def _logged(model):
    log = _DtypeLog(model)
    try:
        yield log
    finally:
        log.close()


def _inputs(trained_model, n=4):
    return trained_model.data.test_images[:n].float() / 255


def test_nes_gradient_and_oracle_are_float32_under_autocast(trained_model):
    from nasaudit.attacks.nes import ProbabilityOracle, nes_gradient

    model = trained_model.model
    x = _inputs(trained_model)
    target = torch.tensor([1, 2, 3, 4])
    oracle = ProbabilityOracle(model, CPU, 4096)
    plain = nes_gradient(oracle, x, target, n_query=40, sigma=1e-3, generator=generator(0))
    with _bf16(), _logged(model) as log:
        assert model(x).dtype == torch.bfloat16  # autocast really is on around the oracle
        log.dtypes.clear()
        under = nes_gradient(oracle, x, target, n_query=40, sigma=1e-3, generator=generator(0))
    assert log.dtypes and all(d == torch.float32 for d in log.dtypes)
    assert torch.equal(plain, under)


def test_hopskipjump_label_oracle_is_float32_under_autocast(trained_model):
    from nasaudit.attacks.membership import boundary_distances

    model = trained_model.model
    images = trained_model.data.test_images[:3]
    labels = trained_model.data.test_labels[:3]
    budget = {"max_iter": 2, "max_eval": 50, "init_eval": 10, "init_size": 20}
    plain = boundary_distances(model, images, labels, device=CPU, seed=0, progress=False, **budget)
    with _bf16(), _logged(model) as log:
        under = boundary_distances(model, images, labels, device=CPU, seed=0, progress=False,
                                   **budget)
    assert log.dtypes and all(d == torch.float32 for d in log.dtypes)
    for a, b in zip(plain, under, strict=True):
        assert torch.equal(a, b)


def test_pgd_success_is_decided_on_float32_logits(trained_model):
    """Gradients may be bf16 under autocast, but every success is confirmed by a float32
    forward, which on the CPU sees only the samples the bf16 pass called successful."""
    from nasaudit.attacks.pgd import pgd_attack

    model = trained_model.model
    x = _inputs(trained_model, 16)
    target = torch.arange(16) % 10
    passes = []  # (dtype, batch) of every forward, read at the classifier's output
    handle = model.classifier.register_forward_hook(
        lambda m, i, out: passes.append((out.dtype, out.shape[0])))
    try:
        with _bf16():
            adv, ok, _, _ = pgd_attack(model, x, target, targeted=True, eps=16 / 255,
                                       step=4 / 255, iters=4, restarts=1, random_start=False)
    finally:
        handle.remove()
    assert ok.any() and not ok.all()  # both outcomes occur, so both paths ran
    with torch.no_grad():  # the oracle: every reported success is one in float32
        assert torch.equal(model(adv).argmax(1) == target, ok)
    kinds = [d for d, _ in passes]
    assert kinds.count(torch.bfloat16) >= 2 and kinds[-1] == torch.float32
    # Every float32 pass but the final check sees at most the samples of the bf16 pass before it.
    for (d, n), (d_prev, n_prev) in zip(passes[1:-1], passes[:-2], strict=True):
        if d == torch.float32:
            assert d_prev == torch.bfloat16 and n <= n_prev
    assert any(d == torch.float32 and n < len(x) for d, n in passes[:-1])


def test_search_finite_difference_hvp_is_float32_under_autocast():
    from nasaudit.search import Architect, Supernet

    with torch.random.fork_rng():
        torch.manual_seed(0)
        m = Supernet(("none", "skip_connect", "sep_conv_3x3"), 3, C=4, layers=3, nodes=2)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.rand(4, 3, 8, 8, generator=g), torch.randint(0, 3, (4,), generator=g))
               for _ in range(2)]
    arch = Architect(m, torch.optim.SGD(m.weight_parameters(), lr=0.025, momentum=0.9),
                     torch.optim.Adam(m.arch_parameters(), lr=3e-4), mode="finite_difference")
    with _bf16(), _logged(m) as log:
        arch.finite_difference_grads([batches[0]], batches[1])
    per_pass = len(log.dtypes) // 4  # train, val, then the two shifted passes w+ and w-
    passes = [log.dtypes[i * per_pass : (i + 1) * per_pass] for i in range(4)]
    assert all(d == torch.bfloat16 for d in passes[0] + passes[1])  # autocast was on
    assert all(d == torch.float32 for d in passes[2] + passes[3])
