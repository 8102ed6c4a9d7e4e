"""Datasets, CIFAR download, train/val splits, and the on-device loader with on-device augmentation.

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
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import gzip
import hashlib
import http.client
import math
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from nasaudit.device import generator as make_generator
from nasaudit.device import to_device
from nasaudit.errors import InputError
from nasaudit.limits import MAX_ARRAY_BYTES, MAX_EXTRACTED_BYTES, check_at_most

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

DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "imagenet32", "digits")


# --------------------------------------------------------------------------------------------
# The dataset record
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Safe reading of CIFAR's pickles
# --------------------------------------------------------------------------------------------


def _safe_reconstruct(subtype: Any, shape: Any, typecode: Any) -> np.ndarray:
    """numpy's array-unpickling entry point, restricted to plain `np.ndarray`."""
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError("only plain numpy arrays are allowed")
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct(np.ndarray, shape, typecode)


def _safe_dtype(*args: Any) -> np.dtype:
    """`np.dtype(...)` that refuses object dtypes (the only way an array could hold code)."""
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError("object arrays are not allowed")
    return dtype


def _safe_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """`_codecs.encode` as protocol-2 pickles use it: str -> bytes in latin1, nothing else."""
    if not isinstance(obj, str) or encoding.replace("-", "").lower() != "latin1":
        raise pickle.UnpicklingError("unexpected use of _codecs.encode")
    return codecs.encode(obj, "latin1", errors)


# The complete list of globals a CIFAR pickle may name. Python 2's cPickle files (the official
# archives) say numpy.core; files re-pickled under numpy 2 say numpy._core.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _safe_dtype,
    ("_codecs", "encode"): _safe_encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that can build dicts, lists, str, bytes, numbers and numeric numpy arrays.

    Any other global (os.system, builtins.eval, ...) raises, so a malicious file cannot run code.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed") from None


def _read_pickle(path: Path) -> dict:
    """Read one CIFAR pickle file (latin1, like the reference loader) into a dict."""
    try:
        with open(path, "rb") as handle:
            obj = _RestrictedUnpickler(handle, encoding="latin1").load()
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except Exception as exc:  # unpickling raises many types on corrupt input
        raise InputError(path, f"not a valid CIFAR batch file ({type(exc).__name__}: {exc})"[:300]) from None
    if not isinstance(obj, dict):
        raise InputError(path, f"not a valid CIFAR batch file (holds a {type(obj).__name__}, not a dict)")
    return obj


