"""The audit configuration: a TOML file naming models, data, budgets, attacks, probes and seeds.

Schema (every table but ``[dataset]`` and ``[[models]]`` is optional)::

    name = "smoke_cifar10"              # shown in the report
    out_dir = "../runs/smoke"           # relative to this file; --out overrides it
    seeds = [0]                         # each model is trained and attacked once per seed

    [dataset]
    name = "cifar10"                    # cifar10 | cifar100 | imagenet32 | digits
    data_dir = "../../shared/data/cifar10-subset"   # relative to this file
    download = false
    num_classes = 60                    # imagenet32 class subset only

    [train]                             # nasaudit.training.TrainConfig fields (study defaults)
    epochs = 600

    [model_defaults.nas]                # build_model kwargs for genotype networks
    C = 36
    layers = 20
    [model_defaults.manual]             # build_model kwargs for manual baselines
    width = 16

    [[models]]
    name = "darts_v2"                   # label in the report; also the spec unless `spec` is set
    spec = "darts_v2"                   # manual model | genotype name | file | "search:NAME"
    group = "nas"                       # "nas" | "manual" | anything (default: from the spec)
    mitigation_of = "darts_v2"          # marks a mitigated variant of another model (Table 4)
    kwargs = { C = 16 }                 # merged over model_defaults
    train = { epochs = 10 }             # merged over [train]

    [[models]]                          # a pretrained model: imported, never retrained
    name = "darts_pretrained"
    spec = "darts_v2"                   # its architecture (genotype or baseline), checked
    kwargs = { C = 36, layers = 20, auxiliary = true }   # the file's sizes (no model_defaults)
    checkpoint = "../pretrained/cifar10_model.pt"        # relative to this file
    format = "darts"                    # nasaudit.pretrained.LAYOUTS or "auto" (default)
    trained_on = "cifar10-train"        # its members for membership inference ("unknown": none)
    mean = [0.49, 0.48, 0.45]           # optional: override the layout's normalisation
    std = [0.25, 0.24, 0.26]
    train = { epochs = 10 }             # over the layout's training recipe (not [train])

    [[searches]]                        # run first; audit the result with spec "search:NAME"
    name = "nstep5"
    n_step = 5                          # nasaudit.search.SearchConfig fields
    hooks = ["skip_penalty:0.5"]

    [[sweeps]]                          # one search per combination of the lists, each audited
    name = "knobs"                      # points labelled knobs-n_step2-gamma0.5, ... (group "sweep")
    n_step = [1, 2]                     # a list = swept; a plain value = fixed for all points
    gamma = [1.0, 0.5]
    objectives = [[], ["input_curvature:0.1"]]   # list fields are swept as a list of lists
    epochs = 10
    reference = true                    # also a plain-DARTS point "knobs-darts" (default true)
    kwargs = { C = 16 }                 # model settings of the sweep's networks (over model_defaults.nas)

    [report]
    accuracy_tolerance = 0.05           # a larger NAS-manual clean-accuracy gap confounds verdicts
    accept_accuracy_gap = false         # true: give verdicts over a larger gap anyway
    [report.weighting]                  # the trade-off section's "best balance" (weights >= 0)
    clean_acc = 1.0                     # also pgd_asr_ml, nes_asr_ml, membership_auc,
    pgd_asr_ml = 1.0                    # backdoor_asr, search_seconds, search_steps

    [attacks.pgd]                       # one table = one parameter set (study defaults if empty)
    n_inputs = 1000
    [[attacks.knockoff]]                # an array of tables = one unit per parameter set
    budget = 1000
    [probes.gradvar]
    at_init = true                      # also measure at initialisation (default true)

    [run]                               # how to execute (never part of a result); flags win
    engine = "ray"                      # "local" (default) | "processes" | "ray"
    address = "auto"                    # Ray cluster to join; unset: start a local one
    [run.resources]                     # per unit kind: search, train, retrain, light, analyze
    light = { gpu = 0.25, cpu = 1 }

Inside an attack or probe table these keys belong to the audit, not to the module:
``enabled`` (default true), ``models`` (run only on these labels), ``each_model`` (the name
of a parameter to fill with every configured model in turn, e.g. ``"replica"`` for Knockoff's
cross-architecture table), ``each_model_in`` (restrict that list to these labels) and, for
probes, ``at_init`` (also run on the untrained network; default true for gradvar only).

Relative paths are resolved against the config file's directory, so a config works from any
current directory.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nasaudit.attacks import NAMES as ATTACK_NAMES
from nasaudit.infra.errors import InputError
from nasaudit.infra.limits import MAX_CLASSES, MAX_SEED, MAX_SEEDS, MAX_SWEEP_POINTS, check_at_most
from nasaudit.probes import NAMES as PROBE_NAMES

# Keys inside an attack/probe table that configure scheduling, never passed to the module.
AUDIT_KEYS = frozenset({"enabled", "models", "each_model", "each_model_in", "at_init"})
SEARCH_PREFIX = "search:"

# The keys each table accepts, declared in one place: a key is added here when it is parsed.
# Unknown keys are errors with a "did you mean" hint (`check_keys`). Tables whose keys are a
# dataclass's fields add those fields: [train] and [[models]].train (TrainConfig), [[searches]]
# and [[sweeps]] (SearchConfig), attack and probe tables (their Params, via make_params).
TOP_KEYS = frozenset({"name", "description", "out_dir", "seeds", "dataset", "train",
                      "model_defaults", "models", "searches", "attacks", "probes", "run",
                      "sweeps", "report"})
DATASET_KEYS = frozenset({"name", "data_dir", "download", "num_classes"})
MODEL_DEFAULT_GROUPS = frozenset({"nas", "manual"})
MODEL_KEYS = frozenset({"name", "spec", "group", "kwargs", "train", "mitigation_of",
                        "checkpoint", "format", "trained_on", "mean", "std"})
# A pretrained model's `trained_on`: the whole training split of a data set, or "unknown".
TRAINED_ON = re.compile(r"[a-z0-9]+-train|unknown")
SEARCH_KEYS = frozenset({"name", "seed"})  # + SearchConfig fields
# [[sweeps]]: name, seed, reference (add the plain-DARTS point, default true), kwargs / train
# (of the models built from the sweep's genotypes) + SearchConfig fields, a list = swept.
SWEEP_KEYS = frozenset({"name", "seed", "reference", "kwargs", "train"})
# [report] weighting = { clean_acc = 1.0, pgd_asr_ml = 1.0, ... }: the "best balance" sentence
# of the trade-off section (keys: TRADEOFF_METRICS and search_seconds; weights >= 0).
REPORT_KEYS = frozenset({"weighting", "accuracy_tolerance", "accept_accuracy_gap"})
# Groups whose mean clean accuracies differ by more than this (a fraction) are not compared on
# their vulnerability unless [report] accept_accuracy_gap = true: a model that has barely learned
# its task is not a fair subject for "more vulnerable".
ACCURACY_TOLERANCE = 0.05
TRADEOFF_METRICS = ("clean_acc", "pgd_asr_ml", "nes_asr_ml", "membership_auc", "backdoor_asr")
WEIGHTING_KEYS = frozenset({*TRADEOFF_METRICS, "search_seconds", "search_steps"})
# SearchConfig fields whose single value is itself a list: swept only as a list of lists.
LIST_SEARCH_FIELDS = frozenset({"hooks", "objectives", "arch_betas"})
SWEEP_GROUP = "sweep"  # model group of the sweep's points (kept apart from the study's nas/manual)
# Bounds of values that size a loop or an allocation, checked before anything runs.
# Model labels and search names become path components under OUT (checkpoints, work, probes):
# a plain name, never "..", a separator or an absolute path.
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+=-]{0,99}")


def did_you_mean(key: str, known: Any) -> str:
    """"; did you mean 'x'?" for the closest known key, else "; known: a, b, c"."""
    names = sorted(str(k) for k in known)
    close = difflib.get_close_matches(str(key).replace("-", "_"), names, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(names)}"


def check_keys(table: dict, known: Any, *, where: str, source: str) -> None:
    """Raise InputError for the first key of `table` not in `known` ("unknown key 'data-dir'
    in [dataset]; did you mean 'data_dir'?")."""
    for key in table:
        if key not in known:
            raise InputError(source, f"unknown key {key!r} in {where}{did_you_mean(key, known)}")


def check_plain_name(value: Any, *, what: str, source: str) -> str:
    """`value` if it is a plain name usable as one path component (PLAIN_NAME), else InputError."""
    if not isinstance(value, str) or not PLAIN_NAME.fullmatch(value) or value in (".", ".."):
        raise InputError(source, f"{what} must be a plain name (letters, digits, _ . + = -, at most "
                                 f"100 characters, no path separator), got {value!r}")
    return value


def _check_bool(table: dict, key: str, where: str, source: str) -> None:
    if key in table and not isinstance(table[key], bool):
        raise InputError(source, f"{where}.{key} must be true or false (a TOML boolean), "
                                 f"got {table[key]!r}")


def _check_seed(value: Any, what: str, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise InputError(source, f"{what} must be an integer in 0..2^63-1, got {value!r}")
    return value


def _dataclass_fields(module: str, name: str) -> frozenset[str]:
    import dataclasses
    import importlib

    return frozenset(f.name for f in dataclasses.fields(getattr(importlib.import_module(module), name)))


def _train_fields() -> frozenset[str]:
    return _dataclass_fields("nasaudit.training", "TrainConfig")


def _search_fields() -> frozenset[str]:
    return _dataclass_fields("nasaudit.search.run", "SearchConfig")


def _check_train_table(value: Any, where: str, source: str) -> dict:
    if not isinstance(value, dict):
        raise InputError(source, f"{where} must be a table of training settings, got {value!r}")
    check_keys(value, _train_fields(), where=where, source=source)
    return value

# The [run] table: how the audit is executed (never part of a result's key). Flags win.
#   [run]
#   engine = "ray"                      # "local" (default) | "processes" | "ray"
#   address = "auto"                    # Ray cluster to join ("auto" | "HOST:PORT"); none = start one
#   [run.resources]                     # what one unit of each kind asks the cluster for
#   train = { gpu = 1, cpu = 2 }
#   light = { gpu = 0.25 }
RUN_KEYS = frozenset({"engine", "address", "resources"})
ENGINES = ("local", "processes", "ray")
# Unit kinds: searches, training, the retraining attacks (poison, backdoor, knockoff), the
# light units that only read a checkpoint (clean accuracy, probes, PGD, NES, membership), and
# the model analysis (no GPU).
RESOURCE_KINDS = ("search", "train", "retrain", "light", "analyze")
RESOURCE_KEYS = frozenset({"gpu", "cpu"})
DEFAULT_RESOURCES: dict[str, dict[str, float]] = {
    "search": {"gpu": 1, "cpu": 1},
    "train": {"gpu": 1, "cpu": 1},
    "retrain": {"gpu": 1, "cpu": 1},
    "light": {"gpu": 0.25, "cpu": 1},
    "analyze": {"gpu": 0, "cpu": 1},
}


@dataclass(frozen=True)
class RunSpec:
    """The [run] table: engine ("local" | "processes" | "ray" | None = not set), Ray address, resources."""

    engine: str | None = None
    address: str | None = None
    resources: dict[str, dict[str, float]] = field(default_factory=lambda: copy.deepcopy(DEFAULT_RESOURCES))


def resource_request(resources: dict[str, dict[str, float]], kind: str) -> dict[str, float]:
    """{"GPU": g, "CPU": c} that a unit of `kind` asks for (Ray's resource names)."""
    entry = resources.get(kind, DEFAULT_RESOURCES[kind])
    return {"GPU": float(entry.get("gpu", 0)), "CPU": float(entry.get("cpu", 1))}


def _run_spec(data: dict, source: str) -> RunSpec:
    run = _table(data, "run", source)
    unknown = sorted(set(run) - RUN_KEYS)
    if unknown:
        raise InputError(source, f"[run]: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(RUN_KEYS))}")
    engine, address = run.get("engine"), run.get("address")
    if engine is not None and engine not in ENGINES:
        raise InputError(source, f"[run].engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if address is not None and (not isinstance(address, str) or not address):
        raise InputError(source, "[run].address must be a non-empty string (auto or HOST:PORT)")
    resources = copy.deepcopy(DEFAULT_RESOURCES)
    for kind, entry in _table(run, "resources", source).items():
        where = f"[run.resources.{kind}]"
        if kind not in RESOURCE_KINDS:
            raise InputError(source, f"{where}: unknown unit kind; known: {', '.join(RESOURCE_KINDS)}")
        if not isinstance(entry, dict) or not set(entry) <= RESOURCE_KEYS:
            raise InputError(source, f"{where} must be a table with gpu and/or cpu")
        for key, value in entry.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1024:
                raise InputError(source, f"{where}.{key} must be a number in 0..1024, got {value!r}")
            if key == "gpu" and value > 1 and value != int(value):
                raise InputError(source, f"{where}.gpu above 1 must be a whole number of GPUs")
        if entry.get("cpu", 1) <= 0 and entry.get("gpu", 0) <= 0:
            raise InputError(source, f"{where} asks for nothing (set cpu or gpu above 0)")
        resources[kind].update(entry)
    return RunSpec(engine, address, resources)


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hex sha256 of `obj` as canonical JSON (sorted keys): equal inputs give equal hashes."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


@dataclass(frozen=True)
class DatasetSpec:
    """Which data the audit trains and attacks on."""

    name: str
    data_dir: Path | None
    download: bool = False
    num_classes: int | None = None

    def identity(self) -> dict[str, Any]:
        """What makes results comparable: the data set, not where it lives on disk."""
        return {"name": self.name, "num_classes": self.num_classes}


@dataclass(frozen=True)
class ModelSpec:
    """One model to audit: a manual baseline, a genotype (name or file) or a searched genotype."""

    label: str
    spec: str
    group: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    mitigation_of: str | None = None
    # A pretrained model (imported, not trained): its file, layout, training split and an
    # optional normalisation override (3 numbers each). None for the models the audit trains.
    checkpoint: str | None = None
    format: str | None = None
    trained_on: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @property
    def imported(self) -> bool:
        """True for a pretrained model named by `checkpoint` (imported instead of trained)."""
        return self.checkpoint is not None

    @property
    def search_name(self) -> str | None:
        """The `[[searches]]` name when the spec is "search:NAME", else None."""
        return self.spec[len(SEARCH_PREFIX) :] if self.spec.startswith(SEARCH_PREFIX) else None


@dataclass(frozen=True)
class TaskSpec:
    """One attack or probe parameter set (a unit per model and seed)."""

    kind: str  # "attack" | "probe"
    name: str  # registry name, e.g. "pgd", "gradvar"
    params: dict[str, Any]  # passed to run_attack / run_probe (study defaults fill the rest)
    models: tuple[str, ...] | None = None  # restrict to these labels
    at_init: bool = False  # probe on the untrained network (gradvar at Kaiming init)

    @property
    def key(self) -> str:
        """Short stable id of the parameter set, used in unit names."""
        return stable_hash({"name": self.name, "params": self.params}, 8)


@dataclass(frozen=True)
class SearchSpec:
    """One architecture search to run before the audit; its genotype becomes "search:NAME"."""

    name: str
    params: dict[str, Any]  # nasaudit.search.SearchConfig fields (dataset/data_dir from [dataset])
    seed: int = 0


@dataclass(frozen=True)
class AuditConfig:
    """A parsed, validated audit config. Build with `load_config` or `config_from_dict`."""

    name: str
    source: str  # the file it came from (or "<dict>")
    out_dir: Path
    seeds: tuple[int, ...]
    dataset: DatasetSpec
    train: dict[str, Any]
    models: tuple[ModelSpec, ...]
    searches: tuple[SearchSpec, ...]
    attacks: tuple[TaskSpec, ...]
    probes: tuple[TaskSpec, ...]
    raw: dict[str, Any]
    run: RunSpec = field(default_factory=RunSpec)  # how to execute; never part of a unit's key

    def model(self, label: str) -> ModelSpec:
        """The model with this label (InputError if none)."""
        for model in self.models:
            if model.label == label:
                return model
        raise InputError(self.source, f"no model labelled {label!r}")

    def search(self, name: str) -> SearchSpec:
        """The search with this name (InputError if none)."""
        for search in self.searches:
            if search.name == name:
                return search
        raise InputError(self.source, f"no search named {name!r}")

    def only(self, labels: list[str]) -> AuditConfig:
        """A copy restricted to the given model labels (and the searches they need)."""
        unknown = sorted(set(labels) - {m.label for m in self.models})
        if unknown:
            known = ", ".join(m.label for m in self.models)
            raise InputError("--only", f"unknown model(s) {', '.join(unknown)}; config has {known}")
        models = tuple(m for m in self.models if m.label in labels)
        needed = {m.search_name for m in models if m.search_name}
        searches = tuple(s for s in self.searches if s.name in needed)
        return _replace(self, models=models, searches=searches)

    def with_out_dir(self, out_dir: str | Path) -> AuditConfig:
        """A copy writing into `out_dir` instead."""
        return _replace(self, out_dir=Path(out_dir).resolve())


def _replace(config: AuditConfig, **changes: Any) -> AuditConfig:
    import dataclasses

    return dataclasses.replace(config, **changes)


def load_config(path: str | Path) -> AuditConfig:
    """Read and validate an audit TOML file. Raises InputError naming the file and the problem."""
    from nasaudit.infra.io import read_toml

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "config file not found")
    data = read_toml(path)
    return config_from_dict(data, base_dir=path.resolve().parent, source=str(path))


def _table(data: dict, key: str, source: str) -> dict:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise InputError(source, f"[{key}] must be a table")
    return value


def _resolve_path(value: Any, base_dir: Path, source: str, what: str) -> Path:
    if not isinstance(value, str) or not value or "\x00" in value:
        raise InputError(source, f"{what} must be a non-empty string path")
    try:
        p = Path(value).expanduser()
        return (p if p.is_absolute() else base_dir / p).resolve()
    except (RuntimeError, ValueError, OSError) as exc:  # "~nobody", a loop of symlinks
        raise InputError(source, f"{what} {value!r} is not a usable path ({exc})") from None


def _check_sweeps(raw: Any, source: str) -> None:
    """Structure and keys of [[sweeps]] (each: a name and lists of SearchConfig values)."""
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise InputError(source, "sweeps must be an array of tables ([[sweeps]])")
    for item in raw:
        if not isinstance(item.get("name"), str):
            raise InputError(source, "each [[sweeps]] entry needs a string name")
        check_plain_name(item["name"], what="a [[sweeps]] name", source=source)
        check_keys(item, SWEEP_KEYS | _search_fields(), where=f"[[sweeps]] {item['name']!r}",
                   source=source)
        if "seed" in item:
            _check_seed(item["seed"], f"[[sweeps]] {item['name']!r} seed", source)
        _check_bool(item, "reference", f"[[sweeps]] {item['name']!r}", source)
        if not isinstance(item.get("kwargs", {}), dict):
            raise InputError(source, f"[[sweeps]] {item['name']!r}: kwargs must be a table of model settings")
        _check_train_table(item.get("train", {}), f"[[sweeps]] {item['name']!r} train", source)
        points = 1
        for key, value in item.items():
            if key not in SWEEP_KEYS and _swept(key, value):
                points *= max(1, len(value))
        check_at_most(points, MAX_SWEEP_POINTS, f"[[sweeps]] {item['name']!r}'s number of searches", source,
                      limit_name="MAX_SWEEP_POINTS")


def _swept(key: str, value: Any) -> bool:
    if not isinstance(value, list):
        return False
    return key not in LIST_SEARCH_FIELDS or (bool(value) and all(isinstance(v, list) for v in value))


def _knob_text(key: str, value: Any) -> str:
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, (int, float)):
        text = f"{value:g}"
    elif isinstance(value, list):
        text = "+".join(_knob_text("", v) for v in value) or "none"
    else:
        text = str(value)
    return key + re.sub(r"[^A-Za-z0-9_.+=-]", "", text)


@dataclass(frozen=True)
class SweepPoint:
    """One search of a sweep: its label (also the search name and model label), the SearchConfig
    settings, the swept knobs' values, and whether it is the added plain-DARTS reference."""

    label: str
    params: dict[str, Any]
    knobs: dict[str, Any]
    reference: bool = False


def expand_sweep(item: dict[str, Any], source: str = "<sweep>") -> list[SweepPoint]:
    """The searches of one [[sweeps]] table: every combination of its list-valued settings (in
    the table's key order), labelled "NAME-KEYVALUE-KEYVALUE" (e.g. knobs-n_step2-gamma0.5),
    plus, unless `reference = false`, a "NAME-darts" point with every knob at its SearchConfig
    default when no combination is already that. Pure: the report re-expands the stored table."""
    import dataclasses
    import itertools

    from nasaudit.search.run import SearchConfig

    name = item["name"]
    fixed = {k: v for k, v in item.items() if k not in SWEEP_KEYS and not _swept(k, v)}
    knobs = {k: v for k, v in item.items() if k not in SWEEP_KEYS and _swept(k, v)}
    for key, values in knobs.items():
        if not values:
            raise InputError(source, f"[[sweeps]] {name!r}: {key} lists no values")
    points: list[SweepPoint] = []
    for combo in itertools.product(*knobs.values()):
        values = dict(zip(knobs, combo, strict=True))
        label = "-".join([name, *(_knob_text(k, v) for k, v in values.items())])
        if not PLAIN_NAME.fullmatch(label):  # too long: number it (the knobs are still recorded)
            label = f"{name}-{len(points) + 1}"
        points.append(SweepPoint(label, {**fixed, **values}, values))
    defaults = {f.name: getattr(SearchConfig(), f.name) for f in dataclasses.fields(SearchConfig)}
    plain = {k: defaults[k] for k in knobs if k in defaults}

    def same(a: Any, b: Any) -> bool:
        return list(a) == list(b) if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) else a == b

    if item.get("reference", True) and knobs and not any(
            all(same(p.knobs[k], plain[k]) for k in plain) for p in points):
        points.append(SweepPoint(f"{name}-darts", dict(fixed), plain, reference=True))
    labels = [p.label for p in points]
    if len(set(labels)) != len(labels):
        raise InputError(source, f"[[sweeps]] {name!r}: two combinations get the same label")
    return points


