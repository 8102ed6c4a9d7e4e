"""The processes engine: units on N worker processes of this machine, the cores split among them.

For small networks (the demo's, digits-size models) one unit cannot keep two cores busy
(docs/BENCHMARKS.md times the demo both ways). Two one-thread processes therefore finish the
grid sooner than one two-thread process,
with no cluster to start. The driver stays the only writer of results.sqlite (`drive` commits
each outcome as it arrives), exactly as with the other engines.

The workers start at once and import the unit modules while the driver loads the data set; the
driver then sends it to each worker once (not with every unit). Each worker keeps its own
`UnitContext`, so the trained network of a (model, seed) is loaded once for a row of its units. A worker
that dies (killed, out of memory) breaks the pool: a new pool starts, and the units then in
flight run again (training resumes from its last epoch checkpoint), up to MAX_RETRIES times.
"""

from __future__ import annotations

import heapq
import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor
from concurrent.futures import wait as wait_futures
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from nasaudit.audit.plan import Plan
from nasaudit.audit.units import UnitContext, UnitJob, UnitOutcome, execute_unit

# Which ready unit a free worker takes first: the ones that unblock others (searches, training),
# then the long retraining attacks, then the light units. Long units first keeps the end of the
# grid from being one long unit on one worker while the others idle.
MAX_RETRIES = 3  # per unit, when the worker running it (or another one) dies
KIND_PRIORITY = {"search": 0, "train": 1, "retrain": 2, "light": 3, "analyze": 4}

# The one context of a worker process. A process pool hands its initializer's work to the
# tasks only through the process itself, so this lives at module level in the *worker*; the
# driver never sets it.
_WORKER_CONTEXT: list[UnitContext] = []


def threads_per_worker(workers: int, threads: int) -> int:
    """Intra-op threads for each of `workers` processes sharing `threads` (at least 1)."""
    return max(1, threads // max(1, workers))


def _die_with_driver(driver_pid: int) -> None:
    """Ask the kernel (Linux) to SIGKILL this worker when the driver that spawned it dies, also
    by kill -9: otherwise the pool's workers, and the resource tracker they keep open, outlive
    it. Elsewhere a no-op (the pool still stops them on any orderly exit)."""
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != driver_pid:  # the driver died before the request took effect
        os._exit(1)


def _start_worker(threads: int, driver_pid: int) -> None:
    """A worker's initializer: dies with the driver, sets its threads and context, and imports
    the unit modules (while the driver loads the data set)."""
    _die_with_driver(driver_pid)
    import torch

    import nasaudit.attacks  # noqa: F401 - importing is the point: before any unit is ready
    import nasaudit.probes  # noqa: F401

    torch.set_num_threads(threads)
    _WORKER_CONTEXT.append(UnitContext())


def _receive_data(data: Any) -> None:
    if _WORKER_CONTEXT[0].data is None:
        _WORKER_CONTEXT[0].data = data


def _run_in_worker(job: UnitJob) -> UnitOutcome:
    return execute_unit(job, _WORKER_CONTEXT[0])


class ProcessExecutor:
    """Runs submitted units on `workers` spawned processes of `threads` torch threads each.

    Submitted units wait in this process until a worker is free, then go out by KIND_PRIORITY
    (ties: plan order). Use as a context manager: leaving it (normally, or on Ctrl-C) stops the
    workers.
    """

    def __init__(self, plan: Plan, *, workers: int, threads: int):
        if workers < 1 or threads < 1:
            raise ValueError(f"workers and threads must be >= 1, got {workers} and {threads}")
        self.plan, self.data = plan, None
        self.workers, self.threads = workers, threads
        self.index = {u.key: i for i, u in enumerate(plan.units)}
        self.queue: list[tuple[int, int, UnitJob, float]] = []
        self.inflight: dict[Future, tuple[UnitJob, float]] = {}
        self.retries: dict[str, int] = {}
        self.on_start = None  # set by `drive`: called as a unit goes out to a worker
        self.pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        # spawn, not fork: the driver has torch's thread pools and open SQLite handles.
        pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_start_worker, initargs=(self.threads, os.getpid()))
        for _ in range(self.workers):  # each submit starts one worker: all start now
            pool.submit(_receive_data, self.data)
        return pool

    def share_data(self, data: Any) -> None:
        """Hand the loaded data set to the workers (one message per worker; a worker that gets
        none loads the data set from the config when its first unit needs it)."""
        self.data = data
        for _ in range(self.workers):
            self.pool.submit(_receive_data, data)

    def __enter__(self) -> ProcessExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, job: UnitJob) -> None:
        """Queue one unit; it goes to the pool when a worker is free."""
        priority = KIND_PRIORITY.get(job.unit.resource_kind, len(KIND_PRIORITY))
        heapq.heappush(self.queue, (priority, self.index[job.unit.key], job, time.time()))

    def _dispatch(self) -> None:
        while self.queue and len(self.inflight) < self.workers:
            _, _, job, submitted = heapq.heappop(self.queue)
            try:
                future = self.pool.submit(_run_in_worker, job)
            except BrokenProcessPool:
                self.pool = self._new_pool()
                future = self.pool.submit(_run_in_worker, job)
            self.inflight[future] = (job, submitted)
            if self.on_start is not None:
                self.on_start(job)

    def wait(self) -> list[tuple[UnitJob, UnitOutcome]]:
        """Block until units end; may return none when a dead worker's units were requeued."""
        self._dispatch()
        done, _ = wait_futures(list(self.inflight), return_when=FIRST_COMPLETED)
        finished = []
        broken = False
        for future in done:
            job, submitted = self.inflight.pop(future)
            try:
                finished.append((job, future.result()))
            except BrokenProcessPool:
                broken = True
                self._retry_or_fail(job, submitted, finished)
            except Exception as exc:  # noqa: BLE001 - e.g. a record that cannot be pickled back
                finished.append((job, self._failure(job, submitted, f"{type(exc).__name__}: {exc}"[:300])))
        if broken:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = self._new_pool()
        return finished

    def _retry_or_fail(self, job: UnitJob, submitted: float, finished: list) -> None:
        # A dead worker breaks the whole pool and every unit then in flight with it; which one
        # was killed is unknown, so each is requeued (it resumes from its own checkpoint, as a
        # Ray retry does) up to MAX_RETRIES times.
        key = job.unit.key
        self.retries[key] = self.retries.get(key, 0) + 1
        if self.retries[key] <= MAX_RETRIES:
            self.submit(job)
        else:
            finished.append((job, self._failure(job, submitted, f"a worker process died while this unit "
                                                f"ran, {MAX_RETRIES + 1} times (killed or out of memory)")))

    @staticmethod
    def _failure(job: UnitJob, submitted: float, error: str) -> UnitOutcome:
        return UnitOutcome("failed", None, error, submitted, time.time(), job.device, os.uname().nodename, -1)
