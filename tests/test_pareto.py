"""Pareto fronts and the weighted best balance (nasaudit.audit.pareto) on synthetic records,
checked against a brute-force definition and hand-worked cases (ties, dominated points)."""

from __future__ import annotations

import itertools
import random

import pytest

from nasaudit.audit.pareto import balance_scores, best_balance, dominates, pareto_front

ACC_ASR = (True, False)  # clean accuracy up, attack success rate down


def test_hand_worked_front_with_ties_and_dominated_points():
    points = [
        (0.90, 0.80),  # 0: best accuracy
        (0.85, 0.40),  # 1: front
        (0.85, 0.40),  # 2: tie with 1: both stay
        (0.80, 0.40),  # 3: dominated by 1 (same ASR, lower accuracy)
        (0.70, 0.10),  # 4: most robust
        (0.60, 0.50),  # 5: dominated by 1 and 4
        (0.90, 0.85),  # 6: dominated by 0 (same accuracy, higher ASR)
    ]
    assert pareto_front(points, ACC_ASR) == [0, 1, 2, 4]
    assert not dominates(points[1], points[2], ACC_ASR) and dominates(points[1], points[3], ACC_ASR)
    assert pareto_front([], ACC_ASR) == [] and pareto_front([(1.0, 2.0)], ACC_ASR) == [0]
    # All equal: nobody dominates, all on the front.
    assert pareto_front([(0.5, 0.5)] * 3, ACC_ASR) == [0, 1, 2]


def test_front_matches_brute_force_on_random_records():
    rng = random.Random(0)
    for _ in range(50):
        dims = rng.choice([2, 3])
        maximize = [rng.random() < 0.5 for _ in range(dims)]
        # Few distinct values, so ties in single coordinates and whole points are common.
        points = [tuple(rng.choice([0.1, 0.2, 0.3, 0.4]) for _ in range(dims)) for _ in range(rng.randint(1, 12))]
        sign = [1 if up else -1 for up in maximize]

        def weakly_better(a, b, sign=sign):
            return all(s * x >= s * y for x, y, s in zip(a, b, sign, strict=True))

        expected = [i for i, p in enumerate(points)
                    if not any(weakly_better(q, p) and q != p for q in points)]
        front = pareto_front(points, maximize)
        assert front == expected
        # No front point dominates another; every other point is dominated by a front point.
        assert not any(dominates(points[a], points[b], maximize) for a, b in itertools.permutations(front, 2))
        assert all(any(dominates(points[f], points[i], maximize) for f in front)
                   for i in range(len(points)) if i not in front)


def test_best_balance_follows_the_weighting():
    points = [(0.90, 0.80), (0.85, 0.40), (0.70, 0.10), (0.60, 0.50)]
    assert best_balance(points, ACC_ASR, [1.0, 0.0]) == 0  # accuracy only
    assert best_balance(points, ACC_ASR, [0.0, 1.0]) == 2  # robustness only
    assert best_balance(points, ACC_ASR, [1.0, 1.0]) == 1  # 0.833 + 0.571 beats 1 + 0 and 0.333 + 1
    scores = balance_scores(points, ACC_ASR, [1.0, 1.0])
    assert scores == pytest.approx([1.0, 0.25 / 0.3 + 0.4 / 0.7, 0.1 / 0.3 + 1.0, 0.3 / 0.7])
    # A zero weight never picks a dominated point: (0.9, 0.9) ties 0 on accuracy but is dominated.
    assert best_balance([(0.9, 0.8), (0.9, 0.9)], ACC_ASR, [1.0, 0.0]) == 0
    assert best_balance([], ACC_ASR, [1.0, 1.0]) is None
    with pytest.raises(ValueError):
        balance_scores(points, ACC_ASR, [1.0, -1.0])
    with pytest.raises(ValueError):
        pareto_front([(0.5, float("nan"))], ACC_ASR)
