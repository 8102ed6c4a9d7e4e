"""On-device augmentation: batched crop / flip / cutout on uint8 batches, no per-image Python."""

from __future__ import annotations

import dataclasses

import torch

from nasaudit.infra.errors import InputError

# On-device augmentation


@dataclasses.dataclass(frozen=True)
class Augment:
    """Training augmentation, applied on the device by `augment_batch`.

    Attributes:
        crop_padding: pixels of zero padding for the random crop (0 disables the crop).
        flip: random horizontal flip with probability 1/2.
        cutout: side in pixels of the zeroed square (0 disables; the study's option is 16).
    """

    crop_padding: int = 4
    flip: bool = True
    cutout: int = 0

    def __post_init__(self) -> None:
        if self.crop_padding < 0 or self.cutout < 0:
            raise InputError("augment", f"crop_padding and cutout must be >= 0, got {self}")


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1] (same shape and device). Floating-point input is taken
    to be pixels in [0, 1] already and returned unchanged (float64 stays float64 for exact
    numerical checks)."""
    if images.is_floating_point():
        return images
    return images.to(torch.float32).div_(255.0)


def augment_batch(x_uint8: torch.Tensor, aug: Augment, generator: torch.Generator) -> torch.Tensor:
    """Randomly crop, flip and cut out a batch on its device; return float32 `[B, C, H, W]` in [0, 1].

    Args:
        x_uint8: uint8 `[B, C, H, W]` images (on any device).
        aug: what to apply.
        generator: source of all random draws; they are made on `generator.device` and moved
            to the images' device, so a CUDA generator keeps everything on the GPU.

    Per image: the crop takes an `H x W` window of the image zero-padded by `crop_padding`
    on every side (an offset of -p..p pixels in each direction, uniform); the flip mirrors
    the width with probability 1/2; cutout zeroes (in pixel space, i.e. black) a
    `cutout x cutout` square centred uniformly in the image and clipped at its borders, as in
    DARTS's Cutout. Crop and flip are one gather with per-sample row/column indices, cutout is
    a mask from broadcast comparisons: no Python loop over images. The draws happen in a fixed
    order (crop rows, crop cols, flips, cutout rows, cutout cols), so the same generator state
    gives the same output.
    """
    if x_uint8.dtype != torch.uint8 or x_uint8.dim() != 4:
        raise ValueError(f"augment_batch expects uint8 [B, C, H, W], got {x_uint8.dtype} {tuple(x_uint8.shape)}")
    batch, _, height, width = x_uint8.shape
    device, gdev = x_uint8.device, generator.device

    def draw(high: int) -> torch.Tensor:  # B integers uniform in [0, high), on the images' device
        return torch.randint(high, (batch,), generator=generator, device=gdev).to(device, non_blocking=True)

    rows = torch.arange(height, device=device).expand(batch, height)   # [B, H] source rows
    cols = torch.arange(width, device=device).expand(batch, width)     # [B, W] source cols
    pad = aug.crop_padding
    x = x_uint8
    if pad > 0:
        x = torch.nn.functional.pad(x_uint8, (pad, pad, pad, pad))  # zeros, [B, C, H+2p, W+2p]
        rows = rows + draw(2 * pad + 1)[:, None]
        cols = cols + draw(2 * pad + 1)[:, None]
    if aug.flip:
        # Mirroring the crop = reading its columns right to left: fold it into the gather.
        flipped = draw(2).bool()[:, None]
        cols = torch.where(flipped, cols.flip(1), cols)
    if pad > 0 or aug.flip:
        b_idx = torch.arange(batch, device=device)[:, None, None, None]
        c_idx = torch.arange(x.shape[1], device=device)[None, :, None, None]
        x = x[b_idx, c_idx, rows[:, None, :, None], cols[:, None, None, :]]  # [B, C, H, W]
    out = to_float(x)
    if aug.cutout > 0:
        half = aug.cutout // 2
        cy, cx = draw(height)[:, None], draw(width)[:, None]
        ys = torch.arange(height, device=device)[None, :]
        xs = torch.arange(width, device=device)[None, :]
        in_rows = (ys >= cy - half) & (ys < cy - half + aug.cutout)    # [B, H]
        in_cols = (xs >= cx - half) & (xs < cx - half + aug.cutout)    # [B, W]
        mask = in_rows[:, None, :, None] & in_cols[:, None, None, :]    # [B, 1, H, W]
        out = out.masked_fill_(mask, 0.0)
    return out


