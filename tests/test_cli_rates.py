"""Rates with their n and an exact 95% interval: `nasaudit.rates` and what `nasaudit attack`
prints (summary, --json "rates", warnings on few inputs and on a near-chance victim)."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest

from nasaudit.attacks import TEST, TEST_NOT_TARGET
from nasaudit.rates import FEW_INPUTS, Rate, binomial_interval, near_chance, rate_from_fraction

# ------------------------------------------------------------------------------ nasaudit.rates


@pytest.mark.parametrize("n", [1, 2, 3, 5, 10, 19, 20, 50, 137, 1000])
def test_binomial_interval_matches_scipy(n):
    """Against an independent implementation: scipy's binomtest(k, n).proportion_ci("exact")."""
    from scipy.stats import binomtest

    for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
        low, high = binomial_interval(k, n)
        assert low == pytest.approx(ci.low, abs=1e-9), (k, n)
        assert high == pytest.approx(ci.high, abs=1e-9), (k, n)
        assert 0.0 <= low <= k / n <= high <= 1.0


def test_binomial_interval_edges_and_rate_text():
    assert binomial_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        binomial_interval(5, 4)
    rate = Rate(1, 4)
    assert str(rate) == "0.250 (1/4, 95% CI 0.01-0.81) [few inputs]" and rate.few
    assert not Rate(10, FEW_INPUTS).few and "[few inputs]" not in str(Rate(10, FEW_INPUTS))
    assert str(Rate(0, 0)) == "n/a (n = 0)"
    assert rate_from_fraction(26 / 30, 30) == Rate(26, 30)
    assert near_chance(0.17, 10) and not near_chance(0.8, 10)


def _exact_coverage(p: float, n: int) -> float:
    """P(p in the interval) under Binomial(n, p), summed over every k (no simulation)."""
    from scipy.stats import binom

    return sum(binom.pmf(k, n, p) for k in range(n + 1)
               if binomial_interval(k, n)[0] <= p <= binomial_interval(k, n)[1])


@pytest.mark.parametrize("n", [10, 50])
@pytest.mark.parametrize("p", [0.01, 0.05, 0.3, 0.5, 0.95])
def test_binomial_interval_coverage(p, n):
    """The 95% interval covers the true rate at least 95% of the time, exactly (summed over the
    binomial pmf), and a seeded simulation of 4000 binomial draws agrees with that within 4
    standard errors (the simulation checks the exact sum, not the other way round)."""
    exact = _exact_coverage(p, n)
    assert exact >= 0.95 - 1e-12, (p, n, exact)
    draws = 4000
    ks = np.random.default_rng(0).binomial(n, p, size=draws)
    bounds = np.array([binomial_interval(k, n) for k in range(n + 1)])
    coverage = float(((bounds[ks, 0] <= p) & (p <= bounds[ks, 1])).mean())
    assert abs(coverage - exact) < 4 * np.sqrt(max(exact * (1 - exact), 1e-4) / draws)


# ------------------------------------------------------------------ the table in cli/attack.py


def _record_classes():
    """Attack name -> its record class, read from its run function's return annotation."""
    import inspect
    import sys

    from nasaudit.attacks import NAMES, attack_spec

    classes = {}
    for name in NAMES:
        run = attack_spec(name).run
        classes[name] = getattr(sys.modules[run.__module__], inspect.signature(run).return_annotation)
    return classes


def test_rate_table_names_real_record_fields():
    """Every rate and every record-held count an AttackSpec declares is a field of the attack's
    record, every count has its text, and the victim's accuracy field is one of the rates."""
    from nasaudit.attacks import NAMES, TEST, TEST_NOT_TARGET, attack_spec
    from nasaudit.cli import attack as cli

    classes = _record_classes()
    assert set(NAMES) == set(classes)
    for attack in NAMES:
        spec = attack_spec(attack)
        fields = {f.name for f in dataclasses.fields(classes[attack])}
        assert spec.rates, attack
        for rate, count in spec.rates.items():
            assert rate in fields, (attack, rate)
            assert count in (TEST, TEST_NOT_TARGET) or count in fields, (attack, count)
            assert all(cli.count_text(attack, count)), (attack, count)
        if spec.victim_accuracy is not None:
            assert spec.victim_accuracy in spec.rates
        if TEST_NOT_TARGET in spec.rates.values():
            assert "target_class" in fields
        if spec.axis is not None:
            assert spec.axis[0] in fields


