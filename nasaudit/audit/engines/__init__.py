"""Engines execute a `Plan`: the same plan, the same units, the same records, on one process or
on a Ray cluster.

An engine is an *executor* with two operations, `submit(job)` and `wait() -> [(job, outcome)]`;
`drive` is the one loop every engine shares. It submits each unit once its dependencies are
done, and commits every outcome to results.sqlite the moment it arrives. The driver is the only
writer, so a kill -9 of the driver loses at most the units in flight, and a rerun skips the rest.

* `local` (`engines/local.py`): units one after another in this process;
* `processes` (`engines/processes.py`): units on N worker processes of this machine, the
  cores split among them (small networks, which cannot keep several cores busy alone);
* `ray` (`engines/ray_engine.py`): units as Ray tasks with per-kind resources (GPU for
  training, a fraction of a GPU for the light attacks), retried when their worker dies.
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import Protocol

from nasaudit.audit.plan import STAGES, Plan, Scheduler, Unit
from nasaudit.audit.units import UnitJob, UnitOutcome, prepare_model, record_outcome

ENGINE_NAMES = ("local", "processes", "ray")


class Executor(Protocol):
    """What `drive` needs from an engine."""

    def submit(self, job: UnitJob) -> None:
        """Start (or queue) one unit."""

    def wait(self) -> list[tuple[UnitJob, UnitOutcome]]:
        """Block until at least one submitted unit has finished; return the finished ones."""


class Progress:
    """One overall bar (units done / total, with ETA) and one bar per stage present."""

    def __init__(self, plan: Plan, done: set[str], enabled: bool):
        from tqdm.auto import tqdm

        per_stage = Counter(u.stage for u in plan.units)
        done_stage = Counter(u.stage for u in plan.units if u.key in done)
        self.overall = tqdm(total=len(plan.units), initial=sum(done_stage.values()), desc="audit",
                            unit="unit", position=0, disable=not enabled, dynamic_ncols=True)
        self.stages = {
            stage: tqdm(total=per_stage[stage], initial=done_stage[stage], desc=f"  {stage}",
                        unit="unit", position=i + 1, disable=not enabled, dynamic_ncols=True)
            for i, stage in enumerate(s for s in STAGES if per_stage[s])
        }

    def advance(self, unit: Unit) -> None:
        """Count one finished unit."""
        self.overall.update(1)
        if unit.stage in self.stages:
            self.stages[unit.stage].update(1)

    def note(self, text: str) -> None:
        """Show what is running now next to the overall bar."""
        self.overall.set_postfix_str(text[:60], refresh=True)

    def close(self) -> None:
        for bar in (*self.stages.values(), self.overall):
            bar.close()


def log(message: str) -> None:
    """One line on stderr that does not tear the progress bars."""
    from tqdm.auto import tqdm

    tqdm.write(f"nasaudit audit: {message}", file=sys.stderr)


def drive(plan: Plan, store, executor: Executor, *, device: str, resume: bool, run_id: str,
          progress: bool) -> Scheduler:
    """Run every unfinished unit of `plan` on `executor`, committing each outcome as it arrives.

    A failed unit is recorded with its error and the grid goes on; the units that need it are
    blocked (not run, not recorded: a rerun tries them again). Returns the final scheduler
    (`.done`, `.failed`, `.blocked`).
    """
    import torch

    scheduler = Scheduler(plan, store.done_keys())
    bars = Progress(plan, scheduler.done, progress)
    try:
        while True:
            for unit in scheduler.take_ready():
                model = prepare_model(plan, unit, store)
                executor.submit(UnitJob(plan.config, unit, model, device, resume, run_id))
            if not scheduler.running:
                break
            for job, outcome in executor.wait():
                record_outcome(store, job.unit, job.model, outcome, torch.__version__)
                scheduler.finish(job.unit, outcome.status == "done")
                if outcome.status == "done":
                    bars.advance(job.unit)
                    bars.note(f"{job.unit.model} {job.unit.stage} {job.unit.name}")
                else:
                    log(f"{job.unit.model} {job.unit.stage} {job.unit.name} failed: {outcome.error}")
    finally:
        bars.close()
    return scheduler
