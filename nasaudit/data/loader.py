"""`DeviceLoader`: the whole uint8 training set resident on the device, shuffled and augmented
there; the batches of epoch e derive from (seed, e), so a resumed run sees the same batches."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from nasaudit.data.augment import Augment, augment_batch, to_float
from nasaudit.infra.device import generator as make_generator
from nasaudit.infra.device import to_device
from nasaudit.infra.errors import InputError

# The loader

# Independent random streams derived from one seed (numpy's SeedSequence mixes the key well,
# so streams for neighbouring epochs/batches are unrelated).
_SHUFFLE_STREAM, _AUGMENT_STREAM = 0, 1


def _derived_seed(seed: int, *key: int) -> int:
    """A 63-bit seed for the random stream `key` of `seed` (stable across runs and platforms)."""
    sequence = np.random.SeedSequence(entropy=int(seed) % 2**64, spawn_key=tuple(int(k) for k in key))
    return int(sequence.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


class DeviceLoader:
    """Batches from uint8 images kept resident on `device`, augmented there.

    Args:
        images: uint8 `[N, C, H, W]` (copied to `device` once; pinned + non-blocking on CUDA).
        labels: int64 `[N]`.
        batch_size: images per batch.
        device: where the data lives and batches are produced.
        shuffle: visit the images in a fresh random order each epoch.
        augment: an `Augment`, or None for plain uint8 -> [0, 1] conversion (evaluation).
        seed: the run's seed; everything random derives from it.
        drop_last: skip a final short batch.

    `epoch(e)` is a pure function of `(seed, e)`: its order comes from a CPU generator seeded
    from `(seed, e)` (the same on every device) and batch `b`'s augmentation from a generator on
    `device` seeded from `(seed, e, b)`. So a run killed after batch `k` and resumed with
    `epoch(e, start_batch=k + 1)` produces the very batches the uninterrupted run would have.
    Batches are float32 `[B, C, H, W]` in [0, 1] (channels_last on CUDA) and int64 `[B]`.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *,
                 device: torch.device | str, shuffle: bool, augment: Augment | None = None,
                 seed: int = 0, drop_last: bool = False):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape [{images.shape[0]}], got {tuple(labels.shape)}")
        if batch_size < 1:
            raise InputError("--batch-size", f"must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.images = to_device(images.contiguous(), self.device)
        self.labels = to_device(labels.to(torch.int64), self.device)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.augment = augment
        self.seed = int(seed)
        self.drop_last = drop_last
        self.next_epoch = 0  # what __iter__ walks next

    @property
    def num_samples(self) -> int:
        """N, the number of images."""
        return self.images.shape[0]

    def __len__(self) -> int:
        """Batches per epoch."""
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        """The permutation of `0..N-1` epoch `epoch` visits (int64 on `device`)."""
        if not self.shuffle:
            return torch.arange(self.num_samples, device=self.device)
        # Drawn on the CPU so the order is identical on every device; one small copy per epoch.
        gen = make_generator(_derived_seed(self.seed, _SHUFFLE_STREAM, epoch))
        return to_device(torch.randperm(self.num_samples, generator=gen), self.device)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield `(images float [B, C, H, W] in [0, 1], labels int64 [B])` for batches
        `start_batch..len(self)-1` of epoch `epoch`; deterministic per `(seed, epoch)`."""
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch must be in 0..{len(self)}, got {start_batch}")
        order = self.order(epoch)
        channels_last = self.device.type == "cuda"  # matches prepare_model's memory format
        for b in range(start_batch, len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            x = self.images[idx]
            if self.augment is not None:
                gen = make_generator(_derived_seed(self.seed, _AUGMENT_STREAM, epoch, b), self.device)
                x = augment_batch(x, self.augment, gen)
            else:
                x = to_float(x)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels[idx]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch: epoch 0 on the first call, then 1, 2, ... on successive calls."""
        epoch, self.next_epoch = self.next_epoch, self.next_epoch + 1
        return self.epoch(epoch)
