"""Wall-clock time of nasaudit's AutoAttack against torchattacks' on the same model and inputs.

    python benchmarks/autoattack.py [--device cpu] [--n 64] [--eps 1/255] [--version standard]
        [--apgd-iters 100] [--fab-iters 100] [--square-queries 5000] [--threads 1]
    python benchmarks/autoattack.py --tiny     # seconds: proves the script runs

The victim is tiny_cnn (--width) trained briefly on the embedded digits data (no files needed);
inputs are its first --n seeded test inputs (`nasaudit.attacks.sampling.candidate_indices`).
Both sides run the same attacks at the same budgets: ours through
`nasaudit.attacks.autoattack.run_autoattack` (the PGD sanity check timed apart), theirs as
torchattacks' APGD, APGDT, FAB (multi-targeted) and Square chained by its MultiAttack (what its
AutoAttack builds, with our budgets in place of its 10-step defaults). Prints the machine, torch
version and threads, then seconds and robust accuracy of each side and their per-input agreement.
torchattacks is a test-only dependency (`pip install --no-deps torchattacks`).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from fractions import Fraction

import torch


def _victim(width: int, epochs: int, device: torch.device):
    from nasaudit.attacks.common import Victim
    from nasaudit.data import load_dataset
    from nasaudit.training import TrainConfig, train_on_dataset

    data = load_dataset("digits")
    config = TrainConfig(epochs=epochs, batch_size=64, lr=0.05, seed=0, drop_path_prob=0.0, val_fraction=0.0)
    model = train_on_dataset("tiny_cnn", data, config, device=device, progress=False,
                             model_kwargs={"width": width}).model.eval()
    return Victim(model, "tiny_cnn", config, {"width": width}), data


def _theirs(model, x, y, args, eps: float) -> tuple[list[bool], float]:
    import torchattacks
    from torchattacks.wrappers.multiattack import MultiAttack

    parts = [
        torchattacks.APGD(model, norm="Linf", eps=eps, steps=args.apgd_iters, n_restarts=1, seed=0, loss="ce"),
        torchattacks.APGDT(model, norm="Linf", eps=eps, steps=args.apgd_iters, n_restarts=1, seed=0,
                           n_classes=10),
    ]
    if args.version == "standard":
        parts += [
            torchattacks.FAB(model, norm="Linf", eps=eps, steps=args.fab_iters, n_restarts=1, seed=0,
                             multi_targeted=True, n_classes=10),
            torchattacks.Square(model, norm="Linf", eps=eps, n_queries=args.square_queries, n_restarts=1,
                                seed=0),
        ]
    attack = MultiAttack(parts)
    with torch.random.fork_rng(devices=[]):
        start = time.perf_counter()
        adv = attack(x, y)
        seconds = time.perf_counter() - start
    with torch.no_grad():
        robust = (model(adv).argmax(1) == y).tolist()
    return robust, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--eps", default="1/255",
                    help="L-inf radius; at 1/255 the digits victim keeps inputs for every attack")
    ap.add_argument("--version", default="standard", choices=("standard", "apgd"))
    ap.add_argument("--apgd-iters", type=int, default=100)
    ap.add_argument("--fab-iters", type=int, default=100)
    ap.add_argument("--square-queries", type=int, default=5000)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--tiny", action="store_true", help="a few inputs, small budgets: seconds")
    args = ap.parse_args()
    if args.tiny:
        args.n, args.apgd_iters, args.fab_iters, args.square_queries, args.epochs = 32, 10, 10, 200, 2
    torch.set_num_threads(args.threads)
    from nasaudit.attacks.autoattack import run_autoattack
    from nasaudit.infra.device import resolve_device
    from nasaudit.models.inference import inference_model

    device = resolve_device(args.device)
    eps = float(Fraction(args.eps))
    print(f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores; "
          f"python {platform.python_version()}; torch {torch.__version__}; threads {torch.get_num_threads()}; "
          f"device {device}")
    print(f"victim: tiny_cnn width {args.width}, {args.epochs} epochs on digits; n {args.n}; "
          f"eps {args.eps}; version {args.version}; apgd {args.apgd_iters} iters, fab {args.fab_iters} iters, "
          f"square {args.square_queries} queries")
    victim, data = _victim(args.width, args.epochs, device)
    params = {"n_inputs": args.n, "eps": eps, "version": args.version, "apgd_iters": args.apgd_iters,
              "fab_iters": args.fab_iters, "square_queries": args.square_queries}
    start = time.perf_counter()
    rec = run_autoattack(victim, data, params, device=device, seed=0, progress=False)
    total = time.perf_counter() - start
    ours_seconds = sum(v for k, v in rec.attack_seconds.items() if k != "pgd")
    per_attack = ", ".join(f"{k} {v:.2f}" for k, v in rec.attack_seconds.items())
    print(f"nasaudit:     {ours_seconds:8.2f} s (attacks: {per_attack}; whole run {total:.2f} s) "
          f"robust accuracy {rec.robust_accuracy:.3f}")
    model = inference_model(victim.model)
    idx = torch.tensor(rec.indices)
    x = (data.test_images[idx].float() / 255).to(device)
    y = data.test_labels[idx].to(device)
    theirs, their_seconds = _theirs(model, x, y, args, eps)
    agree = sum(a == b for a, b in zip(rec.robust, theirs, strict=True)) / max(len(theirs), 1)
    print(f"torchattacks: {their_seconds:8.2f} s robust accuracy {sum(theirs) / max(len(theirs), 1):.3f}")
    print(f"ratio torchattacks / nasaudit: {their_seconds / max(ours_seconds, 1e-9):.2f}; "
          f"per-input agreement {agree:.3f}")


if __name__ == "__main__":
    main()
