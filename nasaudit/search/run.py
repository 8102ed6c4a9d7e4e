"""A resumable search run: config, data halves, the bi-level loop, checkpoints and outputs.

An epoch is one pass over the architecture half of the training set: each iteration takes one
of its batches plus `n_step` batches from an endless stream over the weight half (so an epoch
costs n_step x as many weight steps as DARTS, which is what n_step buys). The stream position
is the number of real weight steps taken, so a resumed run continues with the very batches the
uninterrupted run would have seen.

Outputs in OUT: config.json (the effective config), checkpoint.pt (atomic, weights-only
loadable), genotype.json (+ genotypes/epoch_NNN.json and .png per epoch), history.json (per
epoch metrics and search cost) and tb/NAME (TensorBoard, NAME = OUT's folder name; see
nasaudit.search.monitor).

What runs when: every `log_every` iterations (not at an epoch's last one) the TensorBoard
scalars, alpha and the gradient-variance monitor (per-sample gradients over `probe_samples`
images); every `checkpoint_every` iterations a checkpoint. At an epoch end, in this order: the
genotype derivation, the DARTS-ES eigenvalue (with `early_stop`), genotype/history files, the
checkpoint, and only then the epoch's TensorBoard summaries (the same as a log plus heatmaps
and the cell drawing), after which the checkpoint is written again marking them done. A run
killed while they are written loses nothing of the epoch: `resume` continues at the next
epoch and first writes that epoch's summaries again (the checkpoint's `monitor` record holds
what they need; the partial events are purged).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from nasaudit.infra.checkpoint import check_scheduler_state, load_states
from nasaudit.infra.errors import InputError
from nasaudit.infra.limits import MAX_SEED
from nasaudit.infra.params import make_params, param
from nasaudit.infra.records import Record
from nasaudit.search.architect import MODES, Architect
from nasaudit.search.hessian import DartsEarlyStop, alpha_hessian_eigenvalue, parse_early_stop
from nasaudit.search.hooks import AlphaHook, parse_hook
from nasaudit.search.objectives import ArchObjective, parse_objective
from nasaudit.search.supernet import CELL_TYPES, Supernet, edge_list

CHECKPOINT_FORMAT = 1
# Intermediate nodes per searched cell: DARTS uses 4; the supernet's edges grow as nodes^2.
MAX_NODES = 16
# Settings that may change between a run and its resumption: they do not change the search.
RESUMABLE_CHANGES = frozenset({"data_dir", "log_every", "checkpoint_every", "max_steps", "probe_samples"})


@dataclasses.dataclass
class SearchConfig:
    """Every setting of a search; defaults are DARTS's (and the study's) search settings."""

    dataset: str = param("cifar10", doc="data set: cifar10, cifar100, imagenet32 or digits")
    data_dir: str | None = param(None, doc="folder with the data set files")
    space: str = param("darts", doc="search space: a shipped name or a .json file")
    C: int = param(16, min=2, doc="initial channels")
    layers: int = param(8, min=1, doc="cells")
    nodes: int = param(4, min=1, max=MAX_NODES, doc="intermediate nodes per cell")
    batch_size: int = param(64, min=1, doc="images per step on each half")
    epochs: int = param(50, min=1, doc="search epochs")
    n_step: int = param(1, min=1, doc="weight steps per architecture step (mitigation i)")
    mode: str = param("first_order", choices=MODES, doc="how the architecture gradient is taken")
    gamma: float = param(1.0, gt=0, max=1, doc="skip_connect penalty (mitigation ii); 1: plain DARTS")
    hooks: tuple[str, ...] = param((), nonempty=False, doc='extra alpha hooks, "name:arg"')
    objectives: tuple[str, ...] = param(
        (), nonempty=False, doc='architecture objectives "NAME:WEIGHT[:KEY=VALUE,...]" added to L_val')
    skip_cap: int | None = param(None, min=0, doc="at most K skip connects per derived cell (DARTS+)")
    early_stop: str | None = param(None, doc='RobustDARTS\'s DARTS-ES, "darts-es[:K[:RATIO]]"')
    hessian_samples: int = param(256, min=0, doc="fixed images for DARTS-ES's eigenvalue (0: all)")
    partial_channels: int = param(1, min=1, doc="PC-DARTS K (1: off)")
    seed: int = param(0, min=0, max=MAX_SEED, doc="seed of initialisation, split and order")
    lr: float = param(0.025, gt=0, doc="weights: SGD learning rate, cosine to lr_min")
    lr_min: float = param(0.001, min=0, doc="weights: final learning rate")
    momentum: float = param(0.9, min=0, doc="weights: SGD momentum")
    weight_decay: float = param(3e-4, min=0, doc="weights: L2 weight decay")
    grad_clip: float = param(5.0, min=0, doc="weights: gradient-norm clip")
    arch_lr: float = param(3e-4, gt=0, doc="alpha: Adam learning rate")
    arch_betas: tuple[float, float] = param((0.5, 0.999), min=0, lt=1, doc="alpha: Adam betas")
    arch_weight_decay: float = param(1e-3, min=0, doc="alpha: weight decay")
    train_portion: float = param(0.5, gt=0, lt=1, doc="share of the training set for the weights")
    train_subset: int | None = param(None, min=2, doc="use only the first N training images")
    augment: bool = param(True, doc="random crop and flip on both halves (as DARTS)")
    log_every: int = param(50, min=0, doc="iterations between TensorBoard logs (0: epoch ends)")
    checkpoint_every: int = param(100, min=0, doc="iterations between checkpoints (0: epoch ends)")
    probe_samples: int = param(32, min=0, doc="images of the gradient-variance monitor (0: off)")
    max_steps: int | None = param(None, min=1, doc="stop (resumably) after this many iterations")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> SearchConfig:
        """Build from plain values (TOML/JSON), rejecting unknown keys, wrong types and values
        out of range (InputError naming `source`)."""
        config = make_params(cls, data, source=source, typed=True)
        config.validate(source)
        return config

    @classmethod
    def from_toml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> SearchConfig:
        """Read a TOML file (flat keys, or a [search] table), then apply `overrides`."""
        from nasaudit.infra.io import read_toml

        path = Path(path)
        data = read_toml(path)
        if isinstance(data.get("search"), dict):
            # Keys beside the [search] table would be silently dropped: say so instead.
            others = [key for key in data if key != "search"]
            if others:
                raise InputError(path, f"{others[0]!r} is outside the [search] table, so it would "
                                       "not be read; move it into [search]")
            data = data["search"]
        return cls.from_dict({**data, **(overrides or {})}, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (tuples become lists)."""
        return {k: list(v) if isinstance(v, (list, tuple)) else v
                for k, v in dataclasses.asdict(self).items()}

    def hook_specs(self) -> list[str]:
        """The named alpha hooks this config applies, gamma's skip penalty first."""
        return ([f"skip_penalty:{self.gamma!r}"] if self.gamma != 1.0 else []) + list(self.hooks)

    def objective_terms(self, source: str = "config") -> list[ArchObjective]:
        """The configured architecture objectives, built (InputError naming `source`)."""
        terms = []
        for spec in self.objectives:
            if not isinstance(spec, str):
                raise InputError(source, f"objectives: {spec!r} is not a term like \"beta:0.5\"")
            try:
                terms.append(parse_objective(spec))
            except InputError as exc:
                raise InputError(source, f"objectives: {exc.problem}") from None
        names = [t.name for t in terms]
        if len(set(names)) != len(names):
            raise InputError(source, f"objectives: each term may appear once, got {', '.join(names)}")
        return terms

    def validate(self, source: str = "config") -> None:
        """Raise InputError for a wrongly typed value, one out of its field's range, or settings
        that contradict each other."""
        make_params(type(self), self, source=source, typed=True)
        checks = [
            (self.mode != "finite_difference" or self.n_step == 1, "mode",
             "finite_difference is the n_step = 1 approximation; use unrolled for n_step > 1"),
            (self.C % (2 * self.partial_channels) == 0,
             "partial_channels", f"C={self.C} must be a multiple of 2 * partial_channels"),
            (len(self.arch_betas) == 2, "arch_betas", "must be two numbers in [0, 1)"),
        ]
        for ok, key, problem in checks:
            if not ok:
                raise InputError(source, f"{key}: {problem}")
        for spec in self.hooks:
            try:
                parse_hook(spec)  # InputError for unknown names or bad arguments
            except InputError as exc:
                raise InputError(source, f"hooks: {exc.problem}") from None
        self.objective_terms(source)  # InputError for unknown names, bad weights or options
        try:
            parse_early_stop(self.early_stop)
        except InputError as exc:
            raise InputError(source, f"early_stop: {exc.problem}") from None
        penalties = [h for h in self.hooks if h.partition(":")[0].strip() == "skip_penalty"]
        if self.gamma != 1.0 and penalties:
            raise InputError(source, f"gamma = {self.gamma:g} and hook {penalties[0]!r} would both "
                                     "penalise skip_connect (applied twice): use one of them")
        if len(penalties) > 1:
            raise InputError(source, f"hooks: skip_penalty given {len(penalties)} times (applied "
                                     "each time): give it once")


