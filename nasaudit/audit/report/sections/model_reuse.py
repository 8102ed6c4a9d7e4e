"""Model-reuse attacks (Ji et al., CCS 2018): a poisoned feature extractor under a user's host."""

from __future__ import annotations

from typing import Any

from nasaudit.audit.report.builder import Builder
from nasaudit.audit.report.document import Section, Table
from nasaudit.audit.report.figures import group_points
from nasaudit.audit.report.metrics import Metric, length, num

# The study cites the model-reuse attack (its ref. 30) but measures no direction for it.
ASR = Metric("model_reuse_asr", "model-reuse ASR (host on the poisoned primitive)", "attack", "model_reuse",
             lambda r: num(r.get("asr")), None, True, count=length("targets"))
METRICS = (ASR,)
_TARGETS = length("targets")


def _field(key: str, title: str, count: Any = None) -> Metric:
    return Metric(f"model_reuse_{key}", title, "attack", "model_reuse", lambda r: num(r.get(key)), count=count)


def _excess(record: dict) -> float | None:
    """Changed predictions minus the host's reseed floor (<= 0: evasive in Ji et al.'s sense)."""
    changed, floor = num(record.get("changed_predictions")), num(record.get("changed_predictions_floor"))
    return None if changed is None or floor is None else changed - floor


def _setting(report: Builder) -> str | None:
    """One line naming the tasks and the adversary the stored records ran with."""
    seen = set()
    for row in report.data.primary("attack", "model_reuse"):
        r = row.result or {}
        if r.get("task") is None:
            continue
        seen.add((r.get("task"), tuple(r.get("primitive_classes") or ()), tuple(r.get("host_classes") or ()),
                  r.get("primitive_source"), r.get("region")))
    parts = []
    for task, prim, host, source, region in sorted(seen, key=str):
        if task == "transfer" and prim and host:
            what = (f"primitive trained on classes {prim[0]}-{prim[-1]} ({source}), host trained for classes "
                    f"{host[0]}-{host[-1]}")
        else:
            what = "the host relearns the victim's own classes on the victim"
        parts.append(f"task {task}: {what}; region {region}")
    return "; ".join(parts) or None


def _within_floor(report: Builder) -> list[list[Any]]:
    """Per model: the seeds whose changed predictions are within the reseed floor, k/n."""
    counts: dict[str, list[int]] = {}
    for row in report.data.primary("attack", "model_reuse"):
        excess = _excess(row.result or {})
        if excess is not None:
            tally = counts.setdefault(row.model, [0, 0])
            tally[0] += excess <= 0
            tally[1] += 1
    return [[label, report.data.group.get(label, "?"), f"{counts[label][0]}/{counts[label][1]}"]
            for label in report.data.order if label in counts]


def model_reuse(report: Builder) -> Section:
    s = Section("Model reuse: poisoned primitive, host misclassifies the targets (Ji et al.)")
    asr = ASR
    if not report.data.values(asr):
        return s.missing(report.why_missing("attack", "model_reuse"))
    setting = _setting(report)
    if setting:
        s.text(f"Setting: {setting}.")
    effect = [asr, _field("clean_asr", "clean-host target rate", _TARGETS),
              _field("asr_after_finetune", "ASR after fine-tuning", _TARGETS),
              _field("clean_asr_after_finetune", "clean-host rate after fine-tuning", _TARGETS)]
    evasive = [_field("changed_predictions", "changed predictions"),
               _field("changed_predictions_floor", "changed by the host's seed alone (floor)"),
               Metric("model_reuse_changed_excess", "changed minus floor", "attack", "model_reuse", _excess),
               _field("clean_accuracy_drop", "clean accuracy drop"),
               _field("finetune_accuracy_drop", "accuracy drop after fine-tuning")]
    size = [_field("param_l0", "L0 (fraction changed)"), _field("param_l2", "relative L2"),
            _field("param_linf", "relative L-inf"), _field("targets_in_region", "targets in region")]
    report.per_model_table(s, "model_reuse_effect", "Effectiveness and elasticity: the targets' rate of "
                           "the target class, hosts on the poisoned and on the clean primitive; the last "
                           "columns pool the targets over seeds with their exact 95% interval", effect)
    report.per_model_table(s, "model_reuse_evasive", "Evasiveness on the non-target host-task test inputs: "
                           "predictions the poisoned primitive changes against those a reseeded clean host "
                           "changes (clean host minus poisoned host for the accuracy drops)", evasive)
    within = _within_floor(report)
    if within:
        report.table(s, Table("model_reuse_within_floor", ["model", "group", "seeds within the floor"], within,
                              "Seeds whose changed predictions are no more than the host's reseed floor"))
    report.per_model_table(s, "model_reuse_size", "Perturbation size, relative to the primitive's weights",
                           size)
    fig = group_points(report.figs, report.data, [asr], "model_reuse_asr",
                       "Model-reuse ASR per model and group", "ASR")
    if fig:
        s.blocks.append(fig)
    s.text("Both hosts are trained with the same seed, split and schedule on data the adversary never "
           "reads; ASR counts targets (host-task test inputs whose true class is not the target) "
           "classified as the target class. The attack is evasive in Ji et al.'s sense where changed "
           "minus floor is at most 0: the poisoned primitive then changes no more of the host's other "
           "predictions than retraining the host with another seed does. Unless the audit sets "
           "joint=true, each target has its own poisoned primitive and host (the paper's setting), and "
           "the evasiveness and size rows are means over those primitives. The study reports no "
           "NAS-vs-manual direction for this attack; the headline row only shows the difference.")
    return s
