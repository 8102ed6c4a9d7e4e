"""Trace recorder and the architecture-stealing (trace leak) attack: tiny networks on CPU."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from torch import nn

from nasaudit.attacks.trace import record_trace
from nasaudit.attacks.trace_leak import (
    CallStats,
    References,
    ResidualDensity,
    TimingModel,
    add_probe_noise,
    attack_observation,
    attack_trace,
    calibrated_temperature,
    elimination_threshold,
    macro_of,
    observe,
    score_candidates,
    time_victim,
)
from nasaudit.genotype import Genotype, shipped_genotypes
from nasaudit.models.registry import build_model
from nasaudit.search_space import load_search_space

CPU = torch.device("cpu")
OPS = load_search_space("paper").ops


def _network(genotype, C=4, layers=3, seed=0):
    from nasaudit.models.darts_network import build_genotype_network

    torch.manual_seed(seed)
    if isinstance(genotype, str):
        return build_model(genotype, 10, C=C, layers=layers, auxiliary=False).eval()
    return build_genotype_network(genotype, 10, C=C, layers=layers, auxiliary=False).eval()


def _trace(model, seed=0, passes=1, size=16):
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return record_trace(model, x, passes=passes, warmup=int(passes > 1)), macro_of(model, (size, size))


def _unique_shipped():
    seen, out = set(), {}
    for name, entry in shipped_genotypes().items():
        if entry["genotype"] not in seen:
            seen.add(entry["genotype"])
            out[name] = entry["genotype"]
    return out


def _random_genotype(rng: random.Random) -> Genotype:
    cells = []
    for _ in range(2):
        steps = rng.choice((4, 5))
        pairs = tuple((rng.choice(OPS), rng.randrange(node + 2)) for node in range(steps) for _ in range(2))
        used = {i for _, i in pairs}
        loose = tuple(i for i in range(2, steps + 2) if i not in used)
        concat = loose if loose and rng.random() < 0.5 else tuple(range(2, steps + 2))
        cells += [pairs, concat]
    return Genotype(*cells)


def test_recorder_same_calls_on_two_runs_and_counts_match_the_modules():
    model = _network("darts_v2")
    first, _ = _trace(model)
    second, _ = _trace(model, passes=3)
    assert [e.signature() for e in first] == [e.signature() for e in second]
    assert [e.producers for e in first] == [e.producers for e in second]
    # Independent oracle: every Conv2d / BatchNorm2d module runs exactly once in eval mode.
    n_conv = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    kinds = [e.kind for e in first]
    assert kinds.count("conv2d") == n_conv
    assert kinds.count("batch_norm") == n_bn
    assert kinds.count("add") == 2 * 4 * 3  # two adds per node, 4 nodes, 3 cells
    assert all(e.duration_ns > 0 for e in first)


@pytest.mark.parametrize("name,genotype", sorted(_unique_shipped().items()))
def test_ops_level_recovers_every_shipped_genotype_exactly(name, genotype):
    events, macro = _trace(_network(genotype))
    refs = References(device=CPU, passes=1, seed=0)
    ops = attack_trace(events, genotype, macro, "ops", refs, ops=OPS)
    assert ops["exact"] is True and ops["exact_probability"] == 1.0, name
    assert ops["remaining_bits"] == 0.0 and ops["n_candidates"] == 1
    # Shapes without the data flow still fix every op (kernel sizes are in the weight shapes),
    # but not the wiring of a normal cell: bits remain.
    shapes = attack_trace(events, genotype, macro, "shapes", refs, ops=OPS)
    assert shapes["edge_op_accuracy"] == 1.0 and shapes["true_survived"]
    assert shapes["remaining_bits"] > 5 and not shapes["exact"]


def test_generator_never_drops_the_true_genotype():
    rng = random.Random(15)
    genotypes = list(_unique_shipped().values()) + [_random_genotype(rng) for _ in range(200)]
    refs = References(device=CPU, passes=1, seed=0)
    n_none = 0
    for g in genotypes:
        events, macro = _trace(_network(g, layers=3), size=8)
        obs = observe(events, "ops_timing")
        cands = attack_observation(obs, macro, OPS, refs, rate=0.0, batch=1, eliminate=False)
        result = score_candidates(cands, g)
        assert result["true_survived"], g
        n_none += any(op == "none" for op, _ in g.normal + g.reduce)
    assert n_none > 20  # the random sample exercises the zero op too


class _KindsOnly(References):
    """The attacker's profile with its timing model switched off (temperature inf): what is left
    is the call kinds, so a test of the probe's noise does not depend on how informative this
    host's timings happen to be (a loaded host leaves less for the noise to destroy)."""

    def timing(self, macro, ops, batch):
        model = super().timing(macro, ops, batch)
        return TimingModel(model.anchors, model.stats, model.density, model.shift, temperature=np.inf)


