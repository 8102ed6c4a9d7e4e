"""Evasion attacks (PGD, PGD sweep, NES), input selection, the registry and the CLI.

The victim is the session's `trained_model` (tiny_cnn on the CIFAR-10 subset, undefended).
"""

from __future__ import annotations

import json

import pytest
import torch

from nasaudit.attacks import ATTACKS, Victim, run_attack
from nasaudit.attacks.nes import Params as NESParams
from nasaudit.attacks.pgd import PGDRecord, pgd_attack, pgd_untargeted
from nasaudit.attacks.sampling import candidate_indices, select_correct, target_classes
from nasaudit.infra.device import generator
from nasaudit.infra.errors import InputError

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def victim(trained_model) -> Victim:
    return Victim(trained_model.model, trained_model.model_name, trained_model.train_config,
                  trained_model.model_kwargs)


def _inputs(trained_model, n=32):
    data = trained_model.data
    _, kept, logits = select_correct(trained_model.model, data.test_images, data.test_labels, n, 0,
                                     device=CPU)
    return data.test_images[kept].float() / 255, data.test_labels[kept], logits


def test_pgd_untargeted_stays_in_ball_and_is_deterministic(trained_model):
    x, y, _ = _inputs(trained_model)
    model = trained_model.model
    eps = 4 / 255
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    a = pgd_untargeted(model, x, y, eps=eps, step=1 / 255, iters=3, generator=generator(1))
    b = pgd_untargeted(model, x, y, eps=eps, step=1 / 255, iters=3, generator=generator(1))
    assert torch.equal(a, b) and not a.requires_grad
    assert (a - x).abs().max() <= eps + 1e-6 and a.min() >= 0 and a.max() <= 1
    # Input gradients only: the parameters' .grad (left by the trainer) is untouched.
    for g, p in zip(grads, model.parameters(), strict=True):
        assert (g is None and p.grad is None) or torch.equal(g, p.grad)
    loss = torch.nn.functional.cross_entropy
    with torch.no_grad():
        assert loss(model(a), y) > loss(model(x), y)


def test_targeted_pgd_successes_hit_target_within_budget(trained_model):
    x, _, logits = _inputs(trained_model)
    target = target_classes(logits, "most_likely")
    assert torch.equal(target, logits.argsort(1, descending=True)[:, 1])
    assert torch.equal(target_classes(logits, "least_likely"), logits.argmin(1))
    adv, ok, iters, restart = pgd_attack(trained_model.model, x, target, targeted=True,
                                         eps=8 / 255, step=2 / 255, iters=3, restarts=2,
                                         generator=generator(0))
    assert ok.any()
    with torch.no_grad():
        pred = trained_model.model(adv).argmax(1)
    # Early stop: every success is frozen at a point the model assigns to the target.
    assert torch.equal(pred[ok], target[ok])
    assert ((iters[ok] >= 0) & (iters[ok] <= 3)).all() and (iters[~ok] == -1).all()
    assert ((restart[ok] >= 0) & (restart[ok] < 2)).all()
    assert (adv - x).abs().max() <= 8 / 255 + 1e-6


def test_cpu_gradient_chunks_change_only_the_speed(trained_model, monkeypatch):
    """On the CPU PGD computes logits and input gradients in cache-sized chunks of rows. The
    oracle: the same run in one pass (samples are independent under a summed loss)."""
    import copy

    import nasaudit.attacks.pgd as pgd

    x, _, logits = _inputs(trained_model, 48)
    target = target_classes(logits, "least_likely")
    model = copy.deepcopy(trained_model.model).double()  # no fp32 near-ties in max-pool windows
    runs = []
    for chunk in (5, 10**6):
        monkeypatch.setattr(pgd, "CPU_GRADIENT_CHUNK", chunk)
        runs.append(pgd_attack(model, x.double(), target, targeted=True, eps=8 / 255,
                               step=2 / 255, iters=5, restarts=2, generator=generator(3)))
    (adv_c, ok_c, it_c, rs_c), (adv_1, ok_1, it_1, rs_1) = runs
    assert ok_1.any() and not ok_1.all()
    assert torch.equal(ok_c, ok_1) and torch.equal(it_c, it_1) and torch.equal(rs_c, rs_1)
    torch.testing.assert_close(adv_c, adv_1, rtol=0, atol=1e-12)


