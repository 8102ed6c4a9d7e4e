"""The L-inf PGD primitive (Madry et al. 2018) in pixel space [0, 1], below the trainer and the
attacks.

Adversarial training (`nasaudit.training`) and the attacks (`nasaudit.attacks.pgd`, `.nes`)
share these steps; keeping them on this floor lets the attacks import the trainer and never the
other way round (no import cycle).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def project_linf(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Clip x_adv into the L-inf ball of radius eps around x and into the image box [0, 1]
    (x_adv, x: float [B, C, H, W] in [0, 1]; eps in pixel units). Modifies a new tensor."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)


def uniform_start(x: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
    """x plus uniform noise in [-eps, eps]^d, clipped to [0, 1] (Madry et al.'s random start);
    x float [B, C, H, W], the generator on x's device."""
    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (x + (2.0 * noise - 1.0) * eps).clamp_(0.0, 1.0)


def pgd_untargeted(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    step: float,
    iters: int,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Batched untargeted L-inf PGD: ascend the cross-entropy of the true labels.

    Args:
        model: maps images [B, C, H, W] in [0, 1] to logits [B, K]; used in whatever mode the
            caller set (train mode for adversarial training, eval mode for attacks).
        x: clean images, float [B, C, H, W] in [0, 1].
        y: true labels, int64 [B].
        eps: L-inf radius in pixel units (8/255 in the study).
        step: step size per iteration in pixel units (2/255).
        iters: number of gradient steps.
        random_start: start from a uniform point in the eps-ball (needs `generator` for
            reproducibility; same device as x).
    Returns:
        x_adv: float [B, C, H, W] in [0, 1], ||x_adv - x||_inf <= eps, detached.
    Model parameter gradients are not touched (torch.autograd.grad w.r.t. the input only).
    """
    x = x.detach()
    x_adv = uniform_start(x, eps, generator) if random_start and eps > 0 else x.clone()
    for _ in range(iters):
        x_adv.requires_grad_(True)
        # Sum, not mean: the per-sample gradient sign is what matters, and summing keeps
        # samples independent of the batch size.
        loss = F.cross_entropy(model(x_adv), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = project_linf(x_adv.detach() + step * grad.sign(), x, eps)
    return x_adv.detach()
