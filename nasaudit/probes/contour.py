"""Loss contours around a model, in parameter space (Eq. 12) and input space (Eq. 13).

Parameter space: L(theta* + a d1 + b d2) on a fixed seeded training batch, with d1, d2 random
orthogonal +-1 directions over the first convolution's weights, (a, b) on [-0.5, 0.5]^2.
Input space: l(f(x + a d1 + b d2), y) around each of N seeded test inputs, with a fresh pair of
orthogonal +-1 pixel-space directions per input, (a, b) on [-0.2, 0.2]^2.

Both grids are zero-centred: the grid coordinates are k * (radius / half) for integer k, so the
centre point is exactly (0, 0) and the loss there equals the model's own loss. The grid
evaluations are batched (vmap over the perturbed weights; big batches of perturbed inputs).
Plots use matplotlib's Agg canvas directly (no pyplot, so no global backend state).
"""

from __future__ import annotations

import dataclasses
import warnings
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
from nasaudit.probes.settings import ContourInputParams, ContourParamParams

# The batched grid must agree with the plain forward at the centre up to float rounding;
# anything larger means the batching changed the computation (e.g. a BN layer in train mode).
_CENTRE_RTOL = 1e-3


# --------------------------------------------------------------------------------------------
# Directions, grids and summaries


