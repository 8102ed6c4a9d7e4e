"""Execution traces: the library calls one forward pass makes, in order, with shapes and times.

The recorder is a `torch.overrides.TorchFunctionMode`: it sees every top-level torch call the
model makes (`conv2d`, `batch_norm`, `relu`, `add`, `cat`, `__getitem__`, ...), which is the
granularity at which a cache side channel on the framework's shared library observes a network
(Hong et al., "How to 0wn NAS in Your Spare Time", ICLR 2020). Calls made inside another call
are not seen (the mode is off while a call runs), and calls that return no tensor (`dim`,
`size`) are dropped, so the trace is the sequence of tensor-producing calls.

Each event keeps its kind, the shapes of its tensor inputs (weights included, so a conv's kernel
size is in its input shapes) and of its output, which earlier event produced each tensor input
(the data flow, as a forward hook or an execution-trace observer sees it), and its wall-clock
duration (median over several passes, after a warm-up pass). `record_passes` also returns every
pass's own durations, for a timing model that needs their spread (or a single query's times).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

__all__ = ["INPUT", "PARAMETER", "TraceEvent", "canonical_kind", "kinds", "record_passes", "record_trace"]

INPUT = -1  # producer of the traced call's own input
PARAMETER = -2  # producer of a tensor no traced call made: a weight, a buffer, a constant

# Python-level names of the same library call (a + b, a.add(b), torch.add(a, b)).
_KIND_ALIASES = {"radd": "add", "iadd": "add", "truediv": "div", "rtruediv": "div",
                 "getitem": "slice", "rsub": "sub", "rmul": "mul", "imul": "mul"}


def canonical_kind(func: Any) -> str:
    """The library-call name of a torch function: `conv2d`, `add` (also for `__radd__`),
    `slice` (for `__getitem__`), ..."""
    name = getattr(func, "__name__", None) or str(func)
    name = name.strip("_")
    return _KIND_ALIASES.get(name, name)


@dataclasses.dataclass(frozen=True)
class TraceEvent:
    """One library call of a forward pass.

    kind: canonical call name; in_shapes: shapes of the tensor arguments in argument order
    (lists such as cat's are expanded); out_shape: the output's shape; producers: per tensor
    argument the index of the event that produced it, INPUT or PARAMETER; duration_ns: wall
    time of the call in nanoseconds (median over the recorded passes).
    """

    kind: str
    in_shapes: tuple[tuple[int, ...], ...]
    out_shape: tuple[int, ...]
    producers: tuple[int, ...]
    duration_ns: float

    def signature(self) -> tuple[str, tuple[tuple[int, ...], ...], tuple[int, ...]]:
        """(kind, in_shapes, out_shape): what a shape-recording profiler shows of the call."""
        return (self.kind, self.in_shapes, self.out_shape)


def _tensors(value: Any) -> Iterator[Tensor]:
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


class _Recorder(TorchFunctionMode):
    """Records (kind, shapes, producers, duration) of every tensor-producing torch call."""

    def __init__(self, sync: bool):
        super().__init__()
        self.sync = sync
        self.rows: list[tuple[str, tuple, tuple, tuple, int]] = []
        self._producer: dict[int, int] = {}
        # Outputs stay referenced while recording, so that id() of a tensor is never reused.
        self._alive: list[Tensor] = []

    def mark_input(self, x: Tensor) -> None:
        self._producer[id(x)] = INPUT
        self._alive.append(x)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.sync:
            torch.cuda.synchronize()
        start = time.perf_counter_ns()
        out = func(*args, **kwargs)
        if self.sync:
            torch.cuda.synchronize()
        elapsed = time.perf_counter_ns() - start
        if isinstance(out, Tensor):
            inputs = [*_tensors(args), *_tensors(list(kwargs.values()))]
            self.rows.append((
                canonical_kind(func),
                tuple(tuple(t.shape) for t in inputs),
                tuple(out.shape),
                tuple(self._producer.get(id(t), PARAMETER) for t in inputs),
                elapsed,
            ))
            self._producer[id(out)] = len(self.rows) - 1
            self._alive.append(out)
        return out


def _one_pass(model: nn.Module, x: Tensor) -> list[tuple]:
    recorder = _Recorder(sync=x.device.type == "cuda")
    with torch.no_grad():
        x = x.clone()  # a fresh tensor object, so its id is the INPUT marker
        recorder.mark_input(x)
        with recorder:
            model(x)
    return recorder.rows


def record_passes(model: nn.Module, x: Tensor, *, passes: int = 3, warmup: int = 1
                  ) -> tuple[list[TraceEvent], list[list[float]]]:
    """The execution trace of `model(x)` and the durations of every recorded pass.

    Runs `warmup` untimed passes, then `passes` recorded ones. Returns (events, durations):
    events as `record_trace` gives them (duration_ns the median over the passes), durations
    [passes][len(events)] the wall time in ns of each call in each pass, in pass order. Raises
    RuntimeError if two passes make different calls.
    """
    if passes < 1:
        raise ValueError(f"passes must be >= 1, got {passes}")
    for _ in range(max(0, warmup)):
        _one_pass(model, x)
    runs = [_one_pass(model, x) for _ in range(passes)]
    first = runs[0]
    for run in runs[1:]:
        if [r[:4] for r in run] != [r[:4] for r in first]:
            raise RuntimeError("the model made different calls on two passes of the same input")
    events = [
        TraceEvent(kind, in_shapes, out_shape, producers,
                   float(statistics.median(run[i][4] for run in runs)))
        for i, (kind, in_shapes, out_shape, producers, _) in enumerate(first)
    ]
    return events, [[float(r[4]) for r in run] for run in runs]


def record_trace(model: nn.Module, x: Tensor, *, passes: int = 3, warmup: int = 1) -> list[TraceEvent]:
    """The execution trace of `model(x)`: one TraceEvent per tensor-producing library call.

    model: any nn.Module (run as it is: call .eval() first for an inference trace); x: its
    input, e.g. images [B, 3, H, W] in [0, 1]. The model runs `warmup` untimed passes, then
    `passes` recorded ones; each event's duration is the median over those passes, which damps
    the scheduler's noise on a shared CPU. Raises RuntimeError if two passes make different
    calls (a model whose call sequence depends on the data cannot be traced this way).
    """
    return record_passes(model, x, passes=passes, warmup=warmup)[0]


def kinds(events: Sequence[TraceEvent]) -> list[str]:
    """The call kinds of a trace, in order."""
    return [e.kind for e in events]