def test_timing_noisy_degrades_with_the_noise_rate():
    rates = (0.0, 0.15, 0.35)
    acc = {r: [] for r in rates}
    survived = {r: [] for r in rates}
    bits = {r: [] for r in rates}
    refs = _KindsOnly(device=CPU, passes=1, seed=0)
    for name in ("darts_v2", "pdarts"):
        g = shipped_genotypes()[name]["genotype"]
        events, macro = _trace(_network(g, layers=5), size=8)
        for seed in range(4):
            for r in rates:
                res = attack_trace(events, g, macro, "timing_noisy", refs, ops=OPS, noise=r,
                                   rng=np.random.default_rng([seed, 0]))
                acc[r].append(res["edge_op_accuracy"])
                survived[r].append(res["true_survived"])
                bits[r].append(res["remaining_bits"])
    means = [float(np.mean(acc[r])) for r in rates]
    assert means[0] >= means[1] - 0.02 >= means[2] - 0.04, means
    assert means[0] > means[2] + 0.15, means
    # A noisier probe leaves more candidates, but the families the kinds cannot rule out are
    # kept: the truth survives at every rate (stated rate 0.95; a rate of exactly 0.95 gives
    # <= 5 of 8 with probability 0.6 %).
    assert all(sum(survived[r]) >= 6 for r in rates), survived
    assert np.mean(bits[0.0]) < np.mean(bits[0.15]) < np.mean(bits[0.35])


def test_probe_noise_model():
    rng = np.random.default_rng(0)
    kinds = ["conv2d", "relu"] * 5000
    durations = [10.0] * len(kinds)
    same_k, same_d = add_probe_noise(kinds, durations, 0.0, rng)
    assert same_k == kinds and same_d == durations
    k, d = add_probe_noise(kinds, durations, 0.1, np.random.default_rng(1))
    # E[len] = n (1 - r - r + 2 r) = n; misses and duplicates both ~ Binomial(n, 0.1).
    assert abs(len(k) - len(kinds)) < 300
    n_missed_time = 10.0 * len(kinds) - sum(d)  # duplicates split, they never add time
    assert 0.08 * 10.0 * len(kinds) < n_missed_time < 0.12 * 10.0 * len(kinds)
    with pytest.raises(ValueError):
        add_probe_noise(kinds, durations, 0.6, rng)
    # Jitter: multiplicative log-normal, calls and their order unchanged.
    jk, jd = add_probe_noise(kinds, durations, 0.0, np.random.default_rng(2), jitter=0.2)
    assert jk == kinds
    assert abs(float(np.std(np.log(np.asarray(jd) / 10.0))) - 0.2) < 0.01
    assert abs(float(np.mean(np.log(np.asarray(jd) / 10.0)))) < 0.01


TIMED = ("sep_conv_3x3", "sep_conv_5x5", "sep_conv_7x7", "dil_conv_3x3", "dil_conv_5x5",
         "conv_7x1_1x7", "max_pool_3x3", "skip_connect")


def _timed_genotype(rng: random.Random) -> Genotype:
    """A random genotype of the ops whose call families need timing (and skips around them)."""
    cells = []
    for _ in range(2):
        cells += [tuple((rng.choice(TIMED), rng.randrange(node + 2)) for node in range(4) for _ in range(2)),
                  (2, 3, 4, 5)]
    return Genotype(*cells)


