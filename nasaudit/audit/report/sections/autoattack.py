"""AutoAttack robust accuracy (L-inf, Croce & Hein 2020): per model, per attack, and its sanity checks."""

from __future__ import annotations

from typing import Any

from nasaudit.audit.report.builder import Builder
from nasaudit.audit.report.document import Section, Table
from nasaudit.audit.report.figures import group_points
from nasaudit.audit.report.metrics import Metric, length, num

_INPUTS = length("robust")  # a record's n: every seeded input counts, misclassified ones too

# Today's standard beside the study's PGD (RobustBench); the study's direction, NAS less robust.
ROBUST = Metric("autoattack_robust_acc", "AutoAttack robust accuracy", "attack", "autoattack",
                lambda r: num(r.get("robust_accuracy")), "lower", True,
                "correct and unbroken by the ensemble", count=length("robust"), family="evasion")
METRICS = (ROBUST,)
_CLEAN = Metric("autoattack_clean_acc", "clean accuracy on the same inputs", "attack", "autoattack",
                lambda r: num(r.get("clean_accuracy")), unit="fraction", count=_INPUTS)
_PGD = Metric("autoattack_pgd_robust_acc", "robust accuracy under untargeted PGD alone", "attack",
              "autoattack", lambda r: num(r.get("pgd_robust_accuracy")), unit="fraction", count=_INPUTS)


def _setting(report: Builder) -> str | None:
    """One line naming the eps and attacks the stored records ran with."""
    seen = set()
    for row in report.data.primary("attack", "autoattack"):
        r = row.result or {}
        if isinstance(r.get("eps"), (int, float)):
            seen.add((float(r["eps"]), r.get("version"), tuple(r.get("attacks") or ())))
    parts = [f"eps = {eps * 255:g}/255, version {version} ({', '.join(attacks)})"
             for eps, version, attacks in sorted(seen, key=str)]
    return "; ".join(parts) or None


def _breakdown(report: Builder) -> tuple[list[str], list[list[Any]]]:
    """Per model, pooled over seeds: the inputs each attack broke first, in the attacks' order."""
    attacks: list[str] = []
    tally: dict[str, dict[str, int]] = {}
    for row in report.data.primary("attack", "autoattack"):
        r = row.result or {}
        broken, correct, robust = r.get("broken") or {}, r.get("correct"), r.get("robust")
        if not isinstance(correct, list) or not isinstance(robust, list):
            continue
        for name in r.get("attacks") or list(broken):
            if name not in attacks:
                attacks.append(name)
        t = tally.setdefault(row.model, {"seeds": 0, "n": 0, "clean": 0, "robust": 0})
        t["seeds"] += 1
        t["n"] += len(robust)
        t["clean"] += sum(not bool(c) for c in correct)
        t["robust"] += sum(bool(v) for v in robust)
        for name, count in broken.items():
            t[name] = t.get(name, 0) + int(count)
    rows = [[label, report.data.group.get(label, "?"), t["seeds"], t["n"], t["clean"]]
            + [t.get(name, 0) for name in attacks] + [t["robust"]]
            for label in report.data.order if (t := tally.get(label))]
    return attacks, rows


def _checks(report: Builder) -> list[list[Any]]:
    """One row per (model, seed) whose sanity checks fired: Square-only or PGD-only breaks."""
    rows = []
    for row in report.data.primary("attack", "autoattack"):
        r = row.result or {}
        if not r.get("gradient_masking"):
            continue
        reasons = []
        if r.get("square_only"):
            reasons.append("Square (black-box) broke inputs every white-box attack left robust")
        if r.get("pgd_only"):
            reasons.append("PGD broke inputs the ensemble left robust")
        rows.append([row.model, report.data.group.get(row.model, "?"), row.seed, r.get("square_only"),
                     r.get("pgd_only"), num(r.get("pgd_robust_accuracy")), num(r.get("robust_accuracy")),
                     "; ".join(reasons)])
    return rows


def autoattack(report: Builder) -> Section:
    """AutoAttack robust accuracy per model with its n and exact interval, the inputs each attack
    broke first, and the gradient-masking checks."""
    s = Section("AutoAttack robust accuracy (L-inf)")
    if not report.data.values(ROBUST):
        return s.missing(report.why_missing("attack", "autoattack"))
    setting = _setting(report)
    if setting:
        s.text(f"Setting: {setting}. An input is robust when the model classifies it correctly and no "
               "attack finds a misclassified point within eps; every seeded input counts in n.")
    report.per_model_table(s, "autoattack", "Robust accuracy (AutoAttack), clean accuracy and untargeted "
                           "PGD's robust accuracy on the same inputs; the last columns pool the inputs over "
                           "seeds with their exact 95% interval", [ROBUST, _CLEAN, _PGD])
    attacks, rows = _breakdown(report)
    if rows:
        report.table(s, Table("autoattack_breakdown", ["model", "group", "seeds", "inputs", "misclassified clean"]
                              + [f"broken first by {a}" for a in attacks] + ["robust"], rows,
                              "Inputs each attack broke first, in the order they run (pooled over seeds)"))
    checks = _checks(report)
    if checks:
        report.table(s, Table("autoattack_checks", ["model", "group", "seed", "Square-only breaks",
                                                    "PGD-only breaks", "PGD robust acc", "AutoAttack robust acc",
                                                    "why"], checks,
                              "Gradient masking suspected: a weaker or gradient-free attack beat the white-box ones"))
        s.text(f"**Gradient masking suspected** in {len(checks)} (model, seed) run(s): their robust accuracy "
               "may overstate robustness.")
    else:
        s.text("Sanity checks: Square broke no input the white-box attacks left robust, and untargeted PGD "
               "broke none the ensemble left robust (no sign of gradient masking).")
    fig = group_points(report.figs, report.data, [ROBUST], "autoattack_robust_acc",
                       "AutoAttack robust accuracy per model (points) and group means (lines)", "robust accuracy")
    if fig:
        s.blocks.append(fig)
    return s