@dataclasses.dataclass
class SearchResult(Record):
    """What `run_search` returns (and the CLI prints)."""

    kind = "search_result"
    genotype: Any                  # nasaudit.genotype.Genotype (None before the first epoch end)
    genotype_path: str | None
    out_dir: str
    finished: bool                 # all epochs done (False when stopped by max_steps/callback)
    epochs_done: int
    iterations: int                # search iterations (one alpha step each)
    weight_steps: int
    arch_steps: int
    virtual_steps: int
    history: list                  # one dict per finished epoch (metrics and cost)
    alpha: dict                    # {"alpha_normal": [[...]], ...} raw architecture parameters
    early_stop: dict | None = None  # DartsEarlyStop.state_dict() (+ hessian_samples) when configured


def build_supernet(config: SearchConfig, num_classes: int, *, mean=(0.0, 0.0, 0.0),
                   std=(1.0, 1.0, 1.0), hooks: Sequence[AlphaHook] = ()) -> Supernet:
    """The supernet of `config`, seeded, with the config's named hooks and then `hooks`."""
    from nasaudit.infra.device import seeded
    from nasaudit.search_space import load_search_space

    space = load_search_space(config.space)
    with seeded(config.seed):
        return Supernet(
            space.ops, num_classes, C=config.C, layers=config.layers, nodes=config.nodes,
            partial_channels=config.partial_channels, mean=mean, std=std,
            hooks=[*(parse_hook(s) for s in config.hook_specs()), *hooks],
        )


