"""CIFAR-10/100: where the batches live, archive extraction member by member, and download."""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from nasaudit.data.dataset import canonical_name
from nasaudit.data.safe_pickle import read_cifar_batch, read_pickle
from nasaudit.infra.errors import InputError
from nasaudit.infra.limits import MAX_EXTRACTED_BYTES, check_at_most

# CIFAR sources, archives and download


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
    key = canonical_name(name)
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


def load_cifar_arrays(name: str, data_dir: Path, download: bool) -> tuple[Any, ...]:
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
        parts = [read_cifar_batch(folder / f, source.label_key, source.num_classes) for f in files]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    train_x, train_y = read(source.train_files)
    test_x, test_y = read(source.test_files)
    classes: tuple[str, ...] = _CIFAR10_NAMES if name == "cifar10" else tuple(f"class_{i}" for i in range(100))
    if (folder / source.meta_file).is_file():  # optional: class names only
        names = read_pickle(folder / source.meta_file).get(source.names_key)
        if isinstance(names, list) and len(names) == source.num_classes and all(isinstance(n, str) for n in names):
            classes = tuple(names)
    return train_x, train_y, test_x, test_y, classes