def test_pgd_sweep_asr_grows_with_eps(victim, trained_model):
    eps = (0.5 / 255, 2 / 255, 32 / 255)
    rec = run_attack("pgd_sweep", victim, trained_model.data,
                     {"n_inputs": 80, "eps": eps, "iters": 5}, device=CPU, seed=0,
                     progress=False)
    assert rec.eps == list(eps) and len(rec.success) == 3
    assert all(len(s) == len(rec.indices) for s in rec.success)
    assert rec.asr[0] <= rec.asr[1] <= rec.asr[2]
    assert rec.asr[2] >= 0.97  # an undefended model falls at a large radius
    assert rec.asr[0] < rec.asr[2]


def test_restarts_never_lower_asr(victim, trained_model):
    common = {"n_inputs": 80, "iters_most_likely": 2, "iters_least_likely": 3}
    one = run_attack("pgd", victim, trained_model.data, {**common, "restarts": 1}, device=CPU,
                     seed=3, progress=False)
    three = run_attack("pgd", victim, trained_model.data, {**common, "restarts": 3},
                       device=CPU, seed=3, progress=False)
    assert one.indices == three.indices
    for case in ("most_likely", "least_likely"):
        assert three.asr[case] >= one.asr[case]
        # Stronger: restarts only add successes, input by input.
        assert all(b or not a for a, b in zip(one.success[case], three.success[case], strict=True))
        assert one.targets[case] == three.targets[case]
    assert three.asr["most_likely"] > three.asr["least_likely"]  # c2 is the easy case
    # The record is complete and JSON round-trips.
    data = json.loads(three.to_json())
    assert data["kind"] == "attack.pgd" and data["params"]["restarts"] == 3
    again = PGDRecord.from_dict(data)
    assert again.asr == pytest.approx(three.asr) and again.indices == three.indices


def test_same_seed_same_candidates_for_every_model(trained_model):
    from nasaudit.attacks.common import build_fresh

    data = trained_model.data
    other = build_fresh("tiny_cnn", data, seed=5).eval()
    c1, k1, _ = select_correct(trained_model.model, data.test_images, data.test_labels, 50, 7,
                               device=CPU)
    c2, k2, _ = select_correct(other, data.test_images, data.test_labels, 50, 7, device=CPU)
    assert torch.equal(c1, c2) and torch.equal(c1, candidate_indices(len(data.test_images), 50, 7))
    assert not torch.equal(c1, candidate_indices(len(data.test_images), 50, 8))
    assert set(k1.tolist()) <= set(c1.tolist()) and set(k2.tolist()) <= set(c2.tolist())


