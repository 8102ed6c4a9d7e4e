"""The state every report section shares: the data, the figure maker and the tables collected for CSV."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nasaudit.audit.report.data import AuditData, mean_of
from nasaudit.audit.report.document import Section, Table
from nasaudit.audit.report.figures import Figures
from nasaudit.audit.report.metrics import MANUAL, NAS, Metric


class Builder:
    """Builds the report's sections from an AuditData."""

    def __init__(self, data: AuditData, out_dir: Path, metrics: tuple[Metric, ...] = ()):
        self.data = data
        self.metrics = metrics  # the headline's metrics, in order (`sections.METRICS`)
        self.metric_by_key = {m.key: m for m in metrics}
        self.out_dir = out_dir
        self.figs = Figures(out_dir)
        self.tables: list[Table] = []

    # -- helpers ---------------------------------------------------------------------------
    def table(self, section: Section, t: Table) -> None:
        self.tables.append(t)
        section.blocks.append(t)

    def why_missing(self, kind: str, name: str, stage: str | None = None) -> str:
        """One line saying why a section has no data."""
        stage = stage or kind
        if not self.data.configured(kind, name):
            return f"the config runs no `{name}` {kind}."
        failed = self.data.failures_for(stage, name)
        if failed:
            return f"every `{name}` unit failed ({len(failed)}); first error: {failed[0].error.splitlines()[-1][:200]}"
        return f"`{name}` is configured but no unit has finished yet (resume the audit)."

    def per_model_table(self, section: Section, name: str, caption: str, metrics: list[Metric]) -> None:
        """One row per model (mean over seeds of each metric), then one mean row per group."""
        rows = []
        seeds = [self.data.values(m) for m in metrics]
        means = [{k: float(np.mean(list(v.values()))) for k, v in per.items()} for per in seeds]
        for label in self.data.order:
            if not any(label in m for m in means):
                continue
            row: list[Any] = [label, self.data.group.get(label, "?")]
            row += [mm.get(label) for mm in means]
            row.append(max((len(s.get(label, {})) for s in seeds), default=0))
            rows.append(row)
        for g in (NAS, MANUAL):
            members = self.data.labels(g)
            if any(r[0] in members for r in rows):
                rows.append([f"mean ({g})", g] + [
                    mean_of([mm[k] for k in members if k in mm]) for mm in means] + [""])
        rated = [m for m in metrics if m.count is not None]
        if rated:
            for row in rows:
                row += [self.pooled_rate(m, row[0]) for m in rated]
        self.table(section, Table(name, ["model", "group"] + [m.title for m in metrics] + ["seeds"]
                                  + [f"{m.title}: successes/n, 95% CI" for m in rated], rows, caption))

    def pooled_rate(self, metric: Metric, label: str) -> str | None:
        """A model's rate pooled over its seeds as "k/n, low-high" (exact 95% interval), flagged
        when it rests on few inputs; None for a group-mean row or a record without its n."""
        from nasaudit.rates import Rate

        k = n = 0
        for row in self.data.primary(metric.stage, metric.name):
            counted = metric.rate(row.result) if row.model == label else None
            if counted is not None:
                k, n = k + counted[0], n + counted[1]
        if not n:
            return None
        rate = Rate(k, n)
        low, high = rate.interval
        return f"{k}/{n}, {low:.2f}-{high:.2f}" + (" [few inputs]" if rate.few else "")

    # -- sections --------------------------------------------------------------------------
