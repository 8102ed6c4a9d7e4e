"""The report's statistics against independent references: Holm and Benjamini-Hochberg against
their textbook definitions and scipy, and the hierarchical bootstrap against slow model-level and
seed-only bootstraps on a case built so that the two disagree."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.stats import false_discovery_control

from nasaudit.audit.report.stats import (
    benjamini_hochberg,
    bootstrap_diff,
    bootstrap_diff_test,
    holm,
    verdict,
)


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


def _slow_bootstrap(a, b, *, models: bool, seeds: bool, samples: int, seed: int):
    """Percentile 95% CI of mean(a) - mean(b) by an explicit loop. models: resample models
    within each group; seeds: resample seeds within each (drawn) model."""
    rng = np.random.default_rng(seed)

    def draw(group):
        keys = list(group)
        picked = [keys[i] for i in rng.integers(0, len(keys), len(keys))] if models else keys
        means = []
        for k in picked:
            v = np.asarray(group[k])
            means.append((v[rng.integers(0, len(v), len(v))] if seeds else v).mean())
        return np.mean(means)

    diffs = [draw(a) - draw(b) for _ in range(samples)]
    return np.percentile(diffs, [2.5, 97.5])


def test_model_level_bootstrap_differs_from_seed_only_and_ours_is_model_level():
    """Three models per group whose means are far apart and whose seeds agree closely: the
    between-model spread dominates. A seed-only bootstrap treats the three models as the whole
    population and gives a far narrower interval; ours must match the model-level one."""
    a = {"n1": [1.0, 1.01, 0.99], "n2": [3.0, 3.02, 2.98], "n3": [5.0, 5.01, 4.99]}
    b = {"m1": [1.5, 1.49, 1.51], "m2": [2.0, 2.01, 1.99], "m3": [2.5, 2.49, 2.51]}
    point, low, high, p = bootstrap_diff_test(a, b, samples=4000, seed=0)
    assert point == pytest.approx(3.0 - 2.0)
    model_level = _slow_bootstrap(a, b, models=True, seeds=True, samples=4000, seed=1)
    seed_only = _slow_bootstrap(a, b, models=False, seeds=True, samples=4000, seed=1)
    ours, ref, narrow = high - low, np.ptp(model_level), np.ptp(seed_only)
    assert narrow < 0.05 * ref  # the constructed case does separate the two bootstraps
    assert ours == pytest.approx(ref, rel=0.1)
    # Endpoints of a 3-model bootstrap move in steps of 1/9 of the spread between RNG streams.
    assert low == pytest.approx(model_level[0], abs=0.1 * ref)
    assert high == pytest.approx(model_level[1], abs=0.1 * ref)
    # The seed-only interval excludes 0 (a "finding"); the model-level one does not.
    assert seed_only[0] > 0 and low < 0 < high and p > 0.05
    assert bootstrap_diff(a, b, samples=4000, seed=0) == (point, low, high)


def test_bootstrap_p_value_agrees_with_the_interval():
    rng = np.random.default_rng(2)
    for shift, spread in itertools.product((0.0, 0.5, 2.0), (0.3, 1.0)):
        a = {f"a{i}": list(shift + rng.normal(0, spread, 3)) for i in range(4)}
        b = {f"b{i}": list(rng.normal(0, spread, 3)) for i in range(4)}
        _, low, high, p = bootstrap_diff_test(a, b)
        excludes = low > 0 or high < 0
        assert (p < 0.05 + 2e-3) if excludes else (p >= 0.05 - 2e-3)


def test_verdict_uses_the_adjusted_p_value():
    assert verdict("higher", 1.0, 0.2, 1.8) == "agrees"
    assert verdict("higher", 1.0, 0.2, 1.8, p_adjusted=0.01) == "agrees"
    assert verdict("lower", 1.0, 0.2, 1.8, p_adjusted=0.01) == "disagrees"
    text = verdict("higher", 1.0, 0.2, 1.8, p_adjusted=0.2)
    assert text.startswith("inconclusive") and "Holm" in text


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
