"""Checkpoints: where they live, what they hold, and how a model is rebuilt from one.

A trained model is two files side by side (the study's convention for the location):

* ``{model_dir}/image/{dataset}/{model}.pth``: a weights-only ``torch.save`` of
  ``{"format": 1, "model": state_dict, "optimizer": ..., "scheduler": ..., "epoch": int,
  "history": [dict, ...], "config": dict}`` (plain containers, numbers, strings and tensors, so
  ``torch.load(weights_only=True)`` reads it back without running any code);
* ``{model_dir}/image/{dataset}/{model}.json``: the human-readable sidecar (model name,
  canonical genotype, model kwargs, dataset, config, seed, epoch, accuracies, versions) from
  which `load_checkpoint_model` rebuilds the network without the original genotype file.

Both are written atomically (`nasaudit.infra.io`), so a kill never leaves a torn file.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch

from nasaudit import __version__
from nasaudit.infra.device import prepare_model, resolve_device, seeded
from nasaudit.infra.errors import InputError, first_line
from nasaudit.infra.io import atomic_torch_save, atomic_write_json, read_json, safe_torch_load
from nasaudit.infra.limits import MAX_CLASSES, MAX_MODEL_SIZES, MAX_OTHER_INT
from nasaudit.models.base import ImageClassifier

CHECKPOINT_FORMAT = 1
_GENOTYPE_SUFFIXES = (".json", ".py", ".toml", ".txt")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")
# Bounds on what an untrusted sidecar may ask to build (the study's largest: C=36, layers=20,
# width=64, 1000 classes): far above any real model, far below an out-of-memory.


def model_stem(model_name: str) -> str:
    """A file-name-safe stem for a model name, genotype name or genotype file spec.

    "resnet18" -> "resnet18"; "path/to/my_cells.json" -> "my_cells";
    "third/genotypes.py:DARTS_V2" -> "genotypes-DARTS_V2". Anything outside [A-Za-z0-9_.-] becomes
    "_" so that a spec can never escape the checkpoint directory.
    """
    spec = str(model_name).strip()
    pick = ""
    # "file.py:NAME" picks one genotype from a file; a Windows drive ("C:\\...") is not a pick.
    head, sep, tail = spec.rpartition(":")
    if sep and head and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", tail) and len(head) > 1:
        spec, pick = head, tail
    path = Path(spec.replace("\\", "/"))
    looks_like_file = "/" in spec or "\\" in spec or path.suffix.lower() in _GENOTYPE_SUFFIXES
    stem = path.stem if looks_like_file else spec
    if pick:
        stem = f"{stem}-{pick}"
    stem = _UNSAFE_CHARS.sub("_", stem).lstrip(".")
    return stem or "model"


def checkpoint_path(model_dir: str | Path, dataset: str, model_name: str) -> Path:
    """``{model_dir}/image/{dataset}/{model}.pth`` with `model` made a safe stem (`model_stem`)."""
    dataset_stem = _UNSAFE_CHARS.sub("_", str(dataset)).lstrip(".") or "dataset"
    return Path(model_dir) / "image" / dataset_stem / f"{model_stem(model_name)}.pth"


def sidecar_path(checkpoint: str | Path) -> Path:
    """The JSON sidecar beside a checkpoint: ``model.pth`` -> ``model.json``."""
    return Path(checkpoint).with_suffix(".json")


def versions() -> dict[str, str]:
    """Versions recorded in every sidecar, to tell which code produced a checkpoint."""
    return {"nasaudit": __version__, "torch": torch.__version__}


def genotype_record(model_name: str) -> dict[str, Any] | None:
    """Canonical JSON of the genotype behind `model_name`, or None for a manual baseline.

    Stored in the sidecar so that a checkpoint stays loadable after its genotype file moves.
    """
    from nasaudit.models.registry import is_manual_model

    if is_manual_model(model_name):
        return None
    from nasaudit.genotype import genotype_to_json, resolve_genotype

    return genotype_to_json(resolve_genotype(model_name), name=model_stem(model_name))


def save_training_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Atomically write a training state dict (see the module docstring for its keys)."""
    return atomic_torch_save({"format": CHECKPOINT_FORMAT, **state}, path)


def write_sidecar(checkpoint: str | Path, meta: dict[str, Any]) -> Path:
    """Atomically write the JSON sidecar of `checkpoint` (key-sorted, indented)."""
    return atomic_write_json(sidecar_path(checkpoint), meta)


def read_sidecar(checkpoint: str | Path) -> dict[str, Any] | None:
    """The sidecar of `checkpoint` as a dict, None when absent; InputError when malformed."""
    path = sidecar_path(checkpoint)
    if not path.is_file():
        return None
    meta = read_json(path)
    if not isinstance(meta, dict):
        raise InputError(path, "checkpoint sidecar must be a JSON object")
    return meta


