"""Run the smoke audit (experiments/smoke_cifar10.toml) and print wall time per stage, in total,
and peak memory.

    python benchmarks/audit.py [--config experiments/smoke_cifar10.toml] [--out DIR] [--device cpu]

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
    args = parser.parse_args(argv)

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


if __name__ == "__main__":
    sys.exit(main())
