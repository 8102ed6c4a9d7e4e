"""`nasaudit search`: a DARTS-style search with n_step and the gamma skip penalty, resumable.

Examples:
    nasaudit search --dataset cifar10 --data-dir data --epochs 50 --out runs/darts
    nasaudit search --config experiments/search_mitigated.toml --data-dir data --out runs/mitigated
    nasaudit search --dataset digits --epochs 1 --C 4 --layers 3 --out /tmp/s --no-progress
    nasaudit search ... --out runs/darts --resume        # continue a killed run exactly

Settings: SearchConfig defaults < the TOML file (--config) < flags given on the command line.
"""

from __future__ import annotations

import argparse

from nasaudit.cli.options import add_data_options, add_device_option, add_progress_option
from nasaudit.infra.errors import InputError

# flag dest -> SearchConfig field (every flag defaults to None: "not given, keep the config's")
_FIELDS = (
    "dataset", "data_dir", "space", "C", "layers", "nodes", "batch_size", "epochs", "n_step",
    "mode", "gamma", "partial_channels", "seed", "lr", "arch_lr", "train_subset", "log_every",
    "checkpoint_every", "probe_samples", "max_steps", "skip_cap", "early_stop", "hessian_samples",
)


class _HelpFormatter(argparse.HelpFormatter):
    """Adds each setting's default, read from SearchConfig when --help is shown (SearchConfig's
    module imports torch, which the parser itself must not)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.dest in _FIELDS:
            from nasaudit.search.run import SearchConfig

            default = getattr(SearchConfig(), action.dest)
            if default is not None:
                text += f" (default: {default:g})" if isinstance(default, float) else f" (default: {default})"
        return text


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `search` command."""
    p = subparsers.add_parser(
        "search",
        help="DARTS-style architecture search (n_step, gamma skip penalty, TensorBoard, resume)",
        description="Search a cell pair with DARTS's bi-level optimisation. Writes OUT/genotype.json "
        "every epoch, TensorBoard events to OUT/tb/NAME (NAME: OUT's folder name, the run's name in "
        "TensorBoard; the Custom Scalars tab groups alpha by cell type and edge), checkpoints to "
        "OUT/checkpoint.pt, and ends by printing the genotype and its cell analysis. Defaults are "
        "DARTS's search settings.",
        epilog="What runs when. Every --log-every iterations: TensorBoard scalars (losses, accuracies, "
        "learning rates, alpha per edge and op, skip-connect weight and count) and the gradient-variance "
        "monitor, which computes one per-sample gradient of the supernet weights for each of "
        "--probe-samples images (its cost grows with --probe-samples; 0 turns it off). Every "
        "--checkpoint-every iterations: a checkpoint. At every epoch end: the genotype is derived "
        "(and, with --early-stop, the Hessian eigenvalue measured), OUT/genotype.json, "
        "OUT/genotypes/ and OUT/history.json are written and the epoch is checkpointed; only then "
        "come the epoch's TensorBoard summaries (the same as a log plus the alpha heatmaps, the cell "
        "drawing and the gradient-variance monitor). A status bar names each part while it runs. A "
        "run stopped during the summaries resumes (--resume) at the next epoch and writes that "
        "epoch's summaries again first.",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--config", default=None, help="TOML file of search settings (flags win)")
    add_data_options(p, dataset_help="data set",
                     data_dir_help="folder with the data set files (not needed for digits)")
    p.add_argument("--space", help="search space: darts | paper | a .json file")
    p.add_argument("--epochs", type=int, help="search epochs")
    p.add_argument("--n-step", type=int, help="weight steps per alpha step")
    p.add_argument("--mode", choices=("first_order", "unrolled", "finite_difference"),
                   help="alpha gradient")
    p.add_argument("--gamma", type=float, help="skip_connect weight scale in (0, 1]")
    p.add_argument("--hook", action="append", metavar="NAME:ARG",
                   help="alpha hook, e.g. skip_penalty:0.5 (repeatable; replaces the config's; "
                        "skip_penalty and --gamma != 1 exclude each other)")
    p.add_argument("--objective", action="append", metavar="NAME:WEIGHT",
                   help="architecture objective added to L_val: input_curvature, beta, gradvar, as "
                        "NAME:WEIGHT or NAME:WEIGHT:KEY=VALUE,... (e.g. input_curvature:0.1:h=0.02; "
                        "repeatable; replaces the config's; a negative weight rewards the term)")
    p.add_argument("--skip-cap", type=int, metavar="K",
                   help="at most K skip connects per derived cell (DARTS+); the next-best op replaces the rest")
    p.add_argument("--early-stop", metavar="darts-es[:K[:RATIO]]",
                   help="DARTS-ES (RobustDARTS, Zela et al. 2020): at each epoch end, the top eigenvalue "
                        "of the Hessian of L_val w.r.t. alpha; mean(i) is its mean over epochs i-K+1..i; "
                        "stop at the first epoch i with mean(i-K)/mean(i) < RATIO and return the genotype "
                        "of epoch i-K (defaults K=5, RATIO=0.75, so never before epoch 2K)")
    p.add_argument("--hessian-samples", type=int, metavar="N",
                   help="fixed, unaugmented images of the architecture half on which --early-stop "
                        "measures the eigenvalue, in chunks of --batch-size (0: all)")
    p.add_argument("--partial-channels", type=int, metavar="K",
                   help="PC-DARTS: 1/K of the channels through the mixed ops (1: off)")
    p.add_argument("--C", type=int, help="initial channels")
    p.add_argument("--layers", type=int, help="cells")
    p.add_argument("--nodes", type=int, help="intermediate nodes per cell")
    p.add_argument("--batch-size", type=int, help="batch size")
    p.add_argument("--lr", type=float, help="weight learning rate")
    p.add_argument("--arch-lr", type=float, help="alpha learning rate")
    p.add_argument("--seed", type=int, help="seed")
    p.add_argument("--train-subset", type=int, metavar="N", help="use the first N training images")
    p.add_argument("--log-every", type=int, metavar="N",
                   help="TensorBoard scalars and the gradient-variance monitor every N iterations "
                        "(0: at epoch ends only)")
    p.add_argument("--checkpoint-every", type=int, metavar="N",
                   help="checkpoint every N iterations (0: at epoch ends only)")
    p.add_argument("--probe-samples", type=int, metavar="N",
                   help="fixed images of the gradient-variance monitor, which computes one "
                        "per-sample gradient of the supernet weights for each at every --log-every "
                        "step and epoch end (0: off)")
    p.add_argument("--max-steps", type=int, metavar="N",
                   help="stop after N iterations in total (resume later with --resume)")
    add_device_option(p, show_default=True)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    add_progress_option(p)
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    """SearchConfig from defaults < --config TOML < the flags given."""
    from nasaudit.cli.options import check_seed
    from nasaudit.infra.params import ParamError
    from nasaudit.search.hooks import parse_hook
    from nasaudit.search.run import SearchConfig

    check_seed("--seed", args.seed)
    overrides = {k: getattr(args, k) for k in _FIELDS if getattr(args, k, None) is not None}
    if args.hook:
        for spec in args.hook:
            parse_hook(spec)  # InputError naming --hook, before the TOML is read
        overrides["hooks"] = list(args.hook)
    if args.objective:
        from nasaudit.search.objectives import parse_objective

        for spec in args.objective:
            parse_objective(spec)  # InputError naming --objective
        overrides["objectives"] = list(args.objective)
    try:
        if args.config:
            return SearchConfig.from_toml(args.config, overrides)
        return SearchConfig.from_dict(overrides, source="command line")
    except ParamError as exc:
        if exc.field in overrides and exc.field not in ("hooks", "objectives"):
            raise InputError("--" + exc.field.replace("_", "-"), exc.problem) from None
        raise
    except InputError as exc:
        # "KEY: problem" about a value given as a flag: name the flag, not the TOML file.
        key, sep, problem = exc.problem.partition(": ")
        if sep and key in overrides and key not in ("hooks", "objectives"):
            raise InputError("--" + key.replace("_", "-"), problem) from None
        raise


def run(args: argparse.Namespace) -> int:
    """Run the search, then print the genotype, its cell analysis and the search cost."""
    from nasaudit.analysis import analyze_genotype
    from nasaudit.infra.outdir import claim_output_dir
    from nasaudit.search.run import format_seconds, run_search
    from nasaudit.search_space import load_search_space

    config = config_from_args(args)
    load_search_space(config.space)  # a bad space file fails here, before OUT is made
    claim_output_dir(args.out, "search", source="--out")
    result = run_search(config, out_dir=args.out, device=args.device, resume=args.resume,
                        progress=not args.no_progress)
    seconds = sum(h["seconds"] for h in result.history)
    print(f"search: {result.epochs_done}/{config.epochs} epochs, {result.iterations} iterations, "
          f"{result.weight_steps} weight steps, {result.arch_steps} alpha steps, "
          f"{result.virtual_steps} unrolled steps, {format_seconds(seconds)} "
          f"(mode {config.mode}, n_step {config.n_step}, gamma {config.gamma:g})")
    for term in config.objective_terms():
        print(f"  objective {term.spec}")
    if result.early_stop and result.early_stop.get("stopped_at_epoch"):
        es = result.early_stop
        print(f"early stop (darts-es, K={es['window']}, RATIO={es['ratio']:g}) at epoch "
              f"{es['stopped_at_epoch']}: returned the genotype of epoch {es['returned_epoch']}")
    if not result.finished:
        print(f"stopped early; continue with: nasaudit search ... --out {args.out} --resume")
    if result.genotype is None:
        print("no genotype yet (no epoch finished)")
        return 0
    g = result.genotype
    print(f"genotype: {result.genotype_path}")
    for cell in ("normal", "reduce"):
        pairs = ", ".join(f"{op}<-{inp}" for op, inp in getattr(g, cell))
        print(f"  {cell}: {pairs}  concat {list(getattr(g, f'{cell}_concat'))}")
    analysis = analyze_genotype(g)
    print(f"  {'cell':<8}{'depth':>7}{'width':>7}{'skip_connects':>15}")
    for cell in ("normal", "reduce"):
        m = analysis[cell]
        print(f"  {cell:<8}{m['depth']:>7}{str(m['width']) + 'c':>7}{m['skip_connects']:>15}")
    return 0
