"""`nasaudit import LAYOUT FILE`: turn a pretrained checkpoint of another code base into a nasaudit
checkpoint (weights + sidecar) that eval, every attack and every probe use like a trained one.

Examples:
    nasaudit import darts cifar10_model.pt --genotype darts_v2 --C 36 --layers 20 --auxiliary \\
        --dataset cifar10 --model-dir models
    nasaudit import kuangliu checkpoint/ckpt.pth --dataset cifar10 --model-dir models
    nasaudit import auto darts.pth --genotype darts --dataset cifar10 --name darts_trojanzoo
"""

from __future__ import annotations

import argparse
import re

from nasaudit.infra.errors import InputError

# Classes of the data sets whose count is fixed (imagenet32's depends on the subset).
_CLASSES = {"cifar10": 10, "cifar100": 100, "digits": 10}
_TRAINED_ON = re.compile(r"[a-z0-9]+-train|unknown")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `import` command."""
    from nasaudit.pretrained import LAYOUTS, layout_names

    layouts = "; ".join(f"{name}: {layout.description}" for name, layout in LAYOUTS.items())
    p = subparsers.add_parser(
        "import",
        help="import a pretrained checkpoint (DARTS family, TrojanZoo/autovul, kuangliu, nasaudit)",
        description=(
            "Read a pretrained checkpoint without executing anything in it (weights only), map "
            "every tensor onto nasaudit's network (each shape checked: genotype, C, layers, "
            "auxiliary head, classes), move the training code's input normalisation into the "
            "model, and write MODEL_DIR/image/DATASET/NAME.pth with its sidecar (source file, "
            f"sha256, layout, normalisation, genotype hash). Layouts: {layouts}; auto: recognise "
            "the layout from the file's keys."
        ),
    )
    p.add_argument("layout", choices=layout_names(), metavar="LAYOUT",
                   help=f"the file's layout: {', '.join(layout_names())}")
    p.add_argument("file", metavar="FILE", help="the pretrained checkpoint (.pt/.pth)")
    p.add_argument("--genotype", default=None,
                   help="genotype of a DARTS-family file (shipped name, file, or file.py:NAME)")
    p.add_argument("--model", default=None,
                   help="manual baseline of a ResNet file (default: resnet18 for kuangliu, the "
                        "file's family for TrojanZoo)")
    p.add_argument("--C", type=int, default=None, help="initial channels of the genotype network (default 36)")
    p.add_argument("--layers", type=int, default=None, help="cells of the genotype network (default 20)")
    aux = p.add_mutually_exclusive_group()
    aux.add_argument("--auxiliary", dest="auxiliary", action="store_true", default=None,
                     help="the network has DARTS's auxiliary head (default: whether the file has one)")
    aux.add_argument("--no-auxiliary", dest="auxiliary", action="store_false",
                     help="the network has no auxiliary head")
    p.add_argument("--width", type=int, default=None, help="stem width of a baseline (default canonical, 64)")
    p.add_argument("--dataset", default="cifar10",
                   help="data set the model was trained on (default cifar10); picks the normalisation")
    p.add_argument("--num-classes", type=int, default=None,
                   help="classes of the data set (default: 10 for cifar10/digits, 100 for cifar100)")
    p.add_argument("--mean", default=None, metavar="R,G,B",
                   help="input mean in [0, 1] pixel units (default: the layout's training code's)")
    p.add_argument("--std", default=None, metavar="R,G,B",
                   help="input std in [0, 1] pixel units (default: the layout's training code's)")
    p.add_argument("--trained-on", default=None, metavar="DATASET-train|unknown",
                   help="the split the model was fitted on, for membership inference (default: "
                        "DATASET-train for layouts whose training script fits the whole training split)")
    p.add_argument("--model-dir", default="models", help="checkpoint root (default: ./models)")
    p.add_argument("--name", default=None,
                   help="file name of the checkpoint (default: the genotype or model name)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint of that name")
    p.set_defaults(func=run)


def _floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise InputError(flag, f"expected three comma-separated numbers (R,G,B), got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    """Read the file, check it fits, write the nasaudit checkpoint and sidecar, say what was done."""
    import os
    from pathlib import Path

    from nasaudit.infra.checkpoint import checkpoint_path, model_stem, sidecar_path
    from nasaudit.infra.outdir import check_output_dir, claim_output_dir
    from nasaudit.pretrained import read_pretrained, save_imported

    if args.genotype is not None and args.model is not None:
        raise InputError("--genotype", "give --genotype (a DARTS-family file) or --model (a baseline), not both")
    dataset = str(args.dataset).lower().replace("-", "").replace("_", "")
    num_classes = args.num_classes if args.num_classes is not None else _CLASSES.get(dataset)
    if num_classes is not None and not 1 <= num_classes <= 100_000:
        raise InputError("--num-classes", f"must be in 1..100000, got {num_classes}")
    if args.trained_on is not None and not _TRAINED_ON.fullmatch(args.trained_on):
        raise InputError("--trained-on", f"expected DATASET-train (e.g. {dataset}-train) or unknown, "
                                         f"got {args.trained_on!r}")
    if args.name is not None and model_stem(args.name) != args.name:
        raise InputError("--name", f"must be a plain file name (letters, digits, _ . -), got {args.name!r}")
    check_output_dir(args.model_dir, "models", source="--model-dir")  # checked now, written last
    imported = read_pretrained(
        args.file, args.layout, model=args.genotype or args.model, C=args.C, layers=args.layers,
        auxiliary=args.auxiliary, width=args.width, num_classes=num_classes, dataset=dataset,
        mean=_floats(args.mean, "--mean"), std=_floats(args.std, "--std"),
    )
    out = checkpoint_path(args.model_dir, dataset, args.name or imported.model_name)
    if Path(args.file).exists() and out.exists() and os.path.samefile(out, args.file):
        raise InputError(out, "is the input file; give another --name or --model-dir")
    if not args.overwrite and (out.exists() or sidecar_path(out).exists()):
        raise InputError(out, "a checkpoint of this name already exists; pass --overwrite or --name")
    trained_on = args.trained_on if args.trained_on is not None else imported.trained_on
    claim_output_dir(args.model_dir, "models", source="--model-dir")
    save_imported(imported, out, dataset=dataset, trained_on=trained_on)

    from nasaudit.models.base import count_parameters

    kwargs = " ".join(f"{k}={v}" for k, v in imported.model_kwargs.items())
    print(f"layout {imported.layout} ({imported.how})")
    print(f"model {imported.model_name}{' ' + kwargs if kwargs else ''}: "
          f"{count_parameters(imported.model):,} parameters (without auxiliary head), "
          f"{imported.num_classes} classes")
    print(f"normalisation mean {list(imported.mean)} std {list(imported.std)} ({imported.normalization_from})")
    if trained_on in (None, "unknown"):
        print("trained on: unknown (membership inference cannot tell its members)")
    else:
        print(f"trained on {trained_on}")
    for note in imported.notes:
        print(f"note: {note}")
    print(f"source {imported.source} sha256 {imported.sha256}")
    print(f"checkpoint {out}")
    return 0
