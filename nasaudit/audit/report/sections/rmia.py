"""Membership inference at low false-positive rates: offline RMIA (Zarifzadeh et al., ICML 2024)."""

from __future__ import annotations

import math
from typing import Any

from nasaudit.audit.report.builder import Builder
from nasaudit.audit.report.data import mean_of
from nasaudit.audit.report.document import Section, Table
from nasaudit.audit.report.metrics import Metric, num, tpr_at

# The study's membership direction at the low-FPR operating point (LiRA/RMIA standard). No
# count: a TPR at a threshold estimated from the non-members is not a binomial k/n.
TPR_1FPR = Metric("rmia_tpr_1fpr", "RMIA TPR at 1% FPR", "attack", "rmia", lambda r: tpr_at(r, 0.01),
                  "higher", True, "offline RMIA, few reference models", unit="fraction", family="membership")
METRICS = (TPR_1FPR,)
# The AUC is this section's own, not a headline row.
AUC = Metric("rmia_auc", "RMIA AUC", "attack", "rmia", lambda r: num(r.get("auc")), unit="AUC")


def _interval(ci: Any) -> str | None:
    if isinstance(ci, list) and len(ci) == 2 and all(num(v) is not None for v in ci):
        return f"{float(ci[0]):.3f}-{float(ci[1]):.3f}"
    return None


def _pct(fpr: float) -> str:
    return f"{fpr * 100:g}%"


def _tpr_cells(result: dict, fpr: float) -> list[Any]:
    """[TPR or a 'not resolvable' note, its 95% interval, the chance TPR, non-members it may flag]."""
    fprs = result.get("fprs") or []
    for i, f in enumerate(fprs):
        if num(f) is None or abs(float(f) - fpr) > 1e-12:
            continue
        point = (result.get("low_fpr") or [{}] * len(fprs))[i] or {}
        tpr = num((result.get("tpr_at_fpr") or [None] * len(fprs))[i])
        ci = (result.get("tpr_interval") or [None] * len(fprs))[i]
        if tpr is None:
            n0 = result.get("n_nonmembers")
            return [f"n/r (needs >= {math.ceil(1 / fpr)} non-members, has {n0})", None, None, 0]
        return [tpr, _interval(ci), num(point.get("chance_tpr")), point.get("allowed")]
    return [None, None, None, None]


def rmia(report: Builder) -> Section:
    """Per model and seed: offline RMIA's TPR at each low FPR and AUC with n and bootstrap
    intervals, the chance TPR, and the reference models' count and training cost; then the
    means per model and group."""
    s = Section("Membership inference at low FPR: offline RMIA (Zarifzadeh et al., ICML 2024)")
    rows = report.data.primary("attack", "rmia")
    if not rows:
        return s.missing(report.why_missing("attack", "rmia"))
    s.text("Offline RMIA trains a few reference models of each victim's architecture with its own recipe on "
           "images that are never attacked, then scores each input by how often its likelihood ratio (the "
           "victim's probability of the true label over the reference models' mean) beats that of population "
           "inputs. Members are inputs the victim was trained on, non-members test inputs. A TPR at an FPR is an "
           "exact point of the empirical ROC: the threshold flags at most FPR x n non-members, so an FPR below "
           "1/n is not resolvable (n/r), and the chance column is the TPR a score blind to membership would get "
           "on average at that threshold. Intervals are 95% stratified bootstrap percentiles given the trained "
           "models (the reference models' own randomness is not resampled); with few non-members allowed "
           "above the threshold they are rough.")
    fprs = sorted({float(f) for r in rows for f in (r.result.get("fprs") or []) if num(f) is not None})
    order = {label: i for i, label in enumerate(report.data.order)}
    table_rows, nulls, small_refs, unresolved = [], [], [], set()
    for r in sorted(rows, key=lambda r: (order.get(r.model, len(order)), r.seed)):
        res = r.result
        row: list[Any] = [r.model, report.data.group.get(r.model, "?"), r.seed, res.get("members_from"),
                          res.get("n_members"), res.get("n_nonmembers"), num(res.get("auc")),
                          _interval(res.get("auc_interval"))]
        for f in fprs:
            cells = _tpr_cells(res, f)
            if isinstance(cells[0], str):
                unresolved.add(f)
            row += cells
        seconds = [num(v) for v in res.get("reference_seconds") or []]
        a = num(res.get("offline_a"))
        row += [num(res.get("tpr_at_zero_fpr")), res.get("n_reference"), res.get("reference_epochs"),
                f"{res.get('reference_size')}/{res.get('victim_train_size')}",
                sum(v for v in seconds if v is not None) if seconds else None,
                None if a is None else f"{a:g} ({'tuned' if res.get('offline_a_tuned') else 'given'})",
                res.get("n_population"), num(res.get("member_accuracy")), num(res.get("nonmember_accuracy"))]
        table_rows.append(row)
        if res.get("members_from") == "test":
            nulls.append(f"{r.model} (seed {r.seed})")
        size, full = res.get("reference_size"), res.get("victim_train_size")
        if isinstance(size, int) and isinstance(full, int) and size < full:
            small_refs.append(f"{r.model} ({size} of {full})")
    header = ["model", "group", "seed", "members from", "members", "non-members", "AUC", "AUC 95% CI"]
    for f in fprs:
        p = _pct(f)
        header += [f"TPR at {p} FPR", f"TPR at {p} FPR: 95% CI", f"chance TPR at {p}",
                   f"non-members above threshold at {p}"]
    header += ["TPR at FPR 0", "reference models", "reference epochs", "reference/victim training images",
               "reference training s (total)", "offline a", "population z", "victim acc (members)",
               "victim acc (non-members)"]
    report.table(s, Table("rmia_runs", header, table_rows,
                          "Offline RMIA per model and seed: low-FPR TPR and AUC with their n, intervals and "
                          "chance levels, and what the reference models cost"))
    report.per_model_table(s, "rmia", "Offline RMIA, means over seeds per model and group", [TPR_1FPR, AUC])
    cost = {}
    for r in rows:
        total = sum(v for v in (num(x) for x in r.result.get("reference_seconds") or []) if v is not None)
        cost.setdefault(r.model, []).append(total)
    if cost:
        s.text("Reference training per run (mean seconds over seeds): "
               + "; ".join(f"{m} {mean_of(v):.0f} s" for m, v in cost.items()) + ".")
    if unresolved:
        s.text("Not resolvable with these non-member counts: "
               + ", ".join(f"{_pct(f)} FPR (needs >= {math.ceil(1 / f)})" for f in sorted(unresolved))
               + "; the TPR at FPR 0 is the lowest operating point these runs can show.")
    if small_refs:
        s.text("Reference models trained on fewer images than the victim (the pool held less than twice its "
               "training set): " + "; ".join(small_refs) + ". Such references are less confident than the "
               "victim on every input; RMIA's comparison with population inputs absorbs a uniform shift, not "
               "one that differs from input to input.")
    if nulls:
        s.text("Null experiment (members drawn from the test split, so every rate should sit at chance): "
               + ", ".join(nulls) + ".")
    return s
