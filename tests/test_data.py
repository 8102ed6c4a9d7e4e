"""Tests of nasaudit.data: loaders, safe pickles and archives, download, splits, augmentation, loader.

Downloads are tested against an http.server on 127.0.0.1 serving archives built here; nothing
leaves the machine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import pickle
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from nasaudit import data
from nasaudit.data import (
    Augment,
    DeviceLoader,
    ImageDataset,
    augment_batch,
    download_cifar,
    load_dataset,
    to_float,
    train_val_split,
)
from nasaudit.infra.device import generator
from nasaudit.infra.errors import InputError

SUBSET = Path(__file__).resolve().parents[2] / "shared/data/cifar10-subset"
CPU = torch.device("cpu")


# --------------------------------------------------------------------------------------------
# Helpers: tiny CIFAR folders and archives
# --------------------------------------------------------------------------------------------


def _batch_bytes(n: int, num_classes: int, label_key: str, seed: int) -> bytes:
    """A CIFAR-style batch pickle (protocol 2, as the official files) with n random images."""
    rng = np.random.default_rng(seed)
    batch = {
        "batch_label": f"batch {seed}",
        "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        label_key: [int(v) for v in rng.integers(0, num_classes, size=n)],
    }
    return pickle.dumps(batch, protocol=2)


def _write_cifar10(folder: Path, n: int = 4) -> Path:
    """The cifar-10-batches-py layout with n images per batch file."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        (folder / name).write_bytes(_batch_bytes(n, 10, "labels", seed=i))
    names = {"label_names": [f"c{k}" for k in range(10)], "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(names, protocol=2))
    return folder


def _cifar10_archive(tmp_path: Path, n: int = 4) -> bytes:
    """A tar.gz holding cifar-10-batches-py/ with tiny batches, as bytes."""
    folder = _write_cifar10(tmp_path / "archive_src" / "cifar-10-batches-py", n)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(folder, arcname="cifar-10-batches-py")
    return buffer.getvalue()


def _tar_with(members: list[tarfile.TarInfo], payload: bytes = b"x") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for info in members:
            if info.isreg():
                info.size = len(payload)
                archive.addfile(info, io.BytesIO(payload))
            else:
                archive.addfile(info)
    return buffer.getvalue()


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _md5(blob: bytes) -> str:
    return hashlib.md5(blob).hexdigest()


# --------------------------------------------------------------------------------------------
# CIFAR from folders
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def subset() -> ImageDataset:
    return load_dataset("cifar10", SUBSET)


def test_cifar10_subset_loads(subset: ImageDataset) -> None:
    assert subset.name == "cifar10" and subset.num_classes == 10
    assert subset.train_images.shape == (5085, 3, 32, 32) and subset.train_images.dtype == torch.uint8
    assert subset.test_images.shape == (1017, 3, 32, 32)
    assert subset.train_labels.dtype == torch.int64 and subset.train_labels.shape == (5085,)
    assert set(subset.train_labels.unique().tolist()) == set(range(10))
    assert subset.classes[0] == "airplane" and len(subset.classes) == 10
    # Statistics of a real CIFAR slice are close to the full set's standard constants.
    assert np.allclose(subset.mean, (0.4914, 0.4822, 0.4465), atol=0.01)
    assert np.allclose(subset.std, (0.2470, 0.2435, 0.2616), atol=0.01)
    assert "5085" in repr(subset)
    with pytest.raises(dataclasses.FrozenInstanceError):
        subset.name = "other"  # type: ignore[misc]


def test_cifar10_folder_itself_and_name_variants() -> None:
    ds = load_dataset("CIFAR-10", SUBSET / "cifar-10-batches-py")
    assert ds.name == "cifar10" and ds.test_images.shape[0] == 1017


def test_cifar_class_subset(subset: ImageDataset) -> None:
    ds = load_dataset("cifar10", SUBSET, num_classes=3)
    assert ds.num_classes == 3 and ds.classes == subset.classes[:3]
    assert int(ds.train_labels.max()) == 2
    assert ds.train_images.shape[0] == int((subset.train_labels < 3).sum())


def test_missing_cifar_is_a_one_line_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no CIFAR-10 data found; pass --download") as info:
        load_dataset("cifar10", tmp_path)
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="cifar-100-python"):
        load_dataset("cifar100", tmp_path)


