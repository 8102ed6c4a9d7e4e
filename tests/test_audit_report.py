"""The report is built from results.sqlite alone: synthetic records in, numbers and sections out."""

from __future__ import annotations

import csv
import re
import time
from pathlib import Path

import numpy as np
import pytest

from nasaudit.audit.report import permutation_test, spearman, verdict, write_report
from nasaudit.audit.store import Store
from nasaudit.infra.outdir import claim_output_dir

NAS = ["darts_v2", "pdarts", "enas"]
MANUAL = ["resnet18", "vgg13_bn", "densenet121"]
SEEDS = [0, 1]
SECTIONS = [
    "Summary", "Run", "Headline: NAS minus manual", "Clean accuracy (Table 1)", "Cell metrics (Table 3)",
    "Evasion: PGD and NES (Figures 2 and 5)", "ASR against eps (Figure 3)",
    "How many models each input breaks (Figure 4)",
    "AutoAttack robust accuracy (L-inf)",
    "Evasion on common inputs (one denominator for every model)",
    "Poisoning: CAD against p (Figure 6)",
    "Backdoor: ASR and CAD (Figure 7)",
    "Backdoor defences: Neural Cleanse and fine-pruning",
    "Functionality stealing: Knockoff ACE against budget (Figure 9, Table 2)",
    "Membership inference AUC (Figure 10)",
    "Membership inference at low FPR: offline RMIA (Zarifzadeh et al., ICML 2024)",
    "Model reuse: poisoned primitive, host misclassifies the targets (Ji et al.)",
    "Architecture stealing from an execution trace (after Hong et al., ICLR 2020)",
    "Gradient variance at initialisation and after training (Figure 12)",
    "Loss contours and curvature",
    "Mitigation comparison (Table 4)",
    "Correlations: vulnerability against cell metrics and probes",
    "Trade-off: accuracy, robustness and search cost (sweeps)",
]
# Sections this synthetic audit has no data for, by design (tests/test_sweep.py fills the trade-off).
ASR_TITLE = "model-reuse ASR (host on the poisoned primitive)"
WITHOUT_DATA = {"Trade-off: accuracy, robustness and search cost (sweeps)", "AutoAttack robust accuracy (L-inf)",
                "Backdoor defences: Neural Cleanse and fine-pruning",
                "Membership inference at low FPR: offline RMIA (Zarifzadeh et al., ICML 2024)"}
CONFIG = {
    "name": "synthetic",
    "source": "test",
    "raw": {
        "models": [{"name": m} for m in NAS + MANUAL] + [{"name": "darts_i", "mitigation_of": "darts_v2"}],
        "attacks": {a: {} for a in ("pgd", "pgd_sweep", "nes", "poison", "backdoor", "membership", "model_reuse",
                                   "trace_leak")}
        | {"knockoff": {"each_model": "replica"}},
        "probes": {p: {} for p in ("gradvar", "contour_param", "contour_input", "curvature")},
    },
}


def _trace_leak_record(group: str, i: int) -> dict:
    """A trace-leak attack record: genotype models leak more at weaker levels when i is small."""
    if group == "manual":
        return {"kind": "attack.trace_leak", "applicable": False, "reason": "no genotype"}
    cell = [["sep_conv_3x3", 0], ["skip_connect", 1]] * 4
    genotype = {"normal": cell, "normal_concat": [2, 3, 4, 5], "reduce": cell, "reduce_concat": [2, 3, 4, 5]}
    levels = {}
    for level, acc in (("ops", 1.0), ("shapes", 0.9 - i / 20), ("ops_timing", 0.8 - i / 20), ("timing_noisy", 0.7 - i / 20)):
        per_cell = {"normal": {"edge_op_accuracy": acc, "remaining_bits": 10 * (1 - acc)}}
        levels[level] = {"exact": acc == 1.0, "edge_op_accuracy": acc, "edge_input_accuracy": acc, "concat_accuracy": 1.0,
                         "remaining_bits": 20 * (1 - acc), "trace_length": 500, "draws": 1, "per_cell": per_cell}
    return {"kind": "attack.trace_leak", "applicable": True, "genotype": genotype, "prior_bits": 88.0, "levels": levels}


