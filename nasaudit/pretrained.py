"""Pretrained checkpoints of other code bases, read exactly into nasaudit models.

A *layout* is the way one code base saves a trained CIFAR network: which container the file
holds, the state-dict key of every tensor, their order, and how that code normalised its inputs.
`LAYOUTS` is the list of names (`darts`, `trojanzoo`, `kuangliu`, `nasaudit`); `auto` picks one
from the file's keys and says why.

* ``darts``: DARTS's `NetworkCIFAR` (quark0/darts `cnn/model.py`, `cnn/operations.py`), reused by
  P-DARTS, PC-DARTS, SGAS and DrNAS: a raw state dict (`stem.*`, `cells.I.preprocess{0,1}.*`,
  `cells.I._ops.K.*`, `auxiliary_head.features.{2,3,5,6}.*`, `classifier.*`), no
  `num_batches_tracked` (PyTorch 0.3), often in the legacy (non-zip) serialisation; a
  `{"state_dict": ...}` wrapper or a DataParallel `module.` prefix is accepted. Inputs were
  normalised in DARTS's data pipeline (`cnn/utils.py`: CIFAR_MEAN, CIFAR_STD).
* ``trojanzoo``: a TrojanZoo / autovul model file (`{model_dir}/image/{dataset}/{model}.pth`,
  the state dict of TrojanZoo's `_ImageModel`, optionally under `_model.`): DARTS-family
  networks (`features.stem`, `features.cells.I._ops.K.{dil_conv1,conv1,bn,reduce.conv1,...}`,
  `classifier.fc`, `auxiliary_head.features.{2,3,5,6}`) and `resnet18_comp` /
  `wide_resnet50_2_comp` (torchvision ResNets with a 3x3 stride-1 stem: `features.conv1`, ...,
  `classifier.fc`). TrojanZoo's other CIFAR baselines differ from nasaudit's and are refused,
  naming the difference (`_trojanzoo_refusal`).
* ``kuangliu``: kuangliu/pytorch-cifar's ResNet18 (`models/resnet.py`), saved by its `main.py`
  as `{"net": state_dict, "acc": ..., "epoch": ...}` with DataParallel's `module.` prefix:
  `conv1`, `bn1`, `layerL.B.{conv1,bn1,conv2,bn2,shortcut.{0,1}}`, `linear`. nasaudit's
  resnet18 has the same modules in the same order (`shortcut` is our `downsample`, `linear` our
  `classifier`; kuangliu's `avg_pool2d(out, 4)` is our global pool at 32x32).
* ``nasaudit``: nasaudit's own checkpoint and sidecar (`nasaudit.infra.checkpoint`).

Every file is read with `nasaudit.infra.io.safe_torch_load` (weights_only: tensors and plain
containers, never code). The network is first built on the meta device (no memory) and every
tensor of the file is matched to one of its parameters or buffers, by name for the ResNets and by
structure for the DARTS-family cells (per stem / preprocess / op / head, the tensors in order,
each with its shape): genotype, C, layers and the auxiliary head are checked against the file.
Only then are the file's own tensors assigned (`load_state_dict(assign=True)`), with the layout's
normalisation moved into the model's `Normalize` layer. What the weights cannot tell is said in
`ImportedModel.notes`: parameter-free ops (pools, identity skips, `none`) and which inputs an op
reads are taken from the genotype as given.

`foreign_state_dict` is the inverse: the object a layout's code would save for a nasaudit model
(exact key names and order); tests and `benchmarks/pretrained.py` build their files with it.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nasaudit.infra.errors import InputError
from nasaudit.infra.limits import MAX_CLASSES, MAX_FILE_BYTES, MAX_MODEL_SIZES, MAX_TENSOR_ELEMENTS

__all__ = [
    "LAYOUTS",
    "ImportedModel",
    "Layout",
    "detect_layout",
    "file_sha256",
    "foreign_state_dict",
    "layout_names",
    "layout_recipe",
    "read_pretrained",
    "save_imported",
]

# Keys of a state dict an error message lists at most.
_SHOWN = 3

# Normalisations of the training code of each layout (CIFAR-10, pixel units in [0, 1]).
DARTS_CIFAR10 = ((0.49139968, 0.48215827, 0.44653124), (0.24703233, 0.24348505, 0.26158768))
KUANGLIU_CIFAR10 = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))


@dataclass(frozen=True)
class Layout:
    """One code base's way of saving a CIFAR network.

    name: the layout's name (a key of LAYOUTS); source: where the key names and the
    normalisation come from; normalization: data set -> (mean, std) its training code used
    (absent data sets need --mean/--std); recipe: nasaudit.training.TrainConfig fields of its
    published training script, used when an audit retrains the architecture (poisoning) or
    fine-tunes the weights (backdoor); genotype: whether the layout holds DARTS-family cells;
    trains_on_full_train_split: its training script fits the whole training split (recorded as
    trained_on = "{dataset}-train"; a nasaudit sidecar says its own split instead).
    """

    name: str
    description: str
    source: str
    normalization: dict[str, tuple[tuple[float, ...], tuple[float, ...]]]
    recipe: dict[str, Any]
    genotype: bool
    trains_on_full_train_split: bool = True


# The recipes: what the layout's own training script does (see each source).
_DARTS_RECIPE = {  # quark0/darts cnn/train.py with --auxiliary --cutout (the published model)
    "epochs": 600, "batch_size": 96, "lr": 0.025, "momentum": 0.9, "weight_decay": 3e-4,
    "grad_clip": 5.0, "auxiliary_weight": 0.4, "drop_path_prob": 0.2, "cutout": 16,
    "val_fraction": 0.0,
}
_TROJANZOO_RECIPE = {  # autovul bash/train.sh: 200 epochs, batch 96, cutout, clip 5, lr 0.025 cosine
    "epochs": 200, "batch_size": 96, "lr": 0.025, "momentum": 0.9, "weight_decay": 5e-4,
    "grad_clip": 5.0, "auxiliary_weight": 0.4, "drop_path_prob": 0.0, "cutout": 16,
    "val_fraction": 0.0,
}
_KUANGLIU_RECIPE = {  # kuangliu/pytorch-cifar main.py: SGD 0.1, momentum 0.9, wd 5e-4, cosine 200
    "epochs": 200, "batch_size": 128, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4,
    "grad_clip": 0.0, "auxiliary_weight": 0.0, "drop_path_prob": 0.0, "cutout": 0,
    "val_fraction": 0.0,
}

# The registry: its keys are the list of layout names (plus "auto").
LAYOUTS: dict[str, Layout] = {
    "darts": Layout(
        "darts", "DARTS-family NetworkCIFAR state dict (DARTS, P-DARTS, PC-DARTS, SGAS, DrNAS)",
        "quark0/darts cnn/model.py, cnn/operations.py; normalisation cnn/utils.py",
        {"cifar10": DARTS_CIFAR10}, _DARTS_RECIPE, genotype=True),
    "trojanzoo": Layout(
        "trojanzoo", "TrojanZoo / autovul model file ({model_dir}/image/{dataset}/{model}.pth)",
        "ain-soph/trojanzoo trojanvision/utils/model_archs/darts/{features,operations}.py, "
        "trojanvision/models/nas/darts.py, normal/resnet.py; autovul datasets/normal/cifar.py",
        {"cifar10": DARTS_CIFAR10, "cifar100": DARTS_CIFAR10}, _TROJANZOO_RECIPE, genotype=True),
    "kuangliu": Layout(
        "kuangliu", "kuangliu/pytorch-cifar ResNet18 checkpoint ({'net', 'acc', 'epoch'})",
        "kuangliu/pytorch-cifar models/resnet.py, main.py",
        {"cifar10": KUANGLIU_CIFAR10}, _KUANGLIU_RECIPE, genotype=False),
    "nasaudit": Layout(
        "nasaudit", "nasaudit's own checkpoint and JSON sidecar", "nasaudit/infra/checkpoint.py",
        {}, {}, genotype=True, trains_on_full_train_split=False),
}
AUTO = "auto"


def layout_names() -> list[str]:
    """The layout names and "auto", as the CLI and the audit config accept them."""
    return [*LAYOUTS, AUTO]


def layout_recipe(name: str) -> dict[str, Any]:
    """TrainConfig fields of layout `name`'s published training (empty for "nasaudit")."""
    return dict(LAYOUTS[name].recipe)


