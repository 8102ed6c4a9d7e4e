"""Cost of the backdoor defences (Neural Cleanse, fine-pruning) on one model on this machine.

A model (tiny_cnn, or a manual baseline at a small --width) is trained for --epochs on the
CIFAR-10 subset (or the embedded digits), BadNet-backdoored, then each defence is timed on its
own at the backdoor unit's defaults unless overridden: Neural Cleanse (all classes, --nc-steps
Adam steps of --nc-batch images per class, on --nc-inputs clean images) on the backdoored model,
and fine-pruning (pruning plan plus --finetune-epochs clean epochs on --defence-inputs images).
Printed: the model's size, seconds per defence, seconds per Neural Cleanse step, and the
defences' outcome (anomaly index, detection, ASR before and after fine-pruning), so a budget can
be chosen for an audit.

Run (one torch thread by default; minutes on a CPU):
    python benchmarks/defences.py --model tiny_cnn --epochs 6
    python benchmarks/defences.py --model tiny_cnn --epochs 6 --nc-schedule fixed --nc-cost 0.01 --nc-steps 100
    python benchmarks/defences.py --model resnet18 --width 8 --epochs 4 --nc-steps 100
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from nasaudit.attacks.backdoor import (
    Params,
    Trigger,
    attack_success_rate,
    checkerboard,
    defence_images,
    fine_tune_with_trigger,
    patch_mask,
)
from nasaudit.attacks.common import accuracy
from nasaudit.attacks.defences import fine_pruning, neural_cleanse
from nasaudit.data import load_dataset, train_val_split
from nasaudit.models.base import count_parameters
from nasaudit.training import TrainConfig, train_on_dataset

CIFAR_SUBSET = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-subset"


def main() -> None:
    defaults = Params()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=("digits", "cifar10"), default="cifar10")
    ap.add_argument("--data-dir", default=str(CIFAR_SUBSET), help="folder holding cifar-10-batches-py")
    ap.add_argument("--model", default="tiny_cnn")
    ap.add_argument("--width", type=int, default=None, help="stem width of a manual baseline")
    ap.add_argument("--epochs", type=int, default=6, help="victim training epochs")
    ap.add_argument("--backdoor-epochs", type=int, default=2)
    ap.add_argument("--nc-steps", type=int, default=defaults.nc_steps)
    ap.add_argument("--nc-batch", type=int, default=defaults.nc_batch_size)
    ap.add_argument("--nc-inputs", type=int, default=defaults.nc_inputs)
    ap.add_argument("--nc-schedule", choices=("nc", "fixed"), default=defaults.nc_schedule)
    ap.add_argument("--nc-cost", type=float, default=defaults.nc_init_cost, help="initial (or fixed) L1 weight")
    ap.add_argument("--defence-inputs", type=int, default=defaults.defence_inputs)
    ap.add_argument("--finetune-epochs", type=int, default=defaults.finetune_epochs)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    data = load_dataset(args.dataset, args.data_dir if args.dataset == "cifar10" else None)
    kwargs = {} if args.width is None else {"width": args.width}
    config = TrainConfig(epochs=args.epochs, batch_size=64, lr=0.05, seed=args.seed)
    start = time.perf_counter()
    trained = train_on_dataset(args.model, data, config, device=device, model_dir=None, progress=False,
                               model_kwargs=kwargs)
    print(f"model {args.model}{' ' + str(kwargs) if kwargs else ''}: {count_parameters(trained.model):,} parameters, "
          f"{trained.model.classifier.in_features} penultimate channels, test accuracy {trained.test_acc:.3f} "
          f"(trained in {time.perf_counter() - start:.1f} s, {args.threads} thread(s))")
    # BadNet: a 3x3 checkerboard at the top-left corner, target class 0, 10% poisoned batches.
    shape = tuple(data.train_images.shape[1:])
    trigger = Trigger(checkerboard(shape, device), patch_mask(shape, 3, "top_left", device), 1.0)
    n = data.train_images.shape[0]
    train_idx, _ = train_val_split(n, config.val_fraction, config.seed)
    model = copy.deepcopy(trained.model)
    start = time.perf_counter()
    fine_tune_with_trigger(
        model, data.train_images[train_idx], data.train_labels[train_idx], trigger, 0, data.num_classes,
        poison_fraction=0.1, epochs=args.backdoor_epochs, lr=0.05, batch_size=config.batch_size,
        momentum=config.momentum, weight_decay=config.weight_decay, grad_clip=config.grad_clip,
        auxiliary_weight=config.auxiliary_weight, crop_padding=config.crop_padding, flip=config.flip,
        device=device, seed=args.seed, progress=False,
    )
    test = (data.test_images, data.test_labels)
    asr = attack_success_rate(model, *test, trigger, 0, device=device)
    print(f"BadNet: ASR {asr:.3f}, clean accuracy {accuracy(model, *test, device=device):.3f} "
          f"({time.perf_counter() - start:.1f} s)")
    images, labels = defence_images(data, config, args.defence_inputs, args.seed)

    start = time.perf_counter()
    found = neural_cleanse(model, images[: args.nc_inputs], data.num_classes, steps=args.nc_steps,
                           batch_size=args.nc_batch, schedule=args.nc_schedule, init_cost=args.nc_cost,
                           device=device, seed=args.seed)
    nc_seconds = time.perf_counter() - start
    # The backdoor unit runs it twice with nc_clean_model (backdoored and clean model).
    print(f"Neural Cleanse ({args.nc_schedule} schedule): {data.num_classes} classes x {args.nc_steps} steps x {args.nc_batch} images: "
          f"{nc_seconds:.1f} s ({1000 * nc_seconds / args.nc_steps:.1f} ms per step of all classes); "
          f"anomaly index {found.anomaly_index:.2f}, detected {found.detected}, smallest class "
          f"{found.smallest_class} (target 0)")

    start = time.perf_counter()
    fp = fine_pruning(model, images, labels, max_accuracy_drop=defaults.prune_max_drop,
                      max_fraction=defaults.prune_max_fraction, epochs=args.finetune_epochs,
                      lr=defaults.finetune_lr, batch_size=config.batch_size, device=device, seed=args.seed)
    fp_seconds = time.perf_counter() - start
    after_prune = attack_success_rate(fp.pruned, *test, trigger, 0, device=device)
    after_tune = attack_success_rate(fp.fine_tuned, *test, trigger, 0, device=device)
    print(f"fine-pruning: {fp.plan.pruned}/{len(fp.plan.order)} channels pruned, {args.finetune_epochs} epochs "
          f"on {images.shape[0]} images: {fp_seconds:.1f} s; ASR {asr:.3f} -> {after_prune:.3f} (pruned) -> "
          f"{after_tune:.3f} (fine-tuned); clean accuracy {accuracy(fp.fine_tuned, *test, device=device):.3f}")


if __name__ == "__main__":
    main()