def test_unknown_dataset_and_bad_class_count() -> None:
    with pytest.raises(InputError, match="unknown dataset 'mnist'"):
        load_dataset("mnist")
    with pytest.raises(InputError, match="--num-classes"):
        load_dataset("digits", num_classes=11)


def test_cifar100_layout_and_numpy1_pickles(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for i, name in enumerate(("train", "test")):
        blob = _batch_bytes(6, 100, "fine_labels", seed=i)
        # The official files were written by numpy 1 (module numpy.core): both spellings load.
        if name == "train":
            blob = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            assert b"numpy.core.multiarray" in blob
        (folder / name).write_bytes(blob)
    meta = {"fine_label_names": [f"f{k}" for k in range(100)], "coarse_label_names": ["x"] * 20}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    ds = load_dataset("cifar100", tmp_path)
    assert ds.num_classes == 100 and ds.classes[99] == "f99"
    assert ds.train_images.shape == (6, 3, 32, 32) and ds.test_images.shape == (6, 3, 32, 32)
    expected = pickle.loads(_batch_bytes(6, 100, "fine_labels", seed=0))
    assert torch.equal(ds.train_images.reshape(6, -1), torch.from_numpy(expected["data"]))


class _Evil:
    """Unpickling this would call open(path, "w"): a visible side effect if it ever ran."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_malicious_pickle_cannot_run_code(tmp_path: Path) -> None:
    folder = _write_cifar10(tmp_path / "cifar-10-batches-py")
    marker = tmp_path / "pwned"
    (folder / "data_batch_3").write_bytes(pickle.dumps({"data": _Evil(str(marker))}, protocol=2))
    with pytest.raises(InputError, match=r"data_batch_3.*global io\.open is not allowed"):
        load_dataset("cifar10", tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("payload, problem", [
    (b"not a pickle at all", "not a valid CIFAR batch file"),
    (pickle.dumps([1, 2, 3], protocol=2), "holds a list"),
    (pickle.dumps({"data": np.zeros((2, 10), np.uint8), "labels": [0, 1]}, protocol=2), "N x 3072"),
    (pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}, protocol=2), "1 entries"),
    (pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": [10]}, protocol=2), "outside 0..9"),
    (pickle.dumps({"data": np.array([None], dtype=object), "labels": []}, protocol=2), "not allowed"),
])
def test_corrupt_cifar_batches(tmp_path: Path, payload: bytes, problem: str) -> None:
    folder = _write_cifar10(tmp_path / "cifar-10-batches-py")
    (folder / "test_batch").write_bytes(payload)
    with pytest.raises(InputError, match=problem) as info:
        load_dataset("cifar10", tmp_path)
    assert info.value.source.endswith("test_batch") and "\n" not in str(info.value)


# --------------------------------------------------------------------------------------------
# Local archives and safe extraction
# --------------------------------------------------------------------------------------------


def test_loads_from_local_archive(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "cifar-10-python.tar.gz").write_bytes(_cifar10_archive(tmp_path, n=3))
    ds = load_dataset("cifar10", data_dir)
    assert ds.train_images.shape == (15, 3, 32, 32) and ds.classes[1] == "c1"
    assert (data_dir / "cifar-10-batches-py" / "data_batch_5").is_file()
    assert not [p for p in data_dir.iterdir() if p.name.startswith(".")]  # no temp leftovers


def _member(name: str, link_to: str | None = None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    if link_to is not None:
        info.type, info.linkname = tarfile.SYMTYPE, link_to
    return info


@pytest.mark.parametrize("member, problem", [
    (_member("../escape"), "escapes"),
    (_member("/etc/escape"), "escapes"),
    (_member("cifar-10-batches-py/../../escape"), "escapes"),
    (_member("cifar-10-batches-py/data_batch_1", link_to="/etc/passwd"), "link"),
])
def test_unsafe_archives_are_refused(tmp_path: Path, member: tarfile.TarInfo, problem: str) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "cifar-10-python.tar.gz").write_bytes(_tar_with([member]))
    with pytest.raises(InputError, match=f"unsafe archive.*{problem}"):
        load_dataset("cifar10", data_dir)
    assert _listing(data_dir) == ["cifar-10-python.tar.gz"]
    assert not (tmp_path / "escape").exists()


def test_archive_without_cifar_folder(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "cifar-10-python.tar.gz").write_bytes(_tar_with([tarfile.TarInfo("readme.txt")]))
    with pytest.raises(InputError, match="archive has no cifar-10-batches-py/data_batch_1"):
        load_dataset("cifar10", data_dir)
    assert _listing(data_dir) == ["cifar-10-python.tar.gz"]


# --------------------------------------------------------------------------------------------
# Download from a loopback HTTP server
# --------------------------------------------------------------------------------------------


class _Server:
    """Serves in-memory files on 127.0.0.1; '/lying/...' claims twice its real length."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.requests = files, 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                server.requests += 1
                lying = self.path.startswith("/lying/")
                body = server.files.get(self.path.removeprefix("/lying"))
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body) * (2 if lying else 1)))
                self.end_headers()
                self.wfile.write(body)  # then close: a lying length becomes a truncated transfer

            def log_message(self, *args) -> None:  # keep test output clean
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return _cifar10_archive(tmp_path_factory.mktemp("archive"), n=4)