def test_rates_from_test_split_counts_and_summary_layout():
    """Counts the records do not store come from the test split; list rates are labelled by
    their axis, dict rates by their key, and --json's "rates" carries successes/n/interval."""
    import torch

    from nasaudit.cli import attack as cli

    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 1, 1])  # 10 test inputs, 2 of class 0
    backdoor = {"target_class": 0, "asr": 0.5, "clean_model_asr": 0.125, "badnet_asr": None,
                "clean_accuracy": 0.7, "backdoor_accuracy": 0.6}
    counts = cli.rate_counts("backdoor", backdoor, labels)
    assert counts == {TEST: 10, TEST_NOT_TARGET: 8}
    rates = cli.record_rates("backdoor", backdoor, counts)
    assert rates["asr"] == Rate(4, 8) and rates["clean_model_asr"] == Rate(1, 8)
    assert rates["clean_accuracy"] == Rate(7, 10) and "badnet_asr" not in rates

    # model_reuse's host task is not the victim's test split: its count is the record's own.
    reuse = {"targets": [3, 7], "asr": 0.5, "clean_accuracy": 0.5, "n_evaluation": 8}
    counts = cli.rate_counts("model_reuse", reuse, labels)
    assert counts["n_evaluation"] == 8 and counts["targets"] == 2
    assert cli.record_rates("model_reuse", reuse, counts)["clean_accuracy"] == Rate(4, 8)

    sweep = {"kind": "attack.pgd_sweep", "attack": "pgd_sweep", "model_name": "m", "dataset": "d",
             "seed": 0, "seconds": 1.0, "autocast": "off", "params": {"iters": 3},
             "candidates": list(range(30)), "indices": list(range(25)), "clean_accuracy": 25 / 30,
             "eps": [2 / 255, 8 / 255], "asr": [0.04, 0.6], "success": [[False] * 25, [True] * 25]}
    rates = cli.record_rates("pgd_sweep", sweep, cli.rate_counts("pgd_sweep", sweep, labels))
    assert set(rates) == {"clean_accuracy", "asr[0]", "asr[1]"}
    assert rates["asr[0]"] == Rate(1, 25) and rates["asr[1]"] == Rate(15, 25)
    text = cli._summary(sweep, rates)
    assert "  clean_accuracy: 0.833 (25/30, 95% CI" in text
    assert "    eps=0.007843: 0.040 (1/25, 95% CI 0.00-0.20)" in text
    assert "    eps=0.03137: 0.600 (15/25, 95% CI" in text
    low, high = binomial_interval(15, 25)
    assert cli.rates_json(rates)["asr[1]"] == {"successes": 15, "n": 25, "value": 0.6,
                                               "low": low, "high": high}


def test_rate_warnings_say_the_numbers():
    from nasaudit.cli import attack as cli

    counts = {"indices": 3, "candidates": 18}
    lines = cli.rate_warnings("pgd", counts, Rate(3, 18), 10, "candidates")
    assert len(lines) == 2 and all(line.startswith("warning:") and "\n" not in line for line in lines)
    assert "fewer than 20" in lines[0] and "asr over 3 attacked inputs" in lines[0]
    assert "clean_accuracy over 18 candidates" in lines[0] and "--param n_inputs" in lines[0]
    assert "near chance" in lines[1] and "0.167 (3/18 candidates" in lines[1]
    assert "chance level of 0.100 (10 classes)" in lines[1]
    assert cli.rate_warnings("pgd", {"indices": 80, "candidates": 100}, Rate(80, 100), 10, "candidates") == []


# ------------------------------------------------------------------------- the CLI, end to end


def _digits_checkpoint(root, *, epochs: int, lr: float):
    from nasaudit.data import load_dataset
    from nasaudit.training import TrainConfig, train_on_dataset

    result = train_on_dataset("tiny_cnn", load_dataset("digits"),
                              TrainConfig(epochs=epochs, batch_size=32, lr=lr, seed=0),
                              device="cpu", model_dir=root / "models", progress=False)
    return result.checkpoint, result.test_acc


@pytest.fixture(scope="module")
def digits_checkpoints(tmp_path_factory):
    """tiny_cnn on digits (a few seconds each): trained 5 epochs (test accuracy about 0.8) and
    one with a learning rate too small to learn (its weights stay at initialisation: chance)."""
    root = tmp_path_factory.mktemp("cli_rates")
    trained, trained_acc = _digits_checkpoint(root / "trained", epochs=5, lr=0.05)
    untrained, untrained_acc = _digits_checkpoint(root / "untrained", epochs=1, lr=1e-9)
    assert trained_acc > 0.5 and untrained_acc < 0.2  # 10 classes: chance is 0.1
    return {"trained": trained, "untrained": untrained}


_PGD_FAST = ["--param", "cases=most_likely", "--param", "iters_most_likely=2", "--param", "restarts=1"]


