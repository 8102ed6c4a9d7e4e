"""The headline: NAS minus manual per metric, with bootstrap CIs and verdicts."""

from __future__ import annotations

from nasaudit.audit.report.builder import Builder
from nasaudit.audit.report.comparison import nas_vs_manual
from nasaudit.audit.report.document import Section, Table
from nasaudit.audit.report.figures import forest_plot
from nasaudit.audit.report.metrics import MANUAL, NAS
from nasaudit.audit.report.stats import BOOTSTRAP_SAMPLES


def headline(report: Builder) -> Section:
    """NAS minus manual for every metric: group means, bootstrap 95% CI and the verdict against the study."""
    s = Section("Headline: NAS minus manual")
    if not report.data.labels(NAS) or not report.data.labels(MANUAL):
        return s.missing("the comparison needs at least one NAS and one manual model with results.")
    comparisons = nas_vs_manual(report.data)
    agree = sum(c.verdict == "agrees" for c in comparisons)
    disagree = sum(c.verdict == "disagrees" for c in comparisons)
    rows = [[c.metric.title, c.a_mean, c.b_mean, c.point, c.low, c.high, c.direction or "-", c.verdict,
             f"{c.n_a}/{c.n_b}", c.p, c.p_holm] for c in comparisons]
    if not rows:
        return s.missing("no metric has values for both groups yet.")
    forest = forest_plot(report.figs, comparisons, "headline_forest",
                         "NAS minus manual per metric: point estimate, bootstrap 95% CI (bar; none when a group "
                         "has one model), the study's direction (triangle) and this run's verdict (colour)",
                         xlabel="NAS - manual (in each metric's unit)")
    if forest is not None:
        s.blocks.append(forest)
    report.table(s, Table("headline", ["metric", "NAS mean", "manual mean", "NAS - manual", "CI 2.5%", "CI 97.5%",
                                     "study: NAS is", "this run", "models NAS/manual", "p",
                                     "p (Holm)"], rows,
                        f"Group differences with bootstrap 95% CI over models and seeds ({BOOTSTRAP_SAMPLES} resamples)"))
    with_dir = sum(1 for r in rows if r[6] != "-")
    s.text("The interval resamples models within each group, then seeds within each model; with only a "
           "few models per group it is rough (it cannot be wider than the models' spread), so read a "
           "clear verdict from a small audit as a hint, not a finding.")
    s.text(f"p is the two-sided bootstrap p-value of no difference (from the same resamples as the CI); "
           f"p (Holm) adjusts it for the {sum(c.p is not None for c in comparisons)} comparisons of this "
           "table (Holm's step-down, family-wise error 5%). A verdict is clear only when the CI excludes 0 "
           "and the Holm-adjusted p is below 0.05: with this many metrics, some raw CIs exclude 0 by chance.")
    s.text(f"Of the {with_dir} metrics for which the study reports a direction, this run clearly agrees with "
           f"it on {agree} and clearly disagrees on {disagree} (95% CI excluding 0 and Holm-adjusted "
           f"p < 0.05); the other {with_dir - agree - disagree} are inconclusive here (CI includes 0, the "
           "adjusted p is 0.05 or more, or too few models per group for a CI).")
    return s
