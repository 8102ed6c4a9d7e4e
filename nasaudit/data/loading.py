"""`load_dataset` (every data set by name, `DATASETS`) and seeded train/validation splits."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from nasaudit.data.cifar import CIFAR_SOURCES, load_cifar_arrays
from nasaudit.data.dataset import ImageDataset, canonical_name, channel_stats, default_data_dir
from nasaudit.data.digits import load_digits_arrays
from nasaudit.data.imagenet32 import load_imagenet32_arrays
from nasaudit.infra.device import generator as make_generator
from nasaudit.infra.errors import InputError

DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "imagenet32", "digits")


# load_dataset


def load_dataset(name: str, data_dir: str | Path | None = None, *, download: bool = False,
                 num_classes: int | None = None, seed: int = 0) -> ImageDataset:
    """Load a dataset into an `ImageDataset` (uint8 `[N, 3, 32, 32]` images on the CPU).

    Args:
        name: "cifar10" | "cifar100" | "imagenet32" | "digits" (case, "-" and "_" ignored).
        data_dir: folder with the data (default `default_data_dir()`; unused for digits).
            CIFAR: a folder containing `cifar-10-batches-py` / `cifar-100-python`, that folder
            itself, or a folder holding the official `.tar.gz` (extracted once, safely).
            ImageNet32: a folder with `train_data_batch_1..10.npz` and `val_data.npz`, directly
            or up to two levels below (e.g. `Imagenet32_train_npz/`, `Imagenet32_val_npz/`).
        download: fetch CIFAR from the official site when it is not found (`download_cifar`).
        num_classes: keep only classes `0..num_classes-1` (train and test), e.g. 60 for the
            study's ImageNet32 subset. ImageNet32's 1-based labels are first made 0-based, so
            this keeps the first K official class ids, already numbered 0..K-1. None: all.
        seed: seed of the digits train/test split (the other datasets have fixed splits).

    `mean`/`std` are computed from the (subset) training images, in [0, 1] units.
    Raises InputError for an unknown name, missing or corrupt files, or a bad `num_classes`.
    """
    key = canonical_name(name)
    if key not in DATASETS:
        raise InputError("--dataset", f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    if key in CIFAR_SOURCES:
        train_x, train_y, test_x, test_y, classes = load_cifar_arrays(key, root, download)
    elif key == "imagenet32":
        train_x, train_y, test_x, test_y, classes = load_imagenet32_arrays(root, num_classes)
    else:
        train_x, train_y, test_x, test_y, classes = load_digits_arrays(seed)

    total = len(classes)
    if num_classes is not None:
        if not 1 <= num_classes <= total:
            raise InputError("--num-classes", f"must be between 1 and {total} for {key}, got {num_classes}")
        if num_classes < total:
            train_keep, test_keep = train_y < num_classes, test_y < num_classes
            train_x, train_y = train_x[train_keep], train_y[train_keep]
            test_x, test_y = test_x[test_keep], test_y[test_keep]
            classes = classes[:num_classes]
    if len(train_y) == 0 or len(test_y) == 0:
        raise InputError(root, f"{key} has no {'training' if len(train_y) == 0 else 'test'} images "
                               "for the selected classes")

    train_images = torch.from_numpy(np.ascontiguousarray(train_x))
    mean, std = channel_stats(train_images)
    return ImageDataset(
        name=key,
        train_images=train_images,
        train_labels=torch.from_numpy(np.ascontiguousarray(train_y, dtype=np.int64)),
        test_images=torch.from_numpy(np.ascontiguousarray(test_x)),
        test_labels=torch.from_numpy(np.ascontiguousarray(test_y, dtype=np.int64)),
        num_classes=len(classes),
        mean=mean,
        std=std,
        classes=tuple(classes),
    )



def train_val_split(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices `0..n-1` into disjoint (train, val) int64 index tensors, each sorted.

    `round(n * val_fraction)` indices, chosen by a permutation from a CPU generator seeded with
    `seed`, go to val; the rest to train. Model selection uses val, never the test set.
    """
    if not 0.0 <= val_fraction < 1.0 or math.isnan(val_fraction):
        raise InputError("--val-fraction", f"must be in [0, 1), got {val_fraction}")
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    perm = torch.randperm(n, generator=make_generator(seed))
    n_val = round(n * val_fraction)
    # Sorted indices keep gathers cache-friendly and make the split easy to inspect.
    return perm[n_val:].sort().values, perm[:n_val].sort().values


