"""Probes: measurements of the properties the study blames for NAS models' vulnerability.

`nasaudit.probes.settings` is the list of probes with their settings classes, readable without
importing torch (the command line's sub-commands and flags, the audit config's known names). Each probe's module declares
`PROBES = {name: ProbeSpec(params_cls, run)}`; `PROBES` here is the merged dict, built on first
use, and `run_probe` is the one entry point the CLI and the audit use:

* "gradvar": per-sample gradient variance (Eq. 14) and the artifact's clipped variant;
* "contour_param": loss contour over the first convolution's weights (Eq. 12);
* "contour_input": loss contours around test inputs in pixel space (Eq. 13);
* "curvature": top Hessian eigenvalue w.r.t. parameters and inputs (power iteration).

Architecture stealing from an execution trace is an attack (`nasaudit.attacks.trace_leak`).

Every run function has the signature
`run_fn(model, data, params, *, device, seed, out_dir=None, progress=True) -> Record`
(plus `at_init` for the probes whose spec says `at_init=True`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from nasaudit.infra.errors import InputError
from nasaudit.probes.settings import PROBES as SETTINGS

if TYPE_CHECKING:
    from nasaudit.infra.records import Record

# Probe name -> the module of nasaudit.probes that runs it, in report order (from the list of
# probes and their settings, `nasaudit.probes.settings.PROBES`).
MODULES: dict[str, str] = {name: module for name, (module, _) in SETTINGS.items()}
NAMES: tuple[str, ...] = tuple(MODULES)


class ProbeSpec(NamedTuple):
    """A probe: its settings dataclass, its run function, and whether the run takes `at_init`
    (the model is untrained, so the probe applies its initialisation scheme)."""

    params_cls: type
    run: Callable[..., Record]
    at_init: bool = False


def probe_spec(name: str) -> ProbeSpec:
    """The spec of probe `name` ("-" may replace "_"); InputError for an unknown name."""
    key = name.replace("-", "_")
    if key not in MODULES:
        raise InputError("probe", f"unknown probe {name!r}; known: {', '.join(NAMES)}")
    return importlib.import_module(f"nasaudit.probes.{MODULES[key]}").PROBES[key]


def probe_params(name: str, params: Mapping[str, Any] | Any | None, *, source: Any = None) -> Any:
    """The probe's validated Params instance from a dict (e.g. an audit TOML table), an instance,
    or None (defaults); see `nasaudit.infra.params.make_params`. Unknown keys and bad values raise
    InputError(source, problem), source defaulting to "probe NAME"."""
    from nasaudit.infra.params import make_params

    return make_params(probe_spec(name).params_cls, params, source=source or f"probe {name}")


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
    """Run probe `name` (one of `NAMES`; hyphens accepted) on `model` (an ImageClassifier, put
    in eval mode for the probe and restored) with data from `data` (an ImageDataset). Writes
    npz/png files into out_dir when given.

    at_init (gradvar only): whether `model` is untrained, so that the probe applies its `init`
    scheme (Kaiming by default); None detects it from the batch norm counters."""
    from nasaudit.infra.device import resolve_device

    spec = probe_spec(name)
    extra = {"at_init": at_init} if spec.at_init else {}
    return spec.run(
        model,
        data,
        probe_params(name, params),
        device=resolve_device(device),
        seed=int(seed),
        out_dir=out_dir,
        progress=progress,
        **extra,
    )


def __getattr__(name: str) -> Any:
    # The merged dict imports every probe module (and torch): built on first use only.
    if name == "PROBES":
        return {probe: probe_spec(probe) for probe in NAMES}
    raise AttributeError(f"module 'nasaudit.probes' has no attribute {name!r}")


__all__ = ["MODULES", "NAMES", "PROBES", "ProbeSpec", "probe_params", "probe_spec", "run_probe"]