def test_truth_survives_elimination_at_every_level_over_repeated_draws():
    # 20 draws, each with its own seed: a random genotype rich in ops that only timing tells
    # apart, the attacker's own calibration (random reference cells, cross-fitted
    # temperature), and a victim timed on single warm queries in a separate process (one
    # subprocess, OMP_NUM_THREADS=1, times all 20). Stated rate: the truth survives a level with
    # probability >= 0.95; a level whose true rate were exactly 0.95 would survive <= 16 of 20
    # draws with probability 1.6 % (binomial), so >= 17 of 20 is asserted. The exact levels'
    # checks are deterministic: all 20 survive. Cheap sizes (C=4, 3 cells, 8x8): a few calls'
    # overhead dominates, the hardest case for a timing model.
    import dataclasses

    draws, size = 20, 8
    rng = random.Random(29)
    genotypes = [_timed_genotype(rng) for _ in range(draws)]
    models = [_network(g, C=4, layers=3, seed=d) for d, g in enumerate(genotypes)]
    inputs = [torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(d)) for d in range(draws)]
    victims = time_victim(models, inputs, queries=2, threads=1, device=CPU)
    assert all(v["threads"] == 1 for v in victims)
    levels = ("ops", "shapes", "ops_timing", "timing_noisy")
    survived = dict.fromkeys(levels, 0)
    acc = {level: [] for level in levels}
    chance = []
    for d, (g, model, x, victim) in enumerate(zip(genotypes, models, inputs, victims, strict=True)):
        events = record_trace(model, x, passes=1)
        assert victim["kinds"] == [e.kind for e in events]
        macro = macro_of(model, (size, size))
        refs = References(device=CPU, passes=1, seed=d)
        for level in levels:
            if level in ("ops_timing", "timing_noisy"):  # one single query each, as the probe does
                times = victim["durations"][level == "timing_noisy"]
                observed = [dataclasses.replace(e, duration_ns=t) for e, t in zip(events, times, strict=True)]
            else:
                observed = events
            res = attack_trace(observed, g, macro, level, refs, ops=OPS, noise=0.05, jitter=0.1,
                               rng=np.random.default_rng([d, 0]))
            survived[level] += res["true_survived"]
            acc[level].append(res["edge_op_accuracy"])
            assert res["survival_target"] == 0.95 and res["decisions"] >= 1
            if res["chance_edge_op_accuracy"] < 1.0:  # else nothing to beat (None at accuracy 1)
                assert res["beats_chance"] == (res["edge_op_accuracy"] > res["chance_edge_op_accuracy"] + 1e-9)
            assert res["remaining_bits"] <= res["chance_bits"] + 1e-9 or level == "timing_noisy"
        chance.append(res["chance_edge_op_accuracy"])
        assert res["prior_edge_op_accuracy"] == pytest.approx(1 / len(OPS))
    assert survived["ops"] == survived["shapes"] == draws, survived
    assert survived["ops_timing"] >= 17 and survived["timing_noisy"] >= 17, survived
    # The chance baselines sit next to the accuracies: the kinds alone fix the non-ambiguous
    # edges (chance above the prior), shapes fix every op.
    assert 1 / len(OPS) < float(np.mean(chance)) < 1.0
    assert np.mean(acc["ops"]) == np.mean(acc["shapes"]) == 1.0


def _synthetic_model(seed: int):
    """A timing model with known call times for ops a, b (near a) and c (far from a), and a
    sampler of the residuals its density was learnt from: skewed, heavy-tailed delays."""
    rng = np.random.default_rng(seed)

    def residuals(n):
        z = rng.normal(0.0, 1.0, n)
        delayed = rng.random(n) < 0.05
        return np.where(delayed, z + rng.exponential(8.0, n), z)

    base = np.array([9.0, 11.0, 10.0, 9.5])
    shape = (1, 4, 8, 8)
    stats = {(op, 1, shape): CallStats(tuple(base + shift), (0.1,) * 4, 10**6)
             for op, shift in (("a", 0.0), ("b", np.array([0, 0.1, 0, 0])), ("c", np.array([0, 1.0, 0, 0])))}
    return TimingModel({}, stats, ResidualDensity(residuals(20000)), shift=0.5), rng, residuals


