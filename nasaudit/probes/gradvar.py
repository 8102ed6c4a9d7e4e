"""Gradient variance (Eq. 14 of the study): how noisy per-sample gradients are.

Var(g) = E_x ||g(x) - E_x g(x)||^2, where g(x) is the gradient of the per-sample loss with
respect to the model parameters. The study's artifact appendix describes instead the sum over
parameter coordinates of the per-coordinate standard deviation, with every per-sample gradient
first clipped to L2 norm 5; the artifact's code (autovul projects/grad_var_param.py) actually
prints the sum of the squared stds (`grad_tensor.std(0).square().sum()`, unbiased), i.e. an
unbiased Eq. 14 of the clipped gradients. All three numbers are reported.

The reusable core is `per_sample_grad_variance`: any nn.Module, any subset of its parameters
(the search uses it on a supernet's weights), per-sample gradients by `torch.func` (vmap over
grad) in chunks, and streaming float64 statistics so that hundreds of samples on a big model fit
in memory (only a few parameter-sized accumulators are kept, never all gradients).

The probe (`run_gradvar`) measures in eval mode. A freshly built network's batch norms hold
running mean 0 and variance 1, i.e. are the identity, a network that never exists in training;
so before an at-initialisation measurement the probe calibrates them on a few training batches
(`calibrate_batch_norm`, weights unchanged) and records which statistics it used.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nasaudit.data import to_float
from nasaudit.infra.params import make_params
from nasaudit.infra.records import Record
from nasaudit.probes import ProbeSpec
from nasaudit.probes.common import eval_mode, is_untrained, new_figure, sample_indices, save_figure
from nasaudit.probes.settings import GradVarParams

LossFn = Callable[[Tensor, Tensor], Tensor]

# Per-chunk per-sample gradients are materialised as [chunk, *param_shape] float32 tensors;
# cap their total size so that a 25M-parameter model does not ask for several GiB per chunk.
DEFAULT_MAX_CHUNK_BYTES = 1 << 30


def split_parameters(
    model: nn.Module, params: Mapping[str, Tensor] | None
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(differentiated, fixed) tensors for `torch.func.functional_call(model, ...)`.

    `params` maps names from `model.named_parameters()` to the values at which to differentiate
    (a subset is fine); None means every parameter with requires_grad. Everything else (other
    parameters and all buffers) is returned detached in `fixed`, so it is a constant.
    """
    named = dict(model.named_parameters())
    if params is None:
        diff = {k: p.detach() for k, p in named.items() if p.requires_grad}
    else:
        unknown = sorted(set(params) - set(named))
        if unknown:
            raise ValueError(f"not parameters of the model: {unknown[:5]}")
        diff = {k: v.detach() for k, v in params.items()}
    if not diff:
        raise ValueError("no parameters to differentiate")
    fixed = {k: p.detach() for k, p in named.items() if k not in diff}
    fixed.update({k: b.detach() for k, b in model.named_buffers()})
    return diff, fixed


def _default_loss(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits, y)


class _Moments:
    """Streaming per-coordinate mean and sum of squared deviations (Chan et al.'s parallel
    update), in float64: merging chunk statistics this way avoids the cancellation of
    E[g^2] - E[g]^2 when the variance is tiny compared with the mean gradient."""

    def __init__(self, shapes: Mapping[str, torch.Size], device: torch.device):
        self.n = 0
        self.mean = {
            k: torch.zeros(s, dtype=torch.float64, device=device) for k, s in shapes.items()
        }
        self.m2 = {k: torch.zeros(s, dtype=torch.float64, device=device) for k, s in shapes.items()}

    def update(self, grads: Mapping[str, Tensor], scale: Tensor) -> None:
        """Add a chunk: grads[k] is [B, *shape]; each sample is multiplied by scale [B]."""
        b = int(scale.shape[0])
        n_new = self.n + b
        for k, g in grads.items():
            g = g.to(torch.float64) * scale.view(-1, *([1] * (g.dim() - 1)))
            chunk_mean = g.mean(0)
            chunk_m2 = (g - chunk_mean).square_().sum(0)
            delta = chunk_mean - self.mean[k]
            self.mean[k] += delta * (b / n_new)
            self.m2[k] += chunk_m2 + delta.square_() * (self.n * b / n_new)
        self.n = n_new


