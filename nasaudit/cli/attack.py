"""`nasaudit attack`: run one attack of the battery against a trained checkpoint.

Examples:
    nasaudit attack pgd --checkpoint models/image/cifar10/darts.pth --data-dir data
    nasaudit attack pgd-sweep --checkpoint m.pth --param eps=1/255,4/255,8/255 --json
    nasaudit attack knockoff --checkpoint m.pth --param budgets=1000,4000 --param replica=resnet18
    nasaudit attack membership --checkpoint m.pth --param n_members=200 --param n_nonmembers=200
    nasaudit attack model-reuse --checkpoint m.pth --param budget=0.1 --param host=mlp --json

Every `--param KEY=VALUE` overrides one field of the attack's Params (defaults: the study's
Table 5; `nasaudit attack --help` lists them). Values are parsed by the field's type and checked
against its constraints by `nasaudit.params.make_params` before anything is loaded: numbers and
fractions ("8/255"), comma separated lists ("0,0.1,0.2"), true/false, none, or JSON for dicts.
Nothing is evaluated. A bad value is one error line (exit code 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from nasaudit.cli.options import add_data_options, add_device_option, add_progress_option
from nasaudit.errors import InputError

ATTACK_NAMES = ("pgd", "pgd-sweep", "nes", "poison", "backdoor", "knockoff", "membership", "model-reuse")

# The epilog lists every attack's parameters; it is built only when --help is shown, because
# the Params dataclasses live in modules that import torch.
_PARAMS_EPILOG = "<attack parameters>"


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    def add_text(self, text: str | None) -> None:
        super().add_text(_params_epilog() if text == _PARAMS_EPILOG else text)


def _params_epilog() -> str:
    """Every attack's parameters with their defaults, types and constraints."""
    from nasaudit.attacks import ATTACKS
    from nasaudit.params import params_help

    lines = ["attack parameters (set with --param KEY=VALUE; defaults: the study's Table 5):"]
    for name in ATTACK_NAMES:
        lines.append(f"  {name}:")
        lines += [f"    {line}" for line in params_help(ATTACKS[name.replace('-', '_')].params_cls)]
    return "\n".join(lines)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `attack` command."""
    parser = subparsers.add_parser(
        "attack",
        help="run an attack (pgd, pgd-sweep, nes, poison, backdoor, knockoff, membership, model-reuse)",
        description="Point one attack at a trained checkpoint and print its metrics (or the\n"
        "full JSON record). Defaults are the study's (Table 5); override them with --param\n"
        "(the parameters are listed below). The checkpoint is only read, never modified.",
        epilog=_PARAMS_EPILOG,
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("attack", choices=ATTACK_NAMES, help="which attack")
    parser.add_argument("--checkpoint", required=True, help="the victim's .pth (with its sidecar)")
    parser.add_argument("--model", default=None, help="model name or genotype file (default: sidecar)")
    add_data_options(parser, dataset_help="data set (default: sidecar)")
    parser.add_argument(
        "--param", action="append", default=[], metavar="KEY=VALUE",
        help="override an attack parameter (repeatable), e.g. eps=8/255 or budgets=1000,2000; "
        "numbers, fractions, comma-separated lists, true/false, none, JSON for dicts",
    )
    parser.add_argument("--seed", type=int, default=0, help="attack seed (default 0)")
    add_device_option(parser)
    parser.add_argument(
        "--bf16", action="store_true",
        help="run the victim's passes under bf16 autocast on any device (the default on CUDA; on "
        "a CPU with AVX-512 BF16 instructions, PGD on a full-width resnet18 ran 3.7x faster); success "
        "checks and the finite-difference and boundary oracles stay float32",
    )
    parser.add_argument("--work-dir", default=None, help="checkpoints of retraining attacks (resumable)")
    parser.add_argument("--output", default=None, help="also write the JSON record to this file")
    parser.add_argument("--json", action="store_true", help="print the full JSON record")
    add_progress_option(parser)
    parser.set_defaults(func=run)


def split_param(item: str) -> tuple[str, str]:
    """One "KEY=VALUE" -> (key with "-" as "_", value text); the value is typed and checked
    against the attack's Params by `nasaudit.params.make_params`."""
    key, sep, text = item.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key:
        raise InputError("--param", f"expected KEY=VALUE, got {item!r}")
    return key, text


