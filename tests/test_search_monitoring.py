"""Tests of the search's monitoring (nasaudit.search.monitor and its use in nasaudit.search.run):
epoch-end summaries written after the epoch's checkpoint and redone on resume, the named
TensorBoard run with its custom-scalars layout, and the `nasaudit search --help` schedule.

Same tiny settings as tests/test_search_run.py (6 iterations per epoch), with a 4-image
gradient-variance probe and a log every 4 iterations so both kinds of summary are written.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from nasaudit.cli import main
from nasaudit.infra.errors import InputError
from nasaudit.infra.io import read_json, safe_torch_load
from nasaudit.search import SearchConfig, build_supernet, run_search
from nasaudit.search.monitor import SearchMonitor, alpha_tag, tensorboard_dir
from nasaudit.search.supernet import CELL_TYPES, edge_list

TINY = dict(dataset="digits", C=4, layers=3, nodes=2, batch_size=8, epochs=2, train_subset=96,
            log_every=4, checkpoint_every=0, probe_samples=4)
ITERS = 6  # per epoch: 48 architecture-half images / batch 8


def _run(out: Path, resume: bool = False, callback=None):
    return run_search(SearchConfig(**TINY), out_dir=out, device="cpu", resume=resume,
                      progress=False, callback=callback)


def _events(out: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tensorboard_dir(out)),
                           size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("monitoring") / "tiny-search"
    return _run(out), out


def test_kill_during_epoch_end_summaries_resumes_after_the_epoch(uninterrupted, tmp_path, monkeypatch):
    reference, ref_out = uninterrupted
    out = tmp_path / "killed"
    original = SearchMonitor.log_epoch_end

    def killed(self, step, epoch, metrics, values, genotype, drawing):
        # Half the summaries written (the step's events), then the user stops the run.
        self.log(step, metrics, genotype, drawing=drawing)
        raise KeyboardInterrupt

    monkeypatch.setattr(SearchMonitor, "log_epoch_end", killed)
    with pytest.raises(KeyboardInterrupt):
        _run(out)
    state = safe_torch_load(out / "checkpoint.pt")
    # Epoch 1 is safe: checkpointed as done, its files written, its summaries marked pending.
    assert (state["epoch"], state["step"], len(state["history"])) == (1, 0, 1)
    assert state["counters"]["weight_steps"] == ITERS
    assert state["monitor"]["epoch"] == 1 and "cost/arch_steps" in state["monitor"]["values"]
    assert len(read_json(out / "history.json")) == 1 and (out / "genotypes" / "epoch_001.json").is_file()

    monkeypatch.setattr(SearchMonitor, "log_epoch_end", original)
    # The pending record is checked like the rest of the checkpoint before any of it is used.
    bad = {**state, "monitor": {**state["monitor"], "epoch": 2}}
    torch.save(bad, out / "checkpoint.pt")
    with pytest.raises(InputError, match="monitor must be"):
        _run(out, resume=True)
    torch.save(state, out / "checkpoint.pt")
    steps = []
    result = _run(out, resume=True, callback=lambda info: steps.append(info["global_step"]))
    assert steps == list(range(ITERS + 1, 2 * ITERS + 1))  # epoch 2 only: epoch 1 not re-trained
    assert result.finished and result.weight_steps == reference.weight_steps == 2 * ITERS
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert result.genotype == reference.genotype
    for key in reference.alpha:
        assert torch.equal(torch.tensor(result.alpha[key]), torch.tensor(reference.alpha[key])), key
    assert safe_torch_load(out / "checkpoint.pt")["monitor"] is None

    # Epoch 1's summaries were redone, once (the half-written ones purged), as the reference's.
    acc, ref = _events(out), _events(ref_out)
    for tag in ("gradvar/weights", "loss/train", alpha_tag("normal", 2, 0, "skip_connect")):
        got, want = acc.Scalars(tag), ref.Scalars(tag)
        assert [e.step for e in got] == [e.step for e in want] == [4, ITERS, 8, 2 * ITERS], tag
        assert [e.value for e in got] == pytest.approx([e.value for e in want], rel=1e-5), tag
    assert [e.step for e in acc.Images("alpha_heatmap/normal")] == [ITERS, 2 * ITERS]
    assert [e.step for e in acc.Scalars("cost/arch_steps")] == [1, 2]
    assert (out / "genotypes" / "epoch_001.png").is_file()


def test_tensorboard_run_is_named_and_groups_alpha_by_cell_and_edge(uninterrupted):
    from tensorboard.plugins.custom_scalar import layout_pb2

    _, out = uninterrupted
    assert [d.name for d in (out / "tb").iterdir()] == ["tiny-search"]
    acc = _events(out)
    scalars = set(acc.Tags()["scalars"])
    (config,) = acc.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(config.tensor_proto.string_val[0])
    charts = {(cat.title, chart.title): list(chart.multiline.tag)
              for cat in layout.category for chart in cat.chart}
    ops = read_json(out / "genotype.json")["ops"]
    alpha_charts = {k: v for k, v in charts.items() if k[0].startswith("alpha/")}
    assert len(alpha_charts) == len(CELL_TYPES) * len(edge_list(TINY["nodes"]))
    for cell in CELL_TYPES:
        for node, inp in edge_list(TINY["nodes"]):
            regexes = alpha_charts[(f"alpha/{cell}", f"{cell} n{node}_from{inp}")]
            tags = [alpha_tag(cell, node, inp, op) for op in ops]
            assert set(tags) <= scalars
            # One line per op, each regex naming exactly its op's tag among all scalars.
            assert [[t for t in scalars if re.search(rx, t)] for rx in regexes] == [[t] for t in tags]
    # Every other scalar of the step axis is on some chart of the "search" category.
    search = [rx for (cat, _), rxs in charts.items() if cat == "search" for rx in rxs]
    for tag in ("loss/val", "acc/train", "lr/arch", "gradvar/weights", "skip/weight_mass/normal",
                "skip/derived_count/reduce"):
        assert any(re.search(rx, tag) for rx in search), tag


def test_search_help_says_what_runs_when(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["search", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for needle in ("Every --log-every iterations", "At every epoch end", "per-sample gradient",
                   "--probe-samples", "checkpointed; only then", "OUT/tb/NAME"):
        assert needle in text, needle


def test_monitor_shows_what_it_writes_and_old_runs_keep_their_directory(tmp_path, capsys):
    model = build_supernet(SearchConfig(**TINY), 10)
    x, y = torch.rand(4, 3, 32, 32), torch.arange(4)
    monitor = SearchMonitor(tmp_path / "tb" / "run", model, probe_x=x, probe_y=y, progress=True)
    monitor.log(1, {"loss/train": 2.3}, model.genotype())
    monitor.close()
    err = capsys.readouterr().err
    assert "TensorBoard, step 1" in err and "gradient variance" in err
    # A search begun before runs were named continues its events in OUT/tb itself.
    assert tensorboard_dir(tmp_path / "new") == tmp_path / "new" / "tb" / "new"
    legacy = tmp_path / "legacy" / "tb"
    legacy.mkdir(parents=True)
    (legacy / "events.out.tfevents.1.host").write_bytes(b"")
    assert tensorboard_dir(tmp_path / "legacy") == legacy