def _records(label: str, group: str, seed: int, i: int, rng: np.random.Generator) -> list[tuple]:
    """(stage, name, params, result) for one model and seed; NAS models made more vulnerable."""
    bump = 0.2 if group == "nas" else 0.0
    noise = lambda: float(rng.normal(0, 0.01))  # noqa: E731
    success = rng.random(20) < 0.3 + bump
    out = [
        ("train", "train", {}, {"kind": "train_summary", "label": label}),
        ("clean", "clean_accuracy", {}, {"kind": "clean_accuracy", "test_acc": 0.9 + noise(), "test_loss": 0.3}),
        ("attack", "pgd", {}, {"kind": "attack.pgd", "asr": {"most_likely": 0.5 + bump + noise(),
                                                              "least_likely": 0.2 + bump + noise()},
                               "indices": list(range(20)), "success": {"most_likely": success.tolist()}}),
        ("attack", "nes", {}, {"kind": "attack.nes", "asr": {"most_likely": 0.3 + bump + noise(),
                                                              "least_likely": 0.1 + bump + noise()},
                               "indices": list(range(5, 25)), "success": {"most_likely": success.tolist()}}),
        ("attack", "pgd_sweep", {}, {"kind": "attack.pgd_sweep", "eps": [2 / 255, 8 / 255],
                                     "asr": [0.3 + bump + noise(), 0.7 + bump + noise()]}),
        ("attack", "poison", {}, {"kind": "attack.poison", "fractions": [0.0, 0.2],
                                  "cad": [0.0, 0.05 + bump / 4 + noise()]}),
        ("attack", "backdoor", {}, {"kind": "attack.backdoor", "method": "trojannn", "asr": 0.6 + bump + noise(),
                                    "cad": 0.02 - bump / 10 + noise() / 10}),
        ("attack", "membership", {}, {"kind": "attack.membership", "auc": 0.55 + bump / 4 + noise(),
                                      "advantage_at_fpr": 0.01}),
        ("attack", "model_reuse", {}, {"kind": "attack.model_reuse", "asr": 0.6 + bump + noise(), "clean_asr": 0.1,
                                       "asr_after_finetune": 0.4 + bump, "clean_asr_after_finetune": 0.1,
                                       "clean_accuracy_drop": 0.01, "changed_predictions": 0.05,
                                       "finetune_accuracy_drop": 0.02, "param_l0": 0.01, "param_l2": 0.05,
                                       "param_linf": 0.1, "targets_in_region": 0.8}),
        ("attack", "trace_leak", {}, _trace_leak_record(group, i)),
        ("probe_init", "gradvar", {}, {"kind": "probe_gradvar", "log10_variance": (-2 if group == "nas" else 0) + noise()}),
        ("probe", "gradvar", {}, {"kind": "probe_gradvar", "log10_variance": 1 + noise()}),
        ("probe", "contour_param", {}, {"kind": "probe_contour", "mean_increase": 1 + i + noise()}),
        ("probe", "contour_input", {}, {"kind": "probe_contour", "mean_increase": 0.5 + noise()}),
        ("probe", "curvature", {}, {"kind": "probe_curvature", "param_top_eigenvalue": 10 + i,
                                    "input_top_eigenvalue_mean": 1.0 + noise()}),
    ]
    for replica in ("darts_v2", "resnet18"):
        out.append(("attack", "knockoff", {"replica": replica},
                    {"kind": "attack.knockoff", "budgets": [1000, 2000],
                     "ace": [1.5 - bump, 1.2 - bump + noise()], "kl": [0.5, 0.3 - bump / 2]}))
    return out


