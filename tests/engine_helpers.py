"""What the engine tests share: a 10-unit digits audit, and records compared across engines."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

from nasaudit.audit.config import load_config

# 2 models x (analyze, train, clean, pgd, membership) = 10 units; tiny_cnn trains in ~1 s/epoch.
TINY = """
name = "tiny_ray"
out_dir = "out"
seeds = [0]

[dataset]
name = "digits"

[train]
epochs = 2
batch_size = 64
lr = 0.05
drop_path_prob = 0.0

[model_defaults.manual]
width = 4

[[models]]
name = "tiny_cnn"

[[models]]
name = "resnet18"

[attacks.pgd]
n_inputs = 16
restarts = 1

[attacks.membership]
n_members = 8
n_nonmembers = 8
max_iter = 2
max_eval = 20
init_eval = 5
init_size = 5
"""
TOTAL = 10


@contextlib.contextmanager
def one_thread():
    """torch on one intra-op thread, as in the Ray tasks (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def make_config(root: Path, text: str = TINY):
    root.mkdir(parents=True, exist_ok=True)
    (root / "audit.toml").write_text(text)
    return load_config(root / "audit.toml")


def comparable(result: dict | None, out_dir: Path) -> dict | None:
    """A record without what legitimately differs between runs: timings, hosts, paths."""
    if result is None:
        return None
    text = json.dumps(result, sort_keys=True).replace(str(out_dir), "OUT")

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items()
                    if not any(t in k for t in ("seconds", "time", "host"))}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(json.loads(text))
