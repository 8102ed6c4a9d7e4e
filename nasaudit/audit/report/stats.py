"""The report's statistics: an exact permutation test over model labels with the interval that
inverts it, multiplicity corrections, verdicts, and rank correlations with exact small-n p-values.

The unit of replication is the model: seeds are averaged within a model first, then the group
labels (NAS / manual) are permuted over the models. Under the null that the labels are
exchangeable, every relabelling is equally likely, so the p-value's false-positive rate is at most
alpha at every group size, and the smallest attainable p is set by how many relabellings exist
(1/3 at 2 vs 2). The tests in tests/test_report_stats.py check this by simulation.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

ALPHA = 0.05
# All relabellings are enumerated up to this many (10 vs 7 models has 19,448); Monte Carlo beyond.
EXACT_LIMIT = 20_000
MONTE_CARLO_DRAWS = 9_999
_BISECTION_STEPS = 60


@dataclass(frozen=True)
class GroupTest:
    """mean(a) - mean(b) over model means, its two-sided permutation p-value and the 95%
    interval that inverts the same test (shift model). low/high are None where the interval is
    unbounded on that side: with so few models that no shift can be rejected."""

    point: float
    low: float | None
    high: float | None
    p: float
    min_p: float  # the smallest p-value these group sizes can give
    n_a: int
    n_b: int
    exact: bool  # all relabellings enumerated (else Monte Carlo)


def model_means(group: Mapping[str, Iterable[float]]) -> np.ndarray:
    """[n_models] the mean over seeds of each model's values (a model is the unit of replication)."""
    return np.array([float(np.mean(list(v))) for v in group.values()], dtype=float)


def relabellings(n_a: int, n_b: int, *, seed: int = 0) -> tuple[np.ndarray, bool]:
    """0/1 float masks [R, n_a + n_b] (1: in group a) of relabellings, and whether they are all of
    them. Exact: every choice of n_a of the n_a + n_b models, the observed one first. Monte Carlo:
    the observed labelling then MONTE_CARLO_DRAWS seeded random ones."""
    n = n_a + n_b
    if math.comb(n, n_a) <= EXACT_LIMIT:
        return _all_relabellings(n_a, n_b), True
    rng = np.random.default_rng(seed)
    masks = np.zeros((MONTE_CARLO_DRAWS + 1, n))
    masks[0, :n_a] = 1.0
    order = np.argsort(rng.random((MONTE_CARLO_DRAWS, n)), axis=1)[:, :n_a]
    np.put_along_axis(masks[1:], order, 1.0, axis=1)
    return masks, False


@functools.lru_cache(maxsize=32)
def _all_relabellings(n_a: int, n_b: int) -> np.ndarray:
    """Every choice of n_a of n_a + n_b models as read-only masks, the observed one first (memoised:
    a pure function of the sizes, asked for once per metric)."""
    n = n_a + n_b
    masks = np.zeros((math.comb(n, n_a), n))
    for row, chosen in enumerate(itertools.combinations(range(n), n_a)):
        masks[row, list(chosen)] = 1.0
    masks.setflags(write=False)
    return masks


class _ShiftTest:
    """The permutation test of H0: mean(a) - mean(b) = delta, for any delta, from one set of
    relabellings. Shifting a by -delta moves each relabelling's statistic linearly in delta, so
    p(delta) costs one vectorised pass."""

    def __init__(self, a: np.ndarray, b: np.ndarray, *, seed: int):
        self.n_a, self.n_b = len(a), len(b)
        masks, self.exact = relabellings(self.n_a, self.n_b, seed=seed)
        x = np.concatenate([a, b])
        # mean over a's side minus mean over b's side, for every relabelling at once
        self.stats0 = (masks @ x) * (1.0 / self.n_a + 1.0 / self.n_b) - x.sum() / self.n_b  # [R]
        k = masks[:, : self.n_a].sum(axis=1)  # how many of a's models each relabelling keeps in a
        self.slope = k / self.n_a - (self.n_a - k) / self.n_b  # [R]; 1 for the observed labelling
        self.observed = float(self.stats0[0])
        self.scale = float(np.ptp(x)) + abs(self.observed)
        self.draws = len(self.stats0) - (0 if self.exact else 1)

    def p(self, delta: float = 0.0) -> float:
        """Two-sided p-value of H0: shift = delta (twice the smaller tail, as scipy.stats.permutation_test)."""
        t = self.stats0 - delta * self.slope
        obs = self.observed - delta
        tol = 1e-12 * max(1.0, abs(obs), self.scale)
        if self.exact:
            greater, less = np.mean(t >= obs - tol), np.mean(t <= obs + tol)
        else:  # the observed labelling counts once among draws + 1 (never p = 0)
            greater = np.sum(t[1:] >= obs - tol) + 1
            less = np.sum(t[1:] <= obs + tol) + 1
            greater, less = greater / (self.draws + 1), less / (self.draws + 1)
        return float(min(1.0, 2.0 * min(greater, less)))

    @property
    def min_p(self) -> float:
        return float(min(1.0, 2.0 / (self.draws if self.exact else self.draws + 1)))

    def bound(self, side: int, alpha: float) -> float | None:
        """The interval's end on one side (+1 upper, -1 lower): where p(delta) first reaches alpha,
        or None when it never does (unbounded)."""
        if self.min_p > alpha:
            return None
        inside, step = self.observed, max(self.scale, 1e-9)
        outside = inside + side * step
        for _ in range(64):  # widen until rejected
            if self.p(outside) <= alpha:
                break
            inside, outside = outside, outside + side * step
            step *= 2
        else:
            return None
        for _ in range(_BISECTION_STEPS):
            mid = 0.5 * (inside + outside)
            if self.p(mid) <= alpha:
                outside = mid
            else:
                inside = mid
        return float(inside)


