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

Our rows use the optimised supernet (shared ReLU per edge, channels_last); `--reference` adds
the plain per-op NCHW path (`Supernet(fast=False)`, the numerics oracle of
tests/test_search_speed_numerics.py) as an extra first_order row. GFLOP/s: the FLOPs of one
iteration are counted once (torch.utils.flop_counter, in the warm-up) with the convolution
backward counted per gradient actually computed (2 x out elements x weight elements per output
channel; torch's own formula overstates grouped, i.e. depthwise, convs ~C_in-fold).
`--repeat R` runs the compared rows (ours, reference, NNI) R times, alternating, and prints
medians, so that a busy machine slows both sides alike. `--monitor` adds the TensorBoard cost:
one log event (scalars + gradient-variance probe) and one epoch-end image render, timed on the
same supernet, and the fraction of a search's wall time they take at the defaults.

If NNI is importable (in this interpreter, or in `--nni-python`), NNI 3.0's DARTS strategy (first order, through NasExperiment) runs on its
DARTS space at the same width, cells and batch, in its own subprocess measured the same way (see
measure_nni), and the ratio to our first_order n_step=1 K=1 row is printed; otherwise the
script says NNI is not installed. NNI is not a nasaudit dependency (it needs pytorch-lightning
2.0.x, which needs setuptools < 81 for pkg_resources); an environment where this path runs:

    python3 -m venv /tmp/nni-venv && . /tmp/nni-venv/bin/activate
    echo "torch==2.13.0" > /tmp/c.txt     # keep the torch build nasaudit uses
    pip install -c /tmp/c.txt torch==2.13.0 "nni==3.0" "pytorch-lightning==2.0.9" \
        "torchmetrics<1.3" "setuptools>=77.0.3,<81"
    pip install -c /tmp/c.txt -e .

or, sharing this environment's torch (what /work/nni-venv on the dev machine does): a venv whose
site-packages holds a .pth naming the project venv's site-packages and the checkout, with only
nni, pytorch-lightning, torchmetrics and setuptools installed in it; then pass
`--nni-python /path/to/nni-venv/bin/python`.
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


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation,
                         transposed, _output_padding, _groups, output_mask, out_shape=None,
                         **kwargs) -> int:
    """FLOPs of aten.convolution_backward: each of grad_input and grad_weight (when computed)
    costs what the forward does, 2 x (output elements) x (weight elements per output channel);
    for a grouped conv the weight is [C_out, C_in / groups, kh, kw], which this counts right."""
    import math

    out = x_shape if transposed else grad_out_shape
    per_gradient = 2 * math.prod(out) * math.prod(w_shape[1:])
    return per_gradient * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def count_flops(fn) -> int:
    """FLOPs of one call of fn() (torch's counter, convolution backward counted correctly)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False,
                              custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flops})
    with counter:
        fn()
    return counter.get_total_flops()


def build(args: argparse.Namespace, mode: str, n_step: int, partial: int, fast: bool = True):
    """(device, supernet, architect, n_step + 1 synthetic batches) for one configuration."""
    import torch

    from nasaudit.infra.device import generator, prepare_model, resolve_device, seeded
    from nasaudit.search import Architect, Supernet
    from nasaudit.search_space import load_search_space

    device = resolve_device(args.device)
    with seeded(0):
        model = Supernet(load_search_space(args.space).ops, 10, C=args.C, layers=args.layers,
                         partial_channels=partial, fast=fast)
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
    return device, model, arch, batches


def measure(args: argparse.Namespace, mode: str, n_step: int, partial: int, fast: bool = True) -> dict:
    """Time `args.steps` iterations after `args.warmup` on one configuration (in this process)."""
    import torch

    device, model, arch, batches = build(args, mode, n_step, partial, fast)
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
    # Counted after the peak is taken: the counter's dispatch mode keeps more tensors alive.
    flops = count_flops(lambda: arch.step(batches[:n_step], batches[-1]))
    return {"mode": mode if fast else f"{mode}_ref", "n_step": n_step, "partial": partial,
            "device": str(device), "batch_size": args.batch_size, "s_per_iter": seconds,
            "images_per_s": (n_step + 1) * args.batch_size / seconds, "peak_mb": peak_mb,
            "gflop_per_iter": flops / 1e9, "gflop_per_s": flops / 1e9 / seconds}


def measure_monitor(args: argparse.Namespace) -> dict:
    """Seconds of one search iteration, of one TensorBoard log event without images (scalars,
    alpha, gradient variance on a `args.probe_samples` probe batch) and of one epoch-end image
    render, on the first_order n_step=1 K=1 supernet (in this process)."""
    import statistics
    import tempfile

    from nasaudit.search.monitor import SearchMonitor

    device, model, arch, batches = build(args, "first_order", 1, 1)
    probe_x, probe_y = batches[0][0][: args.probe_samples], batches[0][1][: args.probe_samples]
    arch.step(batches[:1], batches[-1])
    metrics = {"loss/train": 2.3, "loss/val": 2.3, "acc/train": 0.1, "acc/val": 0.1}

    def timed(fn) -> float:
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        return time.perf_counter() - start

    with tempfile.TemporaryDirectory(prefix="nasaudit-monitor-") as tmp:
        monitor = SearchMonitor(tmp, model, probe_x=probe_x, probe_y=probe_y)
        genotype = model.genotype()
        monitor.log(0, metrics, genotype, images=True)  # warm-up: imports, first vmap trace
        it, log, images = [], [], []
        for i in range(args.steps):
            it.append(timed(lambda: arch.step(batches[:1], batches[-1])))
            log.append(timed(lambda i=i: monitor.log(i + 1, metrics, model.genotype())))
            images.append(timed(lambda i=i: monitor.log(i + 1, metrics, model.genotype(),
                                                    drawing=f"{tmp}/cells.png")) - log[-1])
        monitor.close()
    return {"mode": "monitor", "s_per_iter": statistics.median(it),
            "s_per_log": statistics.median(log), "s_per_images": max(statistics.median(images), 0.0)}


def nni_status(python: str) -> str | None:
    """None if `python` can import an `nni` package, else why the NNI comparison is skipped (a
    broken install, e.g. without pytorch-lightning, shows up as "NNI run failed: ..." from the
    child)."""
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('nni') is None)"
    try:
        found = subprocess.run([python, "-c", probe], capture_output=True).returncode == 0
    except OSError as exc:
        return f"NNI interpreter {python} does not run: {exc}"
    if not found:
        return (f"NNI is not installed for {python} (pip install nni==3.0 plus pytorch-lightning "
                "2.0.x, in a separate environment: see the module docstring; --nni-python)")
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

    from nasaudit.infra.device import generator, resolve_device, seeded

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
    """Run one row in a subprocess with an address-space cap; figures or error. row: a
    (mode, n_step, K) tuple, "ref" (first_order 1 1 on the reference path), "nni" (NNI's, in
    --nni-python) or "monitor"."""
    one = row if isinstance(row, str) else ":".join(map(str, row))
    python = args.nni_python if row == "nni" else sys.executable
    cmd = [python, __file__, "--one", one, "--C", str(args.C),
           "--layers", str(args.layers), "--batch-size", str(args.batch_size), "--steps",
           str(args.steps), "--warmup", str(args.warmup), "--device", args.device, "--space", args.space,
           "--mem-limit-gb", str(args.mem_limit_gb), "--probe-samples", str(args.probe_samples)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    err = (proc.stderr.strip().splitlines() or ["killed"])[-1]
    oom = "memory" in err.lower() or proc.returncode in (-9, 137)
    error = f"OOM (> {args.mem_limit_gb} GB)" if oom else err[:160]
    if isinstance(row, str):
        return {"mode": row, "n_step": 1, "partial": 1, "error": error}
    return {"mode": row[0], "n_step": row[1], "partial": row[2], "error": error}


def _print_row(r: dict, label: str | None = None) -> None:
    label = label or f"{r['mode']:<18}{r.get('n_step', 1):>7}{r.get('partial', 1):>3}"
    if "error" in r:
        print(f"{label:<28}  {r['error']}", flush=True)
        return
    gflops = f"{r['gflop_per_s']:>9.1f}" if "gflop_per_s" in r else f"{'-':>9}"
    print(f"{label:<28}{r['s_per_iter']:>10.2f}{r['images_per_s']:>10.1f}{r['peak_mb']:>10.0f}"
          f"{gflops}", flush=True)


def _median_row(runs: list[dict]) -> dict:
    """Median of each figure over the runs that did not fail (the first error otherwise)."""
    import statistics

    good = [r for r in runs if "error" not in r]
    if not good:
        return runs[0]
    out = dict(good[0])
    for k in ("s_per_iter", "images_per_s", "peak_mb", "gflop_per_s"):
        if k in out:
            out[k] = statistics.median(r[k] for r in good)
    out["runs"] = len(good)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--C", type=int, default=16)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=2, help="timed iterations per row")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations before the timed ones")
    p.add_argument("--device", default="auto")
    p.add_argument("--space", default="darts")
    p.add_argument("--rows", default=None,
                   help="comma list of MODE:N_STEP:K (default: all; 'none' for the comparison only)")
    p.add_argument("--repeat", type=int, default=1,
                   help="alternating runs of the compared rows (ours, --reference, NNI); medians")
    p.add_argument("--reference", action="store_true",
                   help="also time the plain per-op NCHW supernet (first_order 1 1)")
    p.add_argument("--monitor", action="store_true", help="also time TensorBoard monitoring")
    p.add_argument("--log-every", type=int, default=50, help="search default, for --monitor")
    p.add_argument("--iters-per-epoch", type=int, default=391,
                   help="iterations per search epoch, for --monitor (CIFAR-10, 25k/25k split, batch 64)")
    p.add_argument("--probe-samples", type=int, default=32, help="gradient-variance probe batch")
    p.add_argument("--nni-python", default=sys.executable,
                   help="interpreter of an environment with NNI 3.0 (default: this one)")
    p.add_argument("--mem-limit-gb", type=float, default=12.0)
    p.add_argument("--json", default=None, help="write the side-by-side figures to this file")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.warmup = max(args.warmup, 1)

    if args.one:  # child: one row, JSON on stdout
        if args.mem_limit_gb > 0 and args.device in ("cpu", "auto"):
            limit = int(args.mem_limit_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        if args.one == "nni":
            print(json.dumps(measure_nni(args)))
            return 0
        if args.one == "monitor":
            print(json.dumps(measure_monitor(args)))
            return 0
        if args.one == "ref":
            print(json.dumps(measure(args, "first_order", 1, 1, fast=False)))
            return 0
        mode, n_step, partial = args.one.split(":")
        print(json.dumps(measure(args, mode, int(n_step), int(partial))))
        return 0

    if args.rows == "none":
        rows = []
    else:
        rows = ROWS if not args.rows else [
            (m, int(n), int(k)) for m, n, k in (r.split(":") for r in args.rows.split(","))]
    print(f"search step benchmark: C={args.C}, {args.layers} cells, batch {args.batch_size}, "
          f"{args.steps} timed iterations after {args.warmup} warm-up, device {args.device}, "
          f"threads {os.environ.get('OMP_NUM_THREADS', 'default')}")
    header = f"{'mode':<18}{'n_step':>7}{'K':>3}{'s/iter':>10}{'images/s':>10}{'peak MiB':>10}{'GFLOP/s':>9}"
    print(header)
    for row in rows:
        _print_row(_child(args, row))

    status = nni_status(args.nni_python)
    compared = ["ours"] + (["ref"] if args.reference else []) + ([] if status else ["nni"])
    runs: dict[str, list[dict]] = {name: [] for name in compared}
    for _ in range(args.repeat):  # alternating, so that load changes hit every side alike
        for name in compared:
            runs[name].append(_child(args, ("first_order", 1, 1) if name == "ours" else name))
    med = {name: _median_row(r) for name, r in runs.items()}
    print(f"side by side, first_order n_step=1 K=1, median of {args.repeat} alternating run(s):")
    print(header)
    _print_row(med["ours"], "nasaudit (optimised)")
    if "ref" in med:
        _print_row(med["ref"], "nasaudit (reference path)")
    if status:
        print(status)
    else:
        _print_row(med["nni"], "NNI 3.0 DARTS (1st order)")
    ours = med["ours"]
    for name, label in (("ref", "reference path"), ("nni", "NNI")):
        other = med.get(name)
        if other is None or "error" in other or "error" in ours:
            continue
        print(f"ratio nasaudit / {label}: throughput {ours['images_per_s'] / other['images_per_s']:.2f}x, "
              f"memory {ours['peak_mb'] / other['peak_mb']:.2f}x")
    if "nni" in med and "error" in med["nni"]:
        print(f"NNI run failed: {med['nni']['error']}")
    figures = {"compared": med, "nni_status": status}

    if args.monitor:
        m = _child(args, "monitor")
        figures["monitor"] = m
        if "error" in m:
            print(f"monitor: failed: {m['error']}")
            m = None
    if args.json:
        from nasaudit.infra.io import atomic_write_json

        atomic_write_json(args.json, figures)
    if args.monitor and m is not None:
        per_iter = m["s_per_log"] / args.log_every + m["s_per_images"] / args.iters_per_epoch
        print(f"monitoring: one iteration {m['s_per_iter']:.2f} s; one log event (scalars, alpha, "
              f"gradvar on {args.probe_samples} probes) {m['s_per_log']:.2f} s; epoch-end images "
              f"{m['s_per_images']:.2f} s")
        print(f"monitoring cost at --log-every {args.log_every}, {args.iters_per_epoch} iterations/epoch: "
              f"{100 * per_iter / (m['s_per_iter'] + per_iter):.1f}% of search wall time "
              f"(on: {m['s_per_iter'] + per_iter:.3f} s/iter, off: {m['s_per_iter']:.3f} s/iter)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
