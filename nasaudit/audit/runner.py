"""Run an audit: build the plan, skip what the store has, execute the rest on an engine.

* `nasaudit.audit.plan`: the unit graph, built up front from the config alone (`build_plan`),
  and `--dry-run`'s table (`describe_plan`);
* `nasaudit.audit.units`: doing one unit (`execute_unit`), the same code on every engine;
* `nasaudit.audit.engines`: executing a plan, `local` (this process), `processes` (worker
  processes of this machine) or `ray` (a cluster).

`run_audit` is the entry point. The driver (this process) is the only writer of
results.sqlite: it commits every unit's row the moment the unit's outcome arrives, so a kill -9
loses at most the units in flight, and a rerun skips every unit whose key is ``done``.
"""

from __future__ import annotations

import fcntl
import re
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from nasaudit.audit.config import AuditConfig
from nasaudit.audit.engines import ENGINE_NAMES, drive
from nasaudit.audit.plan import Plan, build_plan, describe_plan, validate_config
from nasaudit.audit.progress import AuditProgress, plan_line, progress_mode, unit_labels
from nasaudit.audit.store import DB_NAME, Store
from nasaudit.infra.errors import InputError
from nasaudit.infra.io import open_lock_file
from nasaudit.infra.limits import MAX_WORKERS, check_at_most

# Worker processes of the processes engine when --workers is not given.
DEFAULT_PROCESS_WORKERS = 2

__all__ = ["AuditSummary", "choose_engine", "dry_run", "run_audit", "validate_config"]


@dataclass
class AuditSummary:
    """What a run did: units in the plan, already done before, run now, failed, blocked (not
    run because a unit they need failed)."""

    total: int
    skipped: int
    ran: int
    failed: int
    seconds: float
    out_dir: Path
    report: Path | None = None
    blocked: int = 0
    engine: str = "local"
    hosts: list[str] = field(default_factory=list)
    ray_start_seconds: float | None = None


# What Ray's init accepts as a cluster address (checked here: Ray's own error is a traceback).
RAY_ADDRESS = re.compile(r"auto|local|(ray://)?[A-Za-z0-9.\-]+:\d{1,5}")


