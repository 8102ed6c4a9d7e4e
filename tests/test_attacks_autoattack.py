"""AutoAttack (`nasaudit.attacks.autoattack`): held against torchattacks' AutoAttack (a test-only
oracle we did not write) on the same model and inputs, plus its invariants: eps = 0 gives clean
accuracy exactly, robust accuracy never rises with eps, the ensemble is at least as strong as the
study's PGD, FAB's L-inf projection is the linear program's optimum, and the report section.

The victim is tiny_cnn (width 8) trained for four epochs on the embedded digits data (no files),
BatchNorm folded as the attack runs it (`inference_model`).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import torch

from nasaudit.attacks.autoattack import (
    AutoAttackRecord,
    Params,
    autoattack_batch,
    linf_projection,
    run_autoattack,
)
from nasaudit.attacks.common import Victim
from nasaudit.attacks.sampling import candidate_indices
from nasaudit.infra.errors import InputError
from nasaudit.models.inference import inference_model

CPU = torch.device("cpu")
# The oracle comparison runs both sides at one budget: torchattacks' AutoAttack's own (its APGD,
# APGD-T and FAB default to 10 steps) except Square's, cut from 5000 queries to keep the suite fast.
BUDGET = {"apgd_iters": 10, "fab_iters": 10, "square_queries": 1000}
# An eps where the victim is neither all robust nor all broken: room to disagree.
ORACLE_EPS = 1 / 255
ORACLE_INPUTS = 64


@pytest.fixture(scope="module")
def victim(digits_data) -> Victim:
    from nasaudit.training import TrainConfig, train_on_dataset

    config = TrainConfig(epochs=4, batch_size=64, lr=0.05, seed=0, drop_path_prob=0.0, val_fraction=0.0)
    result = train_on_dataset("tiny_cnn", digits_data, config, device=CPU, progress=False,
                              model_kwargs={"width": 8})
    return Victim(result.model.eval(), "tiny_cnn", config, {"width": 8})


def _run(victim, data, **params) -> AutoAttackRecord:
    return run_autoattack(victim, data, params, device=CPU, seed=0, progress=False)


@pytest.fixture(scope="module")
def oracle_record(victim, digits_data) -> AutoAttackRecord:
    return _run(victim, digits_data, n_inputs=ORACLE_INPUTS, eps=ORACLE_EPS, version="standard", **BUDGET)


def _torchattacks_standard(model: torch.nn.Module, eps: float):
    """What `torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard",
    n_classes=10, seed=0)` builds (APGD-CE, APGD-T, multi-targeted FAB, Square chained by
    MultiAttack), with BUDGET's Square queries and RobustBench's unrescaled Square schedule."""
    import torchattacks
    from torchattacks.wrappers.multiattack import MultiAttack

    steps = BUDGET["apgd_iters"]
    return MultiAttack([
        torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=0, loss="ce"),
        torchattacks.APGDT(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=0, n_classes=10),
        torchattacks.FAB(model, norm="Linf", eps=eps, steps=BUDGET["fab_iters"], n_restarts=1, seed=0,
                         multi_targeted=True, n_classes=10),
        torchattacks.Square(model, norm="Linf", eps=eps, n_queries=BUDGET["square_queries"], n_restarts=1,
                            seed=0, resc_schedule=False),
    ])


def test_per_input_robustness_agrees_with_torchattacks(victim, digits_data, oracle_record):
    """Standard version on 64 seeded digits test inputs at eps 1/255, both sides at the same
    budgets: the per-input robust flags agree on at least 95% of the inputs and the robust
    accuracies within 0.04 (the random starts and Square's windows differ)."""
    rec = oracle_record
    model = inference_model(victim.model)
    idx = torch.tensor(rec.indices)
    x, y = digits_data.test_images[idx].float() / 255, digits_data.test_labels[idx]
    with torch.random.fork_rng():  # torchattacks seeds torch's global generator
        adv = _torchattacks_standard(model, ORACLE_EPS)(x, y)
    with torch.no_grad():
        theirs = (model(adv).argmax(1) == y).tolist()
    ours = rec.robust
    agree = float(np.mean([a == b for a, b in zip(ours, theirs, strict=True)]))
    assert len(ours) == ORACLE_INPUTS
    assert 0.1 < rec.robust_accuracy < 0.9, rec.robust_accuracy  # a test with room to disagree
    assert agree >= 0.95, (agree, rec.robust_accuracy, float(np.mean(theirs)))
    assert abs(rec.robust_accuracy - float(np.mean(theirs))) <= 0.04
    # The per-attack breakdown accounts for every input.
    assert sum(rec.broken.values()) + rec.robust.count(True) + rec.correct.count(False) == len(ours)
    assert list(rec.broken) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert rec.clean_accuracy == rec.correct.count(True) / len(ours)


def test_each_attack_alone_agrees_with_torchattacks(victim, digits_data):
    """APGD-T, FAB-T and Square each alone on all 64 inputs at eps 2/255 (so each has inputs to
    break), against the same torchattacks component at the same budget. APGD-T and FAB-T (FAB
    has no random start: the same algorithm gives the same points) agree per input on at least
    95% and in robust accuracy within 0.04; Square, random search with different draws (a window
    per input here, one per batch there), breaks at least a quarter of the correct inputs and is
    no weaker than torchattacks' beyond 0.05."""
    import torchattacks

    eps = 2 / 255
    model = inference_model(victim.model)
    idx = candidate_indices(len(digits_data.test_labels), ORACLE_INPUTS, 0)
    x, y = digits_data.test_images[idx].float() / 255, digits_data.test_labels[idx]
    params = Params(eps=eps, apgd_iters=10, fab_iters=10, square_queries=500)
    theirs_of = {
        "apgd-t": torchattacks.APGDT(model, norm="Linf", eps=eps, steps=10, n_restarts=1, seed=0, n_classes=10),
        "fab-t": torchattacks.FAB(model, norm="Linf", eps=eps, steps=10, n_restarts=1, seed=0,
                                  multi_targeted=True, n_classes=10),
        "square": torchattacks.Square(model, norm="Linf", eps=eps, n_queries=500, n_restarts=1, seed=0,
                                      resc_schedule=False),
    }
    for name, attack in theirs_of.items():
        correct, broken_by = autoattack_batch(model, x, y, params, seed=0, attacks=(name,))
        ours = correct & (broken_by < 0)
        with torch.random.fork_rng():
            adv = attack(x, y)
        with torch.no_grad():
            theirs = model(adv).argmax(1) == y
        agree = float((ours == theirs).float().mean())
        ours_acc, theirs_acc = float(ours.float().mean()), float(theirs.float().mean())
        assert int((broken_by == 0).sum()) >= correct.sum() / 4, name  # room to disagree
        if name == "square":
            assert ours_acc <= theirs_acc + 0.05, (ours_acc, theirs_acc)
        else:
            assert agree >= 0.95 and abs(ours_acc - theirs_acc) <= 0.04, (name, agree, ours_acc, theirs_acc)


def test_ensemble_is_at_least_as_strong_as_the_study_pgd(oracle_record):
    rec = oracle_record
    assert rec.pgd_only == 0  # every input PGD breaks, the ensemble breaks too
    assert rec.robust_accuracy <= rec.pgd_robust_accuracy
    assert rec.gradient_masking == (rec.square_only > 0)
    assert all(not r or c for r, c in zip(rec.robust, rec.correct, strict=True))


def test_eps_zero_gives_clean_accuracy_exactly(victim, digits_data):
    rec = _run(victim, digits_data, n_inputs=48, eps=0.0, version="standard", apgd_iters=5, n_targets=2,
               fab_iters=5, square_queries=20)
    assert rec.robust_accuracy == rec.clean_accuracy > 0.3
    assert rec.robust == rec.correct
    assert set(rec.broken.values()) == {0} and rec.pgd_robust_accuracy == rec.clean_accuracy
    assert not rec.gradient_masking


def test_robust_accuracy_never_rises_with_eps_and_runs_are_deterministic(victim, digits_data):
    eps = (0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255)
    records = [_run(victim, digits_data, n_inputs=48, eps=e, version="apgd", apgd_iters=10) for e in eps]
    robust = [r.robust_accuracy for r in records]
    assert all(a >= b for a, b in zip(robust, robust[1:], strict=False)), robust
    assert robust[0] == records[0].clean_accuracy > robust[-1]
    assert records[0].attacks == ["apgd-ce", "apgd-t"] and records[0].square_only == 0
    again = _run(victim, digits_data, n_inputs=48, eps=2 / 255, version="apgd", apgd_iters=10)
    assert again.robust == records[2].robust and again.broken == records[2].broken


def test_linf_projection_is_the_linear_program_optimum():
    """min ||d||_inf subject to w . (p + d) = b and 0 <= p + d <= 1, against scipy's linprog."""
    from scipy.optimize import linprog

    gen = torch.Generator().manual_seed(0)
    n, dim = 12, 9
    p = torch.rand(n, dim, generator=gen, dtype=torch.float64)
    w = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    w[0, :4] = 0  # coordinates the hyperplane ignores
    b = (w * torch.rand(n, dim, generator=gen, dtype=torch.float64)).sum(1)  # reachable in the box
    d = linf_projection(p, w, b)
    assert torch.allclose((w * (p + d)).sum(1), b, atol=1e-9)
    assert bool(((p + d) >= -1e-12).all() and ((p + d) <= 1 + 1e-12).all())
    for i in range(n):
        # Variables (d_1..d_D, t): minimise t.
        cost = np.r_[np.zeros(dim), 1.0]
        eye = np.eye(dim)
        upper = np.r_[np.c_[eye, -np.ones(dim)], np.c_[-eye, -np.ones(dim)]]
        lp = linprog(cost, A_ub=upper, b_ub=np.zeros(2 * dim), A_eq=np.r_[w[i].numpy(), 0.0][None],
                     b_eq=[float(b[i] - w[i] @ p[i])],
                     bounds=[(-float(v), 1 - float(v)) for v in p[i]] + [(0, None)])
        assert lp.status == 0
        assert abs(float(d[i].abs().max()) - lp.fun) < 1e-7
    # Out of the box's reach: every coordinate moves as far as it can towards the hyperplane.
    far = linf_projection(p[:1], w[:1], w[:1].abs().sum(1, keepdim=True).squeeze(1) * 10)
    assert torch.allclose(p[:1] + far, (w[:1] > 0).double() * 1.0 + (w[:1] == 0).double() * p[:1])


def test_params_are_checked(victim, digits_data):
    for bad in ({"version": "plus"}, {"eps": -0.1}, {"n_targets": 0}, {"square_queries": 0}):
        with pytest.raises(InputError):
            _run(victim, digits_data, **bad)
    assert Params().eps == 8 / 255 and Params().version == "standard"
    assert (Params().apgd_iters, Params().n_targets, Params().fab_iters, Params().square_queries) == (100, 9, 100, 5000)


def test_record_round_trips_and_report_section(oracle_record, tmp_path):
    from nasaudit.audit.report import METRIC_BY_KEY
    from nasaudit.audit.report.builder import Builder
    from nasaudit.audit.report.data import AuditData
    from nasaudit.audit.report.sections.autoattack import autoattack
    from nasaudit.audit.store import UnitRow

    rec = oracle_record
    back = AutoAttackRecord.from_dict(rec.to_dict())
    assert back.robust == rec.robust and back.broken == rec.broken and rec.to_dict()["kind"] == "attack.autoattack"
    metric = METRIC_BY_KEY["autoattack_robust_acc"]
    assert (metric.key, metric.stage, metric.name, metric.direction, metric.vulnerability) == (
        "autoattack_robust_acc", "attack", "autoattack", "lower", True)
    assert metric.rate(rec.to_dict()) == (rec.robust.count(True), len(rec.robust))

    masked = dataclasses.replace(rec, square_only=2, gradient_masking=True).to_dict()
    rows = [UnitRow(f"k{i}", model, group, "attack", "autoattack", {}, seed, "done", "attack.autoattack",
                    result, time.time(), time.time(), 1.0, "0", "0", "cpu", None, None, None)
            for i, (model, group, seed, result) in enumerate([
                ("darts_v2", "nas", 0, rec.to_dict()), ("darts_v2", "nas", 1, masked),
                ("resnet18", "manual", 0, rec.to_dict())])]
    data = AuditData(rows, [], {"raw": {"attacks": {"autoattack": {}}}}, [],
                     group={"darts_v2": "nas", "resnet18": "manual"}, order=["darts_v2", "resnet18"])
    section = autoattack(Builder(data, tmp_path))
    assert section.no_data is None
    tables = {b.name: b for b in section.blocks if hasattr(b, "rows")}
    assert set(tables) == {"autoattack", "autoattack_breakdown", "autoattack_checks"}
    pooled = {r[0]: r[-3] for r in tables["autoattack"].rows}
    k, n = rec.robust.count(True), len(rec.robust)
    assert pooled["darts_v2"].startswith(f"{2 * k}/{2 * n},") and pooled["resnet18"].startswith(f"{k}/{n},")
    breakdown = {r[0]: r for r in tables["autoattack_breakdown"].rows}
    assert breakdown["resnet18"][3:] == [n, rec.correct.count(False), *rec.broken.values(), k]
    assert [r[:3] for r in tables["autoattack_checks"].rows] == [["darts_v2", "nas", 1]]
    assert any("Gradient masking suspected" in b for b in section.blocks if isinstance(b, str))
    empty = autoattack(Builder(AuditData([], [], {}, []), tmp_path))
    assert empty.no_data
