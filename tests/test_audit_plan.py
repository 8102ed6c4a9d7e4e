"""The audit's plan: built up front from the config alone, dependencies, resources per unit kind,
the [run] table, engine choice, the scheduler's blocking rule, and --dry-run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nasaudit.audit.config import DEFAULT_RESOURCES, config_from_dict
from nasaudit.audit.plan import Scheduler, build_plan, describe_plan, search_key
from nasaudit.audit.runner import choose_engine
from nasaudit.infra.errors import InputError

BASE = {
    "dataset": {"name": "digits"},
    "seeds": [0, 1],
    "train": {"epochs": 1},
    "model_defaults": {"nas": {"C": 4, "layers": 2, "auxiliary": False}, "manual": {"width": 4}},
    "searches": [{"name": "s", "C": 4, "layers": 2, "epochs": 1}],
    "models": [{"name": "found", "spec": "search:s"}, {"name": "resnet18"}],
    "probes": {"gradvar": {"n_samples": 8}},
    "attacks": {"pgd": {"n_inputs": 4}, "poison": {"epochs": 1},
                "knockoff": {"budgets": [10], "epochs": 1, "each_model": "replica"}},
}


def _plan(**changes):
    return build_plan(config_from_dict({**BASE, **changes}, base_dir="/tmp/nasaudit-plan-test"))


def test_plan_graph_dependencies_and_resources() -> None:
    plan = _plan()
    units = {u.key: u for u in plan.units}
    s_key = search_key(plan.config, "s")
    # 1 search + per model: analyze (first seed) + 2 seeds x (probe_init, train, clean, probe,
    # pgd, poison, knockoff x 2 replicas) = 1 + 2 * (1 + 2 * 8)
    assert len(plan.units) == 35 and len(units) == 35
    assert plan.units[0].key == s_key and plan.units[0].needs == ()
    seen: set[str] = set()
    for unit in plan.units:  # run order: every unit after what it needs
        assert set(unit.needs) <= seen, unit
        seen.add(unit.key)
    by = lambda **kw: [u for u in plan.units if all(getattr(u, k) == v for k, v in kw.items())]  # noqa: E731
    for u in by(model="found"):
        assert s_key in u.needs or any(units[n].stage == "train" for n in u.needs)
    for u in by(model="resnet18", stage="train") + by(model="resnet18", stage="analyze"):
        assert u.needs == ()
    for u in by(model="resnet18", stage="attack"):
        (train_key,) = [n for n in u.needs if units[n].stage == "train"]
        assert units[train_key].group_key == u.group_key
    # Knockoff on resnet18 with the searched architecture as replica also waits on the search.
    cross = [u for u in by(model="resnet18", name="knockoff") if u.params["replica"] == "found"]
    assert len(cross) == 2 and all(s_key in u.needs for u in cross)
    own = [u for u in by(model="resnet18", name="knockoff") if u.params["replica"] == "resnet18"]
    assert all(s_key not in u.needs for u in own)
    # Resources per kind: retraining attacks a whole GPU, light units a fraction, analysis none.
    kinds = {(u.stage, u.name): u.resource_kind for u in plan.units}
    assert kinds[("search", "search")] == "search" and kinds[("train", "train")] == "train"
    assert kinds[("attack", "poison")] == kinds[("attack", "knockoff")] == "retrain"
    assert kinds[("attack", "pgd")] == kinds[("probe", "gradvar")] == kinds[("clean", "clean_accuracy")] == "light"
    assert plan.resources(by(name="poison")[0]) == {"GPU": 1.0, "CPU": 1.0}
    assert plan.resources(by(name="pgd")[0]) == {"GPU": 0.25, "CPU": 1.0}
    assert plan.resources(by(stage="analyze")[0]) == {"GPU": 0.0, "CPU": 1.0}


def test_keys_depend_on_inputs_not_on_the_run() -> None:
    a, b = _plan(), _plan()
    assert a.keys == b.keys
    # [run] never changes a key; a changed attack parameter changes only its units.
    c = _plan(run={"engine": "ray", "resources": {"light": {"gpu": 0.5}}})
    assert c.keys == a.keys and c.resources(c.units[-1])["GPU"] in (0.5, 1.0)
    d = _plan(attacks={**BASE["attacks"], "pgd": {"n_inputs": 5}})
    changed = set(d.keys) ^ set(a.keys)
    assert len(changed) == 2 * 4  # 4 pgd units (2 models x 2 seeds) out, 4 in
    assert all(u.name == "pgd" for u in a.units if u.key in changed)
    # A different search changes the searched model's keys, not the baseline's.
    e = _plan(searches=[{"name": "s", "C": 4, "layers": 2, "epochs": 2}])
    moved = {u.model for u in a.units if u.key not in set(e.keys)}
    assert moved == {"search:s", "found"}


def test_run_table_and_engine_choice() -> None:
    config = config_from_dict({**BASE, "run": {"engine": "ray", "address": "auto",
                                               "resources": {"train": {"gpu": 2, "cpu": 4}}}})
    assert config.run.resources["train"] == {"gpu": 2, "cpu": 4}
    assert config.run.resources["light"] == DEFAULT_RESOURCES["light"]
    assert choose_engine(config, None, None, None) == ("ray", "auto")
    assert choose_engine(config, "local", None, None) == ("local", None)
    assert choose_engine(config, "ray", "10.0.0.1:6379", None) == ("ray", "10.0.0.1:6379")  # flags win
    plain = config_from_dict(BASE)
    assert choose_engine(plain, None, None, None) == ("local", None)
    assert choose_engine(plain, None, None, 1) == ("local", None)
    assert choose_engine(plain, None, None, 4) == ("ray", None)  # --workers N: local Ray
    assert choose_engine(plain, "processes", None, 4) == ("processes", None)  # N processes
    processes = config_from_dict({**BASE, "run": {"engine": "processes"}})
    assert choose_engine(processes, None, None, None) == ("processes", None)
    for args, message in (((plain, "local", "auto", None), "add --engine ray"),
                          ((plain, "processes", "auto", None), "add --engine ray"),
                          ((plain, None, "auto", 2), "give one of them"),
                          ((plain, "local", None, 2), "processes or Ray engine"),
                          ((plain, None, None, 0), "must be >= 1")):
        with pytest.raises(InputError, match=message):
            choose_engine(*args)
    for run, message in (({"engine": "spark"}, "engine must be one of"),
                         ({"adress": "auto"}, "adress"),
                         ({"resources": {"trian": {"gpu": 1}}}, "trian"),
                         ({"resources": {"train": {"gpu": "one"}}}, "must be a number"),
                         ({"resources": {"train": {"gpu": 1.5}}}, "whole number"),
                         ({"resources": {"train": {"gpu": 0, "cpu": 0}}}, "asks for nothing"),
                         ({"address": 5}, "address")):
        with pytest.raises(InputError, match=message):
            config_from_dict({**BASE, "run": run})


def test_scheduler_blocks_dependents_of_a_failure() -> None:
    plan = _plan(seeds=[0])
    s_key = search_key(plan.config, "s")
    sched = Scheduler(plan, done=())
    first = sched.take_ready()
    assert s_key in {u.key for u in first}
    assert all(u.model != "found" for u in first)  # the searched model waits on its search
    assert {u.stage for u in first if u.model == "resnet18"} == {"analyze", "probe_init", "train"}
    for unit in first:
        sched.finish(unit, ok=unit.key != s_key)  # the search fails, everything else succeeds
    second = sched.take_ready()
    assert second and all(u.model == "resnet18" for u in second)
    # Every unit of the searched model, and knockoff with it as replica, is blocked.
    assert {plan.unit(k).model for k in sched.blocked} == {"found", "resnet18"}
    assert all(plan.unit(k).model == "found" or plan.unit(k).params.get("replica") == "found"
               for k in sched.blocked)
    # Resuming with units already done: they are never offered again.
    resumed = Scheduler(plan, done=[u.key for u in first])
    assert not {u.key for u in resumed.take_ready()} & {u.key for u in first}


def test_describe_plan_and_cli_dry_run(tmp_path: Path) -> None:
    plan = _plan(seeds=[0])
    done = {plan.units[0].key: "done", plan.units[1].key: "corrupt"}
    text = describe_plan(plan, done).splitlines()
    assert [line.split()[0] for line in text[1:-1]] == plan.keys
    assert text[1].split()[1] == "done" and text[2].split()[1] == "corrupt"
    assert text[-1] == f"{len(plan.units)} units: 1 corrupt, 1 done, {len(plan.units) - 2} todo"
    assert "GPU 1, CPU 1" in text[1] and plan.units[0].key[:12] in text[2]  # resources; waits on the search
    cfg = tmp_path / "a.toml"
    cfg.write_text('out_dir = "out"\n[dataset]\nname = "digits"\n[[models]]\nname = "resnet18"\n'
                   '[model_defaults.manual]\nwidth = 4\n[attacks.pgd]\nn_inputs = 4\n')
    proc = subprocess.run([sys.executable, "-m", "nasaudit", "audit", str(cfg), "--dry-run"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "4 units: 4 todo" and len(lines) == 6  # header, analyze, train, clean, pgd
    assert not (tmp_path / "out").exists()  # nothing written
