"""The report's statistics: the permutation test against scipy's, Holm and Benjamini-Hochberg
against their definitions and scipy, and the verdict rule's error rates by simulation (false
positives under the null at every group size, power under a real effect, interval coverage)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import false_discovery_control, spearmanr
from scipy.stats import permutation_test as scipy_permutation_test

from nasaudit.audit.report import METRIC_BY_KEY, METRICS
from nasaudit.audit.report.comparison import adjusted, compare
from nasaudit.audit.report.stats import (
    benjamini_hochberg,
    holm,
    models_needed,
    permutation_test,
    smallest_p,
    spearman,
    spearman_smallest_p,
    verdict,
    verdict_possible,
)
from nasaudit.audit.store import Store


def _holm_reference(p: list[float]) -> list[float]:
    """Holm by its definition: sort, multiply by (m - rank), running maximum, cap at 1."""
    order = np.argsort(p, kind="stable")
    m = len(p)
    adjusted = np.empty(m)
    for k, i in enumerate(order):
        adjusted[i] = min(1.0, max((m - j) * p[order[j]] for j in range(k + 1)))
    return adjusted.tolist()


def test_holm_matches_definition_and_a_worked_example():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = rng.uniform(0, 0.2, size=int(rng.integers(1, 18))).tolist()
        assert holm(p) == pytest.approx(_holm_reference(p))
    # None (no test) is kept in place and not counted in the family.
    assert holm([0.01, None, 0.04]) == pytest.approx([0.02, None, 0.04])


def test_benjamini_hochberg_matches_scipy():
    rng = np.random.default_rng(1)
    for n in (1, 5, 117):
        p = rng.uniform(0, 1, size=n) ** 3
        assert benjamini_hochberg(p.tolist()) == pytest.approx(false_discovery_control(p).tolist())
    assert benjamini_hochberg([None, 0.01, 0.02]) == pytest.approx([None, 0.02, 0.02])


def _groups(values_a: np.ndarray, values_b: np.ndarray) -> tuple[dict, dict]:
    """model -> per-seed values from arrays [models, seeds]."""
    return ({f"a{i}": list(v) for i, v in enumerate(values_a)}, {f"b{i}": list(v) for i, v in enumerate(values_b)})


def test_permutation_p_value_is_scipys_exact_test():
    """Our p is scipy.stats.permutation_test's on the model means (exact at every size it
    enumerates), seeds averaged first."""
    rng = np.random.default_rng(3)
    for n_a, n_b, seeds in ((2, 2, 1), (3, 3, 3), (5, 4, 2), (10, 7, 1)):
        xa, xb = rng.normal(0.5, 1, (n_a, seeds)), rng.normal(0, 1, (n_b, seeds))
        ours = permutation_test(*_groups(xa, xb), interval=False)
        ref = scipy_permutation_test((xa.mean(1), xb.mean(1)), lambda x, y: np.mean(x) - np.mean(y),
                                     n_resamples=100_000, alternative="two-sided")
        assert ours.exact and ours.p == pytest.approx(ref.pvalue, abs=1e-12)
        assert ours.point == pytest.approx(xa.mean() - xb.mean())


def test_monte_carlo_beyond_the_exact_limit_matches_scipy():
    rng = np.random.default_rng(4)
    xa, xb = rng.normal(0.6, 1, (15, 1)), rng.normal(0, 1, (15, 1))
    ours = permutation_test(*_groups(xa, xb), interval=False)
    ref = scipy_permutation_test((xa[:, 0], xb[:, 0]), lambda x, y: np.mean(x) - np.mean(y),
                                 n_resamples=50_000, rng=np.random.default_rng(0))
    assert not ours.exact and ours.p == pytest.approx(ref.pvalue, abs=0.03)
    assert permutation_test(*_groups(xa, xb), interval=False).p == ours.p  # seeded


def test_two_vs_two_can_never_reach_five_percent():
    """The old bootstrap floor: every NAS model above every manual one gave p = 0.001 at 2 vs 2.
    With 6 relabellings the smallest honest two-sided p is 1/3."""
    a, b = {"n1": [0.9, 0.91], "n2": [0.95]}, {"m1": [0.1], "m2": [0.2, 0.21]}
    test = permutation_test(a, b)
    assert test.p == pytest.approx(1 / 3) and test.min_p == pytest.approx(1 / 3)
    assert test.low is None and test.high is None
    assert smallest_p(2, 2) == pytest.approx(1 / 3) and smallest_p(3, 3) == pytest.approx(0.1)
    assert not verdict_possible(2, 2, 17) and not verdict_possible(5, 5, 17) and verdict_possible(6, 6, 17)
    assert models_needed(17) == 6 and models_needed(1) == 4


# ---- simulations: the verdict rule's error rates ----------------------------------------------

FAMILY = 21  # the headline's metrics a full audit tests (Holm family)
MC_TOL = 0.03  # Monte Carlo tolerance: about 3 binomial sd at 0.05 over 500 draws
SIZES = [(2, 2), (3, 3), (5, 5), (10, 7)]
_METRIC = METRIC_BY_KEY["pgd_asr_ml"]  # direction "higher"


def _draw(rng: np.random.Generator, n_models: int, seeds: int, shift: float = 0.0) -> np.ndarray:
    """[n_models, seeds]: a model effect (sd 1, skewed: exponential) plus seed noise (sd 0.5)."""
    model = rng.exponential(1.0, (n_models, 1)) + shift
    return model + (rng.normal(0, 0.5, (n_models, seeds)) if seeds > 1 else 0.0)


def _audit_verdicts(rng, n_a: int, n_b: int, seeds: int, shifts: list[float]) -> list[str]:
    """The headline rule on one simulated audit: one comparison per metric, Holm over them."""
    comps = [compare(_METRIC, *_groups(_draw(rng, n_a, seeds, s), _draw(rng, n_b, seeds)), "higher",
                     interval=False) for s in shifts]
    return [c.verdict for c in adjusted(comps)]


@pytest.mark.parametrize("seeds", [1, 3])
@pytest.mark.parametrize("n_a,n_b", SIZES)
def test_null_false_positive_rates(n_a: int, n_b: int, seeds: int):
    """NAS and manual drawn from one distribution: a metric's p < 0.05 at most 5% of the time,
    and a clear verdict anywhere among 17 null metrics (Holm) at most 5% of the audits."""
    rng = np.random.default_rng(100 * n_a + n_b + seeds)
    per_metric = [permutation_test(*_groups(_draw(rng, n_a, seeds), _draw(rng, n_b, seeds)), interval=False).p
                  for _ in range(1000)]
    assert np.mean(np.asarray(per_metric) < 0.05) <= 0.05 + 0.02  # 3 sd over 1000 draws
    audits = 300 if n_a + n_b > 12 else 500
    clear = [any(v in ("agrees", "disagrees") for v in _audit_verdicts(rng, n_a, n_b, seeds, [0.0] * FAMILY))
             for _ in range(audits)]
    assert np.mean(clear) <= 0.05 + MC_TOL
    if (n_a, n_b) != (10, 7):  # too few models for 21 metrics: the report says no verdict is possible
        assert all(v.startswith("no verdict possible") for v in _audit_verdicts(rng, n_a, n_b, seeds, [3.0] * FAMILY))


def test_power_at_ten_against_seven():
    """A true difference of 2.5 model-sd on one metric among 21 gives the agreeing verdict in at
    least 60% of simulated 10-vs-7 audits (Holm's first step needs p < 0.05 / 21)."""
    rng = np.random.default_rng(7)
    hits = [_audit_verdicts(rng, 10, 7, 1, [2.5] + [0.0] * (FAMILY - 1))[0] == "agrees" for _ in range(200)]
    assert np.mean(hits) >= 0.6


@pytest.mark.parametrize("n_a,n_b", [(5, 5), (10, 7)])
def test_interval_covers_the_true_shift_and_agrees_with_p(n_a: int, n_b: int):
    """The interval inverts the test: it excludes 0 exactly when p < 0.05, and it covers a true
    shift of the model means in at least 95% of draws (minus Monte Carlo tolerance)."""
    rng = np.random.default_rng(n_a * n_b)
    draws, covered = (300, 0) if n_a == 5 else (60, 0)
    for _ in range(draws):
        xa, xb = rng.normal(1.0, 1.0, (n_a, 1)), rng.normal(0.0, 1.0, (n_b, 1))
        t = permutation_test(*_groups(xa, xb))
        assert t.low is not None and t.high is not None and t.low <= t.point <= t.high
        covered += t.low <= 1.0 <= t.high
        assert (t.low > 0 or t.high < 0) == (t.p < 0.05)
    assert covered / draws >= 0.95 - (0.04 if n_a == 5 else 0.09)


def test_spearman_is_exact_at_small_n_and_calibrated_under_the_null():
    """Exact p for a perfect order: 1/3 with 3 models, 1/12 with 4 (scipy's asymptotic p is 0);
    under independence, p < 0.05 at most 5% of the time over 5 models."""
    assert spearman([1, 2, 3], [3, 5, 9]) == (pytest.approx(1.0), pytest.approx(1 / 3))
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == (pytest.approx(-1.0), pytest.approx(1 / 12))
    assert spearman_smallest_p(3) == pytest.approx(1 / 3)
    rng = np.random.default_rng(8)
    for n in (5, 8):  # rho is scipy's; p is its exact (n = 5) or Monte Carlo (n = 8) permutation p
        x, y = rng.normal(size=n), rng.normal(size=n) + np.arange(n) / 3
        rho, p = spearman(x, y)
        ref = scipy_permutation_test((x,), lambda xs, y=y: spearmanr(xs, y).statistic, permutation_type="pairings",
                                     n_resamples=4000, rng=np.random.default_rng(1))
        assert rho == pytest.approx(spearmanr(x, y).statistic) and p == pytest.approx(ref.pvalue, abs=0.03)
    rng = np.random.default_rng(9)
    ps = [spearman(rng.normal(size=5), rng.normal(size=5))[1] for _ in range(400)]
    assert np.mean(np.asarray(ps) < 0.05) <= 0.05 + 0.033


def test_verdict_words():
    assert verdict("higher", 1.0, 0.01) == "agrees"
    assert verdict("lower", 1.0, 0.01) == "disagrees"
    assert verdict("higher", 1.0, 0.2).startswith("inconclusive (adjusted p = 0.2")
    assert verdict("higher", 1.0, 0.01, possible=False).startswith("no verdict possible")


# ---- the accuracy confound, end to end through the store -------------------------------------

def _store_with_accuracies(tmp_path: Path, nas_acc: float, manual_acc: float, report: dict) -> Path:
    """7 NAS and 7 manual models (enough for a verdict on 2 metrics); NAS PGD ASR 0.3 higher."""
    rng = np.random.default_rng(0)
    with Store(tmp_path) as store:
        store.set_meta("config", {"name": "confound", "raw": {"report": report, "attacks": {"pgd": {}}}})
        for group, acc, asr in (("nas", nas_acc, 0.8), ("manual", manual_acc, 0.5)):
            for i in range(7):
                label = f"{group}{i}"
                for stage, name, result in (
                    ("clean", "clean_accuracy", {"kind": "clean_accuracy", "test_acc": acc + rng.normal(0, 0.01)}),
                    ("attack", "pgd", {"kind": "attack.pgd", "asr": {"most_likely": asr + rng.normal(0, 0.02)}}),
                ):
                    store.record_unit(unit_key=f"{label}-{name}", model=label, model_group=group, stage=stage,
                                      name=name, params={}, seed=0, result=result, started=time.time(),
                                      device="cpu")
    return tmp_path


@pytest.mark.parametrize("nas_acc,accept,expected", [
    (0.87, False, "agrees"),  # comparable accuracy: the verdict stands
    (0.36, False, "confounded by clean accuracy"),  # the demo's case: darts_v2 0.36 against resnet18 0.87
    (0.36, True, "agrees"),  # the config accepts the gap explicitly
])
def test_an_accuracy_gap_over_the_tolerance_confounds_the_verdict(tmp_path, nas_acc, accept, expected):
    from nasaudit.audit.report.comparison import nas_vs_manual
    from nasaudit.audit.report.data import AuditData

    data = AuditData.load(_store_with_accuracies(tmp_path, nas_acc, 0.87, {"accept_accuracy_gap": accept}))
    by_key = {c.metric.key: c for c in nas_vs_manual(data, METRICS)}
    assert by_key["pgd_asr_ml"].verdict.startswith(expected)
    assert by_key["pgd_asr_ml"].accuracy_gap.gap == pytest.approx(nas_acc - 0.87, abs=0.02)
    assert by_key["clean_acc"].verdict.startswith("no direction")


def test_report_settings_are_checked(tmp_path):
    from nasaudit.audit.config import config_from_dict
    from nasaudit.infra.errors import InputError

    base = {"dataset": {"name": "digits"}, "models": [{"name": "resnet18"}]}
    config_from_dict({**base, "report": {"accuracy_tolerance": 0.1, "accept_accuracy_gap": True}}, base_dir=tmp_path)
    for bad in ({"accuracy_tolerance": 2}, {"accuracy_tolerance": "x"}, {"accept_accuracy_gap": "yes"}):
        with pytest.raises(InputError, match=r"\[report\]"):
            config_from_dict({**base, "report": bad}, base_dir=tmp_path)


def test_common_input_asr_uses_only_inputs_every_model_attacked():
    from nasaudit.audit.report.sections.common_inputs import common_input_asr

    records = {
        # model a attacked inputs 1, 2, 3, 4 and broke 1 and 3; model b got 2, 3, 4, 5 right.
        "a": {"indices": [1, 2, 3, 4], "success": {"most_likely": [True, False, True, False]}},
        "b": {"indices": [2, 3, 4, 5], "success": {"most_likely": [True, True, True, True]}},
    }
    (n, asr), = common_input_asr(records).values()
    assert n == 3  # inputs 2, 3, 4
    assert asr == {"a": pytest.approx(1 / 3), "b": pytest.approx(1.0)}


def test_shipped_configs_model_counts_against_what_a_verdict_needs():
    """The smoke audit (2 vs 2) can never give a verdict, whatever it measures; the paper's
    config (10 vs 7) can over all 21 headline metrics."""
    from nasaudit.audit.config import load_config
    from nasaudit.infra.resources import data_dir

    def groups(name: str) -> tuple[int, int]:
        config = load_config(data_dir("experiments") / name)
        return (sum(m.group == "nas" for m in config.models), sum(m.group == "manual" for m in config.models))

    assert groups("smoke_cifar10.toml") == (2, 2) and not verdict_possible(2, 2, 1)
    n_a, n_b = groups("paper_cifar10.toml")
    assert (n_a, n_b) == (10, 7) and verdict_possible(n_a, n_b, FAMILY)