@pytest.fixture()
def server(archive: bytes):
    garbage = bytes(range(256)) * 8
    with _Server({"/good.tar.gz": archive, "/half.tar.gz": archive[: len(archive) // 2],
                  "/garbage.tar.gz": garbage}) as srv:
        yield srv


def test_download_verify_extract(tmp_path: Path, server: _Server, archive: bytes) -> None:
    data_dir = tmp_path / "new" / "data"  # created on demand
    folder = download_cifar("cifar10", data_dir, url=f"{server.url}/good.tar.gz", md5=_md5(archive),
                            progress=False)
    assert folder == data_dir / "cifar-10-batches-py"
    assert _listing(data_dir)[0] == "cifar-10-batches-py" and len(_listing(data_dir)) == 8
    assert load_dataset("cifar10", data_dir).train_images.shape == (20, 3, 32, 32)
    # Already there: no second request.
    assert download_cifar("cifar10", data_dir, url=f"{server.url}/good.tar.gz", progress=False) == folder
    assert server.requests == 1


def test_load_dataset_download_flag(tmp_path: Path, server: _Server, archive: bytes,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    local = dataclasses.replace(data.CIFAR_SOURCES["cifar10"], url=f"{server.url}/good.tar.gz",
                                md5=_md5(archive))
    monkeypatch.setitem(data.CIFAR_SOURCES, "cifar10", local)
    ds = load_dataset("cifar10", tmp_path, download=True)
    assert ds.test_images.shape == (4, 3, 32, 32) and server.requests == 1


@pytest.mark.parametrize("path, md5_of, problem", [
    ("/good.tar.gz", "wrong", "checksum mismatch"),
    ("/half.tar.gz", "full", "checksum mismatch"),            # truncated file, official md5
    ("/half.tar.gz", "served", "corrupt or truncated archive"),  # truncated, md5 matches it
    ("/garbage.tar.gz", "served", "corrupt or truncated archive"),
    ("/lying/good.tar.gz", "full", "truncated: got"),           # connection closed early
    ("/missing.tar.gz", "full", "HTTP 404"),
])
def test_failed_downloads_leave_data_dir_unchanged(tmp_path: Path, server: _Server, archive: bytes,
                                                   path: str, md5_of: str, problem: str) -> None:
    served = server.files.get(path.removeprefix("/lying"), b"")
    md5 = {"wrong": "0" * 32, "full": _md5(archive), "served": _md5(served)}[md5_of]
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "keep.txt").write_text("user file")
    with pytest.raises(InputError, match=problem) as info:
        download_cifar("cifar10", data_dir, url=server.url + path, md5=md5, progress=False)
    assert "\n" not in str(info.value)
    assert _listing(data_dir) == ["keep.txt"]
    # A folder the failed download would have created is not left behind either.
    with pytest.raises(InputError):
        download_cifar("cifar10", tmp_path / "fresh", url=server.url + path, md5=md5, progress=False)
    assert not (tmp_path / "fresh").exists()


def test_download_refuses_non_http_urls(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="only http"):
        download_cifar("cifar10", tmp_path, url="file:///etc/passwd", progress=False)
    with pytest.raises(InputError, match="not a downloadable CIFAR"):
        download_cifar("digits", tmp_path, progress=False)


# --------------------------------------------------------------------------------------------
# ImageNet32 and digits
# --------------------------------------------------------------------------------------------


def _imagenet32_batch(path: Path, labels: list[int]) -> None:
    """An official-format npz batch; image i is flat with R, G, B = (label % 256, 100+i, 200)."""
    n = len(labels)
    rows = np.empty((n, 3072), np.uint8)
    rows[:, :1024] = (np.array(labels) % 256).astype(np.uint8)[:, None]  # CHW rows: R plane first
    rows[:, 1024:2048] = (100 + np.arange(n, dtype=np.uint8))[:, None]
    rows[:, 2048:] = 200
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, data=rows, labels=np.array(labels), mean=rows.mean(0))


