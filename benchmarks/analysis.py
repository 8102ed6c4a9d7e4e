"""Cell-analyzer time against cell size: a chain of N nodes (2N edges), 10,000 and 40,000 edges.

Linear time gives a ratio near 4 between the two; the quadratic scan this replaced gave ~16
and took minutes. Run: python benchmarks/analysis.py
"""

from __future__ import annotations

import time

from nasaudit.analysis import analyze_cell


def chain_cell(nodes: int) -> list[tuple[str, int]]:
    """Node i reads node i-1 (node 0: c_{k-2}) and c_{k-1}: the longest path is the chain."""
    return [edge for i in range(nodes) for edge in (("sep_conv_3x3", i + 1 if i else 0), ("skip_connect", 1))]


def best_seconds(nodes: int, repeat: int = 3) -> float:
    """Fastest of `repeat` analyses of a `nodes`-node chain, in seconds."""
    cell = chain_cell(nodes)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        analyze_cell(cell, [nodes + 1])
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    small, big = best_seconds(5_000), best_seconds(20_000)
    print(f"10,000 edges: {small:.3f} s   40,000 edges: {big:.3f} s   ratio {big / small:.1f} (linear: ~4)")


if __name__ == "__main__":
    main()
