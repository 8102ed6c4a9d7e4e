"""Tests of nasaudit.probes (gradient variance, loss contours, curvature) and `nasaudit probe`.

Numerical checks use a tiny conv net (a few hundred parameters) against slow references: a
per-sample backward loop, explicit perturbed models, and explicit Hessians. The CLI tests run on
tiny_cnn trained for one epoch on the embedded digits data set.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nasaudit.infra.errors import InputError
from nasaudit.models.base import ImageClassifier
from nasaudit.probes import PROBES, probe_params, run_probe
from nasaudit.probes.contour import (
    centred_grid,
    first_conv_weight_name,
    input_loss_grid,
    orthogonal_sign_directions,
    param_loss_grid,
)
from nasaudit.probes.curvature import (
    input_top_eigenvalues,
    param_top_eigenvalue,
    power_iteration,
)
from nasaudit.probes.gradvar import GradVarRecord, per_sample_grad_variance

# --------------------------------------------------------------------------------------------
# Fixtures


def _tiny_model(seed: int = 0, size: int = 8) -> ImageClassifier:
    """conv(3->4)-BN-ReLU-conv(4->4)-ReLU-pool-linear(4->5), with non-trivial BN statistics."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        body = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(inplace=True),
            nn.Conv2d(4, 4, 3, padding=1, bias=False),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        model = ImageClassifier(body, 4, 5, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
        bn = body[1]
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
    return model


def _tiny_data(n: int = 40, size: int = 8, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=gen)
    y = torch.randint(0, 5, (n,), generator=gen)
    return x, y


def _fake_dataset(n_train: int = 120, n_test: int = 60, size: int = 8):
    """An ImageDataset-like namespace (uint8 images) for run_probe."""
    gen = torch.Generator().manual_seed(1)
    return types.SimpleNamespace(
        name="fake",
        train_images=torch.randint(
            0, 256, (n_train, 3, size, size), dtype=torch.uint8, generator=gen
        ),
        train_labels=torch.randint(0, 5, (n_train,), generator=gen),
        test_images=torch.randint(
            0, 256, (n_test, 3, size, size), dtype=torch.uint8, generator=gen
        ),
        test_labels=torch.randint(0, 5, (n_test,), generator=gen),
        num_classes=5,
    )


def _reference_grads(model: nn.Module, x, y, names=None) -> torch.Tensor:
    """Per-sample gradients [N, P] (float64) by one backward pass per sample, eval mode."""
    model = copy.deepcopy(model).eval()
    named = dict(model.named_parameters())
    names = names or list(named)
    rows = []
    for i in range(x.shape[0]):
        loss = F.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        grads = torch.autograd.grad(loss, [named[k] for k in names])
        rows.append(torch.cat([g.reshape(-1) for g in grads]).double())
    return torch.stack(rows)


def _clip(g: torch.Tensor, c: float) -> torch.Tensor:
    norm = g.norm(dim=1, keepdim=True)
    return torch.where(norm >= c, g * c / norm, g)


# --------------------------------------------------------------------------------------------
# Gradient variance


def test_gradvar_matches_slow_reference_loop():
    model = _tiny_model()
    model.train()  # the probe must evaluate in eval mode and restore this
    x, y = _tiny_data(23)
    g = _reference_grads(model, x, y)
    ref_var = ((g - g.mean(0)) ** 2).sum(1).mean()
    # About half the gradients clipped; halfway between two norms so float rounding cannot
    # move a sample across the threshold.
    norms = g.norm(dim=1).sort().values
    clip = float(norms[11] + norms[12]) / 2
    gc = _clip(g, clip)

    out = per_sample_grad_variance(
        model, None, x, y, chunk_size=5, artifact_clip=clip, per_tensor=True
    )
    assert model.training and model.body[1].training
    assert out["n_samples"] == 23
    assert out["n_params"] == g.shape[1]
    torch.testing.assert_close(out["variance"], float(ref_var), rtol=1e-5, atol=0)
    assert out["log10_variance"] == pytest.approx(np.log10(float(ref_var)), rel=1e-5)
    torch.testing.assert_close(out["artifact_std_sum"], float(gc.std(0).sum()), rtol=1e-5, atol=0)
    torch.testing.assert_close(
        out["artifact_var_sum"], float(gc.std(0).square().sum()), rtol=1e-5, atol=0
    )
    torch.testing.assert_close(
        out["mean_grad_sq_norm"], float(g.mean(0).square().sum()), rtol=1e-5, atol=0
    )
    assert out["clipped_fraction"] == pytest.approx(float((g.norm(dim=1) >= clip).double().mean()))
    assert sum(out["per_tensor"].values()) == pytest.approx(out["variance"], rel=1e-9)

    # Chunking is an implementation detail: one chunk gives the same numbers.
    whole = per_sample_grad_variance(model, None, x, y, chunk_size=64, artifact_clip=clip)
    assert whole["variance"] == pytest.approx(out["variance"], rel=1e-6)
    # clip_norm applies the clip before Eq. 14.
    clipped = per_sample_grad_variance(model, None, x, y, chunk_size=7, clip_norm=clip)
    ref_clipped = ((gc - gc.mean(0)) ** 2).sum(1).mean()
    torch.testing.assert_close(clipped["variance"], float(ref_clipped), rtol=1e-5, atol=0)


def test_gradvar_parameter_subset_with_other_values():
    """The search's use: a subset of the weights, at values other than the module's own."""
    model = _tiny_model()
    x, y = _tiny_data(12)
    names = ["body.3.weight", "classifier.weight"]
    named = dict(model.named_parameters())
    params = {k: named[k].detach() * 1.5 for k in names}
    out = per_sample_grad_variance(model, params, x, y, chunk_size=4)

    moved = copy.deepcopy(model)
    with torch.no_grad():
        for k in names:
            dict(moved.named_parameters())[k].mul_(1.5)
    g = _reference_grads(moved, x, y, names)
    assert out["n_params"] == g.shape[1]
    torch.testing.assert_close(
        out["variance"], float(((g - g.mean(0)) ** 2).sum(1).mean()), rtol=1e-5, atol=0
    )
    # Parameters the loss never uses (like an auxiliary head in eval mode) are left out.
    model.unused_head = nn.Linear(4, 3)
    out = per_sample_grad_variance(model, None, x, y)
    assert out["n_unused_params"] == 15
    assert out["n_params"] == sum(p.numel() for p in model.parameters()) - 15
    with pytest.raises(ValueError, match="not parameters"):
        per_sample_grad_variance(model, {"nope": torch.zeros(1)}, x, y)


def test_gradvar_probe_is_deterministic_for_a_seed(tmp_path):
    model, data = _tiny_model(), _fake_dataset()
    params = {"n_samples": 32, "chunk_size": 16}
    a = run_probe("gradvar", model, data, params, device="cpu", seed=3, progress=False)
    b = run_probe("gradvar", model, data, params, device="cpu", seed=3, progress=False)
    c = run_probe("gradvar", model, data, params, device="cpu", seed=4, progress=False)
    assert isinstance(a, GradVarRecord)
    assert a.to_dict() == b.to_dict()
    assert a.variance != c.variance
    assert GradVarRecord.from_dict(json.loads(a.to_json())).to_dict() == a.to_dict()


# --------------------------------------------------------------------------------------------
# Contours


def test_orthogonal_sign_directions():
    gen = torch.Generator().manual_seed(0)
    d1, d2 = orthogonal_sign_directions((4, 3, 3, 3), gen, count=2)
    assert d1.shape == d2.shape == (2, 4, 3, 3, 3)
    assert set(d1.unique().tolist()) == {-1.0, 1.0} and set(d2.unique().tolist()) == {-1.0, 1.0}
    assert (d1 * d2).flatten(1).sum(1).tolist() == [0.0, 0.0]
    e1, e2 = orthogonal_sign_directions((7,), gen)  # odd size: one zero in d2
    assert float((e1 * e2).sum()) == 0.0 and int((e2 == 0).sum()) == 1
    grid = centred_grid(0.5, 41)
    assert grid[20] == 0.0 and grid[0] == -0.5 and grid[-1] == 0.5


def test_param_contour_centre_is_model_loss_and_grid_matches_perturbed_models():
    model = _tiny_model()
    x, y = _tiny_data(16)
    res = param_loss_grid(
        model,
        x,
        y,
        radius=0.5,
        points=5,
        generator=torch.Generator().manual_seed(0),
        grid_chunk=7,
    )
    assert res["weight_name"] == first_conv_weight_name(model) == "body.0.weight"
    with torch.no_grad():
        exact = F.cross_entropy(model.eval()(x), y)
    assert res["losses"][2, 2] == float(exact)  # exactly, bit for bit
    assert res["centre_loss"] == float(exact)
    assert res["centre_abs_err"] < 1e-5
    # An off-centre point equals an explicitly perturbed copy of the model.
    for i, j in [(0, 4), (3, 1)]:
        moved = copy.deepcopy(model).eval()
        a, b = res["alphas"][i], res["alphas"][j]
        with torch.no_grad():
            w = moved.body[0].weight
            w += a * torch.from_numpy(res["d1"]) + b * torch.from_numpy(res["d2"])
            expected = float(F.cross_entropy(moved(x), y))
        assert res["losses"][i, j] == pytest.approx(expected, rel=1e-5)


def test_input_contour_centre_is_model_loss_and_grid_matches_perturbed_inputs():
    model = _tiny_model()
    x, y = _tiny_data(3)
    res = input_loss_grid(
        model,
        x,
        y,
        radius=0.2,
        points=5,
        generator=torch.Generator().manual_seed(0),
        batch_size=11,  # not a multiple of 25: batches straddle inputs
    )
    with torch.no_grad():
        exact = F.cross_entropy(model.eval()(x), y, reduction="none").double().numpy()
    np.testing.assert_array_equal(res["losses"][:, 2, 2], exact)
    assert res["centre_abs_err"] < 1e-5
    # The same directions, drawn again, reproduce an off-centre point.
    d1, d2 = orthogonal_sign_directions(x.shape[1:], torch.Generator().manual_seed(0), count=3)
    a, b = res["alphas"][0], res["alphas"][3]
    with torch.no_grad():
        xp = x[1:2] + a * d1[1:2] + b * d2[1:2]
        expected = float(F.cross_entropy(model(xp), y[1:2]))
    assert res["losses"][1, 0, 3] == pytest.approx(expected, rel=1e-5)


def test_contour_probes_write_npz_and_png(tmp_path):
    model, data = _tiny_model(), _fake_dataset()
    rec = run_probe(
        "contour-param",
        model,
        data,
        {"points": 7, "n_samples": 16},
        device="cpu",
        seed=0,
        out_dir=tmp_path,
        progress=False,
    )
    assert rec.space == "param" and rec.points == 7
    with np.load(rec.files["npz"], allow_pickle=False) as z:
        assert z["losses"].shape == (7, 7)
        assert z["losses"][3, 3] == rec.centre_loss
        assert rec.mean_increase == pytest.approx(float((z["losses"] - rec.centre_loss).mean()))
    rec = run_probe(
        "contour_input",
        model,
        data,
        {"points": 5, "n_samples": 2},
        device="cpu",
        seed=0,
        out_dir=tmp_path,
        progress=False,
    )
    with np.load(rec.files["npz"], allow_pickle=False) as z:
        assert z["losses"].shape == (2, 5, 5)
    for name in ("contour_param.png", "contour_input.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------
# Curvature


def test_power_iteration_on_quadratics_matches_exact_top_eigenvalue():
    gen = torch.Generator().manual_seed(0)
    mats = []
    for top in (3.0, -4.0):  # the dominant eigenvalue may be negative: sign is kept
        q, _ = torch.linalg.qr(torch.randn(10, 10, generator=gen, dtype=torch.float64))
        eig = torch.linspace(-1.5, 1.5, 10, dtype=torch.float64)
        eig[-1] = top
        mats.append(q @ torch.diag(eig) @ q.T)
    a = torch.stack(mats)  # two quadratics 0.5 x^T A x, solved in one batched run

    def hvp(v):  # Hessian-vector product of f(x) = 0.5 x^T A x by autograd
        xs = torch.zeros(2, 10, dtype=torch.float64, requires_grad=True)
        f = 0.5 * torch.einsum("bi,bij,bj->", xs, a, xs)
        (gx,) = torch.autograd.grad(f, xs, create_graph=True)
        (hv,) = torch.autograd.grad(gx, xs, grad_outputs=v)
        return hv

    v0 = torch.randn(2, 10, generator=gen, dtype=torch.float64)
    out = power_iteration(hvp, v0, iters=500, tol=1e-12)
    exact = [float(e[e.abs().argmax()]) for e in torch.linalg.eigvalsh(a)]
    assert out["eigenvalues"].tolist() == pytest.approx(exact, rel=1e-8)
    assert out["converged"]


def _flat_param_fn(model, x, y):
    from torch.func import functional_call

    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]

    def f(flat):
        parts = torch.split(flat, sizes)
        params = {k: t.view(s) for k, t, s in zip(names, parts, shapes, strict=True)}
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return f, flat


def test_param_curvature_matches_explicit_hessian():
    model = _tiny_model().eval()
    x, y = _tiny_data(10, size=5)
    f, flat = _flat_param_fn(model, x, y)
    h = torch.autograd.functional.hessian(f, flat).double()
    eig = torch.linalg.eigvalsh((h + h.T) / 2)
    exact = float(eig[eig.abs().argmax()])
    out = param_top_eigenvalue(
        model, x, y, generator=torch.Generator().manual_seed(0), iters=1000, tol=1e-9
    )
    assert out["n_params"] == flat.numel()
    assert out["eigenvalue"] == pytest.approx(exact, rel=1e-3)


def test_input_curvature_matches_explicit_per_sample_hessians():
    model = _tiny_model().eval()
    x, y = _tiny_data(3, size=4)
    out = input_top_eigenvalues(
        model, x, y, generator=torch.Generator().manual_seed(0), iters=2000, tol=1e-10
    )
    for i in range(3):
        h = torch.autograd.functional.hessian(
            lambda xi, i=i: F.cross_entropy(model(xi.view(1, 3, 4, 4)), y[i : i + 1]),
            x[i].reshape(-1),
        ).double()
        eig = torch.linalg.eigvalsh((h + h.T) / 2)
        exact = float(eig[eig.abs().argmax()])
        assert float(out["eigenvalues"][i]) == pytest.approx(exact, rel=1e-3, abs=1e-7)


def test_curvature_probe_record_and_plot(tmp_path):
    rec = run_probe(
        "curvature",
        _tiny_model(),
        _fake_dataset(),
        {"n_samples": 16, "n_inputs": 4, "iters": 10},
        device="cpu",
        seed=0,
        out_dir=tmp_path,
        progress=False,
    )
    assert rec.n_inputs == 4 and rec.param_iters <= 10 and rec.param_top_eigenvalue is not None
    assert (tmp_path / "curvature.png").is_file() and (tmp_path / "curvature.npz").is_file()
    assert json.loads(rec.to_json())["kind"] == "probe_curvature"


# --------------------------------------------------------------------------------------------
# Registry and CLI


def test_registry_and_params_validation():
    assert set(PROBES) == {"gradvar", "contour_param", "contour_input", "curvature"}
    assert probe_params("gradvar", None).n_samples == 512
    assert probe_params("contour-param", {"points": 9}).points == 9
    with pytest.raises(InputError, match="unknown parameter"):
        probe_params("gradvar", {"n_sampels": 3})
    with pytest.raises(InputError, match="unknown probe"):
        run_probe("nope", None, None, None, device="cpu", seed=0)


def test_cli_probe_flags_come_from_the_params_without_torch():
    """Every Params field of every probe is a flag of its sub-command (init through the common
    --init), parsed by make_params like a config value; building the parser imports no torch."""
    import subprocess
    import sys

    from nasaudit.cli import build_parser
    from nasaudit.cli.probe import _check_params
    from nasaudit.probes.settings import PROBES as SETTINGS

    parser = build_parser()
    for name, (_, params_cls) in SETTINGS.items():
        args = parser.parse_args(["probe", name.replace("_", "-")])
        expected = {f.name for f in dataclasses.fields(params_cls)} - ({"init"} if name == "gradvar" else set())
        assert set(args.probe_fields) == expected, name
        assert _check_params(args) == params_cls()  # no flag given: the dataclass defaults
    args = parser.parse_args(["probe", "curvature", "--which", "input", "--iters", "3"])
    got = _check_params(args)
    assert (got.which, got.iters) == ("input", 3)
    args = parser.parse_args(["probe", "contour-input", "--clamp", "--batch-size", "32"])
    assert (_check_params(args).clamp, _check_params(args).batch_size) == (True, 32)
    code = "import sys; from nasaudit.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr[-500:]


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory):
    """tiny_cnn trained for 1 epoch on digits by the trainer (what `nasaudit train` runs)."""
    from nasaudit.data import load_dataset
    from nasaudit.training import TrainConfig, train_on_dataset

    data = load_dataset("digits")
    model_dir = tmp_path_factory.mktemp("probe_models") / "models"
    config = TrainConfig(epochs=1, batch_size=64, lr=0.05, seed=0)
    result = train_on_dataset(
        "tiny_cnn", data, config, device="cpu", model_dir=model_dir, progress=False
    )
    return result.checkpoint