def test_imagenet32_npz_batches_and_class_subset(tmp_path: Path) -> None:
    root = tmp_path / "imagenet32"
    # Ten batches so that numeric ordering (1, 2, ..., 10) is exercised.
    for k in range(1, 11):
        _imagenet32_batch(root / "Imagenet32_train_npz" / f"train_data_batch_{k}.npz", [k % 5 + 1, 61])
    _imagenet32_batch(root / "Imagenet32_val_npz" / "val_data.npz", [1, 2, 3, 60, 61, 1000])
    (root / "map_clsloc.txt").write_text("n01 1 tench\nn02 2 goldfish\n")

    ds = load_dataset("imagenet32", tmp_path, num_classes=60)
    assert ds.num_classes == 60 and ds.classes[:3] == ("tench", "goldfish", "class_2")
    assert ds.train_images.shape == (10, 3, 32, 32)  # label 61 dropped everywhere
    assert ds.train_labels.tolist() == [k % 5 for k in range(1, 11)]  # 1-based -> 0-based, in order
    assert ds.test_labels.tolist() == [0, 1, 2, 59]
    # CHW decoding: channel 0 holds the original 1-based label, channel 1 the image index.
    assert torch.equal(ds.test_images[:, 0, 5, 7], torch.tensor([1, 2, 3, 60], dtype=torch.uint8))
    assert torch.equal(ds.test_images[:, 1, 0, 0], torch.tensor([100, 101, 102, 103], dtype=torch.uint8))
    assert load_dataset("imagenet32", root).num_classes == 1000


def test_imagenet32_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no ImageNet32 data found"):
        load_dataset("imagenet32", tmp_path)
    _imagenet32_batch(tmp_path / "train_data_batch_1.npz", [1, 2])
    np.savez(tmp_path / "val_data.npz", data=np.zeros((2, 3072), np.uint8), labels=np.array([0, 1]))
    with pytest.raises(InputError, match="val_data.npz: labels outside 1..1000"):
        load_dataset("imagenet32", tmp_path)
    np.savez(tmp_path / "val_data.npz", data=np.array([None], dtype=object), labels=np.array([1]))
    with pytest.raises(InputError, match="not a valid ImageNet32 npz batch"):
        load_dataset("imagenet32", tmp_path)
    (tmp_path / "val_data.npz").write_bytes(b"truncated")
    with pytest.raises(InputError, match="val_data.npz"):
        load_dataset("imagenet32", tmp_path)