@dataclass
class ImportedModel:
    """A foreign checkpoint read into a nasaudit model.

    model: ImageClassifier in eval mode on the CPU, with the file's weights and the layout's
    normalisation inside (pixels in [0, 1] in, logits out); model_name / model_kwargs: what
    `build_model` rebuilds it from (a genotype spec or a baseline name); genotype: the Genotype
    (None for baselines); mean / std and normalization_from: the normalisation and where it came
    from; recipe: TrainConfig fields of the layout's training; trained_on: "{dataset}-train"
    when the layout's training script fits the whole training split, else None; notes: what the
    reader did that a user should know (key names mapped by structure, counters filled, ops the
    weights cannot check); meta: the nasaudit sidecar of a "nasaudit" file.
    """

    model: Any
    layout: str
    how: str  # why this layout ("given" or what `auto` recognised)
    source: Path
    sha256: str
    model_name: str
    model_kwargs: dict[str, Any]
    genotype: Any
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    normalization_from: str
    recipe: dict[str, Any]
    trained_on: str | None
    notes: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Reading the file
# --------------------------------------------------------------------------------------------
def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of the file's bytes (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while block := handle.read(chunk):
                digest.update(block)
    except FileNotFoundError:
        raise InputError(path, "checkpoint not found") from None
    except IsADirectoryError:
        raise InputError(path, "is a directory, not a checkpoint file") from None
    except OSError as exc:
        raise InputError(path, f"cannot read the checkpoint ({exc.strerror or exc})") from None
    return digest.hexdigest()


def _load(path: Path) -> Any:
    """The file's object, read weights-only; bounded in size first."""
    from nasaudit.infra.io import safe_torch_load

    if path.is_dir():
        raise InputError(path, "is a directory, not a checkpoint file")
    if path.is_file() and path.stat().st_size > MAX_FILE_BYTES:
        raise InputError(path, f"is {path.stat().st_size:,} bytes, more than the {MAX_FILE_BYTES:,} "
                               "any supported network needs (MAX_FILE_BYTES)")
    return safe_torch_load(path)


def _is_state(obj: Any) -> bool:
    import torch

    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _unwrap(obj: Any, path: Path) -> tuple[dict[str, Any], str]:
    """(state dict, container) of a loaded file: a bare state dict, kuangliu's {"net": ...},
    DARTS forks' {"state_dict": ...} or nasaudit's {"format", "model", ...}."""
    if not isinstance(obj, dict) or not obj:
        raise InputError(path, f"holds a {type(obj).__name__}, not a state dict of tensors")
    for wrapper in ("net", "state_dict", "model"):
        inner = obj.get(wrapper)
        if isinstance(inner, dict) and wrapper in obj:
            if not _is_state(inner):
                raise InputError(path, f"'{wrapper}' is not a state dict of tensors")
            return inner, wrapper
    if _is_state(obj):
        return obj, "state dict"
    bad = next((k for k, v in obj.items() if not isinstance(k, str) or not hasattr(v, "shape")), None)
    raise InputError(path, f"entry {str(bad)[:80]!r} is not a tensor; expected a state dict (or "
                           "{'net': ...}, {'state_dict': ...}, {'model': ...})")


def _strip_prefix(state: dict[str, Any], path: Path) -> tuple[OrderedDict, str]:
    """The state dict without a prefix every key shares (DataParallel's "module.",
    TrojanZoo's "_model."), and the prefix removed ("" when none)."""
    keys = list(state)
    for prefix in ("module.", "_model."):
        if all(k.startswith(prefix) for k in keys):
            return OrderedDict((k[len(prefix):], v) for k, v in state.items()), prefix
        if any(k.startswith(prefix) for k in keys):
            odd = next(k for k in keys if not k.startswith(prefix))
            raise InputError(path, f"some keys start with {prefix!r} and some ({odd!r}) do not")
    return OrderedDict(state), ""


