"""Pareto fronts and weighted balance of audit points (pure functions, no I/O).

A point is a sequence of numbers, one per objective; `maximize[k]` says whether larger is better
for objective k. Point a dominates b when a is at least as good in every objective and strictly
better in one. The front is the set of points no other point dominates; equal points do not
dominate each other, so ties are all on the front (or all off it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def dominates(a: Sequence[float], b: Sequence[float], maximize: Sequence[bool]) -> bool:
    """True when point a Pareto-dominates point b under the directions `maximize`."""
    better = False
    for x, y, up in zip(a, b, maximize, strict=True):
        x, y = (x, y) if up else (-x, -y)
        if x < y:
            return False
        better = better or x > y
    return better


def pareto_front(points: Sequence[Sequence[float]], maximize: Sequence[bool]) -> list[int]:
    """Indices (ascending) of the non-dominated points. Every point needs one finite number per
    objective (ValueError otherwise: leave points with missing values out before calling)."""
    for p in points:
        if len(p) != len(maximize) or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in p):
            raise ValueError(f"point {p!r} needs {len(maximize)} finite numbers")
    return [i for i, p in enumerate(points)
            if not any(dominates(q, p, maximize) for j, q in enumerate(points) if j != i)]


def balance_scores(points: Sequence[Sequence[float]], maximize: Sequence[bool],
                   weights: Sequence[float]) -> list[float]:
    """Weighted sum of min-max normalised goodness per point, in [0, sum(weights)].

    Each objective is rescaled over the points to [0, 1] with 1 the best value (a constant
    objective scores 1 for everyone), then weighted; weights must be >= 0.
    """
    if any(w < 0 for w in weights):
        raise ValueError("balance weights must be >= 0")
    scores = [0.0] * len(points)
    for k, (up, w) in enumerate(zip(maximize, weights, strict=True)):
        column = [p[k] for p in points]
        lo, hi = min(column, default=0.0), max(column, default=0.0)
        for i, v in enumerate(column):
            good = 1.0 if hi == lo else (v - lo) / (hi - lo)
            scores[i] += w * (good if up else 1.0 - good)
    return scores


def best_balance(points: Sequence[Sequence[float]], maximize: Sequence[bool],
                 weights: Sequence[float]) -> int | None:
    """Index of the front point with the highest `balance_scores` (ties: the lower index);
    None without points. Restricting to the front keeps a zero weight from picking a dominated
    point."""
    if not points:
        return None
    front = pareto_front(points, maximize)
    scores = balance_scores(points, maximize, weights)
    return max(front, key=lambda i: (scores[i], -i))
