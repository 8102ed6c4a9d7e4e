"""The local engine: every unit in this process, one at a time, in plan order.

Among the units that are ready it always runs the one earliest in the plan, so a (model, seed)
is finished before the next one starts and its trained network is loaded once for all its
attacks and probes.
"""

from __future__ import annotations

import heapq
from dataclasses import replace

from nasaudit.audit.plan import Plan
from nasaudit.audit.units import UnitContext, UnitJob, UnitOutcome, execute_unit

# The stages whose loops draw transient bars (leave=False: training, search, probes), shown
# below the audit's overall bar while the unit runs and erased when it ends. The attacks' bars
# stay on screen when they close, so each attack would leave one more bar stacked under the
# audit's: they run without.
INNER_BAR_STAGES = frozenset({"search", "train", "probe", "probe_init"})


class LocalExecutor:
    """Runs submitted units synchronously in `wait`, earliest in the plan first.

    progress: let the running unit draw its own transient bar (only when the audit draws bars
    on a terminal: `nasaudit.audit.progress.AuditProgress.bars`).
    """

    def __init__(self, plan: Plan, data=None, progress: bool = False):
        self.index = {u.key: i for i, u in enumerate(plan.units)}
        self.queue: list[tuple[int, UnitJob]] = []
        self.context = UnitContext(data)
        self.progress = progress
        self.on_start = None  # set by `drive`: called as a unit begins

    def submit(self, job: UnitJob) -> None:
        """Queue one unit."""
        heapq.heappush(self.queue, (self.index[job.unit.key], job))

    def wait(self) -> list[tuple[UnitJob, UnitOutcome]]:
        """Run the earliest queued unit; returns it with its outcome."""
        _, job = heapq.heappop(self.queue)
        inner = self.progress and job.unit.stage in INNER_BAR_STAGES
        if inner != job.progress:
            job = replace(job, progress=inner)
        if self.on_start is not None:
            self.on_start(job)
        return [(job, execute_unit(job, self.context))]
