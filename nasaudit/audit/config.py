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

    [[searches]]                        # run first; audit the result with spec "search:NAME"
    name = "nstep5"
    n_step = 5                          # nasaudit.search.SearchConfig fields
    hooks = ["skip_penalty:0.5"]

    [attacks.pgd]                       # one table = one parameter set (study defaults if empty)
    n_inputs = 1000
    [[attacks.knockoff]]                # an array of tables = one unit per parameter set
    budget = 1000
    [probes.gradvar]
    at_init = true                      # also measure at initialisation (default true)

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
import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nasaudit.errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

# Attack and probe names the audit knows how to schedule, in report order.
KNOWN_ATTACKS = ("pgd", "pgd_sweep", "nes", "poison", "backdoor", "knockoff", "membership")
KNOWN_PROBES = ("gradvar", "contour_param", "contour_input", "curvature")
# Keys inside an attack/probe table that configure scheduling, never passed to the module.
AUDIT_KEYS = frozenset({"enabled", "models", "each_model", "each_model_in", "at_init"})
SEARCH_PREFIX = "search:"


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
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "config file not found")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"invalid TOML ({exc})") from None
    return config_from_dict(data, base_dir=path.resolve().parent, source=str(path))


def _table(data: dict, key: str, source: str) -> dict:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise InputError(source, f"[{key}] must be a table")
    return value


def _resolve_path(value: Any, base_dir: Path, source: str, what: str) -> Path:
    if not isinstance(value, str) or not value:
        raise InputError(source, f"{what} must be a non-empty string path")
    p = Path(value).expanduser()
    return (p if p.is_absolute() else base_dir / p).resolve()


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
            raise InputError(source, f"unknown {kind} {name!r} in [{section}]; known: {', '.join(known)}")
        entries = entry if isinstance(entry, list) else [entry]
        for item in entries:
            if not isinstance(item, dict):
                raise InputError(source, f"[{section}.{name}] must be a table or an array of tables")
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
                if not isinstance(among, list) or not set(among) <= set(labels):
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
    known_top = {"name", "out_dir", "seeds", "dataset", "train", "model_defaults", "models",
                 "searches", "attacks", "probes", "description"}
    unknown = sorted(set(data) - known_top)
    if unknown:
        raise InputError(source, f"unknown top-level key(s) {', '.join(unknown)}")

    ds = _table(data, "dataset", source)
    if "name" not in ds:
        raise InputError(source, "[dataset] needs a name (cifar10, cifar100, imagenet32 or digits)")
    data_dir = ds.get("data_dir")
    dataset = DatasetSpec(
        name=str(ds["name"]),
        data_dir=None if data_dir is None else _resolve_path(data_dir, base_dir, source, "dataset.data_dir"),
        download=bool(ds.get("download", False)),
        num_classes=ds.get("num_classes"),
    )

    seeds = data.get("seeds", [0])
    if isinstance(seeds, int):
        seeds = [seeds]
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise InputError(source, "seeds must be a non-empty list of integers")
    if len(set(seeds)) != len(seeds):
        raise InputError(source, "seeds must not repeat")

    train = _table(data, "train", source)
    if "seed" in train:
        raise InputError(source, "[train] must not set seed; use the top-level seeds list")
    defaults = _table(data, "model_defaults", source)

    searches: list[SearchSpec] = []
    raw_searches = data.get("searches", [])
    if not isinstance(raw_searches, list):
        raise InputError(source, "searches must be an array of tables ([[searches]])")
    for item in raw_searches:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InputError(source, "each [[searches]] entry needs a string name")
        params = {k: v for k, v in item.items() if k not in ("name", "seed")}
        searches.append(SearchSpec(item["name"], params, int(item.get("seed", seeds[0]))))
    search_names = [s.name for s in searches]
    if len(set(search_names)) != len(search_names):
        raise InputError(source, "search names must be unique")

    raw_models = data.get("models")
    if not isinstance(raw_models, list) or not raw_models:
        raise InputError(source, "the config needs at least one [[models]] entry")
    models: list[ModelSpec] = []
    for item in raw_models:
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InputError(source, "each [[models]] entry needs a string name")
        extra = sorted(set(item) - {"name", "spec", "group", "kwargs", "train", "mitigation_of"})
        if extra:
            raise InputError(source, f"model {item['name']!r}: unknown key(s) {', '.join(extra)}")
        spec = _resolve_spec(str(item.get("spec", item["name"])), base_dir)
        if spec.startswith(SEARCH_PREFIX) and spec[len(SEARCH_PREFIX) :] not in search_names:
            raise InputError(source, f"model {item['name']!r} uses {spec!r} but no such [[searches]] entry")
        mitigation_of = item.get("mitigation_of")
        group = str(item.get("group") or ("mitigation" if mitigation_of else _default_group(spec)))
        base_kwargs = dict(defaults.get("manual" if _default_group(spec) == "manual" else "nas", {}))
        kwargs = {**base_kwargs, **dict(item.get("kwargs", {}))}
        models.append(ModelSpec(item["name"], spec, group, kwargs, dict(item.get("train", {})), mitigation_of))
    labels = [m.label for m in models]
    if len(set(labels)) != len(labels):
        raise InputError(source, "model names must be unique")
    for m in models:
        if m.mitigation_of is not None and m.mitigation_of not in labels:
            raise InputError(source, f"model {m.label!r}: mitigation_of names unknown model {m.mitigation_of!r}")

    out = data.get("out_dir", f"runs/{data.get('name', 'audit')}")
    return AuditConfig(
        name=str(data.get("name", Path(source).stem)),
        source=source,
        out_dir=_resolve_path(out, base_dir, source, "out_dir"),
        seeds=tuple(seeds),
        dataset=dataset,
        train=train,
        models=tuple(models),
        searches=tuple(searches),
        attacks=_tasks(data, "attack", KNOWN_ATTACKS, labels, source),
        probes=_tasks(data, "probe", KNOWN_PROBES, labels, source),
        raw=data,
    )
