"""Functionality stealing: Knockoff ACE against budget and across architectures (Figure 9, Table 2)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from nasaudit.audit.report.builder import Builder
from nasaudit.audit.report.data import label_of, mean_of, replica_of
from nasaudit.audit.report.document import Section, Table
from nasaudit.audit.report.figures import group_color
from nasaudit.audit.report.metrics import Metric, last_num, num

KNOCKOFF_ACE = Metric("knockoff_ace", "Knockoff ACE at the largest budget (own architecture)", "attack",
                      "knockoff", lambda r: last_num(r, "ace"), "lower", True, family="stealing")
KNOCKOFF_KL = Metric("knockoff_kl", "Knockoff KL (ACE - victim entropy) at the largest budget", "attack",
                     "knockoff", lambda r: last_num(r, "kl"), "lower", True, family="stealing")
METRICS = (KNOCKOFF_ACE, KNOCKOFF_KL)


def knockoff(report: Builder) -> Section:
    """Knockoff ACE (nats) against the query budget, and the cross-architecture table."""
    s = Section("Functionality stealing: Knockoff ACE against budget (Figure 9, Table 2)")
    rows = report.data.results("attack", "knockoff")
    if not rows:
        return s.missing(report.why_missing("attack", "knockoff"))
    primary = report.data.primary("attack", "knockoff")
    fig, ax = report.figs.new(6, 4)
    table_rows = []
    plotted = False
    for label in report.data.order:
        mine = [r for r in primary if r.model == label]
        budgets = [r.result.get("budgets") or r.result.get("budget") for r in mine]
        aces = [r.result.get("ace") for r in mine]
        if not mine or not isinstance(budgets[0], list) or not isinstance(aces[0], list):
            continue
        mean = np.mean([np.asarray(a, dtype=float) for a in aces], axis=0)
        ax.plot(budgets[0], mean, marker="o", ms=3, color=group_color(report.data.group.get(label, "")), label=label)
        plotted = True
        table_rows += [[label, report.data.group.get(label), b, float(a)] for b, a in zip(budgets[0], mean, strict=True)]
    if plotted:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("query budget")
        ax.set_ylabel("ACE (nats)")
        ax.legend(fontsize=6, ncol=2)
        s.blocks.append(report.figs.save(fig, "knockoff_ace", "Knockoff ACE against the query budget"))
        report.table(s, Table("knockoff_ace", ["model", "group", "budget", "ACE"], table_rows, "ACE per budget"))
    else:
        import matplotlib.pyplot as plt

        plt.close(fig)
        report.per_model_table(s, "knockoff_ace", "Knockoff ACE per model", [KNOCKOFF_ACE])
    cross = defaultdict(list)
    for r in rows:
        rep = replica_of(r)
        ace = r.result.get("ace")
        ace = ace[-1] if isinstance(ace, list) and ace else ace
        if rep is not None and num(ace) is not None:
            cross[(r.model, label_of(report.data, rep))].append(float(ace))
    replicas = sorted({k[1] for k in cross}, key=lambda x: report.data.order.index(x) if x in report.data.order else 99)
    if len(replicas) > 1:
        trows = [[v] + [mean_of(cross.get((v, rp), [])) for rp in replicas]
                 for v in report.data.order if any((v, rp) in cross for rp in replicas)]
        report.table(s, Table("knockoff_cross", ["victim \\ replica"] + replicas, trows,
                            "Cross-architecture ACE (Table 2): rows victims, columns replica architectures"))
    else:
        s.text("Cross-architecture table: only the victims' own architectures were used as replicas "
               "(set `each_model = \"replica\"` in `[attacks.knockoff]` for the cross product).")
    return s