def _read_cifar_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR batch file -> (uint8 `[N, 3, 32, 32]`, int64 `[N]`), validated."""
    batch = _read_pickle(path)
    data, labels = batch.get("data"), batch.get(label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise InputError(path, f"'data' must be a uint8 N x 3072 array, got {got}")
    labels = _checked_labels(labels, data.shape[0], num_classes, path, label_key)
    return data.reshape(-1, 3, 32, 32), labels


def _checked_labels(labels: Any, n: int, num_classes: int, path: Path, label_key: str) -> np.ndarray:
    """The labels of a CIFAR batch as int64 `[n]`, checked element by element BEFORE numpy sees
    them: a pickle can make a list of n references to one huge nested list (numpy would expand
    it to gigabytes), and np.asarray would silently truncate 0.5 to 0 or overflow on 2**70."""
    if isinstance(labels, np.ndarray):
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise InputError(path, f"'{label_key}' must be a flat array of integers, got "
                                   f"{labels.dtype} {labels.shape}")
        items: Any = labels
    elif isinstance(labels, list):
        items = labels
    else:
        raise InputError(path, f"'{label_key}' is not a list of integers (got {type(labels).__name__})")
    if len(items) != n:
        raise InputError(path, f"'{label_key}' has {len(items)} entries for {n} images")
    if isinstance(items, list):
        for index, value in enumerate(items):
            if type(value) is not int:  # bool, float, list, str: not a class index
                raise InputError(path, f"'{label_key}'[{index}] must be an integer class index, "
                                       f"got {type(value).__name__} {str(value)[:40]}")
            if not 0 <= value < num_classes:
                raise InputError(path, f"labels outside 0..{num_classes - 1} "
                                       f"('{label_key}'[{index}] is {str(value)[:40]})")
    out = np.asarray(items, dtype=np.int64) if isinstance(items, list) else items
    if out.size and (out.min() < 0 or out.max() >= num_classes):
        raise InputError(path, f"labels outside 0..{num_classes - 1}")
    return out.astype(np.int64, copy=False)


# --------------------------------------------------------------------------------------------
# CIFAR sources, archives and download
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CifarSource:
    """Where a CIFAR variant comes from and how its folder is laid out."""

    title: str                    # "CIFAR-10"
    url: str                      # official archive
    md5: str                      # official md5 of the archive
    folder: str                   # folder inside the archive
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str                # "labels" (CIFAR-10) | "fine_labels" (CIFAR-100)
    names_key: str                # key of the class names in the meta file
    num_classes: int

    @property
    def archive_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def required_files(self) -> tuple[str, ...]:
        return self.train_files + self.test_files


# URLs and md5s of the official "python version" archives (https://www.cs.toronto.edu/~kriz/cifar.html).
CIFAR_SOURCES: dict[str, CifarSource] = {
    "cifar10": CifarSource(
        title="CIFAR-10",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        meta_file="batches.meta",
        label_key="labels",
        names_key="label_names",
        num_classes=10,
    ),
    "cifar100": CifarSource(
        title="CIFAR-100",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        folder="cifar-100-python",
        train_files=("train",),
        test_files=("test",),
        meta_file="meta",
        label_key="fine_labels",
        names_key="fine_label_names",
        num_classes=100,
    ),
}

_CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer",
                  "dog", "frog", "horse", "ship", "truck")


def _cifar_source(name: str) -> CifarSource:
    key = _canonical_name(name)
    if key not in CIFAR_SOURCES:
        raise InputError("--dataset", f"{name!r} is not a downloadable CIFAR dataset "
                                      f"(choose {', '.join(CIFAR_SOURCES)})")
    return CIFAR_SOURCES[key]


def _find_cifar_folder(source: CifarSource, data_dir: Path) -> Path | None:
    """The folder holding the batch files: `data_dir/<folder>` or `data_dir` itself."""
    for candidate in (data_dir / source.folder, data_dir):
        if all((candidate / f).is_file() for f in source.required_files):
            return candidate
    return None


def _safe_members(archive: tarfile.TarFile, path: Path) -> list[tarfile.TarInfo]:
    """All members of `archive`, after checking that extracting them cannot escape the target.

    Only regular files and directories with relative names free of `..` are accepted; links,
    devices and absolute names make the whole archive unsafe (CIFAR archives have none).
    """
    members = []
    for member in archive:
        parts = PurePosixPath(member.name).parts
        if member.name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
            raise InputError(path, f"unsafe archive: member {member.name!r} escapes the target folder")
        if not (member.isreg() or member.isdir()):
            raise InputError(path, f"unsafe archive: member {member.name!r} is a link or special file")
        members.append(member)
    declared = sum(m.size for m in members)
    check_at_most(declared, MAX_EXTRACTED_BYTES, "the bytes its members unpack to", str(path),
                  limit_name="MAX_EXTRACTED_BYTES")
    return members


def _extract_cifar_archive(archive_path: Path, source: CifarSource, data_dir: Path) -> Path:
    """Safely extract a CIFAR `.tar.gz` and move its folder into `data_dir` in one rename.

    The archive is unpacked into a hidden temporary folder inside `data_dir` (same file system,
    so the final `os.replace` is atomic); a corrupt archive or one without the expected files
    raises InputError and the temporary folder is removed, leaving `data_dir` as it was.
    """
    target = data_dir / source.folder
    try:
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{source.folder}.", suffix=".tmp", dir=data_dir))
    except OSError as exc:
        raise InputError(data_dir, f"cannot extract {archive_path.name} here ({exc.strerror or exc})") from None
    try:
        try:
            with tarfile.open(archive_path, mode="r:*") as archive:
                members = _safe_members(archive, archive_path)
                # The "data" filter (Python >= 3.10.12) re-checks names and strips modes;
                # our own check above already refused anything it would refuse.
                extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                archive.extractall(tmp_dir, members=members, **extra)
        except InputError:
            raise
        except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error, ValueError) as exc:
            raise InputError(archive_path, f"corrupt or truncated archive ({type(exc).__name__}: {exc})"[:300]) from None
        except OSError as exc:  # disk full, permissions: the archive may be fine
            raise InputError(data_dir, f"cannot extract {archive_path.name} here ({exc})"[:300]) from None
        extracted = tmp_dir / source.folder
        missing = [f for f in source.required_files if not (extracted / f).is_file()]
        if missing:
            raise InputError(archive_path, f"archive has no {source.folder}/{missing[0]}; "
                                           f"is this the {source.title} python-version archive?")
        try:
            os.replace(extracted, target)
        except OSError:
            # Another process finished first (target now exists and is not empty): use theirs.
            if _find_cifar_folder(source, data_dir) is None:
                raise
        return target
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _fetch(url: str, dest: Any, progress: bool, desc: str) -> str:
    """Stream `url` into the open binary file `dest`; return the md5 hex digest of the bytes.

    Raises InputError on any network error, HTTP error, or a body shorter than its
    Content-Length (a truncated transfer).
    """
    from tqdm import tqdm

    digest = hashlib.md5(usedforsecurity=False)
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            total = response.headers.get("Content-Length")
            total = int(total) if total and total.isdigit() else None
            received = 0
            with tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=not progress) as bar:
                while chunk := response.read(1 << 20):
                    dest.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as exc:
        raise InputError(url, f"download failed (HTTP {exc.code} {exc.reason})") from None
    except urllib.error.URLError as exc:
        raise InputError(url, f"download failed ({exc.reason})") from None
    except (OSError, ValueError, http.client.HTTPException) as exc:  # resets, timeouts, IncompleteRead
        raise InputError(url, f"download interrupted ({type(exc).__name__}: {exc})"[:300]) from None
    if total is not None and received != total:
        raise InputError(url, f"download truncated: got {received} of {total} bytes")
    return digest.hexdigest()


def download_cifar(name: str, data_dir: str | Path, *, url: str | None = None,
                   md5: str | None = None, progress: bool = True) -> Path:
    """Download, verify and extract a CIFAR archive into `data_dir`; return the batch folder.

    Args:
        name: "cifar10" or "cifar100".
        data_dir: folder to hold `cifar-10-batches-py` / `cifar-100-python` (created if needed).
        url: archive URL (http/https); default the official one. A mirror is expected to
            serve the official archive, so the official md5 still applies.
        md5: expected md5 hex digest; default the official archive's. It is always checked.
        progress: show a tqdm progress bar (bytes).

    If the folder already holds the data nothing is downloaded. The archive is streamed to a
    hidden temporary file in `data_dir`, its md5 checked, then extracted into a temporary
    folder that is renamed into place: a failed, truncated or corrupt download raises
    InputError and leaves `data_dir` exactly as it was.
    """
    source = _cifar_source(name)
    data_dir = Path(data_dir).expanduser()
    found = _find_cifar_folder(source, data_dir)
    if found is not None:
        return found
    if (data_dir / source.folder).exists():
        raise InputError(data_dir / source.folder, "exists but is incomplete; remove it and download again")
    url = url or source.url
    expected_md5 = (md5 or source.md5).lower()
    if not url.lower().startswith(("http://", "https://")):
        raise InputError("--url", f"only http(s) URLs can be downloaded, got {url!r}")

    created_dir = not data_dir.exists()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{source.archive_name}.", suffix=".part", dir=data_dir)
    except OSError as exc:
        raise InputError(data_dir, f"cannot write the download here ({exc.strerror or exc})") from None
    tmp_archive = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            actual_md5 = _fetch(url, handle, progress, desc=source.archive_name)
        if actual_md5 != expected_md5:
            raise InputError(url, f"checksum mismatch: md5 {actual_md5}, expected {expected_md5} "
                                  "(corrupt or truncated download)")
        return _extract_cifar_archive(tmp_archive, source, data_dir)
    except BaseException:
        if created_dir:  # leave no trace of a failed download, not even the folder
            tmp_archive.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                data_dir.rmdir()
        raise
    finally:
        tmp_archive.unlink(missing_ok=True)


def _load_cifar(name: str, data_dir: Path, download: bool) -> tuple[Any, ...]:
    """Read CIFAR-10/100 from its folder (extracting a local archive or downloading if needed)."""
    source = CIFAR_SOURCES[name]
    folder = _find_cifar_folder(source, data_dir)
    if folder is None and (data_dir / source.archive_name).is_file():
        folder = _extract_cifar_archive(data_dir / source.archive_name, source, data_dir)
    if folder is None and download:
        folder = download_cifar(name, data_dir)
    if folder is None:
        raise InputError(data_dir, f"no {source.title} data found; pass --download or point --data-dir "
                                   f"at a folder containing {source.folder}")

    def read(files: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        parts = [_read_cifar_batch(folder / f, source.label_key, source.num_classes) for f in files]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    train_x, train_y = read(source.train_files)
    test_x, test_y = read(source.test_files)
    classes: tuple[str, ...] = _CIFAR10_NAMES if name == "cifar10" else tuple(f"class_{i}" for i in range(100))
    if (folder / source.meta_file).is_file():  # optional: class names only
        names = _read_pickle(folder / source.meta_file).get(source.names_key)
        if isinstance(names, list) and len(names) == source.num_classes and all(isinstance(n, str) for n in names):
            classes = tuple(names)
    return train_x, train_y, test_x, test_y, classes


# --------------------------------------------------------------------------------------------
# ImageNet32 (Chrabaszcz et al. 2017, "Downsampled ImageNet"), official npz batches
# --------------------------------------------------------------------------------------------


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


def _load_imagenet32(data_dir: Path, num_classes: int | None) -> tuple[Any, ...]:
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


# --------------------------------------------------------------------------------------------
# Digits: scikit-learn's bundled 8x8 digits, the embedded default that needs no files
# --------------------------------------------------------------------------------------------


def _load_digits(seed: int, test_fraction: float = 0.2) -> tuple[Any, ...]:
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


# --------------------------------------------------------------------------------------------
# load_dataset
# --------------------------------------------------------------------------------------------


def _canonical_name(name: str) -> str:
    """Normalise a dataset name: CIFAR-10, cifar_10 and Cifar10 all become cifar10."""
    return str(name).lower().replace("-", "").replace("_", "")


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
    key = _canonical_name(name)
    if key not in DATASETS:
        raise InputError("--dataset", f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    if key in CIFAR_SOURCES:
        train_x, train_y, test_x, test_y, classes = _load_cifar(key, root, download)
    elif key == "imagenet32":
        train_x, train_y, test_x, test_y, classes = _load_imagenet32(root, num_classes)
    else:
        train_x, train_y, test_x, test_y, classes = _load_digits(seed)

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


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# On-device augmentation
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# The loader
# --------------------------------------------------------------------------------------------

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
