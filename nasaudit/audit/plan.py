"""The audit's plan: every unit of work and what it waits on, built up front, as plain data.

A *unit* is (model x stage x parameters x seed). Per model and seed the stages are:

  analyze     cell metrics and parameter count (once per model, first seed)
  probe_init  probes on the freshly initialised network (gradient variance at Kaiming init)
  import      a pretrained model (``checkpoint = ...``): read its file into a nasaudit
              checkpoint (`nasaudit.pretrained`); it replaces the train unit
  train       train, or reuse a finished checkpoint whose sidecar matches the unit
  clean       clean test accuracy
  probe       probes on the trained network
  attack      the attack battery

Searches (``[[searches]]``) are units too; a searched model's units wait on its search.
A pretrained model is never trained: its import unit stands where the train unit would, its key
hashes the file's sha256, layout and normalisation, and its TrainConfig (what poisoning retrains
from scratch with and backdoor fine-tunes with) is its layout's published recipe under its own
``train`` table. Membership inference on it needs ``trained_on``: without it (or for another
data set) the unit is left out of the plan and `Plan.notes` says why.
Once a model's ``train`` unit is done, every unit that only reads its checkpoint (clean,
probes, PGD, NES, membership) can run in parallel; the retraining attacks (poisoning,
backdoor, Knockoff) are units of their own with a whole GPU.

The plan is data (like a Ray Data or Tune plan): `build_plan` makes it without running or
loading anything, `describe_plan` prints it (``--dry-run``), `Scheduler` walks it, and an
engine (`nasaudit.audit.engines`) executes its units. Unit keys hash everything that
determines a result (model spec, genotype hash or search key, kwargs, dataset, training config,
stage, parameters and seed), so a key in the plan is exactly the key of the row a run stores,
and changing any input re-runs exactly the affected units.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nasaudit.attacks import NAMES as ATTACK_NAMES
from nasaudit.attacks import attack_spec
from nasaudit.audit.config import AuditConfig, ModelSpec, TaskSpec, resource_request, stable_hash
from nasaudit.infra.errors import InputError, first_line
from nasaudit.infra.limits import MAX_PLANNED_UNITS, check_at_most

# Stage order within a (model, seed).
STAGES = ("search", "analyze", "probe_init", "import", "train", "clean", "probe", "attack")


@dataclass(frozen=True)
class ModelPlan:
    """One (model, seed): what to build and the key of its checkpoint directory.

    For a searched model `build_name` is the genotype file the driver writes from the search's
    stored record once the search is done; `genotype_hash` is then known only at run time.
    """

    group_key: str
    label: str
    spec: ModelSpec
    seed: int
    build_name: str
    model_key: str  # hash of spec/genotype (or search key) + kwargs + dataset + train config
    genotype_hash: str | None  # None for manual baselines and (until run time) searched models
    search: str | None = None  # the [[searches]] name it comes from


@dataclass(frozen=True)
class Unit:
    """One unit of work. `key` identifies its result row; `needs` are keys of units it waits on."""

    key: str
    model: str  # model label, or "search:NAME"
    model_group: str
    stage: str
    name: str
    params: dict[str, Any]
    seed: int
    needs: tuple[str, ...] = ()
    resource_kind: str = "light"  # a key of config.run.resources
    group_key: str | None = None  # the ModelPlan it belongs to (None for searches)
    task: TaskSpec | None = None


@dataclass(frozen=True)
class Plan:
    """All units of an audit in a valid run order (every unit after the units it needs)."""

    config: AuditConfig
    units: tuple[Unit, ...]
    models: dict[str, ModelPlan] = field(default_factory=dict)  # group_key -> ModelPlan
    notes: tuple[str, ...] = ()  # what --dry-run says beside the table (imports, skipped units)

    def unit(self, key: str) -> Unit:
        """The unit with this key (KeyError if none)."""
        return self._by_key()[key]

    def _by_key(self) -> dict[str, Unit]:
        return {u.key: u for u in self.units}

    @property
    def keys(self) -> list[str]:
        """Unit keys in plan order."""
        return [u.key for u in self.units]

    def resources(self, unit: Unit) -> dict[str, float]:
        """What `unit` asks the cluster for: {"GPU": ..., "CPU": ...} from [run.resources]."""
        return resource_request(self.config.run.resources, unit.resource_kind)


# --------------------------------------------------------------------------------------------
# Keys and model resolution
# --------------------------------------------------------------------------------------------
def train_settings(config: AuditConfig, model: ModelSpec, seed: int) -> dict[str, Any]:
    """The TrainConfig fields for `model` at `seed`: [train] overridden by the model's table; for a
    pretrained model, its layout's published recipe (or its nasaudit sidecar's config) instead of
    [train], which describes how the audit trains its own models."""
    if model.imported:
        # A nasaudit checkpoint's recipe keeps its own seed: its validation split (the images it
        # was not fitted on) is drawn with it. The foreign recipes have none: the audit's seed.
        return {"seed": seed, **imported_recipe(config, model), **model.train}
    return {**config.train, **model.train, "seed": seed}


# (path, size, mtime) -> value: a checkpoint is hashed and its layout recognised once per process.
_FILE_FACTS: dict[tuple, Any] = {}


def _file_fact(config: AuditConfig, model: ModelSpec, what: str, compute) -> Any:
    path = Path(model.checkpoint)
    try:
        info = path.stat()
    except OSError:
        raise InputError(config.source, f"model {model.label!r}: checkpoint {path} not found (a pretrained "
                                        "model's file must be in place before the audit)") from None
    if not path.is_file():
        raise InputError(config.source, f"model {model.label!r}: checkpoint {path} is not a file")
    key = (what, str(path), info.st_size, info.st_mtime_ns)
    if key not in _FILE_FACTS:
        _FILE_FACTS[key] = compute(path)
    return _FILE_FACTS[key]


def imported_format(config: AuditConfig, model: ModelSpec) -> str:
    """The layout of a pretrained model's file ("auto" resolved by reading its keys)."""
    if model.format not in (None, "auto"):
        return model.format

    def detect(path: Path) -> str:
        from nasaudit.infra.io import safe_torch_load
        from nasaudit.pretrained import detect_layout

        return detect_layout(safe_torch_load(path), path)[0]

    return _file_fact(config, model, "format", detect)


