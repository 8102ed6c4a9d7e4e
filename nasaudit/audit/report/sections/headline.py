"""The headline: NAS minus manual per metric, with bootstrap CIs and verdicts."""

from __future__ import annotations

import numpy as np

from nasaudit.audit.report.builder import Builder
from nasaudit.audit.report.data import mean_of
from nasaudit.audit.report.document import Section, Table
from nasaudit.audit.report.metrics import MANUAL, METRICS, NAS
from nasaudit.audit.report.stats import BOOTSTRAP_SAMPLES, bootstrap_diff, verdict


def headline(report: Builder) -> Section:
    """NAS minus manual for every metric: group means, bootstrap 95% CI and the verdict against the study."""
    s = Section("Headline: NAS minus manual")
    if not report.data.labels(NAS) or not report.data.labels(MANUAL):
        return s.missing("the comparison needs at least one NAS and one manual model with results.")
    rows = []
    agree = disagree = 0
    for m in METRICS:
        values = report.data.values(m)
        a = {k: list(v.values()) for k, v in values.items() if report.data.group.get(k) == NAS}
        b = {k: list(v.values()) for k, v in values.items() if report.data.group.get(k) == MANUAL}
        if not a or not b:
            continue
        point, low, high = bootstrap_diff(a, b)
        if len(a) < 2 or len(b) < 2:
            # Resampling one model only varies its seeds: not a NAS-vs-manual interval.
            low = high = None
        text = verdict(m.direction, point, low, high)
        agree += text == "agrees"
        disagree += text == "disagrees"
        rows.append([m.title, mean_of([np.mean(v) for v in a.values()]), mean_of([np.mean(v) for v in b.values()]),
                     point, low, high, m.direction or "-", text, f"{len(a)}/{len(b)}"])
    if not rows:
        return s.missing("no metric has values for both groups yet.")
    report.table(s, Table("headline", ["metric", "NAS mean", "manual mean", "NAS - manual", "CI 2.5%", "CI 97.5%",
                                     "study: NAS is", "this run", "models NAS/manual"], rows,
                        f"Group differences with bootstrap 95% CI over models and seeds ({BOOTSTRAP_SAMPLES} resamples)"))
    with_dir = sum(1 for r in rows if r[6] != "-")
    s.text("The interval resamples models within each group, then seeds within each model; with only a "
           "few models per group it is rough (it cannot be wider than the models' spread), so read a "
           "clear verdict from a small audit as a hint, not a finding.")
    s.text(f"Of the {with_dir} metrics for which the study reports a direction, this run clearly agrees with "
           f"it on {agree} and clearly disagrees on {disagree} (95% CI excluding 0); the other "
           f"{with_dir - agree - disagree} are inconclusive here (CI includes 0, or too few models per "
           "group for a CI).")
    return s
