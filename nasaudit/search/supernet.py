"""The DARTS supernet: every cell edge mixes all ops of a search space, weighted by softmax(alpha).

Follows DARTS's `model_search.py` (Liu et al. 2019): a 3x3 stem, `layers` cells with reduction
cells at 1/3 and 2/3 of the depth, `nodes` intermediate nodes per cell, each node the sum of
mixed ops over all earlier states, and one alpha [E, O] per cell type (E edges, O ops) shared by
all cells of that type. Differences:

* the `none` (zero) op is never computed: its output is zero, so it only takes part in the
  softmax normalisation (its share of the weight is mixed with nothing);
* op weights go through the alpha hooks (`nasaudit.search.hooks`) after the softmax;
* partial-channel mode (PC-DARTS, Xu et al. 2020) with `partial_channels=K > 1`: only C/K
  channels of an edge's input go through the mixed op, the rest bypass it (max-pooled on
  reduction edges) and a channel shuffle interleaves both; edge normalisation weights each
  node's incoming edges by softmax(beta) [E], which derivation also uses;
* the model normalises its [0, 1] input (DESIGN.md), so it takes images like every nasaudit model.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from nasaudit.models.base import Normalize
from nasaudit.ops import OPS, FactorizedReduce, ReLUConvBN, forward_after_relu, starts_with_relu
from nasaudit.search.hooks import AlphaHook, apply_hooks

CELL_TYPES = ("normal", "reduce")


def num_edges(nodes: int) -> int:
    """Edges of a cell with `nodes` intermediate nodes: node i has i + 2 inputs."""
    return sum(i + 2 for i in range(nodes))


def edge_list(nodes: int) -> list[tuple[int, int]]:
    """(node, input) per edge, in alpha row order; genotype numbering: 0, 1 are the cell
    inputs c_{k-2}, c_{k-1}, intermediate node i is 2 + i."""
    return [(2 + i, j) for i in range(nodes) for j in range(i + 2)]


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, H, W] with channels interleaved across `groups` (ShuffleNet)."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class MixedOp(nn.Module):
    """One edge: sum_o w_o * o(x) over the non-zero ops; [B, C, H, W] -> [B, C, H/s, W/s].

    With `share_relu` the ops that start with a ReLU (sep_conv, dil_conv, conv_7x1_1x7,
    skip_connect's FactorizedReduce) share one relu(x) instead of computing it each: the same
    result, one activation saved for backward instead of up to five.
    """

    def __init__(self, C: int, stride: int, ops: Sequence[str], partial: int = 1,
                 share_relu: bool = True):
        super().__init__()
        self.stride, self.partial, self.share_relu = stride, partial, share_relu
        c = C // partial
        # Column of each computed op in the weight vector; "none" gets no module at all.
        self.columns = [i for i, name in enumerate(ops) if name != "none"]
        self.ops = nn.ModuleList()
        for i in self.columns:
            op = OPS[ops[i]](c, stride, False)
            if "pool" in ops[i]:
                # As DARTS: parameter-free pools get a BN so their scale matches the convs'.
                op = nn.Sequential(op, nn.BatchNorm2d(c, affine=False))
            self.ops.append(op)

    def _mix(self, x: torch.Tensor, w: Sequence[torch.Tensor]) -> torch.Tensor:
        relu_x, total = None, None
        for i, op in zip(self.columns, self.ops, strict=True):
            # Checked per call: the activation modules may have been swapped after construction.
            if self.share_relu and starts_with_relu(op):
                relu_x = torch.relu(x) if relu_x is None else relu_x
                term = w[i] * forward_after_relu(op, relu_x)
            else:
                term = w[i] * op(x)
            total = term if total is None else total + term
        return total

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """x [B, C, H, W], weights [O] (all ops, zero included) -> [B, C, H/stride, W/stride]."""
        w = weights.unbind()
        if self.partial == 1:
            return self._mix(x, w)
        c = x.shape[1] // self.partial
        mixed = self._mix(x[:, :c], w)
        rest = x[:, c:]
        if self.stride == 2:
            rest = F.max_pool2d(rest, 2, 2, ceil_mode=True)  # ceil: the ops' ceil(H / 2)
        return channel_shuffle(torch.cat([mixed, rest], dim=1), self.partial)


class SearchCell(nn.Module):
    """A cell of the supernet: (s0 [B, C_pp, H, W], s1 [B, C_p, H, W]) -> [B, nodes*C, H', W']."""

    def __init__(
        self, ops: Sequence[str], nodes: int, C_pp: int, C_p: int, C: int,
        reduction: bool, reduction_prev: bool, partial: int = 1, share_relu: bool = True,
    ):
        super().__init__()
        self.reduction, self.nodes = reduction, nodes
        # The previous-previous state is twice as large when the previous cell reduced.
        self.preprocess0 = (
            FactorizedReduce(C_pp, C, affine=False) if reduction_prev
            else ReLUConvBN(C_pp, C, 1, 1, 0, affine=False)
        )
        self.preprocess1 = ReLUConvBN(C_p, C, 1, 1, 0, affine=False)
        self.edges = nn.ModuleList(
            MixedOp(C, 2 if reduction and j < 2 else 1, ops, partial, share_relu)
            for _, j in edge_list(nodes)
        )

    def forward(
        self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor,
        edge_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """weights [E, O] op weights; edge_weights [E] (PC-DARTS edge normalisation) or None."""
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        e = 0
        for _ in range(self.nodes):
            terms = []
            for j, h in enumerate(states):
                out = self.edges[e + j](h, weights[e + j])
                terms.append(out if edge_weights is None else edge_weights[e + j] * out)
            e += len(states)
            states.append(sum(terms))
        return torch.cat(states[2:], dim=1)


class Supernet(nn.Module):
    """DARTS search network over `ops`: images [B, 3, H, W] in [0, 1] -> logits [B, num_classes].

    Architecture parameters (`arch_parameters()`): `alpha_normal`, `alpha_reduce` [E, O] and,
    with partial channels, `beta_normal`, `beta_reduce` [E]; everything else is a weight
    (`weight_parameters()`). Create it inside `nasaudit.infra.device.seeded(seed)` for a reproducible
    initialisation (alpha ~ 1e-3 N(0, 1), as DARTS).

    `fast=True` (the default) shares each edge's ReLU between its ops (`MixedOp`) and runs in
    channels_last memory format, where oneDNN's depthwise convs and pools are several times
    faster on CPU (and cuDNN's on CUDA); `fast=False` is the plain per-op NCHW reference path,
    with the same parameters and the same results to fp32 rounding.
    """

    def __init__(
        self, ops: Sequence[str], num_classes: int, *, C: int = 16, layers: int = 8,
        nodes: int = 4, stem_multiplier: int = 3, partial_channels: int = 1,
        mean: Sequence[float] = (0.0, 0.0, 0.0), std: Sequence[float] = (1.0, 1.0, 1.0),
        hooks: Sequence[AlphaHook] = (), fast: bool = True,
    ):
        super().__init__()
        self.ops, self.nodes, self.partial_channels = tuple(ops), nodes, partial_channels
        self.channels_last = fast
        if "none" in self.ops and len(self.ops) == 1:
            raise ValueError("a search space needs at least one op besides 'none'")
        if C % partial_channels or (C // partial_channels) % 2:
            raise ValueError(f"C={C} must be a multiple of 2 * partial_channels={partial_channels}")
        self.normalize = Normalize(mean, std)
        c = stem_multiplier * C
        self.stem = nn.Sequential(
            nn.Conv2d(len(mean), c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        )
        C_pp, C_p, C_cur, reduction_prev = c, c, C, False
        self.cells = nn.ModuleList()
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            C_cur = C_cur * 2 if reduction else C_cur
            self.cells.append(
                SearchCell(self.ops, nodes, C_pp, C_p, C_cur, reduction, reduction_prev,
                           partial_channels, share_relu=fast)
            )
            reduction_prev = reduction
            C_pp, C_p = C_p, nodes * C_cur
        self.classifier = nn.Linear(C_p, num_classes)
        shape = (num_edges(nodes), len(self.ops))
        self.alpha_normal = nn.Parameter(1e-3 * torch.randn(shape))
        self.alpha_reduce = nn.Parameter(1e-3 * torch.randn(shape))
        if partial_channels > 1:
            self.beta_normal = nn.Parameter(1e-3 * torch.randn(shape[0]))
            self.beta_reduce = nn.Parameter(1e-3 * torch.randn(shape[0]))
        # An OrderedDict (weak-referenceable, unlike dict) for torch's RemovableHandle.
        self._alpha_hooks: OrderedDict[int, AlphaHook] = OrderedDict()
        for hook in hooks:
            self.register_alpha_hook(hook)

    # -- parameters ------------------------------------------------------------------------
    ARCH_NAMES = ("alpha_normal", "alpha_reduce", "beta_normal", "beta_reduce")

    def arch_parameters(self) -> list[nn.Parameter]:
        """alpha_normal, alpha_reduce (and beta_normal, beta_reduce in partial-channel mode)."""
        return [p for n, p in self.named_parameters() if n in self.ARCH_NAMES]

    def named_weights(self) -> dict[str, nn.Parameter]:
        """{name: parameter} of the network weights (everything but the architecture)."""
        return {n: p for n, p in self.named_parameters() if n not in self.ARCH_NAMES}

    def weight_parameters(self) -> list[nn.Parameter]:
        """The network weights as a list (for the weight optimiser)."""
        return list(self.named_weights().values())

    # -- alpha hooks -----------------------------------------------------------------------
    def register_alpha_hook(self, hook: AlphaHook) -> RemovableHandle:
        """Add a hook (see nasaudit.search.hooks); `handle.remove()` takes it out again."""
        handle = RemovableHandle(self._alpha_hooks)
        self._alpha_hooks[handle.id] = hook
        return handle

    @property
    def alpha_hooks(self) -> list[AlphaHook]:
        """The registered hooks in application order."""
        return list(self._alpha_hooks.values())

    def op_weights(self, cell: str) -> torch.Tensor:
        """Effective op weights [E, O] of `cell` ("normal" | "reduce"): hooks(softmax(alpha))."""
        alpha = getattr(self, f"alpha_{cell}")
        return apply_hooks(F.softmax(alpha, dim=-1), self.alpha_hooks, cell, self.ops)

    def edge_weights(self, cell: str) -> torch.Tensor | None:
        """PC-DARTS edge normalisation [E]: softmax of beta over each node's inputs; else None."""
        if self.partial_channels == 1:
            return None
        beta = getattr(self, f"beta_{cell}")
        parts, start = [], 0
        for i in range(self.nodes):
            parts.append(F.softmax(beta[start : start + i + 2], dim=-1))
            start += i + 2
        return torch.cat(parts)

    # -- forward and genotype --------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [0, 1] -> logits [B, num_classes]."""
        # Weights once per forward and cell type, shared by all cells of that type.
        w = {cell: (self.op_weights(cell), self.edge_weights(cell)) for cell in CELL_TYPES}
        if self.channels_last:
            # The stem conv's output follows its input's format, and every later op keeps it.
            try:
                x = x.contiguous(memory_format=torch.channels_last)
            except RuntimeError:
                pass  # inside torch.func.vmap (per-sample gradients), which only keeps formats
        s0 = s1 = self.stem(self.normalize(x))
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, *w["reduce" if cell.reduction else "normal"])
        return self.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1))

    @torch.no_grad()
    def genotype(self, skip_cap: int | None = None):
        """The discrete cell pair by the DARTS rule, from the effective (hooked) op weights;
        at most `skip_cap` skip connects per cell when given (see `derive_genotype_capped`)."""
        return self.derive(skip_cap)[0]

    @torch.no_grad()
    def derive(self, skip_cap: int | None = None):
        """(genotype, skip-cap replacements) as `derive_genotype_capped` returns them."""
        args = {}
        for cell in CELL_TYPES:
            args[cell] = self.op_weights(cell).detach().cpu()
            edge = self.edge_weights(cell)
            args[f"{cell}_edges"] = None if edge is None else edge.detach().cpu()
        return derive_genotype_capped(args["normal"], args["reduce"], self.ops, self.nodes,
                                      args["normal_edges"], args["reduce_edges"], skip_cap=skip_cap)


