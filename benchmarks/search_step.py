"""Throughput and peak memory of one search iteration (n_step weight steps + one alpha step).

    python benchmarks/search_step.py                      # default size: C=16, 8 cells, batch 64
    python benchmarks/search_step.py --C 8 --layers 5 --batch-size 32 --steps 3

Rows: first_order / unrolled x n_step 1 / 5 x full / partial channels (PC-DARTS K=4), plus
DARTS's finite-difference n_step=1, on synthetic CIFAR-sized batches on the current device.
images/s counts the images an iteration consumes ((n_step + 1) x batch) per second of
iteration time. Each row runs in its own subprocess so that its peak memory is its own: on
CUDA torch.cuda.max_memory_allocated, on CPU the peak resident set size (getrusage) above the
RSS after setup. A row that exceeds --mem-limit-gb (address-space limit on CPU) reports OOM
instead of taking the machine down.

If NNI 3.0 is importable, NNI's DARTS strategy runs on its DARTS space (same width, cells and
batch) in the same way and the ratio is printed; otherwise the script says NNI is not
installed. The NNI path is best effort: NNI pins old Lightning and is not installed in
nasaudit's environment, so it has not been exercised here.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROWS = [  # (mode, n_step, partial_channels)
    ("first_order", 1, 1), ("first_order", 1, 4), ("first_order", 5, 1), ("first_order", 5, 4),
    ("unrolled", 1, 1), ("unrolled", 1, 4), ("unrolled", 5, 1), ("unrolled", 5, 4),
    ("finite_difference", 1, 1),
]


def _rss_mb() -> float:
    """Current resident set size in MiB (Linux /proc; falls back to the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(args: argparse.Namespace, mode: str, n_step: int, partial: int) -> dict:
    """Time `args.steps` iterations after `args.warmup` on one configuration (in this process)."""
    import torch

    from nasaudit.device import generator, prepare_model, resolve_device, seeded
    from nasaudit.search import Architect, Supernet
    from nasaudit.search_space import load_search_space

    device = resolve_device(args.device)
    with seeded(0):
        model = Supernet(load_search_space(args.space).ops, 10, C=args.C, layers=args.layers,
                         partial_channels=partial)
    model = prepare_model(model, device)
    arch = Architect(
        model, torch.optim.SGD(model.weight_parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4),
        torch.optim.Adam(model.arch_parameters(), lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3),
        mode=mode, n_step=n_step,
    )
    gen = generator(0, device)
    batches = [(torch.rand(args.batch_size, 3, 32, 32, generator=gen, device=device),
                torch.randint(0, 10, (args.batch_size,), generator=gen, device=device))
               for _ in range(n_step + 1)]
    _sync(device)
    setup_mb = _rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.warmup):
        arch.step(batches[:n_step], batches[-1])
    _sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        arch.step(batches[:n_step], batches[-1])
    _sync(device)
    seconds = (time.perf_counter() - start) / args.steps
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - setup_mb
    return {"mode": mode, "n_step": n_step, "partial": partial, "device": str(device),
            "s_per_iter": seconds, "images_per_s": (n_step + 1) * args.batch_size / seconds,
            "peak_mb": peak_mb}


