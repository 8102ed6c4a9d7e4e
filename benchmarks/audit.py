"""Run the smoke audit (experiments/smoke_cifar10.toml) and print wall time per stage, in total,
and peak memory; with --engine ray, against the local engine on the same machine.

    python benchmarks/audit.py [--config experiments/smoke_cifar10.toml] [--out DIR] [--device cpu]
    python benchmarks/audit.py --engine ray [--workers N | --address HOST:PORT] [--no-baseline]

With --engine ray the audit runs twice into fresh directories, first on the local engine and
then on Ray (a local cluster of N CPU/GPU slots, --workers, default 2), and the script prints both
wall times, Ray's overhead in percent and Ray's start-up cost (ray.init until the cluster is
up; also measured on its own before the audit, with a throw-away cluster). Peak memory is then
the driver's only (the tasks run in Ray's worker processes).

The output directory is fresh (a temporary one unless --out is given), so every unit really
runs. Stage times are the sums of the units' wall times as stored in results.sqlite; "other"
is planning, data loading and the report. Peak memory is the process's maximum resident set
size (and CUDA's peak allocation when run on a GPU).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "experiments" / "smoke_cifar10.toml"))
    parser.add_argument("--out", help="output directory (default: a fresh temporary one)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--progress", action="store_true", help="show the audit's progress bars")
    parser.add_argument("--engine", choices=("local", "ray"), default="local")
    parser.add_argument("--workers", type=int, default=2, help="Ray: slots of the local cluster (default 2)")
    parser.add_argument("--address", help="Ray: join this cluster instead of starting one")
    parser.add_argument("--no-baseline", action="store_true", help="Ray: skip the local-engine run")
    args = parser.parse_args(argv)
    if args.engine == "ray":
        return compare_engines(args)

    import torch

    from nasaudit.audit.config import load_config
    from nasaudit.audit.runner import run_audit
    from nasaudit.audit.store import Store

    with tempfile.TemporaryDirectory(prefix="nasaudit-bench-") as tmp:
        out = Path(args.out) if args.out else Path(tmp) / "audit"
        config = load_config(args.config).with_out_dir(out)
        started = time.perf_counter()
        summary = run_audit(config, device=args.device, progress=args.progress)
        total = time.perf_counter() - started
        with Store(out) as store:
            rows = store.units(status=None)
        per_stage: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
        per_unit: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
        for r in rows:
            per_stage[r.stage][0] += 1
            per_stage[r.stage][1] += r.seconds
            per_unit[f"{r.stage}/{r.name}"][0] += 1
            per_unit[f"{r.stage}/{r.name}"][1] += r.seconds

    device = rows[0].device if rows else args.device
    print(f"smoke audit {config.name}: {summary.total} units, {summary.failed} failed, device {device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'stage':<24}{'units':>6}{'seconds':>10}")
    for stage, (n, sec) in per_stage.items():
        print(f"{stage:<24}{n:>6}{sec:>10.1f}")
    print(f"{'other (plan, data, report)':<24}{'':>6}{total - sum(v[1] for v in per_stage.values()):>10.1f}")
    print(f"{'total':<24}{len(rows):>6}{total:>10.1f}")
    print()
    print(f"{'unit':<24}{'units':>6}{'seconds':>10}")
    for name, (n, sec) in sorted(per_unit.items(), key=lambda kv: -kv[1][1]):
        print(f"{name:<24}{n:>6}{sec:>10.1f}")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    print(f"\npeak memory: {peak_mb:.0f} MiB resident")
    if torch.cuda.is_available():
        print(f"peak CUDA memory: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    return 1 if summary.failed else 0


def ray_start_cost(workers: int) -> float:
    """Seconds from ray.init to a usable local cluster (one trivial task), then shut down."""
    import ray

    started = time.perf_counter()
    ray.init(num_cpus=workers, num_gpus=0, include_dashboard=False, logging_level="ERROR")
    ray.get(ray.remote(lambda: 1).remote())
    seconds = time.perf_counter() - started
    ray.shutdown()
    return seconds


def compare_engines(args: argparse.Namespace) -> int:
    """The smoke audit on the local engine and on Ray; prints both wall times and the overhead."""
    from nasaudit.audit.config import load_config
    from nasaudit.audit.runner import run_audit

    startup = None if args.address else ray_start_cost(args.workers)
    times: dict[str, float] = {}
    failed = 0
    with tempfile.TemporaryDirectory(prefix="nasaudit-bench-") as tmp:
        runs = [] if args.no_baseline else [("local", {"engine": "local"})]
        ray_kwargs = {"engine": "ray", "address": args.address} if args.address else {"engine": "ray", "workers": args.workers}
        runs.append(("ray", ray_kwargs))
        for name, kwargs in runs:
            config = load_config(args.config).with_out_dir(Path(tmp) / name)
            started = time.perf_counter()
            summary = run_audit(config, device=args.device, progress=args.progress, **kwargs)
            times[name] = time.perf_counter() - started
            failed += summary.failed
            print(f"{name:<6} engine: {summary.total} units, {summary.failed} failed, {times[name]:.1f} s wall"
                  + (f" (Ray start-up inside the run {summary.ray_start_seconds:.1f} s)"
                     if summary.ray_start_seconds is not None else ""))
    if startup is not None:
        print(f"Ray start-up on its own (ray.init + one task, {args.workers} slots): {startup:.1f} s")
    if "local" in times:
        overhead = 100 * (times["ray"] - times["local"]) / times["local"]
        print(f"Ray vs local: {overhead:+.1f} % wall time ({args.workers if not args.address else 'cluster'} slots)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
