"""Bi-level optimisation of a supernet (DARTS Eq. 4), with `n_step` inner steps.

One search iteration consumes `n_step` training batches (the weight half) and one validation
batch (the architecture half):

* ``first_order``: `n_step` real SGD steps on the weights, then one alpha step with
  grad_alpha L_val(w, alpha) at the current weights;
* ``unrolled``: the alpha gradient is d/d alpha L_val(w_n(alpha), alpha) where w_n comes from
  `n_step` *virtual* SGD steps (same lr, momentum and weight decay as the real optimiser,
  starting from its momentum buffers; no clipping, which is not differentiable) from the current
  weights. The steps are taken functionally (`torch.func.functional_call` with the stepped
  weights) and autograd differentiates through them (create_graph), so no model copy is made;
* ``finite_difference`` (n_step = 1 only): DARTS's second-order approximation,
  grad_alpha L_val(w', alpha) - xi * (grad_alpha L_train(w+) - grad_alpha L_train(w-)) / 2R with
  w± = w ± R v, v = grad_w' L_val(w', alpha), R = 0.01 / ||v||: three forward/backward passes
  instead of a double backward.

After an unrolled or finite-difference alpha step the real weights take their `n_step` SGD steps
on the same training batches, as in DARTS. Virtual passes run on copies of the BN buffers, so
only real steps move the running statistics.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from nasaudit.infra.device import autocast, full_precision
from nasaudit.search.objectives import ArchObjective, ObjectiveContext, objective_total
from nasaudit.search.supernet import Supernet

MODES = ("first_order", "unrolled", "finite_difference")
Batch = tuple[Tensor, Tensor]  # images float [B, 3, H, W] in [0, 1], labels int64 [B]


class Architect:
    """Runs search iterations on `model` with the weight optimiser `w_opt` (SGD) and the
    architecture optimiser `a_opt` (Adam over `model.arch_parameters()`).

    Counters (Python ints, checkpointed by the caller): `weight_steps` (real SGD steps),
    `arch_steps` (alpha updates), `virtual_steps` (unrolled SGD steps, the extra cost of n_step).

    objectives: `ArchObjective` terms added to L_val in every mode (nasaudit.search.objectives);
    set `epoch` (0-based) and `epochs` for scheduled weights. `last_terms` holds the unweighted
    values of the last alpha step ({name: on-device scalar}).
    """

    def __init__(
        self, model: Supernet, w_opt: torch.optim.SGD, a_opt: torch.optim.Optimizer, *,
        mode: str = "first_order", n_step: int = 1, grad_clip: float | None = 5.0,
        objectives: Sequence[ArchObjective] = (),
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if n_step < 1:
            raise ValueError(f"n_step must be >= 1, got {n_step}")
        if mode == "finite_difference" and n_step != 1:
            raise ValueError("finite_difference is DARTS's n_step = 1 approximation; use unrolled")
        self.model, self.w_opt, self.a_opt = model, w_opt, a_opt
        self.mode, self.n_step, self.grad_clip = mode, n_step, grad_clip
        self.weight_steps = self.arch_steps = self.virtual_steps = 0
        self.objectives = tuple(objectives)
        self.epoch, self.epochs = 0, 1
        self.last_terms: dict[str, Tensor] = {}

    # -- one iteration -----------------------------------------------------------------------
    def step(self, train_batches: Sequence[Batch], val_batch: Batch) -> dict[str, Tensor]:
        """n_step weight steps and one alpha step (order by mode). Returns on-device sums
        (no sync): train_loss, train_correct, train_n, val_loss, val_correct, val_n and, per
        objective, objective/NAME (its unweighted value times val_n, so sums average like the
        losses)."""
        if len(train_batches) != self.n_step:
            raise ValueError(f"need {self.n_step} training batches, got {len(train_batches)}")
        if self.mode == "first_order":
            stats = [self.weight_step(x, y) for x, y in train_batches]
            grads, val = self.first_order_grads(val_batch)
        else:
            grads, val = (self.unrolled_grads if self.mode == "unrolled" else self.finite_difference_grads)(
                train_batches, val_batch
            )
        self.arch_step(grads)
        if self.mode != "first_order":
            stats = [self.weight_step(x, y) for x, y in train_batches]
        out = {k: sum(s[k] for s in stats) for k in ("loss", "correct", "n")}
        return {"train_loss": out["loss"], "train_correct": out["correct"], "train_n": out["n"],
                "val_loss": val["loss"], "val_correct": val["correct"], "val_n": val["n"],
                **{f"objective/{k}": v * val["n"] for k, v in self.last_terms.items()}}

    def weight_step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """One real SGD step on the weights (alpha fixed), clipped to `grad_clip`."""
        weights = self.model.weight_parameters()
        self.w_opt.zero_grad(set_to_none=True)
        # alpha frozen: autograd then keeps no op outputs for its gradient (less memory).
        with _frozen(self.model.arch_parameters()):
            with autocast(x.device):
                logits = self.model(x)
            loss = F.cross_entropy(logits.float(), y)
            loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(weights, self.grad_clip)
        self.w_opt.step()
        self.weight_steps += 1
        return _stats(loss, logits, y)

    def arch_step(self, grads: Sequence[Tensor]) -> None:
        """One Adam step on the architecture parameters with the given gradients."""
        self.a_opt.zero_grad(set_to_none=True)
        for p, g in zip(self.model.arch_parameters(), grads, strict=True):
            p.grad = g.detach()
        self.a_opt.step()
        self.arch_steps += 1

    # -- alpha gradients ---------------------------------------------------------------------
    def first_order_grads(self, val_batch: Batch) -> tuple[list[Tensor], dict[str, Tensor]]:
        """grad_alpha L_val(w, alpha) at the current weights (DARTS first order)."""
        x, y = val_batch
        arch = self.model.arch_parameters()
        # Weights frozen: convs neither save inputs for nor compute weight gradients, which
        # roughly halves the time and a third of the memory of this pass.
        with _frozen(self.model.weight_parameters()):
            with autocast(x.device):
                logits = self.model(x)
            loss = F.cross_entropy(logits.float(), y)
            total = self._objective(self.model.named_weights(), None, x, y, logits, loss)
            return _grads(total, arch), _stats(loss, logits, y)

    def unrolled_grads(
        self, train_batches: Sequence[Batch], val_batch: Batch
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """d/d alpha L_val(w_n(alpha), alpha) by autograd through n virtual SGD steps."""
        names, w, bufs = self._start()
        lr, momentum, wd = self._hyper()
        buffers = self._buffer_copies()
        for x, y in train_batches:
            loss = self._loss(dict(zip(names, w, strict=True)), buffers, x, y)
            grads = torch.autograd.grad(loss, w, create_graph=True, allow_unused=True)
            w, bufs = _sgd(w, grads, bufs, lr, momentum, wd)
            self.virtual_steps += 1
        x, y = val_batch
        weights = dict(zip(names, w, strict=True))
        logits = self._logits(weights, buffers, x)
        loss = F.cross_entropy(logits.float(), y)
        total = self._objective(weights, buffers, x, y, logits, loss)
        return _grads(total, self.model.arch_parameters()), _stats(loss, logits, y)

    def finite_difference_grads(
        self, train_batches: Sequence[Batch], val_batch: Batch
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """DARTS's second-order alpha gradient with a finite-difference Hessian-vector product."""
        (x, y), (xv, yv) = train_batches[0], val_batch
        names, w, bufs = self._start()
        lr, momentum, wd = self._hyper()
        buffers = self._buffer_copies()
        arch = self.model.arch_parameters()
        train_loss = self._loss(dict(zip(names, w, strict=True)), buffers, x, y)
        grads = torch.autograd.grad(train_loss, w, allow_unused=True)
        w1, _ = _sgd([t.detach() for t in w], grads, bufs, lr, momentum, wd)
        w1 = [t.detach().requires_grad_() for t in w1]
        self.virtual_steps += 1
        weights1 = dict(zip(names, w1, strict=True))
        logits = self._logits(weights1, buffers, xv)
        val_loss = F.cross_entropy(logits.float(), yv)
        # The objective is part of L_val here: in d_alpha and in v of the HVP.
        out = _grads(self._objective(weights1, buffers, xv, yv, logits, val_loss), arch + w1)
        d_alpha, v = out[: len(arch)], out[len(arch) :]
        r = 0.01 / torch.cat([g.flatten() for g in v]).norm()
        hvp = []
        for sign in (1.0, -1.0):
            # The shift r v is ~0.01/sqrt(P) per weight, below bf16's resolution: float32 here.
            shifted = {n: t.detach() + sign * r * g for n, t, g in zip(names, w, v, strict=True)}
            hvp.append(_grads(self._loss(shifted, buffers, x, y, fp32=True), arch))
        grads = [da - lr * (gp - gm) / (2 * r) for da, gp, gm in zip(d_alpha, *hvp, strict=True)]
        return grads, _stats(val_loss, logits, yv)

    # -- helpers -----------------------------------------------------------------------------
    def _objective(self, weights: dict[str, Tensor], buffers: dict[str, Tensor] | None, x: Tensor,
                   y: Tensor, logits: Tensor, loss: Tensor) -> Tensor:
        """loss + the weighted objective terms at `weights` (the loss itself without terms);
        buffers None: copies of the model's (terms must not move the BN running statistics)."""
        if not self.objectives:
            self.last_terms = {}
            return loss
        buffers = self._buffer_copies() if buffers is None else buffers
        ctx = ObjectiveContext(
            # fp32: terms like the input curvature difference gradients at tiny steps (not bf16).
            self.model, lambda images: self._logits(weights, buffers, images, fp32=True), weights, buffers,
            x, y, logits, loss, self.epoch, self.epochs,
        )
        total, self.last_terms = objective_total(self.objectives, ctx)
        return loss + total

    def _start(self) -> tuple[list[str], list[Tensor], list[Tensor | None]]:
        """Weight names, detached leaf copies (sharing storage) and the SGD momentum buffers."""
        named = self.model.named_weights()
        w = [p.detach().requires_grad_() for p in named.values()]
        bufs = [self.w_opt.state.get(p, {}).get("momentum_buffer") for p in named.values()]
        return list(named), w, [None if b is None else b.detach() for b in bufs]

    def _hyper(self) -> tuple[float, float, float]:
        group = self.w_opt.param_groups[0]
        return float(group["lr"]), float(group.get("momentum", 0.0)), float(group.get("weight_decay", 0.0))

    def _buffer_copies(self) -> dict[str, Tensor]:
        # Virtual forward passes update BN running stats in place: let them update copies.
        return {n: b.clone() for n, b in self.model.named_buffers()}

    def _logits(self, weights: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor,
                fp32: bool = False) -> Tensor:
        with full_precision(x.device) if fp32 else autocast(x.device):
            return functional_call(self.model, (weights, buffers), (x,))

    def _loss(self, weights, buffers, x: Tensor, y: Tensor, fp32: bool = False) -> Tensor:
        return F.cross_entropy(self._logits(weights, buffers, x, fp32).float(), y)


