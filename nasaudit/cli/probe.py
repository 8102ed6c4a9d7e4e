"""`nasaudit probe`: gradient variance, loss contours and curvature of a model.

Examples:
    nasaudit probe gradvar --model darts --dataset cifar10 --data-dir data          # at init
    nasaudit probe gradvar --checkpoint models/image/cifar10/darts.pth --dataset cifar10 \\
        --data-dir data --n-samples 512 --json
    nasaudit probe contour-param --checkpoint models/image/digits/tiny_cnn.pth --out probes/
    nasaudit probe contour-input --checkpoint ... --n-samples 16 --out probes/
    nasaudit probe curvature --checkpoint ... --which both --out probes/

Without --checkpoint the model is built fresh (seeded, Kaiming-initialised by default), which is
the study's "at initialisation" measurement; gradvar then calibrates the fresh batch norms on a few
training batches first (--calibrate-bn) and prints which init and batch-norm statistics it used.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from nasaudit.cli.options import add_data_options, add_device_option, add_progress_option
from nasaudit.infra.errors import InputError

# Fields a probe's Params declares that the command line sets through a common flag instead.
_COMMON_FIELDS = {"gradvar": {"init"}}


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def _add_probe_flags(parser: argparse.ArgumentParser, name: str, params_cls: type) -> list[str]:
    """One flag per field of the probe's Params (`--n-samples` for n_samples), with its doc, its
    default and its choices; values stay text until `make_params` types and checks them, so a
    bad value is reported like a bad config value. Returns the fields given flags."""
    import dataclasses

    from nasaudit.infra.params import describe, field_kind

    fields = []
    for f in dataclasses.fields(params_cls):
        if f.name in _COMMON_FIELDS.get(name, ()):
            continue
        kind = field_kind(f)
        doc = f.metadata.get("doc", "")
        if kind.base == "bool":
            parser.add_argument(_flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=f"{doc} (default {'on' if f.default else 'off'})")
        else:
            shown = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
            suffix = "" if f.default is None else f" (default {shown})"
            choices = f.metadata.get("choices") if kind.base == "str" else None
            parser.add_argument(_flag(f.name), dest=f.name, default=None, choices=choices,
                                metavar=None if choices else f.name.upper(),
                                help=f"{doc} [{describe(f)}]{suffix}")
        fields.append(f.name)
    return fields


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help="model name, genotype name or genotype file (default: the checkpoint's sidecar)",
    )
    parser.add_argument(
        "--checkpoint", default=None, help="trained .pth; omitted: a freshly initialised model"
    )
    parser.add_argument(
        "--init",
        choices=("kaiming", "builtin"),
        default="kaiming",
        help="initialisation of a fresh model: Kaiming normal for every model "
        "(default) or the model's own constructor init",
    )
    add_data_options(
        parser,
        dataset_default=None,
        dataset_help="data set (default: the checkpoint's, from its sidecar; digits for a "
        "fresh model)",
        download_help="download CIFAR if missing",
        num_classes_help="use a class subset",
    )
    parser.add_argument("--C", type=int, default=None, help="genotype network channels (fresh)")
    parser.add_argument("--layers", type=int, default=None, help="genotype network cells (fresh)")
    parser.add_argument(
        "--width", type=int, default=None, help="manual baseline stem width (fresh model)"
    )
    parser.add_argument(
        "--no-auxiliary", action="store_true", help="fresh genotype network without auxiliary head"
    )
    add_device_option(parser)
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed for samples, directions and a fresh model's init (default 0)",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="folder for the record (PROBE.json), raw grids (npz) and plots (png)",
    )
    parser.add_argument("--json", action="store_true", help="print the record as JSON")
    add_progress_option(parser, help="no progress bar")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `probe` command with one sub-command per probe."""
    probe = subparsers.add_parser(
        "probe",
        help="gradient variance, loss contours, curvature of a model",
        description="Measure the properties the study links to NAS models' vulnerability: "
        "gradient variance (Eq. 14), loss contours in parameter (Eq. 12) and input space "
        "(Eq. 13), and the top Hessian eigenvalue.",
    )
    sub = probe.add_subparsers(dest="probe", metavar="PROBE", required=True)
    from nasaudit.probes.settings import PROBES

    for name, (_, params_cls) in PROBES.items():
        command = name.replace("_", "-")
        text = (params_cls.__doc__ or name).strip().splitlines()[0]
        parser = sub.add_parser(command, help=text, description=text)
        _add_common(parser)
        fields = _add_probe_flags(parser, name, params_cls)
        parser.set_defaults(func=run, command_name=command, probe_name=name, probe_fields=fields)


