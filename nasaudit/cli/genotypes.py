"""`nasaudit genotypes`: list the shipped genotypes, their aliases, sources and cell metrics."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `genotypes` command."""
    parser = subparsers.add_parser(
        "genotypes",
        help="list the shipped genotypes",
        description="List the shipped genotypes and aliases with where each comes from, and "
        "the depth / width / skip connects of their normal and reduce cells.",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the shipped genotypes as a table or JSON."""
    from nasaudit.analysis import analyze_genotype
    from nasaudit.genotype import genotype_hash, shipped_genotypes

    rows = []
    shipped = shipped_genotypes()
    for name, entry in shipped.items():
        metrics = analyze_genotype(entry["genotype"])
        rows.append(
            {
                "name": name,
                "alias_of": entry["alias_of"],
                "source": entry["source"],
                "hash": genotype_hash(entry["genotype"]),
                "cells": {
                    cell: {key: m[key] for key in ("depth", "width", "skip_connects")}
                    for cell, m in metrics.items()
                },
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':<16} {'alias of':<16} {'normal d/w/s':>12} {'reduce d/w/s':>12}  source")
    for row in rows:
        dws = {
            cell: f"{m['depth']}/{m['width']}c/{m['skip_connects']}"
            for cell, m in row["cells"].items()
        }
        source = row["source"]
        if row["alias_of"]:
            # An alias shares its target's source; say so rather than leave the column empty.
            target_source = shipped.get(row["alias_of"], {}).get("source") or row["source"]
            source = f"= {row['alias_of']}" + (f": {target_source}" if target_source else "")
        print(
            f"{row['name']:<16} {row['alias_of'] or '':<16} {dws['normal']:>12} "
            f"{dws['reduce']:>12}  {source}"
        )
    print("d/w/s: cell depth / width (in channels c) / skip connects")
    return 0
