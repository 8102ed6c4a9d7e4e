"""benchmarks/gpu_check.sh --tiny: the GPU check runs end to end on CPU and prints its table."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_tiny_prints_every_row(cifar_subset_dir, tmp_path):
    """Every row is printed, and each figure is the one its benchmark measured: the table's
    throughput is the search benchmark's batch over its timed seconds, and its ASR agreement
    is within the bounds its two ASRs allow."""
    import json

    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "NNI_PYTHON": sys.executable, "DEVICE": "cpu",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OUT": str(out), "KEEP_OUT": "1"}
    proc = subprocess.run(["bash", str(SCRIPT), "--tiny"], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    rules = [i for i, line in enumerate(lines) if line and set(line) == {"="}]
    assert len(rules) >= 2, proc.stdout[-2000:]
    table = "\n".join(lines[rules[-2] + 1 : rules[-1]])
    for row in ("search step (first order, n_step 1)", "PGD vs ART, darts_v2",
                "PGD attack (early stop) vs ART, darts_v2",
                "targeted PGD vs ART, resnet18", "HopSkipJump vs ART, resnet18",
                "bf16 vs fp32 PGD ASR, darts_v2", "smoke audit --dry-run", "peak host RSS"):
        assert row in table, row
    ours = json.loads((out / "search.json").read_text())["compared"]["ours"]
    speed = float(table.split("search step (first order, n_step 1)")[1].split("img/s")[0])
    assert speed == pytest.approx(ours["images_per_s"], abs=0.051)
    # First order, n_step 1: two batches (weights and alphas) per timed iteration.
    assert ours["n_step"] == 1 and ours["s_per_iter"] > 0
    assert ours["images_per_s"] == pytest.approx(2 * ours["batch_size"] / ours["s_per_iter"], rel=1e-6)
    b = next(v["bf16"] for v in json.loads((out / "attacks.json").read_text())["victims"] if "bf16" in v)
    agreement = float(table.split("agreement ")[1].split()[0])
    assert agreement == pytest.approx(b["agreement"], abs=0.0006)
    # Two success vectors with these rates agree on at least 1 - |difference| of the inputs.
    assert 1 - abs(b["asr_fp32"] - b["asr_bf16"]) - 1e-9 <= b["agreement"] <= 1


def test_attack_benchmark_medians_and_repeat_bound():
    """benchmarks/attacks.py: `_median_of` takes each figure's median across runs (not the
    median run), and `--repeat 0` is refused with argparse's exit code 2 before any work."""
    import importlib.util

    path = SCRIPT.parent / "attacks.py"
    spec = importlib.util.spec_from_file_location("bench_attacks", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    runs = iter([(1.0, 20.0), (5.0, 10.0), (3.0, 30.0), (9.0, 0.0)])  # medians from different runs
    assert bench._median_of(3, lambda: next(runs)) == (3.0, 20.0)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(path), "--repeat", "0"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert "--repeat must be at least 1" in proc.stderr and "Traceback" not in proc.stderr
