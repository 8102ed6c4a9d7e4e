"""Engines execute a `Plan`: the same plan, the same units, the same records, on one process or
on a Ray cluster.

An engine is an *executor* with two operations, `submit(job)` and `wait() -> [(job, outcome)]`;
`drive` is the one loop every engine shares. It submits each unit once its dependencies are
done, and commits every outcome to results.sqlite the moment it arrives. The driver is the only
writer, so a kill -9 of the driver loses at most the units in flight, and a rerun skips the rest.
Where it records an outcome it also feeds the progress display (`nasaudit.audit.progress`),
so every engine shows the same one bar, or the same one line per unit.

* `local` (`engines/local.py`): units one after another in this process;
* `processes` (`engines/processes.py`): units on N worker processes of this machine, the
  cores split among them (small networks, which cannot keep several cores busy alone);
* `ray` (`engines/ray_engine.py`): units as Ray tasks with per-kind resources (GPU for
  training, a fraction of a GPU for the light attacks), retried when their worker dies.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from nasaudit.audit.plan import Plan, Scheduler
from nasaudit.audit.progress import AuditProgress, log, progress_mode, unit_labels
from nasaudit.audit.units import UnitJob, UnitOutcome, record_outcome, resolve_model_plan

ENGINE_NAMES = ("local", "processes", "ray")

__all__ = ["ENGINE_NAMES", "Executor", "drive", "log"]  # log: nasaudit.audit.progress.log


class Executor(Protocol):
    """What `drive` needs from an engine.

    `on_start`, set by `drive`, is called with a job when its unit actually begins (a queued
    unit has not): the progress display names the running unit. An engine that cannot tell
    calls it on submit.
    """

    on_start: Callable[[UnitJob], None] | None

    def submit(self, job: UnitJob) -> None:
        """Start (or queue) one unit."""

    def wait(self) -> list[tuple[UnitJob, UnitOutcome]]:
        """Block until at least one submitted unit has finished; return the finished ones."""


def drive(plan: Plan, store, executor: Executor, *, device: str, resume: bool, run_id: str,
          progress: bool | AuditProgress) -> Scheduler:
    """Run every unfinished unit of `plan` on `executor`, committing each outcome as it arrives.

    A failed unit is recorded with its error and the grid goes on; the units that need it are
    blocked (not run, not recorded: a rerun tries them again). Returns the final scheduler
    (`.done`, `.failed`, `.blocked`).

    progress: the display (`nasaudit.audit.progress.AuditProgress`), fed here, where outcomes
    are recorded, for every engine; True/False builds one (`progress_mode` picks bars or lines).
    """
    import torch

    scheduler = Scheduler(plan, store.done_keys())
    if not isinstance(progress, AuditProgress):
        done = sum(u.key in scheduler.done for u in plan.units)
        progress = AuditProgress(len(plan.units), done, mode=progress_mode(progress),
                                 labels=unit_labels(plan.units))
    display = progress
    executor.on_start = lambda job: display.start(job.unit)
    try:
        while True:
            for unit in scheduler.take_ready():
                model = resolve_model_plan(plan, unit, store)
                executor.submit(UnitJob(plan.config, unit, model, device, resume, run_id))
            if not scheduler.running:
                break
            for job, outcome in executor.wait():
                record_outcome(store, job.unit, job.model, outcome, torch.__version__)
                scheduler.finish(job.unit, outcome.status == "done")
                display.finish(job.unit, outcome)
    finally:
        executor.on_start = None
        display.close()
    return scheduler