def _check_tensors(state: dict[str, Any], path: Path) -> None:
    """Every entry a tensor of at most MAX_TENSOR_ELEMENTS elements, checked on its shape only
    (nothing is read or computed from a declared giant)."""
    for key, value in state.items():
        numel = math.prod(int(s) for s in value.shape)
        if numel > MAX_TENSOR_ELEMENTS:
            raise InputError(path, f"{key} declares shape {list(value.shape)} ({numel:,} elements), more "
                                   f"than any supported network has ({MAX_TENSOR_ELEMENTS:,}, "
                                   "MAX_TENSOR_ELEMENTS)")


_DARTS_SIGNS = ("stem.0.weight", "classifier.weight")


def detect_layout(obj: Any, path: str | Path) -> tuple[str, str]:
    """(layout name, why) for a loaded file object; InputError when no layout fits."""
    path = Path(path)
    if isinstance(obj, dict) and "format" in obj and isinstance(obj.get("model"), dict):
        return "nasaudit", "a nasaudit checkpoint ({'format', 'model', ...})"
    state, wrapper = _unwrap(obj, path)
    state, prefix = _strip_prefix(state, path)
    keys = set(state)
    via = f" ({wrapper} wrapper)" if wrapper not in ("state dict",) else ""
    via += f", prefix {prefix!r}" if prefix else ""
    if "normalize.mean" in keys and any(k.startswith("body.") for k in keys):
        return "nasaudit", f"nasaudit key names (normalize.mean, body.*){via}"
    if "linear.weight" in keys and "conv1.weight" in keys and any(k.startswith("layer1.") for k in keys):
        return "kuangliu", f"kuangliu ResNet key names (conv1, layer1.*, linear){via}"
    if any(k.startswith("features.") for k in keys) and any(k.startswith("classifier.fc") for k in keys):
        return "trojanzoo", f"TrojanZoo key names (features.*, classifier.fc*){via}"
    if all(k in keys for k in _DARTS_SIGNS) and any(re.match(r"cells\.\d+\._ops\.", k) for k in keys):
        return "darts", f"DARTS NetworkCIFAR key names (stem.0, cells.*._ops.*, classifier){via}"
    shown = ", ".join(sorted(keys)[:_SHOWN])
    raise InputError(path, f"no known layout fits (darts, trojanzoo, kuangliu, nasaudit); its keys "
                           f"begin {shown}, ...")


# --------------------------------------------------------------------------------------------
# Key names: nasaudit's -> each layout's (exact, the pinned code's), and the anchors of a cell
# --------------------------------------------------------------------------------------------
_OURS_ANCHOR = (
    (re.compile(r"^body\.stem\.(.+)$"), lambda m: ("stem", m[1])),
    (re.compile(r"^body\.cells\.(\d+)\.(preprocess[01])\.(.+)$"), lambda m: (f"cells.{m[1]}.{m[2]}", m[3])),
    (re.compile(r"^body\.cells\.(\d+)\.ops\.(\d+)\.(.+)$"), lambda m: (f"cells.{m[1]}._ops.{m[2]}", m[3])),
    (re.compile(r"^body\.auxiliary_head\.(.+)$"), lambda m: ("auxiliary_head", m[1])),
    (re.compile(r"^classifier\.(.+)$"), lambda m: ("classifier", m[1])),
)
_THEIRS_ANCHOR = re.compile(
    r"^(stem|cells\.\d+\.preprocess[01]|cells\.\d+\._ops\.\d+|auxiliary_head|classifier)\.(.+)$")


def _our_anchor(key: str) -> tuple[str, str] | None:
    """(anchor, rest) of a genotype network's key; None for normalize.* (ours only)."""
    for pattern, make in _OURS_ANCHOR:
        m = pattern.match(key)
        if m:
            return make(m)
    if key.startswith("normalize."):
        return None
    raise KeyError(key)  # a module nasaudit added without teaching this reader: a test fails


def _darts_rest(anchor: str, rest: str) -> str:
    """DARTS names inside an anchor: SepConv is one Sequential of 8 (ReLU, dw, pw, BN, ReLU, dw,
    pw, BN), so our op.A.op.B is its op.(4A + B); the auxiliary head's Sequential starts with a
    ReLU and an AvgPool, so our features.N is its features.(N + 2)."""
    m = re.match(r"^op\.([01])\.op\.([123])\.(.+)$", rest)
    if "._ops." in anchor and m:
        return f"op.{4 * int(m[1]) + int(m[2])}.{m[3]}"
    m = re.match(r"^features\.(\d+)\.(.+)$", rest)
    if anchor == "auxiliary_head" and m:
        return f"features.{int(m[1]) + 2}.{m[2]}"
    return rest


_TZ_CONV_BN = {"1": "conv1", "2": "conv2", "3": "bn"}


def _trojanzoo_rest(anchor: str, rest: str) -> str:
    """TrojanZoo names (trojanvision/utils/model_archs/darts/operations.py `get_op`): a 1x1
    ReLU-conv-BN is (relu, conv, bn); FactorizedReduce is (relu, reduce.{conv1,conv2}, bn);
    SepConv is (dil_conv1, dil_conv2), each DilConv (relu, conv1, conv2, bn); conv_7x1_1x7 is
    (relu, conv1, conv2, bn); the auxiliary head is (features, flatten, classifier)."""
    if anchor == "stem":  # nn.Sequential(conv, BN), as in DARTS
        return rest
    if anchor == "classifier":
        return f"fc.{rest}"
    if anchor == "auxiliary_head":
        return _darts_rest(anchor, rest)
    m = re.match(r"^conv_([12])\.(.+)$", rest)
    if m:
        return f"reduce.conv{m[1]}.{m[2]}"
    if ".preprocess" in anchor:
        m = re.match(r"^op\.([12])\.(.+)$", rest)
        return f"{'conv' if m[1] == '1' else 'bn'}.{m[2]}" if m else rest
    m = re.match(r"^op\.([01])\.op\.([123])\.(.+)$", rest)
    if m:
        return f"dil_conv{int(m[1]) + 1}.{_TZ_CONV_BN[m[2]]}.{m[3]}"
    m = re.match(r"^(?:op\.)?([123])\.(.+)$", rest)  # DilConv's op.N, conv_7x1_1x7's N
    if m:
        return f"{_TZ_CONV_BN[m[1]]}.{m[2]}"
    return rest


