"""Digits: scikit-learn's bundled 8x8 digits, the embedded default that needs no files."""

from __future__ import annotations

from typing import Any

import torch

from nasaudit.infra.device import generator as make_generator

# Digits: scikit-learn's bundled 8x8 digits, the embedded default that needs no files


def load_digits_arrays(seed: int, test_fraction: float = 0.2) -> tuple[Any, ...]:
    """sklearn digits as uint8 `[N, 3, 32, 32]`, split 80/20 per class with a seeded shuffle.

    The 8x8 images (values 0..16) are scaled to 0..255, upsampled x4 bilinearly and replicated
    to 3 channels, so every CIFAR-shaped model runs on them unchanged.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    small = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) * (255.0 / 16.0)
    big = torch.nn.functional.interpolate(small, scale_factor=4, mode="bilinear", align_corners=False)
    images = big.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)

    # Stratified: every class keeps the same train/test proportion, whatever the seed.
    gen = make_generator(seed)
    test_parts = []
    for label in range(10):
        members = torch.nonzero(labels == label).flatten()
        members = members[torch.randperm(members.numel(), generator=gen)]
        test_parts.append(members[: round(members.numel() * test_fraction)])
    is_test = torch.zeros(labels.numel(), dtype=torch.bool)
    is_test[torch.cat(test_parts)] = True
    return (images[~is_test].numpy(), labels[~is_test].numpy(), images[is_test].numpy(),
            labels[is_test].numpy(), tuple(str(d) for d in range(10)))


