"""Architecture objectives: weighted terms added to the validation loss of the alpha step.

The architect minimises, for alpha, L_val(w, alpha) + sum_k weight_k(epoch) * R_k, where each
term R_k is an `ArchObjective` evaluated on the validation batch at the weights the alpha step
uses: the current weights (first order), the weights after `n_step` virtual SGD steps (unrolled,
so the term is differentiated through them) or DARTS's w' (finite difference, where the term
also enters v = grad_w' (L_val + R) of the Hessian-vector product). A term sees the batch, the
logits and loss there, and a `forward(x) -> logits` bound to those weights (BN on copies of the
running statistics, so terms never move them).

Terms are named in configs and on the CLI as "NAME:WEIGHT" or "NAME:WEIGHT:KEY=VALUE,..."
(`parse_objective`), e.g. "input_curvature:0.1:h=0.02"; register more with
`register_objective_factory`. Negative weights are allowed: they reward the term instead.

Built in:

* ``input_curvature`` (CURE, Moosavi-Dezfooli et al. 2019; AdvRush, Mok et al. 2021):
  R = mean_i ||grad_x l_i(x_i + h z_i) - grad_x l_i(x_i)||^2 with z_i = sign(grad_x l_i(x_i))
  (held constant) and h in pixel units (default 0.01, images in [0, 1]). A finite-difference
  measure of the loss curvature along the gradient sign; 0 when the loss is linear in x.
  AdvRush penalises it (weight > 0); the study's smooth-landscape explanation of NAS cells'
  vulnerability suggests the opposite sign (weight < 0). Options: h.
* ``beta`` (beta-DARTS, Ye et al. 2022): R = mean over edges and cell types of
  logsumexp(alpha_edge), which keeps alpha from drifting and so regularises the softmax
  weights. Its weight follows beta-DARTS's linear schedule over the epochs:
  weight * (start + (end - start) * epoch / (epochs - 1)). Options: start (0), end (1).
* ``gradvar``: Eq. 14 of the study, V = E_i ||g_i - E g||^2 over per-sample gradients g_i of the
  supernet weights (vmap of grad, BN in eval mode) on the first `samples` validation images
  (default 8). R = log V, or, with a target, (log V - log target)^2. The study finds NAS cells'
  variance low; a negative weight (or a target above the current value) pushes against that.
  Options: samples, target.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nasaudit.infra.errors import InputError

Forward = Callable[[Tensor], Tensor]  # images float [B, 3, H, W] in [0, 1] -> logits [B, K]


@dataclass(frozen=True)
class ObjectiveContext:
    """What a term sees at the alpha step.

    model: the supernet (its alpha are the parameters being differentiated);
    forward: logits of images at `weights` (functional, BN on buffer copies);
    weights: {name: tensor} of the supernet weights in play (differentiable functions of alpha
        in unrolled mode); buffers: {name: tensor} copies of the BN buffers;
    x: validation images float [B, 3, H, W] in [0, 1]; y: labels int64 [B];
    logits [B, K] and loss (scalar, mean cross entropy) of the validation batch;
    epoch: 0-based current epoch; epochs: total epochs of the search.
    """

    model: nn.Module
    forward: Forward
    weights: Mapping[str, Tensor]
    buffers: Mapping[str, Tensor]
    x: Tensor
    y: Tensor
    logits: Tensor
    loss: Tensor
    epoch: int = 0
    epochs: int = 1


class ArchObjective:
    """A weighted term of the alpha objective. Subclasses implement `value`.

    name: registry name; weight: the multiplier (any sign); options: the parsed KEY=VALUE
    options (recorded in the genotype JSON).
    """

    name = "objective"

    def __init__(self, weight: float, **options: Any):
        self.weight = float(weight)
        self.options = dict(options)

    def value(self, ctx: ObjectiveContext) -> Tensor:
        """The unweighted term, a differentiable scalar tensor."""
        raise NotImplementedError

    def weight_at(self, epoch: int, epochs: int) -> float:
        """The weight used at 0-based `epoch` of `epochs` (constant unless scheduled)."""
        return self.weight

    @property
    def spec(self) -> str:
        """The "NAME:WEIGHT[:KEY=VALUE,...]" string that rebuilds this term."""
        opts = ",".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v:g}" for k, v in self.options.items())
        return f"{self.name}:{self.weight:g}" + (f":{opts}" if opts else "")

    def describe(self, epochs: int) -> dict[str, Any]:
        """JSON-ready record of the term: name, weight, options and the per-epoch weights."""
        return {"name": self.name, "weight": self.weight, "options": dict(self.options),
                "spec": self.spec, "epoch_weights": [self.weight_at(e, epochs) for e in range(epochs)]}

    def __repr__(self) -> str:
        return f"ArchObjective({self.spec})"


# -- input curvature --------------------------------------------------------------------------
def _full(t: Tensor) -> Tensor:
    """At least float32 (bf16/fp16 logits upcast; float64 kept, for gradient checks)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _sum_cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    # A sum, so grad_x of it is each sample's own loss gradient (no 1/B).
    return F.cross_entropy(_full(logits), y, reduction="sum")