def _derive_cell(weights: torch.Tensor, ops: Sequence[str], nodes: int,
                 edge_weights: torch.Tensor | None, skip_cap: int | None = None,
                 cell: str = "") -> tuple[tuple[tuple[str, int], ...], list[dict]]:
    if edge_weights is not None:
        weights = weights * edge_weights[:, None]
    keep = [k for k, name in enumerate(ops) if name != "none"]
    w = weights[:, keep].tolist()
    gene, edges, e = [], [], 0
    for i in range(nodes):
        rows = w[e : e + i + 2]
        # Per input: its strongest non-zero op; keep the 2 inputs whose best op weighs most
        # (sorted is stable, so ties go to the lower input index).
        best = [max(range(len(keep)), key=row.__getitem__) for row in rows]
        chosen = sorted(range(i + 2), key=lambda j: -rows[j][best[j]])[:2]
        gene.extend((ops[keep[best[j]]], j) for j in chosen)
        edges.extend((i, rows[j]) for j in chosen)
        e += i + 2
    replaced: list[dict] = []
    skip = [k for k, o in enumerate(keep) if ops[o] == "skip_connect"]
    if skip_cap is not None and skip:
        # DARTS+ / P-DARTS: keep the skip_cap strongest skip connects; every other one gives
        # way to the best non-skip op of the same edge (same input, so the topology stays).
        slots = [s for s, (op, _) in enumerate(gene) if op == "skip_connect"]
        slots.sort(key=lambda s: -edges[s][1][skip[0]])
        for s in slots[skip_cap:]:
            node, row = edges[s]
            others = [k for k in range(len(keep)) if k not in skip]
            if not others:
                break  # a space of skip_connect alone: nothing to take instead
            k = max(others, key=row.__getitem__)
            replaced.append({"cell": cell, "node": 2 + node, "input": gene[s][1],
                             "skip_weight": row[skip[0]], "op": ops[keep[k]], "op_weight": row[k]})
            gene[s] = (ops[keep[k]], gene[s][1])
    return tuple(gene), replaced


