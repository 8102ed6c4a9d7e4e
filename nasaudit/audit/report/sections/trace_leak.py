"""Architecture stealing from an execution trace (attack `trace_leak`, after Hong et al. 2020)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from nasaudit.audit.report.builder import Builder
from nasaudit.audit.report.data import mean_of, normal_cell_metrics
from nasaudit.audit.report.document import Section, Table
from nasaudit.audit.report.sections.correlations import significance_note
from nasaudit.audit.report.stats import ALPHA, benjamini_hochberg, spearman

LEVEL_ORDER = ("ops", "shapes", "ops_timing", "timing_noisy")
CELL_METRICS = ("depth", "width", "skip_connects", "parameter_free_ops")
# The leakage measures correlated with the cell metrics: (level, per-cell key, title, sign)
# where sign +1 means "a larger value is more leakage".
LEAK_MEASURES = (
    ("ops_timing", "remaining_bits", "remaining bits, ops_timing", -1),
    ("ops_timing", "edge_op_accuracy", "edge op accuracy, ops_timing", 1),
    ("timing_noisy", "edge_op_accuracy", "edge op accuracy, timing_noisy", 1),
    ("shapes", "remaining_bits", "remaining bits, shapes", -1),
)


def trace_leak(report: Builder) -> Section:
    """Per genotype and level: exact recovery, per-edge accuracies, remaining bits, whether the
    truth survived elimination and the chance baselines; then the correlation of the normal
    cell's leakage with its depth, width and skip count."""
    s = Section("Architecture stealing from an execution trace (after Hong et al., ICLR 2020)")
    rows = report.data.primary("attack", "trace_leak")
    if not rows:
        return s.missing(report.why_missing("attack", "trace_leak"))
    applicable = [r for r in rows if r.result.get("applicable")]
    skipped = sorted({r.model for r in rows if not r.result.get("applicable")})
    s.text("The probe records the library calls of one inference query and reconstructs the genotype "
           "from them at four observation levels: `ops` (call kinds, shapes and data flow: the idealised "
           "channel), `shapes` (no data flow), `ops_timing` (kinds and the durations of one query to a victim "
           "running in its own process, the view of a Flush+Reload probe on the framework's functions) and "
           "`timing_noisy` (that probe missing and duplicating calls, its timer jittered). "
           "It measures the leak a real side channel would exploit; it does not mount a cache attack. "
           "Exact is the share of seeds (and noise draws) whose single top-ranked genotype is the true "
           "one; remaining bits are log2 of the candidates that survive elimination, which bound the "
           "attacker's uncertainty only where the truth survived. Timing eliminates a candidate only beyond a "
           "likelihood ratio calibrated so that the truth survives a level with probability >= 0.95; the "
           "exact levels' shape and data-flow checks never drop it. Chance baselines: a uniform pick among "
           "the ops of the true op's call family (what the call kinds alone give; its bits are the space those "
           "families allow) and a uniform pick among all ops (no trace; prior bits).")
    if skipped:
        s.text(f"Not applicable (no genotype): {', '.join(skipped)}.")
    if not applicable:
        return s
    by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in applicable:
        by_model[r.model].append(r.result)
    table_rows, at_chance, lost = [], [], []
    for label in [m for m in report.data.order if m in by_model]:
        results = by_model[label]
        levels = [lv for lv in LEVEL_ORDER if any(lv in res["levels"] for res in results)]
        for level in levels:
            per = [res["levels"][level] for res in results if level in res["levels"]]
            acc = mean_of(m["edge_op_accuracy"] for m in per)
            chance = mean_of(m.get("chance_edge_op_accuracy") for m in per)
            survived = mean_of(float(m["true_survived"]) for m in per if "true_survived" in m)
            beats = _beats(acc, chance)
            if beats is False:
                at_chance.append(f"{label} at {level} ({acc:.3f} vs {chance:.3f})")
            if survived is not None and survived < 1.0:
                lost.append(f"{label} at {level} (survived {survived:.2f})")
            table_rows.append([
                label, level,
                mean_of(float(m["exact"]) for m in per),
                acc,
                chance,
                mean_of(m.get("prior_edge_op_accuracy") for m in per),
                {True: "yes", False: "no", None: "-"}[beats],
                survived,
                mean_of(m["edge_input_accuracy"] for m in per),
                mean_of(m["concat_accuracy"] for m in per),
                mean_of(m["remaining_bits"] for m in per),
                mean_of(m.get("chance_bits") for m in per),
                mean_of(res["prior_bits"] for res in results),
                mean_of(m["trace_length"] for m in per),
                len(per) * int(per[0].get("draws", 1)),
            ])
    report.table(s, Table(
        "trace_leak",
        ["model", "level", "exact rate", "edge op acc", "chance edge op acc (family)",
         "prior edge op acc", "beats chance", "truth survived", "edge input acc", "concat acc",
         "remaining bits", "chance bits (family)", "prior bits", "trace length", "seeds x draws"],
        table_rows,
        "Genotype recovery from the execution trace, per observation level (means over seeds and draws), "
        "next to the chance baselines: a uniform pick within the call family and the prior (no trace)",
    ))
    if at_chance:
        s.text("Not beating chance (edge op accuracy at or below a uniform pick within the call family): "
               + "; ".join(at_chance) + ".")
    if lost:
        s.text("The true genotype was eliminated in some runs: " + "; ".join(lost)
               + ". Remaining bits do not bound the attacker's uncertainty there.")
    _correlations(report, s, by_model)
    return s


