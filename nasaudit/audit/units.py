"""Doing one unit of the plan: a pure function from a `UnitJob` to a `UnitOutcome`.

`execute_unit` is what every engine runs, in the driver's process (local) or in a Ray task.
It never opens results.sqlite: it returns the unit's record and the driver commits it
(`record_outcome`), so the database has exactly one writer. What a unit writes to disk (a
checkpoint, TensorBoard events, probe arrays, attack work files) goes under the run
directory, which every node must see (shared storage).

A unit that fails for its own reasons (bad input, out of memory, a full disk) returns a
``failed`` outcome with a one-line error; only the death of the process running it escapes,
and that is the engine's business (Ray retries the task). A retried training resumes from its
last epoch checkpoint: each attempt leaves a marker (`attempt_marker`) that the next attempt
of the same run finds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nasaudit.audit.config import AuditConfig
from nasaudit.audit.plan import (
    ModelPlan,
    Plan,
    Unit,
    concrete_params,
    search_config,
    train_settings,
)
from nasaudit.infra.errors import InputError, describe_os_error, first_line
from nasaudit.infra.records import Record


# --------------------------------------------------------------------------------------------
# Records the audit itself produces (attacks and probes bring their own).
# --------------------------------------------------------------------------------------------
@dataclass
class ModelInfo(Record):
    """What a model is: its genotype and cell metrics (None for manual baselines), its size."""

    kind = "model_info"
    label: str
    spec: str
    group: str
    parameters: int  # trainable parameters, excluding any auxiliary head
    kwargs: dict[str, Any]
    genotype: dict[str, Any] | None = None  # canonical genotype JSON
    genotype_hash: str | None = None
    cells: dict[str, Any] | None = None  # analyze_genotype(): {"normal": {...}, "reduce": {...}}
    mitigation_of: str | None = None


@dataclass
class TrainSummary(Record):
    """One training run (or a matching checkpoint reused)."""

    kind = "train_summary"
    label: str
    checkpoint: str  # relative to the audit's output directory when inside it
    reused_checkpoint: bool
    epochs_done: int
    val_acc: float | None
    test_acc: float | None
    config: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ImportSummary(Record):
    """A pretrained model read into the audit's checkpoint (its import unit, instead of training)."""

    kind = "import_summary"
    label: str
    checkpoint: str  # the nasaudit checkpoint written, relative to the audit's output directory
    source: str  # the pretrained file
    sha256: str
    format: str  # its layout (nasaudit.pretrained.LAYOUTS)
    detected: str  # "given" or what auto recognised
    mean: list[float]
    std: list[float]
    normalization_from: str
    genotype_hash: str | None
    trained_on: str | None
    config: dict[str, Any]  # the recipe recorded as its TrainConfig
    reused_checkpoint: bool
    notes: list[str] = field(default_factory=list)


@dataclass
class CleanAccuracy(Record):
    """Clean test loss and accuracy of a trained model (the study's Table 1)."""

    kind = "clean_accuracy"
    label: str
    test_loss: float
    test_acc: float  # in [0, 1]
    n_test: int


@dataclass
class SearchSummary(Record):
    """A finished architecture search and the genotype it chose."""

    kind = "search_summary"
    name: str
    genotype: dict[str, Any]  # canonical genotype JSON
    genotype_hash: str
    genotype_path: str
    config: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# What travels to a task and back
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UnitJob:
    """Everything one unit needs, picklable (sent to a Ray task as is).

    `model` is the unit's (model, seed) with `genotype_hash` filled in by the driver for a
    searched model; `data` is the loaded ImageDataset (a Ray task gets it from the object store)
    or None to load it from the config.
    """

    config: AuditConfig
    unit: Unit
    model: ModelPlan | None
    device: str  # "auto" | "cpu" | "cuda" | "cuda:N"
    resume: bool
    run_id: str
    progress: bool = False


