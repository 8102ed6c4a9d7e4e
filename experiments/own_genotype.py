# An example of "your own genotype": a DARTS-style genotypes.py as search code writes it. nasaudit
# reads it with `ast` (nothing here is imported or run); replace MY_CELL with your search's result.
from collections import namedtuple

Genotype = namedtuple("Genotype", "normal normal_concat reduce reduce_concat")

MY_CELL = Genotype(
    normal=[("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2),
            ("dil_conv_3x3", 2), ("sep_conv_3x3", 3), ("sep_conv_5x5", 3), ("skip_connect", 4)],
    normal_concat=range(2, 6),
    reduce=[("max_pool_3x3", 0), ("sep_conv_3x3", 1), ("max_pool_3x3", 0), ("dil_conv_5x5", 2),
            ("skip_connect", 2), ("sep_conv_3x3", 3), ("avg_pool_3x3", 0), ("dil_conv_3x3", 4)],
    reduce_concat=range(2, 6),
)
