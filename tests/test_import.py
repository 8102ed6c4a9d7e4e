"""`nasaudit import` and nasaudit.pretrained: foreign checkpoints (DARTS, TrojanZoo/autovul, kuangliu,
nasaudit) read exactly, refused in one line when they do not fit, and audited without retraining.

Every file is built here in its layout's exact key names, order, shapes and serialisation
(`foreign_state_dict`, whose key lists the fixtures in tests/fixtures/pretrained/ hold as facts
from the public code), from a nasaudit network with random weights and batch-norm statistics.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nasaudit.cli import main
from nasaudit.models.registry import build_model
from nasaudit.pretrained import DARTS_CIFAR10, KUANGLIU_CIFAR10, foreign_state_dict

FIXTURES = Path(__file__).parent / "fixtures" / "pretrained"
IDENTITY = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def _random_net(name: str, seed: int = 0, **kwargs):
    """A nasaudit network without input normalisation (as the foreign codes run it, on inputs
    their data pipeline normalised), random weights and batch-norm statistics, eval mode."""
    torch.manual_seed(seed)
    net = build_model(name, 10, mean=IDENTITY[0], std=IDENTITY[1], **kwargs)
    with torch.no_grad():
        for key, buf in net.named_buffers():
            if key.endswith("running_mean"):
                buf.normal_(0.0, 0.2)
            elif key.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
            elif key.endswith("num_batches_tracked"):
                buf.fill_(1234)
        for param in net.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return net.eval()


def _pixels(n: int = 4) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _normalised(x: torch.Tensor, norm) -> torch.Tensor:
    mean = torch.tensor(norm[0]).view(1, 3, 1, 1)
    std = torch.tensor(norm[1]).view(1, 3, 1, 1)
    return (x - mean) / std


def _run(args: list[str], capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _fixture_keys(name: str) -> list[tuple[str, list[int]]]:
    return [(k, list(s)) for k, s in json.loads((FIXTURES / f"{name}.json").read_text())["keys"]]


def _keys(state) -> list[tuple[str, list[int]]]:
    return [(k, list(v.shape)) for k, v in state.items()]


# --------------------------------------------------------------------------------------------
# Key lists: nasaudit's modules, renamed by each layout, are the public code's, in its order
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fixture, layout, name, kwargs", [
    # Full size (the published DARTS model), built on the meta device: shapes only, nothing run.
    ("darts_networkcifar_darts_v2_C36_L20_aux", "darts", "darts_v2", {"C": 36, "layers": 20, "auxiliary": True}),
    ("trojanzoo_darts_darts_v2_C4_L3_aux", "trojanzoo", "darts_v2", {"C": 4, "layers": 3, "auxiliary": True}),
    ("kuangliu_resnet18", "kuangliu", "resnet18", {}),
    ("trojanzoo_resnet18_comp", "trojanzoo", "resnet18", {}),
])
def test_key_lists_match_the_public_code(fixture: str, layout: str, name: str, kwargs: dict) -> None:
    with torch.device("meta"):
        net = build_model(name, 10, **kwargs)
    state = foreign_state_dict(net, layout)
    if layout == "kuangliu":
        assert set(state) == {"net", "acc", "epoch"}
        state = state["net"]
    assert _keys(state) == _fixture_keys(fixture)


# --------------------------------------------------------------------------------------------
# Imported logits = nasaudit's network with the same weights, normalisation moved inside
# --------------------------------------------------------------------------------------------
CASES = {
    # layout, nasaudit network, its kwargs, import flags, how the file is saved, normalisation
    "darts": ("darts", "darts_v2", {"C": 4, "layers": 5, "auxiliary": True},
              ["--genotype", "darts_v2", "--C", 4, "--layers", 5, "--auxiliary"], "legacy", DARTS_CIFAR10),
    "pdarts-dataparallel": ("darts", "pdarts", {"C": 4, "layers": 3, "auxiliary": False},
                            ["--genotype", "pdarts", "--C", 4, "--layers", 3], "module.", DARTS_CIFAR10),
    "trojanzoo-darts": ("trojanzoo", "darts_v2", {"C": 4, "layers": 3, "auxiliary": True},
                        ["--genotype", "darts_v2", "--C", 4, "--layers", 3], "_model.", DARTS_CIFAR10),
    "trojanzoo-resnet18": ("trojanzoo", "resnet18", {"width": 8}, ["--width", 8], "", DARTS_CIFAR10),
    "kuangliu": ("kuangliu", "resnet18", {"width": 8}, ["--width", 8], "wrapped", KUANGLIU_CIFAR10),
}


def _write(case: str, path: Path):
    layout, name, kwargs, _, how, _ = CASES[case]
    ref = _random_net(name, **kwargs)
    if how == "legacy":  # PyTorch 0.3's format: no zip container, no num_batches_tracked
        torch.save(foreign_state_dict(ref, layout), path, _use_new_zipfile_serialization=False)
    elif how == "wrapped":  # kuangliu main.py: {'net': DataParallel state dict, 'acc', 'epoch'}
        torch.save(foreign_state_dict(ref, layout), path)
    else:
        state = foreign_state_dict(ref, layout, prefix=how)
        torch.save(state, path)
    return ref


@pytest.mark.parametrize("case", list(CASES))
def test_import_gives_the_same_logits(case: str, tmp_path: Path, capsys) -> None:
    from nasaudit.training import load_checkpoint_model

    layout, name, kwargs, flags, how, norm = CASES[case]
    src = tmp_path / "weights.pt"
    ref = _write(case, src)
    if how == "legacy":
        assert not __import__("zipfile").is_zipfile(src)
        assert not any(k.endswith("num_batches_tracked") for k in torch.load(src, weights_only=True))
    code, out, err = _run(["import", layout, src, *flags, "--dataset", "cifar10",
                           "--model-dir", tmp_path / "models"], capsys)
    assert code == 0, err
    ckpt = tmp_path / "models" / "image" / "cifar10" / f"{name}.pth"
    assert f"checkpoint {ckpt}" in out
    model, meta = load_checkpoint_model(ckpt, device="cpu")
    x = _pixels()
    with torch.no_grad():
        got, want = model(x), ref(_normalised(x, norm))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert want.std() > 0.01  # the networks compute something, not constants
    imported = meta["imported"]
    assert imported["format"] == layout and imported["source"] == str(src.resolve())
    assert imported["sha256"] == __import__("hashlib").sha256(src.read_bytes()).hexdigest()
    assert meta["mean"] == pytest.approx(list(norm[0])) and meta["std"] == pytest.approx(list(norm[1]))
    assert imported["normalization"]["from"].startswith(f"the {layout} training code")
    if "C" in kwargs:
        from nasaudit.genotype import genotype_hash, resolve_genotype

        assert imported["genotype_hash"] == genotype_hash(resolve_genotype(name))
    assert meta["config"]["val_fraction"] == 0.0 and imported["trained_on"] == "cifar10-train"


def test_auto_and_nasaudit_layouts_and_normalisation_override(tmp_path: Path, capsys) -> None:
    """auto says which layout it chose; a nasaudit checkpoint re-imports to the same logits;
    --mean/--std replace the layout's normalisation."""
    from nasaudit.training import load_checkpoint_model

    src = tmp_path / "w.pt"
    ref = _write("darts", src)
    code, out, err = _run(["import", "auto", src, "--genotype", "darts_v2", "--C", 4, "--layers", 5,
                           "--model-dir", tmp_path / "a", "--name", "first"], capsys)
    assert code == 0, err
    assert "layout darts (auto: DARTS NetworkCIFAR key names" in out
    first = tmp_path / "a" / "image" / "cifar10" / "first.pth"
    code, out, err = _run(["import", "auto", first, "--model-dir", tmp_path / "b"], capsys)
    assert code == 0, err
    assert "layout nasaudit (auto: a nasaudit checkpoint" in out
    again, meta = load_checkpoint_model(tmp_path / "b" / "image" / "cifar10" / "darts_v2.pth", device="cpu")
    x = _pixels()
    with torch.no_grad():
        torch.testing.assert_close(again(x), ref(_normalised(x, DARTS_CIFAR10)), rtol=1e-5, atol=1e-5)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    code, out, err = _run(["import", "darts", src, "--genotype", "darts_v2", "--C", 4, "--layers", 5,
                           "--mean", ",".join(map(str, mean)), "--std", ",".join(map(str, std)),
                           "--model-dir", tmp_path / "c"], capsys)
    assert code == 0, err
    model, meta = load_checkpoint_model(tmp_path / "c" / "image" / "cifar10" / "darts_v2.pth", device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(_normalised(x, (mean, std))), rtol=1e-5, atol=1e-5)
    assert meta["imported"]["normalization"]["from"] == "given (--mean/--std)"


