"""The attack battery: each attack maps (victim, data, params, device, seed) to a typed Record.

Python use, in a few lines::

    from nasaudit.attacks import Victim, run_attack
    model, meta = load_checkpoint_model("resnet18.pth", device="cpu")
    record = run_attack("pgd", Victim(model, meta["model"]), data, {"n_inputs": 200},
                        device=torch.device("cpu"), seed=0)
    print(record.asr)

Each attack is one module of this package, named after the attack, which declares
`ATTACK = AttackSpec(...)`: its Params (the study's Table 5 defaults), its entry point, which of
its record's fields are rates over which counts, and its settings for the demo. The modules are
the list: `NAMES` (the command line's choices, the audit config's known names) is read from the
package's files without importing torch; `ATTACKS` is the dict of specs, built on first use.

Adding an attack: write `nasaudit/attacks/<name>.py` with its Params, record, run function and
`ATTACK`, and give it a report section (`audit/report/sections/`). `SUPPORT_MODULES` are the
modules of this package that hold shared code rather than an attack.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from nasaudit.infra.errors import InputError

if TYPE_CHECKING:
    import torch

    from nasaudit.attacks.common import AttackRecord, Victim
    from nasaudit.data import ImageDataset

# Modules of this package that are not attacks: the record and victim types, the input
# selection, the backdoor defences and the execution-trace recorder of trace_leak.
SUPPORT_MODULES = frozenset({"common", "sampling", "defences", "trace"})
# Every attack's name (its module's), sorted; found without importing any of them.
NAMES: tuple[str, ...] = tuple(sorted(
    module.name for module in pkgutil.iter_modules(__path__) if module.name not in SUPPORT_MODULES
))

# Counts every attack may use, which the records do not store (the caller has the data set):
TEST = "test"  # every test input of the data set
TEST_NOT_TARGET = "test_not_target"  # test inputs whose true class != the record's target_class


class AttackSpec(NamedTuple):
    """One attack.

    params_cls: its settings dataclass (fields declared with `nasaudit.infra.params.param`).
    run: `run(victim, data, params, *, device, seed, progress, work_dir) -> record`.
    rates: record field -> the count it is a rate over: TEST, TEST_NOT_TARGET or a record field
        (a list: its length; an int: itself). A field may hold one rate, a dict of rates or a
        list of rates (aligned with `axis`). Differences, areas and exact counts are left out.
    counts: each record-field count -> (what it counts, how to get more of it), for warnings.
    victim_accuracy: the record field holding the victim's own clean accuracy (None: the
        record has none, and the caller measures it).
    axis: (record field, label) a list of rates is aligned with, e.g. ("eps", "eps").
    retrains: the attack trains networks (the plan schedules it as a long unit).
    members: the attack needs the victim's training inputs as members (an imported model must
        say which split it was trained on).
    demo: its settings in `nasaudit demo` (small budgets; keys of `params_cls` and of the audit
        config's per-attack keys, e.g. `each_model`).
    trained_victim: the attack's numbers depend on how well the victim was trained (False: only
        its architecture matters, as for trace_leak; the CLI then neither measures nor warns
        about the victim's accuracy).
    model_param: a parameter whose value may be the label of another model of the audit (its
        architecture, e.g. Knockoff's replica): the plan replaces the label by that model's spec
        and fills `<model_param>_kwargs` with its build settings.
    import_note: what `--dry-run` says the attack does with a pretrained model, formatted with
        {spec}, {fmt}, {lr}, {batch_size} and {weight_decay} ("" when nothing needs saying).
    """

    params_cls: type
    run: Callable[..., Any]
    rates: Mapping[str, str] = {}
    counts: Mapping[str, tuple[str, str]] = {}
    victim_accuracy: str | None = None
    axis: tuple[str, str] | None = None
    retrains: bool = False
    members: bool = False
    demo: Mapping[str, Any] = {}
    trained_victim: bool = True
    model_param: str | None = None
    import_note: str = ""


def attack_spec(name: str) -> AttackSpec:
    """The spec of attack `name` ("-" may replace "_"); InputError for an unknown name."""
    key = name.replace("-", "_")
    if key not in NAMES:
        raise InputError("attack", f"unknown attack {name!r}; known: {', '.join(NAMES)}")
    return importlib.import_module(f"nasaudit.attacks.{key}").ATTACK


def all_specs() -> dict[str, AttackSpec]:
    """Every attack's spec by name, in `NAMES` order (imports every attack module)."""
    return {name: attack_spec(name) for name in NAMES}


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
    """Run attack `name` (one of `NAMES`; "-" may replace "_") against `victim` on `data` and
    return its record.

    params: a dict of overrides of the attack's Params defaults, a Params instance, or None.
    work_dir: where retraining attacks keep checkpoints (resumable); None keeps them in memory.
    The victim's weights are never modified and nothing is written next to its checkpoint.
    """
    from nasaudit.infra.device import resolve_device
    from nasaudit.infra.params import make_params

    spec = attack_spec(name)
    return spec.run(
        victim, data, make_params(spec.params_cls, params, source="params"), device=resolve_device(device),
        seed=int(seed), progress=progress, work_dir=None if work_dir is None else str(work_dir),
    )


def __getattr__(name: str) -> Any:
    # The torch-importing parts load on first use, so that the names above cost no torch import.
    if name == "ATTACKS":
        return all_specs()
    if name in ("AttackRecord", "Victim"):
        from nasaudit.attacks import common

        return getattr(common, name)
    raise AttributeError(f"module 'nasaudit.attacks' has no attribute {name!r}")


__all__ = ["ATTACKS", "NAMES", "SUPPORT_MODULES", "AttackRecord", "AttackSpec", "Victim", "attack_spec", "run_attack"]
