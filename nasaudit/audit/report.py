"""The audit report: markdown + HTML with PNG figures and CSV tables, built from the database only.

`write_report(out_dir)` reads ``out_dir/results.sqlite`` (nothing else: no checkpoint, no
config file) and writes ``report.md``, ``report.html`` and ``report_files/`` (figures/*.png,
tables/*.csv). Every section the study has appears; a section without data says why in one
line instead of being empty.

Statistics:
  * per model, a metric is the mean over its seeds;
  * the headline difference is mean(NAS group) - mean(manual group), with a hierarchical
    bootstrap 95% CI: resample models within each group, then seeds within each model;
  * correlations are Spearman's rho across models (robust to the metrics' different scales).
"""

from __future__ import annotations

import csv
import html
import io
import math
import shutil
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nasaudit.audit.config import AUDIT_KEYS
from nasaudit.audit.store import Store, UnitRow
from nasaudit.io import atomic_write_bytes, atomic_write_text

NAS, MANUAL = "nas", "manual"
BOOTSTRAP_SAMPLES = 2000
FILES_DIR = "report_files"


# --------------------------------------------------------------------------------------------
# Metrics: how to read one number out of a stored record
# --------------------------------------------------------------------------------------------
def _num(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _path(record: dict, *keys: str) -> Any:
    cur: Any = record
    for key in keys:
        if not isinstance(cur, dict) or key not in cur:
            return None
        cur = cur[key]
    return cur


def _first(record: dict, *paths: tuple[str, ...]) -> float | None:
    """The first numeric value found along any of the key paths."""
    for p in paths:
        value = _num(_path(record, *p))
        if value is not None:
            return value
    return None


def _last_of(record: dict, key: str) -> float | None:
    values = record.get(key)
    return _num(values[-1]) if isinstance(values, list) and values else None


def _sweep_mean(record: dict) -> float | None:
    values = [_num(v) for v in record.get("asr") or []]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _log10(value: float | None) -> float | None:
    return math.log10(value) if value is not None and value > 0 else None


@dataclass(frozen=True)
class Metric:
    """A number per (model, seed) read from one stage/unit name's record.

    direction: what the study reported for NAS relative to manual models ("higher"/"lower"),
    None where it reported no direction. vulnerability: a security metric (a row of the
    correlation table) rather than an explanatory property (a column).
    """

    key: str
    title: str
    stage: str  # "clean" | "probe" | "probe_init" | "attack"
    name: str  # unit name ("pgd", "gradvar", ...)
    read: Callable[[dict], float | None]
    direction: str | None = None
    vulnerability: bool = False
    note: str = ""


METRICS: tuple[Metric, ...] = (
    Metric("clean_acc", "clean test accuracy", "clean", "clean_accuracy",
           lambda r: _num(r.get("test_acc")), None, False, "comparable (95-97% on CIFAR-10)"),
    Metric("pgd_asr_ml", "PGD ASR, most-likely target", "attack", "pgd",
           lambda r: _first(r, ("asr", "most_likely")), "higher", True),
    Metric("pgd_asr_ll", "PGD ASR, least-likely target", "attack", "pgd",
           lambda r: _first(r, ("asr", "least_likely")), "higher", True),
    Metric("nes_asr_ml", "NES ASR, most-likely target", "attack", "nes",
           lambda r: _first(r, ("asr", "most_likely")), "higher", True),
    Metric("nes_asr_ll", "NES ASR, least-likely target", "attack", "nes",
           lambda r: _first(r, ("asr", "least_likely")), "higher", True),
    Metric("pgd_sweep_asr", "untargeted PGD ASR, mean over the eps sweep", "attack", "pgd_sweep",
           _sweep_mean, "higher", True),
    Metric("poison_cad", "poisoning CAD at the largest p", "attack", "poison",
           lambda r: _last_of(r, "cad"), "higher", True),
    Metric("backdoor_asr", "backdoor ASR (first configured method)", "attack", "backdoor",
           lambda r: _num(r.get("asr")), "higher", True),
    Metric("backdoor_cad", "backdoor CAD (first configured method)", "attack", "backdoor",
           lambda r: _num(r.get("cad")), "lower", True),
    Metric("knockoff_ace", "Knockoff ACE at the largest budget (own architecture)", "attack", "knockoff",
           lambda r: _last_of(r, "ace"), "lower", True),
    Metric("knockoff_kl", "Knockoff KL (ACE - victim entropy) at the largest budget", "attack", "knockoff",
           lambda r: _last_of(r, "kl"), "lower", True),
    Metric("membership_auc", "membership inference AUC", "attack", "membership",
           lambda r: _num(r.get("auc")), "higher", True),
    Metric("gradvar_init", "log10 gradient variance at initialisation", "probe_init", "gradvar",
           lambda r: _num(r.get("log10_variance")), "lower", False, "NAS > 100x lower at init"),
    Metric("gradvar_trained", "log10 gradient variance after training", "probe", "gradvar",
           lambda r: _num(r.get("log10_variance")), None, False),
    Metric("curvature_param", "top Hessian eigenvalue, parameters", "probe", "curvature",
           lambda r: _num(r.get("param_top_eigenvalue")), None, False),
    Metric("curvature_input", "top Hessian eigenvalue, input (mean)", "probe", "curvature",
           lambda r: _num(r.get("input_top_eigenvalue_mean")), None, False),
    Metric("contour_param", "parameter-space contour: mean loss increase", "probe", "contour_param",
           lambda r: _num(r.get("mean_increase")), None, False),
    Metric("contour_input", "input-space contour: mean loss increase", "probe", "contour_input",
           lambda r: _num(r.get("mean_increase")), None, False),
)
METRIC_BY_KEY = {m.key: m for m in METRICS}
CELL_METRICS = ("depth", "width", "skip_connects")


# --------------------------------------------------------------------------------------------
# The data the report is made of, read from the store
# --------------------------------------------------------------------------------------------
@dataclass
class AuditData:
    """Everything the report shows, as read from results.sqlite."""

    rows: list[UnitRow]
    failed: list[UnitRow]
    config: dict[str, Any]
    runs: list[dict[str, Any]]
    info: dict[str, dict] = field(default_factory=dict)  # label -> model_info record
    group: dict[str, str] = field(default_factory=dict)  # label -> group
    order: list[str] = field(default_factory=list)  # labels in the order they were audited

    @classmethod
    def load(cls, out_dir: str | Path) -> AuditData:
        with Store(out_dir, must_exist=True) as store:
            rows = store.units(status="done")
            failed = store.units(status="failed")
            config = store.get_meta("config", {}) or {}
            runs = store.get_meta("runs", []) or []
        data = cls(rows, failed, config, runs)
        for row in rows:
            if row.stage == "search":
                continue
            if row.model not in data.group:
                data.group[row.model] = row.model_group
                data.order.append(row.model)
            if row.stage == "analyze" and row.result:
                data.info[row.model] = row.result
                data.group[row.model] = row.result.get("group", row.model_group)
        # Present models in config order when the config is known (stable tables and plots).
        configured = [m.get("name") if isinstance(m, dict) else m for m in _config_models(config)]
        data.order.sort(key=lambda label: configured.index(label) if label in configured else len(configured))
        return data

    def configured(self, kind: str, name: str) -> list[dict[str, Any]]:
        """The parameter sets configured for an attack/probe (empty when not configured)."""
        section = (self.config.get("raw") or {}).get("attacks" if kind == "attack" else "probes") or {}
        entry = section.get(name)
        if entry is None:
            return []
        entries = entry if isinstance(entry, list) else [entry]
        return [e for e in entries if isinstance(e, dict) and e.get("enabled", True)]

    def results(self, stage: str, name: str) -> list[UnitRow]:
        return [r for r in self.rows if r.stage == stage and r.name == name and r.result is not None]

    def primary(self, stage: str, name: str) -> list[UnitRow]:
        """The rows of the first configured parameter set (what the headline compares).

        Several parameter sets per attack are allowed; the first one in the config is the
        primary. For Knockoff, the replica with the victim's own architecture is preferred.
        """
        rows = self.results(stage, name)
        strip: Callable[[dict], dict] = lambda p: p  # noqa: E731
        if name == "knockoff":
            own = [r for r in rows if _replica(r) in (None, r.model, _spec(self, r.model))]
            rows = own or rows
            strip = lambda p: {k: v for k, v in p.items() if k not in REPLICA_KEYS}  # noqa: E731
        if not rows:
            return []
        by_params: dict[str, list[UnitRow]] = defaultdict(list)
        for r in rows:
            by_params[_canon(strip(r.params))].append(r)
        kind = "attack" if stage == "attack" else "probe"
        for entry in self.configured(kind, name):
            key = _canon(strip({k: v for k, v in entry.items() if k not in AUDIT_KEYS}))
            if key in by_params:
                return by_params[key]
        # The config changed since: fall back to the parameter set that covers most models.
        return max(by_params.values(), key=lambda rs: len({x.model for x in rs}))

    def failures_for(self, stage: str, name: str) -> list[UnitRow]:
        return [r for r in self.failed if r.stage == stage and r.name == name]

    def labels(self, group: str | None = None) -> list[str]:
        return [m for m in self.order if group is None or self.group.get(m) == group]

    def values(self, metric: Metric) -> dict[str, dict[int, float]]:
        """metric -> {model label: {seed: value}} from the primary parameter set."""
        out: dict[str, dict[int, float]] = defaultdict(dict)
        for row in self.primary(metric.stage, metric.name):
            value = metric.read(row.result)
            if value is not None:
                out[row.model][row.seed] = value
        return dict(out)

    def model_means(self, metric: Metric) -> dict[str, float]:
        return {m: float(np.mean(list(v.values()))) for m, v in self.values(metric).items() if v}


def _config_models(config: dict) -> list:
    models = (config.get("raw") or {}).get("models") or []
    return models if isinstance(models, list) else []


def _canon(params: dict) -> str:
    import json

    return json.dumps(params, sort_keys=True, default=str)


REPLICA_KEYS = ("replica", "replica_model", "replica_arch")


def _replica(row: UnitRow) -> str | None:
    for key in REPLICA_KEYS:
        if key in row.params:
            return row.params[key]
    return None


def _spec(data: AuditData, label: str) -> str | None:
    info = data.info.get(label) or {}
    return info.get("spec")


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------
def bootstrap_diff(
    a: dict[str, list[float]], b: dict[str, list[float]], *, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0
) -> tuple[float, float, float]:
    """mean(a) - mean(b) with a hierarchical bootstrap 95% CI.

    a, b: model -> per-seed values. Each resample draws models with replacement within each
    group, then seeds with replacement within each drawn model (the two sources of variation
    the study's comparison has). Returns (point estimate, CI low, CI high).
    """
    rng = np.random.default_rng(seed)

    def resampled_means(group: dict[str, list[float]]) -> np.ndarray:
        per_model = []
        for values in group.values():
            v = np.asarray(values, dtype=float)
            idx = rng.integers(0, len(v), size=(samples, len(v)))
            per_model.append(v[idx].mean(axis=1))  # [samples]
        per_model_arr = np.stack(per_model, axis=1)  # [samples, n_models]
        pick = rng.integers(0, per_model_arr.shape[1], size=per_model_arr.shape)
        return np.take_along_axis(per_model_arr, pick, axis=1).mean(axis=1)

    point = float(np.mean([np.mean(v) for v in a.values()]) - np.mean([np.mean(v) for v in b.values()]))
    diffs = resampled_means(a) - resampled_means(b)
    low, high = np.percentile(diffs, [2.5, 97.5])
    return point, float(low), float(high)


def verdict(direction: str | None, point: float, low: float | None, high: float | None) -> str:
    """Plain words: does this run agree with the study's reported direction?

    low/high None means there is no CI (fewer than two models in a group).
    """
    side = "higher" if point > 0 else "lower" if point < 0 else "equal"
    if direction is None:
        return f"no direction reported by the study; NAS {side} here"
    sign = 1 if direction == "higher" else -1
    if point == 0:
        return "no difference in this run"
    leaning = "in the study's direction" if point * sign > 0 else "against the study's direction"
    if low is None or high is None:
        return f"no CI (a group has one model); point estimate {leaning}"
    if low > 0 or high < 0:
        return "agrees" if (point * sign) > 0 else "disagrees"
    return f"inconclusive (CI includes 0; point estimate {leaning})"


def spearman(x: Iterable[float], y: Iterable[float]) -> tuple[float | None, float | None]:
    """Spearman's rho and its two-sided p-value (None when undefined: n < 3 or a constant)."""
    from scipy.stats import spearmanr

    x, y = np.asarray(list(x), dtype=float), np.asarray(list(y), dtype=float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None, None
    res = spearmanr(x, y)
    return float(res.statistic), float(res.pvalue)


# --------------------------------------------------------------------------------------------
# Document model: sections of paragraphs, tables and figures, rendered to markdown and HTML
# --------------------------------------------------------------------------------------------
@dataclass
class Table:
    name: str  # CSV file stem
    header: list[str]
    rows: list[list[Any]]
    caption: str = ""


@dataclass
class Figure:
    path: str  # relative to the output directory
    caption: str


@dataclass
class Section:
    title: str
    blocks: list[Any] = field(default_factory=list)  # str (paragraph) | Table | Figure

    def text(self, s: str) -> Section:
        self.blocks.append(s)
        return self

    def missing(self, why: str) -> Section:
        self.blocks.append(f"_No data: {why}_")
        return self


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1e5 or abs(value) < 1e-3:
            return f"{value:.3g}"
        return f"{value:.3f}"
    return str(value)


def _md_table(t: Table) -> str:
    lines = ["| " + " | ".join(t.header) + " |", "|" + "---|" * len(t.header)]
    lines += ["| " + " | ".join(_fmt(c).replace("|", "\\|") for c in row) + " |" for row in t.rows]
    return "\n".join(lines)


def render_markdown(title: str, sections: list[Section]) -> str:
    out = [f"# {title}", ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        for b in s.blocks:
            if isinstance(b, Table):
                if b.caption:
                    out += [f"**{b.caption}** ([csv]({FILES_DIR}/tables/{b.name}.csv))", ""]
                out += [_md_table(b), ""]
            elif isinstance(b, Figure):
                out += [f"![{b.caption}]({b.path})", "", f"*{b.caption}*", ""]
            else:
                out += [b, ""]
    return "\n".join(out).rstrip() + "\n"


def _inline_html(text: str) -> str:
    import re

    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    text = re.sub(r"(?<![\w*])_(.+?)_(?![\w*])", r"<em>\1</em>", text)
    text = re.sub(r"`(.+?)`", r"<code>\1</code>", text)
    return text


def render_html(title: str, sections: list[Section]) -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>",
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}",
        "table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;"
        "text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}",
        "img{max-width:100%;border:1px solid #eee}figure{margin:1em 0}figcaption{color:#555;font-size:90%}",
        "nav a{margin-right:1em}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><nav>",
    ]
    parts += [f"<a href='#s{i}'>{html.escape(s.title)}</a>" for i, s in enumerate(sections)]
    parts.append("</nav>")
    for i, s in enumerate(sections):
        parts.append(f"<h2 id='s{i}'>{html.escape(s.title)}</h2>")
        for b in s.blocks:
            if isinstance(b, Table):
                cap = (f"<caption>{_inline_html(b.caption)} (<a href='{FILES_DIR}/tables/{b.name}.csv'>csv</a>)"
                       "</caption>") if b.caption else ""
                head = "".join(f"<th>{html.escape(h)}</th>" for h in b.header)
                body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>"
                               for row in b.rows)
                parts.append(f"<table>{cap}<tr>{head}</tr>{body}</table>")
            elif isinstance(b, Figure):
                parts.append(f"<figure><img src='{html.escape(b.path)}' alt='{html.escape(b.caption)}'>"
                             f"<figcaption>{_inline_html(b.caption)}</figcaption></figure>")
            else:
                parts.append(f"<p>{_inline_html(b)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------
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
        import matplotlib.pyplot as plt

        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png")
        plt.close(fig)
        path = self.dir / f"{stem}.png"
        atomic_write_bytes(path, buf.getvalue())
        return Figure(f"{FILES_DIR}/figures/{stem}.png", caption)


def _color(group: str) -> str:
    return GROUP_COLORS.get(group, "tab:gray")


def _group_points(figs: Figures, data: AuditData, metrics: list[Metric], stem: str, caption: str,
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
            ax.scatter(gi + np.asarray(jitter), vals, color=_color(g), zorder=3, s=18)
            for (k, v), j in zip(ys, jitter, strict=False):
                ax.annotate(k, (gi + j, v), fontsize=6, xytext=(3, 0), textcoords="offset points")
        ax.set_xticks(range(len(groups)), groups)
        ax.set_title(metric.title, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
    return figs.save(fig, stem, caption)


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------
class Builder:
    """Builds the report's sections from an AuditData."""

    def __init__(self, data: AuditData, out_dir: Path):
        self.data = data
        self.out_dir = out_dir
        self.figs = Figures(out_dir)
        self.tables: list[Table] = []

    # -- helpers ---------------------------------------------------------------------------
    def table(self, section: Section, t: Table) -> None:
        self.tables.append(t)
        section.blocks.append(t)

    def why_missing(self, kind: str, name: str, stage: str | None = None) -> str:
        """One line saying why a section has no data."""
        stage = stage or kind
        if not self.data.configured(kind, name):
            return f"the config runs no `{name}` {kind}."
        failed = self.data.failures_for(stage, name)
        if failed:
            return f"every `{name}` unit failed ({len(failed)}); first error: {failed[0].error.splitlines()[-1][:200]}"
        return f"`{name}` is configured but no unit has finished yet (resume the audit)."

    def per_model_table(self, section: Section, name: str, caption: str, metrics: list[Metric]) -> None:
        """One row per model (mean over seeds of each metric), then one mean row per group."""
        rows = []
        seeds = [self.data.values(m) for m in metrics]
        means = [{k: float(np.mean(list(v.values()))) for k, v in per.items()} for per in seeds]
        for label in self.data.order:
            if not any(label in m for m in means):
                continue
            row: list[Any] = [label, self.data.group.get(label, "?")]
            row += [mm.get(label) for mm in means]
            row.append(max((len(s.get(label, {})) for s in seeds), default=0))
            rows.append(row)
        for g in (NAS, MANUAL):
            members = self.data.labels(g)
            if any(r[0] in members for r in rows):
                rows.append([f"mean ({g})", g] + [
                    _mean([mm[k] for k in members if k in mm]) for mm in means] + [""])
        self.table(section, Table(name, ["model", "group"] + [m.title for m in metrics] + ["seeds"], rows, caption))

    # -- sections --------------------------------------------------------------------------
    def overview(self) -> Section:
        d = self.data
        s = Section("Run")
        cfg = d.config
        versions = sorted({(r.nasaudit_version, r.torch_version) for r in d.rows})
        devices = sorted({r.device for r in d.rows})
        total_seconds = sum(r.seconds for r in d.rows)
        s.text(f"Config `{cfg.get('name', '?')}` from `{cfg.get('source', '?')}`. "
               f"{len(d.rows)} finished units ({total_seconds / 60:.1f} compute-minutes), "
               f"{len(d.failed)} failed, over {len(d.order)} models "
               f"({len(d.labels(NAS))} NAS, {len(d.labels(MANUAL))} manual).")
        if versions or devices:
            s.text("Produced by " + ", ".join(f"nasaudit {a} / torch {b}" for a, b in versions)
                   + f" on {', '.join(devices)}.")
        s.text("Every number below is read from `results.sqlite`; the CSV files hold the tables.")
        stages = defaultdict(lambda: [0, 0.0])
        for r in d.rows:
            stages[r.stage][0] += 1
            stages[r.stage][1] += r.seconds
        self.table(s, Table("units", ["stage", "units", "seconds"],
                            [[k, v[0], v[1]] for k, v in stages.items()], "Finished units per stage"))
        if d.failed:
            self.table(s, Table("failed_units", ["model", "stage", "unit", "seed", "error"],
                                [[r.model, r.stage, r.name, r.seed, (r.error or "").splitlines()[-1][:160]]
                                 for r in d.failed], "Failed units (rerun the audit to retry them)"))
        searches = [r for r in d.rows if r.stage == "search"]
        if searches:
            rows = []
            for r in searches:
                cells = _analyze_json(r.result.get("genotype"))
                rows.append([r.result.get("name"), r.result.get("genotype_hash", "")[:12],
                             r.params.get("n_step", 1), r.params.get("gamma", 1.0), _hooks(r.params),
                             cells.get("depth"), cells.get("width"), cells.get("skip_connects"),
                             r.seconds, r.result.get("genotype_path")])
            self.table(s, Table("searches", ["search", "genotype hash", "n_step", "gamma", "hooks", "normal depth",
                                             "normal width (c)", "normal skips", "seconds", "genotype file"],
                                rows, "Searches run by this audit (cells of the searched genotypes)"))
        return s

    def clean_accuracy(self) -> Section:
        s = Section("Clean accuracy (Table 1)")
        m = METRIC_BY_KEY["clean_acc"]
        values = self.data.values(m)
        if not values:
            return s.missing("no model has finished training and evaluation yet.")
        rows = []
        for label in self.data.order:
            if label not in values:
                continue
            accs = list(values[label].values())
            info = self.data.info.get(label, {})
            rows.append([label, self.data.group.get(label), info.get("parameters"),
                         float(np.mean(accs)), float(np.std(accs)) if len(accs) > 1 else None, len(accs)])
        self.table(s, Table("clean_accuracy", ["model", "group", "parameters", "test accuracy", "sd over seeds", "seeds"],
                            rows, "Clean test accuracy"))
        return s

    def cell_metrics(self) -> Section:
        s = Section("Cell metrics (Table 3)")
        rows = []
        for label in self.data.order:
            cells = (self.data.info.get(label) or {}).get("cells")
            if not cells:
                continue
            n, r = cells.get("normal", {}), cells.get("reduce", {})
            rows.append([label, self.data.group.get(label)] + [n.get(k) for k in CELL_METRICS]
                        + [r.get(k) for k in CELL_METRICS]
                        + [(self.data.info[label].get("genotype_hash") or "")[:12]])
        if not rows:
            return s.missing("no genotype model in this audit (manual baselines have no cells).")
        nas = [r for r in rows if r[1] == NAS]
        if nas:
            rows.append(["mean (nas)", NAS] + [_mean([r[i] for r in nas]) for i in range(2, 8)] + [""])
        self.table(s, Table("cell_metrics", ["model", "group", "normal depth", "normal width (c)", "normal skips",
                                             "reduce depth", "reduce width (c)", "reduce skips", "genotype"],
                            rows, "Cell depth, width and skip connects per genotype"))
        s.text("The study finds NAS cells shallow (mean normal-cell depth 2.8) and wide (3.3c), mostly with more "
               "than one skip connect.")
        return s

    def evasion(self) -> Section:
        s = Section("Evasion: PGD and NES (Figures 2 and 5)")
        metrics = [METRIC_BY_KEY[k] for k in ("pgd_asr_ml", "pgd_asr_ll", "nes_asr_ml", "nes_asr_ll")]
        if not any(self.data.values(m) for m in metrics):
            return s.missing(self.why_missing("attack", "pgd") + " " + self.why_missing("attack", "nes"))
        self.per_model_table(s, "evasion_asr", "Targeted attack success rate per model", metrics)
        fig = _group_points(self.figs, self.data, metrics, "evasion_asr",
                            "ASR per model (points) and per group (boxes): PGD and NES, most- and least-likely targets",
                            "ASR")
        if fig:
            s.blocks.append(fig)
        for name in ("pgd", "nes"):
            if not self.data.values(METRIC_BY_KEY[f"{name}_asr_ml"]):
                s.text(f"{name.upper()}: " + self.why_missing("attack", name))
        return s

    def asr_vs_eps(self) -> Section:
        s = Section("ASR against eps (Figure 3)")
        rows = self.data.primary("attack", "pgd_sweep")
        if not rows:
            return s.missing(self.why_missing("attack", "pgd_sweep"))
        curves: dict[str, list[np.ndarray]] = defaultdict(list)
        eps_of: dict[str, list[float]] = {}
        for r in rows:
            eps, asr = r.result.get("eps") or [], r.result.get("asr") or []
            if eps and len(eps) == len(asr):
                curves[r.model].append(np.asarray(asr, dtype=float))
                eps_of[r.model] = eps
        fig, ax = self.figs.new(6, 4)
        table_rows = []
        for label in self.data.order:
            if label not in curves:
                continue
            mean = np.mean(curves[label], axis=0)
            eps255 = [e * 255 for e in eps_of[label]]
            ax.plot(eps255, mean, marker="o", ms=3, color=_color(self.data.group.get(label, "")), label=label, alpha=0.8)
            table_rows += [[label, self.data.group.get(label), e, float(a)] for e, a in zip(eps255, mean, strict=True)]
        ax.set_xlabel("eps (x 1/255)")
        ax.set_ylabel("untargeted ASR")
        ax.legend(fontsize=6, ncol=2)
        s.blocks.append(self.figs.save(fig, "asr_vs_eps", "Untargeted PGD ASR against eps (red: NAS, blue: manual)"))
        self.table(s, Table("asr_vs_eps", ["model", "group", "eps x255", "ASR"], table_rows, "ASR per eps"))
        return s

    def inputs_broken(self) -> Section:
        s = Section("How many models each input breaks (Figure 4)")
        rows = self.data.primary("attack", "pgd")
        if not rows:
            return s.missing(self.why_missing("attack", "pgd"))
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
        fig, axes = self.figs.new(4 * len(cases), 3.4, 1, len(cases))
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
        s.blocks.append(self.figs.save(fig, "inputs_broken", "Number of models each attacked input fools (PGD)"))
        self.table(s, Table("inputs_broken", ["case", "models fooled", "inputs"], table_rows,
                            "Inputs by number of models they fool"))
        s.text("An input counts for a model only when that model classified it correctly (PGD attacks only those).")
        return s

    def poisoning(self) -> Section:
        s = Section("Poisoning: CAD against p (Figure 6)")
        rows = self.data.primary("attack", "poison")
        if not rows:
            return s.missing(self.why_missing("attack", "poison"))
        fig, ax = self.figs.new(6, 4)
        curves = defaultdict(list)
        ps: dict[str, list[float]] = {}
        for r in rows:
            if r.result.get("fractions") and r.result.get("cad"):
                curves[r.model].append(np.asarray(r.result["cad"], dtype=float))
                ps[r.model] = r.result["fractions"]
        table_rows = []
        for label in self.data.order:
            if label in curves:
                mean = np.mean(curves[label], axis=0)
                ax.plot(ps[label], mean, marker="o", ms=3, color=_color(self.data.group.get(label, "")), label=label)
                table_rows += [[label, self.data.group.get(label), p, float(c)] for p, c in zip(ps[label], mean, strict=True)]
        ax.set_xlabel("poisoned fraction p")
        ax.set_ylabel("clean accuracy drop")
        ax.legend(fontsize=6, ncol=2)
        s.blocks.append(self.figs.save(fig, "poison_cad", "Poisoning: clean accuracy drop against p"))
        self.table(s, Table("poison_cad", ["model", "group", "p", "CAD"], table_rows, "CAD per poisoned fraction"))
        return s

    def backdoor(self) -> Section:
        s = Section("Backdoor: ASR and CAD (Figure 7)")
        metrics = [METRIC_BY_KEY["backdoor_asr"], METRIC_BY_KEY["backdoor_cad"]]
        if not any(self.data.values(m) for m in metrics):
            return s.missing(self.why_missing("attack", "backdoor"))
        self.per_model_table(s, "backdoor", "Backdoor attack success and clean accuracy drop", metrics)
        extra = _backdoor_methods(self.data)
        if extra:
            self.table(s, Table("backdoor_methods", ["model", "seed", "method", "ASR", "CAD", "clean-model ASR"],
                                extra, "Every backdoor run, per method (TrojanNN, BadNet)"))
        fig = _group_points(self.figs, self.data, metrics, "backdoor", "Backdoor ASR and CAD per model and group", "")
        if fig:
            s.blocks.append(fig)
        s.text("ASR is measured on triggered test inputs whose true class is not the target.")
        return s

    def knockoff(self) -> Section:
        s = Section("Functionality stealing: Knockoff ACE against budget (Figure 9, Table 2)")
        rows = self.data.results("attack", "knockoff")
        if not rows:
            return s.missing(self.why_missing("attack", "knockoff"))
        primary = self.data.primary("attack", "knockoff")
        fig, ax = self.figs.new(6, 4)
        table_rows = []
        plotted = False
        for label in self.data.order:
            mine = [r for r in primary if r.model == label]
            budgets = [r.result.get("budgets") or r.result.get("budget") for r in mine]
            aces = [r.result.get("ace") for r in mine]
            if not mine or not isinstance(budgets[0], list) or not isinstance(aces[0], list):
                continue
            mean = np.mean([np.asarray(a, dtype=float) for a in aces], axis=0)
            ax.plot(budgets[0], mean, marker="o", ms=3, color=_color(self.data.group.get(label, "")), label=label)
            plotted = True
            table_rows += [[label, self.data.group.get(label), b, float(a)] for b, a in zip(budgets[0], mean, strict=True)]
        if plotted:
            ax.set_xscale("log", base=2)
            ax.set_xlabel("query budget")
            ax.set_ylabel("ACE (nats)")
            ax.legend(fontsize=6, ncol=2)
            s.blocks.append(self.figs.save(fig, "knockoff_ace", "Knockoff ACE against the query budget"))
            self.table(s, Table("knockoff_ace", ["model", "group", "budget", "ACE"], table_rows, "ACE per budget"))
        else:
            import matplotlib.pyplot as plt

            plt.close(fig)
            self.per_model_table(s, "knockoff_ace", "Knockoff ACE per model", [METRIC_BY_KEY["knockoff_ace"]])
        cross = defaultdict(list)
        for r in rows:
            rep = _replica(r)
            ace = r.result.get("ace")
            ace = ace[-1] if isinstance(ace, list) and ace else ace
            if rep is not None and _num(ace) is not None:
                cross[(r.model, _label_of(self.data, rep))].append(float(ace))
        replicas = sorted({k[1] for k in cross}, key=lambda x: self.data.order.index(x) if x in self.data.order else 99)
        if len(replicas) > 1:
            trows = [[v] + [_mean(cross.get((v, rp), [])) for rp in replicas]
                     for v in self.data.order if any((v, rp) in cross for rp in replicas)]
            self.table(s, Table("knockoff_cross", ["victim \\ replica"] + replicas, trows,
                                "Cross-architecture ACE (Table 2): rows victims, columns replica architectures"))
        else:
            s.text("Cross-architecture table: only the victims' own architectures were used as replicas "
                   "(set `each_model = \"replica\"` in `[attacks.knockoff]` for the cross product).")
        return s

    def membership(self) -> Section:
        s = Section("Membership inference AUC (Figure 10)")
        m = METRIC_BY_KEY["membership_auc"]
        if not self.data.values(m):
            return s.missing(self.why_missing("attack", "membership"))
        adv = Metric("membership_adv", "advantage at low FPR", "attack", "membership",
                     lambda r: _num(r.get("advantage_at_fpr")))
        self.per_model_table(s, "membership", "Label-only membership inference", [m, adv])
        fig = _group_points(self.figs, self.data, [m], "membership_auc", "Membership AUC per model and group", "AUC")
        if fig:
            s.blocks.append(fig)
        return s

    def gradvar(self) -> Section:
        s = Section("Gradient variance at initialisation and after training (Figure 12)")
        init, trained = METRIC_BY_KEY["gradvar_init"], METRIC_BY_KEY["gradvar_trained"]
        vi, vt = self.data.model_means(init), self.data.model_means(trained)
        if not vi and not vt:
            return s.missing(self.why_missing("probe", "gradvar"))
        self.per_model_table(s, "gradvar", "log10 gradient variance (Eq. 14)", [init, trained])
        labels = [k for k in self.data.order if k in vi or k in vt]
        fig, ax = self.figs.new(max(5.0, 0.5 * len(labels) + 2), 3.8)
        x = np.arange(len(labels))
        ax.bar(x - 0.2, [vi.get(k, np.nan) for k in labels], 0.4, label="init", color="tab:gray")
        ax.bar(x + 0.2, [vt.get(k, np.nan) for k in labels], 0.4, label="trained",
               color=[_color(self.data.group.get(k, "")) for k in labels])
        ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("log10 Var(g)")
        ax.legend(fontsize=7)
        s.blocks.append(self.figs.save(fig, "gradvar", "Gradient variance at initialisation (grey) and after training"))
        if not vi:
            s.text("At initialisation: " + self.why_missing("probe", "gradvar", "probe_init"))
        return s

    def contours(self) -> Section:
        s = Section("Loss contours and curvature")
        metrics = [METRIC_BY_KEY[k] for k in ("contour_param", "contour_input", "curvature_param", "curvature_input")]
        have = [m for m in metrics if self.data.values(m)]
        if not have:
            return s.missing(self.why_missing("probe", "contour_param") + " "
                             + self.why_missing("probe", "curvature"))
        self.per_model_table(s, "flatness", "Flatness (mean loss increase over the grid) and top Hessian eigenvalues",
                             have)
        thumbs = self._thumbnails()
        if thumbs:
            s.blocks.append(thumbs)
        else:
            s.text("Thumbnails: no contour plot files were recorded (the probes ran without an output directory).")
        return s

    def _thumbnails(self) -> Figure | None:
        """A grid of the contour PNGs the probes wrote, one row per model."""
        import matplotlib.image as mpimg

        rows = []
        for label in self.data.order:
            pics = []
            for name in ("contour_param", "contour_input"):
                recs = [r for r in self.data.primary("probe", name) if r.model == label]
                path = _path(recs[0].result, "files", "plot") if recs else None
                pics.append(_locate(path, self.out_dir))
            if any(pics):
                rows.append((label, pics))
        if not rows:
            return None
        fig, axes = self.figs.new(6, 2.6 * len(rows), len(rows), 2)
        axes = np.asarray(axes).reshape(len(rows), 2)
        for (label, pics), ax_row in zip(rows, axes, strict=True):
            for ax, pic, title in zip(ax_row, pics, ("parameter space", "input space"), strict=True):
                ax.axis("off")
                if pic is not None:
                    ax.imshow(mpimg.imread(pic))
                ax.set_title(f"{label}: {title}", fontsize=7)
        return self.figs.save(fig, "contour_thumbnails", "Loss-contour thumbnails (parameter and input space)")

    def mitigation(self) -> Section:
        s = Section("Mitigation comparison (Table 4)")
        pairs = [(label, info.get("mitigation_of")) for label, info in self.data.info.items() if info.get("mitigation_of")]
        if not pairs:
            return s.missing("the config marks no model as a mitigation (`mitigation_of = \"...\"`).")
        metrics = [m for m in METRICS if m.vulnerability and self.data.values(m)]
        if not metrics:
            return s.missing("no attack has finished for the mitigated models yet.")
        means = {m.key: self.data.model_means(m) for m in metrics}
        rows = []
        for variant, base in pairs:
            for m in metrics:
                b, v = means[m.key].get(base), means[m.key].get(variant)
                delta = None if b is None or v is None else v - b
                better = None
                if delta is not None and m.direction:
                    # For metrics where NAS is worse when higher, a mitigation helps by lowering.
                    better = "better" if (delta < 0) == (m.direction == "higher") else "worse"
                rows.append([variant, base, m.title, b, v, delta, better])
        self.table(s, Table("mitigation", ["variant", "base", "metric", "base value", "variant value", "delta",
                                           "security"], rows, "Mitigated variants against their base genotype"))
        depth_rows = []
        for variant, base in pairs:
            for label in (base, variant):
                cells = (self.data.info.get(label) or {}).get("cells") or {}
                n = cells.get("normal", {})
                depth_rows.append([label, n.get("depth"), n.get("width"), n.get("skip_connects")])
        self.table(s, Table("mitigation_cells", ["model", "normal depth", "normal width (c)", "normal skips"],
                            depth_rows, "Cells of the mitigated variants"))
        s.text("The study reports that deeper cells and fewer skip connects (DARTS-i/ii/iii) lower evasion, backdoor "
               "and membership vulnerability (membership AUC 0.562 -> 0.527) but raise poisoning CAD.")
        return s

    def headline(self) -> Section:
        s = Section("Headline: NAS minus manual")
        if not self.data.labels(NAS) or not self.data.labels(MANUAL):
            return s.missing("the comparison needs at least one NAS and one manual model with results.")
        rows = []
        agree = disagree = 0
        for m in METRICS:
            values = self.data.values(m)
            a = {k: list(v.values()) for k, v in values.items() if self.data.group.get(k) == NAS}
            b = {k: list(v.values()) for k, v in values.items() if self.data.group.get(k) == MANUAL}
            if not a or not b:
                continue
            point, low, high = bootstrap_diff(a, b)
            if len(a) < 2 or len(b) < 2:
                # Resampling one model only varies its seeds: not a NAS-vs-manual interval.
                low = high = None
            text = verdict(m.direction, point, low, high)
            agree += text == "agrees"
            disagree += text == "disagrees"
            rows.append([m.title, _mean([np.mean(v) for v in a.values()]), _mean([np.mean(v) for v in b.values()]),
                         point, low, high, m.direction or "-", text, f"{len(a)}/{len(b)}"])
        if not rows:
            return s.missing("no metric has values for both groups yet.")
        self.table(s, Table("headline", ["metric", "NAS mean", "manual mean", "NAS - manual", "CI 2.5%", "CI 97.5%",
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

    def correlations(self) -> Section:
        s = Section("Correlations: vulnerability against cell metrics and probes")
        explain: dict[str, dict[str, float]] = {}
        for key in CELL_METRICS:
            vals = {}
            for label, info in self.data.info.items():
                v = _num(_path(info, "cells", "normal", key))
                if v is not None:
                    vals[label] = v
            if vals:
                explain[f"normal-cell {key}"] = vals
        for m in METRICS:
            if not m.vulnerability and m.stage.startswith("probe"):
                vals = self.data.model_means(m)
                if vals:
                    explain[m.title] = vals
        vuln = {m.title: self.data.model_means(m) for m in METRICS if m.vulnerability}
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
        self.table(s, Table("correlations", ["vulnerability metric", "property", "models", "Spearman rho", "p"],
                            rows, "Spearman correlation across models"))
        if np.isfinite(matrix).any():
            fig, ax = self.figs.new(1.1 * len(explain) + 3.5, 0.45 * len(vuln) + 2)
            im = ax.imshow(matrix, vmin=-1, vmax=1, cmap="coolwarm", aspect="auto")
            ax.set_xticks(range(len(explain)), list(explain), rotation=40, ha="right", fontsize=7)
            ax.set_yticks(range(len(vuln)), list(vuln), fontsize=7)
            fig.colorbar(im, ax=ax, label="Spearman rho")
            s.blocks.append(self.figs.save(fig, "correlations", "Spearman rho across models (blank: undefined)"))
        else:
            s.text("Every correlation is undefined: fewer than 3 models share both values, or one is constant.")
        s.text("Cell metrics exist for genotype models only, so those correlations run across genotypes; probe "
               "correlations run across all models.")
        return s

    def build(self) -> list[Section]:
        return [self.overview(), self.headline(), self.clean_accuracy(), self.cell_metrics(), self.evasion(),
                self.asr_vs_eps(), self.inputs_broken(), self.poisoning(), self.backdoor(), self.knockoff(),
                self.membership(), self.gradvar(), self.contours(), self.mitigation(), self.correlations()]


def _locate(path: str | None, out_dir: Path) -> Path | None:
    """A file recorded by a probe, also after the output directory was moved or copied."""
    if not path:
        return None
    p = Path(path)
    if p.is_file():
        return p
    parts = p.parts
    if "probes" in parts:  # re-root the part below the audit's own probes/ directory
        moved = out_dir.joinpath(*parts[parts.index("probes"):])
        if moved.is_file():
            return moved
    return None


def _analyze_json(genotype: dict | None) -> dict:
    """Normal-cell metrics of a canonical genotype JSON from the database ({} if unreadable)."""
    if not isinstance(genotype, dict):
        return {}
    try:
        from nasaudit.analysis import analyze_cell

        cell = [tuple(pair) for pair in genotype["normal"]]
        return analyze_cell(cell, tuple(genotype["normal_concat"]))
    except (KeyError, TypeError, ValueError):
        return {}


def _hooks(params: dict) -> str:
    hooks = params.get("hooks") or []
    return ", ".join(map(str, hooks)) if isinstance(hooks, list) else str(hooks)


def _label_of(data: AuditData, spec: str) -> str:
    if spec in data.order:
        return spec
    for label, info in data.info.items():
        if info.get("spec") == spec:
            return label
    return spec


def _backdoor_methods(data: AuditData) -> list[list[Any]]:
    rows = []
    for r in data.results("attack", "backdoor"):
        rows.append([r.model, r.seed, r.result.get("method", r.params.get("method", "trojannn")),
                     _num(r.result.get("asr")), _num(r.result.get("cad")),
                     _num(r.result.get("clean_model_asr"))])
    return rows


def _mean(values: Iterable[Any]) -> float | None:
    vals = [v for v in (_num(x) for x in values) if v is not None]
    return float(np.mean(vals)) if vals else None


def _csv_text(t: Table) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(t.header)
    for row in t.rows:
        writer.writerow(["" if c is None else c for c in row])
    return buf.getvalue()


def write_report(out_dir: str | Path) -> Path:
    """Write report.md, report.html and report_files/ for the audit in `out_dir`.

    Returns the path of report.md. Reads only out_dir/results.sqlite (InputError if absent).
    """
    out_dir = Path(out_dir)
    data = AuditData.load(out_dir)
    files = out_dir / FILES_DIR
    if files.is_dir():  # stale figures/tables from an earlier report must not linger
        shutil.rmtree(files)
    builder = Builder(data, out_dir)
    sections = builder.build()
    title = f"nasaudit report: {data.config.get('name', out_dir.name)}"
    for t in builder.tables:
        atomic_write_text(files / "tables" / f"{t.name}.csv", _csv_text(t))
    atomic_write_text(out_dir / "report.html", render_html(title, sections))
    return atomic_write_text(out_dir / "report.md", render_markdown(title, sections))