def input_curvature(forward: Forward, x: Tensor, y: Tensor, h: float = 0.01,
                    loss_fn: Callable[[Tensor, Tensor], Tensor] = _sum_cross_entropy) -> Tensor:
    """CURE's finite-difference curvature: mean_i ||grad_x l_i(x_i + h z_i) - grad_x l_i(x_i)||^2.

    forward: images [B, ...] -> logits [B, K]; x: float images [B, ...]; y: labels [B];
    h: step in input units (pixels in [0, 1]); loss_fn(logits, y) must sum the per-sample
    losses. z = sign(grad_x l(x)) is held constant (as CURE). Returns a scalar tensor that is
    differentiable w.r.t. whatever `forward` depends on (create_graph through both gradients).
    """
    x0 = x.detach().requires_grad_(True)
    g0 = torch.autograd.grad(loss_fn(forward(x0), y), x0, create_graph=True)[0]
    z = g0.detach().sign()
    x1 = (x.detach() + h * z).requires_grad_(True)
    g1 = torch.autograd.grad(loss_fn(forward(x1), y), x1, create_graph=True)[0]
    return (g1 - g0).flatten(1).square().sum(1).mean()


class InputCurvature(ArchObjective):
    """CURE/AdvRush input-curvature term (see the module docstring)."""

    name = "input_curvature"

    def __init__(self, weight: float, h: float = 0.01):
        if not h > 0:
            raise InputError("--objective", f"input_curvature h must be > 0, got {h}")
        super().__init__(weight, h=float(h))

    def value(self, ctx: ObjectiveContext) -> Tensor:
        return input_curvature(ctx.forward, ctx.x, ctx.y, self.options["h"])


# -- beta-DARTS ---------------------------------------------------------------------------------
def beta_regulariser(model: nn.Module) -> Tensor:
    """beta-DARTS's term: mean over the edges of both cell types of logsumexp(alpha [E, O], -1)."""
    alphas = [getattr(model, f"alpha_{cell}") for cell in ("normal", "reduce")]
    return torch.cat([torch.logsumexp(a, dim=-1) for a in alphas]).mean()


class Beta(ArchObjective):
    """beta-DARTS regulariser with a linear weight schedule over the epochs."""

    name = "beta"

    def __init__(self, weight: float, start: float = 0.0, end: float = 1.0):
        super().__init__(weight, start=float(start), end=float(end))

    def weight_at(self, epoch: int, epochs: int) -> float:
        frac = epoch / (epochs - 1) if epochs > 1 else 1.0
        start, end = self.options["start"], self.options["end"]
        return self.weight * (start + (end - start) * frac)

    def value(self, ctx: ObjectiveContext) -> Tensor:
        return beta_regulariser(ctx.model)


# -- gradient variance --------------------------------------------------------------------------
@contextlib.contextmanager
def _per_sample_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode on every submodule and NCHW (vmap cannot batch a channels_last copy; the
    supernet's `channels_last` flag is off meanwhile); both restored afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    channels_last = getattr(model, "channels_last", None)
    model.eval()
    if channels_last:
        model.channels_last = False
    try:
        yield
    finally:
        for module, flag in flags:
            module.training = flag
        if channels_last:
            model.channels_last = channels_last


def weight_grad_variance(model: nn.Module, weights: Mapping[str, Tensor], buffers: Mapping[str, Tensor],
                         x: Tensor, y: Tensor) -> Tensor:
    """Eq. 14, E_i ||g_i - E g||^2 (plug-in 1/N), of per-sample cross-entropy gradients g_i of
    `weights` over images x [N, ...] and labels y [N] (N >= 2), BN in eval mode.

    Per-sample gradients come from torch.func (vmap of grad) and stay in the autograd graph, so
    the result is differentiable w.r.t. the alpha of `model` and, in unrolled mode, through
    `weights`. Returns a scalar tensor (squared loss units per parameter unit, summed).
    """
    from torch.func import functional_call, grad, vmap

    if x.shape[0] < 2:
        raise ValueError("need at least 2 samples for a variance")
    names = list(weights)

    def sample_loss(w: tuple[Tensor, ...], xi: Tensor, yi: Tensor) -> Tensor:
        logits = functional_call(model, ({**dict(zip(names, w, strict=True)), **buffers}), (xi[None],))
        return F.cross_entropy(_full(logits), yi[None])

    with _per_sample_mode(model):
        per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))(tuple(weights.values()), x, y)
    return sum((g - g.mean(0)).flatten(1).square().sum(1).mean() for g in per_sample)


