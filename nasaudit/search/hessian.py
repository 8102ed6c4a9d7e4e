"""The top eigenvalue of the Hessian of L_val w.r.t. alpha, and RobustDARTS's early stop on it.

Zela et al. (RobustDARTS, ICLR 2020) observe that the dominant eigenvalue of the validation
loss's Hessian with respect to the architecture parameters grows as a DARTS search degenerates
(towards parameter-free cells), and stop the search when it has grown too much, returning the
architecture from before the growth. Here:

* `top_eigenvalue`: power iteration on Hessian-vector products (double backward, no dense
  Hessian), returning the algebraically largest eigenvalue;
* `alpha_hessian_eigenvalue`: that, for L_val(w, alpha) of a supernet on a fixed batch
  (alpha_normal and alpha_reduce together; BN on buffer copies, so running statistics stay);
* `HessianEarlyStop`: the rule "stop when the eigenvalue exceeds FACTOR x its running minimum";
  the search then keeps the genotype of the epoch of that minimum (the epoch the rule points
  back to).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from nasaudit.errors import InputError


def _dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    return sum((x * y).sum() for x, y in zip(a, b, strict=True))


def _power_iteration(hvp: Callable[[list[Tensor]], list[Tensor]], v: list[Tensor], shift: float,
                     iters: int, tol: float) -> float:
    """Dominant eigenvalue of (H - shift I) by power iteration from v (unit norm)."""
    value = 0.0
    for _ in range(iters):
        hv = [h - shift * t for h, t in zip(hvp(v), v, strict=True)]
        new = float(_dot(v, hv))  # Rayleigh quotient, v has unit norm
        norm = float(_dot(hv, hv).sqrt())
        if norm == 0.0:
            return 0.0
        v = [h / norm for h in hv]
        if abs(new - value) <= tol * max(abs(new), 1e-12):
            return new
        value = new
    return value


def top_eigenvalue(loss: Tensor, params: Sequence[Tensor], *, iters: int = 50, tol: float = 1e-5,
                   generator: torch.Generator | None = None) -> float:
    """Largest eigenvalue of the Hessian of the scalar `loss` w.r.t. `params`, by power iteration.

    The gradient is taken once with create_graph; each iteration is one Hessian-vector product
    (a backward of grad . v). Power iteration finds the eigenvalue of largest magnitude, lambda_d;
    when it is negative, a second run on H - lambda_d I (whose spectrum is >= 0) gives
    lambda_max - lambda_d. iters: at most this many HVPs per run; tol: relative change at which
    a run stops. Returns a Python float (loss units per alpha unit squared).
    """
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

    v = [torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) for p in params]
    norm = _dot(v, v).sqrt()
    v = [t / norm for t in v]
    dominant = _power_iteration(hvp, v, 0.0, iters, tol)
    if dominant >= 0:
        return dominant
    return max(floor, dominant + _power_iteration(hvp, v, dominant, iters, tol))


def alpha_hessian_eigenvalue(model, x: Tensor, y: Tensor, *, iters: int = 50, tol: float = 1e-5,
                             seed: int = 0) -> float:
    """Top eigenvalue of the Hessian of mean cross entropy L_val(w, alpha) on images x [B, 3, H, W]
    in [0, 1] and labels y [B] w.r.t. (alpha_normal, alpha_reduce) of the supernet `model`.

    The forward runs in float32 (no autocast: second derivatives) on copies of the BN buffers,
    in the model's current mode (train mode: batch statistics, as in the alpha step)."""
    from torch.func import functional_call

    alphas = [model.alpha_normal, model.alpha_reduce]
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    logits = functional_call(model, buffers, (x,), strict=False)
    loss = F.cross_entropy(logits.float(), y)
    generator = torch.Generator().manual_seed(seed)
    return top_eigenvalue(loss, alphas, iters=iters, tol=tol, generator=generator)


def parse_early_stop(spec: str | None, source: str = "--early-stop") -> float | None:
    """FACTOR of "hessian:FACTOR" (FACTOR > 1), or None for None/"" (no early stop)."""
    if spec is None or spec == "":
        return None
    rule, _, arg = str(spec).partition(":")
    if rule.strip() != "hessian":
        raise InputError(source, f"unknown early-stop rule {rule!r} (known: hessian:FACTOR)")
    try:
        factor = float(arg)
    except ValueError:
        factor = float("nan")
    if not factor > 1.0 or factor == float("inf"):
        raise InputError(source, f"hessian early stop needs a FACTOR > 1, e.g. hessian:1.3, got {spec!r}")
    return factor


@dataclass
class HessianEarlyStop:
    """RobustDARTS's rule: stop at the first epoch whose eigenvalue exceeds FACTOR x the running
    minimum of the earlier epochs (a minimum <= 0 never triggers it: growth by a factor is
    undefined there). `kept_epoch` is then the epoch of that minimum, whose genotype is kept.

    Epochs are 1-based, as in the search's history. `values` maps epoch -> eigenvalue.
    """

    factor: float
    values: dict[int, float] = field(default_factory=dict)
    stopped_at: int | None = None
    kept_epoch: int | None = None

    def update(self, epoch: int, value: float) -> bool:
        """Record `value` at `epoch`; True when the rule fires (stopped_at/kept_epoch set)."""
        earlier = [(v, e) for e, v in sorted(self.values.items()) if e < epoch]
        self.values[epoch] = float(value)
        if self.stopped_at is not None or not earlier:
            return self.stopped_at is not None
        low, low_epoch = min(earlier)
        if low > 0 and value > self.factor * low:
            self.stopped_at, self.kept_epoch = epoch, low_epoch
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready state (also what the genotype JSON records)."""
        return {"rule": "hessian", "factor": self.factor,
                "eigenvalues": {str(e): v for e, v in sorted(self.values.items())},
                "stopped_at_epoch": self.stopped_at, "kept_epoch": self.kept_epoch}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> HessianEarlyStop:
        """Inverse of `state_dict` (for resuming)."""
        return cls(float(state["factor"]), {int(e): float(v) for e, v in state["eigenvalues"].items()},
                   state.get("stopped_at_epoch"), state.get("kept_epoch"))