def _beats(acc: float | None, chance: float | None) -> bool | None:
    """Edge op accuracy above the in-family chance pick; None when unknown or both are 1 (the
    call kinds alone fix every op: nothing to beat)."""
    if acc is None or chance is None:
        return None
    if acc > chance + 1e-9:
        return True
    return None if min(acc, chance) >= 1.0 - 1e-9 else False


def _correlations(report: Builder, s: Section, by_model: dict[str, list[dict[str, Any]]]) -> None:
    """Spearman correlation, across genotype models, of normal-cell metrics with its leakage."""
    cells = {label: normal_cell_metrics(results[0].get("genotype")) for label, results in by_model.items()}
    rows, findings = [], []
    for level, key, title, sign in LEAK_MEASURES:
        leak = {}
        for label, results in by_model.items():
            vals = [res["levels"][level]["per_cell"]["normal"][key] for res in results
                    if level in res["levels"] and "normal" in res["levels"][level].get("per_cell", {})]
            if vals:
                leak[label] = mean_of(vals)
        for metric in CELL_METRICS:
            labels = [m for m in leak if metric in cells.get(m, {})]
            if not labels:  # the level did not run
                continue
            rho, p = spearman([cells[m][metric] for m in labels], [leak[m] for m in labels])
            rows.append([metric, title, rho, p, len(labels), sign])
    if not rows:
        return
    for row, q in zip(rows, benjamini_hochberg([r[3] for r in rows]), strict=True):
        sign = row.pop()
        row.append(q)
        if q is not None and q < ALPHA:
            more = "more" if row[2] * sign > 0 else "less"
            findings.append(f"cells with a larger {row[0]} leak {more} ({row[1]}: rho {row[2]:.2f}, q {q:.2g})")
    report.table(s, Table(
        "trace_leak_vs_cells",
        ["cell metric", "leakage (normal cell)", "Spearman rho", "p", "genotypes", "q (BH)"],
        rows,
        "Do shallow, wide, skip-heavy cells leak more? Normal-cell metrics against the normal cell's leakage "
        "(exact permutation p; q: Benjamini-Hochberg over this table)",
    ))
    s.text(significance_note(rows, n_col=4, p_col=3, q_col=5, unit="genotypes"))
    if findings:
        s.text("Holding at q < 0.05: " + "; ".join(findings) + ".")