def _their_genotype_key(layout: str, our_key: str) -> str | None:
    """The exact key layout `layout`'s code uses for our genotype-network key (None: ours only)."""
    found = _our_anchor(our_key)
    if found is None:
        return None
    anchor, rest = found
    if layout == "darts":
        return f"{anchor}.{_darts_rest(anchor, rest)}"
    name = f"{anchor}.{_trojanzoo_rest(anchor, rest)}"
    return f"features.{name}" if anchor.startswith(("stem", "cells")) else name


def _their_resnet_key(layout: str, our_key: str) -> str | None:
    """kuangliu: body.X -> X, downsample -> shortcut, classifier -> linear; TrojanZoo's
    *_comp ResNets: body.X -> features.X, classifier -> classifier.fc."""
    if our_key.startswith("normalize."):
        return None
    if layout == "kuangliu":
        if our_key.startswith("classifier."):
            return "linear." + our_key[len("classifier."):]
        return our_key[len("body."):].replace(".downsample.", ".shortcut.")
    if our_key.startswith("classifier."):
        return "classifier.fc." + our_key[len("classifier."):]
    return "features." + our_key[len("body."):]


def _is_genotype_model(model: Any) -> bool:
    return hasattr(model.body, "cells")


def foreign_state_dict(model: Any, layout: str, *, prefix: str = "", wrap: bool = True) -> Any:
    """What layout `layout`'s code would save for nasaudit `model` (same weights): exact key
    names in that code's order, `num_batches_tracked` dropped for DARTS (PyTorch 0.3 had none),
    no normalisation buffers (those codes normalise in the data pipeline). kuangliu's is wrapped
    as {"net": {"module." + key: ...}, "acc", "epoch"} unless `wrap` is false; `prefix` is put in
    front of every key (e.g. "_model." for TrojanZoo's wrapper). Tensors are detached clones."""
    if layout not in ("darts", "trojanzoo", "kuangliu"):
        raise ValueError(f"no foreign layout {layout!r}")
    genotype_net = _is_genotype_model(model)
    if layout == "kuangliu" and genotype_net:
        raise ValueError("kuangliu's layout holds ResNets only")
    items = []
    for key, value in model.state_dict().items():
        their = _their_genotype_key(layout, key) if genotype_net else _their_resnet_key(layout, key)
        if their is None or (layout == "darts" and key.endswith("num_batches_tracked")):
            continue
        items.append((their, value.detach().clone()))
    if layout == "trojanzoo" and genotype_net:
        # TrojanZoo's _DARTS registers the auxiliary head after the classifier.
        items.sort(key=lambda kv: kv[0].startswith("auxiliary_head."))
    if layout == "kuangliu" and wrap:
        return {"net": OrderedDict((f"module.{k}", v) for k, v in items), "acc": 95.0, "epoch": 199}
    return OrderedDict((prefix + k, v) for k, v in items)


# --------------------------------------------------------------------------------------------
# Matching a file to a network built on the meta device
# --------------------------------------------------------------------------------------------
def _shape(t: Any) -> list[int]:
    return [int(s) for s in t.shape]


def _op_names(model: Any) -> dict[str, str]:
    """anchor "cells.I._ops.K" -> the genotype's op name, for messages."""
    names = {}
    genotype = model.body.genotype
    for i, cell in enumerate(model.body.cells):
        pairs = genotype.reduce if cell.reduction else genotype.normal
        for k, (op, _) in enumerate(pairs):
            names[f"cells.{i}._ops.{k}"] = op
    return names


def _describe_file_cells(state: dict[str, Any], stem_key: str) -> str:
    """"20 cells, a 108-channel stem (C=36)" from a file's keys, for messages."""
    cells = {int(m[1]) for k in state if (m := re.match(r"^(?:features\.)?cells\.(\d+)\.", k))}
    stem = state.get(stem_key)
    stem_text = ""
    if stem is not None and len(stem.shape) == 4:
        channels = int(stem.shape[0])
        stem_text = f", a {channels}-channel stem" + (f" (C={channels // 3})" if channels % 3 == 0 else "")
    return f"{len(cells)} cells (cells.0..{max(cells) if cells else '?'}){stem_text}"


