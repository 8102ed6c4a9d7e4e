"""The local engine: every unit in this process, one at a time, in plan order.

Among the units that are ready it always runs the one earliest in the plan, so a (model, seed)
is finished before the next one starts and its trained network is loaded once for all its
attacks and probes.
"""

from __future__ import annotations

import heapq

from nasaudit.audit.plan import Plan
from nasaudit.audit.units import UnitContext, UnitJob, UnitOutcome, execute_unit


class LocalExecutor:
    """Runs submitted units synchronously in `wait`, earliest in the plan first."""

    def __init__(self, plan: Plan, data=None, progress: bool = False):
        self.index = {u.key: i for i, u in enumerate(plan.units)}
        self.queue: list[tuple[int, UnitJob]] = []
        self.context = UnitContext(data)
        self.progress = progress

    def submit(self, job: UnitJob) -> None:
        """Queue one unit."""
        heapq.heappush(self.queue, (self.index[job.unit.key], job))

    def wait(self) -> list[tuple[UnitJob, UnitOutcome]]:
        """Run the earliest queued unit; returns it with its outcome."""
        _, job = heapq.heappop(self.queue)
        if self.progress != job.progress:
            from dataclasses import replace

            job = replace(job, progress=self.progress)
        return [(job, execute_unit(job, self.context))]
