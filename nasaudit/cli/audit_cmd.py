"""`nasaudit audit CONFIG.toml` (run the audit, resumable) and `nasaudit report OUTDIR`."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `audit` and `report` commands."""
    p = subparsers.add_parser(
        "audit",
        help="retrain models, run every attack and probe, store results, write the report",
        description=(
            "Run the audit described by a TOML config (see experiments/*.toml). Every unit of "
            "work (model x stage x parameters x seed) is stored in OUTDIR/results.sqlite when it "
            "finishes; a rerun skips finished units, so an interrupted audit just runs again."
        ),
    )
    p.add_argument("config", help="audit config (TOML)")
    p.add_argument("--resume", action="store_true",
                   help="also continue an interrupted training or search from its checkpoint "
                        "(finished units are always skipped)")
    p.add_argument("--only", metavar="MODEL,...", help="audit only these model labels")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--workers", type=int, default=1,
                   help="processes, one per GPU (cuda:0..N-1); 1 on CPU (default: 1)")
    p.add_argument("--out", metavar="DIR", help="output directory (overrides the config's out_dir)")
    p.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_audit_command)

    r = subparsers.add_parser(
        "report",
        help="write report.md / report.html from an audit's results database",
        description="Rebuild the report (markdown, HTML, PNG figures, CSV tables) from OUTDIR/results.sqlite.",
    )
    r.add_argument("out_dir", metavar="OUTDIR", help="the audit's output directory")
    r.set_defaults(func=run_report_command)


def run_audit_command(args: argparse.Namespace) -> int:
    """Entry point of `nasaudit audit`."""
    from nasaudit.audit.config import load_config
    from nasaudit.audit.runner import run_audit
    from nasaudit.errors import InputError

    config = load_config(args.config)
    if args.only:
        config = config.only([s.strip() for s in args.only.split(",") if s.strip()])
    if args.out:
        config = config.with_out_dir(args.out)
    if args.workers < 1:
        raise InputError("--workers", "must be >= 1")
    summary = run_audit(config, device=args.device, resume=args.resume, workers=args.workers,
                        progress=not args.no_progress, report=not args.no_report)
    print(f"audit {config.name}: {summary.total} units, {summary.skipped} already done, "
          f"{summary.ran} run now, {summary.failed} failed, {summary.seconds:.1f} s")
    print(f"results: {config.out_dir / 'results.sqlite'}")
    if summary.report is not None:
        print(f"report:  {summary.report} (and report.html)")
    return 1 if summary.failed else 0


def run_report_command(args: argparse.Namespace) -> int:
    """Entry point of `nasaudit report`."""
    from nasaudit.audit.report import write_report

    path = write_report(args.out_dir)
    print(f"report: {path} (and report.html)")
    return 0