def imported_sha256(config: AuditConfig, model: ModelSpec) -> str:
    """sha256 of a pretrained model's file (part of its model key: a new file, new results)."""
    from nasaudit.pretrained import file_sha256

    return _file_fact(config, model, "sha256", file_sha256)


def imported_recipe(config: AuditConfig, model: ModelSpec) -> dict[str, Any]:
    """TrainConfig fields of a pretrained model: its layout's training script's, or the config
    its nasaudit sidecar records."""
    fmt = imported_format(config, model)
    if fmt != "nasaudit":
        from nasaudit.pretrained import layout_recipe

        return layout_recipe(fmt)

    def sidecar_config(path: Path) -> dict[str, Any]:
        from nasaudit.infra.checkpoint import read_sidecar

        meta = read_sidecar(path) or {}
        return dict(meta["config"]) if isinstance(meta.get("config"), dict) else {}

    return dict(_file_fact(config, model, "recipe", sidecar_config))


def membership_skip(config: AuditConfig, model: ModelSpec) -> str | None:
    """Why membership inference cannot run on pretrained `model` (None when it can): the audit
    must know which images the model was fitted on."""
    if not model.imported:
        return None
    if model.trained_on in (None, "unknown"):
        return (f"{model.label}: membership skipped: the config does not say which split the pretrained "
                "model was trained on (set trained_on = \"" + config.dataset.name + "-train\" if it was "
                "fitted on the whole training split)")
    if model.trained_on != f"{config.dataset.name}-train":
        return (f"{model.label}: membership skipped: it was trained on {model.trained_on}, the audit's data "
                f"set is {config.dataset.name}; its members are not among the audit's images")
    return None


def search_key(config: AuditConfig, name: str) -> str:
    """The unit key of `[[searches]]` entry `name` (hash of data set, parameters, seed)."""
    search = config.search(name)
    return "search-" + stable_hash(
        {"dataset": config.dataset.identity(), "params": search.params, "seed": search.seed}
    )


def searched_genotype_path(config: AuditConfig, name: str) -> Path:
    """Where the driver writes the genotype of search `name` (inside the run directory)."""
    return config.out_dir / "genotypes" / f"search_{name}.json"


