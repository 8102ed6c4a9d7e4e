"""The report's sections, one module per family, in the order the report shows them.

Each entry is a function `section(builder) -> Section`. To add a section, write a module here
with such a function and list it below; nothing else needs to change.
"""

from __future__ import annotations

from collections.abc import Callable

from nasaudit.audit.report.builder import Builder
from nasaudit.audit.report.document import Section
from nasaudit.audit.report.sections import (
    accuracy,
    common_inputs,
    correlations,
    evasion,
    headline,
    membership,
    mitigation,
    model_reuse,
    poisoning,
    probes,
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
    common_inputs.common_inputs,
    poisoning.poisoning,
    poisoning.backdoor,
    stealing.knockoff,
    membership.membership,
    model_reuse.model_reuse,
    probes.gradvar,
    probes.contours,
    trace_leak.trace_leak,
    mitigation.mitigation,
    correlations.correlations,
    tradeoff.tradeoff,
)