def _attack(capsys, checkpoint, *extra):
    from nasaudit.cli import main

    code = main(["attack", "pgd", "--checkpoint", str(checkpoint), "--device", "cpu",
                 "--no-progress", *_PGD_FAST, *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out, captured.err


def test_cli_pgd_summary_shows_k_of_n_and_the_interval(digits_checkpoints, capsys, tmp_path):
    record_file = tmp_path / "pgd.json"
    out, err = _attack(capsys, digits_checkpoints["trained"], "--param", "n_inputs=40",
                       "--output", str(record_file))
    record = json.loads(record_file.read_text())
    k, n = sum(record["success"]["most_likely"]), len(record["indices"])
    assert n >= FEW_INPUTS
    low, high = binomial_interval(k, n)
    assert f"    most_likely: {k / n:.3f} ({k}/{n}, 95% CI {low:.2f}-{high:.2f})\n" in out
    kept = len(record["indices"])
    assert re.search(rf"  clean_accuracy: {kept / 40:.3f} \({kept}/40, 95% CI \d\.\d\d-\d\.\d\d\)\n", out)
    assert "[few inputs]" not in out and "warning:" not in err  # 40 candidates, a trained victim
    # The record is unchanged; "rates" is added beside it.
    assert record["asr"]["most_likely"] == pytest.approx(k / n) and record["kind"] == "attack.pgd"
    assert record["rates"]["asr.most_likely"] == {"successes": k, "n": n, "value": k / n,
                                                  "low": low, "high": high}
    assert record["rates"]["clean_accuracy"]["n"] == 40
    out, err = _attack(capsys, digits_checkpoints["trained"], "--param", "n_inputs=40", "--json")
    assert json.loads(out)["rates"] == record["rates"] and err == ""


def test_cli_pgd_on_few_inputs_warns_on_stderr(digits_checkpoints, capsys):
    out, err = _attack(capsys, digits_checkpoints["trained"], "--param", "n_inputs=6")
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning:"), err
    assert f"fewer than {FEW_INPUTS} inputs" in lines[0] and "over 6 candidates" in lines[0]
    assert "near chance" not in err
    assert "[few inputs]" in out and "/6, 95% CI" in out


def test_cli_pgd_on_a_near_chance_victim_warns(digits_checkpoints, capsys):
    out, err = _attack(capsys, digits_checkpoints["untrained"], "--param", "n_inputs=40")
    record_acc = re.search(r"clean_accuracy: (\d\.\d{3}) \((\d+)/40", out)
    assert record_acc is not None and float(record_acc.group(1)) < 0.2
    lines = [line for line in err.splitlines() if "near chance" in line]
    assert len(lines) == 1 and lines[0].startswith("warning:")
    assert f"clean accuracy {record_acc.group(1)} ({record_acc.group(2)}/40 candidates" in lines[0]
    assert "chance level of 0.100 (10 classes)" in lines[0]


def test_cli_model_reuse_checks_the_victim_itself(digits_checkpoints, capsys):
    """model_reuse records only its hosts' accuracies: the CLI measures the victim's own clean
    accuracy on seeded test inputs, shows it with its n, and warns when it is near chance."""
    from nasaudit.cli import main

    argv = ["attack", "model-reuse", "--device", "cpu", "--no-progress", "--json",
            "--param", "n_targets=2", "--param", "iterations=2", "--param", "host_epochs=1",
            "--param", "finetune_epochs=0", "--param", "aux_size=50", "--param", "n_reference=20"]
    results = {}
    for which in ("trained", "untrained"):
        assert main([*argv, "--checkpoint", str(digits_checkpoints[which])]) == 0
        captured = capsys.readouterr()
        results[which] = (json.loads(captured.out), captured.err)
    record, err = results["trained"]
    rates = record["rates"]
    assert rates["victim_accuracy_cli"]["n"] == 359 and rates["victim_accuracy_cli"]["value"] > 0.5
    # The default transfer host learns classes 5..9; its rates are over their test inputs
    # minus the 2 targets, not over the victim's whole test split.
    host_inputs = record["n_evaluation"]
    assert rates["asr"]["n"] == 2 and rates["clean_accuracy"]["n"] == host_inputs
    assert 100 < host_inputs < 359 - 2
    assert "near chance" not in err and "over 2 targets" in err and "--param n_targets" in err
    record, err = results["untrained"]
    assert record["rates"]["victim_accuracy_cli"]["value"] < 0.2
    assert any(line.startswith("warning: the victim is near chance") and "/359 seeded test inputs" in line
               for line in err.splitlines())
