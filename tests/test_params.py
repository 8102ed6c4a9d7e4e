"""Parameter validation of attacks and probes: one mechanism (`nasaudit.infra.params.make_params`),
constraints declared on the Params fields, and one-line CLI errors (exit code 2) raised before
any checkpoint, data or model is loaded."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest

from nasaudit.infra.errors import InputError
from nasaudit.infra.params import ParamError, make_params, param, params_help


@dataclass
class Toy:
    count: int = param(3, min=1, doc="a count")
    rate: float = param(0.5, min=0, lt=1)
    scale: float = param(1.0, gt=0, max=10)
    mode: str = param("a", choices=("a", "b"))
    points: int = param(5, min=3, odd=True)
    pairs: int = param(4, min=2, even=True)
    clip: float | None = param(None, gt=0)
    sizes: tuple[int, ...] = param((1, 2), min=1, unique=True)
    flag: bool = param(True)
    extra: dict | None = param(None)
    first: int = param(2, min=1, le_field="count")


# ------------------------------------------------------------------------------ the mechanism


def test_defaults_overrides_and_instances():
    assert make_params(Toy, None, source="s") == Toy()
    got = make_params(Toy, {"count": 7, "sizes": [3, 4], "clip": 2}, source="s")
    assert got.count == 7 and got.sizes == (3, 4) and got.clip == 2.0
    assert isinstance(got.clip, float)
    assert make_params(Toy, Toy(count=9), source="s").count == 9
    with pytest.raises(ParamError, match="count must be >= 1, got 0"):
        make_params(Toy, Toy(count=0), source="s")  # instances are checked too


def test_strings_are_coerced_by_field_type():
    got = make_params(
        Toy,
        {"count": "12", "rate": "1/4", "scale": "8/255", "clip": "none", "sizes": "5,6",
         "flag": "false", "extra": '{"C": 4}', "mode": " b "},
        source="s",
    )
    assert got.count == 12 and got.rate == 0.25 and got.scale == pytest.approx(8 / 255)
    assert got.clip is None and got.sizes == (5, 6) and got.flag is False
    assert got.extra == {"C": 4} and got.mode == "b"
    assert make_params(Toy, {"sizes": 9}, source="s").sizes == (9,)  # a scalar is a 1-list


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"count": -5}, "count must be >= 1, got -5"),
        ({"count": "2.5"}, "count must be an integer, got '2.5'"),
        ({"count": True}, "count must be an integer"),
        ({"count": "abc"}, "count must be an integer, got 'abc'"),
        ({"count": None}, "count must be an integer, got none"),
        ({"rate": 1}, "rate must be < 1, got 1"),
        ({"rate": -0.1}, "rate must be >= 0, got -0.1"),
        ({"rate": float("nan")}, "rate must be a finite number"),
        ({"scale": 0}, "scale must be > 0, got 0"),
        ({"scale": 11}, "scale must be <= 10, got 11"),
        ({"mode": "c"}, "mode must be one of a, b, got 'c'"),
        ({"points": 4}, "points must be odd, got 4"),
        ({"points": 1}, "points must be >= 3, got 1"),
        ({"pairs": 5}, "pairs must be even, got 5"),
        ({"clip": -1}, "clip must be > 0, got -1"),
        ({"sizes": ""}, "sizes must list at least one value"),
        ({"sizes": []}, "sizes must list at least one value"),
        ({"sizes": "1,0"}, r"sizes\[1\] must be >= 1, got 0"),
        ({"sizes": "2,2"}, "sizes must not repeat a value"),
        ({"flag": "maybe"}, "flag must be true or false"),
        ({"extra": "[1]"}, "extra must be a table"),
        ({"first": 4}, r"first must be <= count \(3\), got 4"),
        ({"cuont": 3}, "unknown parameter.*cuont.*known: count, rate"),
    ],
)
def test_bad_values_raise_one_line_input_errors(values, problem):
    with pytest.raises(InputError, match=problem) as info:
        make_params(Toy, values, source="where")
    assert info.value.source == "where" and "\n" not in str(info.value)
    field = next(iter(values))
    assert info.value.field == (None if field == "cuont" else field)


def test_not_a_mapping_and_bad_declarations():
    with pytest.raises(InputError, match="expected a table"):
        make_params(Toy, [1, 2], source="s")
    with pytest.raises(TypeError, match="unknown constraint"):
        param(1, minimum=1)
    with pytest.raises(TypeError, match="mutable"):
        param([1])


def test_params_help_lists_defaults_and_constraints():
    lines = params_help(Toy)
    assert lines[0] == "count=3  [int >= 1]  a count"
    assert any(line.startswith("clip=none  [float > 0 or none]") for line in lines)
    assert any(line.startswith("sizes=1,2  [list of int (each >= 1)]") for line in lines)


# -------------------------------------------------------------- every attack and probe Params


def _registries():
    from nasaudit.attacks import ATTACKS
    from nasaudit.probes import PROBES

    return {**{f"attack {k}": v.params_cls for k, v in ATTACKS.items()},
            **{f"probe {k}": v.params_cls for k, v in PROBES.items()}}


def test_every_field_declares_a_description_and_defaults_validate():
    for label, cls in _registries().items():
        assert make_params(cls, None, source=label) == cls()
        for f in dataclasses.fields(cls):
            assert f.metadata.get("doc"), (label, f.name)


def test_counts_are_at_least_one_and_radii_positive():
    """Every count-like int field and every eps/step/sigma/radius/lr field rejects 0, unless 0
    is a documented setting: then it accepts 0 and its doc says what 0 means ("0: off")."""
    counts = ("n_", "iters", "restarts", "batch", "epochs", "budgets", "points", "chunk",
              "max_", "init_", "trigger_size")
    radii = ("eps", "step", "sigma", "radius", "lr", "trigger_lr", "bandit_lr", "step_fraction",
             "artifact_clip", "clip_norm")
    documented_zero = []
    for label, cls in _registries().items():
        for f in dataclasses.fields(cls):
            if not (any(f.name.startswith(c) or c in f.name for c in counts) or f.name in radii):
                continue
            if "0: " in f.metadata["doc"] or "(0 " in f.metadata["doc"]:
                assert getattr(make_params(cls, {f.name: 0}, source=label), f.name) == 0
                documented_zero.append(f"{label}.{f.name}")
                continue
            with pytest.raises(ParamError, match=f"{f.name}.* must be"):
                make_params(cls, {f.name: 0}, source=label)
    # The documented zeros are the few the modules say they are, not a loophole.
    assert {"attack model_reuse.n_neighbors", "attack model_reuse.finetune_epochs",
            "attack model_reuse.anchor_batch", "attack autoattack.eps"} <= set(documented_zero)
    assert len(documented_zero) <= 10, documented_zero


def test_attack_and_probe_entry_points_share_the_mechanism():
    from nasaudit.attacks import ATTACKS
    from nasaudit.infra.params import make_params
    from nasaudit.probes import probe_params

    pgd = ATTACKS["pgd"].params_cls
    with pytest.raises(InputError, match="n_inputs must be >= 1, got -5"):
        make_params(pgd, {"n_inputs": -5}, source="params")
    with pytest.raises(InputError, match="restarts must be >= 1, got 0"):
        make_params(pgd, pgd(restarts=0), source="params")
    with pytest.raises(InputError, match="points must be odd") as info:
        probe_params("contour-param", {"points": 8})
    assert info.value.source == "probe contour-param"
    assert probe_params("gradvar", {"clip_norm": None}).clip_norm is None


def test_audit_config_validation_rejects_bad_values():
    from nasaudit.audit.config import config_from_dict
    from nasaudit.audit.runner import validate_config

    base = {"dataset": {"name": "digits"}, "models": [{"name": "resnet18"}]}
    for section, table, problem in (
        ("attacks", {"pgd": {"n_inputs": -5}}, "n_inputs must be >= 1"),
        ("attacks", {"pgd_sweep": {"eps": [0.01, -0.1]}}, r"eps\[1\] must be > 0"),
        ("attacks", {"poison": {"fractions": []}}, "fractions must list at least one"),
        ("probes", {"contour_param": {"points": 4}}, "points must be odd"),
        ("probes", {"curvature": {"iters": 0}}, "iters must be >= 1"),
    ):
        with pytest.raises(InputError, match=problem):
            validate_config(config_from_dict({**base, section: table}))


# ---------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """tiny_cnn trained for 1 epoch on digits by the trainer (a real checkpoint + sidecar)."""
    from nasaudit.data import load_dataset
    from nasaudit.training import TrainConfig, train_on_dataset

    model_dir = tmp_path_factory.mktemp("params_models") / "models"
    config = TrainConfig(epochs=1, batch_size=64, lr=0.05, seed=0)
    result = train_on_dataset(
        "tiny_cnn", load_dataset("digits"), config, device="cpu", model_dir=model_dir,
        progress=False,
    )
    return result.checkpoint


@pytest.fixture
def no_heavy_work(monkeypatch):
    """Fail the test if the CLI gets as far as loading a checkpoint or a data set."""
    import nasaudit.data
    import nasaudit.training

    def boom(*args, **kwargs):
        raise AssertionError("validation must happen before loading anything")

    monkeypatch.setattr(nasaudit.training, "load_checkpoint_model", boom)
    monkeypatch.setattr(nasaudit.data, "load_dataset", boom)


def _one_error_line(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.mark.parametrize(
    ("attack", "value", "problem"),
    [
        ("pgd", "n_inputs=-5", "n_inputs must be >= 1, got -5"),
        ("pgd", "n_inputs=0", "n_inputs must be >= 1, got 0"),
        ("pgd", "eps=-1", "eps must be > 0, got -1"),
        ("pgd", "eps=5", "eps must be <= 1, got 5"),
        ("pgd", "restarts=0", "restarts must be >= 1, got 0"),
        ("pgd", "batch_size=0", "batch_size must be >= 1, got 0"),
        ("pgd", "cases=foo", "must be one of most_likely, least_likely, got 'foo'"),
        ("pgd-sweep", "eps=-0.1,0", "eps[0] must be > 0, got -0.1"),
        ("nes", "n_query=0", "n_query must be >= 2, got 0"),
        ("nes", "query_batch=0", "query_batch must be >= 1, got 0"),
        ("poison", "fractions=", "fractions must list at least one value"),
        ("poison", "fractions=0,1", "fractions[1] must be < 1, got 1"),
        ("knockoff", "budgets=0", "budgets[0] must be >= 1, got 0"),
        ("membership", "fpr=0", "fpr must be > 0, got 0"),
        ("backdoor", "method=nope", "method must be one of trojannn, badnet"),
        ("pgd", "nope=1", "unknown parameter"),
    ],
)
def test_cli_attack_bad_param_is_one_line_exit_2(
    tiny_checkpoint, no_heavy_work, capsys, attack, value, problem
):
    from nasaudit.cli import main

    argv = ["attack", attack, "--checkpoint", str(tiny_checkpoint), "--device", "cpu",
            "--no-progress", "--param", value]
    assert main(argv) == 2
    _one_error_line(capsys, "--param", problem)


def test_cli_attack_output_directory_fails_before_the_attack(
    tiny_checkpoint, no_heavy_work, tmp_path, capsys
):
    from nasaudit.cli import main

    argv = ["attack", "pgd", "--checkpoint", str(tiny_checkpoint), "--device", "cpu",
            "--no-progress", "--param", "n_inputs=4", "--output", str(tmp_path)]
    assert main(argv) == 2
    _one_error_line(capsys, "--output", "is a directory")


def test_cli_attack_help_lists_every_attack_parameter(capsys):
    from nasaudit.attacks import ATTACKS
    from nasaudit.cli import main

    with pytest.raises(SystemExit) as info:
        main(["attack", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "n_inputs=1000" in out and "eps=8/255" in out and "n_query=400" in out
    for spec in ATTACKS.values():
        for f in dataclasses.fields(spec.params_cls):
            assert f"    {f.name}=" in out, f.name
    assert "correctly classified" in out  # PGD's n_inputs counts candidates


@pytest.mark.parametrize(
    ("probe", "flag", "value", "problem"),
    [
        ("gradvar", "--n-samples", "-3", "n_samples must be >= 2, got -3"),
        ("gradvar", "--clip-norm", "-1", "clip_norm must be > 0, got -1"),
        ("gradvar", "--chunk-size", "0", "chunk_size must be >= 1, got 0"),
        ("curvature", "--iters", "0", "iters must be >= 1, got 0"),
        ("curvature", "--n-inputs", "0", "n_inputs must be >= 1, got 0"),
        ("contour-param", "--n-samples", "0", "n_samples must be >= 1, got 0"),
        ("contour-param", "--radius", "-1", "radius must be > 0, got -1"),
        ("contour-param", "--points", "8", "points must be odd, got 8"),
        ("contour-input", "--points", "1", "points must be >= 3, got 1"),
        ("contour-input", "--batch-size", "0", "batch_size must be >= 1, got 0"),
    ],
)
def test_cli_probe_bad_flag_is_one_line_exit_2(
    tiny_checkpoint, no_heavy_work, capsys, probe, flag, value, problem
):
    from nasaudit.cli import main

    argv = ["probe", probe, "--checkpoint", str(tiny_checkpoint), "--dataset", "digits",
            "--device", "cpu", "--no-progress", flag, value]
    assert main(argv) == 2
    _one_error_line(capsys, f"error: {flag}: ", problem)


def test_run_functions_check_instances_before_any_work():
    """Calling an attack or probe run function directly with a bad Params instance fails with
    InputError before touching the model or the data (both None here)."""
    from nasaudit.attacks import ATTACKS, Victim, run_attack
    from nasaudit.probes import PROBES, run_probe

    victim = Victim(model=None, model_name="none")
    with pytest.raises(InputError, match="restarts must be >= 1"):
        run_attack("pgd", victim, None, ATTACKS["pgd"].params_cls(restarts=0), device="cpu", seed=0)
    with pytest.raises(InputError, match="n_query must be even"):
        run_attack("nes", victim, None, {"n_query": 401}, device="cpu", seed=0)
    bad = PROBES["curvature"].params_cls(n_samples=8, n_inputs=16)
    with pytest.raises(InputError, match=r"n_inputs must be <= n_samples \(8\), got 16"):
        PROBES["curvature"].run(None, None, bad, device="cpu", seed=0)
    with pytest.raises(InputError, match="clip_norm must be > 0"):
        run_probe("gradvar", None, None, {"clip_norm": 0}, device="cpu", seed=0)
