"""Safe reading of CIFAR's pickles: a restricted unpickler that builds only dicts, lists, strings,
numbers and plain numeric numpy arrays."""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from nasaudit.infra.errors import InputError

# Safe reading of CIFAR's pickles


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


def read_pickle(path: Path) -> dict:
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


def read_cifar_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR batch file -> (uint8 `[N, 3, 32, 32]`, int64 `[N]`), validated."""
    batch = read_pickle(path)
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


