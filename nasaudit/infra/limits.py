"""Every size nasaudit accepts from outside, bounded before it allocates, extracts or spawns.

Sizes arrive from flags, audit configs, checkpoint sidecars and archives. Each is checked here
against one named limit, and the error names the limit, so a typo (C = 100000) or a hostile file
is a one-line refusal, not a 240 GB allocation or a process storm.
"""

from __future__ import annotations

from nasaudit.infra.errors import InputError

# A model's weights: 500M parameters (2 GB in fp32, about 8 GB with Adam's state) is far above
# every network in the study (the largest manual baseline has about 23M).
MAX_MODEL_PARAMETERS = 500_000_000
# Classes a data set, sidecar or imported classifier may have.
MAX_CLASSES = 100_000
# Per-dimension caps a sidecar or config may state, checked before even the size estimate.
MAX_MODEL_SIZES = {"C": 1024, "width": 1024, "layers": 256}
MAX_OTHER_INT = 1 << 20
# Units one audit plans (models x seeds x stages x parameter sets).
MAX_PLANNED_UNITS = 20_000
MAX_SEEDS = 1_000
# A seed is fed to torch.Generator.manual_seed and numpy: 0..2^63-1 on every platform.
MAX_SEED = 2**63 - 1
# Bytes of one TOML config (audit or search) read before parsing.
MAX_CONFIG_BYTES = 4 << 20
MAX_SWEEP_POINTS = 1_000
# Worker processes or Ray workers one machine is asked to start.
MAX_WORKERS = 256
# A checkpoint file larger than this is refused before it is read (the largest supported
# network, wide_resnet50_2, is about 270 MB in fp32).
MAX_FILE_BYTES = 4 << 30
# Elements one tensor in a foreign checkpoint may declare (2**28: 1 GiB in fp32), checked on its
# shape before anything touches its storage.
MAX_TENSOR_ELEMENTS = 1 << 28
# Bytes one archive may unpack to (the CIFAR archives unpack to under 200 MB).
MAX_EXTRACTED_BYTES = 2 << 30
# Bytes one array read from a data file may declare (an ImageNet32 training batch is ~400 MB).
MAX_ARRAY_BYTES = 2 << 30


def check_at_most(value: int, limit: int, what: str, source: str | None, *, limit_name: str) -> int:
    """`value`, or InputError naming `limit_name` when it exceeds `limit`."""
    if value > limit:
        raise InputError(source, f"{what} is {value:,}, above nasaudit's limit of {limit:,} ({limit_name})")
    return value


def check_parameter_count(count: int, name: str, source: str | None = None) -> int:
    """InputError when model `name` would have more than MAX_MODEL_PARAMETERS parameters."""
    return check_at_most(count, MAX_MODEL_PARAMETERS, f"the parameter count of {name}", source,
                         limit_name="MAX_MODEL_PARAMETERS")
