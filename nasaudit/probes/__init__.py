"""Probes: measurements of the properties the study blames for NAS models' vulnerability.

`PROBES` maps a probe name to `ProbeSpec(params_cls, run_fn)`; `run_probe` is the one entry
point the CLI and the audit use:

* "gradvar": per-sample gradient variance (Eq. 14) and the artifact's clipped variant;
* "contour_param": loss contour over the first convolution's weights (Eq. 12);
* "contour_input": loss contours around test inputs in pixel space (Eq. 13);
* "curvature": top Hessian eigenvalue w.r.t. parameters and inputs (power iteration).
* "trace_leak": how much of a genotype an execution-trace attacker recovers, per observation
  level (architecture stealing after Hong et al., ICLR 2020).

Every run function has the signature
`run_fn(model, data, params, *, device, seed, out_dir=None, progress=True) -> Record`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from nasaudit.errors import InputError
from nasaudit.params import make_params as build_params
from nasaudit.probes.contour import (
    ContourInputParams,
    ContourParamParams,
    ContourRecord,
    run_contour_input,
    run_contour_param,
)
from nasaudit.probes.curvature import CurvatureParams, CurvatureRecord, run_curvature
from nasaudit.probes.gradvar import (
    GradVarParams,
    GradVarRecord,
    per_sample_grad_variance,
    run_gradvar,
)
from nasaudit.probes.trace_leak import TraceLeakParams, TraceLeakRecord, run_trace_leak
from nasaudit.records import Record


class ProbeSpec(NamedTuple):
    """A probe: its settings dataclass and its run function."""

    params_cls: type
    run: Callable[..., Record]


PROBES: dict[str, ProbeSpec] = {
    "gradvar": ProbeSpec(GradVarParams, run_gradvar),
    "contour_param": ProbeSpec(ContourParamParams, run_contour_param),
    "contour_input": ProbeSpec(ContourInputParams, run_contour_input),
    "curvature": ProbeSpec(CurvatureParams, run_curvature),
    "trace_leak": ProbeSpec(TraceLeakParams, run_trace_leak),
}


def make_params(name: str, params: Mapping[str, Any] | Any | None, *, source: Any = None) -> Any:
    """The probe's validated Params instance from a dict (e.g. an audit TOML table), an instance,
    or None (defaults); see `nasaudit.params.make_params`. Unknown keys and bad values raise
    InputError(source, problem), source defaulting to "probe NAME"."""
    spec = _spec(name)
    return build_params(spec.params_cls, params, source=source or f"probe {name}")


def _spec(name: str) -> ProbeSpec:
    key = name.replace("-", "_")
    if key not in PROBES:
        raise InputError("probe", f"unknown probe {name!r}; known: {', '.join(PROBES)}")
    return PROBES[key]


def run_probe(
    name: str,
    model: Any,
    data: Any,
    params: Mapping[str, Any] | Any | None,
    *,
    device: Any,
    seed: int,
    out_dir: str | Path | None = None,
    progress: bool = True,
    at_init: bool | None = None,
) -> Record:
    """Run probe `name` ("gradvar", "contour_param", "contour_input", "curvature"; hyphens
    accepted) on `model` (an ImageClassifier, put in eval mode for the probe and restored) with
    data from `data` (an ImageDataset). Writes npz/png files into out_dir when given.

    at_init (gradvar only): whether `model` is untrained, so that the probe applies its `init`
    scheme (Kaiming by default); None detects it from the batch norm counters."""
    from nasaudit.device import resolve_device

    spec = _spec(name)
    extra = {"at_init": at_init} if spec.run is run_gradvar else {}
    return spec.run(
        model,
        data,
        make_params(name, params),
        device=resolve_device(device),
        seed=int(seed),
        out_dir=out_dir,
        progress=progress,
        **extra,
    )


__all__ = [
    "PROBES",
    "ContourInputParams",
    "ContourParamParams",
    "ContourRecord",
    "CurvatureParams",
    "CurvatureRecord",
    "GradVarParams",
    "GradVarRecord",
    "ProbeSpec",
    "TraceLeakParams",
    "TraceLeakRecord",
    "make_params",
    "per_sample_grad_variance",
    "run_probe",
]
