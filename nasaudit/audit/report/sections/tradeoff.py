"""The trade-off of a search sweep: clean accuracy against robustness and search cost (study 5.3).

Points are the searches of the config's [[sweeps]] (labelled by their knobs; the added
plain-DARTS point included); every other audited model is drawn as a grey reference. Per
robustness metric a scatter of clean accuracy against it, search cost as colour (device-seconds:
the search's wall time on its one device) and size (steps: weight + alpha + virtual SGD steps),
and that panel's 2-D Pareto front over the sweep points. The table is the front over all
objectives at once (accuracy up; every robustness metric the points share, and device-seconds,
down), and one sentence names the best balance for [report.weighting].
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from nasaudit.audit.config import SEARCH_PREFIX, TRADEOFF_METRICS, expand_sweep
from nasaudit.audit.pareto import balance_scores, best_balance, pareto_front
from nasaudit.audit.report.builder import Builder
from nasaudit.audit.report.data import canonical_params
from nasaudit.audit.report.document import Section, Table, fmt
from nasaudit.audit.report.metrics import CLEAN_ACC

COST_KEYS = ("search_seconds", "search_steps")
SHORT = {"clean_acc": "clean accuracy", "pgd_asr_ml": "PGD ASR", "nes_asr_ml": "NES ASR",
         "membership_auc": "membership AUC", "backdoor_asr": "backdoor ASR",
         "search_seconds": "search device-seconds", "search_steps": "search steps"}


def _search_cost(b: Builder) -> dict[str, tuple[float, int]]:
    """search name -> (device-seconds, steps) from the finished search units."""
    out = {}
    for row in _search_rows(b):
        if row.stage != "search" or not row.result:
            continue
        details = row.result.get("details") or {}
        seconds = sum(float(h.get("seconds", 0.0)) for h in details.get("history") or [])
        steps = sum(int(details.get(k) or 0) for k in ("weight_steps", "arch_steps", "virtual_steps"))
        out[row.model.removeprefix(SEARCH_PREFIX)] = (seconds or float(row.seconds), steps)
    return out


def _search_rows(b: Builder):
    return [row for row in b.data.rows if row.stage == "search" and row.result]


def _points(b: Builder) -> tuple[list[dict[str, Any]], list[str]]:
    """(sweep points with their values, names of the sweeps) from the stored config."""
    raw = b.data.config.get("raw") or {}
    cost = _search_cost(b)
    means = {k: b.data.model_means(b.metric_by_key[k]) for k in TRADEOFF_METRICS}
    # The stored config has its keys sorted, so a re-expansion may order the knobs (and so
    # the labels) differently: find each point's search by its settings, and take its label.
    by_params = {canonical_params(row.params): row.model.removeprefix(SEARCH_PREFIX) for row in _search_rows(b)}
    points, names = [], []
    for item in raw.get("sweeps") or []:
        names.append(item["name"])
        for p in expand_sweep(item):
            label = by_params.get(canonical_params(p.params), p.label)
            p = dataclasses.replace(p, label=label)
            knobs = p.label[len(item["name"]) + 1:] if not p.reference else "DARTS defaults"
            values = {k: means[k].get(p.label) for k in TRADEOFF_METRICS}
            seconds, steps = cost.get(p.label, (None, None))
            points.append({"label": p.label, "knobs": knobs, "reference": p.reference, **values,
                           "search_seconds": seconds, "search_steps": steps})
    return points, names


def tradeoff(b: Builder) -> Section:
    s = Section("Trade-off: accuracy, robustness and search cost (sweeps)")
    points, names = _points(b)
    if not names:
        return s.missing("the config declares no [[sweeps]] table.")
    done = [p for p in points if p["clean_acc"] is not None and p["search_seconds"] is not None]
    if not done:
        return s.missing(f"no point of sweep(s) {', '.join(names)} has finished its search and training yet.")
    metrics = [k for k in TRADEOFF_METRICS[1:] if any(p[k] is not None for p in done)]
    s.text(f"{len(done)} of {len(points)} sweep points finished (sweeps: {', '.join(names)}); grey crosses "
           "are the audit's other models (shipped DARTS genotypes, manual baselines) for reference. "
           "Each panel marks its Pareto front over the sweep points (higher accuracy, lower attack "
           "success); colour is the search's device-seconds, size its steps.")
    if metrics:
        s.blocks.append(_figure(b, done, metrics))
    else:
        s.text("No robustness metric (PGD, NES, membership, backdoor) has finished on a sweep point yet.")
    dims = ["clean_acc"] + [k for k in metrics if all(p[k] is not None for p in done)] + ["search_seconds"]
    maximize = [True] + [False] * (len(dims) - 1)
    vectors = [[float(p[k]) for k in dims] for p in done]
    front = pareto_front(vectors, maximize)
    raw_weights = ((b.data.config.get("raw") or {}).get("report") or {}).get("weighting") or {}
    weights = {k: float(raw_weights.get(k, 0.0)) for k in dims} if raw_weights else \
        {k: (0.0 if k in COST_KEYS else 1.0) for k in dims}
    if not any(weights.values()):
        weights = {k: (0.0 if k in COST_KEYS else 1.0) for k in dims}
    scores = balance_scores(vectors, maximize, [weights[k] for k in dims])
    header = ["point", "knobs"] + [SHORT[k] for k in dims] + ["search steps", "balance score"]
    rows = [[done[i]["label"], done[i]["knobs"]] + [done[i][k] for k in dims]
            + [done[i]["search_steps"], scores[i]] for i in front]
    rows.sort(key=lambda r: -r[-1])
    b.table(s, Table("tradeoff_front", header, rows,
                     f"Pareto front over {', '.join(SHORT[k] for k in dims)} ({len(front)} of {len(done)} points)"))
    best = best_balance(vectors, maximize, [weights[k] for k in dims])
    p = done[best]
    used = ", ".join(f"{SHORT[k]} {weights[k]:g}" for k in dims if weights[k])
    ignored = sorted(set(raw_weights) - set(dims))
    values = ", ".join(f"{SHORT[k]} {fmt(p[k])}" for k in dims if k != "search_seconds")
    s.text(f"**Best balance** for the weighting {used}{' (default: equal weights, cost 0)' if not raw_weights else ''}: "
           f"`{p['label']}` ({p['knobs']}) with {values}, found in {p['search_seconds']:.0f} device-seconds "
           f"over {p['search_steps']} steps."
           + (f" Weights for {', '.join(ignored)} were ignored: no finished value on every point." if ignored else ""))
    return s


def _figure(b: Builder, done: list[dict[str, Any]], metrics: list[str]):
    refs = {label: (b.data.model_means(CLEAN_ACC).get(label),
                    {k: b.data.model_means(b.metric_by_key[k]).get(label) for k in metrics})
            for label in b.data.order if label not in {p["label"] for p in done}}
    fig, axes = b.figs.new(4.2 * len(metrics) + 1.2, 4.0, 1, len(metrics))
    axes = np.atleast_1d(axes)
    seconds = [p["search_seconds"] for p in done]
    steps = np.asarray([p["search_steps"] or 0 for p in done], dtype=float)
    sizes = 30 + 170 * (steps - steps.min()) / (np.ptp(steps) or 1.0)
    sc = None
    for ax, key in zip(axes, metrics, strict=True):
        pts = [(p[key], p["clean_acc"], i) for i, p in enumerate(done) if p[key] is not None]
        xs, ys, idx = (list(t) for t in zip(*pts, strict=True))
        sc = ax.scatter(xs, ys, c=[seconds[i] for i in idx], s=sizes[idx], cmap="viridis",
                        vmin=min(seconds), vmax=max(max(seconds), min(seconds) + 1e-9), zorder=3,
                        edgecolors="black", linewidths=0.4)
        labels: dict[tuple[float, float], list[str]] = {}
        for x, y, i in pts:  # coinciding points share one label, not an overprint
            labels.setdefault((x, y), []).append(done[i]["knobs"])
        for (x, y), names in labels.items():
            ax.annotate(" / ".join(names), (x, y), fontsize=6, xytext=(4, 3), textcoords="offset points")
        front = sorted(pareto_front([[y, x] for x, y, _ in pts], [True, False]), key=lambda j: xs[j])
        ax.plot([xs[j] for j in front], [ys[j] for j in front], "r--", lw=1, zorder=2, label="Pareto front")
        ax.scatter([xs[j] for j in front], [ys[j] for j in front], s=sizes[[idx[j] for j in front]] + 60,
                   facecolors="none", edgecolors="red", zorder=4)
        for label, (acc, vals) in refs.items():
            if acc is not None and vals.get(key) is not None:
                ax.scatter([vals[key]], [acc], marker="x", color="gray", zorder=3)
                ax.annotate(label, (vals[key], acc), fontsize=6, color="gray", xytext=(4, -8),
                            textcoords="offset points")
        ax.set_xlabel(f"{SHORT[key]} (lower is more robust)", fontsize=8)
        ax.set_ylabel("clean accuracy", fontsize=8)
        ax.legend(fontsize=6, loc="lower right")
    fig.colorbar(sc, ax=axes[-1], label="search device-seconds")
    return b.figs.save(fig, "tradeoff", "Clean accuracy against robustness per sweep point (labels: knobs; "
                                        "colour: device-seconds; size: steps; red: Pareto front)")