@pytest.mark.parametrize(
    ("command", "extra", "stem"),
    [
        ("gradvar", ["--n-samples", "32", "--chunk-size", "16"], "gradvar"),
        ("contour-param", ["--points", "7", "--n-samples", "16"], "contour_param"),
        ("contour-input", ["--points", "5", "--n-samples", "2"], "contour_input"),
        ("curvature", ["--n-samples", "16", "--n-inputs", "4", "--iters", "8"], "curvature"),
    ],
)
def test_cli_probe_on_trained_checkpoint(digits_checkpoint, tmp_path, capsys, command, extra, stem):
    from nasaudit.cli import main

    out = tmp_path / "out"
    argv = [
        "probe",
        command,
        "--checkpoint",
        str(digits_checkpoint),
        "--dataset",
        "digits",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--json",
        "--no-progress",
        *extra,
    ]
    assert main(argv) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["model"] == "tiny_cnn" and record["checkpoint"] == str(digits_checkpoint)
    assert (out / f"{stem}.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / f"{stem}.json").read_text())["kind"] == record["kind"]


def test_cli_gradvar_at_kaiming_init_and_errors(capsys):
    from nasaudit.cli import main

    argv = [
        "probe",
        "gradvar",
        "--model",
        "tiny_cnn",
        "--width",
        "4",
        "--dataset",
        "digits",
        "--device",
        "cpu",
        "--n-samples",
        "16",
        "--no-progress",
    ]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "kaiming init" in text and "gradient variance (Eq. 14)" in text
    assert "weights: kaiming; batch-norm statistics: calibrated (512 images)" in text
    assert main(["probe", "gradvar", "--dataset", "digits", "--device", "cpu"]) == 2
    assert "give --model" in capsys.readouterr().err


def test_cli_probe_defaults_to_the_checkpoints_own_dataset(trained_model, cifar_subset_dir, capsys):
    """Without --dataset, a checkpoint is probed on the data set its sidecar names."""
    from nasaudit.cli import main

    code = main(["probe", "gradvar", "--checkpoint", str(trained_model.checkpoint),
                 "--data-dir", str(cifar_subset_dir), "--n-samples", "8", "--device", "cpu",
                 "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert "on cifar10" in out and "digits" not in out


# --------------------------------------------------------------------------------------------
# Initialisation scheme of the at-init gradient variance (audit == CLI)

_INIT_AUDIT = """
name = "init"
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

[model_defaults.manual]
width = 4

[[models]]
name = "darts_v2"

[[models]]
name = "resnet18"

[[models]]
name = "bit_m_r50x1"

[probes.gradvar]
n_samples = 16
chunk_size = 8
"""


def _cli_gradvar(capsys, *extra: str) -> dict:
    from nasaudit.cli import main

    argv = ["probe", "gradvar", "--dataset", "digits", "--device", "cpu", "--n-samples", "16",
            "--chunk-size", "8", "--seed", "0", "--json", "--no-progress", *extra]
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_audit_at_init_gradvar_equals_cli_kaiming_value(tmp_path, capsys):
    """The audit's probe_init unit and `nasaudit probe gradvar` measure the same weights: one
    number for one model and seed, Kaiming by default with calibrated batch norms, and recorded
    as such, also for GroupNorm-only BiT (no batch-norm counter tells that it is untrained).
    The report shows which init and batch-norm statistics each number was measured under."""
    import csv

    from nasaudit.audit.config import load_config
    from nasaudit.audit.report import write_report
    from nasaudit.audit.runner import run_audit
    from nasaudit.audit.store import Store

    (tmp_path / "init.toml").write_text(_INIT_AUDIT)
    run_audit(load_config(tmp_path / "init.toml"), device="cpu", progress=False, report=False)
    store = Store(tmp_path / "out" / "results.sqlite")
    try:
        at_init = {row.model: row.result for row in store.units(stage="probe_init")}
        trained = {row.model: row.result for row in store.units(stage="probe")}
    finally:
        store.close()
    assert set(at_init) == {"darts_v2", "resnet18", "bit_m_r50x1"}
    cli = {
        "darts_v2": _cli_gradvar(capsys, "--model", "darts_v2", "--C", "4", "--layers", "2",
                                 "--no-auxiliary"),
        "resnet18": _cli_gradvar(capsys, "--model", "resnet18", "--width", "4"),
        "bit_m_r50x1": _cli_gradvar(capsys, "--model", "bit_m_r50x1", "--width", "4"),
    }
    bn_at_init = {"darts_v2": "calibrated (512 images)", "resnet18": "calibrated (512 images)",
                  "bit_m_r50x1": "none (no batch norm)"}
    for name in cli:
        assert at_init[name]["init"] == cli[name]["init"] == "kaiming"
        assert at_init[name]["bn_stats"] == cli[name]["bn_stats"] == bn_at_init[name]
        assert at_init[name]["variance"] == pytest.approx(cli[name]["variance"], rel=1e-9)
        assert at_init[name]["variance_per_param"] == pytest.approx(
            at_init[name]["variance"] / at_init[name]["n_params"], rel=1e-12)
        # A trained network is never re-initialised.
        assert trained[name]["init"] == "trained"
        assert trained[name]["bn_stats"] == ("none (no batch norm)" if name == "bit_m_r50x1"
                                             else "trained")
        assert trained[name]["variance"] != pytest.approx(at_init[name]["variance"], rel=1e-3)
    write_report(tmp_path / "out")
    with open(tmp_path / "out" / "report_files" / "tables" / "gradvar_conditions.csv",
              newline="") as handle:
        shown = {row["model"]: row for row in csv.DictReader(handle)}
    assert shown["bit_m_r50x1"]["init: weights"] == "kaiming"
    assert shown["darts_v2"]["init: batch-norm statistics"] == "calibrated (512 images)"
    assert shown["resnet18"]["trained: batch-norm statistics"] == "trained"
    builtin = _cli_gradvar(capsys, "--model", "darts_v2", "--C", "4", "--layers", "2",
                           "--no-auxiliary", "--init", "builtin")
    assert builtin["init"] == "builtin"
    # The DARTS network's own init (PyTorch defaults) is a different measurement (calibrated
    # batch norms normalise away much of the weight scale, not all of it).
    assert builtin["bn_stats"] == "calibrated (512 images)"
    assert abs(builtin["log10_variance"] - cli["darts_v2"]["log10_variance"]) > 0.1


def test_gradvar_init_applies_only_to_untrained_models():
    """Kaiming re-initialisation happens on a copy, only for a model whose batch norm never saw
    a batch; `at_init` overrides the detection."""
    from nasaudit.probes.common import is_untrained

    model, data = _tiny_model(), _fake_dataset()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert is_untrained(model) is True
    params = {"n_samples": 8, "chunk_size": 8}
    rec = run_probe("gradvar", model, data, params, device="cpu", seed=1, progress=False)
    assert rec.init == "kaiming"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched
    same = run_probe("gradvar", model, data, {**params, "init": "builtin", "calibrate_bn": 0},
                     device="cpu", seed=1, progress=False)
    assert same.init == "builtin" and same.variance != pytest.approx(rec.variance, rel=1e-3)
    # _tiny_model's hand-set statistics are not the identity; calibration off keeps them.
    assert rec.bn_stats == "calibrated (120 images)" and same.bn_stats == "as given (uncalibrated)"
    model.body[1].num_batches_tracked += 1  # as after one training step
    assert is_untrained(model) is False
    trained = run_probe("gradvar", model, data, params, device="cpu", seed=1,
                        progress=False)
    assert trained.init == "trained" and trained.variance == pytest.approx(same.variance)
    assert trained.bn_stats == "trained" and trained.bn_calibration_images == 0
    forced = run_probe("gradvar", model, data, params, device="cpu", seed=1,
                       progress=False, at_init=True)
    assert forced.init == "kaiming" and forced.variance == pytest.approx(rec.variance)
    assert forced.bn_stats == rec.bn_stats
    no_bn = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5))
    assert is_untrained(no_bn) is None
    plain = run_probe("gradvar", no_bn, data, params, device="cpu", seed=1, progress=False,
                      at_init=True)
    assert plain.init == "kaiming" and plain.bn_stats == "none (no batch norm)"
    assert plain.bn_calibration_images == 0


# --------------------------------------------------------------------------------------------
# Batch-norm statistics of the at-init gradient variance


def _bn_input(model: nn.Module, bn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What `bn` receives when eval-mode `model` runs on x (float [N, C, H, W])."""
    seen = []
    handle = bn.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        handle.remove()
    return seen[0]


def test_gradvar_at_init_is_measured_with_calibrated_batch_norm():
    """An untrained model's identity batch norms (running mean 0, var 1) are replaced by
    statistics of seeded training images outside the measured sample before Eq. 14; the number
    equals a dense reference on the calibrated model and differs from the identity-BN one."""
    from nasaudit.data import to_float
    from nasaudit.infra.device import generator, seeded
    from nasaudit.probes.gradvar import kaiming_init

    model, data = _tiny_model(), _fake_dataset()
    bn_name = "body.1"
    model.get_submodule(bn_name).reset_running_stats()  # as a constructor leaves them
    params = {"n_samples": 16, "chunk_size": 8, "calibrate_bn": 1, "calibration_batch_size": 48}
    rec = run_probe("gradvar", model, data, params, device="cpu", seed=2, progress=False)
    ident = run_probe("gradvar", model, data, {**params, "calibrate_bn": 0}, device="cpu",
                      seed=2, progress=False)
    assert torch.equal(model.get_submodule(bn_name).running_var, torch.ones(4))  # caller's: as is
    assert (rec.init, rec.bn_stats, rec.bn_calibration_images) == (
        "kaiming", "calibrated (48 images)", 48)
    assert (ident.bn_stats, ident.bn_calibration_images) == ("identity (uncalibrated)", 0)

    order = torch.randperm(120, generator=generator(2))
    measured, calibration = order[:16], order[16:64]
    ref = copy.deepcopy(model)
    with seeded(2):
        kaiming_init(ref)
    x, y = to_float(data.train_images[measured]), data.train_labels[measured]

    def variance(net):
        g = _reference_grads(net, x, y)
        return float(((g - g.mean(0)) ** 2).sum(1).mean())

    assert ident.variance == pytest.approx(variance(ref), rel=1e-5)
    bn = ref.get_submodule(bn_name)
    h = _bn_input(ref, bn, to_float(data.train_images[calibration]))
    bn.running_mean.copy_(h.mean((0, 2, 3)))
    bn.running_var.copy_(h.var((0, 2, 3), unbiased=True))
    assert not torch.allclose(bn.running_var, torch.ones(4), rtol=0.05)
    assert rec.variance == pytest.approx(variance(ref), rel=1e-5)
    assert rec.variance != pytest.approx(ident.variance, rel=1e-2)


def test_calibrate_batch_norm_averages_batches_with_only_batch_norm_in_train_mode():
    """Cumulative average of the per-batch statistics (momentum=None), dropout left off, flags
    and momentum restored, a trailing batch of one skipped."""
    from nasaudit.probes.gradvar import calibrate_batch_norm

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Dropout(0.9), nn.BatchNorm2d(4, momentum=0.3))
    net.train()
    images = torch.randint(0, 256, (9, 3, 6, 6), dtype=torch.uint8)
    assert calibrate_batch_norm(net, images, batch_size=4, device=torch.device("cpu")) == 8
    bn = net[2]
    assert net.training and net[1].training and bn.momentum == 0.3
    assert int(bn.num_batches_tracked) == 2
    with torch.no_grad():
        h = net[0](images[:8].float() / 255)  # no dropout: what eval mode feeds the batch norm
    means = [h[i : i + 4].mean((0, 2, 3)) for i in (0, 4)]
    variances = [h[i : i + 4].var((0, 2, 3), unbiased=True) for i in (0, 4)]
    torch.testing.assert_close(bn.running_mean, (means[0] + means[1]) / 2)
    torch.testing.assert_close(bn.running_var, (variances[0] + variances[1]) / 2)
    with pytest.raises(ValueError, match="batch_size"):
        calibrate_batch_norm(net, images, batch_size=1, device=torch.device("cpu"))


def test_calibration_removes_the_nas_vs_manual_sign_artefact_at_init():
    """Small digits case: with identity batch norms a DARTS network's at-init variance is far
    above the manual baselines'; with calibrated statistics (same weights) it is below."""
    from nasaudit.data import load_dataset
    from nasaudit.infra.device import seeded
    from nasaudit.models.registry import build_model

    data = load_dataset("digits")
    log10 = {}
    for name, kwargs in (("darts_v2", {"C": 8, "layers": 5, "auxiliary": False}),
                         ("vgg13_bn", {"width": 8}), ("resnet18", {"width": 8})):
        with seeded(0):
            net = build_model(name, data.num_classes, mean=data.mean, std=data.std, **kwargs)
        for batches in (2, 0):
            rec = run_probe("gradvar", net, data, {"n_samples": 32, "chunk_size": 16,
                                                   "calibrate_bn": batches},
                            device="cpu", seed=0, progress=False, at_init=True)
            log10[name, batches] = rec.log10_variance

    def nas_minus_manual(batches):
        return log10["darts_v2", batches] - (log10["vgg13_bn", batches]
                                             + log10["resnet18", batches]) / 2

    assert nas_minus_manual(0) > 1.0
    assert nas_minus_manual(2) < 0.0