def test_digits_embedded_default() -> None:
    ds = load_dataset("digits")
    assert ds.name == "digits" and ds.num_classes == 10 and ds.classes[3] == "3"
    assert ds.train_images.shape[1:] == (3, 32, 32) and ds.train_images.dtype == torch.uint8
    assert ds.train_images.shape[0] + ds.test_images.shape[0] == 1797
    assert 0.18 < ds.test_images.shape[0] / 1797 < 0.22
    assert torch.equal(ds.train_images[:, 0], ds.train_images[:, 2])  # grey, replicated
    assert int(ds.train_images.max()) == 255
    # Stratified: every class has ~20% of its images in the test split.
    per_class = torch.bincount(ds.test_labels, minlength=10).float()
    total = per_class + torch.bincount(ds.train_labels, minlength=10).float()
    assert torch.allclose(per_class / total, torch.full((10,), 0.2), atol=0.02)
    # The split is seeded.
    assert torch.equal(load_dataset("digits", seed=0).test_images, ds.test_images)
    assert not torch.equal(load_dataset("digits", seed=1).test_labels, ds.test_labels)


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def test_train_val_split() -> None:
    train, val = train_val_split(1000, 0.1, seed=3)
    assert train.dtype == val.dtype == torch.int64
    assert val.numel() == 100 and train.numel() == 900
    assert torch.equal(torch.cat([train, val]).sort().values, torch.arange(1000))
    again = train_val_split(1000, 0.1, seed=3)
    assert torch.equal(again[1], val)
    assert not torch.equal(train_val_split(1000, 0.1, seed=4)[1], val)
    assert train_val_split(10, 0.0, seed=0)[1].numel() == 0
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(InputError, match="--val-fraction"):
            train_val_split(10, bad, seed=0)


# --------------------------------------------------------------------------------------------
# Augmentation
# --------------------------------------------------------------------------------------------


def _shifted(img: torch.Tensor, dy: int, dx: int, pad: int) -> torch.Tensor:
    """The H x W window at offset (dy, dx) of `img` zero-padded by `pad` (reference crop)."""
    h, w = img.shape[-2:]
    return torch.nn.functional.pad(img, (pad, pad, pad, pad))[..., dy:dy + h, dx:dx + w]


def _images(b: int = 16, size: int = 10, seed: int = 0) -> torch.Tensor:
    # Values 1..255 so zero padding is distinguishable from image content.
    return torch.randint(1, 256, (b, 3, size, size), generator=generator(seed), dtype=torch.uint8)


def test_crop_is_a_shift_and_flip_is_a_flip() -> None:
    x = _images()
    pad = 4
    out = augment_batch(x, Augment(crop_padding=pad, flip=True), generator(7))
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    seen_offsets, seen_flips = set(), set()
    for i in range(x.shape[0]):
        matches = [(dy, dx, flip)
                   for dy in range(2 * pad + 1) for dx in range(2 * pad + 1) for flip in (False, True)
                   if torch.equal(out[i], to_float(_shifted(x[i], dy, dx, pad).flip(-1) if flip
                                                   else _shifted(x[i], dy, dx, pad)))]
        assert len(matches) == 1, f"image {i}: {matches}"
        seen_offsets.add(matches[0][:2])
        seen_flips.add(matches[0][2])
    assert len(seen_offsets) > 4 and seen_flips == {False, True}  # per-sample, not per-batch


def test_flip_only() -> None:
    x = _images()
    out = augment_batch(x, Augment(crop_padding=0, flip=True), generator(1))
    flipped = [torch.equal(out[i], to_float(x[i].flip(-1))) for i in range(len(x))]
    kept = [torch.equal(out[i], to_float(x[i])) for i in range(len(x))]
    assert all(f != k for f, k in zip(flipped, kept, strict=True)) and any(flipped) and any(kept)


def test_cutout_zeroes_a_square() -> None:
    x = _images(b=64, size=32)
    out = augment_batch(x, Augment(crop_padding=0, flip=False, cutout=16), generator(2))
    unclipped = 0
    for i in range(len(x)):
        zero = (out[i] == 0).all(dim=0)
        ys, xs = torch.nonzero(zero, as_tuple=True)
        assert ys.numel() > 0
        height, width = int(ys.max() - ys.min()) + 1, int(xs.max() - xs.min()) + 1
        assert ys.numel() == height * width and height <= 16 and width <= 16  # a (clipped) square
        assert torch.equal(out[i][:, ~zero], to_float(x[i])[:, ~zero])  # the rest untouched
        unclipped += height == width == 16
    assert unclipped > 0


def test_augmentation_is_deterministic_per_generator_seed() -> None:
    x = _images(b=32, size=32)
    aug = Augment(cutout=16)
    first = augment_batch(x, aug, generator(5))
    assert torch.equal(first, augment_batch(x, aug, generator(5)))
    assert not torch.equal(first, augment_batch(x, aug, generator(6)))
    assert torch.equal(augment_batch(x, Augment(0, False, 0), generator(5)), to_float(x))
    with pytest.raises(InputError):
        Augment(cutout=-1)


