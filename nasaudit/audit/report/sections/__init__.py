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
    probes.gradvar,
    probes.contours,
    trace_leak.trace_leak,
    mitigation.mitigation,
    correlations.correlations,
    tradeoff.tradeoff,
)
