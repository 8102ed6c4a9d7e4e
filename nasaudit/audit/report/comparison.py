"""Group comparisons the report's headline and mitigation table are made of: one row per metric,
a difference of means with its permutation p-value and interval, Holm over the table, and a
verdict against the study's direction that is withheld when the data cannot carry one (too few
models) or when the groups differ in clean accuracy by more than the tolerance."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from nasaudit.audit.config import ACCURACY_TOLERANCE
from nasaudit.audit.report.data import AuditData
from nasaudit.audit.report.metrics import CLEAN_ACC, MANUAL, NAS, Metric
from nasaudit.audit.report.stats import (
    holm,
    leaning_of,
    permutation_test,
    verdict,
    verdict_possible,
)

CONFOUNDED = "confounded by clean accuracy"


@dataclass(frozen=True)
class AccuracyGap:
    """mean clean accuracy of side a minus side b (fractions), and what the config allows."""

    gap: float
    tolerance: float
    accepted: bool

    @property
    def confounds(self) -> bool:
        return abs(self.gap) > self.tolerance and not self.accepted

    def __str__(self) -> str:
        return f"{self.gap:+.3f}"


@dataclass(frozen=True)
class Comparison:
    """mean(a) - mean(b) for one metric over model means (seeds averaged within a model; for a
    one-model-per-side comparison, the seeds are the units). `low`/`high` are None where the
    95% interval is unbounded on that side (too few units to reject any shift)."""

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
    p: float | None = None  # two-sided permutation p-value of "no difference"
    p_holm: float | None = None  # Holm-adjusted over the comparisons of one table
    min_p: float = 1.0  # the smallest p these unit counts can give
    possible: bool = True  # whether Holm over this table can reach a verdict at these counts
    spread: float | None = None  # pooled sd of the units' values (for standardised effects)
    accuracy_gap: AccuracyGap | None = None

    @property
    def verdict_class(self) -> str:
        """One of "agrees", "disagrees", "inconclusive", "no direction", "confounded",
        "no verdict possible" (colours the forest plot)."""
        if self.verdict in ("agrees", "disagrees"):
            return self.verdict
        if self.direction is None:
            return "no direction"
        if self.verdict.startswith(CONFOUNDED):
            return "confounded"
        if self.verdict.startswith("no verdict possible"):
            return "no verdict possible"
        return "inconclusive"

    @property
    def standardised(self) -> tuple[float, float | None, float | None] | None:
        """(point, low, high) divided by the pooled sd of the units (None when it is 0 or unknown)."""
        if not self.spread:
            return None
        s = self.spread
        return (self.point / s, None if self.low is None else self.low / s,
                None if self.high is None else self.high / s)


def _pooled_sd(a: np.ndarray, b: np.ndarray) -> float | None:
    dof = len(a) + len(b) - 2
    if dof <= 0:
        return None
    ss = float(((a - a.mean()) ** 2).sum() + ((b - b.mean()) ** 2).sum())
    return float(np.sqrt(ss / dof)) or None


def compare(metric: Metric, a: dict[str, list[float]], b: dict[str, list[float]],
            direction: str | None, *, interval: bool = True) -> Comparison:
    """One metric's unadjusted comparison; a, b: unit -> values (averaged within a unit).
    interval=False skips the interval (simulations that need only the verdict)."""
    test = permutation_test(a, b, interval=interval)
    xa = np.array([np.mean(v) for v in a.values()])
    xb = np.array([np.mean(v) for v in b.values()])
    return Comparison(metric, float(xa.mean()), float(xb.mean()), test.point, test.low, test.high,
                      test.n_a, test.n_b, direction, "", test.p, None, test.min_p,
                      spread=_pooled_sd(xa, xb))


def adjusted(comparisons: list[Comparison], gap: AccuracyGap | None = None) -> list[Comparison]:
    """The comparisons with Holm-adjusted p-values over the table and their verdicts: clear only
    when the adjusted p is below ALPHA (the family-wise error over the table's verdicts); "no
    verdict possible" when the table's size and the unit counts make that unattainable;
    "confounded by clean accuracy" when the sides' accuracy gap exceeds its tolerance."""
    family = sum(c.p is not None for c in comparisons)
    out = []
    for c, q in zip(comparisons, holm([c.p for c in comparisons]), strict=True):
        possible = verdict_possible(c.n_a, c.n_b, max(1, family))
        text = verdict(c.direction, c.point, q, possible=possible)
        if gap is not None and gap.confounds and c.metric.key != "clean_acc" and c.direction is not None:
            text = f"{CONFOUNDED} (gap {gap} exceeds {gap.tolerance:.2f}); {leaning_of(c.direction, c.point)}"
        out.append(dataclasses.replace(c, p_holm=q, verdict=text, possible=possible, accuracy_gap=gap))
    return out


def report_settings(config: dict[str, Any]) -> tuple[float, bool]:
    """([report] accuracy_tolerance, [report] accept_accuracy_gap) from a stored run config."""
    section = (config.get("raw") or {}).get("report") or {}
    tolerance = section.get("accuracy_tolerance", ACCURACY_TOLERANCE)
    return float(tolerance), bool(section.get("accept_accuracy_gap", False))


def accuracy_gap(data: AuditData, a: list[str], b: list[str]) -> AccuracyGap | None:
    """Mean clean accuracy of models `a` minus models `b` (None when a side has none)."""
    means = data.model_means(CLEAN_ACC)
    xa, xb = [means[k] for k in a if k in means], [means[k] for k in b if k in means]
    if not xa or not xb:
        return None
    tolerance, accepted = report_settings(data.config)
    return AccuracyGap(float(np.mean(xa) - np.mean(xb)), tolerance, accepted)


def nas_vs_manual(data: AuditData, metrics: tuple[Metric, ...]) -> list[Comparison]:
    """NAS group minus manual group for every metric both groups have values for, in metric order."""
    out = []
    for m in metrics:
        values = data.values(m)
        a = {k: list(v.values()) for k, v in values.items() if data.group.get(k) == NAS}
        b = {k: list(v.values()) for k, v in values.items() if data.group.get(k) == MANUAL}
        if a and b:
            out.append(compare(m, a, b, m.direction))
    return adjusted(out, accuracy_gap(data, data.labels(NAS), data.labels(MANUAL)))


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
                    metrics: tuple[Metric, ...]) -> list[Comparison]:
    """A mitigated variant minus its base, per vulnerability metric. Each side is one
    architecture, so its seeds (independently trained models) are the units the permutation
    test relabels; Holm over the table, and the same accuracy-gap rule as the headline."""
    out = []
    for m in metrics:
        if not m.vulnerability:
            continue
        values = data.values(m)
        if variant in values and base in values:
            a = {f"seed {s}": [v] for s, v in values[variant].items()}
            b = {f"seed {s}": [v] for s, v in values[base].items()}
            out.append(compare(m, a, b, mitigation_direction(m)))
    return adjusted(out, accuracy_gap(data, [variant], [base]))
