"""The trainer: the study's training recipe, resumable checkpoints, evaluation, adversarial training.

`train_model` trains a given model on given uint8 images (the primitive the attacks reuse for
poisoning, backdoor and knock-off retraining); `train_on_dataset` is the whole job behind
`nasaudit train`: build the model, split a validation set off the training set, train, and only
then score the test set once. Model selection never looks at the test set.

Determinism: every epoch `e` draws its randomness from seeds derived from (config.seed, e): the
loader's shuffle/augmentation (`DeviceLoader.epoch(e)`), torch's global RNG used by drop path
(`nasaudit.infra.device.seeded`, scoped to the epoch) and the PGD random starts. A run resumed from
the checkpoint of epoch k therefore replays epochs k+1.. exactly and ends, on CPU, with the same
weights as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from nasaudit.data import to_float
from nasaudit.infra.checkpoint import (
    check_scheduler_state,
    checkpoint_path,
    genotype_record,
    load_checkpoint_model,
    load_states,
    load_training_state,
    read_sidecar,
    save_training_state,
    sidecar_path,
    versions,
    write_sidecar,
)
from nasaudit.infra.device import (
    autocast,
    generator,
    prepare_model,
    resolve_device,
    seeded,
    stream_seed,
    to_device,
)
from nasaudit.infra.errors import InputError
from nasaudit.models.base import ImageClassifier, count_parameters, eval_mode
from nasaudit.train_config import ADV_TRAIN_METHODS, TrainConfig

__all__ = [
    "ADV_TRAIN_METHODS",
    "TrainConfig",
    "TrainResult",
    "checkpoint_path",
    "epoch_seed",
    "evaluate",
    "load_checkpoint_model",
    "predict_logits",
    "sidecar_path",
    "train_model",
    "train_on_dataset",
]

@dataclasses.dataclass
class TrainResult:
    """What a training run produced.

    `model` is the trained model (on the training device, eval mode). `history` has one dict
    per epoch (epoch, lr, drop_path_prob, train_loss, train_acc, val_loss, val_acc, seconds).
    Accuracies are fractions in [0, 1]; `val_acc` is the last epoch's, `best_val_acc` the best
    over epochs (None without a validation set); `test_acc` is filled only by
    `train_on_dataset`, after training.
    """

    model: ImageClassifier
    epochs_done: int
    history: list[dict[str, Any]]
    val_acc: float | None = None
    test_acc: float | None = None
    val_loss: float | None = None
    test_loss: float | None = None
    train_acc: float | None = None
    best_val_acc: float | None = None
    best_epoch: int | None = None
    checkpoint: Path | None = None


def epoch_seed(seed: int, epoch: int, purpose: str = "") -> int:
    """A 63-bit seed for (run seed, epoch, purpose): independent streams that resume can replay."""
    return stream_seed(seed, epoch, purpose)


def _channels_last(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    # Inputs must match the model's channels_last layout on CUDA to get the fast kernels.
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


@torch.no_grad()
def _batched_logits(model: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int):
    """Yield (start, logits [b, K] on device) over `images` in chunks, model in eval mode."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError("--batch-size", f"batch size must be an integer >= 1, got {batch_size!r}")
    for start in range(0, images.shape[0], batch_size):
        x = to_float(to_device(images[start : start + batch_size], device))
        with autocast(device):
            logits = model(_channels_last(x, device))
        yield start, logits.float()


def evaluate(
    model: nn.Module,
    images_uint8: torch.Tensor,
    labels: torch.Tensor,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 512,
) -> tuple[float, float]:
    """(mean cross-entropy in nats, accuracy in [0, 1]) of `model` on images [N, C, H, W].

    Images are uint8 (or float in [0, 1]); labels int64 [N]. The model runs in eval mode and its
    previous mode is restored. Sums accumulate on the device: one host sync at the end.
    """
    if images_uint8.shape[0] == 0:
        raise InputError("evaluate", "no images to evaluate")
    device = resolve_device(device)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    with eval_mode(model):
        for start, logits in _batched_logits(model, images_uint8, device, batch_size):
            y = to_device(labels[start : start + logits.shape[0]], device)
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(dim=1) == y).sum()
    n = images_uint8.shape[0]
    return float(loss_sum) / n, int(correct) / n


