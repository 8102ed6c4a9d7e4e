"""A frozen, faster copy of a trained model for the attacks that only query it.

PGD, NES, HopSkipJump and Knockoff's labelling need the victim's logits and, for PGD, the
gradient with respect to the input; never a weight gradient, never a BatchNorm statistic. For
them an eval-mode network can be rewritten once: every BatchNorm that follows a convolution is
folded into that convolution's weights and bias (exact algebra; fp32 rounding only), and the
parameters stop asking autograd for gradients.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.fx.experimental.optimization import fuse

from nasaudit.models.base import ImageClassifier


def inference_model(model: nn.Module) -> nn.Module:
    """An eval-mode network computing what `model.eval()` computes, faster where it can be.

    For a nasaudit `ImageClassifier` (every registry model and genotype network): a copy with
    each Conv->BatchNorm pair folded into one convolution and frozen parameters. It maps the
    same inputs (float [B, C, H, W]) to the same logits [B, K] to fp32 rounding (about 1e-6
    relative) and supports gradients with respect to its input; `model` itself, its mode and
    its parameters' `requires_grad` are untouched. The folding traces the network with
    torch.fx, so the copy is a GraphModule whose code is generated from nasaudit's own modules
    (a genotype only chooses among registered ops). The copy keeps eval-mode behaviour (no
    drop-path, no BatchNorm statistics) even if switched to train mode.

    Any other module (a caller's wrapper, whose Python side effects tracing would bake in), or
    a network fx cannot trace, is returned itself, switched to eval mode.

    `benchmarks/attacks.py` reports the speed-up on the attacks it serves.
    """
    if not isinstance(model, ImageClassifier):
        return model.eval()
    was_training = model.training
    model.eval()
    try:
        fast = fuse(model, inplace=False)
    except Exception:  # noqa: BLE001 - fx cannot trace it; the model itself is exact
        return model
    model.train(was_training)
    fast.eval()
    for p in fast.parameters():
        p.requires_grad_(False)
    # Folding writes new, contiguous conv weights: back to the format `prepare_model` gives.
    return fast.to(memory_format=torch.channels_last)