def _load_model(args: argparse.Namespace, data: Any, device: Any) -> tuple[Any, str, dict]:
    """(model in eval mode on device, model label, sidecar) from --checkpoint or built fresh."""
    from nasaudit.infra.device import prepare_model, seeded
    from nasaudit.models.registry import build_model, is_manual_model
    from nasaudit.probes.gradvar import kaiming_init
    from nasaudit.training import load_checkpoint_model

    kwargs: dict[str, Any] = {}
    if args.C is not None:
        kwargs["C"] = args.C
    if args.layers is not None:
        kwargs["layers"] = args.layers
    if args.no_auxiliary:
        kwargs["auxiliary"] = False
    if args.width is not None:
        kwargs["width"] = args.width
    if args.checkpoint is not None:
        if kwargs:
            raise InputError(
                "--C/--layers/--width",
                "only for a fresh model; a checkpoint's sidecar records its own",
            )
        model, meta = load_checkpoint_model(args.checkpoint, model_name=args.model, device=device)
        if model.num_classes != data.num_classes:
            raise InputError(
                args.checkpoint,
                f"model has {model.num_classes} classes but {data.name} has {data.num_classes}",
            )
        return model, str(args.model or meta.get("model", "?")), meta
    if args.model is None:
        raise InputError("--model", "give --model NAME|FILE or --checkpoint PATH")
    genotype_kwargs = sorted(set(kwargs) - {"width"})
    if genotype_kwargs and is_manual_model(args.model):
        raise InputError(
            "--model",
            f"{args.model!r} is a manual baseline; --C/--layers/"
            "--no-auxiliary only apply to genotype networks",
        )
    with seeded(args.seed):
        try:
            model = build_model(
                args.model, data.num_classes, mean=data.mean, std=data.std, **kwargs
            )
        except TypeError as exc:
            raise InputError(
                "--model", f"{args.model!r} does not take {sorted(kwargs)}: {exc}"
            ) from None
        # gradvar applies its init inside the probe (as the audit's probe_init unit does, so
        # both give one number for one model and seed); the other probes get it here.
        if args.init == "kaiming" and args.probe_name != "gradvar":
            kaiming_init(model)
    model = prepare_model(model, device)
    model.eval()
    return model, args.model, {}


def _summary(record: Any) -> str:
    """One or two human-readable lines for a probe record."""
    d = record.to_dict()
    if d["kind"] == "probe_gradvar":
        return (
            f"gradient variance (Eq. 14) {d['variance']:.6g}  log10 {d['log10_variance']:.3f}"
            f"\nartifact variant: sum of std {d['artifact_std_sum']:.6g}, sum of var "
            f"{d['artifact_var_sum']:.6g} (clip {d['params']['artifact_clip']}, "
            f"{d['clipped_fraction']:.1%} clipped); {d['n_samples']} samples, "
            f"{d['n_params']:,} parameters"
            f"\nweights: {d['init']}; batch-norm statistics: {d['bn_stats']}"
        )
    if d["kind"] == "probe_contour":
        return (
            f"{d['space']}-space contour: centre loss {d['centre_loss']:.4f}, mean increase "
            f"{d['mean_increase']:.4g}, border increase {d['border_increase']:.4g}, max "
            f"increase {d['max_increase']:.4g} (grid {d['points']}x{d['points']}, radius "
            f"{d['radius']})"
        )
    parts = []
    if d["param_top_eigenvalue"] is not None:
        parts.append(
            f"parameter Hessian top eigenvalue {d['param_top_eigenvalue']:.6g} "
            f"({d['param_iters']} iterations, "
            f"{'converged' if d['param_converged'] else 'not converged'})"
        )
    if d["input_top_eigenvalue_mean"] is not None:
        parts.append(
            f"input Hessian top eigenvalue: mean {d['input_top_eigenvalue_mean']:.6g}, "
            f"median {d['input_top_eigenvalue_median']:.6g}, max "
            f"{d['input_top_eigenvalue_max']:.6g} over {d['n_inputs']} inputs"
        )
    return "\n".join(parts)


