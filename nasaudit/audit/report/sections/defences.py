"""Backdoor defences: Neural Cleanse detection and fine-pruning removal, read from the backdoor records."""

from __future__ import annotations

from typing import Any

from nasaudit.audit.report.builder import Builder
from nasaudit.audit.report.document import Section, Table
from nasaudit.audit.report.metrics import Metric, num


def _field(key: str, title: str, *, vulnerability: bool = False, unit: str = "") -> Metric:
    return Metric(f"backdoor_{key}", title, "attack", "backdoor", lambda r: num(r.get(key)), None,
                  vulnerability, unit=unit)


# Beyond the study (no direction): are NAS backdoors harder to detect or to remove?
ANOMALY = Metric("backdoor_anomaly_index", "Neural Cleanse anomaly index of the backdoored model", "attack",
                 "backdoor", lambda r: num(r.get("anomaly_index")), None, False, "above 2: detected",
                 unit="MADs")
ASR_AFTER_PRUNING = Metric("backdoor_asr_after_pruning", "backdoor ASR after fine-pruning's pruning", "attack",
                           "backdoor", lambda r: num(r.get("asr_after_pruning")), None, True, unit="fraction")
METRICS = (ANOMALY, ASR_AFTER_PRUNING)

_TABLE_METRICS: tuple[Metric, ...] = (
    ANOMALY,
    _field("clean_anomaly_index", "Neural Cleanse anomaly index, clean model", unit="MADs"),
    Metric("backdoor_asr_before_defence", "ASR before the defence", "attack", "backdoor",
           lambda r: num(r.get("asr")) if r.get("asr_after_pruning") is not None else None, unit="fraction"),
    ASR_AFTER_PRUNING,
    _field("clean_accuracy_after_pruning", "clean accuracy after pruning", unit="fraction"),
    _field("asr_after_finetune", "ASR after pruning and fine-tuning", unit="fraction"),
    _field("clean_accuracy_after_finetune", "clean accuracy after pruning and fine-tuning", unit="fraction"),
)


def _detections(report: Builder) -> list[list[Any]]:
    """Per model: seeds where Neural Cleanse flags the backdoored model, flags the backdoor's own
    target class, and flags the clean model (a false positive), each as k/n."""
    tally: dict[str, dict[str, list[int]]] = {}
    for row in report.data.primary("attack", "backdoor"):
        r = row.result or {}
        if r.get("detected") is None:
            continue
        t = tally.setdefault(row.model, {"bd": [0, 0], "target": [0, 0], "clean": [0, 0]})
        t["bd"][0] += bool(r["detected"])
        t["bd"][1] += 1
        t["target"][0] += r.get("flagged_class") is not None and r.get("flagged_class") == r.get("target_class")
        t["target"][1] += 1
        if r.get("clean_detected") is not None:
            t["clean"][0] += bool(r["clean_detected"])
            t["clean"][1] += 1

    def frac(pair: list[int]) -> str:
        return f"{pair[0]}/{pair[1]}" if pair[1] else "-"

    return [[label, report.data.group.get(label, "?"), frac(tally[label]["bd"]), frac(tally[label]["target"]),
             frac(tally[label]["clean"])] for label in report.data.order if label in tally]


def _settings(report: Builder) -> str | None:
    """One line with the defence settings of the primary backdoor runs."""
    seen = set()
    for row in report.data.primary("attack", "backdoor"):
        p, r = row.params or {}, row.result or {}
        if not r.get("defences"):
            continue
        seen.add((tuple(r["defences"]), r.get("defence_inputs"), p.get("nc_steps"), p.get("nc_schedule"),
                  p.get("prune_max_drop"), p.get("prune_max_fraction"), p.get("finetune_epochs")))
    parts = [f"{', '.join(d)} on {n} clean images; Neural Cleanse {steps} steps per class ({sched} L1 schedule); "
             f"pruning while clean accuracy drops at most {drop}, at most {frac} of the channels; "
             f"{epochs} fine-tuning epochs" for d, n, steps, sched, drop, frac, epochs in sorted(seen, key=str)]
    return "; ".join(parts) or None


def defences(report: Builder) -> Section:
    """Per model: Neural Cleanse detections (k of n seeds, on the backdoored and the clean model),
    anomaly indices, and ASR and clean accuracy after fine-pruning."""
    s = Section("Backdoor defences: Neural Cleanse and fine-pruning")
    if not report.data.results("attack", "backdoor"):
        return s.missing(report.why_missing("attack", "backdoor"))
    if not any(report.data.values(m) for m in _TABLE_METRICS):
        return s.missing("the backdoor runs ran no defence (their parameter defences is none, or they "
                         "predate the defences).")
    setting = _settings(report)
    if setting:
        s.text(f"Setting: {setting}.")
    rows = _detections(report)
    if rows:
        report.table(s, Table("backdoor_detection", ["model", "group", "backdoored model detected",
                                                     "target class flagged", "clean model detected"],
                              rows, "Neural Cleanse detections, seeds out of seeds"))
    report.per_model_table(s, "backdoor_defences", "Neural Cleanse anomaly index (smallest-norm class) and "
                           "test ASR and clean accuracy after fine-pruning", list(_TABLE_METRICS))
    s.text("Neural Cleanse reverse-engineers, for every class, the smallest mask and pattern that send clean "
           "images to it; the model is flagged when the smallest mask's L1 norm lies more than 2 MADs (x1.4826) "
           "below the median over classes. A detection on the clean model is a false positive. Fine-pruning "
           "prunes the penultimate channels least active on the defender's clean images while their accuracy "
           "stays within the bound, then fine-tunes on those images; ASR and accuracy are on the test set. "
           "The study measures no defence, so no NAS/manual direction is expected.")
    return s
