"""Architecture stealing from an execution trace: how much of a cell leaks, at what observation.

After Hong et al., "How to 0wn NAS in Your Spare Time" (ICLR 2020), who read a network's
library calls through a Flush+Reload cache side channel and rebuild the architecture from them.
This probe does not mount a cache attack. It records the trace such a channel would read
(`nasaudit.probes.trace`), degrades it to what an attacker observes at each level, and runs the
reconstruction attack against it, so the leak is measured, per level:

* ``ops``: call kinds, input/output shapes and the data flow (which call produced each input),
  as a forward-hook or execution-trace recorder sees them: the idealised channel;
* ``shapes``: kinds and shapes without the data flow (a shape-recording profiler's view);
* ``ops_timing``: kinds and durations only, the closest to Flush+Reload on library functions;
* ``timing_noisy``: ops_timing through a noisy probe: each call is missed with probability
  `noise` and seen twice (its duration split) with probability `noise`, as the paper reports.

The attacker knows the DARTS evaluation-network skeleton and its macro settings (channels,
cells, nodes per cell, where the reductions are, the input size: all usually published) and the
op set of the search space; the secret is the genotype. The attack follows the paper's scheme:

1. segment: align the observed call kinds with the skeleton's grammar (stem, then per cell two
   preprocessing blocks, per node two edge ops and two adds, one cat), each edge slot a choice
   among the op families (ops with the same call-kind sequence). A Viterbi alignment with the
   noise model's miss/duplicate costs makes this robust to a noisy probe; repeated cells of
   one type vote per edge;
2. generate: per edge, every (op, input) pair of the decoded family whose stride agrees with
   the input (stride 2 only from a reduction cell's inputs 0 and 1); per cell, every concat
   set. The true genotype is in this space whenever the kinds were decoded right;
3. eliminate: candidates whose predicted calls (the op module's own recorded trace at the
   cell's geometry) disagree with the observed shapes, whose inputs disagree with the data
   flow, or whose predicted durations (the attacker profiles every candidate op on its own
   machine) are more than `timing_margin` log-likelihood units below the best;
4. rank: by timing log-likelihood; ties are uniform.

Reported per level: `exact` (the single top-ranked genotype is the true one; a rate over noise
draws at timing_noisy), `exact_probability` (chance that a uniform pick among the top-ranked is
exact), `edge_op_accuracy` and `edge_input_accuracy` (expected, over the top-ranked, per edge),
`concat_accuracy`, `n_candidates` and `remaining_bits` = log2(n_candidates) (the attacker's
remaining uncertainty; counted per edge, never enumerated), `prior_bits` (the whole space) and
`trace_length` (calls observed).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nasaudit.params import make_params, param
from nasaudit.probes.trace import INPUT, PARAMETER, TraceEvent, record_trace
from nasaudit.records import Record

__all__ = [
    "LEVELS",
    "CellShape",
    "EdgeCandidates",
    "TraceLeakParams",
    "TraceLeakRecord",
    "add_probe_noise",
    "align",
    "attack_trace",
    "genotype_of",
    "macro_of",
    "run_trace_leak",
]

LEVELS = ("ops", "shapes", "ops_timing", "timing_noisy")
_DATAFLOW_LEVELS = ("ops",)
_SHAPE_LEVELS = ("ops", "shapes")
_TIMING_LEVELS = ("ops_timing", "timing_noisy")
# The skeleton's fixed calls (NetworkCIFAR.forward and ImageClassifier): Normalize, stem, head.
_HEAD = ("sub", "div", "conv2d", "batch_norm")
_TAIL = ("adaptive_avg_pool2d", "flatten", "linear")
_TIE = 1e-9  # scores closer than this rank equal


# ------------------------------------------------------------------------------ the macro


@dataclasses.dataclass(frozen=True)
class CellShape:
    """What the attacker knows of one cell: its type, channels C, the size of its two input
    states after preprocessing (H_in, W_in), its output size and its node count."""

    reduction: bool
    reduction_prev: bool
    C: int
    C_prev_prev: int
    C_prev: int
    H_in: int
    W_in: int
    H_out: int
    W_out: int
    steps: int

    def stride(self, input_index: int) -> int:
        """The stride of an edge reading state `input_index` (2 from a reduction's inputs)."""
        return 2 if self.reduction and input_index < 2 else 1

    def op_input_shape(self, stride: int, batch: int) -> tuple[int, int, int, int]:
        """Shape [B, C, H, W] of an edge op's input at `stride` (the states' size)."""
        if self.reduction and stride == 1:
            return (batch, self.C, self.H_out, self.W_out)
        return (batch, self.C, self.H_in, self.W_in)


def genotype_of(model: nn.Module) -> Any | None:
    """The genotype a DARTS evaluation network was built from, or None (a manual baseline)."""
    body = getattr(model, "body", model)
    genotype = getattr(body, "genotype", None)
    if genotype is None or not hasattr(body, "cells"):
        return None
    return genotype


def macro_of(model: nn.Module, image_hw: tuple[int, int]) -> tuple[CellShape, ...]:
    """The macro-architecture of a genotype network (`NetworkCIFAR` body): one CellShape per
    cell, for images of size image_hw = (H, W). Reads no genotype op or input."""
    from nasaudit.ops import FactorizedReduce

    body = getattr(model, "body", model)
    h, w = image_hw
    shapes = []
    for cell in body.cells:
        conv1 = cell.preprocess1.op[1]
        pre0 = cell.preprocess0
        c_pp = pre0.conv_1.in_channels if isinstance(pre0, FactorizedReduce) else pre0.op[1].in_channels
        h_out, w_out = ((h + 1) // 2, (w + 1) // 2) if cell.reduction else (h, w)
        shapes.append(CellShape(bool(cell.reduction), isinstance(pre0, FactorizedReduce),
                                conv1.out_channels, c_pp, conv1.in_channels, h, w, h_out, w_out,
                                int(cell.steps)))
        h, w = h_out, w_out
    return tuple(shapes)


# ------------------------------------------------------------------------ reference traces


class References:
    """The attacker's profile: the recorded trace of each candidate op (or skeleton block) at a
    given geometry, made once and cached (per attack; no global state)."""

    def __init__(self, *, device: torch.device, passes: int, seed: int):
        self.device = device
        self.passes = passes
        self.seed = seed
        self._cache: dict[tuple, list[TraceEvent]] = {}

    def trace(self, build: Any, key: tuple, input_shape: tuple[int, ...]) -> list[TraceEvent]:
        """Events of `build()` (an nn.Module factory) run on a random input of input_shape."""
        from nasaudit.device import generator, seeded

        full_key = (key, tuple(input_shape))
        if full_key not in self._cache:
            with seeded(self.seed):
                module = build().to(self.device).eval()
            x = torch.rand(input_shape, generator=generator(self.seed, self.device), device=self.device)
            self._cache[full_key] = record_trace(module, x, passes=self.passes)
        return self._cache[full_key]

    def op(self, name: str, stride: int, cell: CellShape, batch: int) -> list[TraceEvent]:
        """Trace of edge op `name` at `stride` in `cell` (the network's own affine=True op)."""
        from nasaudit.ops import OPS

        return self.trace(lambda: OPS[name](cell.C, stride, True), ("op", name, stride, cell.C),
                          cell.op_input_shape(stride, batch))

    def in_network(self, name: str, stride: int, cell_index: int, macro: Sequence[CellShape],
                   ops: Sequence[str], batch: int) -> list[float] | None:
        """Durations (ns) of op `name`'s calls at `stride` in cell `cell_index`, profiled in
        context: the attacker builds the same skeleton with every edge set to `name` and times
        it, so caching and allocation effects match the victim's (an op timed alone runs at a
        different speed). Median over that cell's edges of this stride; None if it has none."""
        key = ("net", name, tuple(macro), batch)
        if key not in self._cache:
            self._cache[key] = self._profile_network(name, macro, ops, batch)
        runs = self._cache[key].get((cell_index, stride))
        if not runs:
            return None
        return [float(np.median(col)) for col in zip(*runs, strict=True)]

    def _profile_network(self, name: str, macro: Sequence[CellShape], ops: Sequence[str],
                         batch: int) -> dict:
        from nasaudit.device import generator, seeded
        from nasaudit.genotype import Genotype
        from nasaudit.models.darts_network import build_genotype_network

        def cell(steps: int, reduction: bool) -> tuple:
            # Node 0 reads the two inputs; later nodes read input 0 and the previous node, so a
            # reduction cell has edges at both strides.
            pairs = [(name, 0), (name, 1)]
            for node in range(1, steps):
                pairs += [(name, 0), (name, node + 1 if reduction else 1)]
            return tuple(pairs), tuple(range(2, steps + 2))

        normal = next((c.steps for c in macro if not c.reduction), macro[0].steps)
        reduce = next((c.steps for c in macro if c.reduction), macro[0].steps)
        genotype = Genotype(*cell(normal, False), *cell(reduce, True))
        with seeded(self.seed):
            model = build_genotype_network(genotype, 10, C=macro[0].C, layers=len(macro),
                                           auxiliary=False).to(self.device).eval()
        shape = (batch, 3, macro[0].H_in, macro[0].W_in)
        x = torch.rand(shape, generator=generator(self.seed, self.device), device=self.device)
        events = record_trace(model, x, passes=self.passes)
        grammar = _grammar(macro_of(model, shape[-2:]), ops, self)
        aligned = align([e.kind for e in events], grammar.slots, 0.0)
        out: dict[tuple[int, int], list[list[float]]] = {}
        if aligned is None:
            return out
        for s, meta in enumerate(grammar.meta):
            if meta[0] != "edge":
                continue
            c, k = meta[1], meta[2]
            inp = genotype.reduce[k][1] if macro[c].reduction else genotype.normal[k][1]
            durations = [sum(events[i].duration_ns for i in idx) for idx in aligned[1][s][1]]
            out.setdefault((c, macro[c].stride(inp)), []).append(durations)
        return out

    def kinds(self, name: str, stride: int) -> tuple[str, ...]:
        """The call kinds of op `name` at `stride` (they do not depend on the geometry)."""
        probe = CellShape(True, False, 4, 4, 4, 8, 8, 4, 4, 1)
        return tuple(e.kind for e in self.op(name, stride, probe, 1))

    def preprocess_kinds(self, factorized: bool) -> tuple[str, ...]:
        """Call kinds of a cell's preprocessing block (FactorizedReduce or ReLUConvBN)."""
        from nasaudit.ops import FactorizedReduce, ReLUConvBN

        if factorized:
            events = self.trace(lambda: FactorizedReduce(4, 4), ("fr",), (1, 4, 8, 8))
        else:
            events = self.trace(lambda: ReLUConvBN(4, 4, 1, 1, 0), ("rcb",), (1, 4, 8, 8))
        return tuple(e.kind for e in events)


# ------------------------------------------------------------------------------ observation


@dataclasses.dataclass
class Observation:
    """What the attacker sees of one trace: kinds always; shapes, producers, durations by level
    (None when hidden)."""

    kinds: list[str]
    signatures: list[tuple] | None
    producers: list[tuple[int, ...]] | None
    durations: list[float] | None


def observe(events: Sequence[TraceEvent], level: str, *, noise: float = 0.0,
            rng: np.random.Generator | None = None) -> Observation:
    """The attacker's view of a recorded trace at `level` (one of LEVELS); timing_noisy draws
    its misses and duplicates from `rng` at rate `noise`."""
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; known: {', '.join(LEVELS)}")
    kinds = [e.kind for e in events]
    durations = [e.duration_ns for e in events]
    if level == "timing_noisy":
        if rng is None:
            raise ValueError("timing_noisy needs a seeded rng")
        kinds, durations = add_probe_noise(kinds, durations, noise, rng)
    return Observation(
        kinds,
        [e.signature() for e in events] if level in _SHAPE_LEVELS else None,
        [e.producers for e in events] if level in _DATAFLOW_LEVELS else None,
        durations if level in _TIMING_LEVELS else None,
    )


def add_probe_noise(kinds: Sequence[str], durations: Sequence[float], rate: float,
                    rng: np.random.Generator) -> tuple[list[str], list[float]]:
    """A noisy probe's view of a call sequence: each call is missed with probability `rate`,
    seen twice with probability `rate` (its duration split at a uniform point in [1/4, 3/4],
    a probe hitting a long call twice), else seen once. rate in [0, 0.5]."""
    if not 0.0 <= rate <= 0.5:
        raise ValueError(f"noise rate must be in [0, 0.5], got {rate}")
    u = rng.random(len(kinds))
    split = rng.uniform(0.25, 0.75, len(kinds))
    out_kinds: list[str] = []
    out_durations: list[float] = []
    for i, (kind, duration) in enumerate(zip(kinds, durations, strict=True)):
        if u[i] < rate:
            continue
        if u[i] < 2 * rate:
            out_kinds += [kind, kind]
            out_durations += [duration * split[i], duration * (1 - split[i])]
        else:
            out_kinds.append(kind)
            out_durations.append(duration)
    return out_kinds, out_durations


# ------------------------------------------------------------------------------- alignment


def align(observed: Sequence[str], slots: Sequence[Sequence[tuple[str, ...]]], rate: float
          ) -> tuple[float, list[tuple[int, list[list[int]]]]] | None:
    """Viterbi alignment of an observed kind sequence with a grammar of slots.

    slots: each a list of options, each option a tuple of call kinds (possibly empty); the
    grammar is their concatenation, one option per slot. rate: the probe's miss (and duplicate)
    probability; each expected call is seen once (cost -log(1 - 2 rate)), missed or seen twice
    (cost -log rate each). Returns (cost in nats, per slot (chosen option, per call of that
    option the observed indices matched to it)), or None if no alignment exists. Cost is
    O(len(observed) * total calls of all options); ties go to the first option.
    """
    if rate <= 0.0:
        return _align_exact(observed, slots)
    vocab: dict[str, int] = {}
    obs = np.array([vocab.setdefault(k, len(vocab)) for k in observed], dtype=np.int64)
    n = len(obs)
    r = min(rate, 0.45)
    c_once, c_edit = -math.log(1 - 2 * r), -math.log(r)
    cur = np.full(n + 1, np.inf)
    cur[0] = 0.0
    history = []
    for options in slots:
        outs, choices = [], []
        for option in options:
            vec, option_choices = cur, []
            for kind in option:
                hit = obs == vocab.get(kind, -1)
                new = vec + c_edit  # missed
                step = np.zeros(n + 1, dtype=np.int8)
                once = np.full(n + 1, np.inf)
                once[1:] = np.where(hit, vec[:-1] + c_once, np.inf)
                better = once < new
                new = np.where(better, once, new)
                step[better] = 1
                if n >= 2:
                    twice = np.full(n + 1, np.inf)
                    twice[2:] = np.where(hit[:-1] & hit[1:], vec[:-2] + c_edit, np.inf)
                    better = twice < new
                    new = np.where(better, twice, new)
                    step[better] = 2
                vec = new
                option_choices.append(step)
            outs.append(vec)
            choices.append(option_choices)
        stacked = np.stack(outs)
        best = stacked.argmin(axis=0)
        cur = stacked.min(axis=0)
        history.append((best, choices))
    if not np.isfinite(cur[n]):
        return None
    j = n
    decoded: list[tuple[int, list[list[int]]]] = [(0, [])] * len(slots)
    for s in range(len(slots) - 1, -1, -1):
        best, choices = history[s]
        o = int(best[j])
        matched: list[list[int]] = [[] for _ in slots[s][o]]
        for pos in range(len(slots[s][o]) - 1, -1, -1):
            consumed = int(choices[o][pos][j])
            matched[pos] = list(range(j - consumed, j))
            j -= consumed
        decoded[s] = (o, matched)
    return float(cur[n]), decoded


def _align_exact(observed: Sequence[str], slots: Sequence[Sequence[tuple[str, ...]]]
                 ) -> tuple[float, list[tuple[int, list[list[int]]]]] | None:
    """`align` for a noiseless probe: every call seen exactly once. A forward pass over the
    slots keeps the set of reachable positions (a handful: the grammar is nearly
    deterministic), so the cost is linear in the trace."""
    observed = list(observed)
    n = len(observed)
    back: list[dict[int, tuple[int, int]]] = []  # per slot: end position -> (start, option)
    reachable = {0}
    for options in slots:
        nxt: dict[int, tuple[int, int]] = {}
        for j in sorted(reachable):
            for o, option in enumerate(options):
                end = j + len(option)
                if end <= n and end not in nxt and tuple(observed[j:end]) == option:
                    nxt[end] = (j, o)
        back.append(nxt)
        reachable = set(nxt)
        if not reachable:
            return None
    if n not in reachable:
        return None
    decoded: list[tuple[int, list[list[int]]]] = [(0, [])] * len(slots)
    j = n
    for s in range(len(slots) - 1, -1, -1):
        start, o = back[s][j]
        decoded[s] = (o, [[start + p] for p in range(len(slots[s][o]))])
        j = start
    return 0.0, decoded


# -------------------------------------------------------------------------------- grammar


@dataclasses.dataclass
class _Grammar:
    slots: list[list[tuple[str, ...]]]
    meta: list[tuple]  # per slot: ("fixed",), ("pre0", cell), ("pre1", cell), ("edge", cell, k),
    # ("add", cell, k), ("cat", cell)
    families: dict[tuple[bool, int], dict[tuple[str, ...], list[tuple[str, int]]]]
    # (reduction, node) -> family kinds -> members (op, stride)


def _edge_members(cell: CellShape, node: int, ops: Sequence[str]) -> list[tuple[str, int]]:
    strides = {cell.stride(i) for i in range(node + 2)}
    return [(op, s) for op in ops for s in sorted(strides)]


def _grammar(macro: Sequence[CellShape], ops: Sequence[str], refs: References) -> _Grammar:
    families: dict[tuple[bool, int], dict[tuple[str, ...], list[tuple[str, int]]]] = {}
    slots: list[list[tuple[str, ...]]] = [[_HEAD]]
    meta: list[tuple] = [("fixed",)]
    for c, cell in enumerate(macro):
        slots.append([refs.preprocess_kinds(cell.reduction_prev)])
        meta.append(("pre0", c))
        slots.append([refs.preprocess_kinds(False)])
        meta.append(("pre1", c))
        for k in range(2 * cell.steps):
            key = (cell.reduction, k // 2)
            if key not in families:
                fam: dict[tuple[str, ...], list[tuple[str, int]]] = {}
                for op, s in _edge_members(cell, k // 2, ops):
                    fam.setdefault(refs.kinds(op, s), []).append((op, s))
                families[key] = fam
            slots.append(list(families[key]))
            meta.append(("edge", c, k))
            slots.append([("add",)])
            meta.append(("add", c, k))
        slots.append([("cat",)])
        meta.append(("cat", c))
    slots.append([_TAIL])
    meta.append(("fixed",))
    return _Grammar(slots, meta, families)


# ------------------------------------------------------------------------------ candidates


@dataclasses.dataclass
class EdgeCandidates:
    """The surviving hypotheses of one genotype edge: members (op, stride) with a score
    (timing log-likelihood, 0 without timing) and the input indices each member allows."""

    node: int
    members: dict[tuple[str, int], float]
    inputs: dict[tuple[str, int], tuple[int, ...]]

    def pairs(self) -> list[tuple[str, int, float]]:
        """All surviving (op, input, score)."""
        return [(op, i, score) for (op, s), score in self.members.items()
                for i in self.inputs[(op, s)]]


def _inputs_for(cell: CellShape, node: int, stride: int) -> tuple[int, ...]:
    return tuple(i for i in range(node + 2) if cell.stride(i) == stride)


@dataclasses.dataclass
class _CellTypeCandidates:
    edges: list[EdgeCandidates]
    concats: list[tuple[int, ...]] | None  # None: every non-empty subset (not materialised)
    steps: int


def _votes(values: list[Any]) -> list[Any]:
    """The most frequent values (all of them on a tie), in first-seen order."""
    counts = Counter(values)
    top = max(counts.values())
    return [v for v in dict.fromkeys(values) if counts[v] == top]


def _log_normal(observed: float, reference: float, sigma: float) -> float:
    """Log-likelihood of a duration (log-normal around the reference), capped at 3 sigma: a
    call the scheduler delayed is an outlier, and one outlier must not eliminate an op."""
    z = (math.log(max(observed, 1.0)) - math.log(max(reference, 1.0))) / sigma
    return -0.5 * min(z * z, 9.0)


def attack_observation(obs: Observation, macro: Sequence[CellShape], ops: Sequence[str],
                       refs: References, *, rate: float, batch: int, sigma: float,
                       margin: float, eliminate: bool = True) -> dict[str, _CellTypeCandidates]:
    """Candidates per cell type ("normal", "reduce") from one observation.

    With eliminate=False, only the generation step runs (families from the aligned kinds; no
    shapes, data flow or timing used), which is what the completeness test checks.
    """
    grammar = _grammar(macro, ops, refs)
    aligned = align(obs.kinds, grammar.slots, rate)
    # event index -> state index, per cell, from the skeleton's fixed calls (data flow).
    instances: dict[str, list[int]] = {"normal": [], "reduce": []}
    for c, cell in enumerate(macro):
        instances["reduce" if cell.reduction else "normal"].append(c)
    slot_of = {m: s for s, m in enumerate(grammar.meta) if m[0] != "fixed"}
    out: dict[str, _CellTypeCandidates] = {}
    for kind_name, cells in instances.items():
        if not cells:
            continue
        first = macro[cells[0]]
        edges = []
        for k in range(2 * first.steps):
            node = k // 2
            fam = grammar.families[(first.reduction, node)]
            if aligned is None:  # nothing decodable: the kinds tell nothing about this edge
                chosen = list(fam)
            else:
                chosen = _votes([grammar.slots[slot_of[("edge", c, k)]][aligned[1][slot_of[("edge", c, k)]][0]]
                                 for c in cells])
            members = {m: 0.0 for f in chosen for m in fam[f]}
            inputs = {m: _inputs_for(first, node, m[1]) for m in members}
            edges.append(EdgeCandidates(node, members, inputs))
        cand = _CellTypeCandidates(edges, None, first.steps)
        if eliminate and aligned is not None:
            _eliminate(cand, obs, macro, cells, aligned[1], slot_of, grammar, refs, ops=ops,
                       batch=batch, sigma=sigma, margin=margin)
        out[kind_name] = cand
    return out


def _eliminate(cand: _CellTypeCandidates, obs: Observation, macro: Sequence[CellShape],
               cells: list[int], decoded: list, slot_of: dict, grammar: _Grammar,
               refs: References, *, ops: Sequence[str], batch: int, sigma: float,
               margin: float) -> None:
    """Drop the candidates the observation's shapes, data flow or timing contradict."""

    def matched(c: int, tag: str, *rest: int) -> list[list[int]]:
        return decoded[slot_of[(tag, c, *rest)]][1]

    states_of: dict[int, dict[int, int]] = {}
    if obs.producers is not None:
        for c in cells:
            # The state tensors are the outputs of the preprocessing blocks and nodes' adds.
            ev = {matched(c, "pre0")[-1][0]: 0, matched(c, "pre1")[-1][0]: 1}
            for node in range(macro[c].steps):
                ev[matched(c, "add", 2 * node + 1)[0][0]] = node + 2
            states_of[c] = ev
    for k, edge in enumerate(cand.edges):
        keep_inputs: list[int] | None = None
        scores = dict.fromkeys(edge.members, 0.0)
        for c in cells:
            cell = macro[c]
            slot = slot_of[("edge", c, k)]
            events = decoded[slot][1]
            decoded_kinds = grammar.slots[slot][decoded[slot][0]]
            for m in list(scores):
                kinds = refs.kinds(*m)
                if kinds != decoded_kinds:  # this instance decoded another family: no evidence
                    continue
                if obs.signatures is not None:
                    predicted = [e.signature() for e in refs.op(m[0], m[1], cell, batch)]
                    seen = [obs.signatures[i[0]] for i in events]
                    if predicted != seen:
                        del scores[m]
                        continue
                if obs.durations is not None and len(kinds) > 0 and len(edge.members) > 1:
                    reference = refs.in_network(m[0], m[1], c, macro, ops, batch)
                    if reference is None:
                        continue
                    for pos, idx in enumerate(events):
                        if idx:
                            scores[m] += _log_normal(sum(obs.durations[i] for i in idx),
                                                     reference[pos], sigma)
            if obs.producers is not None:
                if events:
                    producer = obs.producers[events[0][0]][0]
                else:  # an identity: the add reads the state itself
                    add = matched(c, "add", k)[0][0]
                    prods = [p for p in obs.producers[add] if p not in (PARAMETER,)]
                    if k % 2:  # the node's second add also reads the running total
                        total = matched(c, "add", k - 1)[0][0]
                        prods = [p for p in prods if p != total] or prods
                    producer = prods[0]
                state = states_of[c].get(producer, -1) if producer != INPUT else -1
                keep_inputs = [state] if keep_inputs is None else [i for i in keep_inputs if i == state]
        best = max(scores.values(), default=0.0)
        edge.members = {m: v for m, v in scores.items() if v >= best - margin}
        if keep_inputs is not None:
            edge.inputs = {m: tuple(i for i in edge.inputs[m] if i in keep_inputs) for m in edge.members}
        else:
            edge.inputs = {m: edge.inputs[m] for m in edge.members}
        # Members left with no input are eliminated too.
        edge.members = {m: v for m, v in edge.members.items() if edge.inputs[m]}
        edge.inputs = {m: edge.inputs[m] for m in edge.members}
    # Concat: arity from the cat's input shapes, the exact states from the data flow.
    concats: list[tuple[int, ...]] | None = None
    if obs.signatures is not None or obs.producers is not None:
        seen = []
        for c in cells:
            cat = matched(c, "cat")[0][0]
            if obs.producers is not None:
                seen.append(tuple(states_of[c].get(p, -1) for p in obs.producers[cat]))
            else:
                seen.append(len(obs.signatures[cat][1]))
        if obs.producers is not None:
            concats = _votes(seen)
        else:
            k_arity = _votes(seen)[0]
            concats = [tuple(s) for s in itertools.combinations(range(2, 2 + cand.steps), k_arity)]
    cand.concats = concats


# --------------------------------------------------------------------------------- scoring


def _edge_scores(edge: EdgeCandidates, true_op: str, true_input: int) -> dict[str, float]:
    pairs = edge.pairs()
    if not pairs:
        return {"op": 0.0, "input": 0.0, "exact": 0.0, "count": 0, "survived": False}
    best = max(score for *_, score in pairs)
    top = [(op, i) for op, i, score in pairs if score >= best - _TIE]
    return {
        "op": sum(op == true_op for op, _ in top) / len(top),
        "input": sum(i == true_input for _, i in top) / len(top),
        "exact": float((true_op, true_input) in top) / len(top),
        "count": len(pairs),
        "survived": any(op == true_op and i == true_input for op, i, _ in pairs),
    }


def _concat_scores(cand: _CellTypeCandidates, true_concat: tuple[int, ...]) -> dict[str, Any]:
    every = tuple(range(2, 2 + cand.steps))
    if cand.concats is None:  # no evidence: every non-empty subset, DARTS's "all nodes" first
        count = 2**cand.steps - 1
        correct = float(tuple(true_concat) == every)
        return {"p": correct, "count": count, "survived": True}
    count = len(cand.concats)
    top = [every] if every in cand.concats else cand.concats
    p = float(tuple(true_concat) in top) / len(top) if top else 0.0
    return {"p": p, "count": count, "survived": tuple(true_concat) in cand.concats}


def score_candidates(cands: dict[str, _CellTypeCandidates], genotype: Any) -> dict[str, Any]:
    """Leakage metrics of the candidates against the true genotype (see the module doc)."""
    per_cell: dict[str, Any] = {}
    ops_acc, in_acc, bits, exact_p, survived = [], [], 0.0, 1.0, True
    concat_acc = []
    for kind_name, cand in cands.items():
        pairs = genotype.normal if kind_name == "normal" else genotype.reduce
        concat = genotype.normal_concat if kind_name == "normal" else genotype.reduce_concat
        scores = [_edge_scores(e, op, i) for e, (op, i) in zip(cand.edges, pairs, strict=True)]
        cs = _concat_scores(cand, tuple(concat))
        cell_bits = sum(math.log2(s["count"]) if s["count"] else 0.0 for s in scores)
        cell_bits += math.log2(cs["count"]) if cs["count"] else 0.0
        per_cell[kind_name] = {
            "edge_op_accuracy": float(np.mean([s["op"] for s in scores])),
            "edge_input_accuracy": float(np.mean([s["input"] for s in scores])),
            "concat_accuracy": cs["p"],
            "remaining_bits": cell_bits,
        }
        ops_acc += [s["op"] for s in scores]
        in_acc += [s["input"] for s in scores]
        concat_acc.append(cs["p"])
        bits += cell_bits
        exact_p *= math.prod(s["exact"] for s in scores) * cs["p"]
        survived = survived and all(s["survived"] for s in scores) and cs["survived"]
        if any(s["count"] == 0 for s in scores) or cs["count"] == 0:
            exact_p = 0.0
    return {
        "exact": bool(exact_p == 1.0),
        "exact_probability": float(exact_p),
        "edge_op_accuracy": float(np.mean(ops_acc)),
        "edge_input_accuracy": float(np.mean(in_acc)),
        "concat_accuracy": float(np.mean(concat_acc)),
        "remaining_bits": float(bits),
        "n_candidates": _count(bits),
        "true_survived": bool(survived),
        "per_cell": per_cell,
    }


def _count(bits: float) -> int | float:
    """2 ** bits as an exact integer while it fits a float's mantissa, else a float."""
    return int(round(2.0**bits)) if bits < 53 else (2.0**bits if bits < 1000 else math.inf)


def prior_bits(macro: Sequence[CellShape], ops: Sequence[str]) -> float:
    """log2 of the attacker's whole space: every (op, input) per edge and concat per cell type."""
    bits, seen = 0.0, set()
    for cell in macro:
        if cell.reduction in seen:
            continue
        seen.add(cell.reduction)
        bits += sum(math.log2(len(ops) * (k // 2 + 2)) for k in range(2 * cell.steps))
        bits += math.log2(2**cell.steps - 1)
    return bits


def attack_trace(events: Sequence[TraceEvent], genotype: Any, macro: Sequence[CellShape],
                 level: str, refs: References, *, ops: Sequence[str], noise: float = 0.0,
                 rng: np.random.Generator | None = None, batch: int = 1, sigma: float = 0.25,
                 margin: float = 4.6) -> dict[str, Any]:
    """One reconstruction at `level` from a recorded trace; returns the metrics of
    `score_candidates` plus trace_length (calls observed)."""
    obs = observe(events, level, noise=noise, rng=rng)
    rate = noise if level == "timing_noisy" else 0.0
    cands = attack_observation(obs, macro, ops, refs, rate=rate, batch=batch, sigma=sigma,
                               margin=margin)
    result = score_candidates(cands, genotype)
    result["trace_length"] = len(obs.kinds)
    return result


# ---------------------------------------------------------------------------------- probe


@dataclasses.dataclass
class TraceLeakParams:
    """Settings of the trace-leak probe."""

    levels: tuple[str, ...] = param(LEVELS, choices=LEVELS, unique=True,
                                    doc="observation levels, strong to weak")
    noise: float = param(0.05, min=0, max=0.45, doc="timing_noisy: miss (and duplicate) rate per call")
    draws: int = param(5, min=1, doc="timing_noisy: noise draws (exact becomes a rate)")
    passes: int = param(5, min=1, doc="timed forward passes (median per call)")
    batch_size: int = param(1, min=1, doc="images in the traced query")
    space: str = param("paper", doc="search space (op set) the attacker assumes")
    timing_sigma: float = param(0.25, gt=0, doc="spread of log durations the attacker assumes")
    timing_margin: float = param(4.6, min=0, doc="log-likelihood gap that eliminates (4.6: 100x)")


@dataclasses.dataclass
class TraceLeakRecord(Record):
    """How much of a genotype leaks through its execution trace, per observation level."""

    kind = "probe_trace_leak"
    applicable: bool
    reason: str | None  # why not, for a model without a genotype
    levels: dict  # level -> metrics (see the module doc)
    trace_events: int  # calls in the clean trace of one forward pass
    n_cells: int
    prior_bits: float | None
    genotype: dict | None
    seed: int
    params: dict
    model: str | None = None
    checkpoint: str | None = None
    files: dict = dataclasses.field(default_factory=dict)


def _mean_metrics(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("exact_probability", "edge_op_accuracy", "edge_input_accuracy", "concat_accuracy",
            "remaining_bits", "trace_length")
    out: dict[str, Any] = {k: float(np.mean([r[k] for r in runs])) for k in keys}
    out["exact"] = float(np.mean([r["exact"] for r in runs]))
    out["true_survived"] = float(np.mean([r["true_survived"] for r in runs]))
    out["n_candidates"] = _count(out["remaining_bits"])
    out["per_draw_exact"] = [bool(r["exact"]) for r in runs]
    out["per_cell"] = {
        cell: {k: float(np.mean([r["per_cell"][cell][k] for r in runs])) for k in metrics}
        for cell, metrics in runs[0]["per_cell"].items()
    }
    return out


def run_trace_leak(model: nn.Module, data: Any, params: TraceLeakParams | dict | None, *,
                   device: torch.device, seed: int, out_dir: str | Path | None = None,
                   progress: bool = True) -> TraceLeakRecord:
    """Record the execution trace of one inference query to `model` (a genotype network) and
    reconstruct its genotype at each configured level. A model without a genotype (a manual
    baseline) gives a record with applicable=False. Writes trace_leak.json to out_dir."""
    from tqdm.auto import tqdm

    from nasaudit.device import generator
    from nasaudit.genotype import genotype_to_json
    from nasaudit.probes.gradvar import eval_mode
    from nasaudit.search_space import load_search_space

    params = make_params(TraceLeakParams, params, source="probe trace_leak")
    plain = dataclasses.asdict(params)
    genotype = genotype_of(model)
    if genotype is None:
        return TraceLeakRecord(False, "the model has no genotype (a manual baseline): nothing to steal "
                               "in the DARTS space", {}, 0, 0, None, None, seed, plain)
    ops = load_search_space(params.space).ops
    model = model.to(device)
    n_test = data.test_images.shape[0]
    idx = torch.randperm(n_test, generator=generator(seed))[: params.batch_size]
    x = data.test_images[idx].to(device).float().div(255.0)
    with eval_mode(model):
        events = record_trace(model, x, passes=params.passes)
    macro = macro_of(model, tuple(x.shape[-2:]))
    refs = References(device=device, passes=params.passes, seed=seed)
    levels: dict[str, Any] = {}
    kwargs = {"ops": ops, "batch": params.batch_size, "sigma": params.timing_sigma,
              "margin": params.timing_margin}
    bar = tqdm(params.levels, desc="trace leak", disable=not progress, leave=False)
    for level in bar:
        if level == "timing_noisy":
            runs = [attack_trace(events, genotype, macro, level, refs, noise=params.noise,
                                 rng=np.random.default_rng([seed, draw]), **kwargs)
                    for draw in range(params.draws)]
            levels[level] = {**_mean_metrics(runs), "noise": params.noise, "draws": params.draws}
        else:
            levels[level] = attack_trace(events, genotype, macro, level, refs, **kwargs)
    record = TraceLeakRecord(True, None, levels, len(events), len(macro), prior_bits(macro, ops),
                             genotype_to_json(genotype), seed, plain)
    if out_dir is not None:
        from nasaudit.io import atomic_write_json

        path = atomic_write_json(Path(out_dir) / "trace_leak.json", record.to_dict())
        record.files["record"] = str(path)
    return record
