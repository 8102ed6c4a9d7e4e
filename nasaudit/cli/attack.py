"""`nasaudit attack`: run one attack of the battery against a trained checkpoint.

Examples:
    nasaudit attack pgd --checkpoint models/image/cifar10/darts.pth --data-dir data
    nasaudit attack pgd-sweep --checkpoint m.pth --param eps=1/255,4/255,8/255 --json
    nasaudit attack knockoff --checkpoint m.pth --param budgets=1000,4000 --param replica=resnet18
    nasaudit attack membership --checkpoint m.pth --param n_members=200 --param n_nonmembers=200
    nasaudit attack model-reuse --checkpoint m.pth --param budget=0.1 --param host=mlp --json

Every `--param KEY=VALUE` overrides one field of the attack's Params (defaults: the study's
Table 5; `nasaudit attack --help` lists them). Values are parsed by the field's type and checked
against its constraints by `nasaudit.infra.params.make_params` before anything is loaded: numbers and
fractions ("8/255"), comma separated lists ("0,0.1,0.2"), true/false, none, or JSON for dicts.
Nothing is evaluated. A bad value is one error line (exit code 2).

Every rate in the summary (ASR, accuracies, ...) is shown with its count and n and a 95% exact
interval, e.g. "0.250 (1/4, 95% CI 0.01-0.81) [few inputs]"; `--json` adds them under "rates".
A run on fewer than 20 inputs, or against a victim whose clean accuracy is near chance, prints a
"warning:" line on stderr (the exit code stays 0).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from nasaudit.attacks import NAMES, TEST, TEST_NOT_TARGET, attack_spec
from nasaudit.cli.options import add_data_options, add_device_option, add_progress_option
from nasaudit.infra.errors import InputError

ATTACK_NAMES = tuple(name.replace("_", "-") for name in NAMES)

# The epilog lists every attack's parameters; it is built only when --help is shown, because
# the Params dataclasses live in modules that import torch.
_PARAMS_EPILOG = "<attack parameters>"


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    def add_text(self, text: str | None) -> None:
        super().add_text(_params_epilog() if text == _PARAMS_EPILOG else text)


def _params_epilog() -> str:
    """Every attack's parameters with their defaults, types and constraints."""
    from nasaudit.infra.params import params_help

    lines = ["attack parameters (set with --param KEY=VALUE; defaults: the study's Table 5):"]
    for name in ATTACK_NAMES:
        lines.append(f"  {name}:")
        lines += [f"    {line}" for line in params_help(attack_spec(name).params_cls)]
    return "\n".join(lines)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `attack` command."""
    parser = subparsers.add_parser(
        "attack",
        help=f"run an attack ({', '.join(ATTACK_NAMES)})",
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
        help="run the victim's passes under bf16 autocast on any device (the default on CUDA; "
        "faster on a CPU with AVX-512 BF16 instructions: `benchmarks/attacks.py --bf16` measures it); "
        "success checks and the finite-difference and boundary oracles stay float32",
    )
    parser.add_argument("--work-dir", default=None, help="checkpoints of retraining attacks (resumable)")
    parser.add_argument("--output", default=None, help="also write the JSON record to this file")
    parser.add_argument("--force", action="store_true", help="replace the --output file if it exists")
    parser.add_argument("--json", action="store_true", help="print the full JSON record")
    add_progress_option(parser)
    parser.set_defaults(func=run)


def split_param(item: str) -> tuple[str, str]:
    """One "KEY=VALUE" -> (key with "-" as "_", value text); the value is typed and checked
    against the attack's Params by `nasaudit.infra.params.make_params`."""
    key, sep, text = item.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key:
        raise InputError("--param", f"expected KEY=VALUE, got {item!r}")
    return key, text


def parse_params(params_cls: type, items: list[str]) -> Any:
    """The validated Params instance from the --param items (later items win)."""
    from nasaudit.infra.params import make_params

    return make_params(params_cls, dict(split_param(item) for item in items), source="--param")


# ---------------------------------------------------------------------------- rates and their n
#
# Every rate the summary prints is a count over a denominator; each attack's AttackSpec says
# which record field is a rate over which count (`rates`, `counts`, `axis`, `victim_accuracy`).
# The test-split counts (TEST, TEST_NOT_TARGET) are not stored in the records: the CLI has the
# data set the attack ran on.
_SPLIT_COUNT_TEXT: dict[str, tuple[str, str]] = {
    TEST: ("test inputs", "a data set with more test inputs"),
    TEST_NOT_TARGET: ("test inputs not of the target class", "a data set with more test inputs"),
}


