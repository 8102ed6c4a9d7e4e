"""Genotypes: the `Genotype` type, its three file formats, validation, and the shipped genotypes.

A genotype describes the two cell types of a DARTS-style network. Each cell is a sequence of
`(op, input)` pairs, `inputs_per_node` (2) per intermediate node, in node order. Input 0 is the
output of cell k-2, input 1 that of cell k-1, input i >= 2 is intermediate node i-2 (state i).
`*_concat` lists the states concatenated into the cell's output.

Formats (read and write), one module each:
1. canonical JSON (`canonical`): `{"name", "normal", "normal_concat", "reduce", "reduce_concat",
   "source", ...}`, or many as `{"genotypes": {NAME: {...}}, "aliases": {ALIAS: NAME}}`;
2. DARTS-style Python (`python_format`): one `Genotype(...)` expression or a whole
   `genotypes.py`, parsed with `ast` and never executed. Only statements that bind a name to a
   genotype (or to an alias of one) are read; every other statement is skipped unevaluated and
   listed in `GenotypeFile.skipped`;
3. NNI 3.0's exported architecture dict for its DARTS space (`nni`: `normal/op_2_0`, ...).

`model` holds the type and its validation, `files` reads and writes files of any format,
`shipped` the shipped genotypes and name resolution. A file is read genotype by genotype: one
that cannot be read (an op the space lacks, string inputs, ...) is listed in
`GenotypeFile.invalid` with its line and problem, and the others are still read. Cells in
SNAS's all-edge form are turned into the 2-inputs-per-node cell when that is unambiguous, with a
warning. Every problem with a file or a name raises `InputError`, never another exception type.
"""

from nasaudit.genotype.canonical import genotype_hash, genotype_to_json
from nasaudit.genotype.files import (
    load_genotype_file,
    parse_genotypes,
    read_genotype_file,
    read_genotype_text,
    write_genotype,
)
from nasaudit.genotype.model import (
    CELLS,
    FIELDS,
    Genotype,
    GenotypeFile,
    SkippedStatement,
    UnreadGenotype,
    derive_two_input_genotype,
    make_genotype,
    validate_genotype,
)
from nasaudit.genotype.nni import genotype_from_nni, genotype_to_nni
from nasaudit.genotype.python_format import genotype_to_python
from nasaudit.genotype.shipped import (
    resolve_genotype,
    resolve_genotype_file,
    resolve_genotypes,
    resolve_named_genotype,
    shipped_genotypes,
)

__all__ = [
    "CELLS", "FIELDS", "Genotype", "GenotypeFile", "SkippedStatement", "UnreadGenotype",
    "derive_two_input_genotype", "genotype_from_nni", "genotype_hash", "genotype_to_json",
    "genotype_to_nni", "genotype_to_python", "load_genotype_file", "make_genotype", "parse_genotypes",
    "read_genotype_file", "read_genotype_text", "resolve_genotype", "resolve_genotype_file",
    "resolve_genotypes", "resolve_named_genotype", "shipped_genotypes", "validate_genotype",
    "write_genotype",
]
