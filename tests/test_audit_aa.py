"""An A/A audit: one architecture, trained and attacked under ten seeds, its seeds split into a
"NAS" and a "manual" group of five models each. Nothing differs between the groups but chance,
so the report must give no clear verdict, although five against five is enough for one (the
smallest permutation p, 2/252, passes Holm over this audit's three metrics)."""

from __future__ import annotations

import csv
import sqlite3
from pathlib import Path

from nasaudit.audit.config import config_from_dict
from nasaudit.audit.report import write_report
from nasaudit.audit.report.stats import verdict_possible
from nasaudit.audit.runner import run_audit

SEEDS = list(range(10))
CONFIG = {
    "name": "aa",
    "seeds": SEEDS,
    "dataset": {"name": "digits"},
    "train": {"epochs": 1, "batch_size": 32, "lr": 0.05, "drop_path_prob": 0.0, "flip": False},
    "model_defaults": {"manual": {"width": 8}},
    "models": [{"name": "resnet18"}],
    "probes": {"gradvar": {"enabled": False}},
    "attacks": {"pgd": {"n_inputs": 24, "restarts": 1}},
    # Seeds differ in accuracy by chance; the statistic, not the confound rule, is under test.
    "report": {"accept_accuracy_gap": True},
}


def test_one_architecture_under_two_labels_gives_no_verdict(tmp_path: Path) -> None:
    config = config_from_dict({**CONFIG, "out_dir": str(tmp_path / "aa")}, base_dir=tmp_path)
    run_audit(config, progress=False)
    db = tmp_path / "aa" / "results.sqlite"
    conn = sqlite3.connect(db)
    with conn:  # seeds 0-4 become five "NAS" models, seeds 5-9 five "manual" ones
        conn.execute("DELETE FROM units WHERE stage = 'analyze'")  # its record names the group too
        for seed in SEEDS:
            conn.execute("UPDATE units SET model = ?, model_group = ? WHERE seed = ?",
                         (f"resnet18-s{seed}", "nas" if seed < 5 else "manual", seed))
    conn.close()
    write_report(tmp_path / "aa")
    with open(tmp_path / "aa" / "report_files" / "tables" / "headline.csv", newline="") as handle:
        rows = {r["metric"]: r for r in csv.DictReader(handle)}
    assert {r["models NAS/manual"] for r in rows.values()} == {"5/5"}
    assert len(rows) == 3 and verdict_possible(5, 5, len(rows))
    # The seeds' models really differ (the test is not vacuous) ...
    assert len({float(r["NAS - manual"]) for r in rows.values()}) == 3
    assert any(float(r["NAS - manual"]) != 0 for r in rows.values())
    # ... and no difference between the labels is called a finding.
    for metric, row in rows.items():
        assert row["this run"] not in ("agrees", "disagrees"), (metric, row)
        assert float(row["p (Holm)"]) >= 0.05