def permutation_test(a: Mapping[str, Iterable[float]], b: Mapping[str, Iterable[float]], *,
                     alpha: float = ALPHA, seed: int = 0, interval: bool = True) -> GroupTest:
    """Exact (or Monte Carlo beyond EXACT_LIMIT relabellings) permutation test of mean(a) -
    mean(b) over model means, with its (1 - alpha) interval by test inversion.

    a, b: model -> per-seed values. Needs at least one model per side; with one model per side
    there is one other relabelling, so p = 1 and the interval is unbounded. interval=False skips
    the interval (low = high = None), for callers that need only p.
    """
    xa, xb = model_means(a), model_means(b)
    if len(xa) == 0 or len(xb) == 0:
        raise ValueError("each group needs at least one model")
    test = _ShiftTest(xa, xb, seed=seed)
    low, high = (test.bound(-1, alpha), test.bound(+1, alpha)) if interval else (None, None)
    return GroupTest(test.observed, low, high, test.p(0.0), test.min_p, len(xa), len(xb), test.exact)


def smallest_p(n_a: int, n_b: int) -> float:
    """The smallest two-sided permutation p-value n_a vs n_b models can give (distinct values)."""
    return min(1.0, 2.0 / min(math.comb(n_a + n_b, n_a), MONTE_CARLO_DRAWS + 1))


def models_needed(family: int, *, alpha: float = ALPHA) -> int:
    """Models per group (equal groups) before Holm over `family` tests can give any verdict:
    the smallest k with family * smallest_p(k, k) < alpha."""
    k = 1
    while family * smallest_p(k, k) >= alpha:
        k += 1
    return k


def verdict_possible(n_a: int, n_b: int, family: int, *, alpha: float = ALPHA) -> bool:
    """Whether Holm over `family` tests can reject anything with n_a vs n_b models."""
    return family * smallest_p(n_a, n_b) < alpha


def verdict(direction: str | None, point: float, p_adjusted: float | None, *, alpha: float = ALPHA,
            possible: bool = True) -> str:
    """Plain words: does this run agree with the study's reported direction?

    p_adjusted: the multiplicity-adjusted p-value (None: no test could be made). possible: False
    when the group sizes cannot reach alpha at all (the smallest attainable adjusted p is larger).
    """
    side = "higher" if point > 0 else "lower" if point < 0 else "equal"
    if direction is None:
        return f"no direction reported by the study; NAS {side} here"
    if point == 0:
        return "no difference in this run"
    leaning = leaning_of(direction, point)
    if not possible or p_adjusted is None:
        return f"no verdict possible with this many models; {leaning}"
    if p_adjusted < alpha:
        return "agrees" if leaning.endswith("in the study's direction") else "disagrees"
    return f"inconclusive (adjusted p = {p_adjusted:.2g}; {leaning})"


def leaning_of(direction: str, point: float) -> str:
    """Where a point estimate lies against the study's direction ("higher"/"lower"), in words."""
    if point == 0:
        return "no difference"
    sign = 1 if direction == "higher" else -1
    return "point estimate in the study's direction" if point * sign > 0 else "point estimate against the study's direction"


def spearman(x: Iterable[float], y: Iterable[float], *, seed: int = 0) -> tuple[float | None, float | None]:
    """Spearman's rho and its two-sided permutation p-value (scipy.stats.permutation_test over
    the pairings: exact for up to 7 pairs, seeded Monte Carlo beyond); (None, None) when
    undefined: n < 3 or a constant. The asymptotic p-value is wrong at small n (it gives p = 0
    for a perfect order of 3)."""
    from scipy.stats import permutation_test as scipy_permutation_test
    from scipy.stats import rankdata

    x, y = np.asarray(list(x), dtype=float), np.asarray(list(y), dtype=float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None, None
    rx, ry = rankdata(x), rankdata(y)
    ry = (ry - ry.mean()) / np.sqrt(((ry - ry.mean()) ** 2).sum())

    def rho(ranks: np.ndarray, axis: int = -1) -> np.ndarray:  # Pearson of ranks = Spearman
        centred = ranks - ranks.mean(axis=axis, keepdims=True)
        return (centred * ry).sum(axis=axis) / np.sqrt((centred ** 2).sum(axis=axis))

    res = scipy_permutation_test((rx,), rho, permutation_type="pairings", vectorized=True,
                                 n_resamples=MONTE_CARLO_DRAWS, alternative="two-sided",
                                 rng=np.random.default_rng(seed))
    return float(res.statistic), float(min(1.0, res.pvalue))


def spearman_smallest_p(n: int) -> float:
    """The smallest two-sided exact p-value Spearman's rho can give over n pairs (no ties)."""
    return min(1.0, 2.0 / min(math.factorial(n), MONTE_CARLO_DRAWS + 1))


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
    """Benjamini-Hochberg adjusted p-values (false discovery rate; scipy's
    false_discovery_control), in input order; None stays None and is not counted."""
    from scipy.stats import false_discovery_control

    p = list(p_values)
    idx = [i for i, v in enumerate(p) if v is not None]
    out: list[float | None] = [None] * len(p)
    if idx:
        for i, q in zip(idx, false_discovery_control([float(p[i]) for i in idx]), strict=True):
            out[i] = float(q)
    return out