def count_text(attack: str, count: str) -> tuple[str, str]:
    """(what `count` counts, how to get more of it) for one of `attack`'s rate counts."""
    return _SPLIT_COUNT_TEXT.get(count) or attack_spec(attack).counts[count]


# Test inputs the CLI classifies to check a victim whose record holds no clean accuracy, and
# the name of that rate in the output.
VICTIM_CHECK_INPUTS = 1000
CLI_VICTIM_ACCURACY = "victim_accuracy_cli"


def rate_counts(attack: str, record: dict[str, Any], test_labels: Any) -> dict[str, int]:
    """The denominators of `attack`'s rates: count name (see AttackSpec.rates) -> n.

    record: the record's dict; test_labels: int64 [N] labels of the test split it ran on.
    """
    counts: dict[str, int] = {}
    for count in set(attack_spec(attack).rates.values()):
        if count == TEST:
            counts[count] = int(len(test_labels))
        elif count == TEST_NOT_TARGET:
            counts[count] = int((test_labels != int(record["target_class"])).sum())
        else:
            value = record[count]
            counts[count] = len(value) if isinstance(value, list) else int(value)
    return counts


def record_rates(attack: str, record: dict[str, Any], counts: dict[str, int]) -> dict[str, Any]:
    """Every rate of a record as a `nasaudit.rates.Rate`, by name: "asr" for a single rate,
    "asr.most_likely" for a dict entry, "asr[2]" for the third entry of a list. Fields that are
    missing or None (badnet_asr without compare_badnet) and non-finite values are left out."""
    import math

    from nasaudit.rates import rate_from_fraction

    rates = {}
    for field, count in attack_spec(attack).rates.items():
        value = record.get(field)
        if isinstance(value, dict):
            entries = {f"{field}.{key}": v for key, v in value.items()}
        elif isinstance(value, list):
            entries = {f"{field}[{i}]": v for i, v in enumerate(value)}
        else:
            entries = {field: value}
        for name, fraction in entries.items():
            if isinstance(fraction, (int, float)) and math.isfinite(fraction) and 0 <= fraction <= 1:
                rates[name] = rate_from_fraction(fraction, counts[count])
    return rates


