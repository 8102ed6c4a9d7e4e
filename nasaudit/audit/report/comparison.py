"""Group comparisons the report's headline and mitigation table are made of: one row per metric,
a difference of means with its bootstrap CI and a verdict against the study's direction."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from nasaudit.audit.report.data import AuditData
from nasaudit.audit.report.metrics import MANUAL, METRICS, NAS, Metric
from nasaudit.audit.report.stats import bootstrap_diff_test, holm, verdict


@dataclass(frozen=True)
class Comparison:
    """mean(a) - mean(b) for one metric. `low`/`high` are None when a side has too few models
    (or seeds, for a one-model-per-side comparison) for an interval."""

    metric: Metric
    a_mean: float
    b_mean: float
    point: float
    low: float | None
    high: float | None
    n_a: int
    n_b: int
    direction: str | None  # what the study expects for a - b: "higher", "lower" or None
    verdict: str
    p: float | None = None  # two-sided bootstrap p-value of "no difference" (None without a CI)
    p_holm: float | None = None  # Holm-adjusted over the comparisons of one table

    @property
    def verdict_class(self) -> str:
        """One of "agrees", "disagrees", "inconclusive", "no direction" (colours the forest plot)."""
        if self.verdict in ("agrees", "disagrees"):
            return self.verdict
        return "no direction" if self.direction is None else "inconclusive"


def _compare(metric: Metric, a: dict[str, list[float]], b: dict[str, list[float]], direction: str | None,
             *, min_models: int) -> Comparison:
    point, low, high, p = bootstrap_diff_test(a, b)
    if len(a) < min_models or len(b) < min_models:
        # Resampling one model only varies its seeds: not a between-model interval.
        low = high = p = None
    return Comparison(metric, float(np.mean([np.mean(v) for v in a.values()])),
                      float(np.mean([np.mean(v) for v in b.values()])), point, low, high, len(a), len(b),
                      direction, verdict(direction, point, low, high), p)


def holm_adjusted(comparisons: list[Comparison]) -> list[Comparison]:
    """The comparisons with Holm-adjusted p-values over those that have a p-value, and verdicts
    that need the adjusted p below 0.05 (the family-wise error over the table's verdicts)."""
    adjusted = holm([c.p for c in comparisons])
    return [dataclasses.replace(c, p_holm=q, verdict=verdict(c.direction, c.point, c.low, c.high, q))
            for c, q in zip(comparisons, adjusted, strict=True)]


def nas_vs_manual(data: AuditData, metrics: tuple[Metric, ...] = METRICS) -> list[Comparison]:
    """NAS group minus manual group for every metric both groups have values for, in metric order."""
    out = []
    for m in metrics:
        values = data.values(m)
        a = {k: list(v.values()) for k, v in values.items() if data.group.get(k) == NAS}
        b = {k: list(v.values()) for k, v in values.items() if data.group.get(k) == MANUAL}
        if a and b:
            out.append(_compare(m, a, b, m.direction, min_models=2))
    return holm_adjusted(out)


# The study's Table 4: deeper cells with fewer skip connects lower every vulnerability metric it
# reports except poisoning, whose clean accuracy drop rises.
MITIGATION_RAISES = frozenset({"poison_cad"})


def mitigation_direction(metric: Metric) -> str | None:
    """What the study reports for (mitigated variant - base) on `metric` (None: no claim)."""
    if metric.direction is None or not metric.vulnerability:
        return None
    lowers = "lower" if metric.direction == "higher" else "higher"
    if metric.key in MITIGATION_RAISES:
        return "higher" if lowers == "lower" else "lower"
    return lowers


def variant_vs_base(data: AuditData, variant: str, base: str,
                    metrics: tuple[Metric, ...] = METRICS) -> list[Comparison]:
    """A mitigated variant minus its base, per vulnerability metric; the CI resamples seeds
    (each side is one model), so it needs at least two seeds per side."""
    out = []
    for m in metrics:
        if not m.vulnerability:
            continue
        values = data.values(m)
        if variant in values and base in values:
            a, b = {variant: list(values[variant].values())}, {base: list(values[base].values())}
            c = _compare(m, a, b, mitigation_direction(m), min_models=1)
            if min(len(a[variant]), len(b[base])) < 2:
                c = Comparison(c.metric, c.a_mean, c.b_mean, c.point, None, None, 1, 1, c.direction,
                               verdict(c.direction, c.point, None, None))
            out.append(c)
    return out
