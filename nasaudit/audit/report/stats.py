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
    diffs = resampled_means(a) - resampled_means(b)
    low, high = np.percentile(diffs, [2.5, 97.5])
    return point, float(low), float(high)


def verdict(direction: str | None, point: float, low: float | None, high: float | None) -> str:
    """Plain words: does this run agree with the study's reported direction?

    low/high None means there is no CI (fewer than two models in a group).
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

