"""Tests of nasaudit.training, nasaudit.infra.checkpoint and the `train` / `eval` commands.

Real behaviour on real data: the shared tiny_cnn (conftest `trained_model`) must beat chance on
the CIFAR-10 subset; a resumed run must end with bit-identical weights; PGD adversarial training
must raise PGD robustness. Everything else uses small digits subsets to stay fast.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
from pathlib import Path

import pytest
import torch

from nasaudit.cli import main
from nasaudit.infra.checkpoint import model_stem, save_training_state, sidecar_path
from nasaudit.infra.device import generator, seeded
from nasaudit.infra.errors import InputError
from nasaudit.infra.outdir import claim_output_dir
from nasaudit.models import build_model
from nasaudit.training import (
    TrainConfig,
    checkpoint_path,
    evaluate,
    load_checkpoint_model,
    predict_logits,
    train_model,
    train_on_dataset,
)

CHANCE = 0.1


# ------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------


def test_config_defaults_are_the_study_settings():
    c = TrainConfig()
    assert (c.epochs, c.batch_size, c.lr, c.momentum, c.grad_clip) == (600, 96, 0.025, 0.9, 5.0)
    assert (c.weight_decay, c.auxiliary_weight, c.drop_path_prob, c.cutout) == (3e-4, 0.4, 0.2, 0)
    assert c.adv_train is None
    assert (c.adv_eps, c.adv_step, c.adv_iters) == (8 / 255, 2 / 255, 7)
    a = TrainConfig.artifact(seed=3)
    assert (a.epochs, a.weight_decay, a.cutout, a.seed) == (200, 5e-4, 16, 3)
    assert TrainConfig.from_dict({**c.to_dict(), "unknown": 1}) == c


def test_train_flags_parse_into_train_config_and_name_themselves(capsys):
    """Every training flag is a TrainConfig field: "8/255" parses, a bad value names its flag."""
    from nasaudit.cli import build_parser
    from nasaudit.cli.options import params_from_flags
    from nasaudit.cli.train import TRAIN_FLAGS

    args = build_parser().parse_args(["train", "--model", "tiny_cnn", "--adv-eps", "4/255", "--epochs", "3"])
    given = {k: getattr(args, k) for k in TRAIN_FLAGS if getattr(args, k) is not None}
    config = params_from_flags(TrainConfig, given, TRAIN_FLAGS, source="train options")
    assert config == TrainConfig(adv_eps=4 / 255, epochs=3)
    with pytest.raises(InputError, match="--drop-path: drop_path_prob must be < 1, got 1"):
        params_from_flags(TrainConfig, {"drop_path_prob": "1"}, TRAIN_FLAGS, source="train options")
    assert main(["train", "--model", "tiny_cnn", "--epochs", "two"]) == 2
    assert "--epochs: epochs must be an integer, got 'two'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "bad",
    [
        {"epochs": 0},
        {"batch_size": 0},
        {"lr": 0.0},
        {"drop_path_prob": 1.0},
        {"val_fraction": 1.0},
        {"adv_train": "trades"},
        {"adv_train": "pgd", "adv_iters": 0},
    ],
)
def test_bad_config_is_an_input_error(bad):
    with pytest.raises(InputError, match="train config"):
        TrainConfig(**bad).validate()


# ------------------------------------------------------------------------------------------
# Paths
# ------------------------------------------------------------------------------------------


def test_checkpoint_path_follows_the_study_convention(tmp_path):
    assert (
        checkpoint_path(tmp_path, "cifar10", "resnet18") == tmp_path / "image/cifar10/resnet18.pth"
    )
    assert checkpoint_path("m", "cifar10", "dir/my_cells.json") == Path(
        "m/image/cifar10/my_cells.pth"
    )
    assert model_stem("third/genotypes.py:DARTS_V2") == "genotypes-DARTS_V2"
    assert model_stem("../../etc/passwd") == "passwd"
    assert model_stem("a b;c") == "a_b_c"
    assert sidecar_path(tmp_path / "x.pth") == tmp_path / "x.json"


# ------------------------------------------------------------------------------------------
# Training on the real CIFAR-10 subset (shared session model)
# ------------------------------------------------------------------------------------------


def test_trained_model_beats_chance_on_cifar_subset(trained_model):
    """tiny_cnn, 6 epochs on ~4.6k real CIFAR-10 images: well above the 10% chance level."""
    result = trained_model.result
    assert trained_model.test_acc > 0.3, result.history
    assert result.val_acc is not None and result.val_acc > 0.3
    assert result.best_val_acc >= result.val_acc
    assert result.epochs_done == len(result.history) == trained_model.train_config.epochs
    # Cosine annealing from 0.05, stepped per epoch; the loss goes down.
    lrs = [h["lr"] for h in result.history]
    assert lrs[0] == pytest.approx(0.05) and all(a > b for a, b in itertools.pairwise(lrs))
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    # The validation split comes from the training set only (round(10% of 5085) = 508).
    meta = json.loads(sidecar_path(trained_model.checkpoint).read_text())
    assert (meta["train_size"], meta["val_size"], meta["test_size"]) == (4577, 508, 1017)


def test_sidecar_contents_and_reload(trained_model):
    ckpt = trained_model.checkpoint
    assert ckpt.name == "tiny_cnn.pth" and ckpt.parent.parts[-2:] == ("image", "cifar10")
    meta = json.loads(sidecar_path(ckpt).read_text())
    assert meta["model"] == "tiny_cnn" and meta["genotype"] is None
    assert meta["dataset"] == "cifar10" and meta["num_classes"] == 10
    assert meta["model_kwargs"] == {}
    assert meta["config"] == trained_model.train_config.to_dict()
    assert meta["seed"] == 0 and meta["epoch"] == meta["epochs"] == 6
    acc = meta["accuracies"]
    assert acc["test"] == pytest.approx(trained_model.test_acc)
    assert acc["val"] == pytest.approx(trained_model.result.val_acc)
    assert acc["best_val"] == pytest.approx(trained_model.result.best_val_acc)
    assert (
        set(meta["versions"]) == {"nasaudit", "torch"}
        and meta["versions"]["torch"] == torch.__version__
    )
    assert meta["parameters"] > 0 and len(meta["history"]) == 6
    # Atomic writes leave no temporary files behind.
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["tiny_cnn.json", "tiny_cnn.pth"]

    model, loaded_meta = load_checkpoint_model(ckpt, device="cpu")
    assert loaded_meta == meta and not model.training
    data = trained_model.data
    x = data.test_images[:64]
    torch.testing.assert_close(
        predict_logits(model, x), predict_logits(trained_model.model, x), rtol=0, atol=0
    )
    loss, accuracy = evaluate(model, data.test_images, data.test_labels)
    assert accuracy == pytest.approx(trained_model.test_acc) and loss > 0


def test_evaluate_and_predict_logits_agree(trained_model):
    model, data = trained_model.model, trained_model.data
    logits = predict_logits(model, data.test_images[:200], batch_size=64)
    assert (
        logits.shape == (200, 10) and logits.dtype == torch.float32 and logits.device.type == "cpu"
    )
    _, acc = evaluate(model, data.test_images[:200], data.test_labels[:200], batch_size=64)
    assert acc == pytest.approx((logits.argmax(1) == data.test_labels[:200]).float().mean().item())
    # Float images in [0, 1] are accepted too; the model's mode is restored.
    model.train()
    try:
        _, acc_float = evaluate(model, data.test_images[:200].float() / 255, data.test_labels[:200])
        assert model.training
    finally:
        model.eval()
    assert acc_float == pytest.approx(acc)


# ------------------------------------------------------------------------------------------
# Resume, checkpoints
# ------------------------------------------------------------------------------------------


def _tiny_genotype_net(data, seed):
    """A 3-cell DARTS network (C=4) with auxiliary head and drop path: exercises every RNG use."""
    with seeded(seed):
        return build_model(
            "darts_v2", data.num_classes, mean=data.mean, std=data.std, C=4, layers=3
        )


class _Killed(Exception):
    pass


def test_resume_gives_exactly_the_uninterrupted_weights(digits_data, tmp_path):
    """3 epochs straight == 2 epochs, killed, resumed (new process state) to 3; bit for bit."""
    images, labels = digits_data.train_images[:384], digits_data.train_labels[:384]
    val = digits_data.train_images[384:480], digits_data.train_labels[384:480]
    config = TrainConfig(epochs=3, batch_size=64, drop_path_prob=0.3, cutout=8, seed=5)
    kwargs = {"device": "cpu", "val_images": val[0], "val_labels": val[1], "progress": False}

    straight = train_model(
        _tiny_genotype_net(digits_data, 0),
        images,
        labels,
        config,
        checkpoint_path=tmp_path / "a.pth",
        **kwargs,
    )

    def kill_after_two(record):
        if record["epoch"] == 2:
            raise _Killed

    with pytest.raises(_Killed):
        train_model(
            _tiny_genotype_net(digits_data, 0),
            images,
            labels,
            config,
            checkpoint_path=tmp_path / "b.pth",
            on_epoch=kill_after_two,
            **kwargs,
        )
    assert json.loads((tmp_path / "b.json").read_text())["epoch"] == 2
    # A differently initialised model proves the weights come from the checkpoint; the global
    # RNG is disturbed on purpose: the trainer must not depend on it.
    torch.manual_seed(12345)
    torch.rand(1000)
    resumed = train_model(
        _tiny_genotype_net(digits_data, 99),
        images,
        labels,
        config,
        checkpoint_path=tmp_path / "b.pth",
        resume=True,
        **kwargs,
    )
    assert resumed.epochs_done == 3 and len(resumed.history) == 3
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert any("auxiliary" in key for key in a)  # the auxiliary head was trained too
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in straight.history]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in resumed.history]
    assert [h["drop_path_prob"] for h in strip] == pytest.approx([0.0, 0.1, 0.2])

    # The .pth holds everything resume needs, readable weights-only.
    state_a = torch.load(tmp_path / "a.pth", weights_only=True)
    assert state_a["epoch"] == 3 and {"optimizer", "scheduler", "history", "config"} <= set(state_a)

    # Resuming with another config would silently mix two runs: refused.
    with pytest.raises(InputError, match="different config.*epochs"):
        train_model(
            _tiny_genotype_net(digits_data, 0),
            images,
            labels,
            dataclasses.replace(config, epochs=4),
            checkpoint_path=tmp_path / "b.pth",
            resume=True,
            **kwargs,
        )


def test_genotype_checkpoint_rebuilds_from_sidecar(digits_data, tmp_path):
    data = dataclasses.replace(
        digits_data,
        train_images=digits_data.train_images[:200],
        train_labels=digits_data.train_labels[:200],
    )
    config = TrainConfig(epochs=1, batch_size=50, val_fraction=0.2)
    result = train_on_dataset(
        "darts",
        data,
        config,
        model_kwargs={"C": 4, "layers": 3},
        model_dir=tmp_path,
        progress=False,
    )
    ckpt = tmp_path / "image/digits/darts.pth"
    meta = json.loads(sidecar_path(ckpt).read_text())
    assert meta["genotype"]["normal"][0] == ["sep_conv_3x3", 0] and meta["model_kwargs"] == {
        "C": 4,
        "layers": 3,
    }
    assert meta["accuracies"]["test"] == pytest.approx(result.test_acc)
    # Rename the genotype in the sidecar: the stored genotype, not the name, rebuilds the model.
    meta["model"] = "no/longer/here.json"
    sidecar_path(ckpt).write_text(json.dumps(meta))
    model, _ = load_checkpoint_model(ckpt)
    x = data.test_images[:16]
    torch.testing.assert_close(
        predict_logits(model, x), predict_logits(result.model, x), rtol=0, atol=0
    )


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    path = tmp_path / "m.pth"
    save_training_state(path, {"model": {"w": torch.ones(3)}, "epoch": 1})

    def torn_save(obj, handle, *args, **kwargs):
        handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        save_training_state(path, {"model": {"w": torch.zeros(3)}, "epoch": 2})
    monkeypatch.undo()
    state = torch.load(path, weights_only=True)
    assert state["epoch"] == 1 and torch.equal(state["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["m.pth"]


class _NotAWeight:
    pass


def test_bad_checkpoints_are_one_line_input_errors(trained_model, tmp_path):
    good = trained_model.checkpoint
    cases = {
        "garbage.pth": b"this is not a checkpoint",
        "truncated.pth": good.read_bytes()[:1000],
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        (tmp_path / name).with_suffix(".json").write_text(sidecar_path(good).read_text())
    torch.save({"model": {"w": torch.ones(1)}, "evil": _NotAWeight()}, tmp_path / "unsafe.pth")
    torch.save({"model": {"w": torch.ones(1)}}, tmp_path / "foreign.pth")  # no sidecar, bad keys
    (tmp_path / "badjson.pth").write_bytes(good.read_bytes())
    (tmp_path / "badjson.json").write_text("{not json")

    for name in ["garbage.pth", "truncated.pth", "unsafe.pth", "missing.pth", "badjson.pth"]:
        with pytest.raises(InputError) as info:
            load_checkpoint_model(tmp_path / name)
        assert "\n" not in str(info.value) and Path(name).stem in str(info.value)
    with pytest.raises(InputError, match="pass --model"):
        load_checkpoint_model(tmp_path / "foreign.pth")
    with pytest.raises(InputError, match="do not fit model 'tiny_cnn'"):
        load_checkpoint_model(tmp_path / "foreign.pth", model_name="tiny_cnn", num_classes=10)
    with pytest.raises(InputError, match="do not fit"):
        load_checkpoint_model(good, model_name="resnet18", num_classes=10)


# ------------------------------------------------------------------------------------------
# Adversarial training
# ------------------------------------------------------------------------------------------


def test_adversarial_step_freezes_batch_norm_statistics(trained_model):
    from nasaudit.training import _adversarial_batch

    model = copy.deepcopy(trained_model.model).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = trained_model.data.test_images[:32].float() / 255
    y = trained_model.data.test_labels[:32]
    x_adv = _adversarial_batch(
        model, x, y, TrainConfig(adv_train="pgd"), generator(0), torch.device("cpu")
    )
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6 and (x_adv != x).any()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running stats untouched
    assert model.training


def test_pgd_adversarial_training_raises_robustness(cifar_subset):
    """tiny_cnn on 1.5k CIFAR-10 images, 3 epochs, with and without PGD training (eps 8/255,
    step 2/255, 7 iterations); robust accuracy under a 10-step eps 8/255 PGD on 300 test images."""
    from nasaudit.attacks.pgd import pgd_untargeted

    data = cifar_subset
    n_train, n_test = 1500, 300
    x_test = data.test_images[:n_test].float() / 255
    y_test = data.test_labels[:n_test]

    def clean_and_robust(adv_train):
        config = TrainConfig(epochs=3, batch_size=64, lr=0.05, val_fraction=0, adv_train=adv_train)
        with seeded(0):
            model = build_model("tiny_cnn", 10, mean=data.mean, std=data.std)
        model = train_model(
            model, data.train_images[:n_train], data.train_labels[:n_train], config, progress=False
        ).model
        x_adv = pgd_untargeted(
            model, x_test, y_test, eps=8 / 255, step=2 / 255, iters=10, generator=generator(1)
        )
        return evaluate(model, x_test, y_test)[1], evaluate(model, x_adv, y_test)[1]

    std_clean, std_robust = clean_and_robust(None)
    adv_clean, adv_robust = clean_and_robust("pgd")
    print(
        f"standard: clean {std_clean:.3f} robust {std_robust:.3f}; pgd: clean {adv_clean:.3f} robust {adv_robust:.3f}"
    )
    assert std_clean > 0.2 and adv_clean > 0.15  # both learned something
    # Robust accuracy above what a constant classifier gets (chance), and clearly above standard.
    assert adv_robust > CHANCE + 0.03
    assert adv_robust > std_robust + 0.08


# ------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------


def test_cli_train_eval_resume_on_digits(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model_dir, log_dir = tmp_path / "models", tmp_path / "tb"
    args = "train --model tiny_cnn --dataset digits --epochs 3 --batch-size 32 --lr 0.05".split()
    args += ["--model-dir", str(model_dir), "--log-dir", str(log_dir), "--device", "cpu"]
    assert main([*args, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "parameters" in out and "epoch    3/3" in out
    assert "final val acc" in out and "final test loss" in out
    test_acc = float(out.split("final test loss")[1].split("acc")[1].split()[0])
    assert test_acc > 0.3  # 10 digit classes: chance is 0.1

    ckpt = model_dir / "image/digits/tiny_cnn.pth"
    assert ckpt.is_file() and sidecar_path(ckpt).is_file()
    events = EventAccumulator(str(log_dir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/accuracy", "val/loss", "val/accuracy", "lr"} <= tags
    assert [e.step for e in events.Scalars("lr")] == [1, 2, 3]

    assert main(["eval", "--checkpoint", str(ckpt), "--dataset", "digits", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "digits test (359 images)" in out and f"accuracy {test_acc:.4f}" in out
    assert (
        main(["eval", "--model", "tiny_cnn", "--model-dir", str(model_dir), "--split", "val"]) == 0
    )
    assert "digits val (144 images)" in capsys.readouterr().out

    # --resume on a finished run trains no more and reports the same test accuracy.
    assert main([*args, "--no-progress", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "epoch" not in out.replace("at epoch", "") and f"acc {test_acc:.4f}" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--model", "no_such_model", "--epochs", "1"], "--model"),
        (["train", "--model", "tiny_cnn", "--C", "8", "--epochs", "1"], "manual baseline"),
        (["train", "--model", "tiny_cnn", "--epochs", "0"], "--epochs: epochs must be >= 1, got 0"),
        (["train", "--model", "darts", "--width", "8", "--epochs", "1"], "--width"),
        (
            ["train", "--model", "tiny_cnn", "--dataset", "cifar10", "--data-dir", "/nonexistent"],
            "nonexistent",
        ),
        (["eval", "--checkpoint", "/nonexistent/x.pth"], "checkpoint not found"),
        (["eval"], "--checkpoint"),
        (["eval", "--model", "tiny_cnn", "--batch-size", "0"], "--batch-size: must be >= 1"),
        (["eval", "--model", "tiny_cnn", "--batch-size", "-5"], "--batch-size: must be >= 1"),
        (["train", "--model", "resnet18", "--width", "-4", "--epochs", "1"], "--width: width must be"),
        (["train", "--model", "resnet18", "--width", "0", "--epochs", "1"], "--width: width must be"),
        (["train", "--model", "tiny_cnn", "--width", "0", "--epochs", "1"], "--width: width must be"),
        (["train", "--model", "resnext50_32x4d", "--width", "8", "--epochs", "1"], ">= 16"),
        (["train", "--model", "darts", "--C", "0", "--epochs", "1"], "--C: C must be"),
        (["train", "--model", "darts", "--layers", "0", "--epochs", "1"], "--layers: layers must be"),
        (["train", "--model", "tiny_cnn", "--resume", "--overwrite"], "pick one"),
    ],
)
def test_cli_bad_inputs_exit_2_with_one_line(argv, message, tmp_path, capsys):
    assert main([*argv, "--model-dir", str(tmp_path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nasaudit: error:") and err.count("\n") == 1 and message in err
    assert "Traceback" not in err and not any(tmp_path.iterdir())  # nothing written


def test_bad_sizes_are_input_errors_in_the_builders():
    with pytest.raises(InputError, match="width must be an integer >= 1"):
        build_model("resnet18", 10, width=-4)
    with pytest.raises(InputError, match="width must be an integer >= 1"):
        build_model("vgg13_bn", 10, width=0)  # 0 is not "canonical"
    with pytest.raises(InputError, match="C must be an integer >= 1"):
        build_model("darts", 10, C=0)
    with pytest.raises(InputError, match="layers must be an integer >= 1"):
        build_model("darts", 10, layers=-1)
    # --width scales tiny_cnn (4 * width features).
    assert build_model("tiny_cnn", 10, width=4).classifier.in_features == 16


@pytest.mark.parametrize("bad", [{"epochs": "two"}, {"lr": "x"}, {"flip": 1}, {"batch_size": 8.0},
                                 {"adv_train": 3}, {"lr": float("nan")}])
def test_wrong_types_are_input_errors_naming_the_key(bad):
    (key,) = bad
    with pytest.raises(InputError, match=f"train config: {key} must be"):
        TrainConfig(**bad).validate()
    with pytest.raises(InputError, match=f"sidecar.json: {key} must be"):
        TrainConfig.from_dict({**TrainConfig().to_dict(), **bad}, source="sidecar.json")


def test_cli_train_refuses_to_overwrite_a_checkpoint(tmp_path, capsys):
    """Without --resume or --overwrite an existing checkpoint is never replaced."""
    claim_output_dir(tmp_path, "models")  # the model dir of an earlier `nasaudit train`
    ckpt = tmp_path / "image" / "digits" / "tiny_cnn.pth"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"an earlier run")
    argv = ["train", "--model", "tiny_cnn", "--epochs", "1", "--batch-size", "256",
            "--model-dir", str(tmp_path), "--device", "cpu", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "tiny_cnn.pth" in err and "--resume" in err and "--overwrite" in err
    assert ckpt.read_bytes() == b"an earlier run"
    # --overwrite starts over.
    assert main([*argv, "--overwrite"]) == 0
    assert ckpt.read_bytes() != b"an earlier run" and sidecar_path(ckpt).is_file()
    capsys.readouterr()


def test_library_training_still_starts_over_without_resume(digits_data, tmp_path):
    """The audit retrains over a stale checkpoint: train_on_dataset stays permissive."""
    config = TrainConfig(epochs=1, batch_size=256, val_fraction=0.0)
    first = train_on_dataset("tiny_cnn", digits_data, config, model_dir=tmp_path, progress=False)
    second = train_on_dataset("tiny_cnn", digits_data, config, model_dir=tmp_path, progress=False)
    assert first.epochs_done == second.epochs_done == 1


def test_unknown_model_in_a_sidecar_names_the_sidecar(trained_model, tmp_path, capsys):
    ckpt = tmp_path / "m.pth"
    ckpt.write_bytes(trained_model.checkpoint.read_bytes())
    meta = json.loads(sidecar_path(trained_model.checkpoint).read_text())
    sidecar_path(ckpt).write_text(json.dumps({**meta, "model": "no_such_model"}))
    assert main(["eval", "--checkpoint", str(ckpt), "--dataset", "digits", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "m.json" in err and "no_such_model" in err and "--model" not in err
    sidecar_path(ckpt).write_text(json.dumps({**meta, "model_kwargs": {"width": -1}}))
    assert main(["eval", "--checkpoint", str(ckpt), "--dataset", "digits", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "m.json" in err and "width must be" in err and "--width" not in err


def test_cli_eval_rejects_a_corrupt_checkpoint(tmp_path, capsys):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x80\x02corrupt")
    assert main(["eval", "--checkpoint", str(bad), "--model", "tiny_cnn", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "bad.pth" in err and err.count("\n") == 1


def test_cli_eval_defaults_to_the_checkpoints_own_dataset(trained_model, cifar_subset_dir, capsys):
    """Without --dataset, eval scores the checkpoint on the data set its sidecar names."""
    code = main(["eval", "--checkpoint", str(trained_model.checkpoint),
                 "--data-dir", str(cifar_subset_dir), "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0
    assert "on cifar10 test (1017 images)" in out
    accuracy = float(out.strip().split("accuracy")[-1])
    assert accuracy == pytest.approx(trained_model.test_acc, abs=1e-4)