def test_elimination_rule_keeps_the_truth_at_the_stated_rate_under_its_model():
    # The threshold's guarantee, free of any host's load: victim times drawn from a known
    # model (shared shift u ~ N(0, 0.5^2), skewed residuals); per simulated level E = 16 edges of
    # K = 3 candidates, 3 cells each. Survival must be >= 0.95 (minus 2.3 binomial sd at 150
    # levels: 0.91); a far op must be eliminated and a near one kept mostly, so timing is a real
    # signal when the times carry one.
    model, rng, residuals = _synthetic_model(0)
    shape = (1, 4, 8, 8)
    mu_a = np.array(model.stats[("a", 1, shape)].mu)
    levels, edges, cells = 150, 16, 3
    tau = elimination_threshold(3, edges, 0.95)
    assert tau == pytest.approx(np.log(2 * 16 / 0.05))
    survived, far_gone, near_kept, top_is_truth = 0, 0, 0, 0
    for _ in range(levels):
        lost = False
        for _ in range(edges):
            ll = dict.fromkeys("abc", 0.0)
            for _ in range(cells):
                times = np.exp(mu_a + rng.normal(0, 0.5) + 0.1 * residuals(4))
                for op in ll:
                    ll[op] += model.loglik((op, 1, shape), list(times), 0.0)
            best = max(ll.values())
            lost |= best - ll["a"] > tau
            far_gone += best - ll["c"] > tau
            near_kept += best - ll["b"] <= tau
            top_is_truth += ll["a"] == best
        survived += not lost
    n = levels * edges
    assert survived / levels >= 0.91, survived
    assert far_gone / n > 0.9 and near_kept / n > 0.5 and top_is_truth / n > 0.5, (far_gone, near_kept, top_is_truth)
    # Times from the far op rank it first too.
    times = np.exp(np.array(model.stats[("c", 1, shape)].mu) + 0.1 * rng.normal(0, 1, 4))
    assert model.loglik(("c", 1, shape), list(times), 0.0) > model.loglik(("a", 1, shape), list(times), 0.0)


def test_temperature_tempers_an_overconfident_model_and_drops_a_useless_one():
    rng = np.random.default_rng(3)
    # Known alternatives N(d, 1) against a truth N(0, 1): exp(llr) has mean exactly 1.
    x, d = rng.normal(0, 1, 20000), rng.uniform(0.2, 1.5, 20000)
    llr = d * x - d * d / 2
    assert calibrated_temperature(llr) <= 1.1
    assert 2.0 <= calibrated_temperature(3 * llr) <= 4.0  # three times too sure
    assert calibrated_temperature(np.abs(llr) + 0.1) == np.inf  # no better than its alternatives
    assert calibrated_temperature(llr[:10]) == np.inf  # too few known pairs to check the model
    model = TimingModel({}, {("a", 1, (1,)): CallStats((9.0,), (0.1,), 10)}, temperature=np.inf)
    assert model.loglik(("a", 1, (1,)), [8000.0], 0.0) == 0.0  # timing ignored