def measure_nni(args: argparse.Namespace) -> dict | str:
    """NNI 3.0's first-order DARTS on its DARTS space; a dict of figures or why it did not run."""
    try:
        import nni  # noqa: F401
    except ImportError:
        return "NNI is not installed (pip install nni==3.0 pulls its own Lightning/torch pins)"
    try:  # best effort, see the module docstring
        import torch
        from nni.nas.evaluator.pytorch import Classification, DataLoader
        from nni.nas.experiment import NasExperiment
        from nni.nas.hub.pytorch import DARTS as DartsSpace
        from nni.nas.strategy import DARTS as DartsStrategy

        n = args.batch_size * (args.steps + args.warmup)
        data = torch.utils.data.TensorDataset(torch.rand(2 * n, 3, 32, 32), torch.randint(0, 10, (2 * n,)))
        space = DartsSpace(width=args.C, num_cells=args.layers, dataset="cifar")
        gpus = 1 if torch.cuda.is_available() and args.device != "cpu" else 0
        evaluator = Classification(
            learning_rate=0.025, weight_decay=3e-4, max_epochs=1, gpus=gpus,
            train_dataloaders=DataLoader(data, batch_size=args.batch_size),
            val_dataloaders=DataLoader(data, batch_size=args.batch_size),
            limit_train_batches=args.steps + args.warmup, num_sanity_val_steps=0,
            enable_progress_bar=False,
        )
        start = time.perf_counter()
        NasExperiment(space, evaluator, DartsStrategy()).run()
        seconds = (time.perf_counter() - start) / (args.steps + args.warmup)  # includes setup
        peak = (torch.cuda.max_memory_allocated() if gpus else
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20
        return {"s_per_iter": seconds, "images_per_s": 2 * args.batch_size / seconds, "peak_mb": peak}
    except Exception as exc:  # noqa: BLE001 - report, never crash the benchmark
        return f"NNI run failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"


def _child(args: argparse.Namespace, row: tuple[str, int, int]) -> dict:
    """Run one row in a subprocess with an address-space cap; returns its figures or an error."""
    cmd = [sys.executable, __file__, "--one", ":".join(map(str, row)), "--C", str(args.C),
           "--layers", str(args.layers), "--batch-size", str(args.batch_size), "--steps",
           str(args.steps), "--warmup", str(args.warmup), "--device", args.device, "--space", args.space,
           "--mem-limit-gb", str(args.mem_limit_gb)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    err = (proc.stderr.strip().splitlines() or ["killed"])[-1]
    oom = "memory" in err.lower() or proc.returncode in (-9, 137)
    return {"mode": row[0], "n_step": row[1], "partial": row[2],
            "error": f"OOM (> {args.mem_limit_gb} GB)" if oom else err[:120]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--C", type=int, default=16)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=2, help="timed iterations per row")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--space", default="darts")
    p.add_argument("--rows", default=None, help="comma list of MODE:N_STEP:K (default: all)")
    p.add_argument("--mem-limit-gb", type=float, default=12.0)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.one:  # child: one row, JSON on stdout
        mode, n_step, partial = args.one.split(":")
        if args.mem_limit_gb > 0 and args.device in ("cpu", "auto"):
            limit = int(args.mem_limit_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        print(json.dumps(measure(args, mode, int(n_step), int(partial))))
        return 0

    rows = ROWS if not args.rows else [
        (m, int(n), int(k)) for m, n, k in (r.split(":") for r in args.rows.split(","))]
    print(f"search step benchmark: C={args.C}, {args.layers} cells, batch {args.batch_size}, "
          f"{args.steps} timed iterations after {args.warmup} warm-up, device {args.device}, "
          f"threads {os.environ.get('OMP_NUM_THREADS', 'default')}")
    print(f"{'mode':<18}{'n_step':>7}{'K':>3}{'s/iter':>10}{'images/s':>10}{'peak MiB':>10}")
    results = []
    for row in rows:
        r = _child(args, row)
        results.append(r)
        if "error" in r:
            print(f"{r['mode']:<18}{r['n_step']:>7}{r['partial']:>3}  {r['error']}")
        else:
            print(f"{r['mode']:<18}{r['n_step']:>7}{r['partial']:>3}{r['s_per_iter']:>10.2f}"
                  f"{r['images_per_s']:>10.1f}{r['peak_mb']:>10.0f}", flush=True)
    nni = measure_nni(args)
    if isinstance(nni, str):
        print(nni)
    else:
        ours = next((r for r in results if (r.get("mode"), r.get("n_step"), r.get("partial"))
                     == ("first_order", 1, 1) and "error" not in r), None)
        print(f"NNI DARTS (first order): {nni['s_per_iter']:.2f} s/iter, "
              f"{nni['images_per_s']:.1f} images/s, peak {nni['peak_mb']:.0f} MiB")
        if ours:
            print(f"ratio nasaudit/NNI: throughput {ours['images_per_s'] / nni['images_per_s']:.2f}x, "
                  f"memory {ours['peak_mb'] / nni['peak_mb']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
