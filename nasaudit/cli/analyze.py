"""`nasaudit analyze NAME|FILE`: cell depth, width and skip connects of genotypes."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nasaudit.infra.errors import InputError, printable


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `analyze` command."""
    parser = subparsers.add_parser(
        "analyze",
        help="cell depth, width and skip connects of a genotype (name or file)",
        description="Analyze the cells of a shipped genotype, or of every genotype in a file "
        "(canonical JSON, DARTS-style genotypes.py, NNI DARTS dict JSON; FILE:NAME picks one). "
        "Files are parsed, never executed: statements that define no genotype are skipped, "
        "and a genotype that cannot be read is named on stderr while the others are read.",
    )
    parser.add_argument("genotype", metavar="NAME|FILE", help="genotype name, file or FILE:NAME")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--draw", metavar="OUT.png", help="draw both cells into a PNG")
    parser.add_argument("--force", action="store_true", help="replace --draw's PNG if it exists")
    parser.add_argument(
        "--space", default="paper", help="search space to validate against (default: paper)"
    )
    parser.set_defaults(func=run)


def analysis_record(name: str, g) -> dict:
    """The JSON record of one genotype: {"genotype", "hash", "cells": {"normal", "reduce"}}."""
    from nasaudit.analysis import analyze_genotype
    from nasaudit.genotype import genotype_hash

    return {"genotype": name, "hash": genotype_hash(g), "cells": analyze_genotype(g)}


def format_record(record: dict) -> str:
    """A readable table of one `analysis_record`."""
    lines = [f"{printable(record['genotype'])}  (sha256 {record['hash'][:12]})"]
    header = (
        f"{'cell':<7} {'depth':>5} {'width':>5} {'skips':>5} {'none':>4} {'param-free':>10} "
        f"{'nodes':>5}"
    )
    lines.append(f"{header}  longest path")
    for cell, m in record["cells"].items():
        path = " -> ".join(str(node) for node in m["longest_path"]) or "(no input reaches the output)"
        width = f"{m['width']}c"
        lines.append(
            f"{cell:<7} {m['depth']:>5} {width:>5} {m['skip_connects']:>5} {m['none_edges']:>4} "
            f"{m['parameter_free_ops']:>10} {m['nodes']:>5}  {path}"
        )
    for cell, m in record["cells"].items():
        ops = ", ".join(f"{op} x{count}" for op, count in m["op_histogram"].items())
        lines.append(f"  {cell} ops: {ops}; concat {m['concat']}")
    return "\n".join(lines)


def format_skipped(found, limit: int = 8) -> str | None:
    """One line naming the statements of a file that were skipped (never executed), or None."""
    total = len(found.skipped) + found.skipped_unlisted
    if not total:
        return None
    shown = "; ".join(f"line {item.line} {item.kind}" for item in found.skipped[:limit])
    more = f"; ... {total - min(limit, len(found.skipped))} more" if total > limit else ""
    what = "statement that defines" if total == 1 else "statements that define"
    return f"skipped {total} {what} no genotype (never executed): {shown}{more}"


def _draw_path(out: Path, name: str, several: bool) -> Path:
    if not several:
        return out
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    return out.with_name(f"{out.stem}_{safe}{out.suffix or '.png'}")


def run(args: argparse.Namespace) -> int:
    """Analyze, print, and optionally draw, the genotypes `args.genotype` names.

    Genotypes of a file that cannot be read are named on stderr, one line each; the exit code
    is 0 when at least one genotype was read (2, via InputError, when none was, or when
    FILE:NAME names one that cannot be read).
    """
    from nasaudit.cell_drawing import draw_genotype
    from nasaudit.genotype import resolve_genotype_file
    from nasaudit.search_space import load_search_space

    if args.draw:
        # Checked up front, naming the flag: nothing is analysed or drawn for a bad target.
        out = Path(args.draw)
        if out.is_dir():
            raise InputError("--draw", f"{out} is a directory; give a .png file name, e.g. {out / 'cells.png'}")
        if out.suffix.lower() not in ("", ".png"):
            raise InputError("--draw", f"{out} must be a .png file")
    space = load_search_space(args.space)
    found = resolve_genotype_file(args.genotype, space)
    from_file = found.source != args.genotype or Path(args.genotype).is_file()
    for warning in found.warnings:
        print(f"nasaudit: warning: {found.source}: {warning}", file=sys.stderr)
    if not found.genotypes:
        if len(found.invalid) > 1:
            for line in found.problems():
                print(f"nasaudit: not read: {line}", file=sys.stderr)
        raise found.no_genotype_error()
    for line in found.problems():
        print(f"nasaudit: not read: {line}", file=sys.stderr)
    records = [analysis_record(name, g) for name, g in found.genotypes.items()]
    if args.draw:
        from nasaudit.infra.outdir import check_output_file

        out = Path(args.draw)
        paths = {name: _draw_path(out, name, len(found.genotypes) > 1) for name in found.genotypes}
        for path in paths.values():  # every target checked before the first is drawn
            check_output_file(path, force=args.force, source="--draw")
        for name, g in found.genotypes.items():
            # draw_genotype draws the name literally ("$...$" is no mathtext, escapes are inert).
            written = draw_genotype(g, paths[name], title=name)
            print(f"wrote {written}", file=sys.stderr)
    if args.json:
        if from_file:
            report = {**found.to_dict(), "genotypes": records}
            print(json.dumps(report, indent=2))
        else:
            print(json.dumps(records[0], indent=2))
    else:
        print("\n\n".join(format_record(record) for record in records))
        skipped = format_skipped(found) if from_file else None
        if skipped:
            print(f"\n{skipped}")
    return 0