@dataclass(frozen=True)
class UnitOutcome:
    """What a unit produced: its record (status "done") or its error (status "failed")."""

    status: str
    result: dict[str, Any] | None
    error: str | None
    started: float
    finished: float
    device: str
    host: str
    pid: int
    attempt: int = 1


class UnitContext:
    """Per-process state of one executor: the data set and the trained networks it loaded.

    The local engine keeps one for the whole run (a (model, seed)'s checkpoint is loaded once for
    all its attacks); a Ray task builds a fresh one.
    """

    def __init__(self, data: Any = None, keep_models: int = 1):
        self.data = data
        self.keep_models = keep_models
        self._models: dict[str, Any] = {}

    def dataset(self, config: AuditConfig):
        """The audit's ImageDataset (loaded on first use)."""
        if self.data is None:
            from nasaudit.data import load_dataset

            ds = config.dataset
            self.data = load_dataset(ds.name, ds.data_dir, download=ds.download,
                                     num_classes=ds.num_classes, seed=config.seeds[0])
        return self.data

    def trained(self, key: str, load):
        """The network cached under `key`, or `load()` (keeps the `keep_models` latest)."""
        if key not in self._models:
            while self._models and len(self._models) >= self.keep_models:
                self._models.pop(next(iter(self._models)))
            self._models[key] = load()
        return self._models[key]

    def forget(self, key: str) -> None:
        """Drop a cached network (its checkpoint was just rewritten)."""
        self._models.pop(key, None)


# --------------------------------------------------------------------------------------------
# Paths of a (model, seed)
# --------------------------------------------------------------------------------------------
def model_dir(config: AuditConfig, model: ModelPlan) -> Path:
    """Where a (model, seed) keeps its checkpoint; the model key names it, so the same spec,
    genotype, kwargs, data set and training config share a directory."""
    return config.out_dir / "checkpoints" / f"{model.label}-s{model.seed}-{model.model_key[:12]}"


def checkpoint_file(config: AuditConfig, model: ModelPlan, dataset_name: str) -> Path:
    from nasaudit.training import checkpoint_path

    return checkpoint_path(model_dir(config, model), dataset_name, model.build_name)


def attempt_marker(config: AuditConfig, run_id: str, unit_key: str) -> Path:
    """The file an attempt of `unit_key` in run `run_id` leaves behind (pid, host, attempt)."""
    return config.out_dir / "work" / ".attempts" / run_id / f"{unit_key}.json"