def predict_logits(
    model: nn.Module,
    images_uint8: torch.Tensor,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 512,
) -> torch.Tensor:
    """Logits float32 [N, K] on the CPU for images [N, C, H, W] (uint8, or float in [0, 1])."""
    device = resolve_device(device)
    with eval_mode(model):
        chunks = [logits for _, logits in _batched_logits(model, images_uint8, device, batch_size)]
    if not chunks:
        return torch.zeros(0, getattr(model, "num_classes", 0))
    return torch.cat(chunks).cpu()


class _FrozenBatchNormStats:
    """Context: batch norm layers keep normalising with batch statistics (train mode) but do
    not update their running statistics, and `num_batches_tracked` is restored on exit.

    Used while crafting PGD examples in train mode, so that the 7 attack iterations per batch
    do not count as 7 extra batches in the running mean/variance used at test time.
    """

    def __init__(self, model: nn.Module):
        self.layers = [
            m
            for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
        ]
        self.saved: list[tuple[float | None, torch.Tensor | None]] = []

    def __enter__(self) -> _FrozenBatchNormStats:
        for m in self.layers:
            tracked = m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None
            self.saved.append((m.momentum, tracked))
            m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: unchanged
        return self

    def __exit__(self, *exc: object) -> None:
        for m, (momentum, tracked) in zip(self.layers, self.saved, strict=True):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)
        self.saved.clear()


def _adversarial_batch(
    model: ImageClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
    gen: torch.Generator,
    device: torch.device,
) -> torch.Tensor:
    """PGD examples for adversarial training (Madry et al.), float [B, C, H, W] in [0, 1].

    Following Madry et al., the attack runs on the model in train mode (batch norm with batch
    statistics, as the training step that follows sees it), with two deliberate differences:
    running statistics are frozen during the attack iterations (they would otherwise absorb
    `adv_iters` extra updates per batch), and drop path is switched off so the perturbation
    targets the whole network rather than one random sub-network.
    """
    from nasaudit.adversarial import pgd_untargeted

    drop_prob = model.drop_path_prob
    model.drop_path_prob = 0.0
    try:
        with _FrozenBatchNormStats(model), autocast(device):
            return pgd_untargeted(
                model,
                x,
                y,
                eps=config.adv_eps,
                step=config.adv_step,
                iters=config.adv_iters,
                random_start=config.adv_random_start,
                generator=gen,
            )
    finally:
        model.drop_path_prob = drop_prob


# A history entry's numeric fields, and whether each may be None (no validation split).
_HISTORY_FIELDS = {"lr": False, "drop_path_prob": False, "train_loss": False, "train_acc": False,
                   "val_loss": True, "val_acc": True, "seconds": False}


def _resume_progress(state: dict[str, Any], config: TrainConfig, path: Path) -> tuple[int, list[dict]]:
    """(epochs done, history) of a checkpoint, every field checked before anything trains: an
    epoch in [0, config.epochs], and one well-formed history entry per epoch, numbered 1..epoch.
    A bad checkpoint is refused, so no new checkpoint is ever derived from it."""
    epoch = state.get("epoch", 0)
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= config.epochs:
        raise InputError(path, f"cannot resume: epoch must be a whole number in [0, {config.epochs}], got {epoch!r}")
    history = state.get("history", [])
    if not isinstance(history, list) or len(history) != epoch:
        raise InputError(path, f"cannot resume: history must list the {epoch} epochs done")
    for number, entry in enumerate(history, start=1):
        if not isinstance(entry, dict) or entry.get("epoch") != number:
            raise InputError(path, f"cannot resume: history entry {number} is not epoch {number}'s record")
        for key, may_be_none in _HISTORY_FIELDS.items():
            value = entry.get(key)
            if value is None and may_be_none:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise InputError(path, f"cannot resume: history entry {number} field {key!r} is {value!r}")
    return epoch, [dict(entry) for entry in history]


def _check_resume_config(saved: Any, config: TrainConfig, path: Path) -> None:
    """Resuming with different settings would silently mix two runs: refuse, naming the fields."""
    if saved is None:
        return
    if not isinstance(saved, dict):
        raise InputError(path, f"cannot resume: the checkpoint's config is not a table ({type(saved).__name__})")
    current = config.to_dict()
    differing = [
        f"{k} ({saved[k]!r} -> {current[k]!r})"
        for k in current
        if k in saved and saved[k] != current[k]
    ]
    if differing:
        raise InputError(path, "cannot resume with a different config: " + ", ".join(differing))