def _stream(loader, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of `loader` from global batch index `start` on, across its epochs, forever."""
    epoch, batch = divmod(start, len(loader))
    while True:
        yield from loader.epoch(epoch, start_batch=batch)
        epoch, batch = epoch + 1, 0


def _alpha_dict(model: Supernet) -> dict[str, list]:
    return {n: p.detach().cpu().tolist() for n, p in model.named_parameters() if n in model.ARCH_NAMES}


def _data(config: SearchConfig, device: torch.device):
    """(dataset, weight-half loader, architecture-half loader, probe images [P, 3, H, W] in
    [0, 1], probe labels [P], Hessian images [S, 3, H, W] in [0, 1], Hessian labels [S]) for
    `config`; the halves are a seeded split of the training set. The Hessian sample (S =
    hessian_samples, 0: the whole half; empty without early stop) is fixed and unaugmented, so the
    eigenvalues of successive epochs are measured on the same validation images."""
    from nasaudit.data import Augment, DeviceLoader, load_dataset, train_val_split

    data = load_dataset(config.dataset, config.data_dir, seed=config.seed)
    images, labels = data.train_images, data.train_labels
    if config.train_subset:
        images, labels = images[: config.train_subset], labels[: config.train_subset]
    w_idx, a_idx = train_val_split(labels.shape[0], 1.0 - config.train_portion, config.seed)
    aug = Augment() if config.augment else None
    # Two seeds: the halves must not share a shuffle/augmentation stream.
    loaders = [DeviceLoader(images[idx], labels[idx], config.batch_size, device=device, shuffle=True,
                            augment=aug, seed=config.seed + k, drop_last=True)
               for k, idx in enumerate((w_idx, a_idx))]
    if not all(len(loader) for loader in loaders):
        raise InputError("--batch-size", f"{config.batch_size} exceeds a half of the "
                                         f"{labels.shape[0]} training images")
    # The gradient-variance probe: fixed, unaugmented images of the architecture half.
    probe = a_idx[: min(config.probe_samples, a_idx.numel())]
    hessian = a_idx[: (config.hessian_samples or a_idx.numel()) if config.early_stop else 0]
    return (data, *loaders, *(t for idx in (probe, hessian)
                              for t in (images[idx].to(device).float().div_(255.0), labels[idx].to(device))))


def run_search(
    config: SearchConfig, *, out_dir: str | Path, device: str | torch.device = "auto",
    resume: bool = False, progress: bool = True, hooks: Sequence[AlphaHook] = (),
    callback: Callable[[dict[str, Any]], bool | None] | None = None,
    objectives: Sequence[ArchObjective] = (),
) -> SearchResult:
    """Run (or resume) a DARTS-style search as configured; see the module docstring for outputs.

    hooks: extra Python alpha hooks (after the config's named ones); they are not saved, so
    pass the same ones when resuming. callback(info) runs after every iteration with
    {"epoch", "iteration", "global_step", "architect"}; returning True stops the run after a
    checkpoint, as `max_steps` does. resume: continue from OUT/checkpoint.pt when it exists
    (a fresh start otherwise); without it an existing checkpoint is an error, never overwritten.
    objectives: extra Python `ArchObjective` terms (after the config's; not saved either).
    Guards: `skip_cap` caps every derived genotype; `early_stop` (DARTS-ES) computes the top
    eigenvalue of the Hessian of L_val w.r.t. alpha at each epoch end on `hessian_samples` fixed
    images of the architecture half (chunks of batch_size) and, when the rule fires at epoch i,
    ends the search with the genotype of epoch i - k (genotype.json then records the rule's
    state: eigenvalues, windowed means, i and i - k). Checkpoints keep the rule's state with the
    per-epoch genotypes; a resume checks it against the history.
    """
    from nasaudit.infra.device import prepare_model, resolve_device
    from nasaudit.infra.io import atomic_write_json, safe_torch_load

    config.validate()
    device = resolve_device(device)
    out = Path(out_dir)
    ckpt_path = out / "checkpoint.pt"
    state = None
    if resume and ckpt_path.exists():
        state = safe_torch_load(ckpt_path, map_location=device)
        _check_resume(state, config, ckpt_path)
    elif ckpt_path.exists():
        raise InputError(out, "holds a search checkpoint; pass --resume to continue it or use another --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", config.to_dict())

    data, train_loader, val_loader, probe_x, probe_y, hessian_x, hessian_y = _data(config, device)
    model = prepare_model(build_supernet(config, data.num_classes, mean=data.mean, std=data.std,
                                         hooks=hooks), device)
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=config.lr, momentum=config.momentum,
                            weight_decay=config.weight_decay)
    a_opt = torch.optim.Adam(model.arch_parameters(), lr=config.arch_lr,
                             betas=tuple(config.arch_betas), weight_decay=config.arch_weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, config.epochs, eta_min=config.lr_min)
    terms = [*config.objective_terms(), *objectives]
    architect = Architect(model, w_opt, a_opt, mode=config.mode, n_step=config.n_step,
                          grad_clip=config.grad_clip, objectives=terms)
    term_keys = [f"objective/{t.name}" for t in terms]
    iters = len(val_loader)
    # monitor: the epoch-end TensorBoard summaries still to write (None: none pending).
    loop = {"epoch": 0, "step": 0, "history": [], "seconds": 0.0, "sums": None, "monitor": None}
    if state is not None:
        _check_resume_progress(state, config, iters, term_keys, ckpt_path)
        check_scheduler_state(sched.state_dict(), state.get("sched"), ckpt_path)
        load_states([(model, state["model"]), (w_opt, state["w_opt"]), (a_opt, state["a_opt"]),
                     (sched, state["sched"])], ckpt_path)
        for k in ("weight_steps", "arch_steps", "virtual_steps"):
            setattr(architect, k, state["counters"][k])
        loop.update({k: state.get(k) for k in loop})  # "monitor" is absent from older checkpoints
        loop["sums"] = None if state["sums"] is None else {k: v.to(device) for k, v in state["sums"].items()}
    rule = parse_early_stop(config.early_stop)
    tracker = None
    if rule is not None:
        tracker = (DartsEarlyStop(rule) if state is None else
                   _resume_tracker(state, rule, loop, ckpt_path))

    from nasaudit.search.monitor import SearchMonitor, tensorboard_dir

    def early_stop_record() -> dict[str, Any] | None:
        return None if tracker is None else {**tracker.state_dict(), "hessian_samples": int(hessian_x.shape[0])}

    guards: dict[str, Any] = {"skip_cap": config.skip_cap, "skip_cap_replacements": [],
                              "early_stop": early_stop_record()}
    global_step = loop["epoch"] * iters + loop["step"]
    # Events at the checkpoint's step were written before it, so they are kept, unless the
    # epoch-end summaries at that step were pending (possibly half written): those are redone.
    monitor = SearchMonitor(tensorboard_dir(out), model, probe_x=probe_x, probe_y=probe_y,
                            purge_step=None if state is None else global_step + int(loop["monitor"] is None),
                            progress=progress)
    cuda = [device.index or 0] if device.type == "cuda" else []
    genotype, genotype_path = None, None
    # The loop runs on its own copy of torch's global RNG, seeded by the config and saved in
    # checkpoints: user hooks drawing random numbers stay reproducible and resumable, and the
    # caller's RNG is left alone.
    try:
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(config.seed)
            if state is not None:
                # RNG states are CPU byte tensors whatever map_location did to them.
                torch.set_rng_state(state["rng"]["cpu"].cpu())
                for i, s in enumerate(state["rng"]["cuda"]):
                    torch.cuda.set_rng_state(s.cpu(), cuda[i])

            def save() -> None:
                _save_checkpoint(ckpt_path, config, model, w_opt, a_opt, sched, architect, loop, cuda,
                                 None if tracker is None else tracker.checkpoint_state())

            def epoch_end_summaries() -> None:
                # The epoch is checkpointed already: a kill in here resumes after it and redoes this.
                pending = loop["monitor"]
                epoch_done = pending["epoch"]
                monitor.log_epoch_end(epoch_done * iters, epoch_done, pending["metrics"], pending["values"],
                                      model.genotype(config.skip_cap),
                                      out / "genotypes" / f"epoch_{epoch_done:03d}.png")
                loop["monitor"] = None
                save()

            from tqdm.auto import tqdm

            if loop["monitor"] is not None:
                epoch_end_summaries()  # the killed run's, from the very model state it checkpointed
            stop = bool(tracker and tracker.stopped_at)
            while loop["epoch"] < config.epochs and not stop:
                epoch = loop["epoch"]
                architect.epoch, architect.epochs = epoch, config.epochs
                started = time.perf_counter() - loop["seconds"]
                sums = loop["sums"] or _zero_sums(device, term_keys)
                window = _zero_sums(device, term_keys)
                val_batches = val_loader.epoch(epoch, start_batch=loop["step"])
                train_stream = _stream(train_loader, architect.weight_steps)
                bar = tqdm(range(loop["step"], iters), desc=f"search epoch {epoch + 1}/{config.epochs}",
                           disable=not progress, leave=False)
                for i in bar:
                    batches = [next(train_stream) for _ in range(config.n_step)]
                    stats = architect.step(batches, next(val_batches))
                    for k, v in stats.items():
                        sums[k] += v
                        window[k] += v
                    global_step = epoch * iters + i + 1
                    loop.update(step=i + 1, sums=sums, seconds=time.perf_counter() - started)
                    last = i + 1 == iters  # the epoch end logs and checkpoints itself
                    if config.log_every and global_step % config.log_every == 0 and not last:
                        monitor.log(global_step, _metrics(window, w_opt, a_opt), model.genotype(config.skip_cap),
                                    desc=f"epoch {epoch + 1}, step {global_step}: TensorBoard")
                        window = _zero_sums(device, term_keys)
                    info = {"epoch": epoch, "iteration": i, "global_step": global_step,
                            "architect": architect}
                    stop = bool(callback and callback(info)) or (
                        config.max_steps is not None and global_step >= config.max_steps)
                    if stop and not last:
                        save()
                        break
                    if config.checkpoint_every and global_step % config.checkpoint_every == 0 and not last:
                        save()
                bar.close()
                if loop["step"] < iters:
                    break  # stopped mid-epoch
                # End of epoch: schedule, derive, write, log, checkpoint.
                seconds = time.perf_counter() - started
                genotype, guards["skip_cap_replacements"] = model.derive(config.skip_cap)
                metrics = _metrics(sums, w_opt, a_opt)
                if tracker is not None:
                    from nasaudit.genotype import genotype_to_json

                    # Not part of the epoch's cost: a guard, measured after the epoch's steps. In
                    # chunks of batch_size (L_val as the alpha step sees it, one batch in memory);
                    # tol 1e-3 bounds the Lanczos residual; the eigenvalue's error scales with the
                    # residual squared, far below what a ratio test at 0.75 can notice.
                    with _status(f"epoch {epoch + 1} end: alpha Hessian eigenvalue (DARTS-ES)", progress):
                        metrics["hessian/top_eigenvalue"] = alpha_hessian_eigenvalue(
                            model, hessian_x, hessian_y, chunk=config.batch_size, tol=1e-3,
                            seed=config.seed + epoch)
                    tracker.update(epoch + 1, metrics["hessian/top_eigenvalue"], genotype_to_json(genotype))
                    mean = tracker.state_dict()["windowed_means"].get(str(epoch + 1))
                    if mean is not None:
                        metrics["hessian/windowed_mean"] = mean
                    guards["early_stop"] = early_stop_record()
                loop["history"].append({
                    "epoch": epoch + 1, "seconds": seconds, "iterations": iters,
                    "weight_steps": architect.weight_steps, "arch_steps": architect.arch_steps,
                    "virtual_steps": architect.virtual_steps,
                    **{k.replace("/", "_"): v for k, v in metrics.items()},
                    **{f"skip_connects_{c}": sum(op == "skip_connect" for op, _ in getattr(genotype, c))
                       for c in CELL_TYPES},
                })
                genotype_path = _write_outputs(out, config, model, genotype, loop["history"],
                                               {"objectives": [t.describe(config.epochs) for t in terms],
                                                "guards": guards})
                # What the epoch's summaries log, fixed now: the lrs are this epoch's (before
                # sched.step), and a resume rebuilds the summaries from this record.
                loop["monitor"] = {"epoch": epoch + 1, "metrics": _metrics(window, w_opt, a_opt), "values": {
                    "cost/epoch_seconds": seconds, "cost/weight_steps": architect.weight_steps,
                    "cost/arch_steps": architect.arch_steps, "cost/virtual_steps": architect.virtual_steps,
                    **{f"epoch/{k}": v for k, v in metrics.items() if not k.startswith("hessian/")},
                    **{k: v for k, v in metrics.items() if k.startswith("hessian/")},
                }}
                sched.step()
                loop.update(epoch=epoch + 1, step=0, sums=None, seconds=0.0)
                save()  # before the summaries, which can take long on a busy machine
                epoch_end_summaries()
                if tracker is not None and tracker.stopped_at:
                    stop = True
                    genotype, genotype_path = _keep_epoch(out, tracker, early_stop_record())
    finally:
        monitor.close()

    if genotype is None and tracker is not None and tracker.stopped_at:
        # Resumed into a search the early stop ended: its returned epoch's genotype, checked.
        genotype, genotype_path = _keep_epoch(out, tracker, early_stop_record())
    elif genotype is None and loop["history"]:
        # Resumed into a finished run, or stopped mid-epoch: the last epoch end's genotype.
        from nasaudit.genotype import resolve_genotype

        genotype_path = out / "genotype.json"
        genotype = resolve_genotype(str(genotype_path))
    stopped = bool(tracker and tracker.stopped_at)
    return SearchResult(
        genotype=genotype, genotype_path=str(genotype_path) if genotype_path else None,
        out_dir=str(out), finished=loop["epoch"] >= config.epochs or stopped, epochs_done=loop["epoch"],
        iterations=loop["epoch"] * iters + loop["step"], weight_steps=architect.weight_steps,
        arch_steps=architect.arch_steps, virtual_steps=architect.virtual_steps,
        history=loop["history"], alpha=_alpha_dict(model),
        early_stop=early_stop_record(),
    )


def _keep_epoch(out: Path, tracker: DartsEarlyStop, record: dict[str, Any] | None):
    """Make genotype.json the genotype of the epoch DARTS-ES returns (i - k), recording the
    rule's state (`record`); returns (Genotype, path). The epoch's file must hold the genotype
    the search recorded for that epoch (InputError otherwise)."""
    from nasaudit.genotype import genotype_to_json, resolve_genotype
    from nasaudit.infra.io import atomic_write_json, read_json

    source = out / "genotypes" / f"epoch_{tracker.returned_epoch:03d}.json"
    kept = read_json(source)
    if not isinstance(kept, dict) or genotype_to_json(resolve_genotype(str(source))) != tracker.returned_genotype():
        raise InputError(source, f"does not hold the genotype the search recorded for epoch "
                                 f"{tracker.returned_epoch}, which the early stop returns")
    kept.setdefault("guards", {})["early_stop"] = record
    path = out / "genotype.json"
    atomic_write_json(path, kept)
    return resolve_genotype(str(path)), str(path)


def _resume_tracker(state: dict[str, Any], rule, loop: dict[str, Any], path: Path) -> DartsEarlyStop:
    """The early stop's state from a checkpoint, checked against the rule, the finished epochs
    and the history's eigenvalues (InputError naming the checkpoint otherwise)."""
    tracker = DartsEarlyStop.from_checkpoint(state.get("early_stop"), rule, loop["epoch"], path)
    logged = [h.get("hessian_top_eigenvalue") for h in loop["history"]]
    if logged != tracker.values:
        raise InputError(path, "early-stop state: its eigenvalues differ from the history's")
    return tracker


@contextlib.contextmanager
def _status(desc: str, progress: bool) -> Iterator[None]:
    """A one-line tqdm status (`disable=not progress`) shown while a long step with no progress
    of its own runs, so the search never waits in silence."""
    from tqdm.auto import tqdm

    bar = tqdm(total=1, desc=desc, disable=not progress, leave=False)
    try:
        yield
    finally:
        bar.close()


def _zero_sums(device: torch.device, extra: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    keys = ("train_loss", "train_correct", "train_n", "val_loss", "val_correct", "val_n", *extra)
    return {k: torch.zeros((), dtype=torch.float64, device=device) for k in keys}


def _metrics(sums: dict[str, torch.Tensor], w_opt, a_opt) -> dict[str, float]:
    """Means of accumulated sums (one device sync here, none per step) and the lrs."""
    s = {k: float(v) for k, v in sums.items()}
    tn, vn = max(s["train_n"], 1.0), max(s["val_n"], 1.0)
    return {"loss/train": s["train_loss"] / tn, "acc/train": s["train_correct"] / tn,
            "loss/val": s["val_loss"] / vn, "acc/val": s["val_correct"] / vn,
            "lr/weights": w_opt.param_groups[0]["lr"], "lr/arch": a_opt.param_groups[0]["lr"],
            # Objective terms (unweighted), averaged over the validation samples like the loss.
            **{k: v / vn for k, v in s.items() if k.startswith("objective/")}}


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_resume_progress(state: dict[str, Any], config: SearchConfig, iters: int,
                           term_keys: Sequence[str], path: Path) -> None:
    """Every progress field of a search checkpoint, checked before any of it is used: a bad one
    is refused in one line, and no new checkpoint is ever derived from it."""
    def refuse(problem: str) -> None:
        raise InputError(path, f"cannot resume: {problem}")

    epoch, step = state.get("epoch"), state.get("step")
    if not _whole(epoch) or epoch > config.epochs:
        refuse(f"epoch must be a whole number in [0, {config.epochs}], got {epoch!r}")
    if not _whole(step) or step > iters or (epoch == config.epochs and step):
        refuse(f"step must be a whole number in [0, {iters}], got {step!r}")
    history = state.get("history")
    if not isinstance(history, list) or len(history) != epoch or any(
            not isinstance(h, dict) or h.get("epoch") != i for i, h in enumerate(history, start=1)):
        refuse(f"history must hold one record per epoch done, numbered 1..{epoch}")
    seconds = state.get("seconds")
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 <= seconds < float("inf"):
        refuse(f"seconds must be a finite number >= 0, got {seconds!r}")
    counters = state.get("counters")
    if not isinstance(counters, dict) or not all(_whole(counters.get(k)) for k in
                                                 ("weight_steps", "arch_steps", "virtual_steps")):
        refuse("counters must hold weight_steps, arch_steps and virtual_steps as whole numbers")
    sums = state.get("sums")
    wanted = set(_zero_sums(torch.device("cpu"), term_keys))
    if sums is not None and (not isinstance(sums, dict) or set(sums) != wanted or not all(
            isinstance(v, torch.Tensor) and v.numel() == 1 and torch.isfinite(v).all() for v in sums.values())):
        refuse("sums must be the running sums of this search's metrics (finite scalars)")
    pending = state.get("monitor")
    if pending is not None and not (
            isinstance(pending, dict) and set(pending) == {"epoch", "metrics", "values"}
            and _whole(pending["epoch"]) and pending["epoch"] == epoch >= 1 and step == 0
            and all(isinstance(d, dict) and all(isinstance(k, str) and isinstance(v, int | float)
                                                and not isinstance(v, bool) for k, v in d.items())
                    for d in (pending["metrics"], pending["values"]))):
        refuse(f"monitor must be None or the pending TensorBoard summaries of epoch {epoch} "
               "(epoch, metrics, values; numbers by tag)")
    rng = state.get("rng")
    if not isinstance(rng, dict) or not isinstance(rng.get("cpu"), torch.Tensor) or rng["cpu"].dtype != torch.uint8 \
            or not isinstance(rng.get("cuda"), list):
        refuse("rng must hold torch's generator states")
    for key in ("model", "w_opt", "a_opt", "sched"):
        if not isinstance(state.get(key), dict):
            refuse(f"{key} must be a state dict")


def _check_resume(state: Any, config: SearchConfig, path: Path) -> None:
    """The checkpoint must be a search checkpoint of the same search (up to RESUMABLE_CHANGES)."""
    if not isinstance(state, dict) or state.get("kind") != "nasaudit-search":
        raise InputError(path, "not a nasaudit search checkpoint")
    saved, now = state.get("config", {}), config.to_dict()
    if not isinstance(saved, dict):
        raise InputError(path, f"cannot resume: the checkpoint's config is not a table ({type(saved).__name__})")
    # A setting added after the checkpoint was written counts as its default there.
    defaults = SearchConfig().to_dict()
    diff = sorted(k for k in now if k not in RESUMABLE_CHANGES and saved.get(k, defaults[k]) != now[k])
    if diff:
        raise InputError(path, f"was written with other settings ({', '.join(diff)}); "
                               "resume with the same config or use another --out")


def _save_checkpoint(path, config, model, w_opt, a_opt, sched, architect, loop, cuda,
                     early_stop: dict[str, Any] | None = None) -> None:
    from nasaudit.infra.io import atomic_torch_save

    atomic_torch_save({
        "format": CHECKPOINT_FORMAT, "kind": "nasaudit-search", "config": config.to_dict(),
        "model": model.state_dict(), "w_opt": w_opt.state_dict(), "a_opt": a_opt.state_dict(),
        "sched": sched.state_dict(),
        "rng": {"cpu": torch.get_rng_state(), "cuda": [torch.cuda.get_rng_state(d) for d in cuda]},
        "counters": {k: getattr(architect, k) for k in ("weight_steps", "arch_steps", "virtual_steps")},
        **{k: loop[k] for k in ("epoch", "step", "history", "seconds", "monitor")},
        "sums": None if loop["sums"] is None else {k: v.detach().clone() for k, v in loop["sums"].items()},
        "early_stop": early_stop,  # DartsEarlyStop.checkpoint_state(), None without the rule
    }, path)


def _write_outputs(out: Path, config: SearchConfig, model: Supernet, genotype, history: list,
                   record: dict[str, Any] | None = None) -> str:
    """genotype.json (+ a per-epoch copy) and history.json; returns the JSON path. `record`:
    extra keys saying how the genotype was found (objectives with their weights, guards)."""
    from nasaudit.genotype import write_genotype
    from nasaudit.infra.io import atomic_write_json

    epoch = history[-1]["epoch"]
    with torch.no_grad():
        weights = {c: model.op_weights(c).cpu().tolist() for c in CELL_TYPES}
    extra = {
        "search": config.to_dict(), "seed": config.seed, "epoch": epoch,
        "ops": list(model.ops), "edges": [list(e) for e in edge_list(model.nodes)],
        "alpha": _alpha_dict(model), "effective_weights": weights,
        "epoch_seconds": [h["seconds"] for h in history],
        "search_cost": {k: history[-1][k] for k in ("weight_steps", "arch_steps", "virtual_steps")},
        **(record or {}),
    }
    name = f"search_{config.dataset}_seed{config.seed}"
    path = write_genotype(out / "genotype.json", genotype, name, **extra)
    write_genotype(out / "genotypes" / f"epoch_{epoch:03d}.json", genotype, f"{name}_epoch{epoch}", **extra)
    atomic_write_json(out / "history.json", history)
    return str(path)


def format_seconds(seconds: float) -> str:
    """'1h02m03s' / '2m03s' / '3.4s'."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(math.floor(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