def _norm_values(item: dict, key: str, where: str, source: str) -> tuple[float, ...] | None:
    value = item.get(key)
    if value is None:
        return None
    if (not isinstance(value, list) or len(value) != 3 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")
            for v in value)):
        raise InputError(source, f"{where}: {key} must be 3 finite numbers (one per channel), got {value!r}")
    if key == "std" and any(v <= 0 for v in value):
        raise InputError(source, f"{where}: std must be positive, got {value!r}")
    return tuple(float(v) for v in value)


def _pretrained_fields(item: dict, spec: str, base_dir: Path, where: str, source: str) -> dict[str, Any]:
    """ModelSpec's pretrained fields from a [[models]] entry ({} for a model the audit trains)."""
    extra = [k for k in ("format", "trained_on", "mean", "std") if k in item]
    if "checkpoint" not in item:
        if extra:
            raise InputError(source, f"{where}: {extra[0]} applies to a pretrained model only "
                                     "(set checkpoint = \"FILE\")")
        return {}
    from nasaudit.pretrained import layout_names

    path = _resolve_path(item["checkpoint"], base_dir, source, f"{where} checkpoint")
    fmt = item.get("format", "auto")
    if fmt not in layout_names():
        raise InputError(source, f"{where}: format must be one of {', '.join(layout_names())}, got {fmt!r}")
    trained_on = item.get("trained_on")
    if trained_on is not None and (not isinstance(trained_on, str) or not TRAINED_ON.fullmatch(trained_on)):
        raise InputError(source, f"{where}: trained_on must be DATASET-train (e.g. \"cifar10-train\": the "
                                 f"whole training split) or \"unknown\", got {trained_on!r}")
    if spec.startswith(SEARCH_PREFIX):
        raise InputError(source, f"{where}: a pretrained model names its architecture (a genotype or a "
                                 "baseline), not a search")
    mean, std = _norm_values(item, "mean", where, source), _norm_values(item, "std", where, source)
    if (mean is None) != (std is None):
        raise InputError(source, f"{where}: give both mean and std, or neither")
    return {"checkpoint": str(path), "format": fmt, "trained_on": trained_on, "mean": mean, "std": std}


