"""Alpha hooks: transforms of the op weights of Eq. 3 applied on every forward pass.

The supernet turns each cell type's architecture parameters alpha [E, O] (edges x ops) into op
weights softmax(alpha) [E, O] and, before mixing the ops with them, passes them through its
hooks in registration order. A hook is any callable

    hook(weights: Tensor [E, O], cell: str, ops: tuple[str, ...]) -> Tensor [E, O]

with `cell` "normal" or "reduce" and `ops` the search space's op names (the columns). It must
be differentiable (the alpha gradient flows through it) and must not modify `weights` in place.

Built-in hooks are named in configs and on the command line as "NAME" or "NAME:ARG"
(`parse_hook`); register more with `register_hook_factory`.

Genotype derivation reads the same hooked (effective) weights the search optimised against.
Why: the loss only ever saw the effective mixture, so it is what the search has judged. Under
the skip penalty alpha_skip may even grow to compensate for gamma, and deriving from the raw
softmax would then pick skip_connect exactly where the penalty says it should be discouraged;
with the effective weights the penalty really changes the selection (the study's mitigation ii).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from nasaudit.infra.errors import InputError

AlphaHook = Callable[[torch.Tensor, str, tuple[str, ...]], torch.Tensor]


def skip_penalty(gamma: float) -> AlphaHook:
    """The study's mitigation (ii): scale the skip_connect weight by gamma in (0, 1], renormalise.

    The effective weight of skip is gamma * exp(a_skip) / Z' with Z' the renormalised sum, the
    other ops exp(a_o) / Z'; weights without a skip_connect column pass through unchanged.
    """
    gamma = float(gamma)
    if not 0.0 < gamma <= 1.0:
        raise InputError("skip_penalty", f"gamma must be in (0, 1], got {gamma}")

    def hook(weights: torch.Tensor, cell: str, ops: tuple[str, ...]) -> torch.Tensor:
        # gamma = 1 is the identity; returning the input untouched (instead of dividing by a sum
        # that is 1 only up to rounding) keeps gamma = 1 bit-for-bit equal to plain DARTS.
        if gamma == 1.0 or "skip_connect" not in ops:
            return weights
        scale = torch.ones(len(ops), dtype=weights.dtype, device=weights.device)
        scale[ops.index("skip_connect")] = gamma
        scaled = weights * scale
        return scaled / scaled.sum(-1, keepdim=True)

    hook.__name__ = f"skip_penalty({gamma:g})"
    return hook


# name -> factory(arg string or None) -> hook
HOOK_FACTORIES: dict[str, Callable[[str | None], AlphaHook]] = {}


def register_hook_factory(name: str, factory: Callable[[str | None], AlphaHook]) -> None:
    """Make `name` (or "name:ARG") usable in configs and on the CLI; factory gets ARG or None."""
    HOOK_FACTORIES[name] = factory


def _skip_penalty_factory(arg: str | None) -> AlphaHook:
    if arg is None:
        raise InputError("--hook", "skip_penalty needs gamma, e.g. skip_penalty:0.5")
    try:
        gamma = float(arg)
    except ValueError:
        gamma = math.nan
    if not 0.0 < gamma <= 1.0:  # NaN fails too
        raise InputError("--hook", f"skip_penalty gamma must be a number in (0, 1], got {arg!r}")
    return skip_penalty(gamma)


register_hook_factory("skip_penalty", _skip_penalty_factory)


def parse_hook(spec: str) -> AlphaHook:
    """Build a registered hook from "NAME" or "NAME:ARG" (e.g. "skip_penalty:0.5")."""
    name, _, arg = str(spec).partition(":")
    name = name.strip()
    if name not in HOOK_FACTORIES:
        known = ", ".join(sorted(HOOK_FACTORIES))
        raise InputError("--hook", f"unknown alpha hook {name!r} (known: {known})")
    return HOOK_FACTORIES[name](arg.strip() or None)


def apply_hooks(
    weights: torch.Tensor, hooks: list[AlphaHook] | tuple[AlphaHook, ...], cell: str,
    ops: tuple[str, ...],
) -> torch.Tensor:
    """Pass op weights [E, O] through `hooks` in order; checks each keeps the shape."""
    for hook in hooks:
        out = hook(weights, cell, ops)
        if out.shape != weights.shape:
            raise ValueError(f"alpha hook {hook!r} changed the shape "
                             f"{tuple(weights.shape)} -> {tuple(out.shape)}")
        weights = out
    return weights
