"""Label-only membership inference (Figure 10)."""

from __future__ import annotations

from nasaudit.audit.report.builder import Builder
from nasaudit.audit.report.document import Section
from nasaudit.audit.report.figures import group_points
from nasaudit.audit.report.metrics import Metric, num

AUC = Metric("membership_auc", "membership inference AUC", "attack", "membership",
             lambda r: num(r.get("auc")), "higher", True)
METRICS = (AUC,)


def membership(report: Builder) -> Section:
    """Label-only membership inference AUC and low-FPR advantage per model."""
    s = Section("Membership inference AUC (Figure 10)")
    m = AUC
    if not report.data.values(m):
        return s.missing(report.why_missing("attack", "membership"))
    adv = Metric("membership_adv", "advantage at low FPR", "attack", "membership",
                 lambda r: num(r.get("advantage_at_fpr")))
    report.per_model_table(s, "membership", "Label-only membership inference", [m, adv])
    fig = group_points(report.figs, report.data, [m], "membership_auc", "Membership AUC per model and group", "AUC")
    if fig:
        s.blocks.append(fig)
    return s
