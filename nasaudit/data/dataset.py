"""`ImageDataset`: images as uint8 [N, C, H, W] on the CPU, labels, classes and channel statistics."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch


# eq=False: comparing records field by field would compare tensors, which is ambiguous.
@dataclasses.dataclass(frozen=True, eq=False)
class ImageDataset:
    """A labelled image classification dataset held in memory on the CPU.

    Attributes:
        name: canonical dataset name ("cifar10", "cifar100", "imagenet32", "digits").
        train_images / test_images: uint8 `[N, C, H, W]`, contiguous, on the CPU.
        train_labels / test_labels: int64 `[N]` in `0..num_classes-1`.
        num_classes: number of classes (after any class subset).
        mean / std: per-channel statistics of the training images, in [0, 1] pixel units
            (pass them to `build_model`; the model normalises inside).
        classes: human-readable class names, `num_classes` of them.
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        # Catch a malformed record where it is built, not deep inside a training loop.
        for split in ("train", "test"):
            images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if images.dtype != torch.uint8 or images.dim() != 4:
                raise ValueError(f"{split}_images must be uint8 [N, C, H, W], got "
                                 f"{images.dtype} {tuple(images.shape)}")
            if labels.dtype != torch.int64 or labels.shape != (images.shape[0],):
                raise ValueError(f"{split}_labels must be int64 [{images.shape[0]}], got "
                                 f"{labels.dtype} {tuple(labels.shape)}")
        if len(self.classes) != self.num_classes:
            raise ValueError(f"{len(self.classes)} class names for {self.num_classes} classes")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """`(C, H, W)` of every image."""
        return tuple(self.train_images.shape[1:])  # type: ignore[return-value]

    def __repr__(self) -> str:  # the default repr would print every pixel
        return (f"ImageDataset(name={self.name!r}, train={tuple(self.train_images.shape)}, "
                f"test={tuple(self.test_images.shape)}, num_classes={self.num_classes})")


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 `[N, C, H, W]` images, in [0, 1] units.

    Accumulates in float64 over chunks of `chunk` images, so 50k CIFAR images need ~100 MB,
    not a float copy of the whole set. On full CIFAR-10 this gives the usual constants
    (0.4914, 0.4822, 0.4465) / (0.2470, 0.2435, 0.2616).
    """
    if images.shape[0] == 0:
        raise ValueError("cannot compute channel statistics of an empty image set")
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        x = images[start:start + chunk].to(torch.float64)
        total += x.sum(dim=(0, 2, 3))
        total_sq += x.square().sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt()
    return tuple((mean / 255).tolist()), tuple((std / 255).tolist())


def default_data_dir() -> Path:
    """Where datasets live when no `data_dir` is given: `~/.cache/nasaudit/data`."""
    return Path.home() / ".cache" / "nasaudit" / "data"




def canonical_name(name: str) -> str:
    """Normalise a dataset name: CIFAR-10, cifar_10 and Cifar10 all become cifar10."""
    return str(name).lower().replace("-", "").replace("_", "")
