"""Import a full-size pretrained DARTS network and time the inference-time battery on it.

    python benchmarks/pretrained.py [--data-dir DIR] [--inputs N] [--device cpu] [--out DIR]
    python benchmarks/pretrained.py --tiny          # C=4, 5 cells, 4 inputs: a seconds-long check

Builds darts_v2 at the published size (C=36, 20 cells, auxiliary head, ~3.3M parameters) with
random weights and batch-norm statistics, saves it exactly as DARTS's code saves a state dict
(its key names, no num_batches_tracked, legacy non-zip serialisation), then runs an audit of it
(`format = "darts"`): the import unit, clean accuracy, the probes and the attacks that only
query the victim (PGD and NES at the study's settings, the PGD sweep, label-only membership
with fewer boundary steps), each on --inputs inputs of the CIFAR-10 data (by default the subset
in ../shared/data/cifar10-subset). It prints the seconds of `nasaudit import`'s reader and of
every audit unit, from the results database, and the network's forward and forward+backward
throughput (images/s), from which the cost of any attack budget follows.
The weights are random, so the attack outcomes mean nothing, and attacks that stop at success
stop early: read their units as lower bounds and the throughput as the worst case.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CONFIG = """
name = "pretrained_bench"
out_dir = "{out}"
seeds = [0]

[dataset]
name = "cifar10"
data_dir = "{data}"

[[models]]
name = "darts_pretrained"
spec = "darts_v2"
kwargs = {{ C = {C}, layers = {layers}, auxiliary = true }}
checkpoint = "{checkpoint}"
format = "darts"
trained_on = "cifar10-train"

[probes.gradvar]
at_init = false
n_samples = {n}
chunk_size = {n}

[probes.contour_param]
points = 5
n_samples = {n}

[probes.contour_input]
points = 5
n_samples = {small}

[probes.curvature]
n_samples = {n}
n_inputs = {small}
iters = 5

[attacks.pgd]
n_inputs = {n}

[attacks.pgd_sweep]
n_inputs = {n}
eps = [0.00784, 0.03137]

[attacks.nes]
n_inputs = {small}

[attacks.membership]
n_members = {small}
n_nonmembers = {small}
max_iter = 2
max_eval = 100
init_eval = 20
"""


def throughput(model, device, batch: int, repeats: int = 3) -> tuple[float, float]:
    """(forward, forward+backward w.r.t. the input) images per second of `model` in eval mode on
    random [batch, 3, 32, 32] inputs: the median of `repeats` timed passes after one warm-up."""
    import statistics

    import torch

    model = model.to(device).eval()
    x = torch.rand(batch, 3, 32, 32, device=device)

    def timed(step) -> float:
        step()
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            step()
            times.append(time.perf_counter() - started)
        return batch / statistics.median(times)

    def forward():
        with torch.no_grad():
            model(x)

    def forward_backward():
        xg = x.clone().requires_grad_(True)
        model(xg).logsumexp(1).sum().backward()

    return timed(forward), timed(forward_backward)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "cifar10-subset"))
    parser.add_argument("--inputs", type=int, default=32, help="inputs per attack and probe (default 32)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", help="output directory (default: a fresh temporary one)")
    parser.add_argument("--tiny", action="store_true", help="C=4, 5 cells, 4 inputs: checks the script runs")
    args = parser.parse_args(argv)

    import torch

    from nasaudit.audit.config import load_config
    from nasaudit.audit.runner import run_audit
    from nasaudit.audit.store import Store
    from nasaudit.models.base import count_parameters
    from nasaudit.models.registry import build_model
    from nasaudit.pretrained import foreign_state_dict, read_pretrained

    C, layers = (4, 5) if args.tiny else (36, 20)
    n = 4 if args.tiny else args.inputs
    with tempfile.TemporaryDirectory(prefix="nasaudit-pretrained-") as tmp:
        root = Path(args.out) if args.out else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        net = build_model("darts_v2", 10, C=C, layers=layers, auxiliary=True).eval()
        with torch.no_grad():
            for key, buf in net.named_buffers():
                if key.endswith("running_var"):
                    buf.uniform_(0.5, 2.0)
        checkpoint = root / "darts_cifar10_model.pt"
        torch.save(foreign_state_dict(net, "darts"), checkpoint, _use_new_zipfile_serialization=False)

        started = time.perf_counter()
        imported = read_pretrained(checkpoint, "darts", model="darts_v2", C=C, layers=layers,
                                   auxiliary=True, num_classes=10, dataset="cifar10")
        read_seconds = time.perf_counter() - started
        print(f"darts_v2 C={C} layers={layers}: {count_parameters(imported.model):,} parameters, "
              f"{checkpoint.stat().st_size / 2**20:.1f} MiB file; reader {read_seconds:.2f} s")
        forward, backward = throughput(imported.model, torch.device(args.device), batch=max(2, n))
        print(f"throughput at batch {max(2, n)}: forward {forward:.1f} images/s, "
              f"forward+backward (input gradient) {backward:.1f} images/s")

        cfg = root / "bench.toml"
        cfg.write_text(CONFIG.format(out=root / "audit", data=args.data_dir, C=C, layers=layers,
                                     checkpoint=checkpoint, n=n, small=max(2, n // 4)))
        config = load_config(cfg)
        started = time.perf_counter()
        summary = run_audit(config, device=args.device, progress=False, report=False)
        total = time.perf_counter() - started
        with Store(config.out_dir) as store:
            rows = store.units(status=None)
    device = rows[0].device if rows else args.device
    print(f"audit: {summary.total} units, {summary.failed} failed, device {device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {n} inputs")
    print(f"{'unit':<28}{'status':<8}{'seconds':>9}")
    for r in rows:
        print(f"{r.stage + '/' + r.name:<28}{r.status:<8}{r.seconds:>9.2f}")
    print(f"{'other (plan, data)':<28}{'':<8}{total - sum(r.seconds for r in rows):>9.2f}")
    print(f"{'total':<28}{'':<8}{total:>9.2f}")
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
