"""One registry for every model: manual baselines by name, genotype networks by genotype.

`build_model(name, num_classes)` accepts a registered model name ("resnet18"), a genotype name
("darts_v2", "darts") or a genotype file path ("my.json", "genotypes.py:DARTS_V2").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from nasaudit.infra.errors import InputError
from nasaudit.models.base import ImageClassifier
from nasaudit.models.baselines import BASELINES

ModelFactory = Callable[..., ImageClassifier]
_FACTORIES: dict[str, ModelFactory] = dict(BASELINES)


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator: register `factory(num_classes, mean, std, **kwargs) -> ImageClassifier`."""

    def decorate(factory: ModelFactory) -> ModelFactory:
        if name in _FACTORIES:
            raise ValueError(f"model {name!r} registered twice")
        _FACTORIES[name] = factory
        return factory

    return decorate


def list_models() -> list[str]:
    """Names of the registered manual (non-genotype) models."""
    return sorted(_FACTORIES)


def did_you_mean(name: str) -> str:
    """"; did you mean 'X'?" for the closest manual model or shipped genotype name ("" if none)."""
    import difflib

    from nasaudit.genotype import shipped_genotypes

    close = difflib.get_close_matches(str(name).lower(), [*_FACTORIES, *shipped_genotypes()], n=1, cutoff=0.75)
    return f"; did you mean {close[0]!r}?" if close else ""


def is_manual_model(name: str) -> bool:
    """True when `name` is a registered manual baseline rather than a genotype."""
    return name in _FACTORIES


def build_model(
    name: str,
    num_classes: int,
    *,
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
    source: str | None = None,
    **kwargs: Any,
) -> ImageClassifier:
    """Build model `name` (manual baseline, genotype name or genotype file) for `num_classes`.

    Extra keyword arguments go to the factory (for genotype networks: C, layers, auxiliary,
    drop_path_prob, space). Raises InputError for an unknown name, a bad genotype file, or a
    size beyond `nasaudit.infra.limits` (the parameter count is taken from a build on the meta device,
    which allocates nothing, before the real one); `source` names where the sizes came from.
    """
    import torch

    from nasaudit.infra.limits import check_parameter_count

    factory = _factory(name)
    check_model_sizes(kwargs, source or "--model")
    with torch.device("meta"):
        count = sum(p.numel() for p in factory(num_classes=num_classes, mean=mean, std=std, **kwargs).parameters())
    check_parameter_count(count, name, source or "--model")
    return factory(num_classes=num_classes, mean=mean, std=std, **kwargs)


def check_model_sizes(kwargs: dict[str, Any], source: str) -> None:
    """Per-dimension caps (C, width, layers) of build kwargs, before anything is built."""
    from nasaudit.infra.limits import MAX_MODEL_SIZES, check_at_most

    for key, limit in MAX_MODEL_SIZES.items():
        value = kwargs.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            check_at_most(value, limit, key, source, limit_name=f"MAX_MODEL_SIZES[{key!r}]")


def _factory(name: str) -> ModelFactory:
    """The factory behind a registered name, a genotype name or a genotype file."""
    if name in _FACTORIES:
        return _FACTORIES[name]
    from nasaudit.genotype import resolve_genotype
    from nasaudit.models.darts_network import build_genotype_network

    try:
        genotype = resolve_genotype(name)
    except InputError as exc:
        if exc.source == name and "unknown genotype" in exc.problem:
            known = ", ".join(list_models())
            raise InputError(
                "--model", f"{name!r} is neither a model ({known}) nor a genotype name or file{did_you_mean(name)}"
            ) from None
        raise
    return lambda **kw: build_genotype_network(genotype, **kw)