def orthogonal_sign_directions(
    shape: torch.Size | tuple[int, ...], generator: torch.Generator, count: int = 1
) -> tuple[Tensor, Tensor]:
    """`count` pairs (d1, d2) of random +-1 tensors, each of `shape`, with <d1, d2> = 0.

    d2 = d1 * s, where s is +-1 with exactly half its entries -1 in a random permutation, so d2
    is a uniformly random sign vector orthogonal to d1. With an odd number D of entries, one
    entry of d2 is 0 (the only way to be exactly orthogonal). Returns tensors [count, *shape]
    (float32, on the generator's device).
    """
    d = int(np.prod(shape))
    device = generator.device
    d1 = torch.randint(0, 2, (count, d), generator=generator, device=device).float().mul_(2).sub_(1)
    s = torch.ones(count, d, device=device)
    for i in range(count):
        perm = torch.randperm(d, generator=generator, device=device)
        s[i, perm[: d // 2]] = -1.0
        if d % 2:
            s[i, perm[-1]] = 0.0
    return d1.view(count, *shape), (d1 * s).view(count, *shape)


def centred_grid(radius: float, points: int) -> Tensor:
    """1-D grid [points] on [-radius, radius] with the middle point exactly 0 (points odd)."""
    if points < 3 or points % 2 == 0:
        raise ValueError(f"grid points must be odd and >= 3, got {points}")
    half = points // 2
    return torch.arange(-half, half + 1, dtype=torch.float64).mul_(radius / half).float()


def flatness_summary(grid: np.ndarray, centre: float) -> dict[str, float]:
    """Scalar flatness of a loss grid [..., G, G] around its centre loss (loss units, nats).

    mean_increase: mean over all grid points of L - L_centre (the audit's headline number;
    lower = flatter); border_increase: the same over the outermost ring of the grid;
    max_increase: the largest increase; centre_loss: L at (0, 0).
    """
    inc = grid - centre
    border = np.concatenate(
        [inc[..., 0, :], inc[..., -1, :], inc[..., 1:-1, 0], inc[..., 1:-1, -1]], axis=-1
    )
    return {
        "centre_loss": float(np.mean(centre)),
        "mean_increase": float(np.mean(inc)),
        "border_increase": float(np.mean(border)),
        "max_increase": float(np.max(inc)),
    }


def first_conv_weight_name(model: nn.Module) -> str:
    """Name (in named_parameters) of the weight of the first nn.Conv2d in module order."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return f"{name}.weight" if name else "weight"
    raise ValueError("model has no nn.Conv2d")


def _check_centre(batched: float | np.ndarray, exact: float | np.ndarray, what: str) -> float:
    """Largest |batched - exact| at the centre; raises if batching changed the computation."""
    err = float(np.max(np.abs(np.asarray(batched) - np.asarray(exact))))
    scale = float(np.max(np.abs(np.asarray(exact)))) + 1e-6
    if err > _CENTRE_RTOL * scale:
        raise RuntimeError(
            f"{what}: batched grid centre differs from the model's loss by {err:.3g}"
        )
    return err


# --------------------------------------------------------------------------------------------
# Parameter space (Eq. 12)


def param_loss_grid(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    weight_name: str | None = None,
    radius: float = 0.5,
    points: int = 41,
    generator: torch.Generator,
    grid_chunk: int | None = None,
    max_images_per_call: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Mean cross-entropy of (x, y) at theta* + a d1 + b d2 for (a, b) on a centred grid.

    Args:
        model: classifier (evaluated in eval mode, modes restored afterwards).
        x: images [B, C, H, W] (uint8 or float in [0, 1]); y: labels [B].
        weight_name: parameter perturbed (default: first conv weight).
        radius, points: grid over [-radius, radius]^2 with points x points values (odd).
        generator: draws d1, d2 (+-1, orthogonal) on the weight's device.
        grid_chunk: grid points per vmap call (default: max_images_per_call // B).
        max_images_per_call: images per vmap call; None: 256 on CPU (big activations cost
            more in page faults than vmap saves there), 8192 on accelerators.
    Returns {"alphas" [G], "losses" [G, G] (row i: a = alphas[i]; column j: b = alphas[j]),
    "centre_loss", "centre_abs_err", "d1", "d2" (weight shape), "weight_name"}; losses in nats.
    """
    from torch.func import functional_call, vmap
    from tqdm.auto import tqdm

    weight_name = weight_name or first_conv_weight_name(model)
    w0 = dict(model.named_parameters())[weight_name].detach()
    d1, d2 = (d[0].to(w0.dtype) for d in orthogonal_sign_directions(w0.shape, generator))
    alphas = centred_grid(radius, points).to(w0.device)
    a_flat = alphas.repeat_interleave(points)  # row-major (a, b) pairs
    b_flat = alphas.repeat(points)
    x = to_float(x.to(w0.device))
    y = y.to(w0.device)
    if max_images_per_call is None:
        max_images_per_call = 256 if w0.device.type == "cpu" else 8192
    chunk = grid_chunk or max(1, max_images_per_call // max(1, x.shape[0]))

    def loss_at(w: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(model, {weight_name: w}, (x,)), y)

    losses = torch.empty(points * points, device=w0.device)
    vectorized = True
    with eval_mode(model), torch.no_grad():
        centre = loss_at(w0)  # the model's own loss: the same call as model(x)
        for s in tqdm(
            range(0, points * points, chunk), desc="contour", disable=not progress, leave=False
        ):
            a = a_flat[s : s + chunk].view(-1, *[1] * w0.dim())
            b = b_flat[s : s + chunk].view(-1, *[1] * w0.dim())
            ws = w0 + a * d1 + b * d2
            if vectorized:
                try:
                    losses[s : s + chunk] = vmap(loss_at)(ws)
                    continue
                except (RuntimeError, NotImplementedError) as exc:
                    warnings.warn(f"vmap failed ({str(exc)[:120]}); looping", stacklevel=2)
                    vectorized = False
            losses[s : s + chunk] = torch.stack([loss_at(w) for w in ws])
    grid = losses.view(points, points).double().cpu().numpy()
    c = points // 2
    centre_val = float(centre)
    err = _check_centre(grid[c, c], centre_val, "contour_param")
    # The centre weight is w0 + 0*d1 + 0*d2 == w0 exactly; store the unbatched value so the
    # grid's centre is the model's loss to the last bit, not a re-associated float sum.
    grid[c, c] = centre_val
    return {
        "alphas": alphas.double().cpu().numpy(),
        "losses": grid,
        "centre_loss": centre_val,
        "centre_abs_err": err,
        "d1": d1.cpu().numpy(),
        "d2": d2.cpu().numpy(),
        "weight_name": weight_name,
    }


# --------------------------------------------------------------------------------------------
# Input space (Eq. 13)


def input_loss_grid(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    radius: float = 0.2,
    points: int = 41,
    generator: torch.Generator,
    batch_size: int | None = None,
    clamp: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Per-input cross-entropy l(f(x_i + a d1_i + b d2_i), y_i) on a centred (a, b) grid.

    Args:
        x: images [N, C, H, W] (uint8 or float in [0, 1]); y: labels [N].
        radius, points: grid over [-radius, radius]^2 in pixel units, points x points (odd).
        generator: draws each input's +-1 orthogonal direction pair (on the model's device).
        batch_size: perturbed images per forward pass (None: 256 on CPU, 4096 on accelerators).
        clamp: clip perturbed images into [0, 1] (Eq. 13 does not; off by default).
    Returns {"alphas" [G], "losses" [N, G, G] (nats), "centre_losses" [N] (the model's own
    per-input losses), "centre_abs_err"}.
    """
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    x = to_float(x.to(device))
    y = y.to(device)
    n = x.shape[0]
    d1, d2 = orthogonal_sign_directions(x.shape[1:], generator, count=n)
    alphas = centred_grid(radius, points).to(device)
    g2 = points * points
    a_flat = alphas.repeat_interleave(points).view(-1, 1, 1, 1)
    b_flat = alphas.repeat(points).view(-1, 1, 1, 1)
    if batch_size is None:  # see param_loss_grid's max_images_per_call
        batch_size = 256 if device.type == "cpu" else 4096
    # Work list of (input, grid point) pairs, input-major, evaluated batch_size at a time.
    total = n * g2
    losses = torch.empty(total, device=device)
    with eval_mode(model), torch.no_grad():
        centre = F.cross_entropy(model(x), y, reduction="none")
        for s in tqdm(
            range(0, total, batch_size), desc="contour", disable=not progress, leave=False
        ):
            idx = torch.arange(s, min(s + batch_size, total), device=device)
            i, k = idx // g2, idx % g2
            xb = x[i] + a_flat[k] * d1[i] + b_flat[k] * d2[i]
            if clamp:
                xb = xb.clamp_(0.0, 1.0)
            losses[s : s + len(idx)] = F.cross_entropy(model(xb), y[i], reduction="none")
    grid = losses.view(n, points, points).double().cpu().numpy()
    centre_np = centre.double().cpu().numpy()
    c = points // 2
    err = _check_centre(grid[:, c, c], centre_np, "contour_input")
    grid[:, c, c] = centre_np  # exact (see param_loss_grid)
    return {
        "alphas": alphas.double().cpu().numpy(),
        "losses": grid,
        "centre_losses": centre_np,
        "centre_abs_err": err,
    }


# --------------------------------------------------------------------------------------------
# Plots


def plot_contour(
    alphas: np.ndarray, grids: list[np.ndarray], titles: list[str], path: Path, suptitle: str
) -> Path:
    """Filled contour plots of loss grids [G, G] (rows: a along d1, columns: b along d2)."""
    fig, axes = new_figure(figsize=(4.2 * len(grids), 3.6), ncols=len(grids))
    axes = np.atleast_1d(axes)
    for ax, grid, title in zip(axes, grids, titles, strict=True):
        # contourf takes Z[row=y, col=x]: put b on the x axis and a on the y axis.
        cs = ax.contourf(alphas, alphas, grid, levels=20, cmap="viridis")
        ax.contour(alphas, alphas, grid, levels=10, colors="k", linewidths=0.4)
        ax.plot([0.0], [0.0], marker="+", color="r")
        ax.set_xlabel("b (d2)")
        ax.set_ylabel("a (d1)")
        ax.set_title(title, fontsize=9)
        fig.colorbar(cs, ax=ax, label="loss")
    fig.suptitle(suptitle, fontsize=10)
    return save_figure(fig, path)


# --------------------------------------------------------------------------------------------
# Probes


@dataclasses.dataclass
class ContourRecord(Record):
    """Flatness summary of a loss contour (losses in nats; increases relative to the centre)."""

    kind = "probe_contour"
    space: str  # "param" | "input"
    centre_loss: float
    mean_increase: float
    border_increase: float
    max_increase: float
    centre_abs_err: float  # batched-vs-plain forward difference at the centre
    radius: float
    points: int
    n_samples: int
    seed: int
    params: dict
    weight_name: str | None = None
    model: str | None = None
    checkpoint: str | None = None
    files: dict = dataclasses.field(default_factory=dict)


def _seeded_subset(images: Tensor, labels: Tensor, n: int, seed: int) -> tuple[Tensor, Tensor]:
    idx = sample_indices(images.shape[0], n, seed)
    return images[idx], labels[idx]


def _contour_record(
    space: str,
    summary: dict[str, float],
    res: dict[str, Any],
    params: ContourParamParams | ContourInputParams,
    n_samples: int,
    seed: int,
    **extra: Any,
) -> ContourRecord:
    """The record of a contour run: flatness `summary`, the grid's centre check, the settings."""
    return ContourRecord(
        space=space,
        **summary,
        centre_abs_err=res["centre_abs_err"],
        radius=params.radius,
        points=params.points,
        n_samples=n_samples,
        seed=seed,
        params=dataclasses.asdict(params),
        **extra,
    )


def run_contour_param(
    model: nn.Module,
    data: Any,
    params: ContourParamParams | dict | None,
    *,
    device: torch.device,
    seed: int,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> ContourRecord:
    """Eq. 12 contour on a seeded training batch; writes contour_param.npz/.png into out_dir."""
    from nasaudit.infra.device import generator

    params = make_params(ContourParamParams, params, source="probe contour_param")

    model = model.to(device)
    x, y = _seeded_subset(data.train_images, data.train_labels, params.n_samples, seed)
    # Directions use a different stream than the batch choice (seed + 1), on the model's device.
    res = param_loss_grid(
        model,
        x,
        y,
        radius=params.radius,
        points=params.points,
        generator=generator(seed + 1, device),
        max_images_per_call=params.max_images_per_call,
        progress=progress,
    )
    summary = flatness_summary(res["losses"], res["centre_loss"])
    record = _contour_record("param", summary, res, params, int(x.shape[0]), seed,
                             weight_name=res["weight_name"])
    if out_dir is not None:
        out = Path(out_dir)
        record.files["npz"] = str(
            save_npz(
                out / "contour_param.npz",
                alphas=res["alphas"],
                losses=res["losses"],
                centre_loss=res["centre_loss"],
                d1=res["d1"],
                d2=res["d2"],
            )
        )
        record.files["plot"] = str(
            plot_contour(
                res["alphas"],
                [res["losses"]],
                [f"{res['weight_name']}"],
                out / "contour_param.png",
                f"Parameter-space loss (Eq. 12), mean increase {summary['mean_increase']:.3g}",
            )
        )
    return record


def run_contour_input(
    model: nn.Module,
    data: Any,
    params: ContourInputParams | dict | None,
    *,
    device: torch.device,
    seed: int,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> ContourRecord:
    """Eq. 13 contours around seeded test inputs; writes contour_input.npz/.png into out_dir."""
    from nasaudit.infra.device import generator

    params = make_params(ContourInputParams, params, source="probe contour_input")

    model = model.to(device)
    x, y = _seeded_subset(data.test_images, data.test_labels, params.n_samples, seed)
    res = input_loss_grid(
        model,
        x,
        y,
        radius=params.radius,
        points=params.points,
        generator=generator(seed + 1, device),
        batch_size=params.batch_size,
        clamp=params.clamp,
        progress=progress,
    )
    # Increases are per input (each relative to its own centre), then averaged.
    centres = res["centre_losses"][:, None, None]
    summary = flatness_summary(res["losses"], centres)
    record = _contour_record("input", summary, res, params, int(x.shape[0]), seed)
    if out_dir is not None:
        out = Path(out_dir)
        record.files["npz"] = str(
            save_npz(
                out / "contour_input.npz",
                alphas=res["alphas"],
                losses=res["losses"],
                centre_losses=res["centre_losses"],
                labels=y.numpy(),
            )
        )
        shown = min(3, res["losses"].shape[0])
        grids = [res["losses"].mean(0)] + [res["losses"][i] for i in range(shown)]
        titles = ["mean over inputs"] + [f"input {i} (label {int(y[i])})" for i in range(shown)]
        record.files["plot"] = str(
            plot_contour(
                res["alphas"],
                grids,
                titles,
                out / "contour_input.png",
                f"Input-space loss (Eq. 13), mean increase {summary['mean_increase']:.3g}",
            )
        )
    return record


__all__: list[str] = [
    "ContourInputParams",
    "ContourParamParams",
    "ContourRecord",
    "centred_grid",
    "first_conv_weight_name",
    "flatness_summary",
    "input_loss_grid",
    "orthogonal_sign_directions",
    "param_loss_grid",
    "plot_contour",
    "run_contour_input",
    "run_contour_param",
]


PROBES = {
    "contour_param": ProbeSpec(ContourParamParams, run_contour_param),
    "contour_input": ProbeSpec(ContourInputParams, run_contour_input),
}