def _rel(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _result_dict(result: Any) -> dict[str, Any]:
    if hasattr(result, "to_dict"):
        return result.to_dict()
    if dataclasses.is_dataclass(result):
        from nasaudit.infra.records import _plain

        return {"kind": type(result).__name__, **_plain(result)}
    raise TypeError(f"unit returned {type(result).__name__}, not a Record")


# --------------------------------------------------------------------------------------------
# Checkpoint reuse: only what this unit itself would have written
# --------------------------------------------------------------------------------------------
def checkpoint_matches(path: Path, model: ModelPlan, cfg: Any, data: Any) -> str | None:
    """None when the sidecar beside `path` describes exactly this (model, seed): the same
    training config, kwargs, data set, class count and genotype hash (or manual model name).
    Otherwise the reason it does not (a foreign or stale checkpoint is never reused)."""
    from nasaudit.infra.checkpoint import read_sidecar

    try:
        meta = read_sidecar(path)
    except (InputError, OSError) as exc:
        return f"unreadable sidecar ({exc})"
    if meta is None:
        return "no sidecar"
    if meta.get("config") != cfg.to_dict():
        return "training config differs"
    if meta.get("model_kwargs") != dict(model.spec.kwargs):
        return "model kwargs differ"
    if meta.get("dataset") != data.name or meta.get("num_classes") != data.num_classes:
        return "data set differs"
    record = meta.get("genotype")
    if model.genotype_hash is None:
        if record is not None or meta.get("model") != model.build_name:
            return "model differs"
        return None
    from nasaudit.genotype import genotype_hash

    try:
        from nasaudit.infra.checkpoint import _genotype_from_record

        found = genotype_hash(_genotype_from_record(record, path)) if isinstance(record, dict) else None
    except InputError:
        found = None
    return None if found == model.genotype_hash else "genotype differs"


def _finished_epochs(path: Path) -> int:
    from nasaudit.infra.checkpoint import read_sidecar

    try:
        meta = read_sidecar(path) or {}
        epoch = meta.get("epoch", -1)
        return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else -1
    except (InputError, OSError):
        return -1


# --------------------------------------------------------------------------------------------
# The stages
# --------------------------------------------------------------------------------------------
def _train_config(job: UnitJob):
    from nasaudit.training import TrainConfig

    return TrainConfig(**train_settings(job.config, job.model.spec, job.model.seed))


def _fresh_model(job: UnitJob, ctx: UnitContext, device):
    from nasaudit.infra.device import prepare_model, seeded
    from nasaudit.models.registry import build_model

    data = ctx.dataset(job.config)
    with seeded(job.model.seed):
        model = build_model(job.model.build_name, data.num_classes, mean=data.mean, std=data.std,
                            **job.model.spec.kwargs)
    return prepare_model(model, device)


def _train(job: UnitJob, ctx: UnitContext, device, resume: bool) -> TrainSummary:
    """Train the network, or reuse a finished checkpoint whose sidecar matches this unit."""
    from nasaudit.training import train_on_dataset

    config, model = job.config, job.model
    cfg = _train_config(job)
    data = ctx.dataset(config)
    path = checkpoint_file(config, model, data.name)
    mismatch = checkpoint_matches(path, model, cfg, data) if path.is_file() else "absent"
    reuse = mismatch is None and _finished_epochs(path) >= cfg.epochs
    if mismatch not in (None, "absent"):
        from nasaudit.audit.progress import log

        log(f"{model.label}: not reusing {path} ({mismatch}); training from scratch")
    log_dir = config.out_dir / "tensorboard" / f"{model.label}-s{model.seed}"
    # resume=True on a finished checkpoint loads it (the trainer checks the config matches)
    # and trains no further epoch; on a partial one it continues the killed run.
    result = train_on_dataset(
        model.build_name, data, cfg, device=device, model_kwargs=dict(model.spec.kwargs),
        model_dir=model_dir(config, model), resume=mismatch is None and (reuse or resume),
        log_dir=log_dir, progress=job.progress,
    )
    ctx.forget(model.group_key)
    history = [dict(h) for h in (result.history or [])]
    return TrainSummary(model.label, _rel(path, config.out_dir), reuse, int(result.epochs_done),
                        _opt_float(result.val_acc), _opt_float(result.test_acc), cfg.to_dict(), history)


def _imported_sha(path: Path) -> str | None:
    from nasaudit.infra.checkpoint import read_sidecar

    try:
        meta = read_sidecar(path) or {}
    except (InputError, OSError):
        return None
    imported = meta.get("imported")
    return imported.get("sha256") if isinstance(imported, dict) else None


def _import(job: UnitJob, ctx: UnitContext) -> ImportSummary:
    """Read a pretrained model's file into the (model, seed)'s checkpoint, or reuse the checkpoint
    an earlier import wrote from the same file (same sha256) with the same settings."""
    from nasaudit.pretrained import file_sha256, read_pretrained, save_imported

    config, model = job.config, job.model
    spec = model.spec
    cfg = _train_config(job)
    data = ctx.dataset(config)
    path = checkpoint_file(config, model, data.name)
    sha = file_sha256(spec.checkpoint)
    reuse = (path.is_file() and checkpoint_matches(path, model, cfg, data) is None
             and _imported_sha(path) == sha)
    kwargs = dict(spec.kwargs)
    if not reuse:
        genotype_net = not _is_manual(model.build_name)
        imported = read_pretrained(
            spec.checkpoint, spec.format or "auto", model=model.build_name, C=kwargs.get("C"),
            layers=kwargs.get("layers"),
            # build_model's default (an auxiliary head) unless the model's kwargs say otherwise.
            auxiliary=kwargs.get("auxiliary", True) if genotype_net else None,
            width=kwargs.get("width"), num_classes=data.num_classes, dataset=data.name,
            mean=spec.mean, std=spec.std)
        # The sidecar records the plan's kwargs and recipe: `_trained` rebuilds and checks it
        # like the checkpoint of a trained model.
        save_imported(imported, path, dataset=data.name, config=cfg.to_dict(), model_kwargs=kwargs,
                      trained_on=spec.trained_on or "unknown", extra={"audit_model": model.label})
        ctx.forget(model.group_key)
    from nasaudit.infra.checkpoint import read_sidecar

    meta = read_sidecar(path) or {}
    rec = meta.get("imported") or {}
    norm = rec.get("normalization") or {}
    return ImportSummary(model.label, _rel(path, config.out_dir), str(spec.checkpoint), sha,
                         str(rec.get("format")), str(rec.get("detected")), list(meta.get("mean") or []),
                         list(meta.get("std") or []), str(norm.get("from")), rec.get("genotype_hash"),
                         rec.get("trained_on"), cfg.to_dict(), reuse, list(rec.get("notes") or []))


def _check_members(job: UnitJob, data: Any) -> None:
    """Membership inference on a pretrained model whose recipe holds out a validation split (a
    nasaudit checkpoint) needs the training set that split was drawn from: same size."""
    from nasaudit.infra.checkpoint import read_sidecar

    cfg = _train_config(job)
    if not job.model.spec.imported or cfg.val_fraction <= 0:
        return
    meta = read_sidecar(job.model.spec.checkpoint) or {}
    size = (meta.get("train_size") or 0) + (meta.get("val_size") or 0)
    if size != int(data.train_images.shape[0]):
        raise InputError(job.model.spec.checkpoint, f"trained on {size} images with a validation split "
                         f"drawn from them; the audit's training set has {data.train_images.shape[0]}, so "
                         "its members cannot be told apart")


def _trained(job: UnitJob, ctx: UnitContext, device):
    """The trained network in eval mode, from the checkpoint its train unit left."""
    from nasaudit.training import load_checkpoint_model

    config, model = job.config, job.model
    data = ctx.dataset(config)
    path = checkpoint_file(config, model, data.name)

    def load():
        mismatch = checkpoint_matches(path, model, _train_config(job), data) if path.is_file() else "absent"
        if mismatch is not None:
            raise InputError(path, f"the trained checkpoint is missing or foreign ({mismatch}); "
                                   "its train unit runs again on the next audit")
        # The model name comes from the plan, never from the sidecar's "model" string (which
        # could name a file relative to wherever the audit happens to run).
        return load_checkpoint_model(path, model_name=model.build_name, num_classes=data.num_classes,
                                     device=device)[0].eval()

    return ctx.trained(model.group_key, load)


def _work_dir(job: UnitJob) -> Path:
    unit, model = job.unit, job.model
    path = job.config.out_dir / "work" / f"{model.label}-s{unit.seed}" / f"{unit.name}-{unit.key[:10]}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _analyze(job: UnitJob, ctx: UnitContext) -> ModelInfo:
    from nasaudit.models.base import count_parameters

    model = job.model
    import torch

    net = _fresh_model(job, ctx, torch.device("cpu"))  # only counted: no need for a GPU
    genotype_json = cells = None
    if not _is_manual(model.build_name):
        from nasaudit.analysis import analyze_genotype
        from nasaudit.genotype import genotype_to_json, resolve_genotype

        genotype = resolve_genotype(model.build_name)
        genotype_json = genotype_to_json(genotype, name=model.label)
        cells = analyze_genotype(genotype)
    return ModelInfo(model.label, model.build_name, model.spec.group, count_parameters(net),
                     dict(model.spec.kwargs), genotype_json, model.genotype_hash, cells,
                     model.spec.mitigation_of)


def _is_manual(name: str) -> bool:
    from nasaudit.models.registry import is_manual_model

    return is_manual_model(name)


def _search(job: UnitJob, device, resume: bool) -> SearchSummary:
    import shutil

    from nasaudit.genotype import genotype_hash, genotype_to_json
    from nasaudit.search import run_search

    config, unit = job.config, job.unit
    name = unit.model.removeprefix("search:")
    settings = search_config(config, name, unit.params, unit.seed)
    out_dir = config.out_dir / "searches" / f"{name}-{unit.key[-10:]}"
    if not resume and out_dir.exists():
        # Without --resume an interrupted search starts over (run_search never overwrites);
        # the directory is the audit's own (named by the unit key, inside OUT).
        shutil.rmtree(out_dir)
    result = run_search(settings, out_dir=out_dir, device=device, resume=resume, progress=job.progress)
    if result.genotype is None:
        raise RuntimeError(f"search {name!r} stopped before its first epoch ended: no genotype yet")
    details = {k: v for k, v in _result_dict(result).items() if k not in ("genotype", "kind")}
    return SearchSummary(name, genotype_to_json(result.genotype, name=f"search_{name}"),
                         genotype_hash(result.genotype), _rel(Path(result.genotype_path), config.out_dir),
                         dataclasses.asdict(settings), details)


def _unit_work(job: UnitJob, ctx: UnitContext, device, resume: bool) -> dict[str, Any]:
    """The work of one unit; returns its result record as a dict."""
    unit, config = job.unit, job.config
    if unit.stage == "search":
        return _search(job, device, resume).to_dict()
    if unit.stage == "analyze":
        return _analyze(job, ctx).to_dict()
    if unit.stage == "train":
        return _train(job, ctx, device, resume).to_dict()
    if unit.stage == "import":
        return _import(job, ctx).to_dict()
    data = ctx.dataset(config)
    if unit.stage == "clean":
        from nasaudit.training import evaluate

        loss, acc = evaluate(_trained(job, ctx, device), data.test_images, data.test_labels, device=device)
        return CleanAccuracy(job.model.label, float(loss), float(acc), int(len(data.test_labels))).to_dict()
    params = concrete_params(config, unit.task, victim=unit.model)
    if unit.stage in ("probe", "probe_init"):
        from nasaudit.probes import run_probe

        net = _fresh_model(job, ctx, device).eval() if unit.stage == "probe_init" else _trained(job, ctx, device)
        out_dir = (config.out_dir / "probes" / f"{job.model.label}-s{unit.seed}"
                   / f"{unit.stage}-{unit.name}-{unit.key[:10]}")
        # Say whether the network is untrained rather than let the probe guess from batch-norm
        # counters (a GroupNorm-only model has none): the same init as `nasaudit probe`.
        return _result_dict(run_probe(unit.name, net, data, params, device=device, seed=unit.seed,
                                      out_dir=out_dir, progress=job.progress,
                                      at_init=unit.stage == "probe_init"))
    if unit.stage == "attack":
        from nasaudit.attacks import attack_spec, run_attack
        from nasaudit.attacks.common import Victim

        if attack_spec(unit.name).members:
            _check_members(job, data)
        victim = Victim(_trained(job, ctx, device), job.model.build_name, _train_config(job),
                        dict(job.model.spec.kwargs))
        return _result_dict(run_attack(unit.name, victim, data, params, device=device, seed=unit.seed,
                                       progress=job.progress, work_dir=_work_dir(job)))
    raise ValueError(f"unknown stage {unit.stage!r}")


def describe_error(exc: BaseException) -> str:
    """One line for a unit's failure: OS errors name the path and say what happened."""
    if isinstance(exc, OSError):
        return f"{type(exc).__name__}: {describe_os_error(exc)}"
    if isinstance(exc, RuntimeError) and "unexpected pos" in str(exc):
        # torch.save on a full disk reports a zip-writer offset error, not ENOSPC.
        return f"OSError: disk full while writing a checkpoint ({first_line(exc, limit=160)})"
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return " ".join(text.split())[:2000]


def _start_attempt(job: UnitJob) -> tuple[int, bool]:
    """Leave this attempt's marker; returns (attempt number, whether an earlier attempt of this
    run was cut short, so that training and searches resume from their checkpoints)."""
    from nasaudit.infra.io import atomic_write_json

    marker = attempt_marker(job.config, job.run_id, job.unit.key)
    previous = 0
    try:
        previous = int(json.loads(marker.read_text()).get("attempt", 0))
    except (OSError, ValueError, AttributeError):
        pass
    attempt = previous + 1
    try:
        atomic_write_json(marker, {"attempt": attempt, "pid": os.getpid(), "host": socket.gethostname(),
                                   "started": time.time()})
    except OSError:
        pass  # the marker only speeds a retry up; the unit itself reports a broken disk
    return attempt, previous > 0


def execute_unit(job: UnitJob, ctx: UnitContext | None = None) -> UnitOutcome:
    """Run one unit and return its outcome; every exception of the unit's own becomes a
    ``failed`` outcome with a one-line error (KeyboardInterrupt and process death escape)."""
    import torch

    from nasaudit.infra.device import resolve_device

    ctx = ctx or UnitContext()
    started = time.time()
    device = resolve_device(job.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    attempt, retried = _start_attempt(job)
    status, result, error = "done", None, None
    try:
        result = _unit_work(job, ctx, device, job.resume or retried)
        json.dumps(result, default=str)  # fail here, in the unit, if the record cannot be stored
    except Exception as exc:  # a broken unit must not sink the whole audit
        status, error = "failed", describe_error(exc)
        if os.environ.get("NASAUDIT_DEBUG"):
            traceback.print_exc()
    return UnitOutcome(status, result, error, started, time.time(), str(device), socket.gethostname(),
                       os.getpid(), attempt)


# --------------------------------------------------------------------------------------------
# Driver side: preparing jobs, committing outcomes
# --------------------------------------------------------------------------------------------
def resolve_model_plan(plan: Plan, unit: Unit, store) -> ModelPlan | None:
    """The unit's ModelPlan, with a searched genotype written from the store and its hash set.

    Runs in the driver once the unit's search is done (the scheduler guarantees it): the file is
    rewritten from the database so that the network, and every retraining attack, is built
    from exactly what was recorded.
    """
    from nasaudit.audit.plan import searched_genotype_path
    from nasaudit.infra.io import atomic_write_json

    for name in {m.search for m in plan.models.values() if m.search}:
        path = searched_genotype_path(plan.config, name)
        from nasaudit.audit.plan import search_key

        row = store.get(search_key(plan.config, name))
        if row is None or row.status != "done" or not isinstance(row.result, dict):
            continue
        if not path.is_file() or _read_json_quiet(path) != row.result.get("genotype"):
            atomic_write_json(path, row.result["genotype"])
    if unit.group_key is None:
        return None
    model = plan.models[unit.group_key]
    if model.search is not None:
        from nasaudit.audit.plan import search_key

        row = store.get(search_key(plan.config, model.search))
        ghash = row.result.get("genotype_hash") if row is not None and row.result else None
        model = dataclasses.replace(model, genotype_hash=ghash)
    return model


def _read_json_quiet(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def record_outcome(store, unit: Unit, model: ModelPlan | None, outcome: UnitOutcome, torch_version: str) -> None:
    """Commit one unit's outcome (the driver is the only writer of results.sqlite)."""
    store.record_unit(
        unit_key=unit.key, model=unit.model, model_group=unit.model_group, stage=unit.stage,
        name=unit.name, params=unit.params, seed=unit.seed, result=outcome.result,
        started=outcome.started, finished=outcome.finished, device=outcome.device,
        status=outcome.status, error=outcome.error, torch_version=torch_version,
        genotype_hash=model.genotype_hash if model else None,
        model_key=model.model_key if model else None, host=outcome.host,
    )


