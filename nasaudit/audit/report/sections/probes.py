"""Probes: gradient variance (Figure 12), loss contours and curvature."""

from __future__ import annotations

import numpy as np

from nasaudit.audit.report.builder import Builder
from nasaudit.audit.report.data import locate_picture
from nasaudit.audit.report.document import Figure, Section, Table
from nasaudit.audit.report.figures import group_color
from nasaudit.audit.report.metrics import Metric, at_path, num

FLATTER = "NAS flatter (Fig. 11, Remark 2)"
GRADVAR_INIT = Metric("gradvar_init", "log10 gradient variance at initialisation", "probe_init", "gradvar",
                      lambda r: num(r.get("log10_variance")), "lower", False, "NAS > 100x lower at init",
                      family="probes")
GRADVAR_TRAINED = Metric("gradvar_trained", "log10 gradient variance after training", "probe", "gradvar",
                         lambda r: num(r.get("log10_variance")), None, False, family="probes")
# The study's explanation (Fig. 11, Remark 2): NAS models are flatter in parameter and input space.
CURVATURE_PARAM = Metric("curvature_param", "top Hessian eigenvalue, parameters", "probe", "curvature",
                         lambda r: num(r.get("param_top_eigenvalue")), "lower", False, FLATTER, family="probes")
CURVATURE_INPUT = Metric("curvature_input", "top Hessian eigenvalue, input (mean)", "probe", "curvature",
                         lambda r: num(r.get("input_top_eigenvalue_mean")), "lower", False, FLATTER,
                         family="probes")
CONTOUR_PARAM = Metric("contour_param", "parameter-space contour: mean loss increase", "probe", "contour_param",
                       lambda r: num(r.get("mean_increase")), "lower", False, FLATTER, family="probes")
CONTOUR_INPUT = Metric("contour_input", "input-space contour: mean loss increase", "probe", "contour_input",
                       lambda r: num(r.get("mean_increase")), "lower", False, FLATTER, family="probes")
METRICS = (GRADVAR_INIT, GRADVAR_TRAINED, CURVATURE_PARAM, CURVATURE_INPUT, CONTOUR_PARAM, CONTOUR_INPUT)


def gradvar(report: Builder) -> Section:
    """log10 per-sample gradient variance (Eq. 14) at initialisation and after training."""
    s = Section("Gradient variance at initialisation and after training (Figure 12)")
    init, trained = GRADVAR_INIT, GRADVAR_TRAINED
    vi, vt = report.data.model_means(init), report.data.model_means(trained)
    if not vi and not vt:
        return s.missing(report.why_missing("probe", "gradvar"))
    report.per_model_table(s, "gradvar", "log10 gradient variance (Eq. 14)", [init, trained])
    labels = [k for k in report.data.order if k in vi or k in vt]
    fig, ax = report.figs.new(max(5.0, 0.5 * len(labels) + 2), 3.8)
    x = np.arange(len(labels))
    ax.bar(x - 0.2, [vi.get(k, np.nan) for k in labels], 0.4, label="init", color="tab:gray")
    ax.bar(x + 0.2, [vt.get(k, np.nan) for k in labels], 0.4, label="trained",
           color=[group_color(report.data.group.get(k, "")) for k in labels])
    ax.set_xticks(x, labels, rotation=90, fontsize=7)
    ax.set_ylabel("log10 Var(g)")
    ax.set_title(f"n = {len(labels)} models", fontsize=7)
    ax.legend(fontsize=7)
    s.blocks.append(report.figs.save(fig, "gradvar", "Gradient variance at initialisation (grey) and after training"))
    if not vi:
        s.text("At initialisation: " + report.why_missing("probe", "gradvar", "probe_init"))
    _gradvar_conditions(report, s)
    return s


def _gradvar_conditions(report: Builder, s: Section) -> None:
    """Which weights and which batch-norm running statistics each variance was measured with:
    eval mode reads the running statistics, and fresh ones (mean 0, var 1) make every batch norm
    the identity, so an uncalibrated number at initialisation is not comparable to a calibrated
    one."""
    cells: dict[str, dict[str, set[str]]] = {}
    for stage in ("probe_init", "probe"):
        for row in report.data.primary(stage, "gradvar"):
            slot = cells.setdefault(row.model, {})
            slot.setdefault(f"{stage} init", set()).add(str(row.result.get("init", "not recorded")))
            slot.setdefault(f"{stage} bn", set()).add(str(row.result.get("bn_stats", "not recorded")))
    if not cells:
        return
    keys = ("probe_init init", "probe_init bn", "probe init", "probe bn")
    rows = [[label, report.data.group.get(label, "?"),
             *("; ".join(sorted(cells[label].get(k, ()))) or "-" for k in keys)]
            for label in report.data.order if label in cells]
    report.table(s, Table(
        "gradvar_conditions",
        ["model", "group", "init: weights", "init: batch-norm statistics",
         "trained: weights", "trained: batch-norm statistics"],
        rows,
        "What each gradient variance was measured on (eval mode reads the batch-norm running "
        "statistics; fresh ones are the identity unless calibrated on training batches)",
    ))


def contours(report: Builder) -> Section:
    """Flatness of the parameter- and input-space loss contours, top Hessian eigenvalues, thumbnails."""
    s = Section("Loss contours and curvature")
    metrics = [CONTOUR_PARAM, CONTOUR_INPUT, CURVATURE_PARAM, CURVATURE_INPUT]
    have = [m for m in metrics if report.data.values(m)]
    if not have:
        return s.missing(report.why_missing("probe", "contour_param") + " "
                         + report.why_missing("probe", "curvature"))
    report.per_model_table(s, "flatness", "Flatness (mean loss increase over the grid) and top Hessian eigenvalues",
                         have)
    s.text("The study's explanation (Figure 11, Remark 2) is that NAS models are flatter in parameter and "
           "input space, so the headline expects NAS lower on all four. Later work reads input-space "
           "smoothness the other way: AdvRush (Mok et al., ICCV 2021) searches for a smoother input loss "
           "landscape to make cells more robust, so a flatter NAS model here is not by itself evidence that "
           "flatness makes it more vulnerable.")
    thumbs = _thumbnails(report)
    if thumbs:
        s.blocks.append(thumbs)
    else:
        s.text("Thumbnails: no contour plot files were recorded (the probes ran without an output directory).")
    return s


def _thumbnails(report: Builder) -> Figure | None:
    """A grid of the contour PNGs the probes wrote, one row per model."""
    import matplotlib.image as mpimg

    rows = []
    for label in report.data.order:
        pics = []
        for name in ("contour_param", "contour_input"):
            recs = [r for r in report.data.primary("probe", name) if r.model == label]
            path = at_path(recs[0].result, "files", "plot") if recs else None
            pics.append(locate_picture(path, report.out_dir))
        if any(pics):
            rows.append((label, pics))
    if not rows:
        return None
    fig, axes = report.figs.new(6, 2.6 * len(rows), len(rows), 2)
    axes = np.asarray(axes).reshape(len(rows), 2)
    for (label, pics), ax_row in zip(rows, axes, strict=True):
        for ax, pic, title in zip(ax_row, pics, ("parameter space", "input space"), strict=True):
            ax.axis("off")
            if pic is not None:
                try:
                    ax.imshow(mpimg.imread(pic))
                except (OSError, ValueError, SyntaxError):  # a damaged PNG behind a valid header
                    ax.text(0.5, 0.5, "unreadable picture", ha="center", fontsize=7)
            ax.set_title(f"{label}: {title}", fontsize=7)
    return report.figs.save(fig, "contour_thumbnails", "Loss-contour thumbnails (parameter and input space)")
