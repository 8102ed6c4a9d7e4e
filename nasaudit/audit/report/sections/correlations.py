"""Correlations of vulnerability with cell metrics and probes."""

from __future__ import annotations

import numpy as np

from nasaudit.audit.report.builder import Builder
from nasaudit.audit.report.document import Section, Table
from nasaudit.audit.report.metrics import CELL_METRICS, at_path, num
from nasaudit.audit.report.stats import ALPHA, benjamini_hochberg, spearman, spearman_smallest_p


def correlations(report: Builder) -> Section:
    """Spearman correlations across models of vulnerability with cell metrics and probes."""
    s = Section("Correlations: vulnerability against cell metrics and probes")
    explain: dict[str, dict[str, float]] = {}
    for key in CELL_METRICS:
        vals = {}
        for label, info in report.data.info.items():
            v = num(at_path(info, "cells", "normal", key))
            if v is not None:
                vals[label] = v
        if vals:
            explain[f"normal-cell {key}"] = vals
    for m in report.metrics:
        if not m.vulnerability and m.stage.startswith("probe"):
            vals = report.data.model_means(m)
            if vals:
                explain[m.title] = vals
    vuln = {m.title: report.data.model_means(m) for m in report.metrics if m.vulnerability}
    vuln = {k: v for k, v in vuln.items() if v}
    if not explain or not vuln:
        return s.missing("needs at least one vulnerability metric and one cell metric or probe per model.")
    rows, matrix = [], np.full((len(vuln), len(explain)), np.nan)
    for i, (vk, vv) in enumerate(vuln.items()):
        for j, (ek, ev) in enumerate(explain.items()):
            common = [k for k in vv if k in ev]
            rho, p = spearman([vv[k] for k in common], [ev[k] for k in common])
            rows.append([vk, ek, len(common), rho, p])
            if rho is not None:
                matrix[i, j] = rho
    for row, q in zip(rows, benjamini_hochberg([r[4] for r in rows]), strict=True):
        row.append(q)
    report.table(s, Table("correlations", ["vulnerability metric", "property", "models", "Spearman rho", "p",
                                           "q (BH)"],
                        rows, "Spearman correlation across models (one value per model: the mean over its "
                              "seeds); p: exact permutation p-value; q: Benjamini-Hochberg adjusted p"))
    s.text(significance_note(rows, n_col=2, p_col=4, q_col=5, unit="models"))
    if np.isfinite(matrix).any():
        fig, ax = report.figs.new(1.1 * len(explain) + 3.5, 0.45 * len(vuln) + 4)
        fig.set_layout_engine("constrained")
        im = ax.imshow(matrix, vmin=-1, vmax=1, cmap="coolwarm", aspect="auto")
        ax.set_xticks(range(len(explain)), list(explain), rotation=90, fontsize=7)
        ax.set_yticks(range(len(vuln)), list(vuln), fontsize=7)
        for k, row in enumerate(rows):  # rows run over (vulnerability, property) in matrix order
            i, j = divmod(k, len(explain))
            if row[3] is not None:
                mark = "*" if row[5] is not None and row[5] < ALPHA else ""
                ax.text(j, i, f"{row[3]:.2f}{mark}\nn={row[2]}", ha="center", va="center", fontsize=5)
        ax.set_title(f"Spearman rho across models (* q < {ALPHA}, Benjamini-Hochberg)", fontsize=7)
        fig.colorbar(im, ax=ax, label="Spearman rho")
        s.blocks.append(report.figs.save(fig, "correlations", "Spearman rho across models with each cell's number "
                                         "of models n and * where q < 0.05 (blank: undefined)"))
    else:
        s.text("Every correlation is undefined: fewer than 3 models share both values, or one is constant.")
    s.text("Cell metrics exist for genotype models only, so those correlations run across genotypes; probe "
           "correlations run across all models.")
    return s


def significance_note(rows: list[list], *, n_col: int, p_col: int, q_col: int, unit: str) -> str:
    """What a table of correlations over `unit`s can say: how many are tested, how many hold
    under Benjamini-Hochberg, and, when the counts are too small, that none can."""
    tested = [r for r in rows if r[p_col] is not None]
    if not tested:
        return (f"No correlation is defined: it needs at least 3 {unit} with different values on both sides.")
    most = max(r[n_col] for r in tested)
    best_q = len(tested) * spearman_smallest_p(most)
    found = sum(r[q_col] is not None and r[q_col] < ALPHA for r in rows)
    text = (f"{len(tested)} correlations are tested over at most {most} {unit} (the unit of replication); q "
            f"controls the false discovery rate over all of them (Benjamini-Hochberg). {found} have q < {ALPHA}.")
    if best_q >= ALPHA:
        text += (f" None can: with {most} {unit} the smallest exact p-value of a rank correlation is "
                 f"{spearman_smallest_p(most):.3g}, and {len(tested)} tests need it below "
                 f"{ALPHA / len(tested):.2g}.")
    return text