def derive_genotype(
    normal: torch.Tensor, reduce: torch.Tensor, ops: Sequence[str], nodes: int,
    normal_edges: torch.Tensor | None = None, reduce_edges: torch.Tensor | None = None,
):
    """DARTS's derivation: per node, the 2 inputs whose strongest non-zero op weighs most, and
    that op on each. normal/reduce: op weights [E, O]; *_edges: PC-DARTS edge weights [E]."""
    return derive_genotype_capped(normal, reduce, ops, nodes, normal_edges, reduce_edges)[0]


def derive_genotype_capped(
    normal: torch.Tensor, reduce: torch.Tensor, ops: Sequence[str], nodes: int,
    normal_edges: torch.Tensor | None = None, reduce_edges: torch.Tensor | None = None,
    *, skip_cap: int | None = None,
):
    """`derive_genotype` with at most `skip_cap` skip connects per cell (None: no cap).

    When a cell's derivation has more, the skip_cap strongest (by edge weight) stay and each
    other one is replaced by the best non-skip, non-zero op of the same edge. Returns
    (Genotype, replacements): one dict per replaced edge with cell, node (genotype numbering),
    input, skip_weight, op (the op taken) and op_weight.
    """
    from nasaudit.genotype import Genotype

    if skip_cap is not None and skip_cap < 0:
        raise ValueError(f"skip_cap must be >= 0, got {skip_cap}")
    concat = tuple(range(2, 2 + nodes))
    n_gene, n_rep = _derive_cell(normal, ops, nodes, normal_edges, skip_cap, "normal")
    r_gene, r_rep = _derive_cell(reduce, ops, nodes, reduce_edges, skip_cap, "reduce")
    return Genotype(normal=n_gene, normal_concat=concat, reduce=r_gene, reduce_concat=concat), n_rep + r_rep