def _match_genotype(model: Any, state: OrderedDict, layout: str, path: Path, what: str,
                    notes: list[str]) -> dict[str, Any]:
    """Our state-dict key -> the file's tensor, per anchor by structure (the tensors of a stem,
    preprocess, op, head or classifier in order, each with its leaf name and shape)."""
    features = "features." if layout == "trojanzoo" else ""
    stem_key = f"{features}stem.0.weight"
    ours: dict[str, list[tuple[str, str, list[int]]]] = OrderedDict()
    counters: dict[str, str] = {}
    for key, value in model.state_dict().items():
        found = _our_anchor(key)
        if found is None:
            continue
        anchor, rest = found
        if rest.endswith("num_batches_tracked"):
            counters[key] = anchor
            continue
        ours.setdefault(anchor, []).append((key, rest.rsplit(".", 1)[-1], _shape(value)))
    theirs: dict[str, list[tuple[str, str, list[int]]]] = OrderedDict()
    their_counters: dict[str, Any] = {}
    for key, value in state.items():
        bare = key
        if features and key.startswith(features):
            bare = key[len(features):]
        m = _THEIRS_ANCHOR.match(bare)
        # TrojanZoo keeps stem and cells under features., the heads outside it; DARTS has no features.
        misplaced = bool(features) and (bare.startswith(("stem.", "cells.")) != key.startswith(features))
        if not m or misplaced:
            raise InputError(path, f"{key} is not a key of the {layout} layout of a DARTS-family network "
                                   f"(expected {features}stem.*, {features}cells.I.*, auxiliary_head.*, classifier.*)")
        anchor, rest = m[1], m[2]
        if rest.endswith("num_batches_tracked"):
            their_counters[key] = value
            continue
        theirs.setdefault(anchor, []).append((key, rest.rsplit(".", 1)[-1], _shape(value)))

    # Sizes first: they give the clearest message.
    stem = state.get(stem_key)
    ours_stem = ours["stem"][0][2]
    file_cells = {int(a.split(".")[1]) for a in theirs if a.startswith("cells.")}
    our_cells = {int(a.split(".")[1]) for a in ours if a.startswith("cells.")}
    if stem is None:
        raise InputError(path, f"has no {stem_key}: not a {layout} DARTS-family network")
    if _shape(stem) != ours_stem or file_cells != our_cells:
        raise InputError(path, f"the file has {_describe_file_cells(state, stem_key)}; {what} has "
                               f"{len(our_cells)} cells and a {ours_stem[0]}-channel stem")
    has_aux, want_aux = "auxiliary_head" in theirs, "auxiliary_head" in ours
    if has_aux != want_aux:
        hint = "pass --auxiliary (auxiliary = true)" if has_aux else "drop --auxiliary (auxiliary = false)"
        raise InputError(path, f"the file {'has an' if has_aux else 'has no'} auxiliary head "
                               f"(auxiliary_head.*) but {what} {'has none' if has_aux else 'has one'}; {hint}")
    ops = _op_names(model)
    for anchor in theirs:
        if anchor not in ours:
            op = ops.get(anchor)
            why = f"genotype op {op!r} has no parameters there" if op else "nasaudit's network has no such module"
            raise InputError(path, f"the file has tensors for {anchor} ({theirs[anchor][0][0]}) but {why}; "
                                   "wrong genotype?")
    mapping: dict[str, Any] = {}
    modules: dict[str, str] = {}
    exact = True
    for anchor, expected in ours.items():
        found = theirs.get(anchor, [])
        op = f" (genotype op {ops[anchor]!r})" if anchor in ops else ""
        if len(found) != len(expected) or any(
                (a[1], a[2]) != (b[1], b[2]) for a, b in zip(expected, found, strict=False)):
            i = next((j for j, (a, b) in enumerate(zip(expected, found, strict=False))
                      if (a[1], a[2]) != (b[1], b[2])), min(len(expected), len(found)))
            if i < len(found) and i < len(expected):
                detail = f"{found[i][0]} is {found[i][2]} where {expected[i][2]} is expected"
            elif len(found) < len(expected):
                detail = f"it holds {len(found)} tensors where {len(expected)} are expected"
            else:
                detail = f"{found[i][0]} is one tensor more than expected"
            hint = "wrong genotype?" if anchor in ops else "wrong C, genotype or number of classes?"
            raise InputError(path, f"{anchor}{op} does not fit {what}: {detail}; {hint}")
        for (our_key, leaf, _), (their_key, _, _) in zip(expected, found, strict=True):
            mapping[our_key] = state[their_key]
            exact = exact and their_key == _their_genotype_key(layout, our_key)
            if leaf == "running_var":  # pair the BatchNorm modules for their counters
                modules[our_key.rsplit(".", 1)[0]] = their_key.rsplit(".", 1)[0]
    # BatchNorm counters: the file's when it has them (PyTorch >= 0.4), else 0.
    filled = 0
    for our_key in counters:
        their_module = modules.get(our_key.rsplit(".", 1)[0])
        their_key = f"{their_module}.num_batches_tracked" if their_module else None
        if their_key in their_counters:
            mapping[our_key] = their_counters[their_key]
        else:
            import torch

            mapping[our_key] = torch.zeros((), dtype=torch.long)
            filled += 1
    if filled:
        notes.append(f"{filled} BatchNorm num_batches_tracked counters absent (PyTorch 0.3 files have "
                     "none): set to 0 (eval and fine-tuning use the running statistics and momentum)")
    if not exact:
        notes.append(f"tensors matched by structure: inner module names differ from the {layout} code "
                     "nasaudit pins (see nasaudit.pretrained); every shape and order was checked")
    notes.append("parameter-free ops (pools, identity skips, none) and the inputs each op reads "
                 "cannot be seen in weights: they are the given genotype's")
    return mapping


def _match_by_name(model: Any, state: OrderedDict, translate: Callable[[str], str | None],
                   path: Path, what: str, notes: list[str]) -> dict[str, Any]:
    """Our key -> the file's tensor, by the exact renaming `translate`; counters filled."""
    import torch

    expected = {}
    for key in model.state_dict():
        their = translate(key)
        if their is not None:
            expected[their] = key
    ours_sd = model.state_dict()
    mapping: dict[str, Any] = {}
    for their in state:
        if their not in expected:
            raise InputError(path, f"{their} is not a tensor of {what}")
    filled = 0
    for their, our in expected.items():
        if their not in state:
            if our.endswith("num_batches_tracked"):
                mapping[our] = torch.zeros((), dtype=torch.long)
                filled += 1
                continue
            raise InputError(path, f"has no {their}, which {what} has ({our})")
        if _shape(state[their]) != _shape(ours_sd[our]):
            raise InputError(path, f"{their} is {_shape(state[their])} where {what} has "
                                   f"{_shape(ours_sd[our])}")
        mapping[our] = state[their]
    if filled:
        notes.append(f"{filled} BatchNorm num_batches_tracked counters absent: set to 0")
    return mapping


