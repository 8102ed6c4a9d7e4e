"""The report's sections, one module per family, in the order the report shows them.

Each entry is a function `section(builder) -> Section`. A module that reports a result also
declares `METRICS`, its rows of the headline (a tuple of `Metric`); `METRICS` here gathers them
in the report's order, after the clean accuracy. To add a section, write a module here with
such a function (and its `METRICS`) and list the function below; nothing else needs to change.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from nasaudit.audit.report.builder import Builder
from nasaudit.audit.report.document import Section
from nasaudit.audit.report.metrics import Metric
from nasaudit.audit.report.sections import (
    accuracy,
    autoattack,
    common_inputs,
    correlations,
    defences,
    evasion,
    headline,
    membership,
    mitigation,
    model_reuse,
    poisoning,
    probes,
    rmia,
    run,
    stealing,
    trace_leak,
    tradeoff,
)

SECTIONS: tuple[Callable[[Builder], Section], ...] = (
    headline.summary,
    run.overview,
    headline.headline,
    accuracy.clean_accuracy,
    accuracy.cell_metrics,
    evasion.evasion,
    evasion.asr_vs_eps,
    evasion.inputs_broken,
    autoattack.autoattack,
    common_inputs.common_inputs,
    poisoning.poisoning,
    poisoning.backdoor,
    defences.defences,
    stealing.knockoff,
    membership.membership,
    rmia.rmia,
    model_reuse.model_reuse,
    trace_leak.trace_leak,
    probes.gradvar,
    probes.contours,
    mitigation.mitigation,
    correlations.correlations,
    tradeoff.tradeoff,
)


def _gather_metrics(sections: tuple[Callable[[Builder], Section], ...]) -> tuple[Metric, ...]:
    """Every section module's `METRICS`, each module once, in the order of `sections`."""
    modules = dict.fromkeys(sys.modules[section.__module__] for section in sections)
    metrics = tuple(m for module in modules for m in getattr(module, "METRICS", ()))
    keys = [m.key for m in metrics]
    duplicated = sorted({k for k in keys if keys.count(k) > 1})
    if duplicated:  # a programming error in a section module, caught on import
        raise ValueError(f"report metrics declared twice: {', '.join(duplicated)}")
    return metrics


# Every headline metric, in the forest plot's order; by key.
METRICS: tuple[Metric, ...] = _gather_metrics(SECTIONS)
METRIC_BY_KEY: dict[str, Metric] = {m.key: m for m in METRICS}