def test_eval_attack_and_probe_work_on_an_imported_checkpoint(tmp_path: Path, capsys, cifar_subset_dir) -> None:
    src = tmp_path / "w.pt"
    _write("darts", src)
    assert _run(["import", "darts", src, "--genotype", "darts_v2", "--C", 4, "--layers", 5,
                 "--model-dir", tmp_path / "m"], capsys)[0] == 0
    ckpt = tmp_path / "m" / "image" / "cifar10" / "darts_v2.pth"
    code, out, err = _run(["eval", "--checkpoint", ckpt, "--data-dir", cifar_subset_dir], capsys)
    assert code == 0, err
    assert "darts_v2 on cifar10 test (1017 images)" in out
    code, out, err = _run(["attack", "pgd", "--checkpoint", ckpt, "--data-dir", cifar_subset_dir,
                           "--param", "n_inputs=4", "--param", "restarts=1", "--no-progress", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["kind"] == "attack.pgd"
    code, out, err = _run(["probe", "gradvar", "--checkpoint", ckpt, "--data-dir", cifar_subset_dir,
                           "--n-samples", 8, "--chunk-size", 4, "--no-progress"], capsys)
    assert code == 0, err
    assert "weights: trained" in out


# --------------------------------------------------------------------------------------------
# Files that do not fit: exit 2, one line naming the file and the misfit, nothing written
# --------------------------------------------------------------------------------------------
class _Payload:
    """Unpickling this would run `touch MARKER` (weights_only must refuse the file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def _bad_file(kind: str, tmp_path: Path) -> tuple[Path, list, str]:
    """(file, extra flags, text the error must contain) for one kind of misfit."""
    path = tmp_path / f"{kind}.pt"
    flags = ["--genotype", "darts_v2", "--C", 4, "--layers", 5]
    if kind in ("wrong-genotype", "wrong-C", "wrong-layers", "truncated"):
        _write("darts", path)
        if kind == "wrong-genotype":
            return path, ["--genotype", "darts_v1", "--C", 4, "--layers", 5], "wrong genotype?"
        if kind == "wrong-C":
            return path, ["--genotype", "darts_v2", "--C", 8, "--layers", 5], "a 12-channel stem (C=4)"
        if kind == "wrong-layers":
            return path, ["--genotype", "darts_v2", "--C", 4, "--layers", 8], "the file has 5 cells"
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path, flags, "corrupt or truncated"
    if kind == "pickle-payload":
        torch.save({"stem.0.weight": _Payload(tmp_path / "PWNED")}, path)
        return path, flags, "refused"
    if kind == "no-layout":
        torch.save({"encoder.weight": torch.zeros(2, 2), "decoder.bias": torch.zeros(2)}, path)
        return path, flags, "no known layout fits"
    if kind == "huge-tensor":
        net = _random_net("darts_v2", C=4, layers=5, auxiliary=True)
        state = foreign_state_dict(net, "darts")
        state["stem.0.weight"] = torch.zeros(1).expand(1 << 20, 1 << 20)  # a terabyte, declared
        torch.save(state, path)
        return path, flags, "declares shape [1048576, 1048576]"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["wrong-genotype", "wrong-C", "wrong-layers", "truncated",
                                  "pickle-payload", "no-layout", "huge-tensor"])
def test_a_file_that_does_not_fit_is_refused_in_one_line(kind: str, tmp_path: Path, capsys) -> None:
    path, flags, text = _bad_file(kind, tmp_path)
    models = tmp_path / "models"
    code, out, err = _run(["import", "auto", path, *flags, "--model-dir", models], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nasaudit: error: ")
    assert str(path) in lines[0] and text in lines[0], lines[0]
    assert not models.exists()  # nothing written, not even the directory
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("keys, text", [
    ({"features.conv1.weight": [64, 3, 7, 7], "features.layer1.0.conv1.weight": [64, 64, 3, 3],
      "features.layer4.0.conv1.weight": [512, 256, 3, 3], "classifier.fc.weight": [10, 512]}, "7x7 stride-2 stem"),
    ({"features.0.weight": [64, 3, 3, 3], "classifier.fc1.weight": [512, 512],
      "classifier.fc3.weight": [10, 512]}, "3-layer classifier"),
    ({"features.conv0.weight": [64, 3, 3, 3], "features.denseblock1.denselayer1.norm1.weight": [64],
      "classifier.fc.weight": [10, 1024]}, "drops the stem's norm0"),
])
def test_trojanzoo_baselines_that_differ_are_refused_naming_the_difference(keys, text, tmp_path, capsys) -> None:
    path = tmp_path / "model.pth"
    torch.save({f"_model.{k}": torch.zeros(s) for k, s in keys.items()}, path)
    code, _, err = _run(["import", "trojanzoo", path, "--model-dir", tmp_path / "m"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "refused" in err and text in err, err


# --------------------------------------------------------------------------------------------
# Audits of pretrained models: an import unit instead of training, reruns free
# --------------------------------------------------------------------------------------------
AUDIT = """
name = "pretrained"
out_dir = "out"
seeds = [0]

[dataset]
name = "digits"

[model_defaults.nas]
C = 8
layers = 3

[[models]]
name = "darts_pre"
spec = "darts_v2"
kwargs = {{ C = 4, layers = 5, auxiliary = true }}
checkpoint = "{darts}"
format = "darts"
trained_on = "digits-train"
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]

[[models]]
name = "resnet_pre"
spec = "resnet18"
kwargs = {{ width = 8 }}
checkpoint = "{kuangliu}"
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]

