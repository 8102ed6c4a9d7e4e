"""ImageNet32 (Chrabaszcz et al. 2017, "Downsampled ImageNet"): the official npz batches, read
with allow_pickle=False and every declared array size checked first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nasaudit.infra.errors import InputError
from nasaudit.infra.limits import MAX_ARRAY_BYTES, check_at_most

# ImageNet32 (Chrabaszcz et al. 2017, "Downsampled ImageNet"), official npz batches


def _find_files(data_dir: Path, pattern: str) -> list[Path]:
    """Files matching `pattern` in `data_dir` or up to two folder levels below it.

    The official zips unpack to `Imagenet32_train_npz/` and `Imagenet32_val_npz/`, and users
    often put both under an `imagenet32/` folder.
    """
    for depth in range(3):
        found = sorted(data_dir.glob("/".join(["*"] * depth + [pattern])))
        if found:
            return found
    return []


def _check_declared_arrays(npz: Any, path: Path) -> None:
    """Bound every array an npz declares before any is allocated: at most MAX_ARRAY_BYTES, and
    no larger than its member's stored size says it can be (a small file cannot declare 4 GB)."""
    for info in npz.zip.infolist():
        with npz.zip.open(info) as member:
            version = np.lib.format.read_magic(member)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise InputError(path, f"array {info.filename!r} has npy format {version}, not 1.0 or 2.0")
            shape, _, dtype = read_header(member)
        declared = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        check_at_most(declared, MAX_ARRAY_BYTES, f"array {info.filename!r}'s declared size", str(path),
                      limit_name="MAX_ARRAY_BYTES")
        if declared > info.file_size:
            raise InputError(path, f"array {info.filename!r} declares {declared:,} bytes but stores "
                                   f"{info.file_size:,}: a damaged or hostile npz")


def _read_imagenet32_npz(path: Path, keep: int) -> tuple[np.ndarray, np.ndarray]:
    """One npz batch -> images of classes `< keep` (uint8 `[n, 3, 32, 32]`) and 0-based labels."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            _check_declared_arrays(npz, path)
            data, labels = npz["data"], npz["labels"]
    except InputError:
        raise
    except KeyError as exc:
        raise InputError(path, f"npz batch has no {exc} array") from None
    except Exception as exc:  # zipfile/numpy errors on corrupt files, pickle refusal
        raise InputError(path, f"not a valid ImageNet32 npz batch ({type(exc).__name__}: {exc})"[:300]) from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise InputError(path, f"'data' must be a uint8 N x 3072 array, got {data.dtype} {data.shape}")
    labels = np.asarray(labels).reshape(-1)
    if labels.shape[0] != data.shape[0] or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(path, f"'labels' must be {data.shape[0]} integers, got {labels.dtype} {labels.shape}")
    labels = labels.astype(np.int64) - 1  # the official files number classes 1..1000
    if labels.size and (labels.min() < 0 or labels.max() >= 1000):
        raise InputError(path, "labels outside 1..1000")
    mask = labels < keep  # subset before concatenating: the full train set is 3.8 GB
    return data[mask].reshape(-1, 3, 32, 32), labels[mask]


def _imagenet32_class_names(data_dir: Path, keep: int) -> tuple[str, ...]:
    """Names from an optional `map_clsloc.txt` ("n02119789 1 kit_fox" lines), else "class_i"."""
    names = [f"class_{i}" for i in range(keep)]
    found = _find_files(data_dir, "map_clsloc.txt")
    if found:
        for line in found[0].read_text(encoding="utf-8", errors="replace").splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[1].isdigit() and 1 <= int(fields[1]) <= keep:
                names[int(fields[1]) - 1] = fields[2]
    return tuple(names)


def load_imagenet32_arrays(data_dir: Path, num_classes: int | None) -> tuple[Any, ...]:
    """Read ImageNet32's `train_data_batch_*.npz` and `val_data.npz` (the val set is the test set)."""
    train_files = _find_files(data_dir, "train_data_batch_*.npz")
    val_files = _find_files(data_dir, "val_data.npz")
    if not train_files or not val_files:
        what = "train_data_batch_*.npz" if not train_files else "val_data.npz"
        raise InputError(data_dir, f"no ImageNet32 data found ({what} missing); download the npz batches "
                                   "from https://image-net.org/download-images and point --data-dir at them")
    # Numeric order, so batch 10 comes after batch 9 (a plain sort puts it after batch 1).
    train_files.sort(key=lambda p: (p.parent, int("".join(c for c in p.stem if c.isdigit()) or 0)))
    keep = 1000 if num_classes is None else num_classes
    if not 1 <= keep <= 1000:
        raise InputError("--num-classes", f"must be between 1 and 1000 for imagenet32, got {keep}")
    parts = [_read_imagenet32_npz(p, keep) for p in train_files]
    train_x, train_y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    test_x, test_y = _read_imagenet32_npz(val_files[0], keep)
    return train_x, train_y, test_x, test_y, _imagenet32_class_names(data_dir, keep)


