"""`nasaudit attack`: run one attack of the battery against a trained checkpoint.

Examples:
    nasaudit attack pgd --checkpoint models/image/cifar10/darts.pth --data-dir data
    nasaudit attack pgd-sweep --checkpoint m.pth --param eps=1/255,4/255,8/255 --json
    nasaudit attack knockoff --checkpoint m.pth --param budgets=1000,4000 --param replica=resnet18
    nasaudit attack membership --checkpoint m.pth --param n_members=200 --param n_nonmembers=200

Every `--param KEY=VALUE` overrides one field of the attack's Params (defaults: the study's
Table 5). Values are parsed by the field's type: numbers and fractions ("8/255"), comma
separated lists ("0,0.1,0.2"), true/false, none, or JSON for dicts. Nothing is evaluated.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from nasaudit.cli.options import (
    add_data_options,
    add_device_option,
    add_progress_option,
    parse_fraction,
)
from nasaudit.errors import InputError

ATTACK_NAMES = ("pgd", "pgd-sweep", "nes", "poison", "backdoor", "knockoff", "membership")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `attack` command."""
    parser = subparsers.add_parser(
        "attack",
        help="run an attack (pgd, pgd-sweep, nes, poison, backdoor, knockoff, membership)",
        description="Point one attack at a trained checkpoint and print its metrics (or the "
        "full JSON record). Defaults are the study's (Table 5); override with --param. The "
        "checkpoint is only read, never modified.",
    )
    parser.add_argument("attack", choices=ATTACK_NAMES, help="which attack")
    parser.add_argument("--checkpoint", required=True, help="the victim's .pth (with its sidecar)")
    parser.add_argument("--model", default=None, help="model name or genotype file (default: sidecar)")
    add_data_options(parser, dataset_help="data set (default: sidecar)")
    parser.add_argument(
        "--param", action="append", default=[], metavar="KEY=VALUE",
        help="override an attack parameter (repeatable), e.g. eps=8/255 or budgets=1000,2000",
    )
    parser.add_argument("--seed", type=int, default=0, help="attack seed (default 0)")
    add_device_option(parser)
    parser.add_argument("--work-dir", default=None, help="checkpoints of retraining attacks (resumable)")
    parser.add_argument("--output", default=None, help="also write the JSON record to this file")
    parser.add_argument("--json", action="store_true", help="print the full JSON record")
    add_progress_option(parser)
    parser.set_defaults(func=run)


def _field_kind(annotation: Any) -> str:
    """The parse kind of a Params field from its (string) annotation."""
    text = str(annotation)
    for kind in ("tuple", "dict", "bool", "int", "float"):
        if text.startswith(kind) or f"{kind} |" in text or text.startswith(f"{kind}["):
            return kind
    return "str"


def _scalar(text: str, kind: str, key: str) -> Any:
    try:
        if kind == "float":
            return parse_fraction(text)
        if kind == "int":
            value = parse_fraction(text)
            if value != int(value):
                raise ValueError
            return int(value)
    except (ValueError, argparse.ArgumentTypeError):
        raise InputError(f"--param {key}", f"expected a {kind}, got {text!r}") from None
    return text.strip()


def parse_param(params_cls: type, item: str) -> tuple[str, Any]:
    """Parse one "KEY=VALUE" against the fields of `params_cls` -> (key, typed value)."""
    key, sep, text = item.partition("=")
    key = key.strip().replace("-", "_")
    if not sep:
        raise InputError("--param", f"expected KEY=VALUE, got {item!r}")
    fields = {f.name: f for f in dataclasses.fields(params_cls)}
    if key not in fields:
        raise InputError("--param", f"unknown parameter {key!r}; known: {', '.join(fields)}")
    annotation = str(fields[key].type)
    if text.strip().lower() in ("none", "null") and "None" in annotation:
        return key, None
    kind = _field_kind(annotation)
    if kind == "bool":
        low = text.strip().lower()
        if low not in ("true", "false", "1", "0", "yes", "no"):
            raise InputError(f"--param {key}", f"expected true or false, got {text!r}")
        return key, low in ("true", "1", "yes")
    if kind == "dict":
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise InputError(f"--param {key}", f"expected a JSON object, got {text!r}") from None
        if not isinstance(value, dict):
            raise InputError(f"--param {key}", f"expected a JSON object, got {text!r}")
        return key, value
    if kind == "tuple":
        inner = annotation[annotation.find("[") + 1 :].split(",")[0].strip()
        parts = [p for p in text.strip().strip("()[]").split(",") if p.strip()]
        return key, tuple(_scalar(p, _field_kind(inner), key) for p in parts)
    return key, _scalar(text, kind, key)


def _summary(record: Any) -> str:
    """A readable multi-line summary: scalars and short per-case metrics, long vectors counted."""
    data = record.to_dict()
    lines = [f"{data['attack']} on {data['model_name']} ({data['dataset']}), seed {data['seed']}, "
             f"{data['seconds']:.1f} s"]
    skip = {"kind", "attack", "model_name", "dataset", "seed", "seconds", "params"}
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
    """Load the victim and the data, run the attack, print a summary or the JSON record."""
    from nasaudit.attacks import ATTACKS, Victim, run_attack
    from nasaudit.data import load_dataset
    from nasaudit.device import resolve_device
    from nasaudit.io import atomic_write_text
    from nasaudit.training import TrainConfig, load_checkpoint_model

    name = args.attack.replace("-", "_")
    params_cls = ATTACKS[name].params_cls
    overrides = dict(parse_param(params_cls, item) for item in args.param)
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
    victim = Victim(
        model=model, model_name=args.model or meta.get("model") or "", train_config=config,
        model_kwargs=dict(meta.get("model_kwargs") or {}),
    )
    try:
        record = run_attack(
            name, victim, data, overrides, device=device, seed=args.seed,
            progress=not args.no_progress, work_dir=args.work_dir,
        )
    except TypeError as exc:  # a Params field given a value of the wrong shape
        raise InputError("--param", str(exc)) from None
    text = record.to_json()
    if args.output:
        atomic_write_text(args.output, text + "\n")
    print(text if args.json else _summary(record), file=sys.stdout)
    return 0
