"""Every report figure fits its data: on synthetic audits with the model labels of the shipped
configs (the demo's 3, the smoke audit's 4, the paper's 17), no text of any figure leaves its
canvas or overlaps another text."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from nasaudit.audit.config import load_config
from nasaudit.audit.report import METRICS
from nasaudit.audit.report.builder import Builder
from nasaudit.audit.report.data import AuditData
from nasaudit.audit.report.write import build_sections
from nasaudit.audit.store import Store
from nasaudit.infra.resources import data_dir
from tests.test_audit_report import CONFIG, _records


def _labels(config: str) -> list[tuple[str, str]]:
    if config == "demo":
        return [("searched", "nas"), ("darts_v2", "nas"), ("resnet18", "manual")]
    return [(m.label, m.group) for m in load_config(data_dir("experiments") / config).models]


@pytest.mark.parametrize("config", ["demo", "smoke_cifar10.toml", "paper_cifar10.toml"])
def test_figures_have_no_clipped_or_overlapping_text(tmp_path: Path, config: str) -> None:
    models = _labels(config)
    rng = np.random.default_rng(0)
    with Store(tmp_path) as store:
        store.set_meta("config", {**CONFIG, "raw": {**CONFIG["raw"], "models": [{"name": m} for m, _ in models]}})
        for i, (label, group) in enumerate(models):
            info = {"kind": "model_info", "label": label, "spec": label, "group": group, "parameters": 1000 + i}
            store.record_unit(unit_key=f"{label}-info", model=label, model_group=group, stage="analyze",
                              name="model_info", params={}, seed=0, result=info, started=time.time(), device="cpu")
            for j, (stage, name, params, result) in enumerate(_records(label, group, 0, i, rng)):
                store.record_unit(unit_key=f"{label}-{j}", model=label, model_group=group, stage=stage, name=name,
                                  params=params, seed=0, result=result, started=time.time(), device="cpu")
    builder = Builder(AuditData.load(tmp_path), tmp_path, METRICS)
    builder.figs.check_layout = True
    build_sections(builder)
    saved = sorted(p.stem for p in (tmp_path / "report_files" / "figures").glob("*.png"))
    assert {"headline_forest", "evasion_asr", "membership_auc"} <= set(saved)
    assert builder.figs.problems == []


def test_one_model_against_one_gets_the_comparison_it_can_have(tmp_path: Path) -> None:
    """One NAS model against one manual model: no group verdict (the smallest p is 1), but each
    metric side by side with its exact interval over inputs, and what a group verdict needs."""
    from nasaudit.audit.report import write_report

    rng = np.random.default_rng(1)
    with Store(tmp_path) as store:
        store.set_meta("config", {**CONFIG, "raw": {**CONFIG["raw"], "models": [{"name": "mine"}, {"name": "resnet18"}]}})
        for i, (label, group) in enumerate((("mine", "nas"), ("resnet18", "manual"))):
            for j, (stage, name, params, result) in enumerate(_records(label, group, 0, i, rng)):
                store.record_unit(unit_key=f"{label}-{j}", model=label, model_group=group, stage=stage, name=name,
                                  params=params, seed=0, result=result, started=time.time(), device="cpu")
    md = write_report(tmp_path).read_text()
    summary = md.split("## Summary", 1)[1].split("\n## ", 1)[0]
    assert "No verdict is possible with 1 NAS against 1 manual models" in summary
    assert "| metric | mine | mine: successes/n, 95% CI | resnet18 |" in summary
    pgd_row = next(line for line in summary.splitlines() if line.startswith("| PGD ASR, most-likely target"))
    assert "/20, " in pgd_row  # the rate's count over its 20 attacked inputs, with the interval
    assert "models per group" in summary
