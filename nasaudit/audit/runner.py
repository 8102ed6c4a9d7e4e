"""Run an audit: plan the units of work, skip the finished ones, run the rest, record each one.

A *unit* is (model x stage x parameters x seed). Per model and seed the stages are:

  analyze     cell metrics and parameter count (once per model, first seed)
  probe_init  probes on the freshly initialised network (gradient variance at Kaiming init)
  train       train, or load a finished checkpoint whose name and sidecar match the model key
  clean       clean test accuracy
  probe       probes on the trained network
  attack      the attack battery

Searches (``[[searches]]``) are units of their own and run before the models that audit them.

Units are grouped by (model, seed) - a group shares one trained network - or by search. A
worker claims a whole group in the database, so with ``--workers N`` on N GPUs each process owns
one device and one group at a time: units never share a GPU. Every unit's row is committed the
moment it finishes (`Store.record_unit`), so a kill -9 loses at most the unit in flight; a
rerun skips every unit whose key is already ``done``. The keys hash everything that determines
a result (model spec, genotype hash, kwargs, dataset, training config, stage, parameters and
seed), so changing any of them re-runs exactly the affected units.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import shutil
import sys
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nasaudit.audit.config import AuditConfig, ModelSpec, TaskSpec, stable_hash
from nasaudit.audit.store import Store
from nasaudit.errors import InputError
from nasaudit.records import Record

# Stage order within a group; also the order of the per-stage progress bars.
STAGES = ("search", "analyze", "probe_init", "train", "clean", "probe", "attack")


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
# Planning
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Unit:
    """One unit of work. `key` identifies its result row; the rest says how to produce it."""

    key: str
    group_key: str
    model: str  # model label, or "search:NAME"
    model_group: str
    stage: str
    name: str
    params: dict[str, Any]
    seed: int
    task: TaskSpec | None = None


@dataclass
class Group:
    """Units sharing one network (model x seed) or one search, run by one worker in order."""

    key: str
    units: list[Unit]
    needs: tuple[str, ...] = ()  # search names that must be done first
    model: ModelSpec | None = None
    seed: int = 0
    resolved: ResolvedModel | None = None  # None while its search is pending


@dataclass(frozen=True)
class ResolvedModel:
    """A model spec turned into something buildable, with the hashes that identify it."""

    label: str
    build_name: str  # what build_model / Victim.model_name get (a name or a genotype file)
    genotype: Any | None  # nasaudit.genotype.Genotype, None for manual baselines
    genotype_hash: str | None
    model_key: str  # hash of spec + genotype + kwargs + dataset + training config (no seed)


def train_settings(config: AuditConfig, model: ModelSpec, seed: int) -> dict[str, Any]:
    """The TrainConfig fields for `model` at `seed`: [train] overridden by the model's table."""
    return {**config.train, **model.train, "seed": seed}


def _search_key(config: AuditConfig, name: str) -> str:
    search = config.search(name)
    return "search-" + stable_hash(
        {"dataset": config.dataset.identity(), "params": search.params, "seed": search.seed}
    )


def resolve_model(config: AuditConfig, model: ModelSpec, store: Store) -> ResolvedModel | None:
    """Resolve the model's genotype (None when it comes from a search not finished yet)."""
    from nasaudit.genotype import genotype_hash, resolve_genotype
    from nasaudit.models.registry import is_manual_model

    build_name = model.spec
    if model.search_name is not None:
        row = store.get(_search_key(config, model.search_name))
        if row is None or row.status != "done":
            return None
        # The DB holds the searched genotype; the file is rewritten from it so that the
        # network (and every retraining attack) is built from exactly what was recorded.
        from nasaudit.io import atomic_write_json

        path = config.out_dir / "genotypes" / f"search_{model.search_name}.json"
        if not path.is_file() or _read_json_quiet(path) != row.result["genotype"]:
            atomic_write_json(path, row.result["genotype"])
        build_name = str(path)
    genotype = None if is_manual_model(build_name) else resolve_genotype(build_name)
    ghash = None if genotype is None else genotype_hash(genotype)
    model_key = stable_hash(
        {
            "spec": build_name if genotype is None else None,
            "genotype_hash": ghash,
            "kwargs": model.kwargs,
            "dataset": config.dataset.identity(),
            "train": {**config.train, **model.train},
        }
    )
    return ResolvedModel(model.label, build_name, genotype, ghash, model_key)


