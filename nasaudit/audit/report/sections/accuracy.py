"""Clean accuracy (Table 1) and cell metrics (Table 3)."""

from __future__ import annotations

import numpy as np

from nasaudit.audit.report.builder import Builder
from nasaudit.audit.report.data import mean_of
from nasaudit.audit.report.document import Section, Table
from nasaudit.audit.report.metrics import CELL_METRICS, CLEAN_ACC, NAS

METRICS = (CLEAN_ACC,)


def clean_accuracy(report: Builder) -> Section:
    """Clean test accuracy per model (mean and sd over seeds), as the study's Table 1."""
    s = Section("Clean accuracy (Table 1)")
    m = CLEAN_ACC
    values = report.data.values(m)
    if not values:
        return s.missing("no model has finished training and evaluation yet.")
    rows = []
    for label in report.data.order:
        if label not in values:
            continue
        accs = list(values[label].values())
        info = report.data.info.get(label, {})
        rows.append([label, report.data.group.get(label), info.get("parameters"),
                     float(np.mean(accs)), float(np.std(accs)) if len(accs) > 1 else None, len(accs),
                     report.pooled_rate(m, label)])
    report.table(s, Table("clean_accuracy", ["model", "group", "parameters", "test accuracy", "sd over seeds", "seeds",
                                             "correct/n over seeds, 95% CI"],
                        rows, "Clean test accuracy and parameter count (capacity is the other confound)"))
    return s


def cell_metrics(report: Builder) -> Section:
    """Depth, width and skip connects of both cells per genotype, as the study's Table 3."""
    s = Section("Cell metrics (Table 3)")
    rows = []
    for label in report.data.order:
        cells = (report.data.info.get(label) or {}).get("cells")
        if not cells:
            continue
        n, r = cells.get("normal", {}), cells.get("reduce", {})
        rows.append([label, report.data.group.get(label)] + [n.get(k) for k in CELL_METRICS]
                    + [r.get(k) for k in CELL_METRICS]
                    + [(report.data.info[label].get("genotype_hash") or "")[:12]])
    if not rows:
        return s.missing("no genotype model in this audit (manual baselines have no cells).")
    nas = [r for r in rows if r[1] == NAS]
    if nas:
        rows.append(["mean (nas)", NAS] + [mean_of([r[i] for r in nas]) for i in range(2, 8)] + [""])
    report.table(s, Table("cell_metrics", ["model", "group", "normal depth", "normal width (c)", "normal skips",
                                         "reduce depth", "reduce width (c)", "reduce skips", "genotype"],
                        rows, "Cell depth, width and skip connects per genotype"))
    s.text("The study finds NAS cells shallow (mean normal-cell depth 2.8) and wide (3.3c), mostly with more "
           "than one skip connect.")
    return s
