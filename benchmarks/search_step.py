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

If NNI is importable, NNI 3.0's DARTS strategy (first order, through NasExperiment) runs on its
DARTS space at the same width, cells and batch, in its own subprocess measured the same way (see
measure_nni), and the ratio to our first_order n_step=1 K=1 row is printed; otherwise the
script says NNI is not installed. NNI is not a nasaudit dependency (it needs pytorch-lightning
2.0.x, which needs setuptools < 81 for pkg_resources); an environment where this path runs:

    python3 -m venv /tmp/nni-venv && . /tmp/nni-venv/bin/activate
    echo "torch==2.13.0" > /tmp/c.txt     # keep the torch build nasaudit uses
    pip install -c /tmp/c.txt torch==2.13.0 "nni==3.0" "pytorch-lightning==2.0.9" \
        "torchmetrics<1.3" "setuptools>=77.0.3,<81"
    pip install -c /tmp/c.txt -e .
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
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


def nni_status() -> str | None:
    """None if an `nni` package is installed, else why the NNI comparison is skipped (a broken
    install, e.g. without pytorch-lightning, shows up as "NNI run failed: ..." from the child)."""
    import importlib.util

    if importlib.util.find_spec("nni") is None:
        return ("NNI is not installed (pip install nni==3.0 plus pytorch-lightning 2.0.x, in a "
                "separate environment: see the module docstring)")
    return None


def measure_nni(args: argparse.Namespace) -> dict:
    """NNI 3.0's first-order DARTS on its DARTS space, timed like `measure` (run in a child).

    The space is `nni.nas.hub.pytorch.DARTS(width=C, num_cells=layers, dataset="cifar")`, searched
    by `nni.nas.strategy.DARTS` through `NasExperiment` (one-shot: sequential engine, no NNI
    manager). One Lightning training step of its `DartsLightningModule` is one alpha step on a
    `val` batch then one clipped weight step on a `train` batch, so it consumes 2 x batch images,
    like our first_order n_step=1 row; the optimisers are set to ours (SGD lr 0.025 momentum 0.9
    wd 3e-4, clip 5; Adam 3e-4 (0.5, 0.999) wd 1e-3 for alpha, NNI's default). A Lightning
    callback times `args.steps` steps after `args.warmup` (Lightning's loop and data loading
    between steps included) and takes the peak RSS above the RSS at `on_train_start` (after
    the supernet and optimisers are built), as `measure` does for ours.
    """
    import functools
    import tempfile

    # NNI writes an experiment manifest under ~/nni-experiments (resolved when nni is imported)
    # and logs under the experiment's working directory: keep both in a throw-away directory.
    workdir = tempfile.mkdtemp(prefix="nasaudit-nni-")
    os.environ["HOME"] = workdir

    import pytorch_lightning as pl
    import torch
    from nni.nas.evaluator.pytorch import Classification, DataLoader
    from nni.nas.experiment import NasExperiment
    from nni.nas.hub.pytorch import DARTS as DartsSpace
    from nni.nas.strategy import DARTS as DartsStrategy

    from nasaudit.device import generator, resolve_device, seeded

    device = resolve_device(args.device)
    steps, warmup = args.steps, args.warmup
    figures: dict = {}

    class Timer(pl.Callback):
        def on_train_start(self, trainer, module):
            _sync(device)
            figures["setup_mb"] = _rss_mb()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx == warmup:
                _sync(device)
                figures["start"] = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if batch_idx == warmup + steps - 1:
                _sync(device)
                figures["seconds"] = (time.perf_counter() - figures["start"]) / steps
                figures["peak_mb"] = (
                    torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else
                    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - figures["setup_mb"])

    n = args.batch_size * (warmup + steps)
    gen = generator(0)
    train = torch.utils.data.TensorDataset(torch.rand(n, 3, 32, 32, generator=gen),
                                           torch.randint(0, 10, (n,), generator=gen))
    val = torch.utils.data.TensorDataset(torch.rand(n, 3, 32, 32, generator=gen),
                                         torch.randint(0, 10, (n,), generator=gen))
    try:
        with seeded(0):
            space = DartsSpace(width=args.C, num_cells=args.layers, dataset="cifar")
            evaluator = Classification(
                learning_rate=0.025, weight_decay=3e-4, num_classes=10,
                optimizer=functools.partial(torch.optim.SGD, momentum=0.9),
                train_dataloaders=DataLoader(train, batch_size=args.batch_size),
                val_dataloaders=DataLoader(val, batch_size=args.batch_size),
                max_epochs=1, limit_train_batches=warmup + steps, limit_val_batches=0,
                num_sanity_val_steps=0, accelerator="gpu" if device.type == "cuda" else "cpu",
                devices=1, callbacks=[Timer()], logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, default_root_dir=workdir,
            )
            exp = NasExperiment(space, evaluator, DartsStrategy(gradient_clip_val=5.0))
            exp.config.experiment_working_directory = workdir
            try:
                exp.run()
            finally:
                exp.stop()  # else atexit stops it, writing a checkpoint into the removed workdir
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if "seconds" not in figures:
        raise RuntimeError(f"NNI ran fewer than {warmup + steps} training steps")
    return {"mode": "nni_darts", "device": str(device), "s_per_iter": figures["seconds"],
            "images_per_s": 2 * args.batch_size / figures["seconds"], "peak_mb": figures["peak_mb"]}


def _child(args: argparse.Namespace, row: tuple[str, int, int] | str) -> dict:
    """Run one row ("nni" for NNI's) in a subprocess with an address-space cap; figures or error."""
    one = row if isinstance(row, str) else ":".join(map(str, row))
    cmd = [sys.executable, __file__, "--one", one, "--C", str(args.C),
           "--layers", str(args.layers), "--batch-size", str(args.batch_size), "--steps",
           str(args.steps), "--warmup", str(args.warmup), "--device", args.device, "--space", args.space,
           "--mem-limit-gb", str(args.mem_limit_gb)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    err = (proc.stderr.strip().splitlines() or ["killed"])[-1]
    oom = "memory" in err.lower() or proc.returncode in (-9, 137)
    error = f"OOM (> {args.mem_limit_gb} GB)" if oom else err[:160]
    if isinstance(row, str):
        return {"mode": row, "error": error}
    return {"mode": row[0], "n_step": row[1], "partial": row[2], "error": error}


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
        if args.mem_limit_gb > 0 and args.device in ("cpu", "auto"):
            limit = int(args.mem_limit_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        if args.one == "nni":
            print(json.dumps(measure_nni(args)))
            return 0
        mode, n_step, partial = args.one.split(":")
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
    status = nni_status()
    if status:
        print(status)
        return 0
    nni = _child(args, "nni")
    if "error" in nni:
        print(f"NNI run failed: {nni['error']}")
        return 0
    print(f"{'NNI DARTS (1st order)':<28}{nni['s_per_iter']:>10.2f}{nni['images_per_s']:>10.1f}"
          f"{nni['peak_mb']:>10.0f}")
    ours = next((r for r in results if (r.get("mode"), r.get("n_step"), r.get("partial"))
                 == ("first_order", 1, 1) and "error" not in r), None)
    if ours:
        print(f"ratio nasaudit first_order 1 K=1 / NNI: throughput "
              f"{ours['images_per_s'] / nni['images_per_s']:.2f}x, "
              f"memory {ours['peak_mb'] / nni['peak_mb']:.2f}x")
    else:
        print("no ratio: the first_order:1:1 row was not run or failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