@pytest.fixture()
def audit_dir(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    claim_output_dir(tmp_path, "audit")  # as `nasaudit audit` does
    with Store(tmp_path) as store:
        store.set_meta("config", CONFIG)
        models = [(m, "nas") for m in NAS] + [(m, "manual") for m in MANUAL] + [("darts_i", "mitigation")]
        for i, (label, group) in enumerate(models):
            info = {"kind": "model_info", "label": label, "spec": label, "group": group, "parameters": 1000 + i,
                    "kwargs": {}, "mitigation_of": "darts_v2" if label == "darts_i" else None}
            if group != "manual":
                cell = {"depth": 2 + i % 3, "width": 4 - i % 3, "skip_connects": i % 2}
                info["cells"] = {"normal": cell, "reduce": cell}
                info["genotype_hash"] = f"{i:064x}"
            store.record_unit(unit_key=f"{label}-info", model=label, model_group=group, stage="analyze",
                              name="model_info", params={}, seed=0, result=info, started=time.time(), device="cpu")
            for seed in SEEDS:
                for j, (stage, name, params, result) in enumerate(_records(label, group, seed, i, rng)):
                    store.record_unit(unit_key=f"{label}-{seed}-{j}", model=label, model_group=group,
                                      stage=stage, name=name, params=params, seed=seed, result=result,
                                      started=time.time(), device="cpu")
    return tmp_path


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_report_has_every_section_with_content(audit_dir: Path) -> None:
    md_path = write_report(audit_dir)
    md = md_path.read_text()
    titles = re.findall(r"^## (.+)$", md, flags=re.M)
    # Sections without data are folded into one closing section, one line each.
    assert titles == [t for t in SECTIONS if t not in WITHOUT_DATA] + ["Not measured in this audit"]
    bodies = re.split(r"^## .+$", md, flags=re.M)[1:]
    for title, body in zip(titles, bodies, strict=True):
        assert body.strip(), f"section {title!r} is empty"
        assert "_No data" not in body, f"section {title!r} says it has no data"
    assert ("**Trade-off: accuracy, robustness and search cost (sweeps)**: the config declares no [[sweeps]] "
            "table.") in bodies[-1]
    assert md.index("## Summary") < md.index("## Run") < md.index("## Headline")
    html = (audit_dir / "report.html").read_text()
    assert html.count("<h2") == len(titles) and "<img" in html
    for fig in re.findall(r"\]\((report_files/figures/[^)]+\.png)\)", md):
        assert (audit_dir / fig).stat().st_size > 1000
    # The synthetic NAS models are clearly more vulnerable, but 3 models per group cannot carry a
    # verdict over this many metrics (smallest p 0.1): the headline says so, row by row and in words.
    headline = {r["metric"]: r for r in _read_csv(audit_dir / "report_files/tables/headline.csv")}
    pgd = headline["PGD ASR, most-likely target"]
    assert 0.15 < float(pgd["NAS - manual"]) < 0.25 and float(pgd["p"]) == pytest.approx(0.1)
    assert pgd["this run"] == "no verdict possible with this many models; point estimate in the study's direction"
    assert pgd["CI 2.5%"] == pgd["CI 97.5%"] == ""  # unbounded: no shift can be rejected with 6 models
    assert headline["backdoor CAD (first configured method)"]["this run"].startswith("no verdict possible")
    assert "No verdict is possible with 3 NAS against 3 manual models" in md.split("## Run")[0]  # the summary
    assert "That takes at least 6 models per group" in md
    cross = _read_csv(audit_dir / "report_files/tables/knockoff_cross.csv")
    assert {r["victim \\ replica"] for r in cross} >= set(NAS + MANUAL)
    common = _read_csv(audit_dir / "report_files/tables/common_inputs.csv")
    assert {int(r["common inputs"]) for r in common if r["attack"] == "pgd"} == {20}
    assert {r["model"] for r in common if r["attack"] == "nes"} >= set(NAS + MANUAL)
    leak = {(r["model"], r["level"]): r for r in _read_csv(audit_dir / "report_files/tables/trace_leak.csv")}
    assert float(leak[("darts_v2", "ops")]["exact rate"]) == 1.0
    assert float(leak[("enas", "ops_timing")]["edge op acc"]) == pytest.approx(0.8 - 2 / 20)
    assert not any(m in MANUAL for m, _ in leak), "manual baselines have no cell to steal"
    reuse = {r["model"]: r for r in _read_csv(audit_dir / "report_files/tables/model_reuse_effect.csv")}
    assert float(reuse["mean (nas)"][ASR_TITLE]) > float(reuse["mean (manual)"][ASR_TITLE])
    mitigation = _read_csv(audit_dir / "report_files/tables/mitigation.csv")
    assert {r["variant"] for r in mitigation} == {"darts_i"}


def test_report_follows_the_database(audit_dir: Path) -> None:
    write_report(audit_dir)
    table = audit_dir / "report_files/tables/membership.csv"
    before = {r["model"]: float(r["membership inference AUC"]) for r in _read_csv(table)}
    with Store(audit_dir) as store:
        for seed in SEEDS:
            key = next(r.unit_key for r in store.units(stage="attack", model="resnet18")
                       if r.name == "membership" and r.seed == seed)
            row = store.get(key)
            store.update_result(key, {**row.result, "auc": 0.987})
    write_report(audit_dir)
    after = {r["model"]: float(r["membership inference AUC"]) for r in _read_csv(table)}
    assert after["resnet18"] == pytest.approx(0.987)
    assert before["resnet18"] != pytest.approx(0.987)
    changed = {"resnet18", "mean (manual)"}
    assert {k: v for k, v in after.items() if k not in changed} == {
        k: v for k, v in before.items() if k not in changed
    }
    assert after["mean (manual)"] == pytest.approx(np.mean([after[m] for m in MANUAL]))
    assert "0.987" in (audit_dir / "report.md").read_text()


def test_missing_sections_say_why(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        store.set_meta("config", {"name": "empty", "raw": {"attacks": {"pgd": {}}}})
        store.record_unit(unit_key="u", model="resnet18", model_group="manual", stage="attack", name="pgd",
                          params={}, seed=0, result=None, started=time.time(), device="cpu",
                          status="failed", error="RuntimeError: out of memory")
    md = write_report(tmp_path).read_text()
    bodies = re.split(r"^## .+$", md, flags=re.M)[1:]
    assert all(b.strip() for b in bodies)
    folded = md.split("## Not measured in this audit", 1)[1]
    assert folded.count("\n**") == len(SECTIONS) - 1  # every section but the run overview, one line each
    assert "every `pgd` unit failed (1); first error: RuntimeError: out of memory" in md
    assert "the config runs no `membership` attack" in md


def test_permutation_test_and_verdicts() -> None:
    a = {"x": [1.0, 1.2], "y": [0.9, 1.1], "z": [1.3]}
    b = {"u": [0.1, 0.2], "v": [0.0]}
    test = permutation_test(a, b)
    # 3 vs 2 models, a perfectly separated: the most extreme of C(5, 2) = 10 relabellings.
    assert test.p == pytest.approx(0.2) and test.min_p == pytest.approx(0.2)
    assert test.low is None and test.high is None  # no shift can be rejected at 5% with 5 models
    assert verdict("higher", test.point, 0.01) == "agrees"
    assert verdict("lower", test.point, 0.01) == "disagrees"
    assert verdict("higher", 0.1, 0.3).startswith("inconclusive")
    assert verdict("higher", 0.1, None).startswith("no verdict possible")
    assert verdict(None, 0.1, 0.3).startswith("no direction")
    rho, p = spearman([1, 2, 3, 4], [2, 4, 6, 9])
    assert rho == pytest.approx(1.0) and p == pytest.approx(1 / 12)  # exact: 2 of 4! orders
    assert spearman([1, 2], [1, 2]) == (None, None)
