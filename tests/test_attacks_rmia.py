"""Offline RMIA: the low-FPR helper against sklearn and a slow loop, the score against a slow loop,
leakage on a memorising victim, chance on a null experiment, resumable reference models, and the
report section.

The victim is a width-8 tiny_cnn that memorises 100 randomly labelled digits images (see the
`overfit` fixture); the images it never saw form the test split here, so there are 1000
non-members and 0.1% FPR is resolvable.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from nasaudit.attacks.common import Victim
from nasaudit.attacks.rmia import (
    Params,
    RmiaRecord,
    auc_score,
    bootstrap_intervals,
    gather,
    make_roles,
    rmia_scores,
    run_rmia,
    tpr_at_fpr,
)
from nasaudit.infra.errors import InputError
from nasaudit.training import TrainConfig

CPU = torch.device("cpu")
N_FIT = 100
# The victim's recipe; the reference models use it too (reference_epochs shortens it where only
# the mechanics are tested).
RECIPE = TrainConfig(epochs=100, batch_size=25, lr=0.05, val_fraction=0.0, crop_padding=0, flip=False,
                     weight_decay=0.0, auxiliary_weight=0.0, drop_path_prob=0.0, seed=0)


@pytest.fixture(scope="module")
def overfit(digits_data):
    """(victim, data): every digits image relabelled at random (seeded), and a width-8 tiny_cnn
    trained 100 epochs without augmentation or weight decay on the first 100 of them, which it
    memorises (train accuracy 1, test accuracy at chance). The data set's test split is every
    other image (1697), so there are enough non-members for 0.1% FPR.

    Random labels make the victim's confidence on its members owe nothing to generalisation; on
    the true digits labels this victim generalises and the honest TPR at 1% FPR is much lower
    (`benchmarks/rmia.py` shows that case)."""
    from nasaudit.training import train_on_dataset

    d = digits_data
    images = torch.cat([d.train_images, d.test_images])
    labels = torch.randint(0, 10, (images.shape[0],), generator=torch.Generator().manual_seed(0))
    data = dataclasses.replace(d, train_images=images[:N_FIT], train_labels=labels[:N_FIT],
                               test_images=images[N_FIT:], test_labels=labels[N_FIT:])
    result = train_on_dataset("tiny_cnn", data, RECIPE, device="cpu", model_kwargs={"width": 8},
                              progress=False)
    return Victim(result.model.eval(), "tiny_cnn", RECIPE, {"width": 8}), data


# ------------------------------------------------------------------------------ pure helpers


def _slow_tpr(pos, neg, fpr):
    """Every threshold tried: the best TPR among those flagging (score >= t) at most fpr * n0."""
    best = 0.0
    for t in sorted(set(pos) | set(neg)) + [math.inf]:
        if sum(v >= t for v in neg) <= fpr * len(neg) + 1e-9:
            best = max(best, sum(v >= t for v in pos) / len(pos))
    return best


@pytest.mark.parametrize("case", range(12))
def test_tpr_at_fpr_matches_roc_curve_and_slow_loop(case):
    from sklearn.metrics import roc_auc_score, roc_curve

    rng = np.random.default_rng(case)
    n1, n0 = int(rng.integers(1, 60)), int(rng.integers(1, 300))
    # Half the cases on a coarse grid: many ties, as RMIA's scores (fractions of the population) have.
    draw = (lambda n, shift: rng.integers(0, 8, n) + shift) if case % 2 else (lambda n, shift: rng.normal(shift, 1, n))
    pos, neg = draw(n1, 1).astype(float), draw(n0, 0).astype(float)
    truth = np.r_[np.ones(n1), np.zeros(n0)]
    fp_curve, tp_curve, _ = roc_curve(truth, np.r_[pos, neg], drop_intermediate=False)
    for fpr in (0.001, 0.01, 0.05, 0.2, 0.5, 0.999):
        point = tpr_at_fpr(pos, neg, fpr)
        expected = tp_curve[fp_curve <= fpr + 1e-12].max()
        assert point.tpr == pytest.approx(expected, abs=1e-12)
        assert point.tpr == pytest.approx(_slow_tpr(list(pos), list(neg), fpr), abs=1e-12)
        assert point.achieved_fpr <= fpr + 1e-12 and point.n_members == n1 and point.n_nonmembers == n0
        assert point.resolvable == (fpr * n0 >= 1 - 1e-9)
        assert point.true_positives == round(point.tpr * n1)
    assert auc_score(pos, neg) == pytest.approx(roc_auc_score(truth, np.r_[pos, neg]), abs=1e-12)


def test_tpr_resolution_and_chance_level():
    point = tpr_at_fpr(np.ones(5), np.zeros(999), 0.001)  # 0.999 non-members allowed: none
    assert not point.resolvable and point.tpr == 1.0 and point.min_fpr == pytest.approx(1 / 999)
    point = tpr_at_fpr(np.ones(5), np.zeros(1000), 0.001)  # 0.001 * 1000 rounds to exactly one
    assert point.resolvable and point.allowed == 1
    assert tpr_at_fpr([0.5], [0.1] * 100, 0.01).chance_tpr == pytest.approx(2 / 101)


def test_null_false_positive_behaviour_by_simulation():
    # Scores independent of membership: the mean TPR at 1% FPR is (k + 1) / (n0 + 1), k = 10,
    # not 0.01; the bootstrap interval of the AUC covers 0.5 in most draws.
    rng = np.random.default_rng(0)
    n1, n0, draws = 300, 1000, 2000
    tprs = [tpr_at_fpr(rng.random(n1), rng.random(n0), 0.01).tpr for _ in range(draws)]
    chance = 11 / 1001
    # Monte Carlo standard error of the mean of `draws` TPRs (sd of one TPR is below 0.01).
    assert abs(np.mean(tprs) - chance) < 4 * np.std(tprs) / math.sqrt(draws)
    covered = 0
    for i in range(40):
        ci, _ = bootstrap_intervals(rng.random(n1), rng.random(n0), (0.01,), n_draws=200, seed=i)
        covered += ci[0] <= 0.5 <= ci[1]
    assert covered >= 34  # 95% nominal: P(Binomial(40, 0.95) < 34) < 0.01


def test_bootstrap_intervals_are_seeded_and_bracket_the_estimate():
    rng = np.random.default_rng(1)
    pos, neg = rng.normal(1, 1, 200), rng.normal(0, 1, 1000)
    a = bootstrap_intervals(pos, neg, (0.001, 0.01), n_draws=300, seed=5)
    assert a == bootstrap_intervals(pos, neg, (0.001, 0.01), n_draws=300, seed=5)
    auc_ci, (ci_01, ci_1) = a
    assert auc_ci[0] < auc_score(pos, neg) < auc_ci[1]
    assert ci_1[0] <= tpr_at_fpr(pos, neg, 0.01).tpr <= ci_1[1] and ci_01 is not None
    assert bootstrap_intervals(pos, neg[:500], (0.001,), n_draws=50, seed=0)[1] == [None]
    assert bootstrap_intervals(pos, neg, (0.01,), n_draws=0, seed=0) == (None, [None])


def test_rmia_scores_match_the_pairwise_definition():
    rng = np.random.default_rng(2)
    tx, tz = np.log(rng.random(30)), np.log(rng.random(40))
    rx, rz = np.log(rng.random((3, 30))), np.log(rng.random((3, 40)))
    for a, gamma in ((0.3, 1.0), (1.0, 2.0), (0.0, 0.5)):
        got = rmia_scores(tx, rx, tz, rz, a, gamma)
        px = (1 + a) / 2 * np.exp(rx).mean(0) + (1 - a) / 2
        pz = (1 + a) / 2 * np.exp(rz).mean(0) + (1 - a) / 2
        slow = [np.mean([(np.exp(tx[i]) / px[i]) / (np.exp(tz[j]) / pz[j]) > gamma for j in range(40)])
                for i in range(30)]
        np.testing.assert_allclose(got, slow, atol=1e-12)


# -------------------------------------------------------------------------------- data roles


def test_roles_are_disjoint_and_reference_models_never_see_targets(overfit):
    victim, data = overfit
    p = Params(n_members=60, n_nonmembers=500, n_population=300)
    roles = make_roles(victim, data, p, seed=3)
    n_train = data.train_images.shape[0]
    sets = [set(roles.member_global.tolist()), set(roles.nonmember_global.tolist()),
            set(roles.population.tolist()), set(roles.pool.tolist())]
    assert sum(map(len, sets)) == n_train + data.test_images.shape[0]  # every image has one role
    assert len(set().union(*sets)) == n_train + data.test_images.shape[0]
    assert all(i < n_train for i in sets[0])  # members: the victim's training images
    assert all(i >= n_train for i in sets[2])  # population: images the victim never saw
    assert len(sets[0]) == 60 and len(sets[1]) == 500 and len(sets[2]) == 300
    x, y = gather(data, torch.tensor([n_train + 5, 3, n_train]))
    assert torch.equal(x[0], data.test_images[5]) and torch.equal(x[1], data.train_images[3])
    assert torch.equal(y, torch.stack([data.test_labels[5], data.train_labels[3], data.test_labels[0]]))
    with pytest.raises(InputError, match="offline_a"):
        run_rmia(victim, data, {"n_reference": 1}, device=CPU, progress=False)


# ------------------------------------------------------------------------------ the attack


def test_overfit_victim_leaks_at_low_fpr(overfit):
    victim, data = overfit
    rec = run_rmia(victim, data, {"n_members": N_FIT, "n_nonmembers": 1000, "n_population": 300,
                                  "n_bootstrap": 500}, device=CPU, seed=0, progress=False)
    assert isinstance(rec, RmiaRecord) and rec.to_dict()["kind"] == "attack.rmia"
    assert RmiaRecord.from_dict(rec.to_dict()) == rec
    assert (rec.n_members, rec.n_nonmembers, rec.n_population) == (N_FIT, 1000, 300)
    assert rec.reference_size == N_FIT == rec.victim_train_size and rec.n_reference == 2
    assert rec.reference_epochs == RECIPE.epochs and len(rec.reference_seconds) == 2
    assert min(rec.reference_seconds) > 0 and rec.offline_a_tuned and len(rec.offline_a_search) == 11
    assert rec.member_accuracy == 1.0 and rec.nonmember_accuracy < 0.2
    assert rec.min_fpr == 0.001 and rec.fprs == [0.001, 0.01]
    tpr_01, tpr_1 = rec.tpr_at_fpr
    # Bounds set well below what this deterministic setup gives; chance at 1% FPR is 11/1001.
    assert rec.auc > 0.95 and rec.auc_interval[0] > 0.9
    assert tpr_1 > 0.2 and rec.tpr_interval[1][0] > 0.08
    assert tpr_01 is not None and tpr_01 <= tpr_1
    assert rec.low_fpr[1]["chance_tpr"] == pytest.approx(11 / 1001)
    # The RMIA scores rank the inputs as their log likelihood ratios do (a step function of them).
    ratios = np.r_[rec.member_log_ratios, rec.nonmember_log_ratios]
    scores = np.r_[rec.member_scores, rec.nonmember_scores]
    order = np.argsort(ratios, kind="stable")
    assert (np.diff(scores[order]) >= 0).all() and 0 <= scores.min() and scores.max() <= 1


def test_members_not_trained_on_give_chance(overfit):
    # Null experiment on the same leaky victim: "members" are test inputs.
    victim, data = overfit
    n1, n0 = 300, 1000
    rec = run_rmia(victim, data, {"members_from": "test", "n_members": n1, "n_nonmembers": n0,
                                  "n_population": 200, "n_bootstrap": 0}, device=CPU, seed=1, progress=False)
    assert rec.n_members == n1 and rec.n_nonmembers == n0
    assert not set(rec.member_indices) & set(rec.nonmember_indices)
    # Mann-Whitney under the null: sd(AUC) = sqrt((n1 + n0 + 1) / (12 n1 n0)).
    sd = math.sqrt((n1 + n0 + 1) / (12 * n1 * n0))
    assert abs(rec.auc - 0.5) < 3.5 * sd
    # TPR at 1% FPR against the permutation null of these very scores (ties kept).
    scores = np.r_[rec.member_log_ratios, rec.nonmember_log_ratios]
    rng = np.random.default_rng(0)
    observed = rec.tpr_at_fpr[1]
    perm = []
    for _ in range(2000):
        s = rng.permutation(scores)
        perm.append(tpr_at_fpr(s[:n1], s[n1:], 0.01).tpr)
    p_value = (1 + sum(t >= observed for t in perm)) / (1 + len(perm))
    assert p_value > 0.001 and observed < 0.06  # chance TPR is 11/1001


def test_rerun_reuses_and_killed_run_resumes_reference_checkpoints(overfit, tmp_path, monkeypatch):
    import nasaudit.training as training

    victim, data = overfit
    p = {"n_members": 50, "n_nonmembers": 100, "n_population": 100, "reference_epochs": 4,
         "offline_a": 0.3, "n_bootstrap": 50}
    real = training.train_model
    calls = []

    class Killed(Exception):
        pass

    def killed_after_two_epochs(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            return real(*args, **kwargs)
        def stop(record):
            if record["epoch"] == 2:
                raise Killed
        return real(*args, **{**kwargs, "on_epoch": stop})

    monkeypatch.setattr(training, "train_model", killed_after_two_epochs)
    with pytest.raises(Killed):
        run_rmia(victim, data, p, device=CPU, seed=0, progress=False, work_dir=str(tmp_path))
    monkeypatch.setattr(training, "train_model", real)
    assert len(list(tmp_path.glob("rmia_reference_0_*.pth"))) == 1

    resumed = run_rmia(victim, data, p, device=CPU, seed=0, progress=False, work_dir=str(tmp_path))
    assert resumed.reference_epochs_run == [2, 4]
    again = run_rmia(victim, data, p, device=CPU, seed=0, progress=False, work_dir=str(tmp_path))
    assert again.reference_epochs_run == [0, 0]
    fresh = run_rmia(victim, data, p, device=CPU, seed=0, progress=False)
    assert fresh.reference_epochs_run == [4, 4]
    for rec in (again, fresh):
        assert rec.member_scores == resumed.member_scores and rec.nonmember_scores == resumed.nonmember_scores
        assert rec.auc == resumed.auc and rec.tpr_at_fpr == resumed.tpr_at_fpr
    assert len(list(tmp_path.glob("rmia_reference_*.pth"))) == 2


# ------------------------------------------------------------------------------ report section


def test_report_section(tmp_path):
    from nasaudit.audit.report import METRIC_BY_KEY
    from nasaudit.audit.report.builder import Builder
    from nasaudit.audit.report.data import AuditData
    from nasaudit.audit.report.metrics import tpr_at
    from nasaudit.audit.report.sections.rmia import AUC, rmia
    from nasaudit.audit.store import UnitRow

    def row(model, group, seed, result):
        return UnitRow(f"k{model}{seed}", model, group, "attack", "rmia", {}, seed, "done", "attack.rmia",
                       result, 0.0, 1.0, 1.0, "0", "0", "cpu", None, None, None)

    def result(tpr, auc, n0):
        resolvable = [n0 >= 1000, True]
        return {"fprs": [0.001, 0.01], "tpr_at_fpr": [tpr / 2 if resolvable[0] else None, tpr],
                "tpr_interval": [None, [tpr - 0.05, tpr + 0.05]], "auc": auc, "auc_interval": [auc - 0.02, auc + 0.02],
                "low_fpr": [{"chance_tpr": 2 / (n0 + 1), "allowed": int(n0 >= 1000)},
                            {"chance_tpr": 11 / 1001, "allowed": 10}],
                "n_members": 100, "n_nonmembers": n0, "members_from": "train", "tpr_at_zero_fpr": 0.01,
                "n_reference": 2, "reference_epochs": 5, "reference_size": 50, "victim_train_size": 100,
                "reference_seconds": [1.5, 2.5], "offline_a": 0.3, "offline_a_tuned": True,
                "n_population": 200, "member_accuracy": 1.0, "nonmember_accuracy": 0.8}

    data = AuditData([row("darts", "nas", 0, result(0.3, 0.8, 1000)),
                      row("resnet", "manual", 0, result(0.2, 0.7, 500))], [], {}, [],
                     group={"darts": "nas", "resnet": "manual"}, order=["darts", "resnet"])
    s = rmia(Builder(data, tmp_path))
    assert s.no_data is None
    runs = next(b for b in s.blocks if getattr(b, "name", None) == "rmia_runs")
    assert [r[0] for r in runs.rows] == ["darts", "resnet"]
    assert "n/r" in str(runs.rows[1][runs.header.index("TPR at 0.1% FPR")])
    assert runs.rows[0][runs.header.index("TPR at 1% FPR")] == 0.3
    assert any("fewer images than the victim" in b for b in s.blocks if isinstance(b, str))
    assert tpr_at(data.rows[0].result, 0.01) == 0.3 and tpr_at({}, 0.01) is None
    assert METRIC_BY_KEY["rmia_tpr_1fpr"].read(data.rows[0].result) == 0.3
    assert AUC.read(data.rows[0].result) == 0.8
    from nasaudit.audit.report.document import render_html, render_markdown

    assert "RMIA" in render_markdown("report", [s]) and "<table>" in render_html("report", [s])
    empty = rmia(Builder(AuditData([], [], {}, []), tmp_path))
    assert empty.no_data
