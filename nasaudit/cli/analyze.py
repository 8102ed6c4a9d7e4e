"""`nasaudit analyze NAME|FILE`: cell depth, width and skip connects of genotypes."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nasaudit.errors import InputError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `analyze` command."""
    parser = subparsers.add_parser(
        "analyze",
        help="cell depth, width and skip connects of a genotype (name or file)",
        description="Analyze the cells of a shipped genotype, or of every genotype in a file "
        "(canonical JSON, DARTS-style genotypes.py, NNI DARTS dict JSON; FILE:NAME picks one).",
    )
    parser.add_argument("genotype", metavar="NAME|FILE", help="genotype name, file or FILE:NAME")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--draw", metavar="OUT.png", help="draw both cells into a PNG")
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
    lines = [f"{record['genotype']}  (sha256 {record['hash'][:12]})"]
    header = f"{'cell':<7} {'depth':>5} {'width':>5} {'skips':>5} {'param-free':>10} {'nodes':>5}"
    lines.append(f"{header}  longest path")
    for cell, m in record["cells"].items():
        path = " -> ".join(str(node) for node in m["longest_path"])
        width = f"{m['width']}c"
        lines.append(
            f"{cell:<7} {m['depth']:>5} {width:>5} {m['skip_connects']:>5} "
            f"{m['parameter_free_ops']:>10} {m['nodes']:>5}  {path}"
        )
    for cell, m in record["cells"].items():
        ops = ", ".join(f"{op} x{count}" for op, count in m["op_histogram"].items())
        lines.append(f"  {cell} ops: {ops}; concat {m['concat']}")
    return "\n".join(lines)


def _draw_path(out: Path, name: str, several: bool) -> Path:
    if not several:
        return out
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    return out.with_name(f"{out.stem}_{safe}{out.suffix or '.png'}")


def run(args: argparse.Namespace) -> int:
    """Analyze, print, and optionally draw, the genotypes `args.genotype` names."""
    from nasaudit.analysis import draw_genotype
    from nasaudit.genotype import resolve_genotypes
    from nasaudit.search_space import load_search_space

    if args.draw:
        # Checked up front, naming the flag: nothing is analysed or drawn for a bad target.
        out = Path(args.draw)
        if out.is_dir():
            raise InputError("--draw", f"{out} is a directory; give a .png file name, e.g. {out / 'cells.png'}")
        if out.suffix.lower() not in ("", ".png"):
            raise InputError("--draw", f"{out} must be a .png file")
    space = load_search_space(args.space)
    found = resolve_genotypes(args.genotype, space)
    records = [analysis_record(name, g) for name, g in found.items()]
    if args.draw:
        out = Path(args.draw)
        for name, g in found.items():
            written = draw_genotype(g, _draw_path(out, name, len(found) > 1), title=name)
            print(f"wrote {written}", file=sys.stderr)
    if args.json:
        print(json.dumps(records[0] if len(records) == 1 else records, indent=2))
    else:
        print("\n\n".join(format_record(record) for record in records))
    return 0
