"""The report's statistics: group differences with a hierarchical bootstrap, verdicts, correlations."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

BOOTSTRAP_SAMPLES = 2000


def bootstrap_diff(
    a: dict[str, list[float]], b: dict[str, list[float]], *, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0
) -> tuple[float, float, float]:
    """mean(a) - mean(b) with a hierarchical bootstrap 95% CI.

    a, b: model -> per-seed values. Each resample draws models with replacement within each
    group, then seeds with replacement within each drawn model (the two sources of variation
    the study's comparison has). Returns (point estimate, CI low, CI high).
    """
    point, low, high, _ = bootstrap_diff_test(a, b, samples=samples, seed=seed)
    return point, low, high


def bootstrap_diff_test(
    a: dict[str, list[float]], b: dict[str, list[float]], *, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0
) -> tuple[float, float, float, float]:
    """`bootstrap_diff` plus a two-sided bootstrap p-value for "no difference": (point, CI low,
    CI high, p), from the same resamples, so p < 0.05 exactly when the 95% CI excludes 0 (up to
    the resampling grain of 1 / samples)."""
    point, diffs = bootstrap_diffs(a, b, samples=samples, seed=seed)
    low, high = np.percentile(diffs, [2.5, 97.5])
    return point, float(low), float(high), bootstrap_p_value(diffs)


def bootstrap_p_value(diffs: np.ndarray) -> float:
    """Two-sided p-value in (0, 1] that the mean difference is 0, from bootstrap draws [samples]:
    twice the share of draws on the far side of 0 (CI inversion), with the +1 correction
    (Davison and Hinkley) so that it is never exactly 0."""
    diffs = np.asarray(diffs, dtype=float)
    tail = min(int((diffs <= 0).sum()), int((diffs >= 0).sum()))
    return float(min(1.0, 2.0 * (tail + 1) / (len(diffs) + 1)))


def bootstrap_diffs(
    a: dict[str, list[float]], b: dict[str, list[float]], *, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0
) -> tuple[float, np.ndarray]:
    """(mean(a) - mean(b), hierarchical bootstrap draws of it [samples]); see `bootstrap_diff`."""
    rng = np.random.default_rng(seed)

    def resampled_means(group: dict[str, list[float]]) -> np.ndarray:
        per_model = []
        for values in group.values():
            v = np.asarray(values, dtype=float)
            idx = rng.integers(0, len(v), size=(samples, len(v)))
            per_model.append(v[idx].mean(axis=1))  # [samples]
        per_model_arr = np.stack(per_model, axis=1)  # [samples, n_models]
        pick = rng.integers(0, per_model_arr.shape[1], size=per_model_arr.shape)
        return np.take_along_axis(per_model_arr, pick, axis=1).mean(axis=1)

    point = float(np.mean([np.mean(v) for v in a.values()]) - np.mean([np.mean(v) for v in b.values()]))
    return point, resampled_means(a) - resampled_means(b)


def verdict(direction: str | None, point: float, low: float | None, high: float | None,
            p_adjusted: float | None = None, *, alpha: float = 0.05) -> str:
    """Plain words: does this run agree with the study's reported direction?

    low/high None means there is no CI (fewer than two models in a group). p_adjusted: the
    multiplicity-adjusted p-value (Holm over the headline's verdicts); when given, a clear
    verdict also needs p_adjusted < alpha, so a CI that excludes 0 by luck among many metrics
    reads "inconclusive".
    """
    side = "higher" if point > 0 else "lower" if point < 0 else "equal"
    if direction is None:
        return f"no direction reported by the study; NAS {side} here"
    sign = 1 if direction == "higher" else -1
    if point == 0:
        return "no difference in this run"
    leaning = "in the study's direction" if point * sign > 0 else "against the study's direction"
    if low is None or high is None:
        return f"no CI (a group has one model); point estimate {leaning}"
    if low > 0 or high < 0:
        if p_adjusted is not None and p_adjusted >= alpha:
            return f"inconclusive (CI excludes 0, but Holm-adjusted p = {p_adjusted:.2g}; point estimate {leaning})"
        return "agrees" if (point * sign) > 0 else "disagrees"
    return f"inconclusive (CI includes 0; point estimate {leaning})"


def spearman(x: Iterable[float], y: Iterable[float]) -> tuple[float | None, float | None]:
    """Spearman's rho and its two-sided p-value (None when undefined: n < 3 or a constant)."""
    from scipy.stats import spearmanr

    x, y = np.asarray(list(x), dtype=float), np.asarray(list(y), dtype=float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None, None
    res = spearmanr(x, y)
    return float(res.statistic), float(res.pvalue)



def holm(p_values: Iterable[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (family-wise error), in input order; None stays None
    and is not counted in the family. adjusted_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))
    over the sorted p-values."""
    p = list(p_values)
    idx = [i for i, v in enumerate(p) if v is not None]
    out: list[float | None] = [None] * len(p)
    m, running = len(idx), 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: p[i])):
        running = max(running, min(1.0, (m - rank) * float(p[i])))
        out[i] = running
    return out


def benjamini_hochberg(p_values: Iterable[float | None]) -> list[float | None]:
    """Benjamini-Hochberg adjusted p-values (false discovery rate), in input order; None stays
    None and is not counted. adjusted_(i) = min_{j >= i} min(1, m p_(j) / j) over the sorted
    p-values."""
    p = list(p_values)
    idx = sorted((i for i, v in enumerate(p) if v is not None), key=lambda i: p[i])
    out: list[float | None] = [None] * len(p)
    m, running = len(idx), 1.0
    for rank in range(m, 0, -1):
        i = idx[rank - 1]
        running = min(running, min(1.0, m * float(p[i]) / rank))
        out[i] = running
    return out