def rates_json(rates: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{name: {successes, n, value, low, high}} of `record_rates` output (JSON-ready)."""
    out = {}
    for name, rate in rates.items():
        low, high = rate.interval
        out[name] = {"successes": rate.successes, "n": rate.n, "value": rate.value,
                     "low": low, "high": high}
    return out


def rate_warnings(attack: str, counts: dict[str, int], victim_accuracy: Any,
                  num_classes: int, accuracy_on: str) -> list[str]:
    """One-line warnings (each starting "warning:"): rates over fewer than FEW_INPUTS inputs,
    and a victim whose clean accuracy (a Rate; `accuracy_on` names what its n counts) is near
    chance for `num_classes` classes (`nasaudit.rates.near_chance`)."""
    from nasaudit.rates import FEW_INPUTS, near_chance

    lines = []
    fields = attack_spec(attack).rates
    few = [count for count in dict.fromkeys(fields.values()) if counts[count] < FEW_INPUTS]
    if few:
        parts = []
        for count in few:
            names = ", ".join(f for f, c in fields.items() if c == count)
            parts.append(f"{names} over {counts[count]} {count_text(attack, count)[0]}")
        hints = " / ".join(dict.fromkeys(count_text(attack, count)[1] for count in few))
        lines.append(f"warning: {attack} rates rest on fewer than {FEW_INPUTS} inputs ("
                     + "; ".join(parts) + f"): read the 95% intervals, not the values; raise {hints}")
    if victim_accuracy is not None and victim_accuracy.n > 0 and near_chance(victim_accuracy.value, num_classes):
        low, high = victim_accuracy.interval
        lines.append(
            f"warning: the victim is near chance: clean accuracy {victim_accuracy.value:.3f} "
            f"({victim_accuracy.successes}/{victim_accuracy.n} {accuracy_on}, 95% CI {low:.2f}-{high:.2f}) "
            f"against a chance level of {1 / num_classes:.3f} ({num_classes} classes); its attack "
            "rates say little about the architecture (train it longer or check the checkpoint)"
        )
    return lines


def _victim_accuracy(model: Any, dataset: Any, seed: int, device: Any) -> Any:
    """The victim's clean accuracy as a Rate on at most VICTIM_CHECK_INPUTS seeded test inputs
    (for records that hold none)."""
    from nasaudit.attacks.sampling import select_correct
    from nasaudit.rates import Rate

    candidates, kept, _ = select_correct(model, dataset.test_images, dataset.test_labels,
                                         VICTIM_CHECK_INPUTS, seed, device=device)
    return Rate(len(kept), len(candidates))


def _summary(data: dict[str, Any], rates: dict[str, Any] | None = None) -> str:
    """A readable multi-line summary of a record's dict: scalars and short per-case metrics,
    long vectors counted; every rate in `rates` (see `record_rates`) with its n and 95% interval."""
    rates = rates or {}
    lines = [f"{data['attack']} on {data['model_name']} ({data['dataset']}), seed {data['seed']}, "
             f"{data['seconds']:.1f} s, autocast {data['autocast']}"]
    skip = {"kind", "attack", "model_name", "dataset", "seed", "seconds", "params", "autocast"}
    axis, label = attack_spec(data["attack"]).axis or (None, None)
    for key, value in data.items():
        if key in skip:
            continue
        if key in rates:
            lines.append(f"  {key}: {rates[key]}")
        elif isinstance(value, dict) and value and all(f"{key}.{k}" in rates for k in value):
            lines.append(f"  {key}:")
            lines += [f"    {k}: {rates[f'{key}.{k}']}" for k in value]
        elif isinstance(value, list) and value and all(f"{key}[{i}]" in rates for i in range(len(value))):
            lines.append(f"  {key}:")
            along = data.get(axis) if axis else None
            for i in range(len(value)):
                where = (f"{label}={_short(along[i])}" if isinstance(along, list) and len(along) == len(value)
                         else f"[{i}]")
                lines.append(f"    {where}: {rates[f'{key}[{i}]']}")
        else:
            lines.append(f"  {key}: {_short(value)}")
    if CLI_VICTIM_ACCURACY in rates:
        lines.append(f"  {CLI_VICTIM_ACCURACY} (the victim on seeded test inputs, measured by the CLI): "
                     f"{rates[CLI_VICTIM_ACCURACY]}")
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
    the JSON record (plus "rates": every rate with its n and 95% exact (Clopper-Pearson) interval), then warn on
    stderr when rates rest on fewer than FEW_INPUTS inputs or the victim is near chance."""
    import contextlib
    import os
    from pathlib import Path

    import torch

    from nasaudit.attacks import Victim, run_attack
    from nasaudit.data import load_dataset
    from nasaudit.infra.device import resolve_device
    from nasaudit.infra.io import atomic_write_text
    from nasaudit.training import TrainConfig, load_checkpoint_model

    name = args.attack.replace("-", "_")
    # Everything the user typed is checked before the checkpoint and the data are loaded.
    spec = attack_spec(name)
    params = parse_params(spec.params_cls, args.param)
    from nasaudit.cli.options import check_seed

    check_seed("--seed", args.seed)
    output = Path(args.output) if args.output else None
    if output is not None and (output.is_dir() or args.output.endswith(("/", os.sep))):
        raise InputError("--output", f"{args.output} is a directory; give the path of a file")
    if output is not None and output.parent.exists() and not output.parent.is_dir():
        raise InputError("--output", f"{output.parent} is not a directory")
    if output is not None:
        from nasaudit.infra.checkpoint import sidecar_path
        from nasaudit.infra.outdir import check_output_file

        check_output_file(output, inputs=(args.checkpoint, sidecar_path(args.checkpoint)), force=args.force,
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
        from nasaudit.infra.outdir import claim_output_dir

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
    out = {**record.to_dict(), "autocast": "bf16" if args.bf16 or device.type == "cuda" else "off"}
    counts = rate_counts(name, out, data.test_labels)
    rates = record_rates(name, out, counts)
    field = spec.victim_accuracy
    if field is not None and field in rates:
        victim_acc = rates[field]
        accuracy_on = count_text(name, spec.rates[field])[0]
    elif not spec.trained_victim:
        victim_acc, accuracy_on = None, ""
    else:
        victim_acc = _victim_accuracy(model, data, args.seed, device)
        accuracy_on = "seeded test inputs, checked by the CLI"
        rates[CLI_VICTIM_ACCURACY] = victim_acc
    text = json.dumps({**out, "rates": rates_json(rates)}, indent=2, sort_keys=True)
    if output is not None:
        atomic_write_text(output, text + "\n")
    print(text if args.json else _summary(out, rates), file=sys.stdout)
    # Warnings, not failures: after the summary, where they are read.
    for line in rate_warnings(name, counts, victim_acc, data.num_classes, accuracy_on):
        print(line, file=sys.stderr)
    return 0