def _read_json_quiet(path: Path) -> Any:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _tasks_for(config: AuditConfig, model: ModelSpec) -> list[TaskSpec]:
    return [t for t in (*config.probes, *config.attacks) if t.models is None or model.label in t.models]


def plan(config: AuditConfig, store: Store) -> list[Group]:
    """All groups of units for `config`, in run order (searches first).

    Models waiting on an unfinished search get provisional keys ("pending-..."), which count
    toward the totals but never match a stored row; they are re-planned once the search is done.
    """
    groups: list[Group] = []
    for search in config.searches:
        key = _search_key(config, search.name)
        unit = Unit(key, key, f"search:{search.name}", "search", "search", "search",
                    dict(search.params), search.seed)
        groups.append(Group(key, [unit]))
    for model in config.models:
        resolved = resolve_model(config, model, store)
        for i, seed in enumerate(config.seeds):
            groups.append(_model_group(config, model, resolved, seed, first_seed=i == 0))
    return groups


def _model_group(config: AuditConfig, model: ModelSpec, resolved: ResolvedModel | None, seed: int,
                 *, first_seed: bool) -> Group:
    """The units of one (model, seed), in stage order."""
    mkey = resolved.model_key if resolved else f"pending-{model.label}"
    gkey = f"model-{mkey}-s{seed}"

    def unit(stage: str, name: str, params: dict, task: TaskSpec | None = None) -> Unit:
        key = stable_hash({"model_key": mkey, "stage": stage, "name": name, "params": params,
                           "seed": seed}, 24)
        if resolved is None:
            key = f"pending-{key}"
        return Unit(key, gkey, model.label, model.group, stage, name, params, seed, task)

    tasks = _tasks_for(config, model)
    units = [unit("analyze", "model_info", {})] if first_seed else []
    units += [unit("probe_init", t.name, t.params, t) for t in tasks if t.kind == "probe" and t.at_init]
    units.append(unit("train", "train", {}))
    units.append(unit("clean", "clean_accuracy", {}))
    units += [unit("probe", t.name, t.params, t) for t in tasks if t.kind == "probe" and not t.at_init]
    units += [unit("attack", t.name, t.params, t) for t in tasks if t.kind == "attack"]
    needs = (model.search_name,) if model.search_name else ()
    return Group(gkey, units, needs, model, seed, resolved)


def validate_config(config: AuditConfig) -> None:
    """Check every model, training, search, attack and probe setting of `config` before any
    work: a typo or a bad value fails here, naming the config file, not as a failed unit (or a
    traceback) hours later. Raises InputError(config.source, ...)."""
    from nasaudit.training import TrainConfig

    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for model in config.models:
        settings = train_settings(config, model, config.seeds[0])
        unknown = sorted(set(settings) - train_fields)
        if unknown:
            raise InputError(config.source, f"unknown training setting(s) {', '.join(unknown)} "
                                            f"(model {model.label!r}); known: {', '.join(sorted(train_fields))}")
        try:
            TrainConfig(**settings).validate()
        except InputError as exc:
            raise InputError(config.source, f"model {model.label!r}: {exc.problem}") from None
        _validate_model(config, model)
    for search in config.searches:
        _search_config(config, search.name, search.params, search.seed).validate(config.source)

    for task in (*config.attacks, *config.probes):
        registry = _registry(task.kind)
        if task.name not in registry:
            raise InputError(config.source, f"{task.kind} {task.name!r} is not available in this install")
        where = f"[{task.kind}s.{task.name}]"
        try:
            _make_task_params(task, _concrete_params(config, task), where)
        except InputError as exc:
            raise InputError(config.source, f"{where} {exc.problem}") from None
        except (TypeError, ValueError) as exc:
            raise InputError(config.source, f"{where} {exc}") from None


def _make_task_params(task: TaskSpec, params: dict[str, Any], source: str) -> Any:
    """The module's own Params instance for `params` (its `make_params` checks the values)."""
    if task.kind == "probe":
        from nasaudit.probes import make_params as make_probe_params

        return make_probe_params(task.name, params, source=source)
    from nasaudit.attacks.common import make_params

    return make_params(_registry("attack")[task.name][0], params, source=source)


