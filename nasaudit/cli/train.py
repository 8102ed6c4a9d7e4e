"""`nasaudit train` and `nasaudit eval`: train a model on a dataset with checkpoints, score one.

Examples:
    nasaudit train --model darts --dataset cifar10 --data-dir data --epochs 600
    nasaudit train --model tiny_cnn --dataset digits --epochs 5 --adv-train pgd
    nasaudit eval --checkpoint models/image/cifar10/darts.pth --dataset cifar10 --data-dir data
"""

from __future__ import annotations

import argparse
import dataclasses

from nasaudit.cli.options import (
    add_data_options,
    add_device_option,
    add_progress_option,
    params_from_flags,
)
from nasaudit.infra.errors import InputError
from nasaudit.infra.params import describe
from nasaudit.train_config import TrainConfig

# The `nasaudit train` flag of each TrainConfig field it exposes; defaults, ranges and help
# text are the fields' own (nasaudit.train_config, no torch needed).
TRAIN_FLAGS = {"epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr", "momentum": "--momentum",
               "weight_decay": "--weight-decay", "cutout": "--cutout", "drop_path_prob": "--drop-path",
               "auxiliary_weight": "--aux-weight", "grad_clip": "--grad-clip", "val_fraction": "--val-fraction",
               "seed": "--seed", "adv_eps": "--adv-eps", "adv_step": "--adv-step", "adv_iters": "--adv-iters"}