def check_scheduler_state(fresh: dict[str, Any], saved: Any, source: str | Path) -> None:
    """A learning-rate scheduler's saved state must have the fresh scheduler's fields with values
    of the same kinds: torch's `load_state_dict` copies any dict into the scheduler unchecked."""
    def kind(value: Any) -> str:
        if isinstance(value, bool) or value is None:
            return type(value).__name__
        if isinstance(value, int | float):
            return "number"
        return "list" if isinstance(value, list | tuple) else type(value).__name__

    if not isinstance(saved, dict) or set(saved) != set(fresh):
        raise InputError(source, "cannot resume: the learning-rate schedule's state does not fit this run")
    for key, value in fresh.items():
        other = saved[key]
        bad_number = kind(other) == "number" and not math.isfinite(other)
        if kind(other) != kind(value) or bad_number:
            raise InputError(source, f"cannot resume: the learning-rate schedule's {key!r} is {other!r}")


def load_states(pairs: list[tuple[Any, Any]], source: str | Path) -> None:
    """`obj.load_state_dict(state)` for each (module/optimizer/scheduler, saved state) of a
    checkpoint being resumed; a state that does not fit is one InputError naming the file."""
    from nasaudit.infra.errors import first_line

    try:
        for obj, state in pairs:
            obj.load_state_dict(state)
    except (KeyError, RuntimeError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise InputError(source, f"cannot resume from this checkpoint: {first_line(exc)}") from None


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint weights-only; a raw ``state_dict`` is wrapped as ``{"model": ...}``.

    Raises InputError (one line) for a missing, corrupt, unsafe or foreign file.
    """
    state = safe_torch_load(path)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        return state
    # Checkpoints written by other tools (e.g. the study's artifact) are often a bare state_dict.
    if (
        isinstance(state, dict)
        and state
        and all(isinstance(v, torch.Tensor) for v in state.values())
    ):
        return {"model": state}
    raise InputError(path, "not a model checkpoint (no 'model' state_dict inside)")


def _genotype_from_record(record: dict[str, Any], source: Path):
    """Parse the sidecar's canonical genotype JSON back into a validated Genotype."""
    from nasaudit.genotype import parse_genotypes, validate_genotype

    name = str(record.get("name") or "genotype")
    try:
        # Re-serialised and parsed by the one JSON genotype reader, then validated like a file.
        (genotype,) = parse_genotypes(
            json.dumps(record), source=str(source), suffix=".json", default_name=name
        ).values()
        validate_genotype(genotype, source=str(source), name=name)
    except ValueError as exc:  # InputError is a ValueError; so is a file with != 1 genotype
        problem = exc.problem if isinstance(exc, InputError) else str(exc)
        raise InputError(source, f"bad genotype in sidecar: {problem}") from None
    return genotype


def check_model_kwargs(kwargs: dict[str, Any], source: str | Path) -> None:
    """Bound the build_model kwargs read from an untrusted sidecar before anything is built.

    Only scalars are accepted, and every size within MAX_MODEL_SIZES (or MAX_OTHER_INT): a
    sidecar asking for C = 10**6 is refused, naming the file and the field, instead of trying
    to allocate the network.
    """
    for key, value in kwargs.items():
        if isinstance(value, bool) or value is None or isinstance(value, str):
            continue
        if isinstance(value, float):
            if not (value == value and abs(value) <= MAX_OTHER_INT):
                raise InputError(source, f"model_kwargs.{key} must be a finite number, got {value!r}")
            continue
        if not isinstance(value, int):
            raise InputError(source, f"model_kwargs.{key} must be a number, true/false or a "
                                     f"string, got {type(value).__name__}")
        limit = MAX_MODEL_SIZES.get(key, MAX_OTHER_INT)
        if not -MAX_OTHER_INT <= value <= limit:
            raise InputError(source, f"model_kwargs.{key} must be at most {limit}, got {value}")


def _check_sidecar_model(name: str, genotype: Any, source: Path) -> str:
    """What a sidecar's 'model' may open, as the name to build. It is input: without a recorded
    genotype it must name a registered model, a shipped genotype, or a genotype file beside the
    checkpoint (resolved there), never a path elsewhere; a genotype recorded beside a shipped or
    manual name must agree with it (else the sidecar contradicts itself)."""
    from nasaudit.genotype import genotype_hash, shipped_genotypes
    from nasaudit.models.registry import is_manual_model

    side = sidecar_path(source)
    shipped = shipped_genotypes()
    key = name.strip().lower().replace("-", "_")
    if isinstance(genotype, dict):  # built from the record; the name is only compared
        if key in shipped and genotype_hash(_genotype_from_record(genotype, source)) != genotype_hash(
                shipped[key]["genotype"]):
            raise InputError(side, f"its genotype differs from {name!r}, the model it names; fix or remove one")
        if is_manual_model(name):
            raise InputError(side, f"names the manual model {name!r} but records a genotype")
        return name
    file_part = name.split(":", 1)[0]
    if is_manual_model(name) or key in shipped or not (
            "/" in file_part or "\\" in file_part or file_part.lower().endswith((".json", ".py", ".txt"))):
        return name  # a plain name: build_model knows it or says it does not
    folder = source.parent.resolve()
    path = (folder / file_part).resolve() if not Path(file_part).is_absolute() else None
    if path is None or not path.is_relative_to(folder):
        raise InputError(side, f"'model' is {name!r}: a sidecar may name a model, a shipped genotype or a "
                               "genotype file beside the checkpoint, not a path elsewhere")
    return str(folder / name)


def build_from_sidecar(
    meta: dict[str, Any], *, model_name: str | None, num_classes: int, source: Path
) -> ImageClassifier:
    """Build an (untrained) model described by a sidecar, or by an explicit `model_name`."""
    from nasaudit.models.registry import build_model

    kwargs = meta.get("model_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise InputError(source, "sidecar 'model_kwargs' must be a JSON object")
    check_model_kwargs(kwargs, sidecar_path(source))
    name = model_name or meta.get("model")
    if not name:
        raise InputError(source, "no sidecar names the model; pass --model NAME|FILE")
    if model_name is None and not isinstance(name, str):
        raise InputError(sidecar_path(source), f"'model' must be a string, got {name!r}")
    if model_name is None:
        name = _check_sidecar_model(name, meta.get("genotype"), source)
    # Seeded so that a rebuild is deterministic; the weights are overwritten right after.
    with seeded(0):
        try:
            genotype = meta.get("genotype")
            if isinstance(genotype, dict) and (
                model_name is None or model_name == meta.get("model")
            ):
                from nasaudit.models.darts_network import build_genotype_network

                return build_genotype_network(
                    _genotype_from_record(genotype, source), num_classes=num_classes, **kwargs
                )
            return build_model(str(name), num_classes, **kwargs)
        except TypeError as exc:
            raise InputError(source, f"model kwargs {kwargs} do not fit {name!r}: {exc}") from None
        except InputError as exc:
            if exc.source == "--model" and model_name is not None:
                raise  # the name came from --model: the flag is at fault
            if exc.source is not None and (exc.source.startswith("--") or exc.source in kwargs):
                # The model name or a size (width, C, layers) read from the sidecar is bad:
                # name the .json file, not a command-line flag that was never given.
                problem = exc.problem
                if exc.source == "--model":
                    problem = "'model': " + problem.replace(" nor a genotype name or file", " nor a genotype")
                raise InputError(sidecar_path(source), problem) from None
            raise


def load_checkpoint_model(
    checkpoint: str | Path,
    *,
    model_name: str | None = None,
    num_classes: int | None = None,
    device: str | torch.device = "cpu",
) -> tuple[ImageClassifier, dict[str, Any]]:
    """Rebuild a trained model from `checkpoint` (.pth) and its JSON sidecar.

    Args:
        checkpoint: path of the .pth file (read with weights_only=True).
        model_name: overrides the sidecar's model (needed when there is no sidecar).
        num_classes: overrides the sidecar; by default the sidecar's value, else the number of
            rows of the checkpoint's ``classifier.weight``.
        device: where to put the model ("cpu", "cuda", "auto", or a torch.device).
    Returns:
        (model in eval mode on `device`, sidecar dict or {} when there is none).
    Raises InputError (one line) for a missing/corrupt checkpoint, a malformed sidecar, or
    weights that do not fit the model.
    """
    path = Path(checkpoint)
    state = load_training_state(path)
    meta = read_sidecar(path) or {}
    weights = state["model"]
    if not (model_name or meta.get("model")):
        raise InputError(path, "no sidecar names the model; pass --model NAME|FILE")
    if num_classes is None:
        num_classes = meta.get("num_classes")
    if num_classes is None and isinstance(weights.get("classifier.weight"), torch.Tensor):
        num_classes = int(weights["classifier.weight"].shape[0])
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise InputError(path, "cannot tell the number of classes; pass num_classes")
    if num_classes > MAX_CLASSES:
        # The classifier is a num_classes x features matrix: 1e9 classes would ask for terabytes.
        raise InputError(sidecar_path(path), f"num_classes must be at most {MAX_CLASSES}, got {num_classes}")
    model = build_from_sidecar(meta, model_name=model_name, num_classes=num_classes, source=path)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        name = model_name or meta.get("model")
        raise InputError(path, f"weights do not fit model {name!r}: {first_line(exc)}") from None
    model = prepare_model(model, resolve_device(device))
    model.eval()
    return model, meta
