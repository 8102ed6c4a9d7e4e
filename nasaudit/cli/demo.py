"""`nasaudit demo`: search and audit on the embedded digits data, end to end, in a few minutes."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `demo` command."""
    p = subparsers.add_parser(
        "demo",
        help="small end-to-end search-and-audit on embedded digits data (no files needed)",
        description=(
            "Search a cell on the embedded digits data, then audit it next to a published "
            "genotype (darts_v2) and a manual baseline (resnet18): train, clean accuracy, every "
            "probe and every attack at tiny budgets, and the report. A few minutes on 2 CPU "
            "cores. Rerunning into the same directory reuses finished work."
        ),
    )
    p.add_argument("--out", default="nasaudit-demo", metavar="DIR",
                   help="output directory (default: ./nasaudit-demo)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--quick", action="store_true", help="even smaller budgets (a smoke test)")
    p.add_argument("--no-progress", action="store_true",
                   help="print nothing while running: no plan line, no bar over the units (drawn "
                        "on a terminal) and no line per finished unit (printed instead when "
                        "stdout or stderr is not a terminal); failed units are still named on "
                        "stderr")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="worker processes running the units, the cores split among them "
                        "(default: 2 on a CPU with 2 or more cores, else 1; 1 runs them in this "
                        "process)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Entry point of `nasaudit demo`."""
    from nasaudit.audit.demo import run_demo, summarize
    from nasaudit.infra.errors import InputError
    from nasaudit.infra.outdir import claim_output_dir

    if args.workers is not None and args.workers < 1:  # before anything is written
        raise InputError("--workers", f"must be >= 1, got {args.workers}")
    claim_output_dir(args.out, "demo", source="--out")
    summary = run_demo(args.out, device=args.device, quick=args.quick,
                       progress=not args.no_progress, workers=args.workers)
    print(summarize(summary.out_dir))
    print()
    print(f"demo: {summary.total} units ({summary.ran} run now, {summary.failed} failed) "
          f"in {summary.seconds:.0f} s")
    print(f"report: {summary.report} (open report.html in a browser)")
    return 1 if summary.failed else 0