def _best(history: list[dict[str, Any]]) -> tuple[float | None, int | None]:
    """(best validation accuracy, its epoch) over the history; the earliest epoch wins ties."""
    scored = [(h["val_acc"], h["epoch"]) for h in history if h.get("val_acc") is not None]
    if not scored:
        return None, None
    best_acc = max(acc for acc, _ in scored)
    return best_acc, min(epoch for acc, epoch in scored if acc == best_acc)


def _accuracies(history: list[dict[str, Any]], test: tuple[float, float] | None = None) -> dict:
    """The sidecar's "accuracies" block from the history (and the test score when known)."""
    last = history[-1] if history else {}
    best_acc, best_epoch = _best(history)
    return {
        "train": last.get("train_acc"),
        "val": last.get("val_acc"),
        "val_loss": last.get("val_loss"),
        "best_val": best_acc,
        "best_epoch": best_epoch,
        "test": None if test is None else test[1],
        "test_loss": None if test is None else test[0],
    }


def _train_epoch(model: ImageClassifier, loader: Any, optimizer: torch.optim.Optimizer, config: TrainConfig,
                 epoch: int, device: torch.device, bar: Any) -> tuple[float, float]:
    """One epoch of SGD steps over `loader`; (mean train loss, train accuracy) of the main head.

    Each step: augment on the device (inside the loader), with `adv_train="pgd"` replace the
    batch by PGD examples (`_adversarial_batch`), forward with `forward_train` so the auxiliary
    head adds `auxiliary_weight` * its loss, clip the gradient norm, step. Losses and hits
    accumulate on the device; the host syncs once, at the end of the epoch."""
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    adv_gen = generator(epoch_seed(config.seed, epoch, "pgd"), device) if config.adv_train else None
    # Drop path draws from torch's global RNG: seed it per epoch, inside this epoch only.
    with seeded(epoch_seed(config.seed, epoch, "torch"), device):
        for x, y in loader.epoch(epoch):
            x = _channels_last(to_float(x), device)
            if config.adv_train:
                x = _adversarial_batch(model, x, y, config, adv_gen, device)
            optimizer.zero_grad(set_to_none=True)
            with autocast(device):
                logits, aux = model.forward_train(x)
                loss_main = F.cross_entropy(logits.float(), y)
                loss = loss_main
                if aux is not None and config.auxiliary_weight > 0:
                    loss = loss + config.auxiliary_weight * F.cross_entropy(aux.float(), y)
            loss.backward()
            if config.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            loss_sum += loss_main.detach() * y.shape[0]
            correct += (logits.detach().argmax(dim=1) == y).sum()
            seen += y.shape[0]
            bar.update(1)
    return float(loss_sum) / max(seen, 1), int(correct) / max(seen, 1)


def _save_epoch(ckpt: Path, model: ImageClassifier, optimizer: torch.optim.Optimizer, scheduler: Any,
                history: list[dict[str, Any]], config: TrainConfig, meta_base: dict[str, Any]) -> None:
    """The resumable state after the last epoch of `history`, atomically, and its sidecar."""
    epoch = history[-1]["epoch"]
    save_training_state(ckpt, {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "epoch": epoch, "history": history,
        "config": config.to_dict(),
    })
    write_sidecar(ckpt, {
        **meta_base, "epoch": epoch, "epochs": config.epochs, "accuracies": _accuracies(history),
        "history": history, "versions": versions(),
    })


def _log_epoch(writer: Any, record: dict[str, Any]) -> None:
    """One epoch's scalars (loss, accuracy, lr; validation when measured) in TensorBoard."""
    step = record["epoch"]
    writer.add_scalar("train/loss", record["train_loss"], step)
    writer.add_scalar("train/accuracy", record["train_acc"], step)
    writer.add_scalar("lr", record["lr"], step)
    if record["val_acc"] is not None:
        writer.add_scalar("val/loss", record["val_loss"], step)
        writer.add_scalar("val/accuracy", record["val_acc"], step)
    writer.flush()