def test_run_attack_on_genotype_and_manual_models(digits_data):
    from nasaudit.attacks import Victim, run_attack

    model = build_model("darts_v2", digits_data.num_classes, C=4, layers=3, auxiliary=False)
    rec = run_attack("trace-leak", Victim(model, "darts_v2"), digits_data,
                     {"levels": "ops,ops_timing,timing_noisy", "draws": 2, "passes": 1},
                     device="cpu", seed=0, progress=False)
    d = json.loads(rec.to_json())
    assert d["kind"] == "attack.trace_leak" and d["attack"] == "trace_leak" and d["model_name"] == "darts_v2"
    assert d["applicable"] and set(d["levels"]) == {"ops", "ops_timing", "timing_noisy"}
    assert d["levels"]["ops"]["exact"] is True
    assert 0.0 <= d["levels"]["timing_noisy"]["exact"] <= 1.0
    assert d["levels"]["ops_timing"]["remaining_bits"] > d["levels"]["ops"]["remaining_bits"]
    assert d["levels"]["ops_timing"]["remaining_bits"] < d["prior_bits"]
    for level, m in d["levels"].items():
        assert {"true_survived", "chance_edge_op_accuracy", "chance_bits", "prior_edge_op_accuracy",
                "beats_chance", "decisions", "survival_target"} <= set(m), level
        assert m["prior_edge_op_accuracy"] < m["chance_edge_op_accuracy"] < 1.0
        # The record's rates are the levels' own numbers, over the genotype's 2 x 8 edges.
        assert d["edge_op_accuracy"][level] == m["edge_op_accuracy"]
        assert d["exact"][level] == float(m["exact"])
    assert d["n_edges"] == 16 and d["edge_op_accuracy"]["ops"] == 1.0
    assert d["levels"]["ops"]["true_survived"] is True and d["levels"]["ops"]["beats_chance"] is True
    assert d["levels"]["timing_noisy"]["jitter"] == 0.1
    assert len(d["levels"]["timing_noisy"]["per_draw_survived"]) == 2
    # The victim ran in a process of its own, on single queries (one per level and draw).
    assert d["timing"]["victim"] == "subprocess" and d["timing"]["victim_queries"] == 3
    assert d["timing"]["threads"] >= 1
    manual = build_model("resnet18", digits_data.num_classes, width=4)
    rec = run_attack("trace_leak", Victim(manual, "resnet18"), digits_data, None, device="cpu", seed=0,
                     progress=False)
    assert rec.applicable is False and rec.levels == {} and "genotype" in rec.reason


@pytest.fixture(scope="module")
def darts_checkpoint(tmp_path_factory, digits_data):
    """darts_v2 (C=4, 3 cells) trained one epoch on digits: a checkpoint and its sidecar."""
    from nasaudit.training import TrainConfig, train_on_dataset

    model_dir = tmp_path_factory.mktemp("trace_leak_models")
    result = train_on_dataset("darts_v2", digits_data, TrainConfig(epochs=1, batch_size=256, val_fraction=0.0),
                              device="cpu", model_dir=model_dir, progress=False,
                              model_kwargs={"C": 4, "layers": 3, "auxiliary": False})
    return result.checkpoint


def test_cli_trace_leak_json(capsys, darts_checkpoint):
    from nasaudit.cli import main

    base = ["attack", "trace-leak", "--checkpoint", str(darts_checkpoint), "--no-progress", "--device", "cpu"]
    assert main([*base, "--param", "levels=ops,shapes", "--param", "passes=1", "--json"]) == 0
    out, err = capsys.readouterr()
    d = json.loads(out)
    assert d["kind"] == "attack.trace_leak" and d["levels"]["ops"]["exact"] is True
    # The 16 edges are labelled as few; the victim's accuracy plays no part, so it is neither
    # measured nor warned about (the other attacks' CLI check would call this victim near chance).
    assert "rest on fewer than 20 inputs" in err and "16 genotype edges" in err
    assert "victim_accuracy_cli" not in d["rates"] and "near chance" not in err
    # Its rate carries its n: the op accuracy over the genotype's 16 edges.
    rate = d["rates"]["edge_op_accuracy.ops"]
    assert (rate["successes"], rate["n"], rate["high"]) == (16, 16, 1.0) and 0.7 < rate["low"] < 0.85
    assert main([*base, "--param", "levels=ops,bogus"]) == 2
    # noise and draws reach the timing_noisy level; a rate outside [0, 0.45] is refused.
    assert main([*base, "--param", "levels=timing_noisy", "--param", "noise=0.2", "--param", "draws=2",
                 "--param", "passes=1", "--json"]) == 0
    noisy = json.loads(capsys.readouterr().out)["levels"]["timing_noisy"]
    assert noisy["draws"] == 2 and noisy["noise"] == 0.2
    assert main([*base, "--param", "levels=timing_noisy", "--param", "noise=1.5"]) == 2


