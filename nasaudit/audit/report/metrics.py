"""How to read one number per (model, seed) out of a stored record: the report's metrics."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

NAS, MANUAL = "nas", "manual"


def num(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def at_path(record: dict, *keys: str) -> Any:
    cur: Any = record
    for key in keys:
        if not isinstance(cur, dict) or key not in cur:
            return None
        cur = cur[key]
    return cur


def first_num(record: dict, *paths: tuple[str, ...]) -> float | None:
    """The first numeric value found along any of the key paths."""
    for p in paths:
        value = num(at_path(record, *p))
        if value is not None:
            return value
    return None


def last_num(record: dict, key: str) -> float | None:
    values = record.get(key)
    return num(values[-1]) if isinstance(values, list) and values else None


def sweep_mean(record: dict) -> float | None:
    values = [num(v) for v in record.get("asr") or []]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def length(*keys: str) -> Callable[[dict], int | None]:
    """A count reader: the length of the list at `keys` in a record (None when absent)."""
    def read(record: dict) -> int | None:
        value = at_path(record, *keys)
        return len(value) if isinstance(value, list) else None
    return read


def tpr_at(record: dict, fpr: float) -> float | None:
    """The TPR a membership record with `fprs` and `tpr_at_fpr` lists gives at false-positive
    rate `fpr` (None when it did not ask for it, or could not resolve it with its non-members)."""
    fprs, tprs = record.get("fprs"), record.get("tpr_at_fpr")
    if not isinstance(fprs, list) or not isinstance(tprs, list) or len(fprs) != len(tprs):
        return None
    for f, t in zip(fprs, tprs, strict=True):
        if num(f) is not None and abs(float(f) - fpr) <= 1e-12:
            return num(t)
    return None


def net_of_clean(record: dict) -> float | None:
    """A backdoor's ASR minus the same trigger's ASR on the clean model (the trigger alone)."""
    asr, clean = num(record.get("asr")), num(record.get("clean_model_asr"))
    return None if asr is None or clean is None else asr - clean


@dataclass(frozen=True)
class Metric:
    """A number per (model, seed) read from one stage/unit name's record.

    direction: what the study reported for NAS relative to manual models ("higher"/"lower"),
    None where it reported no direction. vulnerability: a security metric (a row of the
    correlation table) rather than an explanatory property (a column).
    """

    key: str
    title: str
    stage: str  # "clean" | "probe" | "probe_init" | "attack"
    name: str  # unit name ("pgd", "gradvar", ...)
    read: Callable[[dict], float | None]
    direction: str | None = None
    vulnerability: bool = False
    note: str = ""
    unit: str = ""  # shown in plot labels: "fraction", "nats", "log10", ...; "" -> from the key
    count: Callable[[dict], int | None] | None = None  # a rate's denominator in one record
    family: str = ""  # groups rows of the forest plot ("evasion", ...); "" -> the unit name

    def __post_init__(self) -> None:
        if not self.unit:
            object.__setattr__(self, "unit", _unit_of(self.key))
        if not self.family:
            object.__setattr__(self, "family", self.name.replace("_", " "))

    def rate(self, record: dict) -> tuple[int, int] | None:
        """(successes, n) behind this metric's value in `record`, for a rate with a recorded n."""
        value = self.read(record)
        n = self.count(record) if self.count is not None and value is not None else None
        if not n:
            return None
        return int(round(value * n)), int(n)

    @property
    def label(self) -> str:
        """The title with its unit, for plot axes and rows."""
        return f"{self.title} [{self.unit}]" if self.unit else self.title


UNITS = {"asr": "fraction", "cad": "fraction", "acc": "fraction", "ace": "nats", "kl": "nats", "auc": "AUC",
         "gradvar": "log10", "curvature": "eigenvalue", "contour": "loss"}


def _unit_of(key: str) -> str:
    for token, unit in UNITS.items():
        if token in key:
            return unit
    return ""


# The one metric every audit has; each report section declares its own (`sections/`).
CLEAN_ACC = Metric("clean_acc", "clean test accuracy", "clean", "clean_accuracy",
                   lambda r: num(r.get("test_acc")), None, False, "comparable (95-97% on CIFAR-10)",
                   count=lambda r: r.get("n_test") if isinstance(r.get("n_test"), int) else None,
                   family="accuracy")
CELL_METRICS = ("depth", "width", "skip_connects")