def _model_identity(config: AuditConfig, model: ModelSpec) -> tuple[str, str | None, dict[str, Any]]:
    """(build name, genotype hash, identity dict) of a model, without running anything."""
    from nasaudit.genotype import genotype_hash, resolve_genotype
    from nasaudit.models.registry import is_manual_model

    common = {"kwargs": model.kwargs, "dataset": config.dataset.identity(),
              "train": {**config.train, **model.train}}
    if model.imported:
        recipe = train_settings(config, model, 0)
        if "seed" not in imported_recipe(config, model):
            recipe.pop("seed")  # the audit's seed, part of the unit key already
        common["train"] = recipe
        common["import"] = {"sha256": imported_sha256(config, model), "format": imported_format(config, model),
                            "mean": model.mean, "std": model.std, "trained_on": model.trained_on}
    if model.search_name is not None:
        # The genotype is whatever the search finds; the search's own key stands for it, so
        # the plan is complete before the search has run.
        return (str(searched_genotype_path(config, model.search_name)), None,
                {"search": search_key(config, model.search_name), **common})
    genotype = None if is_manual_model(model.spec) else resolve_genotype(model.spec)
    ghash = None if genotype is None else genotype_hash(genotype)
    return model.spec, ghash, {"spec": model.spec if genotype is None else None,
                               "genotype_hash": ghash, **common}


def _tasks_for(config: AuditConfig, model: ModelSpec) -> list[TaskSpec]:
    return [t for t in (*config.probes, *config.attacks) if t.models is None or model.label in t.models]


def _needs_members(task: TaskSpec) -> bool:
    """The task is an attack that reads the victim's training inputs as members."""
    return task.kind == "attack" and task.name in ATTACK_NAMES and attack_spec(task.name).members


def _attack_kind(name: str) -> str:
    return "retrain" if attack_spec(name).retrains else "light"


def build_plan(config: AuditConfig) -> Plan:
    """Every unit of `config` with its dependencies, in run order (searches first).

    Nothing is trained, loaded or read from the store: the plan depends on the config alone
    (and, for a pretrained model, on its file's sha256 and layout, read once per process), so
    ``--dry-run`` and the run see the same units with the same keys.
    """
    per_model = 4 + len(config.attacks) + 2 * len(config.probes)  # analyze, train, clean, import
    check_at_most((len(config.models) * per_model) * len(config.seeds) + len(config.searches), MAX_PLANNED_UNITS,
                  "the number of units this config plans", config.source, limit_name="MAX_PLANNED_UNITS")
    units: list[Unit] = []
    notes: list[str] = []
    searches: dict[str, str] = {}
    for search in config.searches:
        key = search_key(config, search.name)
        searches[search.name] = key
        units.append(Unit(key, f"search:{search.name}", "search", "search", "search",
                          dict(search.params), search.seed, (), "search"))
    models: dict[str, ModelPlan] = {}
    labels = {m.label: m for m in config.models}
    for model in config.models:
        build_name, ghash, identity = _model_identity(config, model)
        model_key = stable_hash(identity)
        search_needs = (searches[model.search_name],) if model.search_name else ()
        for i, seed in enumerate(config.seeds):
            group_key = f"model-{model_key}-s{seed}"
            models[group_key] = ModelPlan(group_key, model.label, model, seed, build_name,
                                          model_key, ghash, model.search_name)

            def unit(stage: str, name: str, params: dict, needs: tuple[str, ...], kind: str,
                     task: TaskSpec | None = None, seed: int = seed, group_key: str = group_key,
                     model_key: str = model_key, label: str = model.label,
                     model_group: str = model.group) -> Unit:
                key = stable_hash({"model_key": model_key, "stage": stage, "name": name,
                                   "params": params, "seed": seed}, 24)
                return Unit(key, label, model_group, stage, name, params, seed, needs, kind,
                            group_key, task)

            tasks = _tasks_for(config, model)
            skip = membership_skip(config, model)
            if skip is not None and any(_needs_members(t) for t in tasks):
                tasks = [t for t in tasks if not _needs_members(t)]
                if i == 0:
                    notes.append(skip)
            if model.imported and i == 0:
                notes += _import_notes(config, model, tasks)
            if i == 0:
                units.append(unit("analyze", "model_info", {}, search_needs, "analyze"))
            units += [unit("probe_init", t.name, t.params, search_needs, "light", t)
                      for t in tasks if t.kind == "probe" and t.at_init]
            if model.imported:  # read the file instead of training (CPU work, a few seconds)
                train = unit("import", "import", {}, search_needs, "light")
            else:
                train = unit("train", "train", {}, search_needs, "train")
            units.append(train)
            units.append(unit("clean", "clean_accuracy", {}, (train.key,), "light"))
            units += [unit("probe", t.name, t.params, (train.key,), "light", t)
                      for t in tasks if t.kind == "probe" and not t.at_init]
            for t in tasks:
                if t.kind != "attack":
                    continue
                needs = (train.key,)
                other = _named_model(t, labels)
                if other is not None and other.search_name and other.label != model.label:
                    # A searched architecture named by the task exists once its search is done.
                    needs += (searches[other.search_name],)
                units.append(unit("attack", t.name, t.params, needs, _attack_kind(t.name), t))
    return Plan(config, tuple(units), models, tuple(notes))