# --------------------------------------------------------------------------------------------
# TrojanZoo: which networks it names like nasaudit's, and why the others are refused
# --------------------------------------------------------------------------------------------
def _trojanzoo_refusal(state: dict[str, Any]) -> str | None:
    """Why a TrojanZoo file cannot be one of nasaudit's networks, or None when it may be."""
    keys = set(state)
    conv1 = state.get("features.conv1.weight")
    if conv1 is not None and len(conv1.shape) == 4 and int(conv1.shape[-1]) == 7:
        return ("a TrojanZoo ResNet without _comp: its 7x7 stride-2 stem and max-pool are ImageNet's; "
                "nasaudit's resnet18 and wide_resnet50_2 are the 32x32 adaptation (TrojanZoo's "
                "resnet18_comp / wide_resnet50_2_comp)")
    if any(k.startswith("features.layer1.") for k in keys) and not any(
            k.startswith("features.layer4.") for k in keys):
        return ("TrojanZoo's resnext50_32x4d_comp drops layer4 and halves the fc input; nasaudit's "
                "resnext50_32x4d keeps all four stages")
    if any(k.startswith("features.denseblock") for k in keys):
        if "features.norm0.weight" not in keys:
            return ("TrojanZoo's densenet121_comp drops the stem's norm0 and relu0 with the pool "
                    "(conv0 feeds denseblock1 directly); nasaudit's densenet121 keeps conv0-norm0-relu0")
        return "a TrojanZoo DenseNet without _comp: ImageNet's 7x7 stride-2 stem and max-pool"
    if "classifier.fc1.weight" in keys:
        return ("TrojanZoo's vgg13_bn_comp has a 3-layer classifier (classifier.fc1..fc3, 512-512-K); "
                "nasaudit's vgg13_bn has a single Linear(512, K)")
    if any(k.startswith("features.block1.") for k in keys):
        return ("TrojanZoo's BiT (features.block1..4.unitNN) is not mapped: nasaudit's bit_m_r50x1 was "
                "not checked parameter for parameter against it")
    if any(re.match(r"^features\.\d+\.", k) for k in keys) and "classifier.fc.weight" in keys:
        return ("a TrojanZoo network with index-named features (DLA, VGG _comp_s, ...) that nasaudit "
                "does not map; supported: DARTS-family genotypes, resnet18_comp, wide_resnet50_2_comp")
    return None


def _trojanzoo_resnet_name(state: dict[str, Any]) -> str:
    return "wide_resnet50_2" if "features.layer1.0.conv3.weight" in state else "resnet18"


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------
def _check_norm(values: Sequence[float] | None, what: str, source: str) -> tuple[float, ...] | None:
    if values is None:
        return None
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise InputError(source, f"{what} must be 3 numbers, got {values!r}") from None
    if len(out) != 3 or not all(math.isfinite(v) for v in out):
        raise InputError(source, f"{what} must be 3 finite numbers (one per channel), got {values!r}")
    if what == "std" and any(v <= 0 for v in out):
        raise InputError(source, f"std must be positive, got {values!r}")
    return out


def _normalization(layout: Layout, dataset: str | None, mean, std, path: Path) -> tuple[tuple, tuple, str]:
    if (mean is None) != (std is None):
        raise InputError("--mean" if mean is None else "--std", "give both --mean and --std, or neither")
    if mean is not None:
        return mean, std, "given (--mean/--std)"
    if dataset in layout.normalization:
        m, s = layout.normalization[dataset]
        return tuple(m), tuple(s), f"the {layout.name} training code's for {dataset} ({layout.source})"
    known = ", ".join(layout.normalization) or "none"
    raise InputError(path, f"the {layout.name} layout's training code normalises {known}, not "
                           f"{dataset or 'this data set'}: give --mean and --std (mean = [...], std = [...])")


def _sizes(C: int | None, layers: int | None, width: int | None) -> dict[str, int]:
    from nasaudit.models.base import check_size

    kwargs = {}
    for key, value in (("C", C), ("layers", layers), ("width", width)):
        if value is None:
            continue
        check_size(key, value)
        if value > MAX_MODEL_SIZES[key]:
            raise InputError(f"--{key}", f"{key} must be at most {MAX_MODEL_SIZES[key]}, got {value}")
        kwargs[key] = value
    return kwargs


def _build_meta(name: str, num_classes: int, kwargs: dict[str, Any], mean, std) -> Any:
    """The network on the meta device: shapes only, nothing allocated."""
    import torch

    from nasaudit.models.registry import build_model

    try:
        with torch.device("meta"):
            return build_model(name, num_classes, mean=mean, std=std, **kwargs)
    except TypeError as exc:
        raise InputError("--model", f"{name!r} does not take {sorted(kwargs)}: {exc}") from None


def _classes(state: dict[str, Any], key: str, path: Path, num_classes: int | None) -> int:

    weight = state.get(key)
    if weight is None or len(weight.shape) != 2:
        raise InputError(path, f"has no 2-d {key} to tell the number of classes from")
    found = int(weight.shape[0])
    if not 1 <= found <= MAX_CLASSES:
        raise InputError(path, f"{key} has {found} rows; nasaudit allows 1..{MAX_CLASSES} classes")
    if num_classes is not None and num_classes != found:
        raise InputError(path, f"the classifier ({key}) has {found} classes but the data set has {num_classes}")
    return found


