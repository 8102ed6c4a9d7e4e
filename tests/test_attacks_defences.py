"""Backdoor defences (nasaudit.attacks.defences): Neural Cleanse and fine-pruning.

One BadNet backdoor of the shared CIFAR-subset tiny_cnn (`trained_model`), with both defences
run by the backdoor unit itself, serves the detection and removal tests; the clean victim is
the same architecture without the backdoor (Neural Cleanse runs on it too, nc_clean_model).
Settings are shrunk for CPU: a 3-epoch fine-tune at 10% poison, a few hundred clean images,
a reduced Neural Cleanse step budget.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from nasaudit.attacks import Victim, run_attack
from nasaudit.attacks.backdoor import BackdoorRecord, defence_images
from nasaudit.attacks.common import accuracy
from nasaudit.attacks.defences import (
    ReversedTriggers,
    anomaly_indices,
    judge,
    plan_pruning,
    prune_features,
    reverse_triggers,
)
from nasaudit.infra.records import Record

CPU = torch.device("cpu")
TARGET = 0
# The backdoor and the defences, shrunk for CPU (see the module docstring). Neural Cleanse runs at
# a fixed L1 weight: on this weakly trained model the hard classes (the animals) need masks of a
# fifth of the image for NC's 99% success, which spreads the clean classes' norms so wide under
# NC's schedule that even the backdoor's 3x3 trigger stays within 2 MADs of the median.
SETTINGS = {
    "method": "badnet", "target_class": TARGET, "epochs": 3, "poison_fraction": 0.1, "lr": 0.05,
    "defences": "neural_cleanse,fine_pruning", "defence_inputs": 400, "nc_inputs": 128, "nc_steps": 100, "nc_batch_size": 16,
    "nc_schedule": "fixed", "nc_init_cost": 0.01, "finetune_epochs": 5, "finetune_lr": 0.01,
    "prune_max_drop": 0.1,
}


@pytest.fixture(scope="module")
def victim(trained_model) -> Victim:
    return Victim(trained_model.model, trained_model.model_name, trained_model.train_config,
                  trained_model.model_kwargs)


@pytest.fixture(scope="module")
def defended(victim, trained_model, torch_threads) -> BackdoorRecord:
    with torch_threads(2):
        return run_attack("backdoor", victim, trained_model.data, SETTINGS, device=CPU, seed=0, progress=False)


def test_neural_cleanse_flags_the_backdoor_and_not_the_clean_model(defended):
    """A strong BadNet backdoor (ASR > 0.9) is an outlier among the classes' reversed trigger
    norms, on its own target class; the clean model of the same architecture is not flagged."""
    rec = defended
    assert rec.asr > 0.9
    assert rec.defences == ["neural_cleanse", "fine_pruning"] and rec.defence_inputs == 400
    assert len(rec.trigger_norms) == 10 and len(rec.clean_trigger_norms) == 10
    assert rec.detected and rec.anomaly_index > 2
    assert rec.flagged_class == rec.smallest_norm_class == TARGET
    # The reversed target trigger works and is small: the implanted one is a 3x3 patch (norm 9).
    assert rec.reversed_success[TARGET] > 0.9
    assert rec.trigger_norms[TARGET] < 0.5 * float(np.median(rec.trigger_norms))
    assert not rec.clean_detected and rec.clean_anomaly_index <= 2 and rec.clean_flagged_class is None
    # The record round-trips through JSON with its defence fields.
    back = BackdoorRecord.from_dict(Record.to_dict(rec))
    assert back.trigger_norms == rec.trigger_norms and back.detected is True


def test_fine_pruning_lowers_the_asr_within_the_accuracy_bound(defended):
    """Pruning the penultimate channels least active on the defender's 400 clean images, while
    their accuracy drops by at most 10 points (Liu et al. allow 4; this weak model needs more
    to reach the trigger's channels), cuts the backdoor's ASR by a wide margin: the trigger
    lives in channels clean images leave dormant (Liu et al.'s premise). The clean fine-tune
    that follows may give part of it back, but stays well below the backdoor's; clean test
    accuracy stays within the bound plus a sampling margin of the backdoored model's."""
    rec = defended
    assert 0 < rec.pruned_channels <= int(0.9 * 64) and rec.pruned_fraction == rec.pruned_channels / 64
    assert rec.asr_after_pruning < rec.asr - 0.6
    assert rec.asr_after_finetune < rec.asr - 0.2
    bound = SETTINGS["prune_max_drop"] + 0.03  # the defender's 400 images against the test split
    assert rec.clean_accuracy_after_pruning >= rec.backdoor_accuracy - bound
    assert rec.clean_accuracy_after_finetune >= rec.backdoor_accuracy - bound
    assert set(rec.defence_seconds) == {"neural_cleanse", "fine_pruning"}


def _reference_anomaly_index(norms: list[float], k: int) -> float:
    """|norms[k] - median| / (1.4826 * MAD), median and MAD by hand (sorted lists, no np.median)."""
    def median(values: list[float]) -> float:
        s = sorted(values)
        mid = len(s) // 2
        return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2
    m = median(norms)
    mad = 1.4826 * median([abs(v - m) for v in norms])
    return abs(norms[k] - m) / mad


def test_anomaly_index_matches_a_hand_computation(defended):
    rng = np.random.default_rng(0)
    for n in (3, 10, 11, 43):
        norms = rng.gamma(4.0, 10.0, size=n).tolist()
        got = anomaly_indices(norms)
        for k in range(n):
            assert got[k] == pytest.approx(_reference_anomaly_index(norms, k), rel=1e-12)
    # The record's index is the smallest-norm class's, from its stored norms.
    k = int(np.argmin(defended.trigger_norms))
    assert defended.anomaly_index == pytest.approx(_reference_anomaly_index(defended.trigger_norms, k), rel=1e-9)
    # MAD 0: the median classes score 0, any other inf (flagged).
    assert anomaly_indices([5.0, 5.0, 5.0, 1.0]).tolist() == [0.0, 0.0, 0.0, np.inf]
    triggers = ReversedTriggers([0, 1, 2], torch.zeros(3, 1, 2, 2), torch.zeros(3, 3, 2, 2),
                                torch.tensor([10.0, 2.0, 11.0]), torch.ones(3))
    verdict = judge(triggers)
    assert verdict.smallest_class == 1 and verdict.anomaly_index == pytest.approx(_reference_anomaly_index([10, 2, 11], 1))


def test_batched_reverse_engineering_equals_one_class_at_a_time(trained_model):
    """Classes are optimised together, but each class's loss depends only on its own mask and
    pattern and Adam is elementwise: the same triggers as one chunk per class."""
    images = trained_model.data.test_images[:48]
    kwargs = {"steps": 6, "batch_size": 8, "device": CPU, "seed": 1}
    together = reverse_triggers(trained_model.model, images, [0, 4, 7], class_chunk=3, **kwargs)
    apart = reverse_triggers(trained_model.model, images, [0, 4, 7], class_chunk=1, **kwargs)
    assert together.masks.shape == (3, 1, 32, 32) and together.patterns.shape == (3, 3, 32, 32)
    assert 0 < together.masks.min() and together.masks.max() < 1
    torch.testing.assert_close(together.masks, apart.masks, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(together.norms, apart.norms, rtol=1e-4, atol=1e-3)
    again = reverse_triggers(trained_model.model, images, [0, 4, 7], class_chunk=3, **kwargs)
    assert torch.equal(again.masks, together.masks)  # seeded


def test_pruning_plan_matches_the_pruned_model(trained_model):
    """The plan's accuracy curve (logits minus the pruned channels' terms) is what the model
    with those channels masked measures; the stopping point respects the bound."""
    model = trained_model.model
    images, labels = defence_images(trained_model.data, trained_model.train_config, 300, 0)
    plan = plan_pruning(model, images, labels, max_accuracy_drop=0.04, max_fraction=0.5, device=CPU)
    assert sorted(plan.order) == list(range(64)) and len(plan.accuracy_curve) == 33
    assert plan.pruned <= 32 and plan.accuracy_curve[0] - plan.accuracy_curve[plan.pruned] <= 0.04
    if plan.pruned < 32:
        assert plan.accuracy_curve[0] - plan.accuracy_curve[plan.pruned + 1] > 0.04
    for k in (0, plan.pruned, 32):
        pruned = prune_features(copy.deepcopy(model), plan.order[:k]).eval()
        assert accuracy(pruned, images, labels, device=CPU) == pytest.approx(plan.accuracy_curve[k], abs=1e-6)
    assert trained_model.model.classifier.weight.ne(0).all()  # the shared model is untouched


def test_defences_are_opt_in_and_checked():
    """No defence by default (none, or an empty list, says so too); unknown names and none mixed
    with a defence are refused."""
    from nasaudit.attacks.backdoor import Params, run_defences
    from nasaudit.infra.errors import InputError
    from nasaudit.infra.params import make_params

    assert Params().defences is None
    for value in ("none", [], ["none"]):
        params = make_params(Params, {"defences": value}, source="test")
        assert run_defences(params, None, None, None, None, None, device=CPU, seed=0, progress=False) == {}
    assert make_params(Params, {"defences": "fine_pruning"}, source="t").defences == ("fine_pruning",)
    with pytest.raises(InputError, match="defences"):
        make_params(Params, {"defences": "strip"}, source="t")
    mixed = make_params(Params, {"defences": "none,fine_pruning"}, source="t")
    with pytest.raises(InputError, match="none cannot be combined"):
        run_defences(mixed, None, None, None, None, None, device=CPU, seed=0, progress=False)


def _row(model: str, group: str, seed: int, result: dict):
    from nasaudit.audit.store import UnitRow

    return UnitRow(unit_key=f"{model}/{seed}", model=model, model_group=group, stage="attack", name="backdoor",
                   params={"method": "badnet", "defences": ["neural_cleanse", "fine_pruning"], "nc_steps": 100},
                   seed=seed, status="done", kind="attack.backdoor", result=result, started=0.0, finished=1.0,
                   seconds=1.0, nasaudit_version="0", torch_version="0", device="cpu", genotype_hash=None,
                   model_key=None, error=None)


def test_report_section_counts_detections_per_model(tmp_path):
    """The report's defence section: k of n seeds detected (backdoored and clean model, target
    flagged), and per-model means of the anomaly index and the post-defence ASR and accuracy."""
    from nasaudit.audit.report import METRIC_BY_KEY
    from nasaudit.audit.report.builder import Builder
    from nasaudit.audit.report.data import AuditData
    from nasaudit.audit.report.document import Table
    from nasaudit.audit.report.sections.defences import defences

    headline = [METRIC_BY_KEY["backdoor_anomaly_index"], METRIC_BY_KEY["backdoor_asr_after_pruning"]]
    assert [(m.key, m.direction, m.stage, m.name) for m in headline] == [
        ("backdoor_anomaly_index", None, "attack", "backdoor"),
        ("backdoor_asr_after_pruning", None, "attack", "backdoor")]

    def result(detected: bool, index: float, clean: bool, asr_pruned: float) -> dict:
        return {"target_class": 0, "asr": 0.95, "defences": ["neural_cleanse", "fine_pruning"],
                "defence_inputs": 400, "detected": detected, "anomaly_index": index,
                "flagged_class": 0 if detected else None, "clean_detected": clean, "clean_anomaly_index": 1.0,
                "asr_after_pruning": asr_pruned, "clean_accuracy_after_pruning": 0.8,
                "asr_after_finetune": 0.1, "clean_accuracy_after_finetune": 0.85}

    rows = [_row("darts", "nas", 0, result(True, 3.0, False, 0.2)),
            _row("darts", "nas", 1, result(False, 1.0, False, 0.4)),
            _row("resnet18", "manual", 0, result(True, 4.0, True, 0.0))]
    data = AuditData(rows, [], {"raw": {"attacks": {"backdoor": {"method": "badnet"}}}}, [],
                     group={"darts": "nas", "resnet18": "manual"}, order=["darts", "resnet18"])
    section = defences(Builder(data, tmp_path))
    assert section.no_data is None
    tables = {b.name: b for b in section.blocks if isinstance(b, Table)}
    assert tables["backdoor_detection"].rows == [["darts", "nas", "1/2", "1/2", "0/2"],
                                                 ["resnet18", "manual", "1/1", "1/1", "1/1"]]
    means = tables["backdoor_defences"]
    darts = next(r for r in means.rows if r[0] == "darts")
    assert darts[2] == pytest.approx(2.0)  # mean anomaly index over the two seeds
    assert darts[2 + 3] == pytest.approx(0.3)  # mean ASR after pruning
    # Backdoor runs without defences: the section says why it is empty.
    bare = AuditData([_row("darts", "nas", 0, {"asr": 0.9})], [], {"raw": {"attacks": {"backdoor": {}}}}, [],
                     group={"darts": "nas"}, order=["darts"])
    assert "ran no defence" in defences(Builder(bare, tmp_path)).no_data