@contextmanager
def _exclusive(out_dir: Path) -> Iterator[None]:
    """Hold an advisory lock on OUTDIR: two audits must not write one database at once.

    flock is released by the kernel when the process dies, so a kill -9 never leaves it stuck.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    handle = open_lock_file(out_dir / ".audit.lock")  # held for the whole run
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(out_dir, "another nasaudit audit is running in this directory") from None
        yield
    finally:
        handle.close()


def choose_engine(config: AuditConfig, engine: str | None, address: str | None,
                  workers: int | None) -> tuple[str, str | None]:
    """(engine, address): flags win over [run]. `--workers N` > 1 alone means a local Ray
    cluster; with `--engine processes` it is the number of worker processes."""
    if workers is not None and workers < 1:
        raise InputError("--workers", "must be >= 1")
    if workers is not None:
        check_at_most(workers, MAX_WORKERS, "--workers", "--workers", limit_name="MAX_WORKERS")
    if workers is not None and workers > 1 and address is not None:
        raise InputError("--workers", "--workers starts a local Ray cluster and --address joins one; give one of them")
    if workers is not None and workers > 1 and engine == "local":
        raise InputError("--workers", "several workers run on the processes or Ray engine; drop --engine local")
    chosen = engine or ("ray" if workers is not None and workers > 1 else None) or config.run.engine or "local"
    if chosen not in ENGINE_NAMES:
        raise InputError("--engine", f"unknown engine {chosen!r}; choose {', '.join(ENGINE_NAMES)}")
    if chosen != "ray" and address is not None:
        raise InputError("--address", "names a Ray cluster; add --engine ray")
    if chosen != "ray":
        return chosen, None
    chosen_address = address or (config.run.address if workers is None or workers <= 1 else None)
    if chosen_address is not None and not RAY_ADDRESS.fullmatch(str(chosen_address)):
        raise InputError("--address" if address else f"{config.source}: [run] address",
                         f"{chosen_address!r} is not a Ray address: give auto, local, HOST:PORT or ray://HOST:PORT")
    return chosen, chosen_address


def _stored_statuses(out_dir: Path) -> dict[str, str]:
    if not (out_dir / DB_NAME).is_file():
        return {}
    with Store(out_dir, must_exist=True) as store:
        return store.statuses()


def dry_run(config: AuditConfig) -> str:
    """The plan as printed by ``--dry-run``: every unit, its stored status, resources and what
    it waits on. Reads the store if there is one; writes nothing."""
    validate_config(config)
    return describe_plan(build_plan(config), _stored_statuses(config.out_dir))


def _load_data(config: AuditConfig):
    from nasaudit.data import load_dataset

    ds = config.dataset
    return load_dataset(ds.name, ds.data_dir, download=ds.download, num_classes=ds.num_classes,
                        seed=config.seeds[0])


def run_audit(
    config: AuditConfig,
    *,
    device: str = "auto",
    resume: bool = False,
    workers: int | None = None,
    engine: str | None = None,
    address: str | None = None,
    progress: bool = True,
    report: bool = True,
) -> AuditSummary:
    """Run every unfinished unit of `config` on an engine, then write the report.

    Args:
        device: "auto" | "cpu" | "cuda" | "cuda:N" (on Ray, units with a GPU get their own).
        resume: continue an interrupted training or search from its own checkpoint rather than
            restarting it. Finished units are always skipped, with or without resume; a unit
            retried after its Ray worker died always resumes.
        workers: on the processes engine, the number of worker processes (default
            DEFAULT_PROCESS_WORKERS); otherwise N > 1 starts a local Ray cluster with N GPUs (N
            CPU slots without GPUs).
        engine: "local" | "processes" | "ray" (default: the config's [run].engine, else local).
        address: a Ray cluster to join ("auto" or "HOST:PORT"); default [run].address, else a
            new local cluster.
        progress: print the plan's size first, then one overall bar on a terminal, or one line
            per finished unit when stdout or stderr is not one (`nasaudit.audit.progress`).
    """
    started = time.time()
    out_dir = config.out_dir
    engine, address = choose_engine(config, engine, address, workers)
    validate_config(config)
    plan = build_plan(config)
    run_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime(started)) + "-" + uuid.uuid4().hex[:8]
    with _exclusive(out_dir):
        store = Store(out_dir)
        try:
            store.set_meta("config", {"name": config.name, "source": config.source, "raw": config.raw})
            before = store.done_keys()
            total = len(plan.units)
            skipped = sum(u.key in before for u in plan.units)
            history = store.get_meta("runs", [])
            history.append({"started": started, "device": device, "engine": engine, "address": address,
                            "workers": workers, "driver": socket.gethostname(), "run_id": run_id,
                            "argv": sys.argv})
            store.set_meta("runs", history)
            summary = AuditSummary(total, skipped, 0, 0, 0.0, out_dir, engine=engine)
            display = AuditProgress(total, skipped, mode=progress_mode(progress),
                                    labels=unit_labels(plan.units))
            display.announce(plan_line(plan, skipped, engine, _worker_count(engine, workers)))
            if skipped < total:
                _execute(plan, store, summary, engine=engine, address=address, workers=workers,
                         device=device, resume=resume, progress=display, run_id=run_id)
            history[-1].update(finished=time.time(), hosts=summary.hosts,
                               ray_start_seconds=summary.ray_start_seconds)
            store.set_meta("runs", history)
        finally:
            store.close()
    summary.seconds = time.time() - started
    if report:
        from nasaudit.audit.report import write_report

        summary.report = write_report(out_dir)
    return summary


def _worker_count(engine: str, workers: int | None) -> int | None:
    """Worker processes (or Ray slots) the plan line names: None for the local engine."""
    if engine == "processes":
        return workers or DEFAULT_PROCESS_WORKERS
    return workers if engine == "ray" and workers and workers > 1 else None


def _execute(plan: Plan, store: Store, summary: AuditSummary, *, engine: str, address: str | None,
             workers: int | None, device: str, resume: bool, progress: AuditProgress,
             run_id: str) -> None:
    """Run the plan's unfinished units on `engine`; fills in summary's counts."""
    before = set(store.done_keys())
    run = dict(device=device, resume=resume, run_id=run_id, progress=progress)
    summary.hosts = [socket.gethostname()]
    if engine == "processes":
        import torch

        from nasaudit.audit.engines.processes import ProcessExecutor, threads_per_worker

        count = _worker_count(engine, workers)
        threads = threads_per_worker(count, torch.get_num_threads())
        # The workers start (importing torch) while this process loads the data set.
        with ProcessExecutor(plan, workers=count, threads=threads) as executor:
            executor.share_data(_load_data(plan.config))
            scheduler = drive(plan, store, executor, **run)
    elif engine == "local":
        from nasaudit.audit.engines.local import LocalExecutor

        # Loaded once, up front: a missing data set is one clear error, not a failed unit per model.
        # Its units draw their own transient bars only below the audit's overall one.
        executor = LocalExecutor(plan, _load_data(plan.config), progress=progress.bars)
        scheduler = drive(plan, store, executor, **run)
    else:
        from nasaudit.audit.engines.ray_engine import RayCluster, RayExecutor, check_shared_storage

        data = _load_data(plan.config)
        with RayCluster(address, workers, device) as cluster:
            summary.ray_start_seconds = cluster.start_seconds
            summary.hosts = check_shared_storage(plan.config.out_dir, run_id)
            executor = RayExecutor(plan, data, gpus=cluster.gpus(), device=device)
            scheduler = drive(plan, store, executor, **run)
    summary.ran = len(scheduler.done - before)
    summary.failed = len(scheduler.failed)
    summary.blocked = len(scheduler.blocked)


