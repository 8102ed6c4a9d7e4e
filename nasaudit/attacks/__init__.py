"""The attack battery: each attack maps (victim, data, params, device, seed) to a typed Record.

Python use, in a few lines::

    from nasaudit.attacks import Victim, run_attack
    model, meta = load_checkpoint_model("resnet18.pth", device="cpu")
    record = run_attack("pgd", Victim(model, meta["model"]), data, {"n_inputs": 200},
                        device=torch.device("cpu"), seed=0)
    print(record.asr)

`ATTACKS[name]` is an `AttackSpec(params_cls, run)`; `params_cls()` holds the study's defaults
(Table 5) and every field can be overridden by a dict.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from nasaudit.attacks import backdoor, knockoff, membership, model_reuse, nes, pgd, poisoning
from nasaudit.attacks.common import AttackRecord, Victim, make_params
from nasaudit.errors import InputError

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

    from nasaudit.data import ImageDataset


class AttackSpec(NamedTuple):
    """An attack's parameter dataclass and its entry point."""

    params_cls: type
    run: Callable[..., AttackRecord]


ATTACKS: dict[str, AttackSpec] = {
    "pgd": AttackSpec(pgd.Params, pgd.run_pgd),
    "pgd_sweep": AttackSpec(pgd.SweepParams, pgd.run_pgd_sweep),
    "nes": AttackSpec(nes.Params, nes.run_nes),
    "poison": AttackSpec(poisoning.Params, poisoning.run_poisoning),
    "backdoor": AttackSpec(backdoor.Params, backdoor.run_backdoor),
    "knockoff": AttackSpec(knockoff.Params, knockoff.run_knockoff),
    "membership": AttackSpec(membership.Params, membership.run_membership),
    "model_reuse": AttackSpec(model_reuse.Params, model_reuse.run_model_reuse),
}


def run_attack(
    name: str,
    victim: Victim,
    data: ImageDataset,
    params: dict[str, Any] | Any = None,
    *,
    device: torch.device | str,
    seed: int,
    progress: bool = True,
    work_dir: str | Path | None = None,
) -> AttackRecord:
    """Run attack `name` ("pgd", "pgd_sweep", "nes", "poison", "backdoor", "knockoff",
    "membership", "model_reuse"; "-" may replace "_") against `victim` on `data` and return its record.

    params: a dict of overrides of the attack's Params defaults, a Params instance, or None.
    work_dir: where retraining attacks keep checkpoints (resumable); None keeps them in memory.
    The victim's weights are never modified and nothing is written next to its checkpoint.
    """
    from nasaudit.device import resolve_device

    key = name.replace("-", "_")
    if key not in ATTACKS:
        raise InputError("attack", f"unknown attack {name!r}; known: {', '.join(ATTACKS)}")
    spec = ATTACKS[key]
    return spec.run(
        victim, data, make_params(spec.params_cls, params), device=resolve_device(device),
        seed=int(seed), progress=progress, work_dir=None if work_dir is None else str(work_dir),
    )


__all__ = ["ATTACKS", "AttackRecord", "AttackSpec", "Victim", "make_params", "run_attack"]
