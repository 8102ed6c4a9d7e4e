"""The top eigenvalue of the Hessian of L_val w.r.t. alpha, and DARTS-ES, RobustDARTS's early stop.

Zela et al., "Understanding and Robustifying Differentiable Architecture Search" (ICLR 2020),
observe that the dominant eigenvalue lambda_max of the validation loss's Hessian with respect to
the architecture parameters grows as a DARTS search degenerates (towards parameter-free cells).
Their DARTS-ES computes lambda_max at the end of every epoch, averages it over a window of k
epochs (mean(i) = mean of lambda_max over epochs i-k+1..i), stops at the first epoch i with
mean(i-k) / mean(i) < ratio (k = 5, ratio = 0.75: the windowed mean grew by more than 1/0.75)
and returns the architecture of epoch i-k. Here:

* `top_eigenvalue`, `top_eigenvalue_hvp`: Lanczos on Hessian-vector products (double backward,
  no dense Hessian), returning the algebraically largest eigenvalue;
* `alpha_hessian_eigenvalue`: that, for L_val(w, alpha) of a supernet on a sample of images,
  taken in chunks (alpha_normal and alpha_reduce together; BN on buffer copies, so running
  statistics stay);
* `parse_early_stop`: the `--early-stop` / `early_stop` spelling, "darts-es[:K[:RATIO]]";
* `windowed_means`, `darts_es_decision`: the rule as pure functions of an eigenvalue sequence;
* `DartsEarlyStop`: the rule's state during a search (per-epoch eigenvalues, windowed means,
  genotypes, the stopping epoch i and the returned epoch i-k), JSON-ready and checkable on resume.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from nasaudit.infra.errors import InputError

RULE = "darts-es"
DEFAULT_WINDOW = 5      # k, epochs per windowed mean (Zela et al.)
DEFAULT_RATIO = 0.75    # stop when mean(i-k) / mean(i) < this
SPELLINGS = "darts-es, darts-es:K or darts-es:K:RATIO"


def _flat(ts: Sequence[Tensor]) -> Tensor:
    """One float64 CPU vector of the tensors (the alpha vectors are small: hundreds of entries)."""
    return torch.cat([t.detach().reshape(-1).to("cpu", torch.float64) for t in ts])


def top_eigenvalue_hvp(hvp: Callable[[list[Tensor]], list[Tensor]], params: Sequence[Tensor], *,
                       iters: int = 50, tol: float = 1e-5, floor: float = -float("inf"),
                       generator: torch.Generator | None = None) -> float:
    """Largest (algebraically) eigenvalue of the symmetric operator `hvp` (a list of tensors
    shaped like `params` to the same), by Lanczos from a random start drawn with `generator`.

    Lanczos with full reorthogonalisation (the Krylov vectors live on the CPU in float64; only
    the products touch the model) reaches the top eigenvalue in far fewer products than power
    iteration when the top of the spectrum is crowded, and needs no shift when a negative
    eigenvalue dominates in magnitude. iters: at most this many products (and at most the
    dimension); tol: stop once the residual norm of the top Ritz pair is <= tol x |its value|.
    floor: a known lower bound of the answer (0 when the operator has a zero block)."""
    shapes = [(p.shape, p.dtype, p.device) for p in params]
    sizes = [p.numel() for p in params]

    def apply(q: Tensor) -> Tensor:
        parts = [c.reshape(shape).to(device, dtype) for c, (shape, dtype, device) in
                 zip(q.split(sizes), shapes, strict=True)]
        return _flat(hvp(parts))

    dim = sum(sizes)
    q = torch.randn(dim, generator=generator, dtype=torch.float64)
    basis = [q / q.norm()]
    diag: list[float] = []
    off: list[float] = []
    theta = 0.0
    for j in range(max(1, min(iters, dim))):
        w = apply(basis[j])
        diag.append(float(basis[j] @ w))
        for _ in range(2):  # full reorthogonalisation, twice (Kahan): keeps the basis orthonormal
            stack = torch.stack(basis)
            w = w - stack.T @ (stack @ w)
        t = torch.diag(torch.tensor(diag, dtype=torch.float64))
        if off:
            o = torch.tensor(off, dtype=torch.float64)
            t = t + torch.diag(o, 1) + torch.diag(o, -1)
        values, vectors = torch.linalg.eigh(t)
        theta, beta = float(values[-1]), float(w.norm())
        scale = max(abs(theta), 1e-30)
        # Residual of the top Ritz pair; a vanishing beta means the Krylov space is invariant.
        if beta * abs(float(vectors[-1, -1])) <= tol * scale or beta <= 1e-12 * scale:
            break
        off.append(beta)
        basis.append(w / beta)
    return max(floor, theta)


def top_eigenvalue(loss: Tensor, params: Sequence[Tensor], *, iters: int = 50, tol: float = 1e-5,
                   generator: torch.Generator | None = None) -> float:
    """Largest eigenvalue of the Hessian of the scalar `loss` w.r.t. `params`, by Lanczos.

    The gradient is taken once with create_graph; each Lanczos step is one Hessian-vector product
    (a backward of grad . v); see `top_eigenvalue_hvp`. Returns a Python float (loss units per
    parameter unit squared)."""
    all_grads = torch.autograd.grad(loss, list(params), create_graph=True, allow_unused=True)
    # Parameters the loss does not reach (alpha_normal of a net without normal cells) are a zero
    # block of the Hessian: eigenvalue 0.
    used = [(p, g) for p, g in zip(params, all_grads, strict=True) if g is not None]
    if not used:
        return 0.0
    floor = 0.0 if len(used) < len(params) else -float("inf")
    params, grads = [p for p, _ in used], [g for _, g in used]

    def hvp(v: list[Tensor]) -> list[Tensor]:
        out = torch.autograd.grad(grads, list(params), grad_outputs=v, retain_graph=True, allow_unused=True)
        return [torch.zeros_like(p) if h is None else h.detach() for p, h in zip(params, out, strict=True)]

    return top_eigenvalue_hvp(hvp, params, iters=iters, tol=tol, floor=floor, generator=generator)


def alpha_hessian_eigenvalue(model, x: Tensor, y: Tensor, *, chunk: int | None = None, iters: int = 50,
                             tol: float = 1e-5, seed: int = 0) -> float:
    """Top eigenvalue of the Hessian of the mean cross entropy L_val(w, alpha) over images x
    [N, 3, H, W] in [0, 1] with labels y [N] w.r.t. (alpha_normal, alpha_reduce) of the supernet
    `model`.

    chunk: images per forward (None: all N at once). With C chunks the loss is
    sum_c (n_c / N) * mean cross entropy of chunk c, as the search measures L_val batch by batch,
    and every Hessian-vector product recomputes the chunks' forwards one at a time, so memory
    stays that of one chunk (the cost: a forward, a backward and a double backward per chunk
    and product; one chunk keeps its graph instead).
    The forward runs in float32 (no autocast: second derivatives) on copies of the BN buffers,
    in the model's current mode (train mode: batch statistics of each chunk, as in the alpha step).
    """
    from torch.func import functional_call

    alphas = [model.alpha_normal, model.alpha_reduce]
    n = int(x.shape[0])
    if n == 0:
        raise ValueError("alpha_hessian_eigenvalue needs at least one image")
    chunk = n if chunk is None else max(1, min(int(chunk), n))
    bounds = [(s, min(s + chunk, n)) for s in range(0, n, chunk)]
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    generator = torch.Generator().manual_seed(seed)

    def grads_of(s: int, e: int) -> tuple[Tensor | None, ...]:
        logits = functional_call(model, buffers, (x[s:e],), strict=False)
        loss = F.cross_entropy(logits.float(), y[s:e]) * ((e - s) / n)
        return torch.autograd.grad(loss, alphas, create_graph=True, allow_unused=True)

    if len(bounds) == 1:  # one graph, kept for every product
        logits = functional_call(model, buffers, (x,), strict=False)
        return top_eigenvalue(F.cross_entropy(logits.float(), y), alphas, iters=iters, tol=tol,
                              generator=generator)
    used = [g is not None for g in grads_of(*bounds[0])]
    if not any(used):
        return 0.0
    params = [p for p, u in zip(alphas, used, strict=True) if u]

    def hvp(v: list[Tensor]) -> list[Tensor]:
        total = [torch.zeros_like(p) for p in params]
        for s, e in bounds:
            grads = [g for g, u in zip(grads_of(s, e), used, strict=True) if u]
            out = torch.autograd.grad(grads, params, grad_outputs=v, allow_unused=True)
            total = [t if h is None else t + h.detach() for t, h in zip(total, out, strict=True)]
        return total

    return top_eigenvalue_hvp(hvp, params, iters=iters, tol=tol, generator=generator,
                              floor=0.0 if len(params) < len(alphas) else -float("inf"))


@dataclass(frozen=True)
class EarlyStopRule:
    """DARTS-ES's parameters: window k (epochs per mean) and the ratio threshold."""

    window: int = DEFAULT_WINDOW
    ratio: float = DEFAULT_RATIO

    @property
    def spec(self) -> str:
        """The canonical spelling, "darts-es:K:RATIO"."""
        return f"{RULE}:{self.window}:{self.ratio:g}"


