"""Label-only membership inference: batched HopSkipJump boundary distances and the AUC.

HopSkipJump runs with a reduced budget (a few iterations, few evaluations) to stay fast on CPU;
the study's budget is checked as the default.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from nasaudit.attacks import ATTACKS, Victim, run_attack
from nasaudit.attacks.membership import hop_skip_jump, label_oracle, membership_metrics
from nasaudit.training import TrainConfig

CPU = torch.device("cpu")
FAST = {"max_iter": 4, "init_eval": 20, "max_eval": 60, "init_size": 20}


@pytest.fixture(scope="module")
def overfit(cifar_subset):
    """A width-8 tiny_cnn fitted hard to 400 CIFAR images (no augmentation or weight decay, 60
    epochs): train accuracy ~0.9, test accuracy ~0.4, the setting where membership leaks."""
    from nasaudit.training import train_on_dataset

    data = dataclasses.replace(cifar_subset, train_images=cifar_subset.train_images[:400],
                               train_labels=cifar_subset.train_labels[:400])
    config = TrainConfig(epochs=60, batch_size=50, lr=0.05, val_fraction=0.0, crop_padding=0,
                         flip=False, weight_decay=0.0, seed=0)
    result = train_on_dataset("tiny_cnn", data, config, device="cpu",
                              model_kwargs={"width": 8}, progress=False)
    return Victim(result.model.eval(), "tiny_cnn", config, {"width": 8}), data


def test_default_budget_is_the_studys():
    p = ATTACKS["membership"].params_cls()
    assert (p.max_iter, p.max_eval, p.init_eval, p.init_size) == (50, 2500, 100, 100)
    assert (p.n_members, p.n_nonmembers, p.norm) == (1000, 1000, "l2")


def test_metrics():
    m = membership_metrics([3.0, 4.0, 5.0], [0.0, 1.0, 2.0], fpr=0.01)
    assert m["auc"] == 1.0 and m["tpr_at_fpr"] == 1.0 and m["max_advantage"] == 1.0
    m = membership_metrics([1.0, 0.0], [1.0, 0.0], fpr=0.01)
    assert m["auc"] == 0.5


def test_hop_skip_jump_finds_close_boundary_points(trained_model):
    data, model = trained_model.data, trained_model.model
    oracle = label_oracle(model, CPU)
    x = data.test_images[:24].float() / 255
    y = oracle(x)
    gen = torch.Generator().manual_seed(0)
    adv0, found0, _ = hop_skip_jump(oracle, x, y, max_iter=0, init_eval=20, init_size=20,
                                    generator=gen)
    gen = torch.Generator().manual_seed(0)
    adv, found, queries = hop_skip_jump(oracle, x, y, max_iter=4, init_eval=20, init_size=20,
                                        generator=gen)
    assert found.all() and torch.equal(found, found0)
    assert (oracle(adv) != y).all()  # still adversarial: the boundary is approached from outside
    d0 = (adv0 - x).flatten(1).norm(dim=1)
    d = (adv - x).flatten(1).norm(dim=1)
    assert (d <= d0 + 1e-4).float().mean() > 0.9 and d.mean() < 0.8 * d0.mean()
    assert adv.min() >= 0 and adv.max() <= 1
    assert (queries > 0).all()


def test_same_split_gives_auc_near_half(overfit):
    # Even on a leaky model, "members" drawn from the test split are indistinguishable.
    victim, data = overfit
    rec = run_attack("membership", victim, data,
                     {**FAST, "members_from": "test", "n_members": 70, "n_nonmembers": 70},
                     device=CPU, seed=0, progress=False)
    assert not set(rec.member_indices) & set(rec.nonmember_indices)
    assert len(rec.member_indices) == 70 and 0.35 <= rec.auc <= 0.65


def test_overfit_model_leaks_membership(overfit):
    victim, data = overfit
    rec = run_attack("membership", victim, data, {**FAST, "n_members": 80, "n_nonmembers": 80},
                     device=CPU, seed=0, progress=False)
    assert rec.member_accuracy > rec.nonmember_accuracy + 0.3
    assert rec.auc > 0.62  # about 0.69 here; the same-split control stays near 0.5
    assert rec.max_advantage > 0.3 and 0 <= rec.tpr_at_fpr <= 1
    assert len(rec.member_distances) == 80 and min(rec.member_distances) >= 0
    assert rec.to_dict()["kind"] == "attack.membership"