def _import_notes(config: AuditConfig, model: ModelSpec, tasks: list[TaskSpec]) -> list[str]:
    """What --dry-run says about a pretrained model: no training, and how retraining units treat it."""
    fmt = imported_format(config, model)
    recipe = train_settings(config, model, 0)
    notes = [f"{model.label}: pretrained, imported from {model.checkpoint} ({fmt} layout); no train unit"]
    names = {t.name for t in tasks}
    facts = {"spec": model.spec, "fmt": fmt, **{k: recipe.get(k) for k in ("lr", "batch_size", "weight_decay")}}
    for name in sorted(n for n in names if n in ATTACK_NAMES):
        spec = attack_spec(name)
        if spec.members:
            notes.append(f"{model.label}: {name} members are the audit's {config.dataset.name} training "
                         f"images (trained_on = {model.trained_on!r})")
        if spec.import_note:
            notes.append(f"{model.label}: {spec.import_note.format(**facts)}")
    return notes


def concrete_params(config: AuditConfig, task: TaskSpec, victim: str | None = None) -> dict[str, Any]:
    """Task params ready for the module: a model label given in an attack's `model_param` (the
    Knockoff replica, e.g. from ``each_model = "replica"``) becomes that model's buildable spec
    and kwargs; the victim's own label becomes "" (the victim's architecture, the default)."""
    params = dict(task.params)
    model = _named_model(task, {m.label: m for m in config.models})
    if model is not None:
        key = attack_spec(task.name).model_param
        if model.label == victim:
            params[key] = ""
        else:
            spec = model.spec
            if model.search_name is not None:  # written by the driver once the search is done
                spec = str(searched_genotype_path(config, model.search_name))
            params[key] = spec
            params.setdefault(f"{key}_kwargs", dict(model.kwargs))
    return params


def _named_model(task: TaskSpec, labels: dict[str, ModelSpec]) -> ModelSpec | None:
    """The audit's model a task's parameter names by label (an attack's `model_param`, e.g.
    Knockoff's replica architecture), or None."""
    if task.kind != "attack" or task.name not in ATTACK_NAMES:
        return None
    key = attack_spec(task.name).model_param
    value = task.params.get(key) if key else None
    return labels.get(value) if isinstance(value, str) else None


def search_config(config: AuditConfig, name: str, params: dict[str, Any], seed: int):
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


# --------------------------------------------------------------------------------------------
# Validation (before any work)
# --------------------------------------------------------------------------------------------
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
    from nasaudit.models.registry import check_model_sizes
    from nasaudit.search_space import load_search_space

    for search in config.searches:
        where = f"[[searches]] {search.name!r}"
        try:
            settings = search_config(config, search.name, search.params, search.seed)
            settings.validate(config.source)
            load_search_space(settings.space)  # read and bounded as the CLI's --space is
        except InputError as exc:
            raise InputError(config.source, f"{where}: {exc}") from None
        except (TypeError, ValueError) as exc:  # a value of the wrong type meets a comparison
            raise InputError(config.source, f"{where}: {first_line(exc)}") from None

    for task in (*config.attacks, *config.probes):
        where = f"[{task.kind}s.{task.name}]"
        try:
            params = concrete_params(config, task)
            if isinstance(params.get("replica_kwargs"), dict):  # a model the attack will build
                check_model_sizes(params["replica_kwargs"], "replica_kwargs")
            _make_task_params(task, params, where)
        except InputError as exc:
            raise InputError(config.source, f"{where} {exc.problem}") from None
        except (TypeError, ValueError) as exc:
            raise InputError(config.source, f"{where} {exc}") from None


