"""Curvature: the top Hessian eigenvalue of the training loss, w.r.t. parameters and inputs.

A direct number for the smoothness the study could only picture with contours: power iteration
on Hessian-vector products (double backward through one retained graph, so each iteration costs
one extra backward pass, never an explicit Hessian).

* Parameters: H = d^2 L / d theta^2 of the mean cross-entropy over a fixed seeded training
  batch, all parameters, model in eval mode.
* Inputs: for each sample, H_i = d^2 l(f(x_i), y_i) / d x_i^2 in pixel space. In eval mode the
  Hessian of the summed loss w.r.t. the whole batch is block diagonal over samples, so one HVP
  of the summed loss with a batched vector gives every per-sample HVP at once; the power
  iteration runs per sample (per-row normalisation) in a single batched loop.

Power iteration converges to the eigenvalue of largest magnitude; its Rayleigh quotient is
reported with its sign (the top one whenever, as usual, the dominant eigenvalue is positive).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nasaudit.data import to_float
from nasaudit.infra.params import make_params
from nasaudit.infra.records import Record
from nasaudit.probes import ProbeSpec
from nasaudit.probes.common import eval_mode, new_figure, sample_indices, save_figure, save_npz
from nasaudit.probes.settings import CurvatureParams


def power_iteration(
    hvp: Callable[[Tensor], Tensor],
    v0: Tensor,
    *,
    iters: int = 50,
    tol: float = 1e-4,
    progress: bool = False,
) -> dict[str, Any]:
    """Batched power iteration: dominant eigenvalue of each of B symmetric operators.

    Args:
        hvp: maps vectors [B, D] to [B, D], row b -> H_b @ v_b (B = 1 for a single operator).
        v0: start vectors [B, D] (random; need not be normalised, must not be zero).
        iters: maximum number of HVPs.
        tol: stop once every row's Rayleigh quotient changes by less than
            tol * max(|lambda|, 1e-12) between two iterations.
    Returns {"eigenvalues" [B] (float64 Rayleigh quotients v^T H v with ||v|| = 1, in the
    operator's units), "vectors" [B, D] (unit), "iters" (HVPs used), "converged" (bool),
    "trace" [iters_used, B] (the Rayleigh quotient after each iteration)}.
    """
    from tqdm.auto import tqdm

    v = v0 / v0.norm(dim=1, keepdim=True).clamp_min(1e-30)
    lam_prev: Tensor | None = None
    trace: list[Tensor] = []
    converged = False
    used = 0
    for _ in tqdm(range(iters), desc="power iteration", disable=not progress, leave=False):
        used += 1
        hv = hvp(v)
        lam = (v * hv).sum(1, dtype=torch.float64)  # Rayleigh quotient, ||v|| = 1
        trace.append(lam)
        norm = hv.norm(dim=1, keepdim=True)
        # A zero HVP means v lies in the null space: eigenvalue 0, keep v.
        v = torch.where(norm > 0, hv / norm.clamp_min(1e-30), v)
        if lam_prev is not None:
            # One sync per iteration (not per sample): the loop must know when to stop.
            change = (lam - lam_prev).abs() <= tol * lam.abs().clamp_min(1e-12)
            if bool(change.all()):
                converged = True
                break
        lam_prev = lam
    return {
        "eigenvalues": trace[-1],
        "vectors": v,
        "iters": used,
        "converged": converged,
        "trace": torch.stack(trace),
    }


def _cross_entropy_mean(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(model(x), y)


def param_top_eigenvalue(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    generator: torch.Generator,
    iters: int = 50,
    tol: float = 1e-4,
    names: list[str] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Dominant eigenvalue of the Hessian of the mean cross-entropy on (x, y) w.r.t. parameters.

    Args:
        model: classifier; evaluated in eval mode (modes restored afterwards).
        x: images [B, C, H, W] (uint8 or float in [0, 1]); y: labels [B].
        generator: draws the Gaussian start vector (on the parameters' device).
        names: subset of `model.named_parameters()` names to differentiate (default: all
            with requires_grad); the others are held fixed.
    Returns power_iteration's dict with "eigenvalue" (float, nats per parameter-unit^2),
    "n_params" (parameters the loss depends on; unused ones, e.g. an auxiliary head in eval
    mode, are left out) and "loss" (the batch's mean cross-entropy) added.
    """
    named = dict(model.named_parameters())
    if names is None:
        names = [k for k, p in named.items() if p.requires_grad]
    unknown = sorted(set(names) - set(named))
    if unknown or not names:
        raise ValueError(f"no such parameters: {unknown[:5]}" if unknown else "no parameters")
    tensors = [named[k] for k in names]
    device = tensors[0].device
    x = to_float(x.to(device))
    y = y.to(device)
    with eval_mode(model), torch.enable_grad():
        all_tensors = list(tensors)
        flags = [p.requires_grad for p in all_tensors]
        for p in all_tensors:
            p.requires_grad_(True)
        try:
            loss = _cross_entropy_mean(model, x, y)
            # create_graph: the gradient itself is differentiable; the graph is retained so every
            # HVP reuses this one forward/backward instead of recomputing it.
            grads = torch.autograd.grad(loss, tensors, create_graph=True, allow_unused=True)
            # Parameters the eval-mode loss never touches (e.g. an auxiliary head) have zero
            # Hessian rows and columns: they cannot change the dominant eigenvalue, so drop them.
            used = [(p, g) for p, g in zip(tensors, grads, strict=True) if g is not None]
            tensors = [p for p, _ in used]
            n_params = sum(p.numel() for p in tensors)
            flat_grad = torch.cat([g.reshape(-1) for _, g in used])

            def hvp(v: Tensor) -> Tensor:
                hv = torch.autograd.grad(
                    flat_grad, tensors, grad_outputs=v[0], retain_graph=True, allow_unused=True
                )
                flat = [
                    (h if h is not None else torch.zeros_like(p)).reshape(-1)
                    for h, p in zip(hv, tensors, strict=True)
                ]
                return torch.cat(flat).detach().unsqueeze(0)

            v0 = torch.randn(1, n_params, generator=generator, device=device)
            out = power_iteration(hvp, v0, iters=iters, tol=tol, progress=progress)
        finally:
            for p, flag in zip(all_tensors, flags, strict=True):
                p.requires_grad_(flag)
    out["eigenvalue"] = float(out["eigenvalues"][0])
    out["n_params"] = n_params
    out["loss"] = float(loss.detach())
    return out


def input_top_eigenvalues(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    generator: torch.Generator,
    iters: int = 50,
    tol: float = 1e-4,
    progress: bool = False,
) -> dict[str, Any]:
    """Per-sample dominant eigenvalue of d^2 l(f(x_i), y_i) / d x_i^2 (pixel space, eval mode).

    Args:
        x: images [N, C, H, W] (uint8 or float in [0, 1]); y: labels [N].
        generator: draws the Gaussian start vectors (on the model's device).
    Returns power_iteration's dict ("eigenvalues" [N], nats per pixel-unit^2).
    """
    device = next(model.parameters()).device
    x = to_float(x.to(device)).detach().clone()
    y = y.to(device)
    n = x.shape[0]
    with eval_mode(model), torch.enable_grad():
        xr = x.requires_grad_(True)
        # Summed (not mean) loss: each block of the block-diagonal Hessian is then exactly the
        # per-sample Hessian, independent of the batch size.
        loss = F.cross_entropy(model(xr), y, reduction="sum")
        (gx,) = torch.autograd.grad(loss, xr, create_graph=True)

        def hvp(v: Tensor) -> Tensor:
            (hv,) = torch.autograd.grad(gx, xr, grad_outputs=v.view_as(xr), retain_graph=True)
            return hv.detach().reshape(n, -1)

        v0 = torch.randn(n, x[0].numel(), generator=generator, device=device)
        return power_iteration(hvp, v0, iters=iters, tol=tol, progress=progress)


# --------------------------------------------------------------------------------------------
# Probe


@dataclasses.dataclass
class CurvatureRecord(Record):
    """Top Hessian eigenvalues of the training loss (cross-entropy in nats)."""

    kind = "probe_curvature"
    param_top_eigenvalue: float | None  # w.r.t. all parameters, mean loss over the batch
    param_iters: int | None
    param_converged: bool | None
    input_top_eigenvalue_mean: float | None  # per-sample, pixel space, averaged
    input_top_eigenvalue_median: float | None
    input_top_eigenvalue_max: float | None
    input_iters: int | None
    input_converged: bool | None
    loss: float | None
    n_samples: int
    n_inputs: int
    n_params: int | None
    seed: int
    params: dict
    model: str | None = None
    checkpoint: str | None = None
    files: dict = dataclasses.field(default_factory=dict)


def run_curvature(
    model: nn.Module,
    data: Any,
    params: CurvatureParams | dict | None,
    *,
    device: torch.device,
    seed: int,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> CurvatureRecord:
    """Top Hessian eigenvalues on a seeded training batch; writes curvature.npz/.png to out_dir."""
    from nasaudit.infra.device import generator

    params = make_params(CurvatureParams, params, source="probe curvature")

    model = model.to(device)
    idx = sample_indices(data.train_images.shape[0], params.n_samples, seed)
    x, y = data.train_images[idx], data.train_labels[idx]
    gen = generator(seed + 1, device)
    p_out = i_out = None
    if params.which in ("param", "both"):
        p_out = param_top_eigenvalue(
            model, x, y, generator=gen, iters=params.iters, tol=params.tol, progress=progress
        )
    if params.which in ("input", "both"):
        k = min(params.n_inputs, x.shape[0])
        i_out = input_top_eigenvalues(
            model,
            x[:k],
            y[:k],
            generator=gen,
            iters=params.iters,
            tol=params.tol,
            progress=progress,
        )
    eig = i_out["eigenvalues"].cpu().numpy() if i_out is not None else None
    record = CurvatureRecord(
        param_top_eigenvalue=p_out["eigenvalue"] if p_out else None,
        param_iters=p_out["iters"] if p_out else None,
        param_converged=p_out["converged"] if p_out else None,
        input_top_eigenvalue_mean=float(eig.mean()) if eig is not None else None,
        input_top_eigenvalue_median=float(np.median(eig)) if eig is not None else None,
        input_top_eigenvalue_max=float(eig.max()) if eig is not None else None,
        input_iters=i_out["iters"] if i_out else None,
        input_converged=i_out["converged"] if i_out else None,
        loss=p_out["loss"] if p_out else None,
        n_samples=int(x.shape[0]),
        n_inputs=len(eig) if eig is not None else 0,
        n_params=p_out["n_params"] if p_out else None,
        seed=seed,
        params=dataclasses.asdict(params),
    )
    if out_dir is not None:
        record.files.update(_write_outputs(Path(out_dir), p_out, i_out))
    return record


def _write_outputs(out: Path, p_out: dict | None, i_out: dict | None) -> dict[str, str]:
    """curvature.npz (power-iteration traces, per-sample eigenvalues) and curvature.png."""

    arrays: dict[str, Any] = {}
    if p_out is not None:
        arrays["param_trace"] = p_out["trace"][:, 0].cpu().numpy()
    if i_out is not None:
        arrays["input_eigenvalues"] = i_out["eigenvalues"].cpu().numpy()
        arrays["input_trace"] = i_out["trace"].cpu().numpy()
    files = {"npz": str(save_npz(out / "curvature.npz", **arrays))}
    fig, axes = new_figure(figsize=(9.0, 3.6), ncols=2)
    ax0, ax1 = axes
    if p_out is not None:
        ax0.plot(np.arange(1, len(arrays["param_trace"]) + 1), arrays["param_trace"], marker=".")
        ax0.set_title(f"parameter Hessian: top eigenvalue {p_out['eigenvalue']:.4g}", fontsize=9)
    ax0.set_xlabel("power iteration")
    ax0.set_ylabel("Rayleigh quotient")
    if i_out is not None:
        eig = arrays["input_eigenvalues"]
        bins = max(5, int(math.sqrt(len(eig))))
        ax1.hist(eig, bins=bins)
        ax1.set_title(
            f"input Hessian: per-sample top eigenvalue (mean {eig.mean():.4g})", fontsize=9
        )
    ax1.set_xlabel("top eigenvalue")
    ax1.set_ylabel("samples")
    files["plot"] = str(save_figure(fig, out / "curvature.png"))
    return files


PROBES = {"curvature": ProbeSpec(CurvatureParams, run_curvature)}