def _resolve_spec(spec: str, base_dir: Path) -> str:
    """Turn a relative genotype file spec ("my.json", "g.py:NAME") into an absolute one."""
    if spec.startswith(SEARCH_PREFIX):
        return spec
    file_part, sep, pick = spec.partition(":")
    if Path(file_part).suffix in (".json", ".py"):
        candidate = Path(file_part).expanduser()
        if not candidate.is_absolute():
            candidate = (base_dir / candidate).resolve()
        return f"{candidate}{sep}{pick}"
    return spec


def _default_group(spec: str) -> str:
    if spec.startswith(SEARCH_PREFIX):
        return "nas"
    from nasaudit.models.registry import is_manual_model

    return "manual" if is_manual_model(spec) else "nas"


def _tasks(data: dict, kind: str, known: tuple[str, ...], labels: list[str], source: str):
    section = "attacks" if kind == "attack" else "probes"
    tasks: list[TaskSpec] = []
    for name, entry in _table(data, section, source).items():
        if name not in known:
            hint = did_you_mean(name, known)
            raise InputError(source, f"unknown {kind} {name!r} in [{section}]{hint}")
        entries = entry if isinstance(entry, list) else [entry]
        for item in entries:
            if not isinstance(item, dict):
                raise InputError(source, f"[{section}.{name}] must be a table or an array of tables")
            for flag in ("enabled", "at_init"):
                _check_bool(item, flag, f"[{section}.{name}]", source)
            if not item.get("enabled", True):
                continue
            params = {k: v for k, v in item.items() if k not in AUDIT_KEYS}
            only = item.get("models")
            if only is not None:
                if not isinstance(only, list) or not all(isinstance(x, str) for x in only):
                    raise InputError(source, f"[{section}.{name}].models must be a list of labels")
                missing = sorted(set(only) - set(labels))
                if missing:
                    raise InputError(source, f"[{section}.{name}].models names unknown {missing}")
                only = tuple(only)
            each = item.get("each_model")
            variants = [params]
            if each is not None:
                if not isinstance(each, str):
                    raise InputError(source, f"[{section}.{name}].each_model must be a parameter name")
                among = item.get("each_model_in", labels)
                if (not isinstance(among, list) or not all(isinstance(x, str) for x in among)
                        or not set(among) <= set(labels)):
                    raise InputError(source, f"[{section}.{name}].each_model_in must list model labels")
                # The value is a model label; the runner maps it to that model's spec and kwargs.
                variants = [{**params, each: label} for label in among]
            for p in variants:
                tasks.append(TaskSpec(kind, name, p, only))
            # Gradient variance at initialisation is a separate unit: it needs no trained model.
            if kind == "probe" and item.get("at_init", name == "gradvar"):
                tasks.append(TaskSpec(kind, name, params, only, at_init=True))
    return tuple(tasks)


