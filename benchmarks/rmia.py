"""What offline RMIA costs on this machine: its reference models, then its scoring.

    python benchmarks/rmia.py                       # tiny_cnn (width 8) on the embedded digits data
    python benchmarks/rmia.py --model darts_v2 --C 8 --layers 5 --epochs 3
    python benchmarks/rmia.py --cifar --model resnet18 --width 16 --epochs 2   # CIFAR-10 subset
    python benchmarks/rmia.py --tiny                # seconds: proves the script runs

The victim (--model, trained --epochs epochs with batch 64, lr 0.05 and the recipe's default
augmentation on the first --train-subset training images, no validation split; the rest of the
training split joins the pool the reference models draw from, so that they can train on as many
images as the victim did) is attacked by `nasaudit.attacks.rmia.run_rmia` with --n-reference reference
models trained with the same recipe. Prints the model and data sizes, each reference model's
training seconds and seconds per epoch (the attack's cost grows linearly with the victim recipe's
epochs and n_reference), the scoring seconds (forward passes of 1 + n_reference models over targets,
population and the inputs that tune a, and the pairwise test), the bootstrap's seconds, and the
resulting AUC and TPRs, so that an audit's budget can be planned from the victim's own training
time. Threads: --threads (default 1; the machine may be shared).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny_cnn")
    ap.add_argument("--width", type=int, default=8, help="baselines' stem width")
    ap.add_argument("--C", type=int, default=8, help="genotype networks' initial channels")
    ap.add_argument("--layers", type=int, default=5, help="genotype networks' cells")
    ap.add_argument("--cifar", action="store_true", help="the CIFAR-10 subset instead of digits")
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-subset"),
                    help="folder holding cifar-10-batches-py (default: the subset beside the checkout)")
    ap.add_argument("--epochs", type=int, default=30, help="victim and reference training epochs")
    ap.add_argument("--train-subset", type=int, default=500, help="victim training images (0: all)")
    ap.add_argument("--n-reference", type=int, default=2)
    ap.add_argument("--n-members", type=int, default=250)
    ap.add_argument("--n-nonmembers", type=int, default=300)
    ap.add_argument("--n-population", type=int, default=200)
    ap.add_argument("--n-bootstrap", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tiny", action="store_true", help="2 epochs, few inputs: a smoke run")
    args = ap.parse_args()
    if args.tiny:
        args.train_subset = 200
        args.epochs, args.n_members, args.n_nonmembers, args.n_population, args.n_bootstrap = 2, 50, 50, 50, 50
    torch.set_num_threads(args.threads)

    from nasaudit.attacks.common import Victim
    from nasaudit.attacks.rmia import run_rmia
    from nasaudit.data import load_dataset
    from nasaudit.infra.device import resolve_device
    from nasaudit.models.base import count_parameters
    from nasaudit.training import TrainConfig, train_on_dataset

    device = resolve_device(args.device)
    data = load_dataset("cifar10", args.data_dir) if args.cifar else load_dataset("digits")
    if args.train_subset:
        # The victim's training set is the first --train-subset images; the others become
        # test-split images the victim never saw (non-members, population or reference pool).
        k = args.train_subset
        data = dataclasses.replace(
            data, train_images=data.train_images[:k], train_labels=data.train_labels[:k],
            test_images=torch.cat([data.train_images[k:], data.test_images]),
            test_labels=torch.cat([data.train_labels[k:], data.test_labels]))
    from nasaudit.models.baselines import BASELINES

    kwargs = {"width": args.width} if args.model in BASELINES else {"C": args.C, "layers": args.layers}
    config = TrainConfig(epochs=args.epochs, batch_size=64, lr=0.05, val_fraction=0.0, seed=0)
    started = time.perf_counter()
    trained = train_on_dataset(args.model, data, config, device=device, model_kwargs=kwargs, progress=False)
    victim_s = time.perf_counter() - started
    victim = Victim(trained.model.eval(), args.model, config, kwargs)
    print(f"data {data.name}: {data.train_images.shape[0]} training, {data.test_images.shape[0]} test images "
          f"{tuple(data.train_images.shape[1:])}; device {device}, {torch.get_num_threads()} thread(s)")
    print(f"victim {args.model} {kwargs}: {count_parameters(victim.model):,} parameters, {args.epochs} epochs "
          f"in {victim_s:.1f} s ({victim_s / args.epochs:.2f} s/epoch), test accuracy {trained.test_acc:.3f}")

    params = {"n_members": args.n_members, "n_nonmembers": args.n_nonmembers,
              "n_population": args.n_population, "n_reference": args.n_reference,
              "n_bootstrap": args.n_bootstrap}
    rec = run_rmia(victim, data, params, device=device, seed=0, progress=False)
    print(f"reference models: {rec.n_reference} x {rec.reference_epochs} epochs on {rec.reference_size} images "
          f"each (victim: {rec.victim_train_size}; pool {rec.pool_size})")
    for i, s in enumerate(rec.reference_seconds):
        print(f"  reference {i}: {s:.1f} s ({s / rec.reference_epochs:.2f} s/epoch), population accuracy "
              f"{rec.reference_population_accuracy[i]:.3f}")
    n_scored = rec.n_members + rec.n_nonmembers + rec.n_population
    print(f"scoring: {rec.scoring_seconds:.2f} s for {1 + rec.n_reference} models over {n_scored} inputs "
          f"(+ up to {rec.params['tune_points']} tuning inputs; a = {rec.offline_a:g}, "
          f"{'tuned' if rec.offline_a_tuned else 'given'})")

    from nasaudit.attacks.rmia import bootstrap_intervals

    started = time.perf_counter()
    bootstrap_intervals(rec.member_scores, rec.nonmember_scores, rec.fprs, n_draws=args.n_bootstrap, seed=0)
    print(f"bootstrap: {time.perf_counter() - started:.2f} s for {args.n_bootstrap} draws")
    rest = rec.seconds - sum(rec.reference_seconds) - rec.scoring_seconds
    print(f"attack total {rec.seconds:.1f} s (reference training {sum(rec.reference_seconds):.1f} s, scoring "
          f"{rec.scoring_seconds:.2f} s, other {rest:.2f} s)")
    tprs = ", ".join(f"{f:g}: {'n/r' if t is None else f'{t:.3f}'}" for f, t in zip(rec.fprs, rec.tpr_at_fpr, strict=True))
    print(f"AUC {rec.auc:.3f}; TPR at FPR {tprs} (n = {rec.n_members}/{rec.n_nonmembers}); "
          f"victim accuracy members {rec.member_accuracy:.3f}, non-members {rec.nonmember_accuracy:.3f}")


if __name__ == "__main__":
    main()