class GradVar(ArchObjective):
    """Eq. 14 gradient variance of the supernet weights, as log V or (log V - log target)^2."""

    name = "gradvar"

    def __init__(self, weight: float, samples: int = 8, target: float | None = None):
        if int(samples) != samples or samples < 2:
            raise InputError("--objective", f"gradvar samples must be an integer >= 2, got {samples}")
        if target is not None and not target > 0:
            raise InputError("--objective", f"gradvar target must be > 0, got {target}")
        options: dict[str, Any] = {"samples": int(samples)}
        if target is not None:
            options["target"] = float(target)
        super().__init__(weight, **options)

    def value(self, ctx: ObjectiveContext) -> Tensor:
        n = self.options["samples"]
        v = weight_grad_variance(ctx.model, ctx.weights, ctx.buffers, ctx.x[:n], ctx.y[:n])
        log_v = torch.log(v.clamp_min(1e-30))
        target = self.options.get("target")
        return log_v if target is None else (log_v - math.log(target)).square()


# -- registry and parsing -----------------------------------------------------------------------
# name -> factory(weight, {option: float}) -> ArchObjective
OBJECTIVE_FACTORIES: dict[str, Callable[..., ArchObjective]] = {}


def register_objective_factory(name: str, factory: Callable[..., ArchObjective]) -> None:
    """Make "name:WEIGHT[:KEY=VALUE,...]" usable in configs and on the CLI; the factory is
    called as factory(weight, **options) with float option values."""
    OBJECTIVE_FACTORIES[name] = factory


register_objective_factory("input_curvature", InputCurvature)
register_objective_factory("beta", Beta)
register_objective_factory("gradvar", GradVar)


def parse_objective(spec: str) -> ArchObjective:
    """Build a registered term from "NAME:WEIGHT" or "NAME:WEIGHT:KEY=VALUE,..." (InputError)."""
    parts = str(spec).split(":", 2)
    name = parts[0].strip()
    if name not in OBJECTIVE_FACTORIES:
        known = ", ".join(sorted(OBJECTIVE_FACTORIES))
        raise InputError("--objective", f"unknown objective {name!r} (known: {known})")
    if len(parts) < 2 or not parts[1].strip():
        raise InputError("--objective", f"{spec!r} needs a weight, e.g. {name}:0.1")
    try:
        weight = float(parts[1])
    except ValueError:
        weight = math.nan
    if not math.isfinite(weight):
        raise InputError("--objective", f"{spec!r}: weight must be a finite number")
    options: dict[str, float] = {}
    for item in (parts[2].split(",") if len(parts) == 3 and parts[2].strip() else []):
        key, sep, value = item.partition("=")
        try:
            options[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not key.strip():
            raise InputError("--objective", f"{spec!r}: options are KEY=NUMBER, got {item!r}")
    try:
        return OBJECTIVE_FACTORIES[name](weight, **options)
    except TypeError:
        raise InputError("--objective", f"{spec!r}: unknown option(s) {', '.join(options)}") from None


def objective_total(objectives: Sequence[ArchObjective], ctx: ObjectiveContext) -> tuple[Tensor, dict[str, Tensor]]:
    """(sum_k weight_k(epoch) * R_k as a differentiable scalar, {name: detached R_k}).

    With no terms the total is a zero on the loss's device (adding it changes nothing)."""
    total = torch.zeros((), dtype=ctx.loss.dtype, device=ctx.loss.device)
    values: dict[str, Tensor] = {}
    for term in objectives:
        w = term.weight_at(ctx.epoch, ctx.epochs)
        value = term.value(ctx)
        values[term.name] = value.detach()
        if w != 0.0:
            total = total + w * value.to(total.dtype)
    return total, values
