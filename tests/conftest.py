"""Shared, session-scoped fixtures: the real CIFAR-10 subset and one small model trained on it.

Training is the expensive part of the suite, so every test module that needs "a trained model"
(attacks, probes, audit) reuses `trained_model` instead of training its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

# 2 cores shared by everyone: one intra-op thread per test process unless told otherwise.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def cifar_subset_dir() -> Path:
    """Path of the real CIFAR-10 subset, `<repo>/../shared/data/cifar10-subset`.

    It holds `cifar-10-batches-py/` (data_batch_1..5 = 5 x 1017 training images, test_batch =
    1017 test images, batches.meta), the standard CIFAR-10 python layout. Skips when absent.
    """
    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-subset"
    if not (path / "cifar-10-batches-py").is_dir():
        pytest.skip(f"CIFAR-10 subset not found at {path}")
    return path


@pytest.fixture(scope="session")
def cifar_subset(cifar_subset_dir: Path):
    """The CIFAR-10 subset as a `nasaudit.data.ImageDataset` (loaded once per session).

    name "cifar10"; train_images uint8 [5085, 3, 32, 32], train_labels int64 [5085];
    test_images uint8 [1017, 3, 32, 32], test_labels int64 [1017]; 10 classes; mean/std are
    the per-channel statistics in [0, 1] pixel units. Tensors are on the CPU; do not modify.
    """
    from nasaudit.data import load_dataset

    return load_dataset("cifar10", cifar_subset_dir)


@pytest.fixture(scope="session")
def digits_data():
    """scikit-learn's digits as an ImageDataset (embedded, no files): uint8 [1438, 3, 32, 32]
    train and [359, 3, 32, 32] test images, 10 classes. The fastest real data set for tests."""
    from nasaudit.data import load_dataset

    return load_dataset("digits")


@dataclasses.dataclass
class TrainedModel:
    """A small model trained on the CIFAR-10 subset, for tests of attacks and probes.

    Fields:
        model: the trained `ImageClassifier`, on the CPU, in eval mode. Shared by the whole
            session: do not train it or change its weights (copy.deepcopy it first).
        model_name: registry name ("tiny_cnn"), to rebuild it with `build_model`.
        model_kwargs: extra `build_model` kwargs ({} for tiny_cnn).
        train_config: the `TrainConfig` it was trained with (the same fields as
            `nasaudit.attacks.Victim`, so `Victim(model, model_name, train_config,
            model_kwargs)` works; poisoning/backdoor/knockoff can retrain with it).
        data: the `cifar_subset` ImageDataset it was trained on (its val split was held out).
        result: the `TrainResult` (history, val_acc, best_val_acc, test_acc, ...).
        checkpoint: the .pth written by the trainer (with its .json sidecar beside it), usable
            as `--checkpoint` for CLI tests (`nasaudit eval/probe/attack ... --checkpoint`).
        test_acc: clean test accuracy in [0, 1] (above 0.3; chance is 0.1).
    """

    model: Any
    model_name: str
    model_kwargs: dict
    train_config: Any
    data: Any
    result: Any
    checkpoint: Path
    test_acc: float


# How the shared model is trained: tiny_cnn, a few epochs of the paper's recipe on the subset.
TRAINED_MODEL_EPOCHS = 6


@pytest.fixture(scope="session")
def trained_model(cifar_subset, tmp_path_factory) -> TrainedModel:
    """tiny_cnn trained for a few epochs on the CIFAR-10 subset (see `TrainedModel`).

    Trained once per session (about 10-20 s on one core); its checkpoint lives under a
    session temporary directory at `models/image/cifar10/tiny_cnn.pth`.
    """
    from nasaudit.training import TrainConfig, train_on_dataset

    config = TrainConfig(epochs=TRAINED_MODEL_EPOCHS, batch_size=64, lr=0.05, seed=0)
    model_dir = tmp_path_factory.mktemp("trained_model") / "models"
    result = train_on_dataset(
        "tiny_cnn", cifar_subset, config, device="cpu", model_dir=model_dir, progress=False
    )
    return TrainedModel(
        model=result.model.eval(),
        model_name="tiny_cnn",
        model_kwargs={},
        train_config=config,
        data=cifar_subset,
        result=result,
        checkpoint=result.checkpoint,
        test_acc=result.test_acc,
    )


@contextlib.contextmanager
def _threads(n: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def torch_threads():
    """`with torch_threads(2): ...` runs a heavy block on two intra-op torch threads (the suite
    runs in one process, so the second core is otherwise idle), then restores the setting."""
    return _threads
