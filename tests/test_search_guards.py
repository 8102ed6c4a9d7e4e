"""Collapse guards of the search: the skip cap (DARTS+) and DARTS-ES, RobustDARTS's early stop.

The eigenvalue tracker is checked against the dense Hessian (torch.autograd.functional.hessian)
of a tiny float64 supernet, whole and in chunks; DARTS-ES against constructed eigenvalue
sequences; both guards end to end in a resumed 4-epoch digits search.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from nasaudit.infra.errors import InputError
from nasaudit.search import SearchConfig, Supernet, run_search
from nasaudit.search.hessian import (
    DartsEarlyStop,
    EarlyStopRule,
    alpha_hessian_eigenvalue,
    darts_es_decision,
    parse_early_stop,
    top_eigenvalue,
    windowed_means,
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


def test_chunked_eigenvalue_matches_dense_hessian_of_the_chunk_mean():
    """In chunks (BN statistics per chunk, as the search measures L_val batch by batch) the
    eigenvalue is that of sum_c (n_c / N) * loss of chunk c; chunks of 4 + 2 weigh 2/3 and 1/3."""
    m, x, y = _tiny_supernet()
    buffers = {n: b.clone() for n, b in m.named_buffers()}

    def loss(a_normal, a_reduce):
        total = 0.0
        for s, e in ((0, 4), (4, 6)):
            logits = functional_call(m, {"alpha_normal": a_normal, "alpha_reduce": a_reduce,
                                         **{n: b.clone() for n, b in buffers.items()}}, (x[s:e],))
            total = total + F.cross_entropy(logits, y[s:e]) * ((e - s) / 6)
        return total

    blocks = torch.autograd.functional.hessian(loss, (m.alpha_normal.detach(), m.alpha_reduce.detach()))
    n = m.alpha_normal.numel()
    dense = torch.cat([torch.cat([blocks[i][j].reshape(n, n) for j in range(2)], 1) for i in range(2)], 0)
    expected = float(torch.linalg.eigvalsh(dense).max())
    got = alpha_hessian_eigenvalue(m, x, y, chunk=4, iters=100, tol=1e-8)
    assert got == pytest.approx(expected, rel=1e-4)


def test_darts_es_rule_on_constructed_eigenvalue_sequences():
    """Zela et al.'s DARTS-ES: mean(i) over epochs i-k+1..i; stop at the first i with
    mean(i-k) / mean(i) < ratio; return epoch i-k."""
    # Flat (ratio 1) and falling sequences never stop.
    assert darts_es_decision([2.0] * 30) is None
    assert darts_es_decision([float(30 - e) for e in range(30)]) is None
    # Growing: flat 1.0 for 12 epochs, then 3.0. mean(13) = (4 * 1 + 3) / 5 = 1.4 and
    # mean(8) = 1: 1 / 1.4 < 0.75 at i = 13 (not before: mean(12) = 1), returning epoch 8.
    seq = [1.0] * 12 + [3.0] * 5
    assert darts_es_decision(seq) == (13, 8)
    means = windowed_means(seq, 5)
    assert means[:4] == [None] * 4 and means[4:12] == [1.0] * 8 and means[12] == pytest.approx(1.4)
    assert darts_es_decision(seq, window=2) == (13, 11)  # mean(13) = 2, mean(11) = 1
    assert darts_es_decision(seq, ratio=0.5) == (15, 10)  # 1 / mean(14) = 1 / 1.8 > 0.5 > 1 / 2.2
    # Boundary: a ratio of exactly 0.75 does not stop; just below it does.
    assert darts_es_decision([3.0] * 5 + [4.0] * 5) is None
    assert darts_es_decision([3.0] * 5 + [4.0] * 4 + [4.5]) == (10, 5)
    # Fewer than 2k epochs never stop, however steep the growth; the 2k-th can.
    steep = [2.0 ** e for e in range(10)]
    assert darts_es_decision(steep[:9]) is None and darts_es_decision(steep) == (10, 5)
    assert darts_es_decision(steep[:5], window=3) is None and darts_es_decision(steep[:6], window=3) == (6, 3)
    # A windowed mean <= 0 has no growth ratio: no stop.
    assert darts_es_decision([-1.0] * 5 + [-0.1] * 5) is None and darts_es_decision([0.0] * 12) is None

    # The tracker: the same decision epoch by epoch, genotypes kept, state checked on reload.
    rule = EarlyStopRule()
    tracker = DartsEarlyStop(rule)
    fired = [tracker.update(e, v, {"epoch": e}) for e, v in enumerate(seq, start=1)]
    assert fired.index(True) == 12 and (tracker.stopped_at, tracker.returned_epoch) == (13, 8)
    assert tracker.returned_genotype() == {"epoch": 8} and len(tracker.values) == 13
    state = tracker.state_dict()
    assert state["windowed_means"]["13"] == pytest.approx(1.4) and "4" not in state["windowed_means"]
    saved = json.loads(json.dumps(tracker.checkpoint_state()))
    again = DartsEarlyStop.from_checkpoint(saved, rule, 13)
    assert again == tracker
    for tamper, needle in (({"eigenvalues": {**saved["eigenvalues"], "3": 9.0}}, "do not follow"),
                           ({"window": 4}, "darts-es:5:0.75"),
                           ({"genotypes": {"1": {}}}, "genotypes must cover")):
        with pytest.raises(InputError, match=needle):
            DartsEarlyStop.from_checkpoint({**saved, **tamper}, rule, 13)
    with pytest.raises(InputError, match="cover epochs 1..14"):
        DartsEarlyStop.from_checkpoint(saved, rule, 14)


def test_early_stop_spellings(tmp_path, capsys):
    assert parse_early_stop(None) is None and parse_early_stop("") is None
    assert parse_early_stop("darts-es") == EarlyStopRule(5, 0.75)
    assert parse_early_stop("darts-es:3") == EarlyStopRule(3, 0.75)
    assert parse_early_stop("darts-es:3:0.5") == EarlyStopRule(3, 0.5)
    for bad in ("darts-es:0", "darts-es:x", "darts-es:2:1", "darts-es:2:0", "darts-es:2:nan",
                "darts-es:2:0.5:1", "loss:2", "hessian", "hessian:1.3", "hessian-min:1.3"):
        with pytest.raises(InputError):
            parse_early_stop(bad)
    # The former running-minimum spelling fails in one line naming the new ones (exit 2).
    from nasaudit.cli import main

    assert main(["search", "--dataset", "digits", "--out", str(tmp_path / "old"), "--early-stop", "hessian:1.3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "darts-es:K:RATIO" in err
    assert not (tmp_path / "old").exists()


def test_search_early_stop_returns_epoch_i_minus_k_across_a_resume(tmp_path, monkeypatch):
    """A tiny digits search (3 iterations per epoch) with DARTS-ES k = 2 and constructed
    eigenvalues 1, 1, 1, 3: mean(4) = 2 = 2 x mean(2), so it stops at epoch 4 of 6 and returns
    epoch 2's genotype. The run is cut mid-epoch 3 and resumed: the checkpoint carries the rule's
    history. The first eigenvalue is also measured for real on the configured sample."""
    import nasaudit.search.run as run_mod
    from nasaudit.genotype import resolve_genotype

    real = run_mod.alpha_hessian_eigenvalue
    measured = []

    def fake(model, x, y, *, chunk, tol, seed):
        if not measured:
            measured.append((x.shape[0], chunk, real(model, x, y, chunk=chunk, tol=tol, seed=seed)))
        return [1.0, 1.0, 1.0, 3.0, 1.0, 1.0][seed]  # seed = config seed (0) + epoch index

    monkeypatch.setattr(run_mod, "alpha_hessian_eigenvalue", fake)
    config = SearchConfig(dataset="digits", C=4, layers=2, nodes=2, epochs=6, batch_size=16,
                          train_subset=96, log_every=0, checkpoint_every=0, probe_samples=4,
                          skip_cap=0, early_stop="darts-es:2:0.75", hessian_samples=40,
                          objectives=["beta:1"], max_steps=7)
    out = tmp_path / "s"
    cut = run_search(config, out_dir=out, device="cpu", progress=False)
    assert not cut.finished and cut.epochs_done == 2 and cut.early_stop["stopped_at_epoch"] is None
    assert measured[0][:2] == (40, 16) and torch.isfinite(torch.tensor(measured[0][2]))
    from nasaudit.infra.io import safe_torch_load

    state = safe_torch_load(out / "checkpoint.pt")
    assert state["early_stop"]["eigenvalues"] == {"1": 1.0, "2": 1.0} and list(state["early_stop"]["genotypes"]) == ["1", "2"]

    config.max_steps = None
    result = run_search(config, out_dir=out, device="cpu", progress=False, resume=True)
    es = result.early_stop
    assert result.finished and result.epochs_done == 4
    assert es["eigenvalues"] == {"1": 1.0, "2": 1.0, "3": 1.0, "4": 3.0}
    assert es["windowed_means"] == {"2": 1.0, "3": 1.0, "4": 2.0}
    assert (es["stopped_at_epoch"], es["returned_epoch"], es["hessian_samples"]) == (4, 2, 40)
    saved = json.loads((out / "genotype.json").read_text())
    epoch2 = json.loads((out / "genotypes" / "epoch_002.json").read_text())
    epoch4 = json.loads((out / "genotypes" / "epoch_004.json").read_text())
    assert saved["epoch"] == 2 and saved["alpha"] == epoch2["alpha"] != epoch4["alpha"]
    assert result.genotype == resolve_genotype(str(out / "genotypes" / "epoch_002.json"))
    assert saved["guards"]["early_stop"] == es and saved["guards"]["skip_cap"] == 0
    assert [o["spec"] for o in saved["objectives"]] == ["beta:1:start=0,end=1"]
    assert not any(op == "skip_connect" for op, _ in result.genotype.normal + result.genotype.reduce)
    assert "objective_beta" in result.history[0] and result.history[3]["hessian_top_eigenvalue"] == 3.0
    assert result.history[3]["hessian_windowed_mean"] == 2.0
    # Resuming a stopped search does no more epochs and returns the same genotype.
    again = run_search(config, out_dir=out, device="cpu", progress=False, resume=True)
    assert again.epochs_done == 4 and again.genotype == result.genotype
    # A checkpoint whose rule state disagrees with its history is refused.
    state = safe_torch_load(out / "checkpoint.pt")
    state["early_stop"]["eigenvalues"]["1"] = 5.0
    torch.save(state, out / "checkpoint.pt")
    with pytest.raises(InputError, match="early-stop state"):
        run_search(config, out_dir=out, device="cpu", progress=False, resume=True)


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