def parse_early_stop(spec: str | None, source: str = "--early-stop") -> EarlyStopRule | None:
    """The rule of "darts-es", "darts-es:K" or "darts-es:K:RATIO" (K >= 1 epochs, 0 < RATIO < 1;
    defaults K = 5, RATIO = 0.75), or None for None/"" (no early stop). InputError otherwise;
    the former "hessian:FACTOR" (running-minimum) rule is refused with the new spellings."""
    if spec is None or spec == "":
        return None
    if not isinstance(spec, str):
        raise InputError(source, f"early stop must be a string like \"{RULE}:5:0.75\", got {spec!r}")
    rule, *args = [part.strip() for part in spec.split(":")]
    if rule in ("hessian", "hessian-min"):
        raise InputError(source, f"the running-minimum rule {spec!r} was removed; RobustDARTS's early "
                                 f"stop is now {SPELLINGS} (DARTS-ES, Zela et al. 2020; defaults K=5, RATIO=0.75)")
    if rule != RULE or len(args) > 2:
        raise InputError(source, f"unknown early-stop rule {spec!r} (known: {SPELLINGS})")
    window, ratio = DEFAULT_WINDOW, DEFAULT_RATIO
    if args:
        try:
            window = int(args[0])
        except ValueError:
            window = 0
        if window < 1:
            raise InputError(source, f"{RULE} needs a window K >= 1 (whole epochs), got {spec!r}")
    if len(args) == 2:
        try:
            ratio = float(args[1])
        except ValueError:
            ratio = float("nan")
        if not 0.0 < ratio < 1.0:
            raise InputError(source, f"{RULE} needs a RATIO in (0, 1), e.g. {RULE}:5:0.75, got {spec!r}")
    return EarlyStopRule(window, ratio)