@contextlib.contextmanager
def _frozen(params: Sequence[Tensor]) -> Iterator[None]:
    """Temporarily set requires_grad=False on `params` (restored even on error)."""
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)


def _sgd(
    w: Sequence[Tensor], grads: Sequence[Tensor | None], bufs: Sequence[Tensor | None],
    lr: float, momentum: float, wd: float,
) -> tuple[list[Tensor], list[Tensor | None]]:
    """One functional SGD step with torch.optim.SGD's semantics (dampening 0, no Nesterov):
    d = g + wd * w; buf = momentum * buf + d (buf = d on the first step); w - lr * buf."""
    new_w, new_bufs = [], []
    for t, g, b in zip(w, grads, bufs, strict=True):
        d = (torch.zeros_like(t) if g is None else g) + wd * t
        if momentum:
            d = d if b is None else momentum * b + d
        new_bufs.append(d if momentum else None)
        new_w.append(t - lr * d)
    return new_w, new_bufs


def _grads(loss: Tensor, inputs: Sequence[Tensor], **kwargs) -> list[Tensor]:
    """torch.autograd.grad with zeros for inputs the loss does not reach (e.g. alpha_normal of
    a supernet too shallow to have a normal cell)."""
    out = torch.autograd.grad(loss, inputs, allow_unused=True, **kwargs)
    return [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, out, strict=True)]


def _stats(loss: Tensor, logits: Tensor, y: Tensor) -> dict[str, Tensor]:
    n = y.new_tensor(y.shape[0])
    return {"loss": loss.detach() * n, "correct": (logits.argmax(1) == y).sum(), "n": n}