def config_from_dict(data: dict[str, Any], *, base_dir: str | Path = ".", source: str = "<dict>") -> AuditConfig:
    """Validate a config already parsed into a dict (paths resolve against `base_dir`)."""
    base_dir = Path(base_dir).resolve()
    data = copy.deepcopy(data)
    if not isinstance(data, dict):
        raise InputError(source, "an audit config must be a table of settings")
    for key in data:
        if key not in TOP_KEYS:
            raise InputError(source, f"unknown top-level key {key!r}{did_you_mean(key, TOP_KEYS)}")
    for key in ("name", "description"):
        if key in data and not isinstance(data[key], str):
            raise InputError(source, f"{key} must be a string, got {data[key]!r}")

    ds = _table(data, "dataset", source)
    check_keys(ds, DATASET_KEYS, where="[dataset]", source=source)
    if "name" not in ds:
        raise InputError(source, "[dataset] needs a name (cifar10, cifar100, imagenet32 or digits)")
    if not isinstance(ds["name"], str):
        raise InputError(source, f"[dataset].name must be a string, got {ds['name']!r}")
    _check_bool(ds, "download", "[dataset]", source)
    num_classes = ds.get("num_classes")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or not 1 <= num_classes <= MAX_CLASSES):
        raise InputError(source, f"[dataset].num_classes must be an integer in 1..{MAX_CLASSES}, "
                                 f"got {num_classes!r}")
    data_dir = ds.get("data_dir")
    dataset = DatasetSpec(
        name=ds["name"],
        data_dir=None if data_dir is None else _resolve_path(data_dir, base_dir, source, "dataset.data_dir"),
        download=ds.get("download", False),
        num_classes=num_classes,
    )

    seeds = data.get("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if not isinstance(seeds, list) or not seeds:
        raise InputError(source, "seeds must be a non-empty list of integers")
    check_at_most(len(seeds), MAX_SEEDS, "the number of seeds", source, limit_name="MAX_SEEDS")
    for seed in seeds:
        _check_seed(seed, "seeds", source)
    if len(set(seeds)) != len(seeds):
        raise InputError(source, "seeds must not repeat")

    train = _table(data, "train", source)
    if "seed" in train:
        raise InputError(source, "[train] must not set seed; use the top-level seeds list")
    _check_train_table(train, "[train]", source)
    defaults = _table(data, "model_defaults", source)
    check_keys(defaults, MODEL_DEFAULT_GROUPS, where="[model_defaults]", source=source)
    for group_name, group_kwargs in defaults.items():
        if not isinstance(group_kwargs, dict):
            raise InputError(source, f"[model_defaults.{group_name}] must be a table of model settings")
    for key in ("run", "report"):
        _table(data, key, source)
    check_keys(data.get("report", {}), REPORT_KEYS, where="[report]", source=source)
    weighting = data.get("report", {}).get("weighting", {})
    if not isinstance(weighting, dict):
        raise InputError(source, "[report].weighting must be a table of metric = weight")
    check_keys(weighting, WEIGHTING_KEYS, where="[report.weighting]", source=source)
    for key, value in weighting.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
            raise InputError(source, f"[report.weighting].{key} must be a number >= 0, got {value!r}")
    report = data.get("report", {})
    tolerance = report.get("accuracy_tolerance", ACCURACY_TOLERANCE)
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance <= 1:
        raise InputError(source, f"[report].accuracy_tolerance must be a fraction in [0, 1], got {tolerance!r}")
    if not isinstance(report.get("accept_accuracy_gap", False), bool):
        raise InputError(source, "[report].accept_accuracy_gap must be true or false")
    _check_sweeps(data.get("sweeps", []), source)

    searches: list[SearchSpec] = []
    raw_searches = data.get("searches", [])
    if not isinstance(raw_searches, list):
        raise InputError(source, "searches must be an array of tables ([[searches]])")
    for item in raw_searches:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InputError(source, "each [[searches]] entry needs a string name")
        where = f"[[searches]] {item['name']!r}"
        check_plain_name(item["name"], what="a [[searches]] name", source=source)
        check_keys(item, SEARCH_KEYS | _search_fields(), where=where, source=source)
        params = {k: v for k, v in item.items() if k not in ("name", "seed")}
        seed = _check_seed(item.get("seed", seeds[0]), f"{where} seed", source)
        searches.append(SearchSpec(item["name"], params, seed))
    sweep_models: list[tuple[dict, SweepPoint]] = []
    for item in data.get("sweeps", []):
        for point in expand_sweep(item, source):
            seed = item.get("seed", seeds[0])
            searches.append(SearchSpec(point.label, point.params, seed))
            sweep_models.append((item, point))
    search_names = [s.name for s in searches]
    if len(set(search_names)) != len(search_names):
        raise InputError(source, "search names must be unique (sweep labels included)")

    raw_models = data.get("models", [] if sweep_models else None)
    if not isinstance(raw_models, list) or not (raw_models or sweep_models):
        raise InputError(source, "the config needs at least one [[models]] entry (or a [[sweeps]] table)")
    models: list[ModelSpec] = []
    for item in raw_models:
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InputError(source, "each [[models]] entry needs a string name")
        where = f"model {item['name']!r}"
        check_keys(item, MODEL_KEYS, where=where, source=source)
        check_plain_name(item["name"], what="a [[models]] name (label)", source=source)
        for key in ("spec", "group", "mitigation_of"):
            if key in item and not isinstance(item[key], str):
                raise InputError(source, f"{where}: {key} must be a string, got {item[key]!r}")
        if not isinstance(item.get("kwargs", {}), dict):
            raise InputError(source, f"{where}: kwargs must be a table of model settings, got {item['kwargs']!r}")
        _check_train_table(item.get("train", {}), f"{where} train", source)
        spec = _resolve_spec(str(item.get("spec", item["name"])), base_dir)
        if spec.startswith(SEARCH_PREFIX) and spec[len(SEARCH_PREFIX) :] not in search_names:
            raise InputError(source, f"model {item['name']!r} uses {spec!r} but no such [[searches]] entry")
        mitigation_of = item.get("mitigation_of")
        group = str(item.get("group") or ("mitigation" if mitigation_of else _default_group(spec)))
        pretrained = _pretrained_fields(item, spec, base_dir, where, source)
        # A pretrained model's kwargs describe its file: the defaults for small retrained models
        # do not apply to it.
        base_kwargs = {} if pretrained else dict(
            defaults.get("manual" if _default_group(spec) == "manual" else "nas", {}))
        kwargs = {**base_kwargs, **dict(item.get("kwargs", {}))}
        models.append(ModelSpec(item["name"], spec, group, kwargs, dict(item.get("train", {})), mitigation_of,
                                **pretrained))
    for item, point in sweep_models:  # each sweep point is audited like any searched model
        kwargs = {**dict(defaults.get("nas", {})), **dict(item.get("kwargs", {}))}
        models.append(ModelSpec(point.label, SEARCH_PREFIX + point.label, SWEEP_GROUP, kwargs,
                                dict(item.get("train", {}))))
    labels = [m.label for m in models]
    if len(set(labels)) != len(labels):
        raise InputError(source, "model names must be unique (sweep labels included)")
    for m in models:
        if m.mitigation_of is not None and m.mitigation_of not in labels:
            raise InputError(source, f"model {m.label!r}: mitigation_of names unknown model {m.mitigation_of!r}")

    if "out_dir" in data:
        out = data["out_dir"]
    else:
        name = check_plain_name(data.get("name", "audit"), what="name (the default out_dir)", source=source)
        out = f"runs/{name}"
    out_dir = _resolve_path(out, base_dir, source, "out_dir")
    from nasaudit.infra.outdir import protected_dirs

    protected = protected_dirs()
    if any(out_dir == p or out_dir in p.parents for p in protected):
        raise InputError(source, f"out_dir {out!r} is {out_dir}: a run never writes into /, the home "
                                 "directory or the nasaudit checkout (or a folder holding them)")
    return AuditConfig(
        name=str(data.get("name", Path(source).stem)),
        source=source,
        out_dir=out_dir,
        seeds=tuple(seeds),
        dataset=dataset,
        train=train,
        models=tuple(models),
        searches=tuple(searches),
        attacks=_tasks(data, "attack", ATTACK_NAMES, labels, source),
        probes=_tasks(data, "probe", PROBE_NAMES, labels, source),
        raw=data,
        run=_run_spec(data, source),
    )
