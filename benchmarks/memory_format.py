"""NCHW against channels_last weights on this machine: a training step and an eval forward per
model, batch 64 of 32x32 images, the input in NCHW as callers pass it (`prepare_model` changes
only the weights' format; every conv then follows them).

Also one max_pool_3x3 (stride 1) forward and backward, the op NCHW is slowest at on CPU.
Run: OMP_NUM_THREADS=2 python benchmarks/memory_format.py   (about 2 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from nasaudit.infra.device import seeded
from nasaudit.models.registry import build_model

MODELS = (
    ("darts_v2, C=16, 8 cells", "darts_v2", {"C": 16, "layers": 8, "auxiliary": False}),
    ("darts_v2, C=4, 3 cells (demo)", "darts_v2", {"C": 4, "layers": 3, "auxiliary": False}),
    ("resnet18, width 8", "resnet18", {"width": 8}),
    ("resnet18, full width", "resnet18", {}),
    ("tiny_cnn", "tiny_cnn", {}),
)


def step_ms(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, repeat: int) -> tuple[float, float]:
    """(training step, eval forward) in milliseconds, the mean of `repeat` after two warm-ups."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    for i in range(repeat + 2):
        if i == 2:
            start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    train = (time.perf_counter() - start) / repeat * 1e3
    model.eval()
    with torch.no_grad():
        model(x)
        start = time.perf_counter()
        for _ in range(repeat):
            model(x)
    return train, (time.perf_counter() - start) / repeat * 1e3


def pool_ms(x: torch.Tensor, repeat: int = 20) -> float:
    """max_pool2d(3, 1, 1) forward and backward on x, in milliseconds."""
    x = x.detach().requires_grad_()
    F.max_pool2d(x, 3, 1, 1).sum().backward()
    start = time.perf_counter()
    for _ in range(repeat):
        F.max_pool2d(x, 3, 1, 1).sum().backward()
    return (time.perf_counter() - start) / repeat * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed steps per measurement")
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (64,), generator=gen)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 64, 32x32")
    print(f"{'model':<32}{'train NCHW':>12}{'train CL':>10}{'speed-up':>10}{'eval NCHW':>11}{'eval CL':>9}{'speed-up':>10}")
    for label, name, kwargs in MODELS:
        with seeded(0):
            nchw = build_model(name, 10, **kwargs)
        with seeded(0):
            cl = build_model(name, 10, **kwargs).to(memory_format=torch.channels_last)
        a, b = step_ms(nchw, x, y, args.repeat), step_ms(cl, x, y, args.repeat)
        print(f"{label:<32}{a[0]:>10.1f}ms{b[0]:>8.1f}ms{a[0] / b[0]:>9.2f}x{a[1]:>9.1f}ms{b[1]:>7.1f}ms{a[1] / b[1]:>9.2f}x",
              flush=True)
    fmap = torch.randn(64, 16, 32, 32, generator=gen)
    a, b = pool_ms(fmap), pool_ms(fmap.contiguous(memory_format=torch.channels_last))
    print(f"max_pool_3x3 on [64, 16, 32, 32], forward+backward: NCHW {a:.1f} ms, channels_last {b:.1f} ms "
          f"({a / b:.2f}x)")


if __name__ == "__main__":
    main()
