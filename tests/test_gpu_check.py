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
def test_gpu_check_tiny_prints_every_row(cifar_subset_dir):
    env = {**os.environ, "PYTHON": sys.executable, "NNI_PYTHON": sys.executable, "DEVICE": "cpu",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
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
    # Real figures, not placeholders: positive throughputs and an agreement in [0, 1].
    speed = float(table.split("search step (first order, n_step 1)")[1].split("img/s")[0])
    assert speed > 0
    agreement = float(table.split("agreement ")[1].split()[0])
    assert 0.0 <= agreement <= 1.0


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
