"""[[sweeps]] in the audit config: expansion into labelled searches, and a 2x2 sweep on digits
run end to end (search, train, PGD) whose report has a filled trade-off section."""

from __future__ import annotations

import dataclasses
import re

import pytest

from nasaudit.audit.config import (
    LIST_SEARCH_FIELDS,
    SWEEP_GROUP,
    config_from_dict,
    expand_sweep,
)
from nasaudit.infra.errors import InputError


def test_list_valued_search_fields_are_declared():
    from nasaudit.search import SearchConfig

    listy = {f.name for f in dataclasses.fields(SearchConfig)
             if isinstance(getattr(SearchConfig(), f.name), (list, tuple))}
    assert listy == LIST_SEARCH_FIELDS


def test_sweep_expands_to_one_labelled_search_per_combination():
    item = {"name": "knobs", "n_step": [1, 2], "gamma": [1.0, 0.5], "epochs": 3,
            "objectives": [[], ["input_curvature:0.1", "beta:1"]], "hooks": []}
    points = expand_sweep(item)
    assert [p.label for p in points] == [
        "knobs-n_step1-gamma1-objectivesnone", "knobs-n_step1-gamma1-objectivesinput_curvature0.1+beta1",
        "knobs-n_step1-gamma0.5-objectivesnone", "knobs-n_step1-gamma0.5-objectivesinput_curvature0.1+beta1",
        "knobs-n_step2-gamma1-objectivesnone", "knobs-n_step2-gamma1-objectivesinput_curvature0.1+beta1",
        "knobs-n_step2-gamma0.5-objectivesnone", "knobs-n_step2-gamma0.5-objectivesinput_curvature0.1+beta1",
    ]
    # Fixed settings (a scalar, or a plain list for a list-valued field) go to every point.
    assert all(p.params["epochs"] == 3 and p.params["hooks"] == [] for p in points)
    assert points[3].params == {"epochs": 3, "hooks": [], "n_step": 1, "gamma": 0.5,
                                "objectives": ["input_curvature:0.1", "beta:1"]}
    # The first combination is plain DARTS already: no extra reference point.
    assert not any(p.reference for p in points)
    # Without the defaults in the grid, a "NAME-darts" reference point is added (unless disabled).
    grid = expand_sweep({"name": "k", "n_step": [2, 5], "gamma": [0.5]})
    assert [p.label for p in grid] == ["k-n_step2-gamma0.5", "k-n_step5-gamma0.5", "k-darts"]
    assert grid[-1].reference and grid[-1].knobs == {"n_step": 1, "gamma": 1.0} and grid[-1].params == {}
    assert len(expand_sweep({"name": "k", "n_step": [2, 5], "reference": False})) == 2


def test_sweep_points_become_searched_models_and_bad_sweeps_fail():
    base = {"dataset": {"name": "digits"}, "model_defaults": {"nas": {"C": 4}}}
    config = config_from_dict({**base, "sweeps": [{"name": "s", "n_step": [1, 2], "kwargs": {"layers": 2}}]})
    assert [m.label for m in config.models] == ["s-n_step1", "s-n_step2"]
    assert all(m.group == SWEEP_GROUP and m.spec == f"search:{m.label}" and m.kwargs == {"C": 4, "layers": 2}
               for m in config.models)
    assert [(s.name, s.params) for s in config.searches] == [("s-n_step1", {"n_step": 1}), ("s-n_step2", {"n_step": 2})]
    bad = [
        ({"sweeps": [{"name": "s", "n_stp": [1, 2]}]}, "did you mean 'n_step'"),
        ({"sweeps": [{"name": "s", "n_step": []}]}, "lists no values"),
        ({"sweeps": [{"name": "s", "n_step": [1, 2]}], "searches": [{"name": "s-n_step2"}]}, "unique"),
        ({"sweeps": [{"name": "s", "n_step": [2]}], "report": {"weighting": {"clean_acc": -1}}}, ">= 0"),
        ({"sweeps": [{"name": "s", "n_step": [2]}], "report": {"weighting": {"pgd_asr": 1}}}, "did you mean .pgd_asr_ml."),
        ({"models": []}, "at least one"),
    ]
    for extra, problem in bad:
        with pytest.raises(InputError, match=problem):
            config_from_dict({**base, **extra})


SWEEP = """
name = "sweep"
out_dir = "out"
seeds = [0]

[dataset]
name = "digits"

[train]
epochs = 1
batch_size = 64
lr = 0.05
drop_path_prob = 0.0

[model_defaults.nas]
C = 4
layers = 2
auxiliary = false

[[models]]
name = "darts_v2"                     # a DARTS reference point

[[sweeps]]
name = "knobs"
n_step = [1, 2]
gamma = [1.0, 0.5]
epochs = 1
C = 4
layers = 2
nodes = 2
batch_size = 32
train_subset = 128
log_every = 0
probe_samples = 0

[report.weighting]
clean_acc = 1.0
pgd_asr_ml = 2.0

[attacks.pgd]
n_inputs = 16
restarts = 1
cases = ["most_likely"]
"""


def test_two_by_two_sweep_on_digits_runs_end_to_end_with_a_tradeoff_section(tmp_path):
    from nasaudit.audit.config import load_config
    from nasaudit.audit.runner import run_audit

    (tmp_path / "sweep.toml").write_text(SWEEP)
    config = load_config(tmp_path / "sweep.toml")
    assert len(config.searches) == 4 and len(config.models) == 5
    run_audit(config, device="cpu", progress=False)
    report = (tmp_path / "out" / "report.md").read_text()
    section = report[report.index("## Trade-off"):]
    section = section[: section.find("\n## ", 4)] if "\n## " in section[4:] else section
    assert "_No data" not in section
    assert "4 of 4 sweep points finished" in section
    assert (tmp_path / "out" / "report_files" / "figures" / "tradeoff.png").stat().st_size > 10_000
    # The front table lists known points with their knobs; the best balance is one of them.
    rows = re.findall(r"^\| (knobs-\S+) \| (\S+) \|", section, flags=re.M)
    assert rows and all(label == f"knobs-{knobs}" for label, knobs in rows)
    best = re.search(r"\*\*Best balance\*\* for the weighting clean accuracy 1, PGD ASR 2: `(knobs-[^`]+)`", section)
    assert best and best.group(1) in {label for label, _ in rows}
    csv = (tmp_path / "out" / "report_files" / "tables" / "tradeoff_front.csv").read_text().splitlines()
    assert csv[0].startswith("point,knobs,clean accuracy,PGD ASR,search device-seconds")
    assert len(csv) - 1 == len(rows)
