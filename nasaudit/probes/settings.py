"""The probes' settings and the list of probes, without torch: the command line builds its flags
and the audit config checks its tables from these dataclasses (each field's default, type,
bounds and one-line doc, declared with `nasaudit.infra.params.param`).

`PROBES` maps a probe name to (the module of nasaudit.probes that runs it, its settings class),
in report order: it is the list of probes.
"""

from __future__ import annotations

import dataclasses

from nasaudit.infra.params import param

# "kaiming": `kaiming_init` for every architecture; "builtin": the constructor's own init (the
# DARTS network keeps PyTorch's defaults, the manual baselines Kaiming fan-out, which alone can
# flip the NAS-vs-manual direction at initialisation).
INIT_SCHEMES = ("kaiming", "builtin")

@dataclasses.dataclass
class GradVarParams:
    """Per-sample gradient variance (Eq. 14) and the artifact's variant; defaults = the study's artifact."""

    n_samples: int = param(512, min=2, doc="samples drawn with the seed (a variance needs 2)")
    chunk_size: int = param(64, min=1, doc="samples per vmap call")
    clip_norm: float | None = param(
        None, gt=0, doc="optional clip before Eq. 14 (the paper does not clip)"
    )
    artifact_clip: float = param(5.0, gt=0, doc="clip before the artifact's sum of stds")
    split: str = param("train", choices=("train", "test"), doc="which images are sampled")
    init: str = param(
        "kaiming", choices=INIT_SCHEMES,
        doc="init of an untrained model: kaiming (the same rule for every model, so variances "
        "at initialisation compare) or builtin (each constructor's own); a trained model is "
        "never re-initialised",
    )
    calibrate_bn: int = param(
        8, min=0, max=4096,
        doc="untrained model with batch norm: batches of the split whose statistics replace the "
        "fresh running mean 0 / var 1 before measuring (weights unchanged); 0: off, every "
        "batch norm stays the identity, a network training never produces",
    )
    calibration_batch_size: int = param(
        64, min=2, max=4096, doc="images per batch-norm calibration batch"
    )


@dataclasses.dataclass
class ContourParamParams:
    """Loss contour over the first convolution's weights (Eq. 12)."""

    radius: float = param(0.5, gt=0, doc="grid over [-radius, radius]^2")
    points: int = param(41, min=3, odd=True, doc="grid points per axis (odd: (0, 0) is on it)")
    n_samples: int = param(256, min=1, doc="fixed seeded training batch the loss is taken on")
    max_images_per_call: int | None = param(
        None, min=1, doc="images per vmap call (grid points per call = this // n_samples); "
        "none: by device",
    )


@dataclasses.dataclass
class ContourInputParams:
    """Loss contours around test inputs in pixel space (Eq. 13)."""

    radius: float = param(0.2, gt=0, doc="grid half-width, pixel units")
    points: int = param(41, min=3, odd=True, doc="grid points per axis (odd: (0, 0) is on it)")
    n_samples: int = param(16, min=1, doc="seeded test inputs, each with its own directions")
    batch_size: int | None = param(
        None, min=1, doc="perturbed images per forward pass; none: by device"
    )
    clamp: bool = param(False, doc="clip perturbed images to [0, 1]")


@dataclasses.dataclass
class CurvatureParams:
    """Top Hessian eigenvalue with respect to the parameters and the inputs."""

    n_samples: int = param(256, min=1, doc="seeded training batch for the parameter Hessian")
    n_inputs: int = param(
        64, min=1, le_field="n_samples",
        doc="the first n_inputs of the batch get an input-space eigenvalue",
    )
    iters: int = param(50, min=1, doc="maximum power iterations (HVPs)")
    tol: float = param(1e-4, min=0, doc="relative change of the eigenvalue to stop at")
    which: str = param("both", choices=("param", "input", "both"), doc="which Hessians")


PROBES: dict[str, tuple[str, type]] = {
    "gradvar": ("gradvar", GradVarParams),
    "contour_param": ("contour", ContourParamParams),
    "contour_input": ("contour", ContourInputParams),
    "curvature": ("curvature", CurvatureParams),
}