def _per_sample_grad_fn(
    model: nn.Module, fixed: dict[str, Tensor], loss_fn: LossFn
) -> Callable[[dict[str, Tensor], Tensor, Tensor], dict[str, Tensor]]:
    from torch.func import functional_call, grad

    def sample_loss(diff: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        # One sample as a batch of one: the model sees [1, C, H, W] (eval-mode BN is per-sample).
        logits = functional_call(model, (diff, fixed), (xi.unsqueeze(0),))
        return loss_fn(logits, yi.unsqueeze(0))

    return grad(sample_loss)


def _loop_grads(
    model: nn.Module,
    diff: dict[str, Tensor],
    fixed: dict[str, Tensor],
    loss_fn: LossFn,
    x: Tensor,
    y: Tensor,
) -> dict[str, Tensor]:
    """Per-sample gradients one sample at a time (fallback for ops vmap cannot batch)."""
    per_sample = _per_sample_grad_fn(model, fixed, loss_fn)
    outs = [per_sample(diff, x[i], y[i]) for i in range(x.shape[0])]
    return {k: torch.stack([o[k] for o in outs]) for k in diff}


def _drop_unused(
    model: nn.Module,
    diff: dict[str, Tensor],
    fixed: dict[str, Tensor],
    loss_fn: LossFn,
    x1: Tensor,
    y1: Tensor,
    device: torch.device,
) -> tuple[dict[str, Tensor], dict[str, Tensor], int]:
    """Move parameters the loss does not depend on (in the current mode) from diff to fixed.

    One ordinary backward pass on one sample finds them. Their per-sample gradients are
    identically zero, so dropping them changes no statistic, and saves their float64
    accumulators (a DARTS network's auxiliary head is ~90% of its parameters).
    """
    from torch.func import functional_call

    leaves = {k: t.detach().requires_grad_(True) for k, t in diff.items()}
    with torch.enable_grad():
        logits = functional_call(model, (leaves, fixed), (to_float(x1.to(device)),))
        loss = loss_fn(logits, y1.to(device))
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    unused = {k for k, g in zip(leaves, grads, strict=True) if g is None}
    if len(unused) == len(diff):
        raise ValueError("the loss depends on none of the requested parameters")
    n_unused = sum(diff[k].numel() for k in unused)
    fixed = {**fixed, **{k: diff[k] for k in unused}}
    diff = {k: t for k, t in diff.items() if k not in unused}
    return diff, fixed, n_unused


def per_sample_grad_variance(
    model: nn.Module,
    params: Mapping[str, Tensor] | None,
    x: Tensor,
    y: Tensor,
    *,
    chunk_size: int = 64,
    clip_norm: float | None = None,
    artifact_clip: float = 5.0,
    loss_fn: LossFn | None = None,
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
    per_tensor: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Variance of per-sample loss gradients w.r.t. `params` over the samples (x, y).

    Args:
        model: any nn.Module mapping x [B, ...] to logits [B, K]. It is evaluated in eval mode
            (BN running statistics, no dropout); its own training flags are restored after.
        params: {name: tensor} values of a subset of `model.named_parameters()` at which to
            differentiate, or None for all parameters with requires_grad. Other parameters and
            buffers are held fixed.
        x: inputs [N, ...] (uint8 images are scaled to [0, 1]); y: int64 labels [N].
        chunk_size: samples per vmap call (lowered automatically to respect max_chunk_bytes).
        clip_norm: if set, clip each per-sample gradient to this L2 norm before Eq. 14.
        artifact_clip: L2 clip applied before the artifact's sum of per-coordinate std (5.0).
        loss_fn: loss(logits [1, K], y [1]) -> scalar; default cross entropy.
        per_tensor: also return the Eq. 14 variance of each parameter tensor.

    Returns a dict of Python floats / ints:
        variance: Eq. 14, E||g - E g||^2 with the plug-in 1/N expectation (squared loss units
            per parameter-unit squared, summed over all coordinates);
        log10_variance: log10 of it (-inf for exactly 0);
        artifact_std_sum: sum over coordinates of the (unbiased, 1/(N-1)) std of the clipped
            gradients, as the paper's artifact appendix describes it;
        artifact_var_sum: sum over coordinates of the squared std of the clipped gradients,
            which is what the artifact's code (projects/grad_var_param.py,
            `grad_tensor.std(0).square().sum()`) actually prints;
        mean_grad_sq_norm: ||E g||^2; mean_sq_norm: E||g||^2 (so variance = difference);
        mean_grad_norm: E||g|| (before any clipping); clipped_fraction: share of samples
            whose norm exceeded artifact_clip;
        n_samples, n_params (differentiated parameters the loss depends on), n_unused_params
        (requested but unused in eval mode, e.g. an auxiliary head: their gradient is 0, so
        they are left out), clip_norm, artifact_clip, chunk_size (the one used);
        per_tensor (optional): {name: variance}.
    """
    from tqdm.auto import tqdm

    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} samples but y has {y.shape[0]}")
    n = int(x.shape[0])
    if n < 2:
        raise ValueError("need at least 2 samples for a variance")
    loss_fn = loss_fn or _default_loss
    diff, fixed = split_parameters(model, params)
    device = next(iter(diff.values())).device

    with eval_mode(model):
        diff, fixed, n_unused = _drop_unused(model, diff, fixed, loss_fn, x[:1], y[:1], device)
        n_params = sum(t.numel() for t in diff.values())
        chunk = max(1, min(int(chunk_size), max_chunk_bytes // max(1, 4 * n_params)))
        shapes = {k: t.shape for k, t in diff.items()}
        eq14 = _Moments(shapes, device)
        artifact = _Moments(shapes, device) if clip_norm != artifact_clip else None
        # Scalars stay on the device until the end: no per-chunk sync (DESIGN.md).
        sum_norm = torch.zeros((), dtype=torch.float64, device=device)
        n_clipped = torch.zeros((), dtype=torch.float64, device=device)

        from torch.func import vmap

        batched = vmap(_per_sample_grad_fn(model, fixed, loss_fn), in_dims=(None, 0, 0))
        vectorized = True
        for start in tqdm(range(0, n, chunk), desc="gradvar", disable=not progress, leave=False):
            xb = to_float(x[start : start + chunk].to(device))
            yb = y[start : start + chunk].to(device)
            grads = None
            if vectorized:
                try:
                    grads = batched(diff, xb, yb)
                except (RuntimeError, NotImplementedError) as exc:
                    # Some custom ops have no batching rule; stay correct, just slower.
                    warnings.warn(f"vmap failed ({str(exc)[:120]}); per-sample loop", stacklevel=2)
                    vectorized = False
            if grads is None:
                grads = _loop_grads(model, diff, fixed, loss_fn, xb, yb)
            grads = {k: g.detach() for k, g in grads.items()}
            sq = sum(g.to(torch.float64).flatten(1).square().sum(1) for g in grads.values())
            norm = sq.sqrt()  # [B] per-sample gradient L2 norms
            sum_norm += norm.sum()
            n_clipped += (norm >= artifact_clip).sum()
            eq_scale = torch.ones_like(norm) if clip_norm is None else _clip_scale(norm, clip_norm)
            eq14.update(grads, eq_scale)
            if artifact is not None:
                artifact.update(grads, _clip_scale(norm, artifact_clip))
            del grads

    art = artifact if artifact is not None else eq14
    variance_t = sum(m.sum() for m in eq14.m2.values()) / n
    mean_sq_t = sum(m.square().sum() for m in eq14.mean.values())
    std_sum_t = sum((m / (n - 1)).sqrt().sum() for m in art.m2.values())
    var_sum_t = sum(m.sum() for m in art.m2.values()) / (n - 1)
    variance = float(variance_t)
    out: dict[str, Any] = {
        "variance": variance,
        "log10_variance": math.log10(variance) if variance > 0 else float("-inf"),
        "artifact_std_sum": float(std_sum_t),
        "artifact_var_sum": float(var_sum_t),
        "mean_grad_sq_norm": float(mean_sq_t),
        "mean_sq_norm": variance + float(mean_sq_t),
        "mean_grad_norm": float(sum_norm) / n,
        "clipped_fraction": float(n_clipped) / n,
        "n_samples": n,
        "n_params": n_params,
        "n_unused_params": n_unused,
        "clip_norm": clip_norm,
        "artifact_clip": artifact_clip,
        "chunk_size": chunk,
    }
    if per_tensor:
        out["per_tensor"] = {k: float(m.sum()) / n for k, m in eq14.m2.items()}
    return out


def _clip_scale(norm: Tensor, max_norm: float) -> Tensor:
    """Per-sample factor max_norm / ||g|| where ||g|| >= max_norm, else 1 (the artifact's
    `if norm >= 5: grad = grad * 5 / norm`, exactly, without an epsilon)."""
    return torch.where(norm >= max_norm, max_norm / norm.clamp_min(1e-300), torch.ones_like(norm))


# --------------------------------------------------------------------------------------------
# The probe: Params, Record and run function used by run_probe / the CLI / the audit.




@dataclasses.dataclass
class GradVarRecord(Record):
    """Result of the gradient-variance probe (Eq. 14 and the artifact's variant).

    variance: Eq. 14's total over all n_params coordinates; variance_per_param: the same divided
    by n_params (models of 3M to 66M parameters compare on this one); artifact_var_sum /
    artifact_std_sum: the artifact's clipped variants. init: what the measured weights are:
    "kaiming" or "builtin" (an untrained model, re-initialised or not by params.init),
    "trained" (a trained model, never re-initialised), or "as_given" (a model without batch
    norm whose training state cannot be told and the caller did not say: left as it came).
    bn_stats: the batch-norm running statistics the eval-mode measurement used:
    "calibrated (N images)" (an untrained model's statistics estimated on N seeded images of the
    split, params.calibrate_bn), "identity (uncalibrated)" (an untrained model's fresh mean 0 /
    var 1: every batch norm is the identity), "as given (uncalibrated)" (an untrained model's own
    non-identity statistics, calibration off), "trained", or "none (no batch norm)".
    bn_calibration_images: N (0 when not calibrated).
    """

    kind = "probe_gradvar"
    variance: float
    log10_variance: float
    artifact_std_sum: float
    artifact_var_sum: float
    mean_grad_norm: float
    mean_grad_sq_norm: float
    clipped_fraction: float
    n_samples: int
    n_params: int
    seed: int
    params: dict
    n_unused_params: int = 0  # parameters the eval-mode loss never uses (auxiliary head)
    variance_per_param: float = float("nan")
    log10_variance_per_param: float = float("nan")
    init: str = "as_given"
    bn_stats: str = "not recorded"  # records written before the field existed
    bn_calibration_images: int = 0
    per_tensor: dict = dataclasses.field(default_factory=dict)
    model: str | None = None
    checkpoint: str | None = None
    files: dict = dataclasses.field(default_factory=dict)


def run_gradvar(
    model: nn.Module,
    data: Any,
    params: GradVarParams | dict | None,
    *,
    device: torch.device,
    seed: int,
    out_dir: str | Path | None = None,
    progress: bool = True,
    at_init: bool | None = None,
) -> GradVarRecord:
    """Eq. 14 gradient variance of `model` over `params.n_samples` seeded samples of `data`
    (an ImageDataset). Writes gradvar.png (per-tensor variances) into out_dir when given.

    at_init: whether `model` is untrained; None detects it (`is_untrained`: batch norm counters
    at 0). An untrained model is measured on a copy (the caller's model is not changed) with
    `params.init`: "kaiming" re-initialises it inside `seeded(seed)`, so the CLI and the audit's
    `probe_init` unit give the same number for the same model and seed. Its batch norms are then
    calibrated (`calibrate_batch_norm`) on `params.calibrate_bn` batches of seeded images of the
    split, taken from outside the measured samples when the split is large enough: eval mode with
    fresh running statistics would measure a network whose every batch norm is the identity.
    """
    from nasaudit.infra.device import seeded

    params = make_params(GradVarParams, params, source="probe gradvar")
    images = data.train_images if params.split == "train" else data.test_images
    labels = data.train_labels if params.split == "train" else data.test_labels
    n_total = int(images.shape[0])
    # One seeded permutation: its head is the measured sample (as `sample_indices` draws it),
    # the calibration images come next, wrapping onto the head only for a small split.
    order = sample_indices(n_total, n_total, seed)
    idx = order[: min(params.n_samples, n_total)]
    fresh = is_untrained(model) if at_init is None else bool(at_init)
    init = {True: params.init, False: "trained", None: "as_given"}[fresh]
    has_bn = bool(batch_norm_layers(model))
    calibrate = fresh is True and has_bn and params.calibrate_bn > 0
    if init == "kaiming" or calibrate:
        model = copy.deepcopy(model)
    if init == "kaiming":
        with seeded(seed):
            kaiming_init(model)
    model = model.to(device)
    n_calibration = 0
    if calibrate:
        n_wanted = min(params.calibrate_bn * params.calibration_batch_size, n_total)
        cal_idx = order.roll(-len(idx))[:n_wanted]
        n_calibration = calibrate_batch_norm(
            model, images[cal_idx], batch_size=params.calibration_batch_size, device=device
        )
    bn_stats = _bn_stats_label(model, has_bn, fresh, n_calibration)
    stats = per_sample_grad_variance(
        model,
        None,
        images[idx],
        labels[idx],
        chunk_size=params.chunk_size,
        clip_norm=params.clip_norm,
        artifact_clip=params.artifact_clip,
        per_tensor=True,
        progress=progress,
    )
    record = GradVarRecord(
        variance=stats["variance"],
        log10_variance=stats["log10_variance"],
        artifact_std_sum=stats["artifact_std_sum"],
        artifact_var_sum=stats["artifact_var_sum"],
        mean_grad_norm=stats["mean_grad_norm"],
        mean_grad_sq_norm=stats["mean_grad_sq_norm"],
        clipped_fraction=stats["clipped_fraction"],
        n_samples=stats["n_samples"],
        n_params=stats["n_params"],
        n_unused_params=stats["n_unused_params"],
        variance_per_param=stats["variance"] / max(1, stats["n_params"]),
        log10_variance_per_param=stats["log10_variance"] - math.log10(max(1, stats["n_params"])),
        init=init,
        bn_stats=bn_stats,
        bn_calibration_images=n_calibration,
        seed=seed,
        params=dataclasses.asdict(params),
        per_tensor=stats["per_tensor"],
    )
    if out_dir is not None:
        record.files["plot"] = str(
            _plot_per_tensor(stats["per_tensor"], Path(out_dir) / "gradvar.png")
        )
    return record


def _bn_stats_label(model: nn.Module, has_bn: bool, fresh: bool | None, n_calibration: int) -> str:
    """GradVarRecord.bn_stats: which batch-norm running statistics the measurement used."""
    if not has_bn:
        return "none (no batch norm)"
    if fresh is not True:
        return "trained"
    if n_calibration > 0:
        return f"calibrated ({n_calibration} images)"
    identity = all(
        bool((bn.running_mean == 0).all()) and bool((bn.running_var == 1).all())
        for bn in batch_norm_layers(model)
    )
    return "identity (uncalibrated)" if identity else "as given (uncalibrated)"


def batch_norm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The batch norms of `model` that keep running statistics (the ones eval mode reads)."""
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        and m.track_running_stats
        and m.running_mean is not None
    ]


def calibrate_batch_norm(
    model: nn.Module, images: Tensor, *, batch_size: int, device: torch.device
) -> int:
    """Re-estimate, in place, the running mean and variance of every batch norm of `model` from
    `images` (uint8 [N, C, H, W], or float in [0, 1]); weights are not changed.

    Statistics are reset, then accumulated as a cumulative average over batches of
    `batch_size` (momentum=None), under no_grad, with only the batch norms in train mode: dropout,
    drop path and auxiliary heads stay as in eval mode, so the statistics are those of the network
    the eval-mode probe measures. Momentum and training flags are restored. Returns the number of
    images used (a trailing batch of one is skipped: batch statistics need two).
    """
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 for batch statistics, got {batch_size}")
    bns = batch_norm_layers(model)
    n = int(images.shape[0])
    n_used = n if n % batch_size != 1 else n - 1
    if not bns or n_used < 2:
        return 0
    momenta = [bn.momentum for bn in bns]
    with eval_mode(model), torch.no_grad():
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
            bn.train()
        try:
            for start in range(0, n_used, batch_size):
                model(to_float(images[start : min(start + batch_size, n_used)].to(device)))
        finally:
            for bn, momentum in zip(bns, momenta, strict=True):
                bn.momentum = momentum
    return n_used


MAX_TENSOR_LABELS = 60


def _plot_per_tensor(per_tensor: Mapping[str, float], path: Path) -> Path:
    """Bar chart of log10 Eq. 14 variance per parameter tensor, in module order.

    At most MAX_TENSOR_LABELS tensors are named (every k-th): with a rotated label per tensor a
    150-tensor chart took 1.2 s to draw, with 60 labels 0.6 s, and more cannot be read anyway.
    """
    names = list(per_tensor)
    vals = [math.log10(v) if v > 0 else float("nan") for v in per_tensor.values()]
    every = max(1, -(-len(names) // MAX_TENSOR_LABELS))
    fig, ax = new_figure(figsize=(max(6.0, 0.18 * len(names[::every])), 4.0))
    ax.bar(range(len(names)), vals)
    ax.set_xticks(range(0, len(names), every))
    ax.set_xticklabels(names[::every], rotation=90, fontsize=5)
    if every > 1:
        ax.set_xlabel(f"parameter tensors in module order (every {every}th named)", fontsize=7)
    ax.set_ylabel("log10 Var(g) per tensor")
    ax.set_title("Per-sample gradient variance (Eq. 14)")
    return save_figure(fig, path)


def kaiming_init(model: nn.Module) -> nn.Module:
    """Re-initialise `model` in place with Kaiming (He) normal weights, the same rule for every
    architecture so that variances "at initialisation" compare across models.

    Conv and Linear weights: kaiming_normal_(fan_in, ReLU gain), biases 0; normalisation layers
    (BatchNorm/GroupNorm/LayerNorm with affine): weight 1, bias 0. Draws from torch's global RNG:
    call inside `nasaudit.infra.device.seeded(seed)` for a reproducible model.
    """
    norms = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, norms):
                if getattr(module, "weight", None) is not None:
                    nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
    return model


PROBES = {"gradvar": ProbeSpec(GradVarParams, run_gradvar, at_init=True)}
