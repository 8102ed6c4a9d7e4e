"""The Ray engine: every unit a Ray task, scheduled by the resources its kind declares.

Design (see experiments/cluster/README.md):

* **One writer.** Tasks never open results.sqlite. A task returns its unit's record, and the
  driver (`engines.drive`) commits it when it arrives.
* **Shared run directory.** Checkpoints, TensorBoard logs, probe arrays and attack work files
  are written by the tasks under the run directory, which must be on storage every node sees
  (NFS, a shared volume). The engine checks this before any unit runs: one tiny task per node
  reads a token the driver wrote, and a node that cannot see it stops the audit with one line.
  (The alternative, shipping every checkpoint through the object store to the driver, would
  copy each network twice and still leave the retraining attacks' work files node-local.)
* **Data through the object store.** The driver loads the data set once (a missing data set is
  one clear error) and `ray.put`s it; tasks get it from there, so worker nodes need no copy.
* **Resources per unit kind** (`[run.resources]`): a whole GPU for searches, training and the
  retraining attacks; a fraction for the light units. On a cluster without GPUs the GPU part
  of every request is dropped and units run on CPUs, `cpu` cores each.
* **Faults.** A task whose worker dies is retried by Ray (`max_retries`); the retry finds the
  attempt marker of the first try and resumes training from the last epoch checkpoint. If the
  driver dies, Ray ends its tasks, and rerunning the command skips every finished unit.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from nasaudit.audit.plan import Plan
from nasaudit.audit.units import UnitContext, UnitJob, UnitOutcome, execute_unit
from nasaudit.infra.errors import InputError, first_line

INSTALL_HINT = 'the Ray engine needs Ray: pip install "nasaudit[ray]"'
# Environment the tasks inherit from the driver (thread counts: two torch processes on two
# cores must not each start a thread per core).
_PASSED_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NASAUDIT_DEBUG")
MAX_RETRIES = 3  # per task, when its worker process (or node) dies


def import_ray():
    """The `ray` module, or InputError with the install command when it is missing."""
    try:
        import ray
    except ImportError:
        raise InputError("--engine ray", INSTALL_HINT) from None
    return ray


def task_env() -> dict[str, str]:
    """env_vars of the tasks' runtime_env: the driver's thread settings, passed on."""
    return {k: os.environ[k] for k in _PASSED_ENV if k in os.environ}


class RayCluster:
    """Connect to (or start) a Ray cluster for one audit; shut down only what it started.

    address None: start a local cluster (with `workers`: that many GPU slots on a GPU machine,
    that many CPU slots on a machine without GPUs); "auto" or "HOST:PORT": join a running one.
    An already initialised Ray (a test, a notebook) is used as it is.
    """

    def __init__(self, address: str | None = None, workers: int | None = None, device: str = "auto"):
        self.address, self.workers, self.device = address, workers, device
        self.started = False
        self.start_seconds = 0.0

    def __enter__(self) -> RayCluster:
        ray = import_ray()
        t0 = time.perf_counter()
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"logging_level": "WARNING", "log_to_driver": True}
            if self.address is None:
                kwargs["include_dashboard"] = False
                if self.workers is not None:
                    kwargs.update(_local_slots(self.workers, self.device))
            try:
                ray.init(address=self.address, **kwargs)
            except ConnectionError as exc:
                raise InputError("--address", f"cannot reach a Ray cluster at {self.address}: {exc}") from None
            self.started = True
        self.start_seconds = time.perf_counter() - t0
        return self

    def __exit__(self, *exc: object) -> None:
        if self.started:
            import ray

            ray.shutdown()

    def gpus(self) -> float:
        """GPUs in the whole cluster (0 on CPU-only clusters)."""
        import ray

        return float(ray.cluster_resources().get("GPU", 0))


def _local_slots(workers: int, device: str) -> dict[str, Any]:
    """ray.init arguments for `--workers N`: N GPUs, or N CPU slots without GPUs."""
    import torch

    wants_cuda = device == "auto" or device.startswith("cuda")
    available = torch.cuda.device_count() if wants_cuda else 0
    if device.startswith("cuda") and available < workers:
        raise InputError("--workers", f"{workers} workers need {workers} GPUs; {available} visible")
    if available:
        return {"num_gpus": min(workers, available), "num_cpus": max(os.cpu_count() or 1, workers)}
    return {"num_gpus": 0, "num_cpus": workers}


def check_shared_storage(out_dir: Path, run_id: str) -> list[str]:
    """Hosts of the cluster's alive nodes; InputError if one cannot read `out_dir`.

    The driver writes a token under the run directory; one task pinned to each node reads it.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from nasaudit.infra.io import atomic_write_text

    token_path = out_dir / "work" / ".attempts" / run_id / "shared-storage-token"
    token = uuid.uuid4().hex
    atomic_write_text(token_path, token)
    probe = ray.remote(num_cpus=0, max_retries=0)(_read_token)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False),
                          runtime_env={"env_vars": task_env()}).remote(str(token_path)) for n in nodes]
    reads = [(host, node.get("NodeManagerAddress", "?"), seen)
             for node, (host, seen) in zip(nodes, ray.get(refs), strict=True)]
    token_path.unlink(missing_ok=True)
    return verify_token_reads(out_dir, token, reads)


