"""How to read one number per (model, seed) out of a stored record: the report's metrics."""

from __future__ import annotations

import dataclasses
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
    unit: str = ""  # shown in plot labels: "fraction", "nats", "log10", ...
    count: Callable[[dict], int | None] | None = None  # a rate's denominator in one record

    def rate(self, record: dict) -> tuple[int, int] | None:
        """(successes, n) behind this metric's value in `record`, for a rate with a recorded n."""
        value = self.read(record)
        n = self.count(record) if self.count is not None and value is not None else None
        if not n:
            return None
        return int(round(value * n)), int(n)

    @property
    def family(self) -> str:
        """The attack or probe family the metric belongs to (groups rows of the forest plot)."""
        return FAMILIES.get(self.name, self.name.replace("_", " "))

    @property
    def label(self) -> str:
        """The title with its unit, for plot axes and rows."""
        return f"{self.title} [{self.unit}]" if self.unit else self.title


# unit name -> family, in the order the forest plot shows families.
FAMILIES = {
    "clean_accuracy": "accuracy",
    "pgd": "evasion", "nes": "evasion", "pgd_sweep": "evasion", "autoattack": "evasion",
    "poison": "poisoning", "backdoor": "backdoor",
    "knockoff": "stealing", "membership": "membership", "rmia": "membership",
    "model_reuse": "model reuse", "trace_leak": "architecture leak",
    "gradvar": "probes", "curvature": "probes", "contour_param": "probes", "contour_input": "probes",
}
UNITS = {"asr": "fraction", "cad": "fraction", "acc": "fraction", "ace": "nats", "kl": "nats", "auc": "AUC",
         "gradvar": "log10", "curvature": "eigenvalue", "contour": "loss"}


def _unit_of(key: str) -> str:
    for token, unit in UNITS.items():
        if token in key:
            return unit
    return ""


FLATTER = "NAS flatter (Fig. 11, Remark 2)"

METRICS: tuple[Metric, ...] = (
    Metric("clean_acc", "clean test accuracy", "clean", "clean_accuracy",
           lambda r: num(r.get("test_acc")), None, False, "comparable (95-97% on CIFAR-10)",
           count=lambda r: r.get("n_test") if isinstance(r.get("n_test"), int) else None),
    Metric("pgd_asr_ml", "PGD ASR, most-likely target", "attack", "pgd",
           lambda r: first_num(r, ("asr", "most_likely")), "higher", True, count=length("success", "most_likely")),
    Metric("pgd_asr_ll", "PGD ASR, least-likely target", "attack", "pgd",
           lambda r: first_num(r, ("asr", "least_likely")), "higher", True, count=length("success", "least_likely")),
    Metric("nes_asr_ml", "NES ASR, most-likely target", "attack", "nes",
           lambda r: first_num(r, ("asr", "most_likely")), "higher", True, count=length("success", "most_likely")),
    Metric("nes_asr_ll", "NES ASR, least-likely target", "attack", "nes",
           lambda r: first_num(r, ("asr", "least_likely")), "higher", True, count=length("success", "least_likely")),
    Metric("pgd_sweep_asr", "untargeted PGD ASR, mean over the eps sweep", "attack", "pgd_sweep",
           sweep_mean, "higher", True),
    # Today's standard beside the study's PGD (RobustBench); the study's direction, NAS less robust.
    Metric("autoattack_robust_acc", "AutoAttack robust accuracy", "attack", "autoattack",
           lambda r: num(r.get("robust_accuracy")), "lower", True,
           "correct and unbroken by the ensemble", count=length("robust")),
    Metric("poison_cad", "poisoning CAD at the largest p", "attack", "poison",
           lambda r: last_num(r, "cad"), "higher", True),
    Metric("backdoor_asr", "backdoor ASR net of the clean model's (first configured method)", "attack",
           "backdoor", net_of_clean, "higher", True),
    Metric("backdoor_cad", "backdoor CAD (first configured method)", "attack", "backdoor",
           lambda r: num(r.get("cad")), "lower", True),
    # Beyond the study (no direction): are NAS backdoors harder to detect or to remove?
    Metric("backdoor_anomaly_index", "Neural Cleanse anomaly index of the backdoored model", "attack",
           "backdoor", lambda r: num(r.get("anomaly_index")), None, False, "above 2: detected", unit="MADs"),
    Metric("backdoor_asr_after_pruning", "backdoor ASR after fine-pruning's pruning", "attack", "backdoor",
           lambda r: num(r.get("asr_after_pruning")), None, True, unit="fraction"),
    Metric("knockoff_ace", "Knockoff ACE at the largest budget (own architecture)", "attack", "knockoff",
           lambda r: last_num(r, "ace"), "lower", True),
    Metric("knockoff_kl", "Knockoff KL (ACE - victim entropy) at the largest budget", "attack", "knockoff",
           lambda r: last_num(r, "kl"), "lower", True),
    Metric("membership_auc", "membership inference AUC", "attack", "membership",
           lambda r: num(r.get("auc")), "higher", True),
    # The study's membership direction at the low-FPR operating point (LiRA/RMIA standard). No
    # count: a TPR at a threshold estimated from the non-members is not a binomial k/n.
    Metric("rmia_tpr_1fpr", "RMIA TPR at 1% FPR", "attack", "rmia", lambda r: tpr_at(r, 0.01),
           "higher", True, "offline RMIA, few reference models", unit="fraction"),
    # The study cites the model-reuse attack (its ref. 30) but measures no direction for it.
    Metric("model_reuse_asr", "model-reuse ASR (host on the poisoned primitive)", "attack", "model_reuse",
           lambda r: num(r.get("asr")), None, True, count=length("targets")),
    Metric("gradvar_init", "log10 gradient variance at initialisation", "probe_init", "gradvar",
           lambda r: num(r.get("log10_variance")), "lower", False, "NAS > 100x lower at init"),
    Metric("gradvar_trained", "log10 gradient variance after training", "probe", "gradvar",
           lambda r: num(r.get("log10_variance")), None, False),
    # The study's explanation (Fig. 11, Remark 2): NAS models are flatter in parameter and input space.
    Metric("curvature_param", "top Hessian eigenvalue, parameters", "probe", "curvature",
           lambda r: num(r.get("param_top_eigenvalue")), "lower", False, FLATTER),
    Metric("curvature_input", "top Hessian eigenvalue, input (mean)", "probe", "curvature",
           lambda r: num(r.get("input_top_eigenvalue_mean")), "lower", False, FLATTER),
    Metric("contour_param", "parameter-space contour: mean loss increase", "probe", "contour_param",
           lambda r: num(r.get("mean_increase")), "lower", False, FLATTER),
    Metric("contour_input", "input-space contour: mean loss increase", "probe", "contour_input",
           lambda r: num(r.get("mean_increase")), "lower", False, FLATTER),
)
METRICS = tuple(m if m.unit else dataclasses.replace(m, unit=_unit_of(m.key)) for m in METRICS)
METRIC_BY_KEY = {m.key: m for m in METRICS}
CELL_METRICS = ("depth", "width", "skip_connects")
