"""Tests of whole search runs (nasaudit.search.run) and the `nasaudit search` command.

Runs use a tiny supernet (C=4, 3 cells, 2 nodes) on 96 digits images (batch 8: 6 iterations
per epoch) so that each takes a few seconds on one core; the CLI test uses a 64-image slice of
the real CIFAR-10 subset.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nasaudit.cli import main
from nasaudit.genotype import genotype_from_nni, genotype_to_nni, resolve_genotype
from nasaudit.infra.errors import InputError
from nasaudit.infra.io import read_json, safe_torch_load
from nasaudit.infra.resources import data_dir
from nasaudit.search import SearchConfig, run_search
from nasaudit.search.monitor import EPOCH_TAGS, IMAGE_TAGS, STEP_TAGS

TINY = dict(dataset="digits", C=4, layers=3, nodes=2, batch_size=8, epochs=2, train_subset=96,
            log_every=0, checkpoint_every=0, probe_samples=0)
ITERS = 6  # per epoch: 48 architecture-half images / batch 8


def _run(out: Path, resume: bool = False, callback=None, **kw):
    return run_search(SearchConfig(**{**TINY, **kw}), out_dir=out, device="cpu", resume=resume,
                      progress=False, callback=callback)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """An uninterrupted 2-epoch run: the reference for resume and gamma = 1."""
    out = tmp_path_factory.mktemp("search") / "base"
    return _run(out), out


def _same_search(a, b) -> None:
    assert a.alpha.keys() == b.alpha.keys()
    for k in a.alpha:
        assert torch.equal(torch.tensor(a.alpha[k]), torch.tensor(b.alpha[k])), k  # bitwise
    assert a.genotype == b.genotype
    for ha, hb in zip(a.history, b.history, strict=True):
        ha, hb = dict(ha), dict(hb)
        assert ha.pop("seconds") > 0 and hb.pop("seconds") > 0 and ha == hb


def test_run_writes_genotype_config_history_and_checkpoint(baseline):
    result, out = baseline
    assert result.finished and result.epochs_done == 2
    counts = (result.iterations, result.weight_steps, result.arch_steps, result.virtual_steps)
    assert counts == (12, 12, 12, 0)
    assert [h["epoch"] for h in result.history] == [1, 2] and all(h["seconds"] > 0 for h in result.history)
    saved = read_json(out / "genotype.json")
    assert resolve_genotype(str(out / "genotype.json")) == result.genotype
    assert saved["seed"] == 0 and saved["search"]["n_step"] == 1 and len(saved["epoch_seconds"]) == 2
    assert torch.tensor(saved["alpha"]["alpha_normal"]).shape == (5, 8)
    assert (out / "genotypes" / "epoch_001.json").is_file()
    assert (out / "genotypes" / "epoch_002.png").is_file()
    assert read_json(out / "config.json") == SearchConfig(**TINY).to_dict()
    assert len(read_json(out / "history.json")) == 2
    state = safe_torch_load(out / "checkpoint.pt")  # weights_only=True
    assert state["epoch"] == 2 and state["counters"]["arch_steps"] == 12
    assert genotype_from_nni(genotype_to_nni(result.genotype)) == result.genotype


def test_killed_and_resumed_run_equals_uninterrupted(baseline, tmp_path):
    reference, _ = baseline
    out = tmp_path / "resumed"
    first = _run(out, max_steps=4)  # stops mid-epoch 1
    assert not first.finished and first.iterations == 4 and first.genotype is None
    second = _run(out, resume=True, callback=lambda info: info["global_step"] == 9)  # mid-epoch 2
    assert not second.finished and second.iterations == 9 and second.epochs_done == 1
    assert second.genotype is not None  # epoch 1's
    final = _run(out, resume=True)
    assert final.finished and final.weight_steps == reference.weight_steps
    _same_search(final, reference)
    assert read_json(out / "genotype.json")["alpha"] == read_json(baseline[1] / "genotype.json")["alpha"]


def test_gamma_one_reproduces_plain_darts_bitwise(baseline, tmp_path):
    _same_search(_run(tmp_path / "g1", hooks=["skip_penalty:1"]), baseline[0])


def test_n_step_run_costs_n_weight_steps_per_alpha_step(tmp_path):
    result = _run(tmp_path / "n2", n_step=2, epochs=1)
    assert (result.iterations, result.weight_steps, result.arch_steps) == (ITERS, 2 * ITERS, ITERS)
    assert result.history[0]["weight_steps"] == 2 * ITERS


def test_resume_guards(baseline, tmp_path):
    _, out = baseline
    with pytest.raises(InputError, match="--resume"):
        _run(out)  # never overwrites a run
    with pytest.raises(InputError, match="seed"):
        _run(out, resume=True, seed=1)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError):
        safe_torch_load(tmp_path / "bad.pt")


def test_config_files_and_flag_precedence(tmp_path):
    experiments = data_dir("experiments")
    mitigated = SearchConfig.from_toml(experiments / "search_mitigated.toml")
    assert (mitigated.n_step, mitigated.gamma, mitigated.mode) == (5, 0.5, "unrolled")
    darts = SearchConfig.from_toml(experiments / "search_darts.toml")
    assert (darts.C, darts.layers, darts.batch_size, darts.epochs, darts.gamma) == (16, 8, 64, 50, 1.0)
    assert SearchConfig.from_toml(experiments / "search_mitigated.toml", {"n_step": 2}).n_step == 2
    assert SearchConfig().hook_specs() == [] and SearchConfig(gamma=0.5).hook_specs() == ["skip_penalty:0.5"]
    for text in ("epochs = 'x'\n", "nope = 1\n", "gamma = 2.0\n", "mode = 'second'\n", "[search\n"):
        (tmp_path / "bad.toml").write_text(text)
        with pytest.raises(InputError):
            SearchConfig.from_toml(tmp_path / "bad.toml")


def test_cli_search_on_cifar_subset_writes_tensorboard_and_genotype(cifar_subset_dir, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "cli"
    (tmp_path / "c.toml").write_text("[search]\nn_step = 3\nseed = 1\nC = 8\n")
    code = main([
        "search", "--dataset", "cifar10", "--data-dir", str(cifar_subset_dir), "--epochs", "2",
        "--out", str(out), "--config", str(tmp_path / "c.toml"), "--n-step", "1", "--C", "4",
        "--layers", "3", "--nodes", "2", "--batch-size", "8", "--train-subset", "64",
        "--log-every", "2", "--probe-samples", "4", "--gamma", "0.5", "--device", "cpu",
        "--no-progress",
    ])
    assert code == 0
    printed = capsys.readouterr().out
    assert "depth" in printed and "skip_connects" in printed and "genotype.json" in printed
    config = read_json(out / "config.json")
    assert (config["n_step"], config["seed"], config["C"], config["gamma"]) == (1, 1, 4, 0.5)  # flags win
    g = resolve_genotype(str(out / "genotype.json"))
    assert genotype_from_nni(genotype_to_nni(g)) == g

    assert [d.name for d in (out / "tb").iterdir()] == ["cli"]  # the run is named after OUT
    acc = EventAccumulator(str(out / "tb" / "cli"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    assert set(STEP_TAGS + EPOCH_TAGS) <= set(tags["scalars"])
    assert set(IMAGE_TAGS) <= set(tags["images"])
    assert any(t.startswith("genotype/text") for t in tags["tensors"])
    assert "alpha/normal/n2_from0/skip_connect" in tags["scalars"]
    assert [e.step for e in acc.Scalars("cost/arch_steps")] == [1, 2]
    assert [e.step for e in acc.Scalars("gradvar/weights")] == [2, 4, 6, 8]
    assert all(e.value > 0 for e in acc.Scalars("gradvar/weights"))

    # A bad value is one line on stderr and exit code 2.
    assert main(["search", "--out", str(tmp_path / "x"), "--gamma", "0", "--dataset", "digits"]) == 2
    assert "gamma" in capsys.readouterr().err
    assert json.loads((out / "history.json").read_text())[-1]["epoch"] == 2


def _cli_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("nasaudit: error:") and err.count("\n") == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        (["--lr", "-1"], ["--lr:", "must be > 0"]),
        (["--arch-lr", "-1"], ["--arch-lr:", "must be > 0"]),
        (["--partial-channels", "0"], ["--partial-channels:", "must be >= 1"]),
        (["--C", "0"], ["--C:", "must be >= 2"]),
        (["--hook", "skip_penalty:0"], ["--hook:", "in (0, 1]", "'0'"]),
        (["--hook", "skip_penalty:abc"], ["--hook:", "in (0, 1]"]),
        (["--gamma", "0.5", "--hook", "skip_penalty:0.5"], ["gamma", "skip_penalty", "twice"]),
    ],
)
def test_cli_search_bad_flags_exit_2_before_any_work(tmp_path, capsys, flags, needles):
    out = tmp_path / "s"
    argv = ["search", "--dataset", "digits", "--epochs", "1", "--C", "4", "--layers", "2",
            "--out", str(out), "--device", "cpu", "--no-progress"]
    assert main([*argv, *flags]) == 2
    err = _cli_error(capsys)
    for needle in needles:
        assert needle in err, err
    assert not out.exists()


@pytest.mark.parametrize(
    ("text", "flags", "needles"),
    [
        ("lr = -1\n", [], ["lr must be > 0"]),
        ("arch_lr = -1\n", [], ["arch_lr must be > 0"]),
        ("hooks = [1]\n", [], ["hooks must be a list of strings, got [1]"]),
        ('hooks = ["nope"]\n', [], ["hooks: unknown alpha hook"]),
        ('arch_betas = ["a", 1]\n', [], ["arch_betas"]),
        ('gamma = 0.5\nhooks = ["skip_penalty:0.3"]\n', [], ["twice"]),
        ('hooks = ["skip_penalty:0.3"]\n', ["--gamma", "0.5"], ["twice"]),
    ],
)
def test_cli_search_bad_toml_names_the_file(tmp_path, capsys, text, flags, needles):
    cfg = tmp_path / "search.toml"
    cfg.write_text(text)
    out = tmp_path / "s"
    assert main(["search", "--config", str(cfg), "--dataset", "digits", "--out", str(out),
                 "--device", "cpu", "--no-progress", *flags]) == 2
    err = _cli_error(capsys)
    assert "search.toml" in err and "--hook" not in err
    for needle in needles:
        assert needle in err, err
    assert not out.exists()