class _NoBackward(torch.autograd.Function):
    """Identity whose backward fails: any gradient through the victim's output raises."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        raise AssertionError("NES backpropagated through the victim")


class _Guarded(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model
        self.calls = 0

    def forward(self, x):
        assert not torch.is_grad_enabled(), "the victim was queried with autograd enabled"
        assert not x.requires_grad
        self.calls += 1
        return _NoBackward.apply(self.model(x))


def test_nes_succeeds_without_victim_gradients(trained_model):
    import copy

    model = copy.deepcopy(trained_model.model)
    for p in model.parameters():
        p.requires_grad_(True)
        p.grad = None
    guarded = _Guarded(model).eval()
    params = NESParams(n_inputs=40, cases=("most_likely",), n_query=100, restarts=2)
    rec = run_attack("nes", Victim(guarded, "tiny_cnn"), trained_model.data, params, device=CPU,
                     seed=0, progress=False)
    assert guarded.calls > 0
    assert all(p.grad is None for p in model.parameters())
    assert rec.asr["most_likely"] > 0  # black-box queries alone break some inputs
    q = torch.tensor(rec.queries["most_likely"])
    ok = torch.tensor(rec.success["most_likely"])
    budget = params.restarts * (params.iters_most_likely * (params.n_query + 1) + 1)
    assert (q >= 1).all() and (q <= budget).all() and (q[~ok] == budget).all()
    assert rec.mean_queries["most_likely"] == pytest.approx(q.float().mean().item())


def test_registry_and_param_validation(victim, trained_model):
    assert set(ATTACKS) == {"pgd", "pgd_sweep", "nes", "autoattack", "poison", "backdoor", "knockoff",
                            "membership", "rmia", "model_reuse", "trace_leak"}
    for spec in ATTACKS.values():
        spec.params_cls()  # defaults construct
    assert ATTACKS["pgd"].params_cls().eps == pytest.approx(8 / 255)
    assert ATTACKS["nes"].params_cls().n_query == 400
    with pytest.raises(InputError, match="unknown parameter"):
        run_attack("pgd", victim, trained_model.data, {"epsilon": 1}, device=CPU, seed=0)
    with pytest.raises(InputError, match="unknown attack"):
        run_attack("fgsm", victim, trained_model.data, None, device=CPU, seed=0)


def test_cli_attack_json_and_errors(trained_model, cifar_subset_dir, capsys):
    from nasaudit.cli import main

    argv = ["attack", "pgd-sweep", "--checkpoint", str(trained_model.checkpoint),
            "--data-dir", str(cifar_subset_dir), "--device", "cpu", "--no-progress",
            "--param", "n_inputs=20", "--param", "eps=2/255,16/255", "--param", "iters=3"]
    assert main([*argv, "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["kind"] == "attack.pgd_sweep" and rec["eps"] == pytest.approx([2 / 255, 16 / 255])
    assert rec["model_name"] == "tiny_cnn" and rec["dataset"] == "cifar10"
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "pgd_sweep on tiny_cnn" in out and "asr:" in out
    assert main([*argv, "--param", "nope=1"]) == 2
    assert "unknown parameter" in capsys.readouterr().err


def test_cli_attack_bf16_runs_the_gradient_passes_in_bf16(trained_model, cifar_subset_dir, capsys,
                                                        monkeypatch):
    """--bf16 opens bf16 autocast around the attack (seen inside the victim's forward), and the
    ASR stays close to float32's on the same inputs (successes are confirmed in float32)."""
    from nasaudit.cli import main

    seen = []  # the output dtype of every pass through the victim's linear head
    forward = torch.nn.Linear.forward
    monkeypatch.setattr(torch.nn.Linear, "forward", lambda self, x: (
        lambda out: (seen.append(out.dtype), out)[1])(forward(self, x)))
    argv = ["attack", "pgd", "--checkpoint", str(trained_model.checkpoint), "--data-dir",
            str(cifar_subset_dir), "--device", "cpu", "--no-progress", "--json",
            "--param", "n_inputs=40", "--param", "cases=most_likely"]
    runs = {}
    for flag in ("", "--bf16"):
        seen.clear()
        assert main([*argv, flag] if flag else argv) == 0
        runs[flag] = json.loads(capsys.readouterr().out)
        assert (torch.bfloat16 in seen) == bool(flag) and torch.float32 in seen
        assert runs[flag]["autocast"] == ("bf16" if flag else "off")  # the output says so
    fp32, bf16 = runs[""]["success"]["most_likely"], runs["--bf16"]["success"]["most_likely"]
    assert len(fp32) == len(bf16) > 10
    agree = sum(a == b for a, b in zip(fp32, bf16, strict=True)) / len(fp32)
    assert agree >= 0.8 and sum(bf16) > 0