def _validate_model(config: AuditConfig, model: ModelSpec) -> None:
    """The model's spec names a manual baseline or a genotype, and its kwargs build it.

    The network is built on the "meta" device (shapes only, no memory, no arithmetic), so the
    check is cheap even at the study's sizes. A searched model ("search:NAME") is checked with
    a stand-in genotype of the same network family: its kwargs are what can be wrong here.
    """
    import torch

    from nasaudit.models.registry import build_model, is_manual_model, list_models

    where = f"model {model.label!r}"
    spec = model.spec
    if model.search_name is not None:
        spec = "darts_v2"
    elif not is_manual_model(spec):
        from nasaudit.genotype import resolve_genotype

        try:
            resolve_genotype(spec)
        except InputError as exc:
            if exc.source == spec and "unknown genotype" in exc.problem:
                raise InputError(
                    config.source,
                    f"{where}: {spec!r} is neither a manual baseline ({', '.join(list_models())}) "
                    f"nor a genotype (a shipped name, see `nasaudit genotypes`, or a file)",
                ) from None
            raise InputError(config.source, f"{where}: {exc}") from None
    if not isinstance(model.kwargs, dict):
        raise InputError(config.source, f"{where}: kwargs must be a table")
    try:
        with torch.device("meta"):
            build_model(spec, 10, **model.kwargs)
    except InputError as exc:
        raise InputError(config.source, f"{where}: {exc.problem}") from None
    except (TypeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(config.source, f"{where}: kwargs {model.kwargs} do not fit: {first}") from None


def _registry(kind: str) -> dict:
    if kind == "attack":
        from nasaudit.attacks import ATTACKS

        return ATTACKS
    from nasaudit.probes import PROBES

    return PROBES


def _concrete_params(config: AuditConfig, task: TaskSpec, victim: str | None = None) -> dict[str, Any]:
    """Task params ready for the module: a model label given as the Knockoff replica
    (from ``each_model = "replica"``) becomes that model's buildable spec and kwargs; the
    victim's own label becomes "" (the victim's architecture, the attack's default)."""
    params = dict(task.params)
    replica = params.get("replica")
    labels = {m.label: m for m in config.models}
    if task.name == "knockoff" and isinstance(replica, str) and replica in labels:
        model = labels[replica]
        if replica == victim:
            params["replica"] = ""
        else:
            spec = model.spec
            if model.search_name is not None:  # written by resolve_model once the search is done
                spec = str(config.out_dir / "genotypes" / f"search_{model.search_name}.json")
            params["replica"] = spec
            params.setdefault("replica_kwargs", dict(model.kwargs))
    return params


# --------------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------------
class Progress:
    """One overall bar (units done / total, with ETA) and one bar per stage present."""

    def __init__(self, groups: list[Group], done: set[str], enabled: bool):
        from tqdm.auto import tqdm

        units = [u for g in groups for u in g.units]
        per_stage = Counter(u.stage for u in units)
        done_stage = Counter(u.stage for u in units if u.key in done)
        self.enabled = enabled
        self.overall = tqdm(total=len(units), initial=sum(done_stage.values()), desc="audit",
                            unit="unit", position=0, disable=not enabled, dynamic_ncols=True)
        self.stages = {
            stage: tqdm(total=per_stage[stage], initial=done_stage[stage], desc=f"  {stage}",
                        unit="unit", position=i + 1, disable=not enabled, dynamic_ncols=True)
            for i, stage in enumerate(s for s in STAGES if per_stage[s])
        }

    def advance(self, unit: Unit) -> None:
        """Count one finished unit."""
        self.overall.update(1)
        if unit.stage in self.stages:
            self.stages[unit.stage].update(1)

    def note(self, text: str) -> None:
        """Show what is running now next to the overall bar."""
        self.overall.set_postfix_str(text[:60], refresh=True)

    def set_done(self, counts: Counter, total_done: int) -> None:
        """Jump the bars to database counts (the parent of several workers polls these)."""
        self.overall.n = total_done
        self.overall.refresh()
        for stage, bar in self.stages.items():
            bar.n = counts.get(stage, 0)
            bar.refresh()

    def close(self) -> None:
        for bar in (*self.stages.values(), self.overall):
            bar.close()


def _log(message: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(f"nasaudit audit: {message}", file=sys.stderr)


# --------------------------------------------------------------------------------------------
# Execution of one group
# --------------------------------------------------------------------------------------------
@dataclass
class RunContext:
    """What every unit needs: config, store, data, device, flags."""

    config: AuditConfig
    store: Store
    device: Any  # torch.device
    resume: bool
    progress: bool
    data: Any = None  # nasaudit.data.ImageDataset, loaded on first use
    parent_pid: int | None = None  # a worker process stops when its parent audit is gone

    def orphaned(self) -> bool:
        """True for a worker whose parent died (kill -9): it must stop, since a new audit may
        now own the directory."""
        return self.parent_pid is not None and os.getppid() != self.parent_pid

    def dataset(self):
        if self.data is None:
            from nasaudit.data import load_dataset

            ds = self.config.dataset
            self.data = load_dataset(ds.name, ds.data_dir, download=ds.download,
                                     num_classes=ds.num_classes, seed=self.config.seeds[0])
        return self.data


class ModelSession:
    """The networks of one (model, seed) group: built, trained or loaded lazily, once."""

    def __init__(self, ctx: RunContext, group: Group):
        self.ctx, self.group = ctx, group
        self.model_spec = group.model
        self.resolved = group.resolved
        self._trained = None

    @property
    def label(self) -> str:
        return self.model_spec.label

    def train_config(self):
        from nasaudit.training import TrainConfig

        settings = train_settings(self.ctx.config, self.model_spec, self.group.seed)
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(settings) - names)
        if unknown:
            raise InputError(self.ctx.config.source, f"unknown [train] key(s) {', '.join(unknown)}")
        return TrainConfig(**settings)

    def fresh_model(self):
        """An untrained network, initialised with the group's seed, on the device."""
        from nasaudit.device import prepare_model, seeded
        from nasaudit.models.registry import build_model

        data = self.ctx.dataset()
        with seeded(self.group.seed):
            model = build_model(self.resolved.build_name, data.num_classes, mean=data.mean,
                                std=data.std, **self.model_spec.kwargs)
        return prepare_model(model, self.ctx.device)

    def model_dir(self) -> Path:
        """Where this (model, seed) keeps its checkpoint.

        The model key in the directory name is the "matching checkpoint" rule: same spec, same
        genotype hash, same kwargs, same dataset and training config -> same directory.
        """
        name = f"{self.label}-s{self.group.seed}-{self.resolved.model_key[:12]}"
        return self.ctx.config.out_dir / "checkpoints" / name

    def checkpoint(self) -> Path:
        from nasaudit.training import checkpoint_path

        return checkpoint_path(self.model_dir(), self.ctx.dataset().name, self.resolved.build_name)

    def _finished_checkpoint(self, epochs: int) -> bool:
        from nasaudit.checkpoint import read_sidecar

        path = self.checkpoint()
        try:
            meta = read_sidecar(path) if path.is_file() else None
        except InputError:
            return False
        return meta is not None and int(meta.get("epoch", -1)) >= epochs

    def train(self) -> TrainSummary:
        """Train the network (or reuse its finished checkpoint) and keep it for later stages."""
        from nasaudit.training import train_on_dataset

        cfg = self.train_config()
        reuse = self._finished_checkpoint(cfg.epochs)
        log_dir = self.ctx.config.out_dir / "tensorboard" / f"{self.label}-s{self.group.seed}"
        # resume=True on a finished checkpoint loads it (the trainer checks the config matches)
        # and trains no further epoch; on a partial one it continues the killed run.
        result = train_on_dataset(
            self.resolved.build_name, self.ctx.dataset(), cfg, device=self.ctx.device,
            model_kwargs=dict(self.model_spec.kwargs), model_dir=self.model_dir(),
            resume=reuse or self.ctx.resume, log_dir=log_dir, progress=self.ctx.progress,
        )
        self._trained = result.model.eval()
        history = [dict(h) for h in (result.history or [])]
        return TrainSummary(self.label, _rel(self.checkpoint(), self.ctx.config.out_dir), reuse,
                            int(result.epochs_done), _opt_float(result.val_acc),
                            _opt_float(result.test_acc), cfg.to_dict(), history)

    def trained(self):
        """The trained network in eval mode; loads the checkpoint, or retrains if it is gone."""
        if self._trained is None:
            cfg = self.train_config()
            if self._finished_checkpoint(cfg.epochs):
                from nasaudit.training import load_checkpoint_model

                self._trained = load_checkpoint_model(self.checkpoint(), device=self.ctx.device)[0].eval()
            else:
                _log(f"{self.label}: checkpoint missing, training again")
                self.train()
        return self._trained

    def victim(self):
        from nasaudit.attacks.common import Victim

        return Victim(self.trained(), self.resolved.build_name, self.train_config(),
                      dict(self.model_spec.kwargs))

    def work_dir(self, unit: Unit) -> Path:
        path = self.ctx.config.out_dir / "work" / f"{self.label}-s{unit.seed}" / f"{unit.name}-{unit.key[:10]}"
        path.mkdir(parents=True, exist_ok=True)
        return path


def _rel(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _result_dict(result: Any) -> dict[str, Any]:
    if isinstance(result, Record):
        return result.to_dict()
    if hasattr(result, "to_dict"):
        return result.to_dict()
    if dataclasses.is_dataclass(result):
        from nasaudit.records import _plain

        return {"kind": type(result).__name__, **_plain(result)}
    raise TypeError(f"unit returned {type(result).__name__}, not a Record")


def _run_unit(ctx: RunContext, session: ModelSession | None, unit: Unit) -> dict[str, Any]:
    """Do the work of one unit and return its result record as a dict."""
    config = ctx.config
    if unit.stage == "search":
        return _run_search(ctx, unit).to_dict()
    assert session is not None
    if unit.stage == "analyze":
        from nasaudit.models.base import count_parameters

        model = session.fresh_model()
        res = session.resolved
        genotype_json = cells = None
        if res.genotype is not None:
            from nasaudit.analysis import analyze_genotype
            from nasaudit.genotype import genotype_to_json

            genotype_json = genotype_to_json(res.genotype, name=session.label)
            cells = analyze_genotype(res.genotype)
        return ModelInfo(session.label, res.build_name, session.model_spec.group, count_parameters(model),
                         dict(session.model_spec.kwargs), genotype_json, res.genotype_hash, cells,
                         session.model_spec.mitigation_of).to_dict()
    if unit.stage == "train":
        return session.train().to_dict()
    if unit.stage == "clean":
        from nasaudit.training import evaluate

        data = ctx.dataset()
        loss, acc = evaluate(session.trained(), data.test_images, data.test_labels, device=ctx.device)
        return CleanAccuracy(session.label, float(loss), float(acc), int(len(data.test_labels))).to_dict()
    params = _concrete_params(config, unit.task, victim=unit.model)
    if unit.stage in ("probe", "probe_init"):
        from nasaudit.probes import run_probe

        model = session.fresh_model().eval() if unit.stage == "probe_init" else session.trained()
        out_dir = config.out_dir / "probes" / f"{session.label}-s{unit.seed}" / f"{unit.stage}-{unit.name}-{unit.key[:10]}"
        record = run_probe(unit.name, model, ctx.dataset(), params, device=ctx.device, seed=unit.seed,
                           out_dir=out_dir, progress=ctx.progress)
        return _result_dict(record)
    if unit.stage == "attack":
        from nasaudit.attacks import run_attack

        record = run_attack(unit.name, session.victim(), ctx.dataset(), params, device=ctx.device,
                            seed=unit.seed, progress=ctx.progress, work_dir=session.work_dir(unit))
        return _result_dict(record)
    raise ValueError(f"unknown stage {unit.stage!r}")


def _run_search(ctx: RunContext, unit: Unit) -> SearchSummary:
    from nasaudit.genotype import genotype_hash, genotype_to_json
    from nasaudit.search import run_search

    config = ctx.config
    name = unit.model.removeprefix("search:")
    search_config = _search_config(config, name, unit.params, unit.seed)
    out_dir = config.out_dir / "searches" / f"{name}-{unit.key[-10:]}"
    if not ctx.resume and out_dir.exists():
        # Without --resume an interrupted search starts over (run_search never overwrites).
        shutil.rmtree(out_dir)
    result = run_search(search_config, out_dir=out_dir, device=ctx.device, resume=ctx.resume,
                        progress=ctx.progress)
    if result.genotype is None:
        raise RuntimeError(f"search {name!r} stopped before its first epoch ended: no genotype yet")
    details = {k: v for k, v in _result_dict(result).items() if k not in ("genotype", "kind")}
    return SearchSummary(name, genotype_to_json(result.genotype, name=f"search_{name}"),
                         genotype_hash(result.genotype), _rel(Path(result.genotype_path), config.out_dir),
                         dataclasses.asdict(search_config), details)


def _search_config(config: AuditConfig, name: str, params: dict[str, Any], seed: int):
    """The SearchConfig of `[[searches]]` entry `name`: its keys plus the audit's data set."""
    from nasaudit.search import SearchConfig

    ds = config.dataset
    settings = {"dataset": ds.name, "data_dir": None if ds.data_dir is None else str(ds.data_dir),
                **params, "seed": seed}
    fields = {f.name for f in dataclasses.fields(SearchConfig)}
    unknown = sorted(set(settings) - fields)
    if unknown:
        raise InputError(config.source, f"search {name!r}: unknown key(s) {', '.join(unknown)}")
    if isinstance(settings.get("arch_betas"), list):  # TOML has no tuples
        settings["arch_betas"] = tuple(settings["arch_betas"])
    return SearchConfig(**settings)


def run_group(ctx: RunContext, group: Group, progress: Progress | None, done: set[str]) -> int:
    """Run the group's unfinished units in order; returns how many failed.

    A failed unit is recorded with its error and the group goes on, except that a failed
    search or training stops the group (everything after needs its result).
    """
    import torch

    session = ModelSession(ctx, group) if group.model is not None else None
    failures = 0
    for unit in group.units:
        if unit.key in done:
            continue
        if ctx.orphaned():
            break
        if progress is not None:
            progress.note(f"{unit.model} {unit.stage} {unit.name}")
        started = time.time()
        status, result, error = "done", None, None
        try:
            result = _run_unit(ctx, session, unit)
        except Exception as exc:  # a broken unit must not sink the whole audit (KeyboardInterrupt does)
            status, error = "failed", "".join(traceback.format_exception_only(type(exc), exc)).strip()
            _log(f"{unit.model} {unit.stage} {unit.name} failed: {error.splitlines()[-1]}")
            if os.environ.get("NASAUDIT_DEBUG"):
                traceback.print_exc()
        ctx.store.record_unit(
            unit_key=unit.key, model=unit.model, model_group=unit.model_group, stage=unit.stage,
            name=unit.name, params=unit.params, seed=unit.seed, result=result, started=started,
            device=str(ctx.device), status=status, error=error, torch_version=torch.__version__,
            genotype_hash=group.resolved.genotype_hash if group.resolved else None,
            model_key=group.resolved.model_key if group.resolved else None,
        )
        if status == "done":
            done.add(unit.key)
            if progress is not None:
                progress.advance(unit)
        else:
            failures += 1
            if unit.stage in ("search", "train"):
                break
    return failures


# --------------------------------------------------------------------------------------------
# The worker loop and the entry point
# --------------------------------------------------------------------------------------------
def _worker_loop(config: AuditConfig, device_spec: str, resume: bool, progress: bool, worker: str,
                 parent_pid: int | None = None) -> int:
    """Claim and run groups until none is left that this worker can run. Returns failures."""
    import torch

    from nasaudit.device import resolve_device

    device = resolve_device(device_spec)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    store = Store(config.out_dir)
    ctx = RunContext(config, store, device, resume, progress, parent_pid=parent_pid)
    # Load the data once, up front: a missing data set is one clear error, not a failed unit
    # per model.
    ctx.dataset()
    failures = 0
    bars: Progress | None = None
    try:
        while not ctx.orphaned():
            done = store.done_keys()
            groups = plan(config, store)
            if bars is None and progress:
                bars = Progress(groups, done, True)
            ran = waiting = False
            for group in groups:
                if all(u.key in done for u in group.units):
                    continue
                state = store.claim_state(group.key)
                if state == "finished":
                    continue  # attempted in this run already (its failures are recorded)
                deps = [_search_key(config, n) for n in group.needs]
                if any(d not in done for d in deps):
                    # Wait for a search another worker is running (or will run); give up on
                    # one that was attempted and failed in this run.
                    waiting = waiting or any(
                        d not in done and store.claim_state(d) != "finished" for d in deps
                    )
                    continue
                if state == "busy" or not store.claim(group.key, worker):
                    waiting = True
                    continue
                try:
                    failures += run_group(ctx, group, bars, done)
                finally:
                    store.finish(group.key, worker)
                ran = True
                break
            if ran:
                continue
            if not waiting:
                break
            time.sleep(1.0)
    finally:
        if bars is not None:
            bars.close()
        store.close()
    return failures


def _worker_entry(config: AuditConfig, device_spec: str, resume: bool, worker: str, parent_pid: int) -> None:
    # Each worker owns exactly one device and reports progress through the database.
    failures = _worker_loop(config, device_spec, resume, False, worker, parent_pid)
    sys.exit(1 if failures else 0)


@contextmanager
def _exclusive(out_dir: Path) -> Iterator[None]:
    """Hold an advisory lock on OUTDIR: two audits must not write one database at once.

    flock is released by the kernel when the process dies, so a kill -9 never leaves it stuck.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    handle = open(out_dir / ".audit.lock", "w")  # noqa: SIM115 - held for the whole run
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(out_dir, "another nasaudit audit is running in this directory") from None
        yield
    finally:
        handle.close()


@dataclass
class AuditSummary:
    """What a run did: units in the plan, already done before, run now, failed."""

    total: int
    skipped: int
    ran: int
    failed: int
    seconds: float
    out_dir: Path
    report: Path | None = None


def _devices_for(device_spec: str, workers: int) -> list[str]:
    import torch

    if workers <= 1:
        return [device_spec]
    if device_spec not in ("auto", "cuda") and not device_spec.startswith("cuda"):
        if os.environ.get("NASAUDIT_ALLOW_CPU_WORKERS") == "1":  # tests exercise the mechanism
            return ["cpu"] * workers
        raise InputError("--workers", "several workers need several GPUs; on CPU use --workers 1")
    available = torch.cuda.device_count()
    if available < workers:
        raise InputError("--workers", f"{workers} workers need {workers} GPUs; {available} visible")
    return [f"cuda:{i}" for i in range(workers)]


def run_audit(
    config: AuditConfig,
    *,
    device: str = "auto",
    resume: bool = False,
    workers: int = 1,
    progress: bool = True,
    report: bool = True,
) -> AuditSummary:
    """Run every unfinished unit of `config`, then write the report.

    Args:
        device: "auto" | "cpu" | "cuda" | "cuda:N" (one device per worker when workers > 1).
        resume: continue an interrupted training or search from its own checkpoint rather than
            restarting it. Finished units are always skipped, with or without resume.
        workers: processes, one per GPU (cuda:0..N-1). Must be 1 on CPU.
    """
    started = time.time()
    out_dir = config.out_dir
    validate_config(config)
    devices = _devices_for(device, workers)
    with _exclusive(out_dir):
        store = Store(out_dir)
        store.clear_claims()  # we hold the directory lock: any claim left is from a dead run
        store.set_meta("config", {"name": config.name, "source": config.source, "raw": config.raw})
        before = store.done_keys()
        groups = plan(config, store)
        total = sum(len(g.units) for g in groups)
        skipped = sum(u.key in before for g in groups for u in g.units)
        history = store.get_meta("runs", [])
        history.append({"started": started, "device": device, "workers": workers, "argv": sys.argv})
        store.set_meta("runs", history)
        if skipped < total:
            if len(devices) == 1:
                _worker_loop(config, devices[0], resume, progress, "w0")
            else:
                _run_workers(config, devices, resume, progress, store, groups)
        after = store.done_keys()
        ran = len(after - before)
        failed = len([u for u in store.units(status="failed") if u.finished >= started])
        history[-1]["finished"] = time.time()
        store.set_meta("runs", history)
        store.close()
    summary = AuditSummary(total, skipped, ran, failed, time.time() - started, out_dir)
    if report:
        from nasaudit.audit.report import write_report

        summary.report = write_report(out_dir)
    return summary


def _run_workers(config: AuditConfig, devices: list[str], resume: bool, progress: bool,
                 store: Store, groups: list[Group]) -> int:
    """Spawn one process per device and show their progress from the database."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # fresh interpreters: no CUDA state inherited from the parent
    procs = [ctx.Process(target=_worker_entry, args=(config, dev, resume, f"w{i}", os.getpid()), daemon=False)
             for i, dev in enumerate(devices)]
    for p in procs:
        p.start()
    bars = Progress(groups, store.done_keys(), progress)
    try:
        while any(p.is_alive() for p in procs):
            time.sleep(2.0)
            done = store.done_keys()
            units = [u for g in plan(config, store) for u in g.units]
            counts = Counter(u.stage for u in units if u.key in done)
            bars.set_done(counts, sum(counts.values()))
    finally:
        bars.close()
        for p in procs:
            p.join()
    return sum(1 for p in procs if p.exitcode)
