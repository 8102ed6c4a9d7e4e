"""Report figures: matplotlib (Agg) figures saved under report_files/figures/, and shared plot shapes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from nasaudit.audit.report.data import AuditData
from nasaudit.audit.report.document import FILES_DIR, Figure
from nasaudit.audit.report.metrics import MANUAL, NAS, Metric
from nasaudit.infra.io import atomic_write_bytes

GROUP_COLORS = {NAS: "tab:red", MANUAL: "tab:blue", "mitigation": "tab:green"}


class Figures:
    """Saves matplotlib figures (Agg) under report_files/figures/ and returns Figure blocks."""

    def __init__(self, out_dir: Path):
        import matplotlib

        matplotlib.use("Agg", force=True)
        self.out_dir = out_dir
        self.dir = out_dir / FILES_DIR / "figures"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.check_layout = False  # tests turn it on: every saved figure is checked for clashes
        self.problems: list[str] = []

    def new(self, w: float = 6.0, h: float = 3.6, nrows: int = 1, ncols: int = 1):
        """A new (figure, axes) pair; axes is an array when nrows * ncols > 1."""
        import matplotlib.pyplot as plt

        return plt.subplots(nrows, ncols, figsize=(w, h), dpi=110)

    def save(self, fig, stem: str, caption: str) -> Figure:
        import matplotlib
        import matplotlib.pyplot as plt

        literal_text(fig)
        if self.check_layout:
            with matplotlib.rc_context({"text.parse_math": False}):
                if fig.get_layout_engine() is None:
                    fig.tight_layout()
                self.problems += [f"{stem}: {p}" for p in layout_problems(fig)]
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

    from nasaudit.infra.errors import printable

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
    """One point per model (mean over seeds), models side by side by group with their names on
    the x-axis and each group's mean as a line, one panel per metric titled with its n. Points,
    not box plots: an audit has a few models per group, and a box of two points invents a spread."""
    panels = [(m, data.model_means(m)) for m in metrics]
    panels = [(m, v) for m, v in panels if v]
    if not panels:
        return None
    order = [g for g in (NAS, MANUAL)] + sorted({data.group.get(k, "?") for _, v in panels for k in v} - {NAS, MANUAL})
    labels = sorted({k for _, v in panels for k in v},
                    key=lambda k: (order.index(data.group.get(k, "?")), data.order.index(k) if k in data.order else 0))
    width = max(3.2, 0.28 * len(labels) + 1.6)
    fig, axes = figs.new(width * len(panels) + 0.4, 4.2, 1, len(panels))
    fig.set_layout_engine("constrained")
    axes = np.atleast_1d(axes)
    for ax, (metric, values) in zip(axes, panels, strict=False):
        xs = [i for i, k in enumerate(labels) if k in values]
        for g in order:
            members = [i for i, k in enumerate(labels) if k in values and data.group.get(k, "?") == g]
            if not members:
                continue
            ys = [values[labels[i]] for i in members]
            ax.scatter(members, ys, color=group_color(g), zorder=3, s=22, label=f"{g} (n={len(members)})")
            ax.hlines(float(np.mean(ys)), members[0] - 0.3, members[-1] + 0.3, color=group_color(g), lw=1, alpha=0.6)
        ax.set_xticks(xs, [labels[i] for i in xs], rotation=90, fontsize=6)
        ax.set_xlim(-0.6, len(labels) - 0.4)
        counts = ", ".join(f"{g} {sum(1 for k in values if data.group.get(k, '?') == g)}" for g in order
                           if any(data.group.get(k, "?") == g for k in values))
        ax.set_title(f"{metric.title}\n(models: {counts})", fontsize=7)
        ax.set_ylabel(ylabel, fontsize=7)
        ax.tick_params(axis="y", labelsize=6)
    return figs.save(fig, stem, caption)


def _drawn_texts(fig) -> list:
    """The texts a drawn figure shows: tick labels of the ticks actually drawn (matplotlib keeps
    spare tick objects outside the view), axis labels, titles, annotations, legends, figure texts."""
    texts = list(fig.texts)
    for legend in [*fig.legends, *(ax.get_legend() for ax in fig.axes)]:
        if legend is not None:
            texts += legend.get_texts()
    for ax in fig.axes:
        texts += [ax.title, ax._left_title, ax._right_title, *ax.texts]
        for axis in (ax.xaxis, ax.yaxis):
            texts.append(axis.label)
            for tick in axis._update_ticks():
                texts += [label for label in (tick.label1, tick.label2) if label.get_visible()]
    return [t for t in texts if t.get_visible() and t.get_text().strip()]


def layout_problems(fig) -> list[str]:
    """Texts of a drawn figure that leave the canvas or overlap another text, as readable
    lines; empty for a clean layout."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    canvas = fig.bbox
    texts = [(t.get_text(), t.get_window_extent(renderer)) for t in _drawn_texts(fig)]
    problems = []
    for text, box in texts:
        if box.x0 < canvas.x0 - 1 or box.y0 < canvas.y0 - 1 or box.x1 > canvas.x1 + 1 or box.y1 > canvas.y1 + 1:
            problems.append(f"{text!r} leaves the canvas")
    for i, (a, box_a) in enumerate(texts):
        for b, box_b in texts[i + 1:]:
            overlap_w = min(box_a.x1, box_b.x1) - max(box_a.x0, box_b.x0)
            overlap_h = min(box_a.y1, box_b.y1) - max(box_a.y0, box_b.y0)
            if overlap_w > 1 and overlap_h > 1:
                problems.append(f"{a!r} overlaps {b!r}")
    return problems


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
