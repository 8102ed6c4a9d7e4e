"""PGD and NES success on the inputs every audited model classifies correctly.

Each model is attacked only on the inputs it gets right, so its ASR is over its own input set;
a weaker model's set holds more easy inputs. Restricting every model to the inputs all of them
get right gives ASRs over one denominator.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from nasaudit.audit.report.builder import Builder
from nasaudit.audit.report.data import mean_of
from nasaudit.audit.report.document import Section, Table
from nasaudit.audit.report.metrics import MANUAL, NAS

ATTACKS = ("pgd", "nes")


def common_input_asr(records: dict[str, dict[str, Any]]) -> dict[str, tuple[int, dict[str, float]]]:
    """ASR per target case on the test inputs that every model attacked.

    records: model -> a PGD or NES record dict (`indices`: attacked test indices, `success`:
    case -> per-input bools aligned with them), all of one attack, seed and candidate draw.
    Returns case -> (number of common inputs, model -> ASR on them; NaN for no common input).
    """
    out: dict[str, tuple[int, dict[str, float]]] = {}
    attacked = {m: r.get("indices") or [] for m, r in records.items()}
    common = set.intersection(*(set(v) for v in attacked.values())) if attacked else set()
    cases = sorted({c for r in records.values() for c in (r.get("success") or {})})
    for case in cases:
        asr = {}
        for model, r in records.items():
            success = (r.get("success") or {}).get(case)
            if success is None:
                continue
            hits = [bool(ok) for idx, ok in zip(attacked[model], success, strict=False) if idx in common]
            asr[model] = sum(hits) / len(hits) if hits else float("nan")
        out[case] = (len(common), asr)
    return out


def common_inputs(report: Builder) -> Section:
    """Per attack, case and seed: how many inputs every model classifies correctly, and each
    model's ASR on those beside its ASR on its own correct inputs."""
    s = Section("Evasion on common inputs (one denominator for every model)")
    rows: list[list[Any]] = []
    for attack in ATTACKS:
        by_seed: dict[int, dict[str, dict]] = defaultdict(dict)
        for r in report.data.primary("attack", attack):
            by_seed[r.seed][r.model] = r.result
        for seed, records in sorted(by_seed.items()):
            if len(records) < 2:
                continue
            for case, (n_common, asr) in common_input_asr(records).items():
                for g in (NAS, MANUAL):
                    members = [m for m in report.data.order if report.data.group.get(m) == g and m in asr]
                    for m in members:
                        own = (records[m].get("asr") or {}).get(case)
                        rows.append([attack, case, seed, n_common, m, g, asr[m], own])
                    if members:
                        rows.append([attack, case, seed, n_common, f"mean ({g})", g,
                                     mean_of([asr[m] for m in members]),
                                     mean_of([(records[m].get("asr") or {}).get(case) for m in members])])
    if not rows:
        return s.missing("needs PGD or NES records of at least two models for the same seed.")
    report.table(s, Table("common_inputs", ["attack", "case", "seed", "common inputs", "model", "group",
                                           "ASR on common inputs", "ASR on own inputs"], rows,
                          "Targeted ASR on the test inputs every audited model classifies correctly"))
    s.text("The per-model ASRs elsewhere count each model's own correctly classified inputs; here every "
           "model is scored on the same inputs (the intersection of those sets, same seed and candidates), "
           "so differences are not due to which inputs a model got right. Few common inputs mean a rough "
           "estimate.")
    return s
