"""`nasaudit demo`: a small end-to-end search-and-audit on the embedded digits data.

It needs no files and no network: a short DARTS search on digits, then an audit of the searched
genotype, one published genotype (darts_v2) and one manual baseline (a narrow resnet18) with
every attack and probe at tiny budgets, then the report. The pipeline is exactly
`nasaudit audit`'s; only the budgets are small, so the numbers illustrate the workflow rather
than reproduce the study (that is experiments/paper_cifar10.toml's job).
"""

from __future__ import annotations

import copy
import importlib
from pathlib import Path
from typing import Any

from nasaudit.infra.errors import InputError

# Budgets chosen to finish in a few minutes on 2 CPU cores; every section of the report fills.
DEMO_CONFIG: dict[str, Any] = {
    "name": "demo",
    "description": "nasaudit demo: search and audit on the embedded digits data (tiny budgets)",
    "seeds": [0],
    "dataset": {"name": "digits"},
    # No flips: a mirrored digit is another glyph. Two epochs at batch 32 learn more than three
    # at batch 64 on digits, in less time.
    "train": {"epochs": 2, "batch_size": 32, "lr": 0.05, "drop_path_prob": 0.0, "flip": False},
    "model_defaults": {"nas": {"C": 4, "layers": 3, "auxiliary": False}, "manual": {"width": 8}},
    "searches": [
        {"name": "digits", "C": 4, "layers": 3, "batch_size": 32, "epochs": 1, "train_subset": 160,
         "probe_samples": 0, "log_every": 0, "checkpoint_every": 0},
    ],
    "models": [
        {"name": "searched", "spec": "search:digits"},
        {"name": "darts_v2"},
        {"name": "resnet18"},
    ],
    "probes": {
        "gradvar": {"n_samples": 32, "chunk_size": 16},
        "contour_param": {"points": 5, "n_samples": 64},
        "contour_input": {"points": 5, "n_samples": 4},
        "curvature": {"n_samples": 32, "n_inputs": 4, "iters": 5},
    },
}

# The `quick` variant (tests): the same pipeline with even smaller budgets.
QUICK_OVERRIDES: dict[str, Any] = {
    "train": {"epochs": 1},
    "searches": {"max_steps": 2, "train_subset": 128},
    "model_defaults": {"nas": {"C": 4, "layers": 2}, "manual": {"width": 4}},
}


def demo_config(quick: bool = False) -> dict[str, Any]:
    """The demo's audit config as a dict (`quick`: smaller budgets for the test suite): the
    models, searches and probes above, and every attack with the settings its module gives
    for the demo (`AttackSpec.demo`)."""
    from nasaudit.attacks import all_specs

    config = copy.deepcopy(DEMO_CONFIG)
    config["attacks"] = {name: copy.deepcopy(dict(spec.demo)) for name, spec in all_specs().items()}
    if quick:
        config["train"].update(QUICK_OVERRIDES["train"])
        for search in config["searches"]:
            search.update(QUICK_OVERRIDES["searches"])
        for group, kwargs in QUICK_OVERRIDES["model_defaults"].items():
            config["model_defaults"][group].update(kwargs)
    return config


def _available(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def restrict_to_installed(config: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Drop the parts whose modules this install lacks (searches, attacks, probes).

    Returns (config, notes). Keeps the demo useful on a partial checkout: the report then
    says, section by section, what did not run.
    """
    config = copy.deepcopy(config)
    notes = []
    if config.get("searches") and not _available("nasaudit.search"):
        config.pop("searches")
        config["models"] = [m for m in config["models"] if not str(m.get("spec", "")).startswith("search:")]
        notes.append("nasaudit.search is not installed: no search, published genotypes only")
    for section, module in (("attacks", "nasaudit.attacks"), ("probes", "nasaudit.probes")):
        if config.get(section) and not _available(module):
            config.pop(section)
            notes.append(f"{module} is not installed: the demo runs no {section}")
    return config, notes


def default_workers(device: str, cores: int | None) -> int:
    """Worker processes for the demo: 2 on a CPU with 2 or more cores, else 1 (this process).

    The demo's networks are too small to keep two cores busy from one process
    (docs/BENCHMARKS.md times both), so two one-thread workers finish sooner. On a GPU
    one process feeds the device.
    """
    from nasaudit.infra.device import resolve_device

    if resolve_device(device).type != "cpu":
        return 1
    return 2 if (cores or 1) >= 2 else 1


def run_demo(out_dir: str | Path = "nasaudit-demo", *, device: str = "auto", quick: bool = False,
             progress: bool = True, resume: bool = True, workers: int | None = None):
    """Run the demo audit into `out_dir`; returns the `AuditSummary` (with .report).

    workers: processes running units (default `default_workers`); 1 runs them in this process.
    """
    import os

    from nasaudit.audit.config import config_from_dict
    from nasaudit.audit.runner import run_audit

    out_dir = Path(out_dir).resolve()
    raw, notes = restrict_to_installed(demo_config(quick))
    raw["out_dir"] = str(out_dir)
    config = config_from_dict(raw, base_dir=out_dir, source="nasaudit demo")
    for note in notes:
        print(f"nasaudit demo: {note}")
    if workers is None:
        workers = default_workers(device, os.cpu_count())
    if workers < 1:
        raise InputError("--workers", f"must be >= 1, got {workers}")
    engine = "processes" if workers > 1 else "local"
    return run_audit(config, device=device, resume=resume, progress=progress, engine=engine,
                     workers=workers if workers > 1 else None)


def summarize(out_dir: str | Path) -> str:
    """A short text summary of a finished demo, read from its results database."""
    from nasaudit.audit.report import METRIC_BY_KEY, AuditData

    data = AuditData.load(out_dir)
    lines = []
    for row in data.rows:
        if row.stage == "search":
            g = row.result["genotype"]
            lines.append(f"searched genotype (hash {row.result['genotype_hash'][:12]}):")
            lines.append(f"  normal: {g['normal']}  concat {g['normal_concat']}")
            lines.append(f"  reduce: {g['reduce']}  concat {g['reduce_concat']}")
    acc = data.model_means(METRIC_BY_KEY["clean_acc"])
    keys = ("pgd_asr_ml", "membership_auc", "backdoor_asr")
    vals = {k: data.model_means(METRIC_BY_KEY[k]) for k in keys}
    header = f"{'model':<12}{'group':<8}{'depth':>6}{'width':>6}{'skips':>6}{'acc':>7}{'PGD ASR':>9}{'MIA AUC':>9}{'BD ASR':>8}"
    lines += ["", header]
    for label in data.order:
        cells = ((data.info.get(label) or {}).get("cells") or {}).get("normal") or {}
        nums = [acc.get(label)] + [vals[k].get(label) for k in keys]
        cols = [f"{cells.get(k, '-'):>6}" for k in ("depth", "width", "skip_connects")]
        cols += [f"{v:>7.3f}" if v is not None else f"{'-':>7}" for v in nums[:1]]
        cols += [f"{v:>9.3f}" if v is not None else f"{'-':>9}" for v in nums[1:3]]
        cols += [f"{v:>8.3f}" if v is not None else f"{'-':>8}" for v in nums[3:]]
        lines.append(f"{label:<12}{data.group.get(label, '?'):<8}" + "".join(cols))
    return "\n".join(lines)