# --------------------------------------------------------------------------------------------
# DeviceLoader
# --------------------------------------------------------------------------------------------


def _ids_loader(n: int = 50, **kwargs) -> DeviceLoader:
    """Image i is filled with value i (and labelled i), so batches reveal which images they hold."""
    images = torch.arange(n, dtype=torch.uint8)[:, None, None, None].expand(n, 3, 8, 8).contiguous()
    return DeviceLoader(images, torch.arange(n), kwargs.pop("batch_size", 16), device=CPU, **kwargs)


def test_loader_covers_every_image_once_per_epoch() -> None:
    loader = _ids_loader(shuffle=True)
    assert len(loader) == 4 and len(_ids_loader(shuffle=True, drop_last=True)) == 3
    batches = list(loader.epoch(0))
    assert [len(y) for _, y in batches] == [16, 16, 16, 2]
    labels = torch.cat([y for _, y in batches])
    assert torch.equal(labels.sort().values, torch.arange(50)) and not torch.equal(labels, torch.arange(50))
    x, y = batches[0]
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.allclose(x[:, 0, 0, 0] * 255, y.float())  # images and labels stay paired
    plain = torch.cat([y for _, y in _ids_loader(shuffle=False).epoch(3)])
    assert torch.equal(plain, torch.arange(50))


def test_loader_is_deterministic_per_seed_and_epoch() -> None:
    aug = Augment(cutout=4)

    def run(seed: int, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return list(_ids_loader(shuffle=True, augment=aug, seed=seed).epoch(epoch))

    a, b = run(0, 1), run(0, 1)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b, strict=True))
    assert not torch.equal(a[0][1], run(0, 2)[0][1])
    assert not torch.equal(a[0][1], run(1, 1)[0][1])


def test_loader_iter_walks_epochs() -> None:
    loader = _ids_loader(shuffle=True, seed=9)
    epochs = [torch.cat([y for _, y in loader]) for _ in range(3)]
    for e, labels in enumerate(epochs):
        assert torch.equal(labels, torch.cat([y for _, y in _ids_loader(shuffle=True, seed=9).epoch(e)]))
    assert loader.next_epoch == 3


def test_mid_epoch_resume_reproduces_the_uninterrupted_batches() -> None:
    aug = Augment(crop_padding=2, flip=True, cutout=4)
    full = list(_ids_loader(shuffle=True, augment=aug, seed=11).epoch(4))
    resumed = list(_ids_loader(shuffle=True, augment=aug, seed=11).epoch(4, start_batch=2))
    assert len(resumed) == 2
    for (xf, yf), (xr, yr) in zip(full[2:], resumed, strict=True):
        assert torch.equal(xf, xr) and torch.equal(yf, yr)
    with pytest.raises(ValueError):
        next(_ids_loader(shuffle=False).epoch(0, start_batch=5))


def test_loader_trains_on_subset_shapes(subset: ImageDataset) -> None:
    train, val = train_val_split(len(subset.train_labels), 0.1, seed=0)
    loader = DeviceLoader(subset.train_images[train], subset.train_labels[train], 96,
                          device=CPU, shuffle=True, augment=Augment(cutout=16), seed=0)
    x, y = next(loader.epoch(0))
    assert x.shape == (96, 3, 32, 32) and y.shape == (96,)
    assert len(loader) == -(-len(train) // 96) and len(val) == round(0.1 * 5085)


def test_loader_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="uint8"):
        DeviceLoader(torch.zeros(4, 3, 8, 8), torch.zeros(4, dtype=torch.int64), 2, device=CPU, shuffle=False)
    with pytest.raises(InputError, match="--batch-size"):
        DeviceLoader(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64), 0,
                     device=CPU, shuffle=False)


def test_cli_dataset_names_match_data():
    # The CLI keeps its own copy so that building the parser does not import torch.
    from nasaudit.cli.options import DATASETS as CLI_DATASETS

    assert CLI_DATASETS == data.DATASETS