def parse_params(params_cls: type, items: list[str]) -> Any:
    """The validated Params instance from the --param items (later items win)."""
    from nasaudit.params import make_params

    return make_params(params_cls, dict(split_param(item) for item in items), source="--param")


def _summary(data: dict[str, Any]) -> str:
    """A readable multi-line summary of a record's dict: scalars and short per-case metrics,
    long vectors counted."""
    lines = [f"{data['attack']} on {data['model_name']} ({data['dataset']}), seed {data['seed']}, "
             f"{data['seconds']:.1f} s, autocast {data['autocast']}"]
    skip = {"kind", "attack", "model_name", "dataset", "seed", "seconds", "params", "autocast"}
    for key, value in data.items():
        if key in skip:
            continue
        lines.append(f"  {key}: {_short(value)}")
    lines.append("  params: " + ", ".join(f"{k}={_short(v)}" for k, v in data["params"].items()))
    return "\n".join(lines)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_short(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        if len(value) > 12:
            return f"[{len(value)} values]"
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return str(value)


def run(args: argparse.Namespace) -> int:
    """Check the parameters, load the victim and the data, run the attack, print a summary or
    the JSON record."""
    import contextlib
    import os
    from pathlib import Path

    import torch

    from nasaudit.attacks import ATTACKS, Victim, run_attack
    from nasaudit.data import load_dataset
    from nasaudit.device import resolve_device
    from nasaudit.io import atomic_write_text
    from nasaudit.training import TrainConfig, load_checkpoint_model

    name = args.attack.replace("-", "_")
    # Everything the user typed is checked before the checkpoint and the data are loaded.
    params = parse_params(ATTACKS[name].params_cls, args.param)
    from nasaudit.cli.options import check_seed

    check_seed("--seed", args.seed)
    output = Path(args.output) if args.output else None
    if output is not None and (output.is_dir() or args.output.endswith(("/", os.sep))):
        raise InputError("--output", f"{args.output} is a directory; give the path of a file")
    if output is not None and output.parent.exists() and not output.parent.is_dir():
        raise InputError("--output", f"{output.parent} is not a directory")
    if output is not None:
        from nasaudit.checkpoint import sidecar_path
        from nasaudit.outdir import check_output_file

        check_output_file(output, inputs=(args.checkpoint, sidecar_path(args.checkpoint)),
                          source="--output")
    device = resolve_device(args.device)
    model, meta = load_checkpoint_model(args.checkpoint, model_name=args.model, device=device)
    config = TrainConfig.from_dict(meta["config"]) if isinstance(meta.get("config"), dict) else None
    dataset = args.dataset or meta.get("dataset")
    if not dataset:
        raise InputError("--dataset", "the checkpoint's sidecar names no data set; pass --dataset")
    # The data seed matters for data sets split at load time (digits): use the training seed.
    data = load_dataset(
        dataset, args.data_dir, seed=config.seed if config else 0,
        num_classes=meta.get("num_classes") if dataset == "imagenet32" else None,
    )
    if args.work_dir is not None:
        from nasaudit.outdir import claim_output_dir

        claim_output_dir(args.work_dir, "attack", source="--work-dir")
    victim = Victim(
        model=model, model_name=args.model or meta.get("model") or "", train_config=config,
        model_kwargs=dict(meta.get("model_kwargs") or {}),
    )
    with torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext():
        record = run_attack(
            name, victim, data, params, device=device, seed=args.seed,
            progress=not args.no_progress, work_dir=args.work_dir,
        )
    # The output says which precision produced it (CUDA opens bf16 autocast by itself).
    data = {**record.to_dict(), "autocast": "bf16" if args.bf16 or device.type == "cuda" else "off"}
    text = json.dumps(data, indent=2, sort_keys=True)
    if output is not None:
        atomic_write_text(output, text + "\n")
    print(text if args.json else _summary(data), file=sys.stdout)
    return 0