def _add_data_args(
    parser: argparse.ArgumentParser,
    dataset_default: str | None = "digits",
    dataset_help: str = "data set (default: digits, embedded)",
) -> None:
    add_data_options(
        parser,
        dataset_default=dataset_default,
        dataset_help=dataset_help,
        data_dir_help="folder with the data set files (CIFAR, ImageNet32)",
        download_help="download CIFAR into --data-dir if missing",
        num_classes_help="use a class subset (ImageNet32: the study used 60)",
    )
    add_device_option(parser, show_default=True)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `train` and `eval` commands."""
    train = subparsers.add_parser(
        "train",
        help="train a model (genotype or manual baseline) with checkpoints",
        description="Train a genotype network or a manual baseline with the study's recipe "
        "(defaults: the paper's settings). Checkpoints go to MODEL_DIR/image/DATASET/MODEL.pth "
        "after every epoch; --resume continues a killed run exactly.",
    )
    train.add_argument("--model", required=True, help="model name, genotype name, or genotype file")
    _add_data_args(train)
    # Each flag is a TrainConfig field: None (not given) keeps the field's default, the study's.
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for field, flag in TRAIN_FLAGS.items():
        default = fields[field].default
        shown = f"{round(default * 255)}/255" if field in ("adv_eps", "adv_step") else f"{default:g}"
        metavar = "N" if isinstance(default, int) else "X"
        # --seed is an integer checked like every command's --seed; the rest parse as the field.
        train.add_argument(flag, dest=field, default=None, metavar=metavar, type=int if field == "seed" else None,
                           help=f"{fields[field].metadata['doc']} [{describe(fields[field])}] (default {shown})")
    train.add_argument(
        "--C", type=int, default=None, help="initial channels of a genotype network (default 36)"
    )
    train.add_argument(
        "--layers", type=int, default=None, help="cells of a genotype network (default 20)"
    )
    train.add_argument(
        "--width",
        type=int,
        default=None,
        help="stem width of a manual baseline (default: canonical; small for quick runs)",
    )
    train.add_argument(
        "--no-auxiliary",
        action="store_true",
        help="build a genotype network without its auxiliary head",
    )
    train.add_argument("--model-dir", default="models", help="checkpoint root (default: ./models)")
    train.add_argument("--log-dir", default=None, help="TensorBoard log directory")
    train.add_argument(
        "--resume", action="store_true", help="continue from the checkpoint if there is one"
    )
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="start over when MODEL_DIR already holds a checkpoint of this model "
        "(without --resume or --overwrite an existing checkpoint is never replaced)",
    )
    train.add_argument(
        "--adv-train",
        choices=("pgd",),
        default=None,
        help="PGD adversarial training (Madry et al.)",
    )
    add_progress_option(train, help="no progress bar")
    train.set_defaults(func=run_train)

    evaluate = subparsers.add_parser(
        "eval",
        help="clean loss and accuracy of a checkpoint",
        description="Rebuild a model from its checkpoint (and JSON sidecar) and report its clean "
        "loss and accuracy on a split of a data set (default: the test set).",
    )
    evaluate.add_argument(
        "--checkpoint",
        default=None,
        help="the .pth file (default: MODEL_DIR/image/DATASET/MODEL.pth)",
    )
    evaluate.add_argument(
        "--model", default=None, help="model name/genotype (default: from the sidecar)"
    )
    evaluate.add_argument(
        "--model-dir", default="models", help="checkpoint root when --checkpoint is not given"
    )
    _add_data_args(
        evaluate,
        dataset_default=None,
        dataset_help="data set (default: the one the checkpoint was trained on, from its "
        "sidecar; digits without one)",
    )
    evaluate.add_argument(
        "--split",
        choices=("test", "val", "train"),
        default="test",
        help="which split to score (val: the checkpoint's own held-out split, from its sidecar)",
    )
    evaluate.add_argument("--batch-size", type=int, default=512, help="evaluation batch size")
    evaluate.set_defaults(func=run_eval)


def _model_kwargs(args: argparse.Namespace) -> dict:
    """build_model kwargs from the command line: --C/--layers/--no-auxiliary for genotype
    networks, --width for manual baselines; a flag given to the wrong kind is an InputError."""
    from nasaudit.models.base import check_size
    from nasaudit.models.registry import is_manual_model

    genotype_kwargs = {}
    if args.C is not None:
        genotype_kwargs["C"] = check_size("C", args.C)
    if args.layers is not None:
        genotype_kwargs["layers"] = check_size("layers", args.layers)
    if args.width is not None:
        check_size("width", args.width)
    if args.no_auxiliary:
        genotype_kwargs["auxiliary"] = False
    if not is_manual_model(args.model):
        if args.width is not None:
            raise InputError(
                "--width", "only manual baselines take --width; use --C for genotype networks"
            )
        return genotype_kwargs
    if genotype_kwargs:
        flags = ", ".join(
            "--no-auxiliary" if k == "auxiliary" else f"--{k}" for k in genotype_kwargs
        )
        raise InputError(
            "--model",
            f"{args.model!r} is a manual baseline; {flags} only apply to genotype networks",
        )
    return {} if args.width is None else {"width": args.width}


def _load_data(args: argparse.Namespace, seed: int = 0):
    from nasaudit.data import load_dataset

    return load_dataset(
        args.dataset, args.data_dir, download=args.download, num_classes=args.num_classes, seed=seed
    )


def run_train(args: argparse.Namespace) -> int:
    """Train, printing the parameter count, one line per epoch and the final accuracies."""
    from nasaudit.cli.options import check_seed
    from nasaudit.infra.device import resolve_device
    from nasaudit.models.base import count_parameters
    from nasaudit.training import checkpoint_path, sidecar_path, train_on_dataset

    check_seed("--seed", args.seed)
    given = {k: getattr(args, k) for k in TRAIN_FLAGS if getattr(args, k) is not None}
    config = params_from_flags(TrainConfig, {**given, "adv_train": args.adv_train}, TRAIN_FLAGS,
                               source="train options")
    if args.resume and args.overwrite:
        raise InputError("--overwrite", "--resume continues the checkpoint, --overwrite replaces it: pick one")
    device = resolve_device(args.device)
    kwargs = _model_kwargs(args)
    data = _load_data(args, seed=config.seed)
    ckpt = checkpoint_path(args.model_dir, data.name, args.model)
    if not (args.resume or args.overwrite) and (ckpt.exists() or sidecar_path(ckpt).exists()):
        # train_on_dataset itself starts over silently (the audit relies on that); from the
        # command line a finished or interrupted run must never be lost by accident.
        raise InputError(
            ckpt,
            "a checkpoint of this model already exists; pass --resume to continue it or "
            "--overwrite to start over",
        )
    from nasaudit.infra.outdir import check_output_dir, claim_output_dir

    check_output_dir(args.model_dir, "models", source="--model-dir")
    print(
        f"dataset {data.name}: {data.train_images.shape[0]} train / {data.test_images.shape[0]} test "
        f"images, {data.num_classes} classes; device {device}"
    )

    def show_model(model) -> None:
        # The model is built, so the name and sizes are good: only now is MODEL_DIR made (and
        # marked), before the first checkpoint is written into it.
        claim_output_dir(args.model_dir, "models", source="--model-dir")
        print(
            f"model {args.model}: {count_parameters(model):,} parameters (without auxiliary head)"
        )

    from tqdm.auto import tqdm

    def show_epoch(h: dict) -> None:
        val = (
            f"  val loss {h['val_loss']:.4f} acc {h['val_acc']:.4f}"
            if h["val_acc"] is not None
            else ""
        )
        tqdm.write(
            f"epoch {h['epoch']:>4}/{config.epochs}  lr {h['lr']:.5f}  "
            f"train loss {h['train_loss']:.4f} acc {h['train_acc']:.4f}{val}  ({h['seconds']:.1f} s)"
        )

    result = train_on_dataset(
        args.model,
        data,
        config,
        device=device,
        model_kwargs=kwargs,
        model_dir=args.model_dir,
        resume=args.resume,
        log_dir=args.log_dir,
        progress=not args.no_progress,
        on_epoch=show_epoch,
        on_model=show_model,
    )
    if result.val_acc is not None:
        print(
            f"final val acc {result.val_acc:.4f} (best {result.best_val_acc:.4f} at epoch "
            f"{result.best_epoch})"
        )
    print(f"final test loss {result.test_loss:.4f} acc {result.test_acc:.4f} on {data.test_images.shape[0]} test images")
    print(f"checkpoint {ckpt}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    """Print the clean loss and accuracy of a checkpoint on the chosen split."""
    from nasaudit.infra.device import resolve_device
    from nasaudit.training import checkpoint_path, evaluate, load_checkpoint_model

    if args.checkpoint is None and args.model is None:
        raise InputError("--checkpoint", "give --checkpoint PATH (or --model with --model-dir)")
    if args.batch_size < 1:
        raise InputError("--batch-size", f"must be >= 1, got {args.batch_size}")
    device = resolve_device(args.device)
    if args.dataset is None:
        # Score a checkpoint on what it was trained on unless told otherwise.
        from nasaudit.infra.checkpoint import read_sidecar

        meta = read_sidecar(args.checkpoint) if args.checkpoint else None
        args.dataset = (meta or {}).get("dataset") or "digits"
    data = _load_data(args)
    ckpt = args.checkpoint or checkpoint_path(args.model_dir, data.name, args.model)
    model, meta = load_checkpoint_model(ckpt, model_name=args.model, device=device)
    if model.num_classes != data.num_classes:
        raise InputError(
            ckpt, f"model has {model.num_classes} classes but {data.name} has {data.num_classes}"
        )
    if meta.get("dataset") not in (None, data.name):
        print(f"note: checkpoint was trained on {meta['dataset']}, evaluating on {data.name}")
    if args.split == "test":
        images, labels = data.test_images, data.test_labels
    elif args.split == "train":
        images, labels = data.train_images, data.train_labels
    else:
        from nasaudit.data import train_val_split

        # The same split train_on_dataset held out: same size, fraction and seed.
        config = meta.get("config") or {}
        fraction, seed = config.get("val_fraction"), config.get("seed", 0)
        if not fraction:
            raise InputError(ckpt, "the sidecar records no validation split; use --split test")
        _, val_idx = train_val_split(data.train_images.shape[0], fraction, seed)
        images, labels = data.train_images[val_idx], data.train_labels[val_idx]
    loss, acc = evaluate(model, images, labels, device=device, batch_size=args.batch_size)
    name = args.model or meta.get("model", "?")
    print(
        f"{name} on {data.name} {args.split} ({images.shape[0]} images): loss {loss:.4f} accuracy {acc:.4f}"
    )
    return 0
