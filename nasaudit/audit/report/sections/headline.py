"""The headline: NAS minus manual per metric, with permutation tests, intervals and verdicts, led
by what the audit can and cannot conclude at its size."""

from __future__ import annotations

from nasaudit.audit.report.builder import Builder
from nasaudit.audit.report.comparison import Comparison, nas_vs_manual
from nasaudit.audit.report.document import Section, Table
from nasaudit.audit.report.figures import forest_plot
from nasaudit.audit.report.metrics import CLEAN_ACC, MANUAL, NAS
from nasaudit.audit.report.stats import ALPHA, EXACT_LIMIT, models_needed, smallest_p

# The study's models reach 96-97% on CIFAR-10; a group far below that answers a different question.
WEAK_ACCURACY = 0.9

METHOD = (
    "Each model's value is the mean over its seeds; the model is the unit of replication. p is the "
    "two-sided p-value of an exact permutation test of the difference in group means over the model "
    "labels (every relabelling enumerated; seeded Monte Carlo beyond {limit} relabellings). Under the "
    "null that the labels are exchangeable its false-positive rate is at most 5% at every group size. "
    "The interval is the set of shifts the same test does not reject at 5% (open-ended where the group "
    "sizes cannot reject any shift). p (Holm) adjusts p over the table's comparisons; a verdict is clear "
    "only when it is below 0.05, so the chance of any false clear verdict in this table is at most 5% "
    "(checked by simulation in tests/test_report_stats.py)."
)


def _group_summary(report: Builder, group: str) -> str:
    acc = report.data.model_means(CLEAN_ACC)
    parts = []
    for label in report.data.labels(group):
        params = (report.data.info.get(label) or {}).get("parameters")
        a = f"accuracy {acc[label]:.3f}" if label in acc else "accuracy not measured"
        p = f", {int(params):,} parameters" if isinstance(params, int | float) else ""
        parts.append(f"{label} ({a}{p})")
    return ", ".join(parts)


def summary_lines(report: Builder, comparisons: list[Comparison]) -> list[str]:
    """What was compared, what this size of audit can conclude, and the verdicts that hold."""
    nas, manual = report.data.labels(NAS), report.data.labels(MANUAL)
    lines = [f"Compared {len(nas)} NAS model(s): {_group_summary(report, NAS)}; against {len(manual)} manual "
             f"model(s): {_group_summary(report, MANUAL)}."]
    acc = report.data.model_means(CLEAN_ACC)
    weak = [k for k in nas + manual if k in acc and acc[k] < WEAK_ACCURACY]
    if weak:
        lines.append(f"{len(weak)} of the models ({', '.join(weak)}) are far weaker than the study's (clean accuracy "
                     f"below {WEAK_ACCURACY:.2f}, where the study's models reach 0.96-0.97 on CIFAR-10): these "
                     "results are about models that have not learned their task well, not the study's question.")
    gap = next((c.accuracy_gap for c in comparisons if c.accuracy_gap is not None), None)
    if gap is not None:
        if gap.confounds:
            lines.append(f"The groups differ in clean accuracy by {gap} (NAS - manual), more than the tolerance of "
                         f"{gap.tolerance:.2f} ([report] accuracy_tolerance): every vulnerability verdict reads "
                         "\"confounded by clean accuracy\" (set [report] accept_accuracy_gap = true to compare "
                         "anyway).")
        else:
            accepted = " (accepted by the config)" if abs(gap.gap) > gap.tolerance else ""
            lines.append(f"Clean accuracy gap NAS - manual: {gap}, tolerance {gap.tolerance:.2f}{accepted}.")
    family = sum(c.p is not None for c in comparisons)
    if comparisons and not any(c.possible for c in comparisons):
        n_a, n_b = len(nas), len(manual)
        lines.append(
            f"No verdict is possible with {n_a} NAS against {n_b} manual models: the smallest p-value a "
            f"permutation test over so few models can give is {smallest_p(n_a, n_b):.3g}, and a clear verdict "
            f"over these {family} metrics needs {family} x p < {ALPHA}. That takes at least "
            f"{models_needed(family)} models per group. The point estimates below show the direction of this "
            "run only.")
    else:
        clear = [c for c in comparisons if c.verdict in ("agrees", "disagrees")]
        if clear:
            lines.append("Clear verdicts (family-wise error 5%): " + "; ".join(
                f"{c.metric.title}: {c.verdict} with the study (NAS - manual {c.point:+.3g})" for c in clear) + ".")
        else:
            lines.append(f"No metric shows a clear difference at a family-wise error of 5% over {family} metrics.")
    return lines


