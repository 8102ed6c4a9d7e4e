"""A rate is a count over a denominator: its value, its n and an exact interval, shown together.

Every success rate nasaudit prints (attack success, accuracy, detection) is a binomial
proportion; shown without its n, 1 success in 2 inputs reads like a finding. This module is the
one place that turns (successes, n) into what a person reads.
"""

from __future__ import annotations

from dataclasses import dataclass

# Fewer inputs than this and a rate is labelled as resting on very few inputs.
FEW_INPUTS = 20


@dataclass(frozen=True)
class Rate:
    """successes / n with its exact (Clopper-Pearson) 95% interval, all fractions in [0, 1]."""

    successes: int
    n: int

    @property
    def value(self) -> float | None:
        return self.successes / self.n if self.n > 0 else None

    @property
    def interval(self) -> tuple[float, float]:
        return binomial_interval(self.successes, self.n)

    @property
    def few(self) -> bool:
        """True when n is too small for the rate to mean much (fewer than FEW_INPUTS)."""
        return self.n < FEW_INPUTS

    def __str__(self) -> str:
        if self.n <= 0:
            return "n/a (n = 0)"
        low, high = self.interval
        text = f"{self.value:.3f} ({self.successes}/{self.n}, 95% CI {low:.2f}-{high:.2f})"
        return text + (" [few inputs]" if self.few else "")


def binomial_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval for successes/n; (0, 1) when n == 0.

    Its coverage is at least `level` for every true rate and n, including near 0 and 1 and at
    small n, where attack success rates live (the Wilson interval dips below there).
    """
    from scipy.stats import beta

    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n], got {successes}/{n}")
    tail = (1.0 - level) / 2
    low = 0.0 if successes == 0 else float(beta.ppf(tail, successes, n - successes + 1))
    high = 1.0 if successes == n else float(beta.ppf(1 - tail, successes + 1, n - successes))
    return low, high


def rate_from_fraction(fraction: float, n: int) -> Rate:
    """The Rate behind a stored fraction of n inputs (successes rounded to the nearest count)."""
    return Rate(int(round(float(fraction) * n)), int(n))


def near_chance(accuracy: float, num_classes: int, margin: float = 0.1) -> bool:
    """True when a classifier's accuracy is within `margin` (fraction) of uniform guessing."""
    return num_classes > 0 and accuracy < 1.0 / num_classes + margin
