"""Evasion: targeted PGD and NES (Figures 2 and 5), ASR against eps (Figure 3), inputs broken (Figure 4)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from nasaudit.audit.report.builder import Builder
from nasaudit.audit.report.document import Section, Table
from nasaudit.audit.report.figures import group_color, group_points
from nasaudit.audit.report.metrics import Metric, first_num, length, sweep_mean

# The headline rows, in the forest plot's order.
PGD_ASR_ML = Metric("pgd_asr_ml", "PGD ASR, most-likely target", "attack", "pgd",
                    lambda r: first_num(r, ("asr", "most_likely")), "higher", True,
                    count=length("success", "most_likely"), family="evasion")
PGD_ASR_LL = Metric("pgd_asr_ll", "PGD ASR, least-likely target", "attack", "pgd",
                    lambda r: first_num(r, ("asr", "least_likely")), "higher", True,
                    count=length("success", "least_likely"), family="evasion")
NES_ASR_ML = Metric("nes_asr_ml", "NES ASR, most-likely target", "attack", "nes",
                    lambda r: first_num(r, ("asr", "most_likely")), "higher", True,
                    count=length("success", "most_likely"), family="evasion")
NES_ASR_LL = Metric("nes_asr_ll", "NES ASR, least-likely target", "attack", "nes",
                    lambda r: first_num(r, ("asr", "least_likely")), "higher", True,
                    count=length("success", "least_likely"), family="evasion")
PGD_SWEEP_ASR = Metric("pgd_sweep_asr", "untargeted PGD ASR, mean over the eps sweep", "attack", "pgd_sweep",
                       sweep_mean, "higher", True, family="evasion")
METRICS = (PGD_ASR_ML, PGD_ASR_LL, NES_ASR_ML, NES_ASR_LL, PGD_SWEEP_ASR)
_MOST_LIKELY = {"pgd": PGD_ASR_ML, "nes": NES_ASR_ML}


def evasion(report: Builder) -> Section:
    """Targeted PGD and NES ASR per model and group (most- and least-likely targets)."""
    s = Section("Evasion: PGD and NES (Figures 2 and 5)")
    metrics = [PGD_ASR_ML, PGD_ASR_LL, NES_ASR_ML, NES_ASR_LL]
    if not any(report.data.values(m) for m in metrics):
        return s.missing(report.why_missing("attack", "pgd") + " " + report.why_missing("attack", "nes"))
    report.per_model_table(s, "evasion_asr", "Targeted attack success rate per model", metrics)
    fig = group_points(report.figs, report.data, metrics, "evasion_asr",
                        "ASR per model (points) and per group (boxes): PGD and NES, most- and least-likely targets",
                        "ASR")
    if fig:
        s.blocks.append(fig)
    for name in ("pgd", "nes"):
        if not report.data.values(_MOST_LIKELY[name]):
            s.text(f"{name.upper()}: " + report.why_missing("attack", name))
    return s


def asr_vs_eps(report: Builder) -> Section:
    """Untargeted PGD ASR against eps (in 1/255 units) per model."""
    s = Section("ASR against eps (Figure 3)")
    rows = report.data.primary("attack", "pgd_sweep")
    if not rows:
        return s.missing(report.why_missing("attack", "pgd_sweep"))
    curves: dict[str, list[np.ndarray]] = defaultdict(list)
    eps_of: dict[str, list[float]] = {}
    for r in rows:
        eps, asr = r.result.get("eps") or [], r.result.get("asr") or []
        if eps and len(eps) == len(asr):
            curves[r.model].append(np.asarray(asr, dtype=float))
            eps_of[r.model] = eps
    fig, ax = report.figs.new(6, 4)
    table_rows = []
    for label in report.data.order:
        if label not in curves:
            continue
        mean = np.mean(curves[label], axis=0)
        eps255 = [e * 255 for e in eps_of[label]]
        ax.plot(eps255, mean, marker="o", ms=3, color=group_color(report.data.group.get(label, "")), label=label, alpha=0.8)
        table_rows += [[label, report.data.group.get(label), e, float(a)] for e, a in zip(eps255, mean, strict=True)]
    ax.set_xlabel("eps (x 1/255)")
    ax.set_ylabel("untargeted ASR")
    ax.legend(fontsize=6, ncol=2)
    s.blocks.append(report.figs.save(fig, "asr_vs_eps", "Untargeted PGD ASR against eps (red: NAS, blue: manual)"))
    report.table(s, Table("asr_vs_eps", ["model", "group", "eps x255", "ASR"], table_rows, "ASR per eps"))
    return s


def inputs_broken(report: Builder) -> Section:
    """A histogram of how many models each attacked test input fools under PGD."""
    s = Section("How many models each input breaks (Figure 4)")
    rows = report.data.primary("attack", "pgd")
    if not rows:
        return s.missing(report.why_missing("attack", "pgd"))
    # Per (seed, case): test index -> number of models it fooled / it was attacked on.
    broken: dict[tuple[int, str], dict[int, int]] = defaultdict(lambda: defaultdict(int))
    models_per: dict[tuple[int, str], set[str]] = defaultdict(set)
    for r in rows:
        indices = r.result.get("indices") or []
        for case, success in (r.result.get("success") or {}).items():
            models_per[(r.seed, case)].add(r.model)
            for idx, ok in zip(indices, success, strict=False):
                broken[(r.seed, case)][idx] += int(bool(ok))
    if not broken:
        return s.missing("the PGD records hold no per-input success vectors.")
    cases = sorted({case for _, case in broken})
    fig, axes = report.figs.new(4 * len(cases), 3.4, 1, len(cases))
    axes = np.atleast_1d(axes)
    table_rows = []
    for ax, case in zip(axes, cases, strict=True):
        counts = np.concatenate([list(v.values()) for (seed, c), v in broken.items() if c == case])
        n_models = max(len(m) for (seed, c), m in models_per.items() if c == case)
        hist = np.bincount(counts.astype(int), minlength=n_models + 1)
        ax.bar(range(len(hist)), hist, color="tab:purple")
        ax.set_xlabel("models fooled by the input")
        ax.set_ylabel("inputs")
        ax.set_title(f"PGD, {case.replace('_', '-')} target", fontsize=9)
        table_rows += [[case, k, int(v)] for k, v in enumerate(hist)]
    s.blocks.append(report.figs.save(fig, "inputs_broken", "Number of models each attacked input fools (PGD)"))
    report.table(s, Table("inputs_broken", ["case", "models fooled", "inputs"], table_rows,
                        "Inputs by number of models they fool"))
    s.text("An input counts for a model only when that model classified it correctly (PGD attacks only those).")
    return s
