"""Report figures: matplotlib (Agg) figures saved under report_files/figures/, and shared plot shapes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from nasaudit.audit.report.data import AuditData
from nasaudit.audit.report.document import FILES_DIR, Figure
from nasaudit.audit.report.metrics import MANUAL, NAS, Metric
from nasaudit.io import atomic_write_bytes

GROUP_COLORS = {NAS: "tab:red", MANUAL: "tab:blue", "mitigation": "tab:green"}


class Figures:
    """Saves matplotlib figures (Agg) under report_files/figures/ and returns Figure blocks."""

    def __init__(self, out_dir: Path):
        import matplotlib

        matplotlib.use("Agg", force=True)
        self.out_dir = out_dir
        self.dir = out_dir / FILES_DIR / "figures"
        self.dir.mkdir(parents=True, exist_ok=True)

    def new(self, w: float = 6.0, h: float = 3.6, nrows: int = 1, ncols: int = 1):
        """A new (figure, axes) pair; axes is an array when nrows * ncols > 1."""
        import matplotlib.pyplot as plt

        return plt.subplots(nrows, ncols, figsize=(w, h), dpi=110)

    def save(self, fig, stem: str, caption: str) -> Figure:
        import matplotlib
        import matplotlib.pyplot as plt

        literal_text(fig)
        buf = io.BytesIO()
        # Texts made while drawing (tick labels) take parse_math from rcParams: off, for now.
        with matplotlib.rc_context({"text.parse_math": False}):
            if fig.get_layout_engine() is None:
                fig.tight_layout()
            fig.savefig(buf, format="png")
        plt.close(fig)
        path = self.dir / f"{stem}.png"
        atomic_write_bytes(path, buf.getvalue())
        return Figure(f"{FILES_DIR}/figures/{stem}.png", caption)


def literal_text(fig) -> None:
    """Render every text of `fig` literally: labels and genotype names come from untrusted
    configs and files, and "$\\frac$" would be parsed as mathtext (and crash the figure when
    malformed), "\\x1b[31m" would be drawn as control characters."""
    from matplotlib.text import Text
    from matplotlib.ticker import FixedFormatter, FuncFormatter

    from nasaudit.errors import printable

    for ax in fig.axes:  # tick labels are made from the formatter's strings at draw time
        for axis in (ax.xaxis, ax.yaxis):
            for formatter in (axis.get_major_formatter(), axis.get_minor_formatter()):
                if isinstance(formatter, FixedFormatter):
                    formatter.seq = [printable(label) for label in formatter.seq]
                elif isinstance(formatter, FuncFormatter) and not getattr(formatter, "_literal", False):
                    # set_xticks(ticks, labels) keeps the labels in a FuncFormatter
                    inner = formatter.func
                    formatter.func = lambda x, pos=None, inner=inner: printable(inner(x, pos))
                    formatter._literal = True
    for text in fig.findobj(Text):
        text.set_parse_math(False)
        shown = text.get_text()
        if printable(shown) != shown:
            text.set_text(printable(shown))


def group_color(group: str) -> str:
    return GROUP_COLORS.get(group, "tab:gray")


def group_points(figs: Figures, data: AuditData, metrics: list[Metric], stem: str, caption: str,
                  ylabel: str) -> Figure | None:
    """Per-model points (mean over seeds) with group box plots, one panel per metric."""
    panels = [(m, data.model_means(m)) for m in metrics]
    panels = [(m, v) for m, v in panels if v]
    if not panels:
        return None
    fig, axes = figs.new(3.0 * len(panels) + 0.5, 3.6, 1, len(panels))
    axes = np.atleast_1d(axes)
    groups = [g for g in (NAS, MANUAL) if any(data.group.get(k) == g for _, v in panels for k in v)]
    groups += sorted({data.group.get(k, "?") for _, v in panels for k in v} - set(groups))
    for ax, (metric, values) in zip(axes, panels, strict=False):
        for gi, g in enumerate(groups):
            ys = [(k, v) for k, v in values.items() if data.group.get(k) == g]
            if not ys:
                continue
            vals = [v for _, v in ys]
            ax.boxplot(vals, positions=[gi], widths=0.5, showfliers=False)
            jitter = np.linspace(-0.15, 0.15, len(vals)) if len(vals) > 1 else [0.0]
            ax.scatter(gi + np.asarray(jitter), vals, color=group_color(g), zorder=3, s=18)
            for (k, v), j in zip(ys, jitter, strict=False):
                ax.annotate(k, (gi + j, v), fontsize=6, xytext=(3, 0), textcoords="offset points")
        ax.set_xticks(range(len(groups)), groups)
        ax.set_title(metric.title, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
    return figs.save(fig, stem, caption)




VERDICT_COLORS = {"agrees": "tab:green", "disagrees": "tab:red", "inconclusive": "tab:gray",
                  "no direction": "tab:blue", "no verdict possible": "tab:olive", "confounded": "tab:purple"}


def forest_plot(figs: Figures, rows: list, stem: str, caption: str, *, xlabel: str) -> Figure | None:
    """A forest plot: one row per Comparison (nasaudit.audit.report.comparison), the difference
    as a point with its 95% interval as a bar (an arrow where it is unbounded), the study's
    direction as a marker at the row's end, coloured by verdict. Differences are standardised
    by the pooled sd of the units so that metrics of different units share an axis; where no row
    can be standardised (one unit per side), one panel per unit in the metrics' own units.
    Returns None when `rows` is empty."""
    import matplotlib.patches as mpatches

    if not rows:
        return None
    standard = [c for c in rows if c.standardised is not None]
    if standard:
        panels: dict[str, list] = {}
        for c in standard:
            panels.setdefault(c.metric.family, []).append((c, c.standardised))
        omitted = len(rows) - len(standard)
        if omitted:
            caption += f" ({omitted} metric(s) without spread between units omitted)"
    else:
        panels = {}
        for c in rows:
            panels.setdefault(c.metric.unit or "value", []).append((c, (c.point, c.low, c.high)))
        xlabel = "difference in the panel's unit"
    heights = [len(v) + 0.8 for v in panels.values()]
    fig, axes = figs.new(8.0, 0.32 * sum(heights) + 1.4, len(panels), 1)
    axes = np.atleast_1d(axes)
    fig.set_layout_engine("constrained")
    for ax, (title, comps) in zip(axes, panels.items(), strict=True):
        ys = np.arange(len(comps))[::-1]
        finite = [v for _, (pt, lo, hi) in comps for v in (pt, lo, hi) if v is not None]
        lo_lim, hi_lim = min(finite + [0.0]), max(finite + [0.0])
        span = max(hi_lim - lo_lim, 1e-12)
        left, right = lo_lim - 0.1 * span, hi_lim + 0.1 * span
        for y, (c, (pt, lo, hi)) in zip(ys, comps, strict=True):
            color = VERDICT_COLORS[c.verdict_class]
            a, b = left if lo is None else lo, right if hi is None else hi
            ax.plot([a, b], [y, y], color=color, lw=3, alpha=0.6, solid_capstyle="butt")
            for end, open_end, marker in ((a, lo is None, "<"), (b, hi is None, ">")):
                if open_end:
                    ax.plot([end], [y], marker, color=color, ms=5, alpha=0.6)
            ax.plot([pt], [y], "o", color=color, ms=5, zorder=3)
        ax.axvline(0.0, color="black", lw=0.8)
        ax.set_xlim(left - 0.06 * span, right + 0.06 * span)
        for y, (c, _) in zip(ys, comps, strict=True):
            if c.direction in ("higher", "lower"):
                # The study's direction: a triangle at the side of the axis it points to.
                to_right = c.direction == "higher"
                ax.plot([right + 0.03 * span if to_right else left - 0.03 * span], [y],
                        ">" if to_right else "<", color="black", ms=6, zorder=4)
        ax.set_yticks(ys, [f"{c.metric.label} (n={c.n_a}/{c.n_b})" for c, _ in comps], fontsize=7)
        ax.set_ylim(-0.7, len(comps) - 0.3)
        ax.set_title(title, fontsize=8, loc="left")
        ax.tick_params(axis="x", labelsize=7)
    axes[-1].set_xlabel(xlabel, fontsize=8)
    handles = [mpatches.Patch(color=v, label=k) for k, v in VERDICT_COLORS.items()]
    handles.append(axes[0].plot([], [], ">", color="black", label="study's direction")[0])
    fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=7, frameon=False)
    return figs.save(fig, stem, caption)
