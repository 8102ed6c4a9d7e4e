"""Untargeted L-inf PGD over a sweep of radii (the study's Figure 3): ASR as a function of eps.

The same seeded inputs and random starts at every eps, so the sweep differs only in the radius.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from nasaudit.attacks import AttackSpec
from nasaudit.attacks.common import AttackRecord, Victim, batch_slices, record_fields, timed
from nasaudit.attacks.pgd import INPUT_COUNTS, pgd_batches
from nasaudit.attacks.sampling import select_correct, selection_fields
from nasaudit.infra.params import make_params, param
from nasaudit.models.inference import inference_model

if TYPE_CHECKING:
    from nasaudit.data import ImageDataset


@dataclass
class Params:
    """Untargeted PGD over a sweep of eps (the study's Figure 3); step = eps * step_fraction.

    n_inputs: seeded test candidates drawn before keeping the correctly classified ones;
    eps: radii in pixel units; iters: max steps; restarts: random restarts per eps.
    """

    n_inputs: int = param(
        1000, min=1, doc="seeded test candidates, counted before keeping the correctly "
        "classified ones (only those are attacked)",
    )
    eps: tuple[float, ...] = param(
        (0.5 / 255, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255), gt=0, max=1,
        doc="L-inf radii, pixel units",
    )
    step_fraction: float = param(1 / 3, gt=0, max=1, doc="step = eps * step_fraction")
    iters: int = param(7, min=1, doc="max iterations per restart")
    restarts: int = param(1, min=1, doc="random restarts per input and eps")
    random_start: bool = param(True, doc="uniform random start in the eps ball")
    batch_size: int = param(256, min=1, doc="inputs per batch on the device")


@dataclass
class PGDSweepRecord(AttackRecord):
    """Untargeted PGD sweep: asr[i] at eps[i]; success[i] per input, aligned with `indices`."""

    kind = "attack.pgd_sweep"
    candidates: list[int]
    indices: list[int]
    clean_accuracy: float
    eps: list[float]
    asr: list[float]
    success: list[list[bool]]


def run_pgd_sweep(
    victim: Victim,
    data: ImageDataset,
    params: Params | dict | None = None,
    *,
    device: torch.device,
    seed: int = 0,
    progress: bool = True,
    work_dir: str | None = None,
) -> PGDSweepRecord:
    """Untargeted PGD ASR as a function of eps on seeded, correctly classified test inputs."""
    params = make_params(Params, params, source="params")
    with timed() as elapsed:
        model = inference_model(victim.model)
        candidates, kept, _ = select_correct(
            model, data.test_images, data.test_labels, params.n_inputs, seed, device=device,
            batch_size=params.batch_size,
        )
        x_all = data.test_images[kept]
        y_all = data.test_labels[kept].to(device)
        asr, success = [], []
        n_batches = len(batch_slices(len(kept), params.batch_size))
        bar = tqdm(total=n_batches * len(params.eps), desc="pgd sweep", disable=not progress)
        for eps in params.eps:
            # The same random starts for every eps: the sweep differs only in the radius.
            ok, _, _ = pgd_batches(
                model, x_all, y_all, device=device, batch_size=params.batch_size, bar=bar,
                targeted=False, eps=eps, step=eps * params.step_fraction, iters=params.iters,
                restarts=params.restarts, random_start=params.random_start, seed=seed, stream="sweep",
            )
            success.append(ok.tolist())
            asr.append(float(ok.float().mean()) if ok.numel() else 0.0)
        bar.close()
    return PGDSweepRecord(
        **record_fields("pgd_sweep", victim, data, seed, params, elapsed()),
        **selection_fields(candidates, kept), eps=list(params.eps), asr=asr, success=success,
    )


ATTACK = AttackSpec(Params, run_pgd_sweep, rates={"asr": "indices", "clean_accuracy": "candidates"},
                    counts=INPUT_COUNTS, victim_accuracy="clean_accuracy", axis=("eps", "eps"),
                    demo={"n_inputs": 40, "eps": [1 / 255, 2 / 255, 4 / 255, 8 / 255], "restarts": 1})
