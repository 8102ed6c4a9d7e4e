"""Model-reuse attacks (Ji et al., CCS 2018): a poisoned feature extractor under a user's host."""

from __future__ import annotations

from nasaudit.audit.report.builder import Builder
from nasaudit.audit.report.document import Section
from nasaudit.audit.report.figures import group_points
from nasaudit.audit.report.metrics import METRIC_BY_KEY, Metric, num


def _field(key: str, title: str) -> Metric:
    return Metric(f"model_reuse_{key}", title, "attack", "model_reuse", lambda r: num(r.get(key)))


def model_reuse(report: Builder) -> Section:
    s = Section("Model reuse: poisoned primitive, host misclassifies the targets (Ji et al.)")
    asr = METRIC_BY_KEY["model_reuse_asr"]
    if not report.data.values(asr):
        return s.missing(report.why_missing("attack", "model_reuse"))
    effect = [asr, _field("clean_asr", "clean-host target rate"),
              _field("asr_after_finetune", "ASR after fine-tuning"),
              _field("clean_asr_after_finetune", "clean-host rate after fine-tuning")]
    evasive = [_field("clean_accuracy_drop", "clean accuracy drop"),
               _field("changed_predictions", "changed predictions"),
               _field("changed_predictions_floor", "changed by the host's seed alone"),
               _field("finetune_accuracy_drop", "accuracy drop after fine-tuning")]
    size = [_field("param_l0", "L0 (fraction changed)"), _field("param_l2", "relative L2"),
            _field("param_linf", "relative L-inf"), _field("targets_in_region", "targets in region")]
    report.per_model_table(s, "model_reuse_effect", "Effectiveness and elasticity: the targets' rate of "
                           "the target class, hosts on the poisoned and on the clean primitive", effect)
    report.per_model_table(s, "model_reuse_evasive", "Evasiveness on the non-target test inputs "
                           "(clean host minus poisoned host)", evasive)
    report.per_model_table(s, "model_reuse_size", "Perturbation size, relative to the primitive's weights",
                           size)
    fig = group_points(report.figs, report.data, [asr], "model_reuse_asr",
                       "Model-reuse ASR per model and group", "ASR")
    if fig:
        s.blocks.append(fig)
    s.text("Both hosts are trained with the same seed, split and schedule on data the adversary never "
           "reads; ASR counts targets (test inputs whose true class is not the target) classified as "
           "the target class. Unless the audit sets joint=true, each target has its own poisoned "
           "primitive and host (the paper's setting), and the evasiveness and size rows are means over "
           "those primitives. The study reports no NAS-vs-manual direction for this attack; the "
           "headline row only shows the difference.")
    return s
