"""Data sets, CIFAR download, train/val splits, and the on-device loader with on-device augmentation.

Everything here follows the package conventions (docs/DESIGN.md):

* Images are `uint8 [N, C, H, W]` at rest (on the CPU inside an `ImageDataset`), and become
  `float32` in `[0, 1]` only batch by batch, on the training device. Models normalise inside, so
  `ImageDataset.mean` / `.std` are just metadata for `build_model(..., mean=, std=)`.
* Dataset files are untrusted input. CIFAR's pickles go through a restricted unpickler that can
  build only dicts, lists, strings, numbers and plain numeric numpy arrays; ImageNet32's npz
  files are read with `allow_pickle=False`; archives are extracted member by member after
  checking every name. Problems raise `InputError(path, problem)` with a one-line message.
* Randomness uses explicit seeds. `DeviceLoader` derives the shuffle of epoch `e` from
  `(seed, e)` and the augmentation of batch `b` from `(seed, e, b)`, so a run resumed in the
  middle of an epoch sees exactly the batches an uninterrupted run would have seen.

Like airbench, the loader keeps the whole uint8 training set resident on the device and does the
crop / flip / cutout there with batched tensor ops: no per-image Python, PIL or worker processes.

Modules: `dataset` (the record), `safe_pickle`, `cifar`, `imagenet32`, `digits` (the sources),
`loading` (`load_dataset`, splits), `augment`, `loader`.
"""

from nasaudit.data.augment import Augment, augment_batch, to_float
from nasaudit.data.cifar import CIFAR_SOURCES, CifarSource, download_cifar
from nasaudit.data.dataset import ImageDataset, channel_stats, default_data_dir
from nasaudit.data.loader import DeviceLoader
from nasaudit.data.loading import DATASETS, load_dataset, train_val_split

__all__ = [
    "CIFAR_SOURCES",
    "DATASETS",
    "Augment",
    "CifarSource",
    "DeviceLoader",
    "ImageDataset",
    "augment_batch",
    "channel_stats",
    "default_data_dir",
    "download_cifar",
    "load_dataset",
    "to_float",
    "train_val_split",
]