def _finish(model: Any, mapping: dict[str, Any], mean, std, path: Path) -> Any:
    """Assign the file's tensors (float32, contiguous) and the normalisation to the meta model."""
    import torch

    full = {}
    for key, ref in model.state_dict().items():
        if key == "normalize.mean":
            full[key] = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        elif key == "normalize.std":
            full[key] = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        else:
            value = mapping[key]
            if ref.dtype.is_floating_point:
                if not value.dtype.is_floating_point:
                    raise InputError(path, f"the tensor for {key} is {value.dtype}, not floating point")
                full[key] = value.detach().to(torch.float32).contiguous().clone()
            else:
                full[key] = value.detach().to(ref.dtype).reshape(ref.shape).clone()
    model.load_state_dict(full, strict=True, assign=True)
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_meta:  # every tensor must have come from the file or the normalisation
            raise InputError(path, f"{name} was not filled from the file")
    bad = next((k for k, v in full.items() if v.dtype.is_floating_point and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise InputError(path, f"the tensor for {bad} holds NaN or infinite values")
    return model.eval()


def read_pretrained(
    path: str | Path,
    layout: str = AUTO,
    *,
    model: str | None = None,
    C: int | None = None,
    layers: int | None = None,
    auxiliary: bool | None = None,
    width: int | None = None,
    num_classes: int | None = None,
    dataset: str | None = "cifar10",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> ImportedModel:
    """Read checkpoint `path` of `layout` ("auto" recognises it) into a nasaudit model.

    model: the genotype (name, file or "file.py:NAME") for DARTS-family layouts, or the manual
    baseline; defaults: resnet18 for kuangliu, the file's network family for TrojanZoo ResNets,
    the sidecar's for nasaudit; genotype layouts need it. C, layers (genotype networks, default
    36 and 20), width (baselines, default canonical) and auxiliary (default: whether the file
    has an auxiliary head) describe the network and are checked against every tensor shape.
    num_classes: the data set's (checked against the classifier); dataset picks the layout's
    normalisation; mean / std (3 numbers each) override it. Raises InputError(path, problem)
    for a file that does not fit, before anything is allocated beyond the file itself.
    """
    path = Path(path)
    if layout not in layout_names():
        raise InputError("--format", f"unknown layout {layout!r}; choose one of {', '.join(layout_names())}")
    mean = _check_norm(mean, "mean", "--mean")
    std = _check_norm(std, "std", "--std")
    kwargs = _sizes(C, layers, width)
    if auxiliary is not None and not isinstance(auxiliary, bool):
        raise InputError("--auxiliary", f"auxiliary must be true or false, got {auxiliary!r}")
    obj = _load(path)
    sha = file_sha256(path)
    if layout == AUTO:
        layout, how = detect_layout(obj, path)
        how = f"auto: {how}"
    else:
        how = "given"
    if layout == "nasaudit":
        return _read_nasaudit(obj, path, sha, how, model, kwargs, auxiliary, num_classes, mean, std)
    spec = LAYOUTS[layout]
    if isinstance(obj, dict) and "format" in obj and isinstance(obj.get("model"), dict):
        raise InputError(path, f"is a nasaudit checkpoint, not a {layout} file; use the nasaudit layout")
    state, _ = _unwrap(obj, path)
    state, _prefix = _strip_prefix(state, path)
    _check_tensors(state, path)
    notes: list[str] = []
    norm_mean, norm_std, norm_from = _normalization(spec, dataset, mean, std, path)
    genotype_file = any(re.match(r"^(features\.)?cells\.\d+\.", k) for k in state)

    if layout == "kuangliu" or (layout == "trojanzoo" and not genotype_file):
        if layout == "trojanzoo":
            refusal = _trojanzoo_refusal(state)
            if refusal:
                raise InputError(path, f"refused: {refusal}")
            default = _trojanzoo_resnet_name(state)
        else:
            default = "resnet18"
        name = model or default
        allowed = ("resnet18",) if layout == "kuangliu" else ("resnet18", "wide_resnet50_2")
        if name not in allowed:
            raise InputError(path, f"the {layout} layout of this file maps onto {' or '.join(allowed)} "
                                   f"only, not {name!r}")
        if any(k in kwargs for k in ("C", "layers")) or auxiliary:
            raise InputError("--model", f"{name} is a manual baseline: --C, --layers and --auxiliary do not apply")
        classes = _classes(state, "linear.weight" if layout == "kuangliu" else "classifier.fc.weight",
                           path, num_classes)
        net = _build_meta(name, classes, kwargs, norm_mean, norm_std)
        what = f"nasaudit's {name}" + (f" (width {kwargs['width']})" if "width" in kwargs else "")
        mapping = _match_by_name(net, state, lambda k: _their_resnet_key(layout, k), path, what, notes)
        genotype, model_name, model_kwargs = None, name, dict(kwargs)
    else:
        if layout == "darts" and not genotype_file:
            raise InputError(path, "has no cells.I.* keys: not a DARTS NetworkCIFAR state dict")
        if model is None:
            raise InputError("--genotype", f"a {layout} DARTS-family file needs its genotype: pass "
                                           "--genotype NAME|FILE (see `nasaudit genotypes`)")
        if "width" in kwargs:
            raise InputError("--width", "genotype networks take --C and --layers, not --width")
        from nasaudit.genotype import resolve_genotype
        from nasaudit.models.registry import is_manual_model

        if is_manual_model(model):
            raise InputError("--genotype", f"{model!r} is a manual baseline, but the file holds DARTS-family cells")
        genotype = resolve_genotype(model)
        has_aux = any(k.startswith("auxiliary_head.") for k in state)
        aux = has_aux if auxiliary is None else auxiliary
        if auxiliary is None and has_aux:
            notes.append("auxiliary head found in the file: kept (auxiliary = true)")
        model_kwargs = {"C": kwargs.get("C", 36), "layers": kwargs.get("layers", 20), "auxiliary": aux}
        cls_key = "classifier.fc.weight" if layout == "trojanzoo" else "classifier.weight"
        classes = _classes(state, cls_key, path, num_classes)
        net = _build_meta(model, classes, model_kwargs, norm_mean, norm_std)
        what = (f"genotype {model} at C={model_kwargs['C']}, layers={model_kwargs['layers']}"
                f"{', with auxiliary head' if aux else ''}")
        mapping = _match_genotype(net, state, layout, path, what, notes)
        model_name = model
        if layout == "trojanzoo":
            notes.append("TrojanZoo trains DARTS cells with a dropout after every op (dropout_p 0.2, no "
                         "parameters, off in eval) instead of drop path; nasaudit's cells have neither "
                         "when they fine-tune or retrain with this recipe (drop_path_prob 0)")
    imported = _finish(net, mapping, norm_mean, norm_std, path)
    trained_on = f"{dataset}-train" if spec.trains_on_full_train_split and dataset else None
    return ImportedModel(imported, layout, how, path, sha, model_name, model_kwargs, genotype, classes,
                         tuple(norm_mean), tuple(norm_std), norm_from, dict(spec.recipe), trained_on, notes)


def _read_nasaudit(obj: Any, path: Path, sha: str, how: str, model: str | None, kwargs: dict,
                   auxiliary: bool | None, num_classes: int | None, mean, std) -> ImportedModel:
    """A nasaudit checkpoint: the sidecar names the network (flags, when given, must agree)."""
    import torch

    from nasaudit.infra.checkpoint import build_from_sidecar, read_sidecar

    meta = read_sidecar(path) or {}
    state, wrapper = _unwrap(obj, path)
    if wrapper not in ("model", "state dict"):
        raise InputError(path, f"a nasaudit checkpoint holds its weights under 'model', not {wrapper!r}")
    state, _ = _strip_prefix(state, path)
    _check_tensors(state, path)
    classes = _classes(state, "classifier.weight", path, num_classes)
    side_kwargs = dict(meta.get("model_kwargs") or {}) if isinstance(meta.get("model_kwargs"), dict) else {}
    given = dict(kwargs)
    if auxiliary is not None:
        given["auxiliary"] = auxiliary
    for key, value in given.items():
        if meta and key in side_kwargs and side_kwargs[key] != value:
            raise InputError(path, f"its sidecar says {key}={side_kwargs[key]!r}, not {value!r}")
    name = model or meta.get("model")
    if not name:
        raise InputError(path, "no sidecar names the model; pass --genotype or --model")
    if model is not None and meta.get("model") not in (None, model):
        raise InputError(path, f"its sidecar names model {meta['model']!r}, not {model!r}")
    build_meta = {**meta, "model_kwargs": {**side_kwargs, **given}}
    with torch.device("meta"):
        net = build_from_sidecar(build_meta, model_name=model if not meta else None,
                                 num_classes=classes, source=path)
    notes: list[str] = []
    file_mean = state.get("normalize.mean")
    file_std = state.get("normalize.std")
    if file_mean is None or file_std is None:
        raise InputError(path, "has no normalize.mean / normalize.std: not a nasaudit model's state dict")
    norm_mean = mean if mean is not None else tuple(float(v) for v in file_mean.flatten())
    norm_std = std if std is not None else tuple(float(v) for v in file_std.flatten())
    norm_from = "given (--mean/--std)" if mean is not None else "the checkpoint's own Normalize layer"
    what = f"nasaudit's {name}"
    mapping = _match_by_name(net, state, lambda k: k, path, what, notes)
    imported = _finish(net, mapping, norm_mean, norm_std, path)
    genotype = getattr(getattr(imported, "body", None), "genotype", None)
    recipe = dict(meta.get("config") or {}) if isinstance(meta.get("config"), dict) else {}
    dataset = meta.get("dataset")
    trained_on = f"{dataset}-train" if isinstance(dataset, str) else None
    return ImportedModel(imported, "nasaudit", how, path, sha, str(name), dict(build_meta["model_kwargs"]),
                         genotype, classes, tuple(norm_mean), tuple(norm_std), norm_from, recipe,
                         trained_on, notes, meta)


# --------------------------------------------------------------------------------------------
# Writing the nasaudit checkpoint
# --------------------------------------------------------------------------------------------
def _trained_on(given: str | None, imported: ImportedModel) -> str | None:
    """The split to record: `given` ("unknown" records None), else the reader's."""
    value = imported.trained_on if given is None else given
    return None if value == "unknown" else value


def save_imported(imported: ImportedModel, checkpoint: str | Path, *, dataset: str,
                  config: dict[str, Any] | None = None, model_kwargs: dict[str, Any] | None = None,
                  trained_on: str | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write `imported` as a nasaudit checkpoint (.pth) and sidecar (.json), atomically.

    config: the TrainConfig dict recorded as how the model was trained (default: the layout's
    recipe over TrainConfig's defaults); model_kwargs: the build kwargs recorded (default the
    reader's); trained_on: the split recorded for membership inference ("unknown": none; None:
    the reader's). The sidecar's
    "imported" block names the source file, its sha256, the layout, the normalisation and where
    it came from, the genotype hash and the reader's notes. Returns the .pth path.
    """
    from nasaudit.genotype import genotype_hash, genotype_to_json
    from nasaudit.infra.checkpoint import save_training_state, versions, write_sidecar
    from nasaudit.models.base import count_parameters
    from nasaudit.training import TrainConfig

    checkpoint = Path(checkpoint)
    cfg = TrainConfig.from_dict({**(config if config is not None else imported.recipe)}, "recipe").to_dict()
    kwargs = dict(imported.model_kwargs if model_kwargs is None else model_kwargs)
    genotype = imported.genotype
    record = None
    ghash = None
    if genotype is not None:
        from nasaudit.infra.checkpoint import model_stem

        record = genotype_to_json(genotype, name=model_stem(imported.model_name))
        ghash = genotype_hash(genotype)
    state = {k: v.detach().cpu() for k, v in imported.model.state_dict().items()}
    save_training_state(checkpoint, {"model": state, "epoch": 0, "history": [], "config": cfg})
    meta = {
        "model": imported.model_name,
        "model_kwargs": kwargs,
        "genotype": record,
        "dataset": dataset,
        "num_classes": imported.num_classes,
        "mean": list(imported.mean),
        "std": list(imported.std),
        "parameters": count_parameters(imported.model),
        "config": cfg,
        "seed": cfg["seed"],
        "epoch": 0,
        "history": [],
        "versions": versions(),
        "imported": {
            "source": str(imported.source.resolve()),
            "sha256": imported.sha256,
            "format": imported.layout,
            "detected": imported.how,
            "normalization": {"mean": list(imported.mean), "std": list(imported.std),
                              "from": imported.normalization_from},
            "genotype_hash": ghash,
            "trained_on": _trained_on(trained_on, imported),
            "notes": list(imported.notes),
            **(extra or {}),
        },
    }
    write_sidecar(checkpoint, meta)
    return checkpoint