def test_noisy_alignment_agrees_with_the_exact_parse_on_a_clean_trace():
    from nasaudit.attacks.trace_leak import _grammar, align, option_deltas

    refs = References(device=CPU, passes=1, seed=0)
    for name in ("nasnet", "drnas"):
        events, macro = _trace(_network(shipped_genotypes()[name]["genotype"]), size=8)
        grammar = _grammar(macro, OPS, refs)
        kinds = [e.kind for e in events]
        exact, viterbi = align(kinds, grammar.slots, 0.0), align(kinds, grammar.slots, 0.05)
        assert exact is not None and viterbi is not None and exact[1] == viterbi[1]
        assert exact[0] == 0.0 and viterbi[0] == pytest.approx(-len(kinds) * np.log(0.9))
        assert align(kinds[:-1] + ["linear", "linear"], grammar.slots, 0.0) is None
        # Per slot, the decoded option costs nothing more than the best alignment, and no
        # option costs less; at rate 0 the others are impossible.
        for rate in (0.0, 0.05):
            deltas = option_deltas(kinds, grammar.slots, rate)
            for delta, (o, _) in zip(deltas, viterbi[1], strict=True):
                assert delta[o] == pytest.approx(0.0, abs=1e-9) and delta.min() >= 0.0
                assert rate > 0 or np.isinf(np.delete(delta, o)).all()


def test_report_section_tabulates_levels_and_correlates_with_cells(digits_data, tmp_path):
    import csv
    import time

    from nasaudit.attacks import Victim, run_attack
    from nasaudit.audit.report import write_report
    from nasaudit.audit.store import Store

    names = ("darts_v2", "robust_darts", "diy_deep", "pdarts")
    # The victim is timed in this process here (the victim process is tested above).
    params = {"levels": "ops,ops_timing,timing_noisy", "draws": 1, "passes": 1, "victim_process": False}
    config = {"name": "t", "source": "test", "raw": {
        "models": [{"name": n} for n in (*names, "resnet18")], "attacks": {"trace_leak": params}}}
    with Store(tmp_path) as store:
        store.set_meta("config", config)
        for name in (*names, "resnet18"):
            group = "manual" if name == "resnet18" else "nas"
            kwargs = {"width": 4} if group == "manual" else {"C": 4, "layers": 3, "auxiliary": False}
            model = build_model(name, digits_data.num_classes, **kwargs)
            rec = run_attack("trace_leak", Victim(model, name), digits_data, params, device="cpu", seed=0,
                             progress=False)
            store.record_unit(unit_key=f"{name}-tl", model=name, model_group=group, stage="attack",
                              name="trace_leak", params=params, seed=0, result=rec.to_dict(),
                              started=time.time(), device="cpu")
    md = write_report(tmp_path).read_text()
    assert "Not applicable (no genotype): resnet18." in md
    with open(tmp_path / "report_files/tables/trace_leak.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["model"], r["level"]) for r in rows] == [
        (n, lv) for n in names for lv in ("ops", "ops_timing", "timing_noisy")]
    assert all(float(r["exact rate"]) == 1.0 for r in rows if r["level"] == "ops")
    assert all(float(r["truth survived"]) == 1.0 and r["beats chance"] == "yes" for r in rows if r["level"] == "ops")
    for r in rows:
        assert 0.0 < float(r["chance edge op acc (family)"]) <= 1.0
        assert float(r["prior edge op acc"]) == pytest.approx(0.1, abs=1e-3)
        gap = float(r["edge op acc"]) - float(r["chance edge op acc (family)"])
        assert abs(gap) < 1e-3 or r["beats chance"] == ("yes" if gap > 0 else "no")
    assert "Chance baselines" in md
    with open(tmp_path / "report_files/tables/trace_leak_vs_cells.csv", newline="") as handle:
        corr = list(csv.DictReader(handle))
    skips = [r for r in corr if r["cell metric"] == "skip_connects"]
    assert skips and all(r["genotypes"] == "4" for r in skips)
    assert any(r["Spearman rho"] not in ("", "-") for r in skips)
