"""Collapse guards of the search: the skip cap (DARTS+) and the Hessian early stop (RobustDARTS).

The eigenvalue tracker is checked against the dense Hessian (torch.autograd.functional.hessian)
of a tiny float64 supernet; the early stop against constructed eigenvalue sequences; both
guards end to end in a 2-epoch digits search.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from nasaudit.errors import InputError
from nasaudit.search import SearchConfig, Supernet, run_search
from nasaudit.search.hessian import (
    HessianEarlyStop,
    alpha_hessian_eigenvalue,
    parse_early_stop,
    top_eigenvalue,
)
from nasaudit.search.supernet import derive_genotype, derive_genotype_capped
from nasaudit.search_space import load_search_space

DARTS_OPS = load_search_space("darts").ops


def _skip_everywhere(nodes: int = 4) -> torch.Tensor:
    """Op weights [E, O] where skip_connect wins every edge; the second-best op differs by edge."""
    e = sum(i + 2 for i in range(nodes))
    g = torch.Generator().manual_seed(0)
    w = torch.rand(e, len(DARTS_OPS), generator=g) * 0.1
    w[:, DARTS_OPS.index("skip_connect")] = 0.5 + torch.arange(e) / 100.0  # later edges stronger
    return w


@pytest.mark.parametrize("cap", [0, 1, 2])
def test_skip_cap_holds_where_skip_would_win_everywhere(cap):
    w = _skip_everywhere()
    plain = derive_genotype(w, w, DARTS_OPS, 4)
    assert all(op == "skip_connect" for op, _ in plain.normal + plain.reduce)
    capped, replaced = derive_genotype_capped(w, w, DARTS_OPS, 4, skip_cap=cap)
    skip = DARTS_OPS.index("skip_connect")
    for cell in ("normal", "reduce"):
        gene, plain_gene = getattr(capped, cell), getattr(plain, cell)
        assert sum(op == "skip_connect" for op, _ in gene) == cap
        # Same inputs (topology); the kept skips are the strongest; the others take the edge's
        # best non-skip, non-zero op, computed here straight from the weights.
        assert [j for _, j in gene] == [j for _, j in plain_gene]
        edge_of = []  # alpha row of each genotype slot
        start = 0
        for i in range(4):
            edge_of += [start + j for j in (gene[2 * i][1], gene[2 * i + 1][1])]
            start += i + 2
        strongest = sorted(range(8), key=lambda s: -float(w[edge_of[s], skip]))[:cap]
        for s, (op, _) in enumerate(gene):
            if s in strongest:
                assert op == "skip_connect"
            else:
                row = w[edge_of[s]].clone()
                row[[DARTS_OPS.index("none"), skip]] = -1
                assert op == DARTS_OPS[int(row.argmax())]
        rec = [r for r in replaced if r["cell"] == cell]
        assert len(rec) == 8 - cap and all(r["op"] != "skip_connect" and r["op_weight"] < r["skip_weight"] for r in rec)
    # A cap that does not bind changes nothing.
    assert derive_genotype_capped(w, w, DARTS_OPS, 4, skip_cap=8) == (plain, [])


def _tiny_supernet():
    ops = ("none", "avg_pool_3x3", "skip_connect", "sep_conv_3x3")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        m = Supernet(ops, 3, C=4, layers=3, nodes=2).double()  # a normal cell, then 2 reductions
        with torch.no_grad():
            for a in m.arch_parameters():
                a.normal_(0, 0.5)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, 3, 8, 8, generator=g, dtype=torch.float64)
    return m, x, torch.randint(0, 3, (6,), generator=g)


def test_hessian_eigenvalue_tracker_matches_dense_hessian():
    m, x, y = _tiny_supernet()
    buffers = {n: b.clone() for n, b in m.named_buffers()}

    def loss(a_normal, a_reduce):
        logits = functional_call(m, {"alpha_normal": a_normal, "alpha_reduce": a_reduce,
                                     **{n: b.clone() for n, b in buffers.items()}}, (x,))
        return F.cross_entropy(logits, y)

    blocks = torch.autograd.functional.hessian(loss, (m.alpha_normal.detach(), m.alpha_reduce.detach()))
    n = m.alpha_normal.numel()
    dense = torch.cat([torch.cat([blocks[i][j].reshape(n, n) for j in range(2)], 1) for i in range(2)], 0)
    expected = float(torch.linalg.eigvalsh(dense).max())
    before = {k: v.clone() for k, v in m.state_dict().items()}
    got = alpha_hessian_eigenvalue(m, x, y, iters=100, tol=1e-8)
    assert got == pytest.approx(expected, rel=1e-4)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # no BN side effect


def test_top_eigenvalue_is_the_largest_also_when_a_negative_one_dominates():
    # H = diag(-5, 2, 1): power iteration alone would return -5; the top eigenvalue is 2.
    p = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    h = torch.tensor([-5.0, 2.0, 1.0], dtype=torch.float64)
    loss = 0.5 * (h * p.square()).sum() + p.sum()
    assert top_eigenvalue(loss, [p], iters=500, tol=1e-12) == pytest.approx(2.0, rel=1e-6)


def test_early_stop_triggers_on_a_rising_sequence_and_points_back_to_the_minimum():
    rule = HessianEarlyStop(1.3)
    seq = [0.50, 0.40, 0.42, 0.45, 0.51, 0.53, 0.9]  # minimum 0.40 at epoch 2; 0.53 > 1.3 * 0.40
    fired = [rule.update(e, v) for e, v in enumerate(seq, start=1)]
    assert fired == [False, False, False, False, False, True, True]
    assert (rule.stopped_at, rule.kept_epoch) == (6, 2)
    assert HessianEarlyStop.from_state(json.loads(json.dumps(rule.state_dict()))) == rule
    # A falling or flat sequence never fires; nor does growth over a non-positive minimum.
    flat = HessianEarlyStop(1.3)
    assert not any(flat.update(e, v) for e, v in enumerate([1.0, 0.9, 0.9, 1.1, 1.15], start=1))
    neg = HessianEarlyStop(1.3)
    assert not any(neg.update(e, v) for e, v in enumerate([-0.1, 5.0], start=1))
    assert parse_early_stop("hessian:1.5") == 1.5 and parse_early_stop(None) is None
    for bad in ("hessian:1", "hessian", "loss:2"):
        with pytest.raises(InputError):
            parse_early_stop(bad)


def test_search_with_guards_records_them_in_the_genotype_json(tmp_path, monkeypatch):
    """2 epochs on digits with a skip cap of 0 and a Hessian early stop that is made to fire
    (constructed eigenvalues 1.0 then 2.0): the genotype of epoch 1 is kept and recorded."""
    import nasaudit.search.run as run_mod

    values = iter([1.0, 2.0])
    monkeypatch.setattr(run_mod, "alpha_hessian_eigenvalue", lambda *a, **k: next(values))
    config = SearchConfig(dataset="digits", C=4, layers=2, nodes=2, epochs=3, batch_size=16,
                          train_subset=96, log_every=0, checkpoint_every=0, probe_samples=4,
                          skip_cap=0, early_stop="hessian:1.5", objectives=["beta:1"])
    result = run_search(config, out_dir=tmp_path / "s", device="cpu", progress=False)
    assert result.finished and result.epochs_done == 2
    assert result.early_stop["stopped_at_epoch"] == 2 and result.early_stop["kept_epoch"] == 1
    saved = json.loads((tmp_path / "s" / "genotype.json").read_text())
    epoch1 = json.loads((tmp_path / "s" / "genotypes" / "epoch_001.json").read_text())
    assert saved["normal"] == epoch1["normal"] and saved["epoch"] == 1
    assert saved["guards"]["early_stop"]["eigenvalues"] == {"1": 1.0, "2": 2.0}
    assert saved["guards"]["skip_cap"] == 0 and saved["search"]["skip_cap"] == 0
    assert [o["spec"] for o in saved["objectives"]] == ["beta:1:start=0,end=1"]
    assert saved["objectives"][0]["epoch_weights"] == [0.0, 0.5, 1.0]
    assert not any(op == "skip_connect" for op, _ in result.genotype.normal + result.genotype.reduce)
    assert "objective_beta" in result.history[0] and "hessian_top_eigenvalue" in result.history[0]
    # Resuming a stopped search does no more epochs.
    again = run_search(config, out_dir=tmp_path / "s", device="cpu", progress=False, resume=True)
    assert again.epochs_done == 2 and again.genotype == result.genotype


def test_skip_cap_from_the_cli_reaches_the_genotype(tmp_path) -> None:
    """`nasaudit search --skip-cap 0`: no skip connect in either derived cell, and the genotype
    file says how it was found; a negative cap is refused with exit 2."""
    import json

    from nasaudit.cli import main

    out = tmp_path / "capped"
    argv = ["search", "--dataset", "digits", "--epochs", "1", "--C", "4", "--layers", "2", "--batch-size", "32",
            "--train-subset", "128", "--no-progress", "--device", "cpu", "--out", str(out)]
    assert main([*argv, "--skip-cap", "0"]) == 0
    saved = json.loads((out / "genotype.json").read_text())
    assert not any(op == "skip_connect" for cell in ("normal", "reduce") for op, _ in saved[cell])
    assert saved["guards"]["skip_cap"] == 0 and saved["search"]["skip_cap"] == 0
    assert main([*argv[:-1], str(tmp_path / "bad"), "--skip-cap", "-1"]) == 2
