"""NNI 3.0's exported architecture dict for its DARTS space (`normal/op_2_0`, ...), both ways."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from nasaudit.genotype.model import CELLS, FIELDS, Genotype, make_genotype, short_repr
from nasaudit.infra.errors import InputError

_NNI_KEY = re.compile(r"^(normal|reduce)/(op|input)_(\d{1,4})_(\d{1,4})$")


def genotype_to_nni(g: Genotype, inputs_per_node: int = 2) -> dict:
    """NNI 3.0's exported architecture dict for its DARTS space (`nni.nas.hub.pytorch.DARTS`).

    Keys are `{cell}/op_{i}_{k}` (the op on input k of node i) and `{cell}/input_{i}_{k}`
    (its input, written as `[j]`, the form NNI exports); nodes are numbered from 2. NNI's DARTS
    cells concatenate every intermediate node, so any other concat raises InputError.
    """
    out: dict[str, Any] = {}
    for cell in CELLS:
        pairs = getattr(g, cell)
        n_nodes = len(pairs) // inputs_per_node
        concat = tuple(getattr(g, f"{cell}_concat"))
        if concat != tuple(range(2, n_nodes + 2)) or len(pairs) % inputs_per_node:
            raise InputError(
                "genotype",
                f"NNI's DARTS space concatenates all intermediate nodes; {cell}_concat "
                f"{list(concat)} of a {n_nodes}-node cell cannot be expressed",
            )
        for position, (op, inp) in enumerate(pairs):
            node, k = divmod(position, inputs_per_node)
            out[f"{cell}/op_{node + 2}_{k}"] = op
            out[f"{cell}/input_{node + 2}_{k}"] = [inp]
    return out


def genotype_from_nni(d: Mapping[str, Any], source: str = "<nni>", name: str = "nni") -> Genotype:
    """Read NNI 3.0's exported DARTS architecture dict (see `genotype_to_nni`).

    Inputs may be `j` or `[j]`. Keys that are not cell choices (e.g. NNI's "width"/"depth"
    hyperparameters) are ignored. The concat is every intermediate node, as in NNI's space.
    """
    if not isinstance(d, Mapping):
        raise InputError(source, "an NNI architecture must be a JSON object")
    choices: dict[str, dict[tuple[int, int], dict[str, Any]]] = {cell: {} for cell in CELLS}
    for key, value in d.items():
        if not isinstance(key, str) or not key.startswith(("normal/", "reduce/")):
            continue
        match = _NNI_KEY.match(key)
        if not match:
            raise InputError(source, f"genotype {name!r}: unexpected NNI key {short_repr(key)}")
        cell, kind, node, k = (
            match.group(1),
            match.group(2),
            int(match.group(3)),
            int(match.group(4)),
        )
        if kind == "input" and isinstance(value, list):
            if len(value) != 1:
                raise InputError(
                    source, f"genotype {name!r}: {key} must choose one input, got {short_repr(value)}"
                )
            value = value[0]
        choices[cell].setdefault((node, k), {})[kind] = value
    cells: dict[str, list] = {}
    for cell in CELLS:
        found = choices[cell]
        if not found:
            raise InputError(source, f"genotype {name!r}: no {cell}/op_* keys in the NNI dict")
        nodes = sorted({node for node, _ in found})
        per_node = 1 + max(k for _, k in found)
        if nodes != list(range(2, 2 + len(nodes))):
            raise InputError(
                source, f"genotype {name!r}: {cell} nodes must be numbered 2, 3, ...; got {nodes}"
            )
        pairs = []
        for node in nodes:
            for k in range(per_node):
                entry = found.get((node, k), {})
                for kind in ("op", "input"):
                    if kind not in entry:
                        raise InputError(
                            source, f"genotype {name!r}: missing NNI key {cell}/{kind}_{node}_{k}"
                        )
                pairs.append((entry["op"], entry["input"]))
        cells[cell] = pairs
        cells[f"{cell}_concat"] = list(range(2, 2 + len(nodes)))
    return make_genotype(*(cells[key] for key in FIELDS), source=source, name=name)


