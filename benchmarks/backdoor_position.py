"""BadNet at the artifact's budget on a deep CIFAR network, trigger in the centre and in the corner.

    python benchmarks/backdoor_position.py                 # resnet18 width 8, 4 epochs, CIFAR subset
    python benchmarks/backdoor_position.py --positions center --epochs 4

A resnet18 (width 8) is trained with the paper's recipe for --epochs epochs on the CIFAR-10
subset (by default ../shared/data/cifar10-subset), then BadNet backdoors it at its defaults (an
opaque 3x3 checkerboard, 2% of the images poisoned, 20 fine-tuning epochs) with the trigger at
each --positions. Printed per position: ASR k/n with its exact 95% interval, the clean model's
rate for the same trigger, the clean accuracy drop, and the seconds. This is the measurement
behind docs/ATTACKS.md's note that CPU-scale BadNet runs pass position=center: on a short-trained
deep network the artifact's corner does not implant at this budget where the centre does.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from nasaudit.attacks import Victim, run_attack
from nasaudit.data import load_dataset
from nasaudit.rates import Rate
from nasaudit.training import TrainConfig, train_on_dataset

CIFAR_SUBSET = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-subset"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(CIFAR_SUBSET))
    parser.add_argument("--epochs", type=int, default=4, help="victim training epochs (default 4)")
    parser.add_argument("--positions", default="center,top_left", help="comma-separated trigger positions")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.machine()} {torch.get_num_threads()} threads; torch {torch.__version__}")

    data = load_dataset("cifar10", args.data_dir)
    config = TrainConfig(epochs=args.epochs, batch_size=64, lr=0.05, seed=args.seed)
    started = time.perf_counter()
    result = train_on_dataset("resnet18", data, config, device="cpu", progress=False,
                              model_kwargs={"width": 8})
    print(f"victim resnet18 width 8: {args.epochs} epochs in {time.perf_counter() - started:.1f} s, "
          f"test accuracy {result.test_acc:.3f}")
    victim = Victim(result.model.eval(), "resnet18", config, {"width": 8})
    n = int((data.test_labels != 0).sum())
    for position in args.positions.split(","):
        started = time.perf_counter()
        rec = run_attack("backdoor", victim, data, {"method": "badnet", "position": position},
                         device="cpu", seed=args.seed, progress=False)
        asr = Rate(round(rec.asr * n), n)
        low, high = asr.interval
        print(f"{position:>9}: ASR {asr.successes}/{n} = {rec.asr:.3f} (95% CI {low:.3f}-{high:.3f}), "
              f"clean model {rec.clean_model_asr:.3f}, CAD {rec.cad:.3f}, poison {rec.poison_fraction}, "
              f"{rec.epochs} epochs, {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