def _check_params(args: argparse.Namespace) -> Any:
    """The probe's validated Params from its flags; a bad value names the flag at fault."""
    from nasaudit.cli.options import params_from_flags
    from nasaudit.probes import probe_spec

    values = {f: getattr(args, f) for f in args.probe_fields if getattr(args, f) is not None}
    if "init" in _COMMON_FIELDS.get(args.probe_name, ()):
        values["init"] = args.init
    flags = {field: _flag(field) for field in args.probe_fields}
    return params_from_flags(probe_spec(args.probe_name).params_cls, values, flags,
                             source=f"probe {args.probe_name}")


def run(args: argparse.Namespace) -> int:
    """Run one probe, print its summary (or JSON), write PROBE.json and plots to --out."""
    from pathlib import Path

    from nasaudit.cli.options import check_seed
    from nasaudit.data import load_dataset
    from nasaudit.infra.checkpoint import read_sidecar
    from nasaudit.infra.device import resolve_device
    from nasaudit.infra.io import atomic_write_json
    from nasaudit.probes import run_probe

    params = _check_params(args)  # before any data, model or device work
    check_seed("--seed", args.seed)
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        raise InputError("--out", f"{args.out} is not a directory")
    device = resolve_device(args.device)
    # The digits split depends on a seed: use the one the checkpoint was trained with, so that
    # "train" and "test" mean what they meant in training.
    data_seed = 0
    meta = (read_sidecar(args.checkpoint) or {}) if args.checkpoint is not None else {}
    config = meta.get("config")
    if isinstance(config, dict) and isinstance(config.get("seed"), int):
        data_seed = config["seed"]
    # Probe a checkpoint on the data it was trained on unless told otherwise.
    dataset = args.dataset or meta.get("dataset") or "digits"
    data = load_dataset(
        dataset,
        args.data_dir,
        download=args.download,
        num_classes=args.num_classes,
        seed=data_seed,
    )
    model, label, _ = _load_model(args, data, device)
    if args.out is not None:
        from nasaudit.infra.outdir import claim_output_dir

        claim_output_dir(args.out, "probe", source="--out")
    try:
        record = run_probe(
            args.probe_name,
            model,
            data,
            params,
            device=device,
            seed=args.seed,
            out_dir=args.out,
            progress=not args.no_progress,
            at_init=args.checkpoint is None,
        )
    except ValueError as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"probe {args.probe_name}", str(exc)) from None
    record.model = label
    record.checkpoint = None if args.checkpoint is None else str(args.checkpoint)
    if args.out is not None:
        path = atomic_write_json(Path(args.out) / f"{args.probe_name}.json", record.to_dict())
        record.files["record"] = str(path)
    if args.json:
        print(json.dumps(record.to_dict(), indent=2, sort_keys=True))
    else:
        print(
            f"{label} on {data.name} ({'checkpoint' if args.checkpoint else args.init + ' init'})"
        )
        print(_summary(record))
        for kind, path in sorted(record.files.items()):
            print(f"{kind}: {path}")
    return 0
