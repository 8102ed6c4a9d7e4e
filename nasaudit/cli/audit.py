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
    p.add_argument("--engine", choices=("local", "processes", "ray"), default=None,
                   help="local: units one by one in this process; processes: units on --workers "
                        "processes of this machine (default 2), the cores split among them; ray: "
                        "units as Ray tasks on a cluster (default: the config's [run] engine, else "
                        "local)")
    p.add_argument("--address", metavar="auto|HOST:PORT", default=None,
                   help="join this Ray cluster (with --engine ray; default: [run] address, else "
                        "start a local one)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="with --engine processes: N worker processes; otherwise shorthand for "
                        "--engine ray on a local Ray cluster with N GPUs (N CPU slots on a machine "
                        "without GPUs)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (every unit, its status in the store, its resources, what "
                        "it waits on) and exit without running or writing anything")
    p.add_argument("--out", metavar="DIR", help="output directory (overrides the config's out_dir)")
    p.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    p.add_argument("--no-progress", action="store_true",
                   help="print nothing while running: no plan line, no bar over the units (drawn "
                        "on a terminal) and no line per finished unit (printed instead when "
                        "stdout or stderr is not a terminal); failed units are still named on "
                        "stderr")
    p.set_defaults(func=run_audit)

    r = subparsers.add_parser(
        "report",
        help="write report.md / report.html from an audit's results database",
        description="Rebuild the report (markdown, HTML, PNG figures, CSV tables) from OUTDIR/results.sqlite.",
    )
    r.add_argument("out_dir", metavar="OUTDIR", help="the audit's output directory")
    r.add_argument("--single-file", action="store_true",
                   help="make report.html self-contained (figures embedded, CSVs as data links) to send on its own")
    r.add_argument("--out", metavar="DIR", default=None,
                   help="write the report into DIR instead of OUTDIR (for results on read-only storage)")
    r.set_defaults(func=run_report)


def run_audit(args: argparse.Namespace) -> int:
    """Entry point of `nasaudit audit`."""
    from nasaudit.audit.config import load_config
    from nasaudit.audit.runner import choose_engine, run_audit
    from nasaudit.infra.errors import InputError

    config = load_config(args.config)
    if args.only is not None:
        labels = [s.strip() for s in args.only.split(",") if s.strip()]
        if not labels:
            raise InputError("--only", f"names no model label ({args.only!r}); e.g. --only resnet18,darts_v2")
        config = config.only(labels)
    if args.out:
        config = config.with_out_dir(args.out)
    engine, _ = choose_engine(config, args.engine, args.address, args.workers)  # a bad flag writes nothing
    if args.dry_run:
        from nasaudit.audit.runner import dry_run

        print(dry_run(config))
        return 0
    if engine == "ray":
        from nasaudit.audit.engines.ray_engine import import_ray

        import_ray()  # one line with the install command when Ray is missing
    claim_audit_dir(config, source="--out" if args.out else f"{config.source}: out_dir")
    summary = run_audit(config, device=args.device, resume=args.resume, workers=args.workers,
                        engine=args.engine, address=args.address,
                        progress=not args.no_progress, report=not args.no_report)
    print(f"audit {config.name}: {summary.total} units, {summary.skipped} already done, "
          f"{summary.ran} run now, {summary.failed} failed, {summary.seconds:.1f} s "
          f"({summary.engine} engine)")
    if summary.blocked:
        print(f"{summary.blocked} units waited on a failed unit and did not run (a rerun tries them)")
    print(f"results: {config.out_dir / 'results.sqlite'}")
    if summary.report is not None:
        print(f"report:  {summary.report} (and report.html)")
    return 1 if summary.failed else 0


def claim_audit_dir(config, *, source: str) -> None:
    """Claim config.out_dir for the audit (`nasaudit.infra.outdir`) once the config is known to be
    good, so that a bad config writes nothing and a directory that is not the audit's own is
    refused before anything is written into it."""
    from nasaudit.audit.plan import validate_config
    from nasaudit.infra.outdir import check_output_dir, claim_output_dir

    target = check_output_dir(config.out_dir, "audit", source=source)
    validate_config(config)
    claim_output_dir(target, "audit", source=source)


def run_report(args: argparse.Namespace) -> int:
    """Entry point of `nasaudit report`."""
    from pathlib import Path

    from nasaudit.audit.report import write_report
    from nasaudit.infra.outdir import check_output_dir

    if (Path(args.out_dir) / "results.sqlite").exists():
        # Without a database write_report says so; with one, the directory must be an audit's.
        check_output_dir(args.out_dir, "report", source=args.out_dir)
    dest = None
    if args.out is not None:
        from nasaudit.infra.outdir import claim_output_dir

        dest = claim_output_dir(args.out, "report", source="--out")
    path = write_report(args.out_dir, single_file=args.single_file, dest=dest)
    kind = "self-contained report.html" if args.single_file else "report.html"
    print(f"report: {path} (and {kind})")
    return 0
