"""`nasaudit mitigate deepen|deskip GENOTYPE`: rewire a genotype, write it, show its analysis."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nasaudit.infra.errors import InputError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `mitigate` command with its `deepen` and `deskip` actions."""
    parser = subparsers.add_parser(
        "mitigate",
        help="rewire a genotype: deeper cells (deepen) or no skip connects (deskip)",
        description="Apply the study's post-hoc mitigations to a genotype and write the result "
        "(canonical JSON, or Python for a .py --out).",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, help_text in (
        ("deepen", "chain the intermediate nodes (the study's DARTS-i rule)"),
        ("deskip", "replace skip connects by an op (DARTS-ii)"),
    ):
        sub = actions.add_parser(action, help=help_text, description=help_text)
        sub.add_argument("genotype", metavar="GENOTYPE", help="genotype name, file or FILE:NAME")
        sub.add_argument(
            "--cells",
            choices=("normal", "reduce", "both"),
            default="normal",
            help="cells to rewire (default: normal, as the study's variants)",
        )
        sub.add_argument(
            "--out", metavar="FILE", help="output file (.json or .py; default ./NAME_ACTION.json)"
        )
        sub.add_argument(
            "--force", action="store_true", help="allow --out to overwrite the input genotype file"
        )
        sub.add_argument("--space", default="paper", help="search space (default: paper)")
        sub.add_argument("--json", action="store_true", help="print the analysis as JSON")
        if action == "deskip":
            sub.add_argument(
                "--op", default="sep_conv_3x3", help="replacement op (default: sep_conv_3x3)"
            )
            sub.add_argument(
                "--sibling",
                action="store_true",
                help="use the other op of the skip's node when it is not a skip (the study's "
                "DARTS-ii rule), --op otherwise",
            )
        sub.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Rewire the genotype, write it, and print its analysis next to the original's."""
    from nasaudit.cli.analyze import analysis_record, format_record
    from nasaudit.genotype import resolve_named_genotype, validate_genotype, write_genotype
    from nasaudit.infra.outdir import check_output_file
    from nasaudit.mitigation import NOT_REPLACEMENTS, deepen, deskip
    from nasaudit.search_space import load_search_space

    out = Path(args.out) if args.out else None
    if out is not None:
        # The input file (GENOTYPE may be FILE:NAME): replacing it would lose the original.
        input_file = args.genotype.rpartition(":")[0] if ":" in args.genotype and not Path(
            args.genotype).exists() else args.genotype
        check_output_file(out, inputs=(input_file,), force=args.force, source="--out")
    space = load_search_space(args.space)
    name, original = resolve_named_genotype(args.genotype, space)
    if args.action == "deepen":
        rewired = deepen(original, cells=args.cells, inputs_per_node=space.inputs_per_node)
        suffix, how = "deep", f"deepen (cells: {args.cells})"
    else:
        if args.op in NOT_REPLACEMENTS or not space.has_op(args.op):
            allowed = ", ".join(op for op in space.ops if op not in NOT_REPLACEMENTS)
            raise InputError(
                "--op", f"{args.op!r} is not a replacement op of space {space.name!r} ({allowed})"
            )
        rewired = deskip(
            original,
            args.op,
            args.cells,
            sibling=args.sibling,
            inputs_per_node=space.inputs_per_node,
        )
        rule = "sibling op, else " + args.op if args.sibling else args.op
        suffix, how = "noskip", f"deskip to {rule} (cells: {args.cells})"
    new_name = f"{name}_{suffix}"
    validate_genotype(rewired, space, source=new_name, name=new_name)
    out = out or Path(f"{new_name}.json")
    written = write_genotype(
        out, rewired, new_name, source=f"nasaudit mitigate: {how} of {name}", derived_from=name
    )
    before, after = analysis_record(name, original), analysis_record(new_name, rewired)
    if args.json:
        print(json.dumps({"written": str(written), "before": before, "after": after}, indent=2))
    else:
        print(f"wrote {written}\n")
        print(format_record(before) + "\n\n" + format_record(after))
    return 0