def verify_token_reads(out_dir: Path, token: str, reads: list[tuple[str, str, str | None]]) -> list[str]:
    """Sorted host names when every node read `token` back; else InputError naming a node that
    did not. `reads`: (host, node address, what the node read or None)."""
    for host, address, seen in reads:
        if seen != token:
            raise InputError(out_dir, f"the run directory is not visible from Ray node {host} ({address}); "
                                      "it must be on storage every node sees (NFS, a shared volume)")
    return sorted({host for host, _, _ in reads})


def _read_token(path: str) -> tuple[str, str | None]:
    try:
        return socket.gethostname(), Path(path).read_text()
    except OSError:
        return socket.gethostname(), None


def _run_unit_task(job: UnitJob, data: Any) -> UnitOutcome:
    """The Ray task: one unit in a fresh context (data resolved from the object store)."""
    return execute_unit(job, UnitContext(data))


class RayExecutor:
    """Submits units as Ray tasks with their kind's resources; `wait` returns finished ones."""

    def __init__(self, plan: Plan, data: Any, *, gpus: float, device: str):
        ray = import_ray()
        self.ray = ray
        self.plan = plan
        self.data_ref = ray.put(data)
        self.use_gpus = gpus > 0 and device != "cpu"
        self.device = device
        self.remote = ray.remote(max_retries=MAX_RETRIES, retry_exceptions=False)(_run_unit_task)
        self.env = {"env_vars": task_env()}
        self.inflight: dict[Any, tuple[UnitJob, float]] = {}
        # Ray does not say when a task leaves its queue: a unit counts as started when submitted.
        self.on_start = None

    def options_for(self, job: UnitJob) -> dict[str, Any]:
        """num_gpus / num_cpus of the unit's kind (the GPU part dropped without GPUs)."""
        request = self.plan.resources(job.unit)
        gpus = request["GPU"] if self.use_gpus else 0.0
        return {"num_gpus": gpus, "num_cpus": request["CPU"], "runtime_env": self.env,
                "name": f"{job.unit.model}:{job.unit.stage}:{job.unit.name}"}

    def submit(self, job: UnitJob) -> None:
        """Start one unit as a Ray task."""
        from dataclasses import replace

        options = self.options_for(job)
        # A task without a GPU runs on the CPU even when its node has GPUs (Ray hides none).
        device = self.device if options["num_gpus"] else "cpu"
        if device.startswith("cuda:"):
            device = "cuda"  # Ray sets CUDA_VISIBLE_DEVICES: the task's GPU is cuda:0
        job = replace(job, device=device)
        ref = self.remote.options(**options).remote(job, self.data_ref)
        self.inflight[ref] = (job, time.time())
        if self.on_start is not None:
            self.on_start(job)

    def wait(self) -> list[tuple[UnitJob, UnitOutcome]]:
        """Block until a task ends; a task that died more than MAX_RETRIES times is a failure."""
        ready, _ = self.ray.wait(list(self.inflight), num_returns=1)
        finished = []
        for ref in ready:
            job, submitted = self.inflight.pop(ref)
            try:
                outcome = self.ray.get(ref)
            except self.ray.exceptions.RayError as exc:
                first = first_line(exc)
                outcome = UnitOutcome("failed", None, f"{type(exc).__name__}: {first[:300]} "
                                      f"(after {MAX_RETRIES} retries)", submitted, time.time(),
                                      job.device, "?", -1)
            finished.append((job, outcome))
        return finished