def windowed_means(values: Sequence[float], window: int) -> list[float | None]:
    """means[j] = mean of values[j-window+1 .. j] (0-based, so epoch j+1's mean over the last
    `window` epochs), None while fewer than `window` values exist."""
    return [math.fsum(values[j + 1 - window: j + 1]) / window if j + 1 >= window else None
            for j in range(len(values))]


def darts_es_decision(values: Sequence[float], window: int = DEFAULT_WINDOW,
                      ratio: float = DEFAULT_RATIO) -> tuple[int, int] | None:
    """DARTS-ES on per-epoch eigenvalues values[0] (epoch 1), values[1] (epoch 2), ...: the first
    (i, i - window) (1-based epochs) with mean(i - window) / mean(i) < ratio, where mean(e) is
    the mean over epochs e-window+1..e; None when it never fires. Both means must be full
    windows, so no stop before epoch 2 * window; a mean(i) <= 0 never fires (no growth ratio
    there); the comparison is strict (a ratio of exactly `ratio` does not stop)."""
    means = windowed_means(values, window)
    for i in range(2 * window, len(values) + 1):
        now, before = means[i - 1], means[i - window - 1]
        if now > 0 and before / now < ratio:
            return i, i - window
    return None


@dataclass
class DartsEarlyStop:
    """DARTS-ES during a search: `update` per finished epoch (1-based, consecutive) with its
    eigenvalue and genotype (canonical JSON form); `stopped_at` (i) and `returned_epoch` (i - k)
    are set once the rule fires, whose genotype the search then returns."""

    rule: EarlyStopRule
    values: list[float] = field(default_factory=list)       # epoch e at index e-1
    genotypes: list[dict] = field(default_factory=list)     # same indexing
    stopped_at: int | None = None
    returned_epoch: int | None = None

    def update(self, epoch: int, value: float, genotype: dict) -> bool:
        """Record epoch `epoch`'s eigenvalue and genotype; True once the rule has fired."""
        if self.stopped_at is not None:
            return True
        if epoch != len(self.values) + 1:
            raise ValueError(f"epoch {epoch} after {len(self.values)} recorded epochs")
        self.values.append(float(value))
        self.genotypes.append(genotype)
        decision = darts_es_decision(self.values, self.rule.window, self.rule.ratio)
        if decision is not None:
            self.stopped_at, self.returned_epoch = decision
        return self.stopped_at is not None

    def returned_genotype(self) -> dict | None:
        """The genotype (canonical JSON form) of the returned epoch, or None before a stop."""
        return None if self.returned_epoch is None else self.genotypes[self.returned_epoch - 1]

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready record of the rule (what genotype.json records; no genotypes)."""
        means = windowed_means(self.values, self.rule.window)
        return {"rule": RULE, "window": self.rule.window, "ratio": self.rule.ratio,
                "eigenvalues": {str(e): v for e, v in enumerate(self.values, start=1)},
                "windowed_means": {str(e): m for e, m in enumerate(means, start=1) if m is not None},
                "stopped_at_epoch": self.stopped_at, "returned_epoch": self.returned_epoch}

    def checkpoint_state(self) -> dict[str, Any]:
        """`state_dict` plus the per-epoch genotypes (what a search checkpoint keeps)."""
        return {**self.state_dict(), "genotypes": {str(e): g for e, g in enumerate(self.genotypes, start=1)}}

    @classmethod
    def from_checkpoint(cls, state: Any, rule: EarlyStopRule, epochs_done: int,
                        source: Any = "checkpoint") -> DartsEarlyStop:
        """Inverse of `checkpoint_state`, checked: the same rule, one finite eigenvalue and one
        genotype for each of epochs 1..epochs_done, and the recorded means and decision the
        ones the rule computes from those eigenvalues. InputError(source, ...) otherwise."""
        def bad(problem: str) -> InputError:
            return InputError(source, f"early-stop state: {problem}")

        if not isinstance(state, dict) or state.get("rule") != RULE:
            raise bad(f"missing or not a {RULE} record")
        if state.get("window") != rule.window or state.get("ratio") != rule.ratio:
            raise bad(f"written for {RULE}:{state.get('window')}:{state.get('ratio')}, not {rule.spec}")
        expected = [str(e) for e in range(1, epochs_done + 1)]
        values, genotypes = state.get("eigenvalues"), state.get("genotypes")
        if not isinstance(values, dict) or list(values) != expected:
            raise bad(f"eigenvalues must cover epochs 1..{epochs_done} in order")
        if not isinstance(genotypes, dict) or list(genotypes) != expected:
            raise bad(f"genotypes must cover epochs 1..{epochs_done} in order")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                   for v in values.values()):
            raise bad("eigenvalues must be finite numbers")
        if not all(isinstance(g, dict) for g in genotypes.values()):
            raise bad("genotypes must be genotype records")
        tracker = cls(rule)
        for e in expected:
            tracker.update(int(e), float(values[e]), genotypes[e])
            if tracker.stopped_at is not None:
                break
        recorded = {k: state.get(k) for k in ("windowed_means", "stopped_at_epoch", "returned_epoch")}
        computed = {k: v for k, v in tracker.state_dict().items() if k in recorded}
        if recorded != computed or (tracker.stopped_at is not None and tracker.stopped_at != epochs_done):
            raise bad("the recorded means or stop do not follow from the recorded eigenvalues")
        return tracker