def train_model(
    model: ImageClassifier,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    config: TrainConfig,
    *,
    device: str | torch.device = "cpu",
    val_images: torch.Tensor | None = None,
    val_labels: torch.Tensor | None = None,
    checkpoint_path: str | Path | None = None,
    resume: bool = False,
    log_dir: str | Path | None = None,
    sidecar: dict[str, Any] | None = None,
    progress: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train `model` in place with the study's recipe and return it with its history.

    Args:
        model: an ImageClassifier (pixels in [0, 1] in); moved to `device` (channels_last weights).
        train_images: uint8 [N, C, H, W]; train_labels: int64 [N].
        config: hyper-parameters (`TrainConfig`).
        device: "cpu", "cuda", "auto" or a torch.device. On CUDA the forward runs in bf16 autocast.
        val_images, val_labels: optional held-out split (uint8 [M, C, H, W], int64 [M]) scored
            after every epoch for model selection; never pass the test set here.
        checkpoint_path: where to save (model, optimizer, scheduler, epoch, history) after every
            epoch, atomically, with a JSON sidecar beside it (`nasaudit.infra.checkpoint`).
        resume: continue from `checkpoint_path` if it exists (same config required); on CPU the
            final weights equal those of an uninterrupted run.
        log_dir: TensorBoard directory for per-epoch scalars (loss, accuracy, lr).
        sidecar: extra metadata for the sidecar (model name, genotype, model kwargs, dataset...).
        progress: show a tqdm bar over all training steps.
        on_epoch: called with each epoch's history dict after its checkpoint is written.

    An orchestrator: set up (optimizer, cosine schedule, device loader, resume), then per epoch
    `_train_epoch` (the steps), validation, `_save_epoch` (checkpoint and sidecar) and
    `_log_epoch` (TensorBoard). Reported train loss/accuracy are those of the main head on the
    (possibly adversarial) training batches.
    """
    from nasaudit.data import Augment, DeviceLoader

    config.validate()
    device = resolve_device(device)
    if train_images.shape[0] != train_labels.shape[0] or train_images.shape[0] == 0:
        raise InputError("train_model", "train_images and train_labels must be non-empty and match")
    has_val = val_images is not None and val_labels is not None and val_images.shape[0] > 0
    ckpt = Path(checkpoint_path) if checkpoint_path is not None else None
    if resume and ckpt is None:
        raise InputError("--resume", "resuming needs a checkpoint path")

    model = prepare_model(model, device)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=config.epochs, eta_min=config.lr_min
    )
    augment = Augment(crop_padding=config.crop_padding, flip=config.flip, cutout=config.cutout)
    # drop_last keeps a 1-image final batch away from batch norm (the auxiliary head's 1x1
    # batch norm cannot normalise a single sample); small sets still get their one batch.
    loader = DeviceLoader(
        train_images,
        train_labels,
        config.batch_size,
        device=device,
        shuffle=True,
        augment=augment,
        seed=config.seed,
        drop_last=train_images.shape[0] > config.batch_size,
    )
    if has_val:
        val_images = to_device(val_images, device)
        val_labels = to_device(val_labels, device)

    start_epoch, history = 0, []
    if resume and ckpt is not None and ckpt.is_file():
        state = load_training_state(ckpt)
        _check_resume_config(state.get("config"), config, ckpt)
        start_epoch, history = _resume_progress(state, config, ckpt)
        check_scheduler_state(scheduler.state_dict(), state.get("scheduler"), ckpt)
        load_states([(model, state["model"]), (optimizer, state["optimizer"]),
                     (scheduler, state["scheduler"])], ckpt)

    meta_base = {**(sidecar or {}), "config": config.to_dict(), "seed": config.seed}
    meta_base.setdefault("parameters", count_parameters(model))
    writer = None
    if log_dir is not None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops events a killed run logged past its last checkpoint.
        writer = SummaryWriter(
            log_dir=str(log_dir), purge_step=start_epoch + 1 if start_epoch else None
        )
    bar = tqdm(
        total=config.epochs * len(loader),
        initial=start_epoch * len(loader),
        disable=not progress,
        desc="train",
        unit="batch",
        dynamic_ncols=True,
        leave=False,
    )
    try:
        for epoch in range(start_epoch, config.epochs):
            started = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            drop_prob = config.drop_path_prob * epoch / config.epochs
            model.drop_path_prob = drop_prob
            train_loss, train_acc = _train_epoch(model, loader, optimizer, config, epoch, device, bar)
            scheduler.step()
            record: dict[str, Any] = {
                "epoch": epoch + 1, "lr": lr, "drop_path_prob": drop_prob,
                "train_loss": train_loss, "train_acc": train_acc, "val_loss": None, "val_acc": None,
            }
            if has_val:
                record["val_loss"], record["val_acc"] = evaluate(
                    model, val_images, val_labels, device=device
                )
            record["seconds"] = time.perf_counter() - started
            if not math.isfinite(record["train_loss"]):
                raise FloatingPointError(
                    f"training diverged at epoch {epoch + 1} (loss is not finite)"
                )
            history.append(record)
            if ckpt is not None:
                _save_epoch(ckpt, model, optimizer, scheduler, history, config, meta_base)
            if writer is not None:
                _log_epoch(writer, record)
            bar.set_postfix(
                loss=f"{record['train_loss']:.3f}",
                acc=f"{record['train_acc']:.3f}",
                val=f"{record['val_acc']:.3f}" if has_val else "-",
            )
            if on_epoch is not None:
                on_epoch(record)
    finally:
        bar.close()
        if writer is not None:
            writer.close()

    model.drop_path_prob = 0.0 if not history else history[-1]["drop_path_prob"]
    model.eval()
    last = history[-1] if history else {}
    best_acc, best_epoch = _best(history)
    return TrainResult(
        model=model,
        epochs_done=len(history) if history else start_epoch,
        history=history,
        val_acc=last.get("val_acc"),
        val_loss=last.get("val_loss"),
        train_acc=last.get("train_acc"),
        best_val_acc=best_acc,
        best_epoch=best_epoch,
        checkpoint=ckpt,
    )


def train_on_dataset(
    model_name: str,
    data: Any,
    config: TrainConfig,
    *,
    device: str | torch.device = "cpu",
    model_kwargs: dict[str, Any] | None = None,
    model_dir: str | Path | None = None,
    resume: bool = False,
    log_dir: str | Path | None = None,
    progress: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    on_model: Callable[[ImageClassifier], None] | None = None,
) -> TrainResult:
    """Build `model_name`, train it on `data` (an `ImageDataset`), then score the test set once.

    A validation split (`config.val_fraction` of the training set, `train_val_split` with
    `config.seed`) is held out for per-epoch model selection; the test set is evaluated only
    after training. With `model_dir` the checkpoint goes to `checkpoint_path(model_dir,
    data.name, model_name)` and its sidecar records the model, genotype, kwargs, dataset,
    config, epoch and accuracies (test accuracy added at the end). `on_model` is called with the
    freshly built model (e.g. to print its parameter count).
    """
    from nasaudit.data import train_val_split
    from nasaudit.models.registry import build_model

    config.validate()
    device = resolve_device(device)
    kwargs = dict(model_kwargs or {})
    with seeded(config.seed):
        try:
            model = build_model(
                model_name, data.num_classes, mean=data.mean, std=data.std, **kwargs
            )
        except TypeError as exc:
            raise InputError(
                "--model", f"{model_name!r} does not take {sorted(kwargs)}: {exc}"
            ) from None
    if on_model is not None:
        on_model(model)

    n = data.train_images.shape[0]
    if config.val_fraction > 0:
        train_idx, val_idx = train_val_split(n, config.val_fraction, config.seed)
        val_images, val_labels = data.train_images[val_idx], data.train_labels[val_idx]
    else:
        train_idx, val_images, val_labels = torch.arange(n), None, None
    ckpt = checkpoint_path(model_dir, data.name, model_name) if model_dir is not None else None
    sidecar = {
        "model": model_name,
        "model_kwargs": kwargs,
        "genotype": genotype_record(model_name),
        "dataset": data.name,
        "num_classes": data.num_classes,
        "mean": list(data.mean),
        "std": list(data.std),
        "parameters": count_parameters(model),
        "train_size": int(train_idx.numel()),
        "val_size": 0 if val_images is None else int(val_images.shape[0]),
    }
    result = train_model(
        model,
        data.train_images[train_idx],
        data.train_labels[train_idx],
        config,
        device=device,
        val_images=val_images,
        val_labels=val_labels,
        checkpoint_path=ckpt,
        resume=resume,
        log_dir=log_dir,
        sidecar=sidecar,
        progress=progress,
        on_epoch=on_epoch,
    )
    result.test_loss, result.test_acc = evaluate(
        result.model, data.test_images, data.test_labels, device=device
    )
    if ckpt is not None:
        meta = read_sidecar(ckpt) or dict(sidecar)
        meta["accuracies"] = _accuracies(result.history, (result.test_loss, result.test_acc))
        meta["test_size"] = int(data.test_images.shape[0])
        write_sidecar(ckpt, meta)
    return result