def _why_no_comparison(report: Builder) -> str:
    if not report.data.labels(NAS) or not report.data.labels(MANUAL):
        return "the comparison needs at least one NAS and one manual model with results."
    return "no metric has values for both groups yet."


def summary(report: Builder) -> Section:
    """The report's opening, in words: what was compared, what this audit can conclude at its
    size, and the verdicts that hold."""
    s = Section("Summary")
    comparisons = nas_vs_manual(report.data, report.metrics)
    if not comparisons:
        return s.missing(_why_no_comparison(report))
    for line in summary_lines(report, comparisons):
        s.text(line)
    nas, manual = report.data.labels(NAS), report.data.labels(MANUAL)
    if len(nas) == 1 and len(manual) == 1:
        _one_against_one(report, s, nas[0], manual[0])
    return s


def _one_against_one(report: Builder, s: Section, a: str, b: str) -> None:
    """What one model against one can say: each metric of the two models side by side, rates
    with their exact intervals over inputs (pooled over seeds)."""
    rows = []
    for m in report.metrics:
        values = report.data.model_means(m)
        if a in values and b in values:
            rows.append([m.title, values[a], report.pooled_rate(m, a), values[b], report.pooled_rate(m, b)])
    report.table(s, Table("one_against_one", ["metric", a, f"{a}: successes/n, 95% CI", b,
                                               f"{b}: successes/n, 95% CI"], rows,
                          f"{a} against {b}, model by model"))
    s.text(f"These intervals are over inputs: they say how these two trained models differ, not whether NAS "
           f"cells differ from manual ones. A group verdict over these metrics needs at least "
           f"{models_needed(max(1, len(rows)))} models per group.")


def headline(report: Builder) -> Section:
    """NAS minus manual for every metric: group means, permutation p, interval and the verdict."""
    s = Section("Headline: NAS minus manual")
    comparisons = nas_vs_manual(report.data, report.metrics)
    if not comparisons:
        return s.missing(_why_no_comparison(report))
    rows = [[c.metric.title, c.a_mean, c.b_mean, c.point, c.low, c.high, c.direction or "-", c.verdict,
             f"{c.n_a}/{c.n_b}", None if c.accuracy_gap is None else c.accuracy_gap.gap, c.p, c.p_holm]
            for c in comparisons]
    forest = forest_plot(report.figs, comparisons, "headline_forest",
                         "NAS minus manual per metric, standardised by the pooled sd of the model means: point "
                         "estimate, 95% permutation interval (bar; open-ended arrows where unbounded), the "
                         "study's direction (triangle) and this run's verdict (colour)",
                         xlabel="NAS - manual (pooled sd of model means)")
    if forest is not None:
        s.blocks.append(forest)
    report.table(s, Table("headline", ["metric", "NAS mean", "manual mean", "NAS - manual", "CI 2.5%", "CI 97.5%",
                                     "study: NAS is", "this run", "models NAS/manual", "accuracy gap", "p",
                                     "p (Holm)"], rows,
                        "Group differences over model means: exact permutation test and its 95% interval "
                        "(empty: unbounded)"))
    s.text(METHOD.format(limit=f"{EXACT_LIMIT:,}"))
    with_dir = [c for c in comparisons if c.direction is not None]
    clear = sum(c.verdict in ("agrees", "disagrees") for c in with_dir)
    s.text(f"Of the {len(with_dir)} metrics with a direction in the study, {clear} have a clear verdict here; "
           f"the mean NAS - manual point estimate is in the study's direction on "
           f"{sum(1 for c in with_dir if c.point * (1 if c.direction == 'higher' else -1) > 0)} "
           "(a count that means nothing without the tests above).")
    return s