def _make_task_params(task: TaskSpec, params: dict[str, Any], source: str) -> Any:
    """The module's own Params instance for `params` (its `make_params` checks the values)."""
    if task.kind == "probe":
        from nasaudit.probes import probe_params

        return probe_params(task.name, params, source=source)
    from nasaudit.infra.params import make_params

    return make_params(attack_spec(task.name).params_cls, params, source=source)


def _validate_model(config: AuditConfig, model: ModelSpec) -> None:
    """The model's spec names a manual baseline or a genotype, and its kwargs build it.

    The network is built on the "meta" device (shapes only, no memory, no arithmetic), so the
    check is cheap even at the study's sizes. A searched model ("search:NAME") is checked with
    a stand-in genotype of the same network family: its kwargs are what can be wrong here.
    """
    import torch

    from nasaudit.models.registry import build_model, did_you_mean, is_manual_model, list_models

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
                    f"nor a genotype (a shipped name, see `nasaudit genotypes`, or a file){did_you_mean(spec)}",
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
        first = first_line(exc)
        raise InputError(config.source, f"{where}: kwargs {model.kwargs} do not fit: {first}") from None


# --------------------------------------------------------------------------------------------
# Walking the plan
# --------------------------------------------------------------------------------------------
class Scheduler:
    """Which units may start now: those not done whose every dependency is done.

    A unit whose dependency failed (or was itself blocked) is *blocked*: it is not run and not
    recorded in this run, and a rerun tries it again once the dependency succeeds.
    """

    def __init__(self, plan: Plan, done: Iterable[str]):
        self.plan = plan
        self.done = set(done)
        self.index = {u.key: i for i, u in enumerate(plan.units)}
        self.pending = [u for u in plan.units if u.key not in self.done]
        self.running: set[str] = set()
        self.failed: set[str] = set()
        self.blocked: set[str] = set()

    def take_ready(self) -> list[Unit]:
        """Units that can start now, in plan order; they count as running from here on."""
        ready, waiting = [], []
        for unit in self.pending:
            if any(n in self.failed or n in self.blocked for n in unit.needs):
                self.blocked.add(unit.key)
            elif all(n in self.done for n in unit.needs):
                ready.append(unit)
            else:
                waiting.append(unit)
        self.pending = waiting
        self.running.update(u.key for u in ready)
        return ready

    def finish(self, unit: Unit, ok: bool) -> None:
        """Mark a running unit as done (`ok`) or failed."""
        self.running.discard(unit.key)
        (self.done if ok else self.failed).add(unit.key)


# --------------------------------------------------------------------------------------------
# --dry-run
# --------------------------------------------------------------------------------------------
def _format_resources(request: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in request.items() if v) or "-"


def describe_plan(plan: Plan, status: dict[str, str]) -> str:
    """The plan as a table: key, status (done/failed/corrupt/todo), unit, seed, resources and
    the units it waits on (by short key). `status` maps unit keys to their stored status."""
    short = {u.key: u.key[:12] for u in plan.units}
    header = f"{'key':<26}{'status':<9}{'model':<16}{'stage':<11}{'name':<16}{'seed':>5}  {'resources':<16}waits on"
    lines = [header]
    for u in plan.units:
        waits = ", ".join(short[n] for n in u.needs) or "-"
        lines.append(f"{u.key:<26}{status.get(u.key, 'todo'):<9}{u.model:<16}{u.stage:<11}"
                     f"{u.name:<16}{u.seed:>5}  {_format_resources(plan.resources(u)):<16}{waits}")
    counts: dict[str, int] = {}
    for u in plan.units:
        s = status.get(u.key, "todo")
        counts[s] = counts.get(s, 0) + 1
    lines.append(f"{len(plan.units)} units: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    lines += [f"note: {note}" for note in plan.notes]
    return "\n".join(lines)
