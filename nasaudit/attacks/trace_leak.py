"""Architecture stealing from an execution trace: how much of a cell leaks, at what observation.

After Hong et al., "How to 0wn NAS in Your Spare Time" (ICLR 2020), who read a network's
library calls through a Flush+Reload cache side channel and rebuild the architecture from them.
This attack does not mount a cache attack. It records the trace such a channel would read
(`nasaudit.attacks.trace`), degrades it to what an attacker observes at each level, and runs the
reconstruction attack against it, so the leak is measured, per level:

* ``ops``: call kinds, input/output shapes and the data flow (which call produced each input),
  as a forward-hook or execution-trace recorder sees them: the idealised channel;
* ``shapes``: kinds and shapes without the data flow (a shape-recording profiler's view);
* ``ops_timing``: kinds and durations of one inference query, the closest to Flush+Reload on
  library functions;
* ``timing_noisy``: ops_timing through a noisy probe: each call is missed with probability
  `noise` and seen twice (its duration split) with probability `noise`, as the paper reports,
  and every duration it reads carries a multiplicative log-normal jitter (sd `jitter` in log).

The victim runs in a process of its own (`time_victim`: a subprocess with OMP_NUM_THREADS set,
warm, timed on single queries), as a victim would; the attacker profiles on its own process.

The attacker knows the DARTS evaluation-network skeleton and its macro settings (channels,
cells, nodes per cell, where the reductions are, the input size: all usually published) and the
op set of the search space; the secret is the genotype. The attack follows the paper's scheme:

1. segment: align the observed call kinds with the skeleton's grammar (stem, then per cell two
   preprocessing blocks, per node two edge ops and two adds, one cat), each edge slot a choice
   among the op families (ops with the same call-kind sequence). With a noisy probe a Viterbi
   alignment under the probe's miss/duplicate model gives, per edge slot and family, the log
   likelihood ratio of the best alignment through that family against the best overall
   (`option_deltas`); repeated cells of one type add their evidence;
2. generate: per edge, every (op, input) pair of a family the kinds allow whose stride agrees
   with the input (stride 2 only from a reduction cell's inputs 0 and 1); per cell, every
   concat set;
3. eliminate: candidates whose predicted calls (the op module's own recorded trace at the
   cell's geometry) disagree with the observed shapes or whose inputs disagree with the data
   flow (both exact: an exact level never loses the truth), and, by likelihood only, candidates
   whose kinds-and-timing likelihood ratio against the edge's best candidate exceeds the
   calibrated threshold `elimination_threshold` (below);
4. rank: by that log likelihood; ties are uniform.

Timing model (`TimingModel`, calibrated by `References.timing`): the attacker builds
`passes` x (number of timed ops + 1) networks of the victim's macro with random cells of the
ops whose family has several members (the only ones timing has to tell apart; skip_connect
joins them as a neighbour), and times one warm single pass of each, so every op is seen among
varied neighbours and at varied moments of a shared host. Each pass's log-time offset is the
median, over the skeleton's fixed calls (stem, preprocessing batch norms, node adds: the same
shapes in every network), of their log duration minus its mean; the victim's query gets its
offset the same way, so a host that is slower as a whole (another process, minutes apart)
shifts no op against another. Per (op, stride, input shape) and call position the model has a
median and a robust scale (floored at `timing_floor`); the standardised residuals of all the
reference calls give one learnt density (skewed and heavy-tailed: a delayed call must not
eliminate an op). An op instance's calls share a log-time shift u ~ N(0, 0.5**2), integrated
out; at timing_noisy the probe's jitter widens every call. Half the reference networks then
score the other half's known ops against their family's other members (cross-fitting), and the
log likelihoods are divided by the smallest temperature T >= 1 that makes those known-truth
likelihood ratios average <= 1 (`calibrated_temperature`; T = inf, timing ignored, when no T
does or too few pairs check it).

Elimination threshold: each edge with K >= 2 candidates is one decision, E decisions per level.
For the truth t and any other candidate a, a (tempered) likelihood ratio with mean <= 1 under
the truth obeys P(L(a) / L(t) >= e**tau) <= e**-tau (Markov's inequality), so eliminating at
tau = log((K - 1) E / (1 - survival)) drops the truth at a given edge with probability at most
(1 - survival) / E and anywhere with probability at most 1 - survival (0.05 by default). The
kinds' ratios at timing_noisy come from the noise model itself; the exact levels' shape and
data-flow checks are deterministic and never drop the truth.

Reported per level: `exact` (the single top-ranked genotype is the true one; a rate over noise
draws at timing_noisy), `exact_probability` (chance that a uniform pick among the top-ranked is
exact), `edge_op_accuracy` and `edge_input_accuracy` (expected, over the top-ranked, per edge),
`concat_accuracy`, `n_candidates` and `remaining_bits` = log2(n_candidates) (the attacker's
remaining uncertainty; counted per edge, never enumerated), `true_survived` (the true genotype is
among the candidates left: a rate at timing_noisy), the chance baselines `chance_edge_op_accuracy`
(a uniform pick within the true op's call family, what the kinds alone give), `chance_bits`
(log2 of the space the true kinds allow) and `prior_edge_op_accuracy` (a uniform pick of any op:
no trace), `beats_chance` (edge op accuracy above the in-family pick; None when both are 1:
nothing to beat), `decisions` (E) and
`survival_target`, and `trace_length` (calls observed). The record's `prior_bits` is the whole
space (no trace).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nasaudit.attacks import AttackSpec
from nasaudit.attacks.common import AttackRecord, Victim, record_fields
from nasaudit.attacks.trace import INPUT, PARAMETER, TraceEvent, record_passes, record_trace
from nasaudit.infra.params import make_params, param

__all__ = [
    "LEVELS",
    "Params",
    "CallStats",
    "CellShape",
    "EdgeCandidates",
    "References",
    "ResidualDensity",
    "TimingModel",
    "TraceLeakRecord",
    "add_probe_noise",
    "align",
    "attack_trace",
    "calibrated_temperature",
    "chance_baselines",
    "elimination_threshold",
    "genotype_of",
    "macro_of",
    "option_deltas",
    "run_trace_leak",
    "time_victim",
]

# The observation levels, strong to weak (see the module doc).
LEVELS = ("ops", "shapes", "ops_timing", "timing_noisy")


@dataclasses.dataclass
class Params:
    """Architecture stealing: how much of the genotype an execution trace leaks."""

    levels: tuple[str, ...] = param(LEVELS, choices=LEVELS, unique=True,
                                    doc="observation levels, strong to weak")
    noise: float = param(0.05, min=0, max=0.45, doc="timing_noisy: miss (and duplicate) rate per call")
    jitter: float = param(0.1, min=0, doc="timing_noisy: sd of the log-normal jitter on each duration")
    draws: int = param(5, min=1, doc="timing_noisy: noise draws, each on its own query (exact becomes a rate)")
    passes: int = param(5, min=1, doc="the attacker's reference cells per timed op, one timed pass each")
    batch_size: int = param(1, min=1, doc="images in the traced query")
    space: str = param("paper", doc="search space (op set) the attacker assumes")
    timing_floor: float = param(0.1, gt=0, doc="floor on the sd of a call's log duration")
    survival: float = param(0.95, gt=0, lt=1,
                            doc="per level, the chance the truth survives the likelihood-ratio eliminations")
    victim_process: bool = param(True, doc="time the victim in a separate process (false: in this one)")
    threads: int | None = param(None, min=1, doc="the victim's CPU threads (default: the attacker's)")


_DATAFLOW_LEVELS = ("ops",)
_SHAPE_LEVELS = ("ops", "shapes")
_TIMING_LEVELS = ("ops_timing", "timing_noisy")
# The skeleton's fixed calls (NetworkCIFAR.forward and ImageClassifier): Normalize, stem, head.
_HEAD = ("sub", "div", "conv2d", "batch_norm")
_TAIL = ("adaptive_avg_pool2d", "flatten", "linear")
_TIE = 1e-9  # scores closer than this rank equal
_SHIFT_GRID = 241  # grid points of the shared shift u over +-6 sd (step 0.025 at sd 0.5)
_VICTIM_WARMUP = 2  # untimed queries before the timed ones: a serving victim is warm
_REFERENCE_WARMUP = 1


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


@dataclasses.dataclass(frozen=True)
class CallStats:
    """The calibrated timing of one op at one geometry: per call position, the median and the
    robust scale (1.4826 MAD, floored) of the offset-corrected log duration (log ns), over
    `samples` timed instances (edges of that geometry in the reference networks)."""

    mu: tuple[float, ...]
    scale: tuple[float, ...]
    samples: int


class ResidualDensity:
    """The shape of a call's standardised log-time residual z = (log d - mu) / scale, learnt
    from the attacker's reference samples (a kernel density on a grid: a shared host's delays
    make it skewed and heavy-tailed, which a normal is not), mixed with 2 % of a standard
    Cauchy so that no residual is impossible. Fewer than 50 samples: a standard normal."""

    _GRID = np.arange(-12.0, 40.0 + 1e-9, 0.05)
    _CAUCHY = 0.02

    def __init__(self, z: np.ndarray | None = None):
        grid = self._GRID
        cauchy = 1.0 / (math.pi * (1.0 + grid * grid))
        if z is None or len(z) < 50:
            body = np.exp(-0.5 * grid * grid) / math.sqrt(2 * math.pi)
        else:
            z = np.clip(np.asarray(z, dtype=float), grid[0], grid[-1])
            spread = min(float(np.std(z)), float(np.subtract(*np.percentile(z, [75, 25]))) / 1.34)
            h = max(0.9 * max(spread, 0.1) * len(z) ** -0.2, 0.1)  # Silverman's bandwidth
            step = grid[1] - grid[0]
            counts = np.histogram(z, bins=len(grid), range=(grid[0] - step / 2, grid[-1] + step / 2))[0]
            half = int(math.ceil(4 * h / step))
            kernel = np.exp(-0.5 * (np.arange(-half, half + 1) * step / h) ** 2)
            body = np.convolve(counts, kernel, mode="same")
            body = body / (body.sum() * step)
        self.log_f = np.log((1 - self._CAUCHY) * body + self._CAUCHY * cauchy)

    def log_density(self, z: np.ndarray) -> np.ndarray:
        """log f(z), elementwise (outside the grid: the Cauchy part alone)."""
        inside = np.interp(z, self._GRID, self.log_f)
        tail = math.log(self._CAUCHY / math.pi) - np.log1p(z * z)
        return np.where((z < self._GRID[0]) | (z > self._GRID[-1]), tail, inside)


class TimingModel:
    """The attacker's calibrated timing model of one macro (see the module doc).

    anchors: skeleton call (slot meta, position) -> mean log duration over the reference passes;
    stats: (op, stride, input shape) -> CallStats; density: the residuals' shape; shift: sd (log
    units) of the shift that one op instance's calls share (integrated out: a victim whose op
    runs uniformly slower than its profile, as another process or a busy host makes it, is no
    evidence for a slower op); temperature: the log likelihoods are divided by it (inf: the
    model is no better than chance and timing is ignored).
    """

    def __init__(self, anchors: dict[tuple, float], stats: dict[tuple, CallStats],
                 density: ResidualDensity | None = None, shift: float = 0.5,
                 temperature: float = 1.0):
        self.anchors = anchors
        self.stats = stats
        self.density = density or ResidualDensity()
        self.shift = shift
        self.temperature = temperature

    def offset(self, log_durations: dict[tuple, float]) -> float:
        """A trace's log-time offset: the median over its anchors (anchor key -> log duration)
        of log duration minus the reference mean; 0 without anchors."""
        diffs = [v - self.anchors[k] for k, v in log_durations.items() if k in self.anchors]
        return float(np.median(diffs)) if diffs else 0.0

    def loglik(self, key: tuple, observed: Sequence[float | None], offset: float,
               jitter: float = 0.0) -> float | None:
        """Log likelihood (nats) of one edge instance's observed durations (ns per call
        position, None where the probe missed the call) under op key = (op, stride, input
        shape); None when the model has no such op.

        Per call, log duration - offset = mu + u + scale' z: z from the residual density,
        scale' = sqrt(scale**2 (1 + 1/n) + jitter**2), u ~ N(0, shift**2) shared by the
        instance's calls and integrated on a grid; divided by the temperature (the
        cross-fitted calibration's, `calibrated_temperature`: 1 for a calibrated model).
        """
        stats = self.stats.get(key)
        if stats is None or len(stats.mu) != len(observed):
            return None
        seen = [p for p, d in enumerate(observed) if d is not None]
        if not seen:
            return 0.0
        r = np.array([math.log(max(observed[p], 1.0)) - offset - stats.mu[p] for p in seen])
        sd = np.sqrt(np.array([stats.scale[p] ** 2 * (1.0 + 1.0 / stats.samples) + jitter * jitter
                               for p in seen]))
        if not math.isfinite(self.temperature):
            return 0.0
        if self.shift <= 0:
            return float((self.density.log_density(r / sd) - np.log(sd)).sum()) / self.temperature
        s = self.shift
        u = np.linspace(-6 * s, 6 * s, _SHIFT_GRID)
        log_prior = -0.5 * (u / s) ** 2 - math.log(s * math.sqrt(2 * math.pi)) + math.log(u[1] - u[0])
        z = (r[None, :] - u[:, None]) / sd[None, :]
        total = (self.density.log_density(z) - np.log(sd)[None, :]).sum(axis=1) + log_prior
        top = float(total.max())
        return (top + math.log(float(np.exp(total - top).sum()))) / self.temperature


class References:
    """The attacker's profile: the recorded trace of each candidate op (or skeleton block) at a
    given geometry, and the calibrated timing model per macro, made once and cached (per
    attack; no global state). passes: R, the reference cells timed per timed op;
    floor: the floor on a call's log-duration sd; shift: sd of an op instance's shared
    log-time shift (`TimingModel`); channels_last: profile in the victim's weight format
    (`nasaudit.infra.device.prepare_model`)."""

    def __init__(self, *, device: torch.device, passes: int, seed: int, floor: float = 0.1,
                 shift: float = 0.5, channels_last: bool = False):
        if passes < 1:
            raise ValueError(f"passes must be >= 1, got {passes}")
        self.device = device
        self.passes = passes
        self.seed = seed
        self.floor = floor
        self.shift = shift
        self.channels_last = channels_last  # the victim's weight format, which sets its speed
        self._cache: dict[tuple, Any] = {}

    def trace(self, build: Any, key: tuple, input_shape: tuple[int, ...]) -> list[TraceEvent]:
        """Events of `build()` (an nn.Module factory) run on a random input of input_shape."""
        from nasaudit.infra.device import generator, seeded

        full_key = (key, tuple(input_shape))
        if full_key not in self._cache:
            with seeded(self.seed):
                module = build().to(self.device).eval()
            x = torch.rand(input_shape, generator=generator(self.seed, self.device), device=self.device)
            self._cache[full_key] = record_trace(module, x, passes=1)
        return self._cache[full_key]

    def op(self, name: str, stride: int, cell: CellShape, batch: int) -> list[TraceEvent]:
        """Trace of edge op `name` at `stride` in `cell` (the network's own affine=True op)."""
        from nasaudit.ops import OPS

        return self.trace(lambda: OPS[name](cell.C, stride, True), ("op", name, stride, cell.C),
                          cell.op_input_shape(stride, batch))

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

    def timing(self, macro: Sequence[CellShape], ops: Sequence[str], batch: int) -> TimingModel:
        """The calibrated timing model of `macro` for the ops of `ops` that share their call
        kinds with another candidate (the only ones timing has to tell apart)."""
        key = ("timing", tuple(macro), tuple(ops), batch)
        if key not in self._cache:
            grammar = _grammar(macro, ops, self)
            timed = sorted({m[0] for fam in grammar.families.values() for members in fam.values()
                            if len(members) > 1 for m in members})
            self._cache[key] = self._calibrate(macro, ops, timed, batch, grammar)
        return self._cache[key]

    def _calibrate(self, macro: Sequence[CellShape], ops: Sequence[str], timed: Sequence[str],
                   batch: int, grammar: _Grammar) -> TimingModel:
        """Profile passes x (timed ops + skip_connect) random-cell networks of the macro, one warm
        single pass each, and fit the timing model on them.

        Random cells put each op among varied neighbours, as in a victim's cell (an op's time
        depends on what ran before it), and each network is timed at its own moment, so the
        spread of the samples includes the host's drift and the context, not only the jitter of
        back-to-back passes."""
        from nasaudit.genotype import Genotype
        from nasaudit.infra.device import generator, seeded
        from nasaudit.models.darts_network import build_genotype_network

        if not timed:
            return TimingModel({}, {}, shift=self.shift)
        rng = np.random.default_rng([self.seed, 0x71D])
        # The timed ops, balanced, and the commonest op of real cells as a neighbour.
        pool = list(timed) + [op for op in ("skip_connect",) if op in ops and op not in timed]

        def cell(steps: int) -> tuple:
            names = [pool[i] for i in rng.permutation(np.resize(np.arange(len(pool)), 2 * steps))]
            pairs = tuple((names[k], int(rng.integers(k // 2 + 2))) for k in range(2 * steps))
            return pairs, tuple(range(2, steps + 2))

        normal = next((c.steps for c in macro if not c.reduction), macro[0].steps)
        reduce = next((c.steps for c in macro if c.reduction), macro[0].steps)
        shape = (batch, 3, macro[0].H_in, macro[0].W_in)
        x = torch.rand(shape, generator=generator(self.seed, self.device), device=self.device)
        runs = []  # (genotype, decoded slots, log durations)
        for n in range(self.passes * len(pool)):
            genotype = Genotype(*cell(normal), *cell(reduce))
            with seeded(self.seed + n):
                model = build_genotype_network(genotype, 10, C=macro[0].C, layers=len(macro),
                                               auxiliary=False).to(self.device).eval()
            if self.channels_last:
                model = model.to(memory_format=torch.channels_last)
            events, durations = record_passes(model, x, passes=1, warmup=_REFERENCE_WARMUP)
            decoded = align([e.kind for e in events], grammar.slots, 0.0)
            if decoded is None:
                raise RuntimeError("a reference network does not parse as the skeleton")
            runs.append((genotype, decoded[1], np.log(np.maximum(np.asarray(durations[0]), 1.0))))
        anchor_logs: dict[tuple, list[float]] = {}
        for _, decoded, logs in runs:
            for a, idx in _anchors(grammar, decoded).items():
                anchor_logs.setdefault(a, []).append(float(logs[idx]))
        anchors = {a: float(np.mean(v)) for a, v in anchor_logs.items()}
        probe = TimingModel(anchors, {})
        instances: list[tuple[int, tuple, np.ndarray, int, int]] = []  # run, key, logs, cell, edge
        for n, (genotype, decoded, logs) in enumerate(runs):
            offset = probe.offset({a: float(logs[i]) for a, i in _anchors(grammar, decoded).items()})
            for s, meta in enumerate(grammar.meta):
                if meta[0] != "edge":
                    continue
                c, k = meta[1], meta[2]
                name, inp = (genotype.reduce if macro[c].reduction else genotype.normal)[k]
                idx = [i[0] for i in decoded[s][1]]
                if name in timed and idx:
                    stride = macro[c].stride(inp)
                    key = (name, stride, macro[c].op_input_shape(stride, batch))
                    instances.append((n, key, logs[idx] - offset, c, k))
        model_ = self._fit(anchors, instances)
        # Cross-fitted check of the model's own confidence: fit on half the networks, score the
        # other half's known ops against their family's other members.
        folds = [self._fit(anchors, [t for t in instances if t[0] % 2 == f]) for f in (0, 1)]
        llr: list[float] = []
        for n, key, logs, c, k in instances:
            fit = folds[1 - n % 2]
            name, stride, _ = key
            cell = macro[c]
            observed = [float(v) for v in np.exp(logs)]
            truth = fit.loglik(key, observed, 0.0)
            if truth is None:
                continue
            for other in grammar.families[(cell.reduction, k // 2)][self.kinds(name, stride)]:
                if other != (name, stride):
                    alt = fit.loglik((*other, cell.op_input_shape(other[1], batch)), observed, 0.0)
                    if alt is not None:
                        llr.append(alt - truth)
        model_.temperature = calibrated_temperature(llr)
        return model_

    def _fit(self, anchors: dict[tuple, float], instances: list[tuple]) -> TimingModel:
        """Per (op, stride, shape) median and robust scale, and the residual density."""
        samples: dict[tuple, list[np.ndarray]] = {}
        for _, key, logs, _, _ in instances:
            samples.setdefault(key, []).append(logs)
        stats: dict[tuple, CallStats] = {}
        z: list[np.ndarray] = []
        for key, rows in samples.items():
            arr = np.stack(rows)
            mu = np.median(arr, axis=0)
            scale = np.maximum(1.4826 * np.median(np.abs(arr - mu), axis=0), self.floor)
            stats[key] = CallStats(tuple(map(float, mu)), tuple(map(float, scale)), len(arr))
            if len(arr) > 1:
                z.append(((arr - mu) / scale).ravel())
        return TimingModel(anchors, stats, ResidualDensity(np.concatenate(z) if z else None),
                           shift=self.shift)


def calibrated_temperature(llr: Sequence[float], *, limit: float = 1000.0, min_pairs: int = 20) -> float:
    """The smallest T >= 1 at which the tempered likelihood ratios exp(llr / T) of known
    alternatives against the truth average <= 1 (Markov's bound then holds as the module doc
    says); inf (timing ignored) when none <= `limit` does, i.e. the model ranks the truth no
    better than its alternatives on average, or when fewer than `min_pairs` known pairs leave
    the model unchecked."""
    x = np.asarray(llr, dtype=float)
    if x.size < min_pairs:
        return math.inf
    for t in np.exp(np.arange(0.0, math.log(limit) + 1e-9, 0.05)):
        top = float(np.max(x / t))
        if top + math.log(float(np.mean(np.exp(x / t - top)))) <= 0.0:
            return float(t)
    return math.inf


def _anchors(grammar: _Grammar, decoded: list) -> dict[tuple, int]:
    """The skeleton calls whose shapes do not depend on the genotype (stem, preprocessing
    batch norms, node adds), as anchor key -> observed event index; only those the alignment
    matched to exactly one event."""
    out: dict[tuple, int] = {}
    for s, meta in enumerate(grammar.meta):
        matched = decoded[s][1]
        if s == 0:
            for pos, idx in enumerate(matched):
                if len(idx) == 1:
                    out[("stem", pos)] = idx[0]
        elif meta[0] in ("pre0", "pre1") and matched and len(matched[-1]) == 1:
            out[meta] = matched[-1][0]
        elif meta[0] == "add" and len(matched[0]) == 1:
            out[meta] = matched[0][0]
    return out


# ------------------------------------------------------------------------------ observation


@dataclasses.dataclass
class Observation:
    """What the attacker sees of one trace: kinds always; shapes, producers, durations by level
    (None when hidden)."""

    kinds: list[str]
    signatures: list[tuple] | None
    producers: list[tuple[int, ...]] | None
    durations: list[float] | None


def observe(events: Sequence[TraceEvent], level: str, *, noise: float = 0.0, jitter: float = 0.0,
            rng: np.random.Generator | None = None) -> Observation:
    """The attacker's view of a recorded trace at `level` (one of LEVELS); timing_noisy draws
    its misses and duplicates (rate `noise`) and its duration jitter (sd `jitter` of the log)
    from `rng`."""
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; known: {', '.join(LEVELS)}")
    kinds = [e.kind for e in events]
    durations = [e.duration_ns for e in events]
    if level == "timing_noisy":
        if rng is None:
            raise ValueError("timing_noisy needs a seeded rng")
        kinds, durations = add_probe_noise(kinds, durations, noise, rng, jitter=jitter)
    return Observation(
        kinds,
        [e.signature() for e in events] if level in _SHAPE_LEVELS else None,
        [e.producers for e in events] if level in _DATAFLOW_LEVELS else None,
        durations if level in _TIMING_LEVELS else None,
    )


def add_probe_noise(kinds: Sequence[str], durations: Sequence[float], rate: float,
                    rng: np.random.Generator, *, jitter: float = 0.0
                    ) -> tuple[list[str], list[float]]:
    """A noisy probe's view of a call sequence: each call is missed with probability `rate`,
    seen twice with probability `rate` (its duration split at a uniform point in [1/4, 3/4],
    a probe hitting a long call twice), else seen once; every duration it reports is then
    multiplied by exp(N(0, jitter**2)) (the probe's timer). rate in [0, 0.5], jitter >= 0."""
    if not 0.0 <= rate <= 0.5:
        raise ValueError(f"noise rate must be in [0, 0.5], got {rate}")
    if jitter < 0:
        raise ValueError(f"jitter must be >= 0, got {jitter}")
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
    if jitter > 0:
        factors = np.exp(rng.normal(0.0, jitter, len(out_durations)))
        out_durations = [float(d * f) for d, f in zip(out_durations, factors, strict=True)]
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


def option_deltas(observed: Sequence[str], slots: Sequence[Sequence[tuple[str, ...]]], rate: float
                  ) -> list[np.ndarray] | None:
    """Per slot, per option: how much less likely (nats) the best alignment through that option
    is than the best alignment overall (0 for the decoded option), under `align`'s noise model.

    A forward pass (cost of the best prefix alignment ending at each position) and a backward
    pass (best suffix from each position) give every option's forced cost in the same
    O(len(observed) * total calls) as `align`. At rate 0 the probe is exact: 0 for the parsed
    option, inf for the others. None if no alignment exists.
    """
    if rate <= 0.0:
        exact = _align_exact(observed, slots)
        if exact is None:
            return None
        out = []
        for options, (o, _) in zip(slots, exact[1], strict=True):
            delta = np.full(len(options), np.inf)
            delta[o] = 0.0
            out.append(delta)
        return out
    vocab: dict[str, int] = {}
    obs = np.array([vocab.setdefault(k, len(vocab)) for k in observed], dtype=np.int64)
    n = len(obs)
    r = min(rate, 0.45)
    c_once, c_edit = -math.log(1 - 2 * r), -math.log(r)
    hits = {kind: obs == code for kind, code in vocab.items()}
    never = np.zeros(n, dtype=bool)

    def forward(vec: np.ndarray, hit: np.ndarray) -> np.ndarray:
        new = vec + c_edit  # missed
        once = np.full(n + 1, np.inf)
        once[1:] = np.where(hit, vec[:-1] + c_once, np.inf)
        new = np.minimum(new, once)
        if n >= 2:
            twice = np.full(n + 1, np.inf)
            twice[2:] = np.where(hit[:-1] & hit[1:], vec[:-2] + c_edit, np.inf)
            new = np.minimum(new, twice)
        return new

    def backward(vec: np.ndarray, hit: np.ndarray) -> np.ndarray:
        new = vec + c_edit
        once = np.full(n + 1, np.inf)
        once[:-1] = np.where(hit, vec[1:] + c_once, np.inf)
        new = np.minimum(new, once)
        if n >= 2:
            twice = np.full(n + 1, np.inf)
            twice[:-2] = np.where(hit[:-1] & hit[1:], vec[2:] + c_edit, np.inf)
            new = np.minimum(new, twice)
        return new

    fwd = np.full(n + 1, np.inf)
    fwd[0] = 0.0
    ends: list[list[np.ndarray] | None] = []  # per multi-option slot: per option, prefix costs
    for options in slots:
        outs = []
        for option in options:
            vec = fwd
            for kind in option:
                vec = forward(vec, hits.get(kind, never))
            outs.append(vec)
        ends.append(outs if len(options) > 1 else None)
        fwd = np.min(np.stack(outs), axis=0)
    best = float(fwd[n])
    if not np.isfinite(best):
        return None
    bwd = np.full(n + 1, np.inf)
    bwd[n] = 0.0
    out: list[np.ndarray] = [np.zeros(len(options)) for options in slots]
    for s in range(len(slots) - 1, -1, -1):
        if ends[s] is not None:
            forced = np.array([float(np.min(e + bwd)) for e in ends[s]])
            out[s] = np.maximum(forced - best, 0.0)
        vecs = []
        for option in slots[s]:
            vec = bwd
            for kind in reversed(option):
                vec = backward(vec, hits.get(kind, never))
            vecs.append(vec)
        bwd = np.min(np.stack(vecs), axis=0)
    return out


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
    """The surviving hypotheses of one genotype edge: members (op, stride) with a score (the
    log likelihood ratio, in nats, of the kinds and timing evidence against the edge's best
    member: 0 for the best, <= 0 for the others; 0 for all without evidence) and the input
    indices each member allows."""

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
    decisions: int = 0  # edges of the whole genotype with >= 2 candidates before elimination


def _votes(values: list[Any]) -> list[Any]:
    """The most frequent values (all of them on a tie), in first-seen order."""
    counts = Counter(values)
    top = max(counts.values())
    return [v for v in dict.fromkeys(values) if counts[v] == top]


def elimination_threshold(k: int, decisions: int, survival: float) -> float:
    """The log likelihood ratio (nats) beyond which a candidate of an edge with k candidates is
    eliminated, among `decisions` such edges, so that the truth survives every edge with
    probability >= survival: log((k - 1) decisions / (1 - survival)) (see the module doc);
    inf for k < 2 (nothing to decide)."""
    if k < 2:
        return math.inf
    return math.log((k - 1) * max(decisions, 1) / (1.0 - survival))


def attack_observation(obs: Observation, macro: Sequence[CellShape], ops: Sequence[str],
                       refs: References, *, rate: float, batch: int, survival: float = 0.95,
                       jitter: float = 0.0, eliminate: bool = True
                       ) -> dict[str, _CellTypeCandidates]:
    """Candidates per cell type ("normal", "reduce") from one observation.

    rate: the probe's miss/duplicate rate (0: exact kinds); jitter: the sd of its log-duration
    jitter; survival: the per-level probability that the truth survives the likelihood-ratio
    eliminations. With eliminate=False, only the generation step runs (families the kinds
    allow, scored by the kinds alone; no shapes, data flow or timing used), which is what the
    completeness test checks.
    """
    if not 0.0 < survival < 1.0:
        raise ValueError(f"survival must be in (0, 1), got {survival}")
    grammar = _grammar(macro, ops, refs)
    aligned = align(obs.kinds, grammar.slots, rate)
    deltas = None
    if aligned is not None and rate <= 0.0:  # exact: the parsed option, nothing else
        deltas = [np.where(np.arange(len(options)) == o, 0.0, np.inf)
                  for options, (o, _) in zip(grammar.slots, aligned[1], strict=True)]
    elif aligned is not None:
        deltas = option_deltas(obs.kinds, grammar.slots, rate)
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
            # The kinds' evidence per family: nats below the best, summed over the cells of
            # this type (they share the genotype).
            against = np.zeros(len(fam))
            if deltas is not None:
                against = np.sum([deltas[slot_of[("edge", c, k)]] for c in cells], axis=0)
                if np.isfinite(against.min()):
                    against = against - against.min()
                else:  # the cells disagree where the probe is exact: no usable evidence
                    against = np.zeros(len(fam))
            members = {m: -float(against[f]) for f, kinds in enumerate(fam)
                       if np.isfinite(against[f]) for m in fam[kinds]}
            inputs = {m: _inputs_for(first, node, m[1]) for m in members}
            edges.append(EdgeCandidates(node, members, inputs))
        out[kind_name] = _CellTypeCandidates(edges, None, first.steps)
    decisions = sum(len(e.members) >= 2 for cand in out.values() for e in cand.edges)
    for cand in out.values():
        cand.decisions = decisions
    if eliminate and aligned is not None:
        timing = refs.timing(macro, ops, batch) if obs.durations is not None else None
        offset = 0.0
        if timing is not None:
            offset = timing.offset({a: math.log(max(obs.durations[i], 1.0))
                                    for a, i in _anchors(grammar, aligned[1]).items()})
        for kind_name, cand in out.items():
            _eliminate(cand, obs, macro, instances[kind_name], aligned[1], slot_of, grammar, refs,
                       batch=batch, timing=timing, offset=offset, jitter=jitter,
                       tau=lambda k: elimination_threshold(k, decisions, survival))
    return out


def _eliminate(cand: _CellTypeCandidates, obs: Observation, macro: Sequence[CellShape],
               cells: list[int], decoded: list, slot_of: dict, grammar: _Grammar,
               refs: References, *, batch: int, timing: TimingModel | None, offset: float,
               jitter: float, tau: Any) -> None:
    """Drop the candidates the observation's shapes or data flow contradict, and those whose
    kinds-and-timing likelihood ratio against the edge's best exceeds tau(k)."""

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
        n_before = len(edge.members)
        keep_inputs: list[int] | None = None
        alive = dict(edge.members)  # member -> the kinds' score
        loglik = dict.fromkeys(edge.members, 0.0)
        timed = dict.fromkeys(edge.members, timing is not None)
        for c in cells:
            cell = macro[c]
            slot = slot_of[("edge", c, k)]
            events = decoded[slot][1]
            decoded_kinds = grammar.slots[slot][decoded[slot][0]]
            observed = None
            if timing is not None and decoded_kinds:
                observed = [sum(obs.durations[i] for i in idx) if idx else None for idx in events]
            for m in list(alive):
                if refs.kinds(*m) != decoded_kinds:  # this instance decoded another family
                    continue
                if obs.signatures is not None:
                    predicted = [e.signature() for e in refs.op(m[0], m[1], cell, batch)]
                    seen = [obs.signatures[i[0]] for i in events]
                    if predicted != seen:
                        del alive[m]
                        continue
                if observed is not None and timed[m]:
                    ll = timing.loglik((m[0], m[1], cell.op_input_shape(m[1], batch)), observed,
                                       offset, jitter)
                    if ll is None:
                        timed[m] = False
                    else:
                        loglik[m] += ll
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
        # Timing tells apart the members of one family (same calls, same instances): each
        # scores its log likelihood against the family's best. A family with a member the
        # model has no times for gets none.
        scores = dict(alive)
        families: dict[tuple[str, ...], list[tuple[str, int]]] = {}
        for m in alive:
            families.setdefault(refs.kinds(*m), []).append(m)
        for members in families.values():
            if len(members) > 1 and all(timed[m] for m in members):
                top = max(loglik[m] for m in members)
                for m in members:
                    scores[m] += loglik[m] - top
        best = max(scores.values(), default=0.0)
        limit = tau(n_before)
        edge.members = {m: v - best for m, v in scores.items() if v - best >= -limit}
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


def chance_baselines(genotype: Any, macro: Sequence[CellShape], ops: Sequence[str],
                     refs: References) -> dict[str, float]:
    """What an attacker gets without timing or without any trace, for the true genotype:
    chance_edge_op_accuracy (a uniform pick among the (op, stride) members of the true op's
    call family: the kinds alone, perfectly read), chance_bits (log2 of the (op, input, concat)
    space those families allow) and prior_edge_op_accuracy (a uniform pick among all ops)."""
    families = _grammar(macro, ops, refs).families
    acc: list[float] = []
    bits, seen = 0.0, set()
    for cell in macro:
        if cell.reduction in seen:
            continue
        seen.add(cell.reduction)
        pairs = genotype.reduce if cell.reduction else genotype.normal
        for k, (op, inp) in enumerate(pairs):
            node = k // 2
            stride = cell.stride(inp)
            members = families[(cell.reduction, node)][refs.kinds(op, stride)]
            acc.append(sum(m[0] == op for m in members) / len(members))
            bits += math.log2(sum(len(_inputs_for(cell, node, m[1])) for m in members))
        bits += math.log2(2**cell.steps - 1)
    return {"chance_edge_op_accuracy": float(np.mean(acc)), "chance_bits": float(bits),
            "prior_edge_op_accuracy": 1.0 / len(ops)}


def _beats(accuracy: float, chance: float) -> bool | None:
    """Whether an edge op accuracy beats the in-family chance pick; None when both are 1 (the
    call kinds alone fix every op: nothing left to beat)."""
    if accuracy > chance + _TIE:
        return True
    return None if chance >= 1.0 - _TIE and accuracy >= 1.0 - _TIE else False


def attack_trace(events: Sequence[TraceEvent], genotype: Any, macro: Sequence[CellShape],
                 level: str, refs: References, *, ops: Sequence[str], noise: float = 0.0,
                 jitter: float = 0.0, rng: np.random.Generator | None = None, batch: int = 1,
                 survival: float = 0.95) -> dict[str, Any]:
    """One reconstruction at `level` from a recorded trace (its events' duration_ns are the
    victim's times at the timing levels); returns the metrics of `score_candidates`, the
    chance baselines, beats_chance, decisions, survival_target, trace_length and, at the timing
    levels, timing_temperature (None: the calibration found timing no better than chance and
    ignored it)."""
    obs = observe(events, level, noise=noise, jitter=jitter, rng=rng)
    noisy = level == "timing_noisy"
    cands = attack_observation(obs, macro, ops, refs, rate=noise if noisy else 0.0, batch=batch,
                               survival=survival, jitter=jitter if noisy else 0.0)
    result = score_candidates(cands, genotype)
    result.update(chance_baselines(genotype, macro, ops, refs))
    result["beats_chance"] = _beats(result["edge_op_accuracy"], result["chance_edge_op_accuracy"])
    result["decisions"] = next(iter(cands.values())).decisions if cands else 0
    result["survival_target"] = survival
    if obs.durations is not None:
        temperature = refs.timing(macro, ops, batch).temperature
        result["timing_temperature"] = temperature if math.isfinite(temperature) else None
    result["trace_length"] = len(obs.kinds)
    return result


# ------------------------------------------------------------------------- victim process

_VICTIM_MAIN = "import sys; from nasaudit.attacks.trace_leak import _victim_main; _victim_main(sys.argv[1])"


def _channels_last(model: nn.Module) -> bool:
    """Whether the model's 4-d weights are channels_last (`nasaudit.infra.device.prepare_model`);
    a weight both layouts describe (a 1x1 or single-channel kernel) does not decide."""
    weights = [p for p in model.parameters() if p.dim() == 4]
    return (all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
            and any(not p.is_contiguous() for p in weights))


def _victim_spec(model: nn.Module) -> dict[str, Any]:
    """The build settings of a genotype network (`build_genotype_network`), as JSON."""
    body = model.body
    g = body.genotype
    return {
        "genotype": {"normal": [[op, int(i)] for op, i in g.normal],
                     "normal_concat": [int(i) for i in g.normal_concat],
                     "reduce": [[op, int(i)] for op, i in g.reduce],
                     "reduce_concat": [int(i) for i in g.reduce_concat]},
        "num_classes": int(model.num_classes),
        "C": int(body.stem[0].out_channels) // 3,
        "layers": len(body.cells),
        "auxiliary": body.auxiliary_head is not None,
        "mean": [float(v) for v in model.normalize.mean.flatten()],
        "std": [float(v) for v in model.normalize.std.flatten()],
        "channels_last": _channels_last(model),
    }


def time_victim(models: Sequence[nn.Module], inputs: Sequence[torch.Tensor], *, queries: int,
                threads: int, device: torch.device, warmup: int = _VICTIM_WARMUP,
                timeout: float = 1800.0) -> list[dict[str, Any]]:
    """Time each genotype network's inference queries in a separate process, as a victim runs.

    models: genotype networks (ImageClassifier with a NetworkCIFAR body, eval mode); inputs:
    each one's query [B, 3, H, W] in [0, 1]. One subprocess (OMP_NUM_THREADS = MKL_NUM_THREADS =
    threads) rebuilds every model from its settings and weights (weights_only load, nothing
    pickled), runs `warmup` untimed queries, then `queries` recorded single queries. Returns per
    model {"kinds": [n] call kinds, "durations": [queries][n] ns per call, "threads": int}.
    Raises RuntimeError if the process fails.
    """
    from nasaudit.infra.io import atomic_torch_save, atomic_write_json, read_json

    with tempfile.TemporaryDirectory(prefix="nasaudit-victim-") as tmp:
        jobs = []
        for i, (model, x) in enumerate(zip(models, inputs, strict=True)):
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            atomic_torch_save({"state": state, "x": x.detach().cpu()}, Path(tmp) / f"victim{i}.pt")
            jobs.append(_victim_spec(model))
        atomic_write_json(Path(tmp) / "jobs.json", {"jobs": jobs, "queries": int(queries),
                                                    "warmup": int(warmup), "device": str(device)})
        env = dict(os.environ)
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(int(threads))
        # The package as this process imports it, checkout or install alike.
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        proc = subprocess.run([sys.executable, "-c", _VICTIM_MAIN, tmp], env=env, text=True,
                              capture_output=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"the victim process failed (exit {proc.returncode}): {tail}")
        return read_json(Path(tmp) / "timings.json")["victims"]


def _victim_main(tmp: str) -> None:
    """The victim process (`time_victim`): rebuild, warm up, time, write timings.json."""
    from nasaudit.genotype import Genotype
    from nasaudit.infra.io import atomic_write_json, read_json, safe_torch_load
    from nasaudit.models.darts_network import build_genotype_network

    spec = read_json(Path(tmp) / "jobs.json")
    device = torch.device(spec["device"])
    out = []
    for i, job in enumerate(spec["jobs"]):
        blob = safe_torch_load(Path(tmp) / f"victim{i}.pt", map_location=device)
        g = job["genotype"]
        genotype = Genotype(tuple((str(op), int(j)) for op, j in g["normal"]),
                            tuple(int(j) for j in g["normal_concat"]),
                            tuple((str(op), int(j)) for op, j in g["reduce"]),
                            tuple(int(j) for j in g["reduce_concat"]))
        model = build_genotype_network(genotype, job["num_classes"], mean=job["mean"], std=job["std"],
                                       C=job["C"], layers=job["layers"], auxiliary=job["auxiliary"])
        model.load_state_dict(blob["state"], strict=True)
        model = model.to(device).eval()
        if job["channels_last"]:
            model = model.to(memory_format=torch.channels_last)
        events, durations = record_passes(model, blob["x"].to(device), passes=spec["queries"],
                                          warmup=spec["warmup"])
        out.append({"kinds": [e.kind for e in events], "durations": durations,
                    "threads": torch.get_num_threads()})
    atomic_write_json(Path(tmp) / "timings.json", {"victims": out})


# ---------------------------------------------------------------------------------- probe


@dataclasses.dataclass
class TraceLeakRecord(AttackRecord):
    """How much of a genotype leaks through its execution trace, per observation level.

    edge_op_accuracy: level -> fraction of the genotype's `n_edges` edges whose op the attack's
    best candidate names (mean over the draws at timing_noisy); exact: level -> fraction of the
    queries whose whole genotype was recovered (one query, or `draws` at timing_noisy);
    levels: every metric per level (see the module doc). Empty for a model without a genotype.
    """

    kind = "attack.trace_leak"
    applicable: bool
    reason: str | None  # why not, for a model without a genotype
    n_edges: int
    edge_op_accuracy: dict
    exact: dict
    levels: dict
    trace_events: int  # calls in the clean trace of one forward pass
    n_cells: int
    prior_bits: float | None
    genotype: dict | None
    timing: dict = dataclasses.field(default_factory=dict)  # how the victim and references were timed


def _mean_metrics(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("exact_probability", "edge_op_accuracy", "edge_input_accuracy", "concat_accuracy",
            "remaining_bits", "trace_length")
    out: dict[str, Any] = {k: float(np.mean([r[k] for r in runs])) for k in keys}
    out["exact"] = float(np.mean([r["exact"] for r in runs]))
    out["true_survived"] = float(np.mean([r["true_survived"] for r in runs]))
    out["n_candidates"] = _count(out["remaining_bits"])
    out["per_draw_exact"] = [bool(r["exact"]) for r in runs]
    out["per_draw_survived"] = [bool(r["true_survived"]) for r in runs]
    for k in ("chance_edge_op_accuracy", "chance_bits", "prior_edge_op_accuracy", "survival_target",
              "timing_temperature"):
        if k in runs[0]:
            out[k] = runs[0][k]
    out["decisions"] = float(np.mean([r["decisions"] for r in runs]))
    out["beats_chance"] = _beats(out["edge_op_accuracy"], out["chance_edge_op_accuracy"])
    out["per_cell"] = {
        cell: {k: float(np.mean([r["per_cell"][cell][k] for r in runs])) for k in metrics}
        for cell, metrics in runs[0]["per_cell"].items()
    }
    return out


def _with_durations(events: Sequence[TraceEvent], durations: Sequence[float]) -> list[TraceEvent]:
    return [dataclasses.replace(e, duration_ns=float(d)) for e, d in zip(events, durations, strict=True)]


def run_trace_leak(victim: Victim, data: Any, params: Params | dict | None = None, *,
                   device: torch.device, seed: int = 0, progress: bool = True,
                   work_dir: str | None = None) -> TraceLeakRecord:
    """Record the execution trace of one inference query to `model` (a genotype network) and
    reconstruct its genotype at each configured level. The timing levels read the times of
    single queries to a victim running in its own process (`time_victim`; one query for
    ops_timing, one per draw for timing_noisy). A model without a genotype (a manual
    baseline) gives a record with applicable=False. The victim's weights play no part: an
    untrained network leaks its genotype as a trained one does."""
    from tqdm.auto import tqdm

    from nasaudit.genotype import genotype_to_json
    from nasaudit.infra.device import generator
    from nasaudit.models.base import eval_mode
    from nasaudit.search_space import load_search_space

    params = make_params(Params, params, source="params")
    started = time.perf_counter()
    model = victim.model
    genotype = genotype_of(model)
    if genotype is None:
        return TraceLeakRecord(
            **record_fields("trace_leak", victim, data, seed, params, time.perf_counter() - started),
            applicable=False, reason="the model has no genotype (a manual baseline): nothing to steal "
            "in the DARTS space", n_edges=0, edge_op_accuracy={}, exact={}, levels={}, trace_events=0,
            n_cells=0, prior_bits=None, genotype=None)
    ops = load_search_space(params.space).ops
    model = model.to(device)
    n_test = data.test_images.shape[0]
    idx = torch.randperm(n_test, generator=generator(seed))[: params.batch_size]
    x = data.test_images[idx].to(device).float().div(255.0)
    threads = params.threads or torch.get_num_threads()
    queries = 1 + (params.draws if "timing_noisy" in params.levels else 0)
    timed = any(level in _TIMING_LEVELS for level in params.levels)
    with eval_mode(model):
        events = record_trace(model, x, passes=1)
        durations: list[list[float]] = []
        if timed and params.victim_process:
            served = time_victim([model], [x], queries=queries, threads=threads, device=device)[0]
            if served["kinds"] != [e.kind for e in events]:
                raise RuntimeError("the victim process made other calls than the model here")
            durations = served["durations"]
        elif timed:
            durations = record_passes(model, x, passes=queries, warmup=_VICTIM_WARMUP)[1]
    macro = macro_of(model, tuple(x.shape[-2:]))
    refs = References(device=device, passes=params.passes, seed=seed, floor=params.timing_floor,
                      channels_last=_channels_last(model))
    levels: dict[str, Any] = {}
    kwargs = {"ops": ops, "batch": params.batch_size, "survival": params.survival}
    bar = tqdm(params.levels, desc="trace leak", disable=not progress, leave=False)
    for level in bar:
        if level == "timing_noisy":
            runs = [attack_trace(_with_durations(events, durations[1 + draw]), genotype, macro, level,
                                 refs, noise=params.noise, jitter=params.jitter,
                                 rng=np.random.default_rng([seed, draw]), **kwargs)
                    for draw in range(params.draws)]
            levels[level] = {**_mean_metrics(runs), "noise": params.noise, "jitter": params.jitter,
                             "draws": params.draws}
        elif level == "ops_timing":
            levels[level] = attack_trace(_with_durations(events, durations[0]), genotype, macro,
                                         level, refs, **kwargs)
        else:
            levels[level] = attack_trace(events, genotype, macro, level, refs, **kwargs)
    timing = {}
    if timed:
        timing = {"victim": "subprocess" if params.victim_process else "in-process",
                  "threads": threads, "victim_queries": queries, "victim_warmup": _VICTIM_WARMUP,
                  "reference_passes": params.passes, "attacker_threads": torch.get_num_threads(),
                  "channels_last": _channels_last(model)}
    n_edges = sum(len(edges) for edges in (genotype.normal, genotype.reduce))
    return TraceLeakRecord(
        **record_fields("trace_leak", victim, data, seed, params, time.perf_counter() - started),
        applicable=True, reason=None, n_edges=n_edges,
        edge_op_accuracy={level: m["edge_op_accuracy"] for level, m in levels.items()},
        exact={level: float(m["exact"]) for level, m in levels.items()}, levels=levels,
        trace_events=len(events), n_cells=len(macro), prior_bits=prior_bits(macro, ops),
        genotype=genotype_to_json(genotype), timing=timing)


ATTACK = AttackSpec(
    # `exact` is a rate too, but over one query at most levels and `draws` at timing_noisy.
    Params, run_trace_leak, rates={"edge_op_accuracy": "n_edges"},
    counts={"n_edges": ("genotype edges", "the cell's edge count (fixed by the genotype)")},
    trained_victim=False,
    # About a second per genotype model; manual baselines record "not applicable".
    demo={"draws": 2, "passes": 3},
)
