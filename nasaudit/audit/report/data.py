"""The data a report is made of, read from an audit's results.sqlite (and nothing else)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nasaudit.audit.config import AUDIT_KEYS
from nasaudit.audit.report.metrics import Metric, num
from nasaudit.audit.store import Store, UnitRow


@dataclass
class AuditData:
    """Everything the report shows, as read from results.sqlite."""

    rows: list[UnitRow]
    failed: list[UnitRow]
    config: dict[str, Any]
    runs: list[dict[str, Any]]
    info: dict[str, dict] = field(default_factory=dict)  # label -> model_info record
    group: dict[str, str] = field(default_factory=dict)  # label -> group
    order: list[str] = field(default_factory=list)  # labels in the order they were audited

    @classmethod
    def load(cls, out_dir: str | Path) -> AuditData:
        with Store(out_dir, read_only=True) as store:
            rows = store.units(status="done")
            failed = store.units(status="failed")
            config = store.get_meta("config", {}) or {}
            runs = store.get_meta("runs", []) or []
        data = cls(rows, failed, config, runs)
        for row in rows:
            if row.stage == "search":
                continue
            if row.model not in data.group:
                data.group[row.model] = row.model_group
                data.order.append(row.model)
            if row.stage == "analyze" and row.result:
                data.info[row.model] = row.result
                data.group[row.model] = row.result.get("group", row.model_group)
        # Present models in config order when the config is known (stable tables and plots).
        configured = [m.get("name") if isinstance(m, dict) else m for m in config_models(config)]
        data.order.sort(key=lambda label: configured.index(label) if label in configured else len(configured))
        return data

    def configured(self, kind: str, name: str) -> list[dict[str, Any]]:
        """The parameter sets configured for an attack/probe (empty when not configured)."""
        section = (self.config.get("raw") or {}).get("attacks" if kind == "attack" else "probes") or {}
        entry = section.get(name)
        if entry is None:
            return []
        entries = entry if isinstance(entry, list) else [entry]
        return [e for e in entries if isinstance(e, dict) and e.get("enabled", True)]

    def results(self, stage: str, name: str) -> list[UnitRow]:
        return [r for r in self.rows if r.stage == stage and r.name == name and r.result is not None]

    def primary(self, stage: str, name: str) -> list[UnitRow]:
        """The rows of the first configured parameter set (what the headline compares).

        Several parameter sets per attack are allowed; the first one in the config is the
        primary. For Knockoff, the replica with the victim's own architecture is preferred.
        """
        rows = self.results(stage, name)
        strip: Callable[[dict], dict] = lambda p: p  # noqa: E731
        if name == "knockoff":
            own = [r for r in rows if replica_of(r) in (None, r.model, spec_of(self, r.model))]
            rows = own or rows
            strip = lambda p: {k: v for k, v in p.items() if k not in REPLICA_KEYS}  # noqa: E731
        if not rows:
            return []
        by_params: dict[str, list[UnitRow]] = defaultdict(list)
        for r in rows:
            by_params[canonical_params(strip(r.params))].append(r)
        kind = "attack" if stage == "attack" else "probe"
        for entry in self.configured(kind, name):
            key = canonical_params(strip({k: v for k, v in entry.items() if k not in AUDIT_KEYS}))
            if key in by_params:
                return by_params[key]
        # The config changed since: fall back to the parameter set that covers most models.
        return max(by_params.values(), key=lambda rs: len({x.model for x in rs}))

    def failures_for(self, stage: str, name: str) -> list[UnitRow]:
        return [r for r in self.failed if r.stage == stage and r.name == name]

    def labels(self, group: str | None = None) -> list[str]:
        return [m for m in self.order if group is None or self.group.get(m) == group]

    def values(self, metric: Metric) -> dict[str, dict[int, float]]:
        """metric -> {model label: {seed: value}} from the primary parameter set."""
        out: dict[str, dict[int, float]] = defaultdict(dict)
        for row in self.primary(metric.stage, metric.name):
            value = metric.read(row.result)
            if value is not None:
                out[row.model][row.seed] = value
        return dict(out)

    def model_means(self, metric: Metric) -> dict[str, float]:
        return {m: float(np.mean(list(v.values()))) for m, v in self.values(metric).items() if v}


def config_models(config: dict) -> list:
    models = (config.get("raw") or {}).get("models") or []
    return models if isinstance(models, list) else []


def canonical_params(params: dict) -> str:
    return json.dumps(params, sort_keys=True, default=str)


REPLICA_KEYS = ("replica", "replica_model", "replica_arch")


def replica_of(row: UnitRow) -> str | None:
    for key in REPLICA_KEYS:
        if key in row.params:
            return row.params[key]
    return None


def spec_of(data: AuditData, label: str) -> str | None:
    info = data.info.get(label) or {}
    return info.get("spec")



# A probe picture larger than this (bytes, or pixels a side) is not drawn: the store is input,
# and a PNG header can claim a size that would take gigabytes to decode.
MAX_PICTURE_BYTES = 20 * 2**20
MAX_PICTURE_SIDE = 4096


def locate_file(path: str | None, out_dir: Path) -> Path | None:
    """A file a probe recorded, found only inside the audit's own directory (also after the
    directory was moved or copied); None for a path that leads anywhere else."""
    if not path or not isinstance(path, str):
        return None
    root = out_dir.resolve()
    p = Path(path)
    candidates = [p] if p.is_absolute() else [out_dir / p]
    if "probes" in p.parts:  # re-root the part below the audit's own probes/ directory
        candidates.append(out_dir.joinpath(*p.parts[p.parts.index("probes"):]))
    for candidate in candidates:
        try:
            resolved = candidate.resolve()
        except (OSError, RuntimeError):
            continue
        if resolved.is_relative_to(root) and resolved.is_file():
            return resolved
    return None


def locate_picture(path: str | None, out_dir: Path) -> Path | None:
    """`locate_file` for a PNG that is safe to decode: a real PNG whose header declares at most
    MAX_PICTURE_SIDE pixels a side, in a file of at most MAX_PICTURE_BYTES."""
    from nasaudit.infra.io import png_size

    found = locate_file(path, out_dir)
    size = png_size(found, MAX_PICTURE_BYTES) if found is not None else None
    if size is None or not (0 < size[0] <= MAX_PICTURE_SIDE and 0 < size[1] <= MAX_PICTURE_SIDE):
        return None
    return found


def normal_cell_metrics(genotype: dict | None) -> dict:
    """Normal-cell metrics of a canonical genotype JSON from the database ({} if unreadable)."""
    if not isinstance(genotype, dict):
        return {}
    try:
        from nasaudit.analysis import analyze_cell

        cell = [tuple(pair) for pair in genotype["normal"]]
        return analyze_cell(cell, tuple(genotype["normal_concat"]))
    except (KeyError, TypeError, ValueError):
        return {}


def hooks_text(params: dict) -> str:
    hooks = params.get("hooks") or []
    return ", ".join(map(str, hooks)) if isinstance(hooks, list) else str(hooks)


def label_of(data: AuditData, spec: str) -> str:
    if spec in data.order:
        return spec
    for label, info in data.info.items():
        if info.get("spec") == spec:
            return label
    return spec




def mean_of(values: Iterable[Any]) -> float | None:
    vals = [v for v in (num(x) for x in values) if v is not None]
    return float(np.mean(vals)) if vals else None