[attacks.pgd]
n_inputs = 8
restarts = 1

[attacks.membership]
n_members = 4
n_nonmembers = 4
max_iter = 1
max_eval = 20
init_eval = 10

[attacks.poison]
epochs = 1
fractions = [0.1]
enabled = {poison}
"""


def test_audit_imports_instead_of_training_and_a_rerun_is_free(tmp_path: Path, capsys) -> None:
    from nasaudit.audit.config import load_config
    from nasaudit.audit.runner import run_audit

    _write("darts", tmp_path / "darts.pt")
    _write("kuangliu", tmp_path / "ckpt.pth")
    cfg = tmp_path / "audit.toml"
    cfg.write_text(AUDIT.format(darts="darts.pt", kuangliu="ckpt.pth", poison="true"))
    code, out, err = _run(["audit", cfg, "--dry-run"], capsys)
    assert code == 0, err
    stages = [line.split()[3] for line in out.splitlines()[1:] if line.split() and len(line.split()[0]) == 24]
    assert "train" not in stages and stages.count("import") == 2
    assert "darts_pre: pretrained, imported from" in out and "no train unit" in out
    assert "darts_pre: poison retrains darts_v2 from scratch with the victim recipe" in out
    assert "resnet_pre: membership skipped" in out  # no trained_on: its members are unknown
    assert "darts_pre: membership members are the audit's digits training images" in out
    assert not (tmp_path / "out").exists()  # a dry run writes nothing

    cfg.write_text(AUDIT.format(darts="darts.pt", kuangliu="ckpt.pth", poison="false"))
    config = load_config(cfg)
    first = run_audit(config, device="cpu", progress=False, report=False)
    assert first.failed == 0 and first.ran == first.total == 9  # 2 x (analyze, import, clean, pgd) + membership
    again = run_audit(config, device="cpu", progress=False, report=False)
    assert again.ran == 0 and again.skipped == again.total
    from nasaudit.audit.store import Store

    with Store(config.out_dir, must_exist=True) as store:
        rows = {(r.model, r.stage, r.name): r for r in store.units()}
    record = rows[("darts_pre", "import", "import")].result
    assert record["format"] == "darts" and record["trained_on"] == "digits-train"
    assert record["config"]["epochs"] == 600  # DARTS's recipe, not the audit's [train]
    assert rows[("resnet_pre", "import", "import")].result["format"] == "kuangliu"


@pytest.mark.parametrize("extra, text", [
    ('format = "darts"', "applies to a pretrained model only"),
    ('checkpoint = "x.pt"\nformat = "caffe"', "format must be one of"),
    ('checkpoint = "x.pt"\ntrained_on = "the internet"', "trained_on must be DATASET-train"),
    ('checkpoint = "x.pt"\nmean = [0.5, 0.5, 0.5]', "give both mean and std"),
])
def test_config_checks_pretrained_keys(extra: str, text: str, tmp_path: Path) -> None:
    from nasaudit.audit.config import load_config
    from nasaudit.infra.errors import InputError

    cfg = tmp_path / "a.toml"
    cfg.write_text(f'[dataset]\nname = "digits"\n[[models]]\nname = "darts_v2"\n{extra}\n')
    with pytest.raises(InputError, match=text):
        load_config(cfg)
